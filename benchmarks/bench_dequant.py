"""Dequantization throughput per GGML type, as JSON lines, beside the machine's measured copy bandwidth.

    python benchmarks/bench_dequant.py [--mb 64] [--repeat 5] [--threads 1,2] [--cold] [--types Q4_K,Q6_K]

Lines: {"bench": "memory", ...} (large np.copyto, GB/s), {"bench": "compile", ...} (warmup seconds;
--cold compiles into an empty Numba cache), then one {"bench": "dequant", ...} per (type, threads):
input GB/s (quantized bytes read per second), output GB/s (float32 bytes written), ns per element,
CPU time of the best run (all threads; output GB per CPU-second is steadier on a busy machine),
np.copyto GB/s re-measured right after (the machine may be shared) with the ratio output/copy, and
the NumPy reference's input GB/s for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def best_seconds(fn, repeat: int, cpu: bool = False):
    """Best wall time of `repeat` calls; with cpu=True also the best process CPU time (all threads)."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return (best, best_cpu) if cpu else best


def memory_bandwidth(np, n_bytes: int, repeat: int) -> dict:
    src = np.ones(n_bytes // 4, dtype=np.float32)  # (n,)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault in both buffers
    s = best_seconds(lambda: np.copyto(dst, src), repeat)
    return {"copy_mb": n_bytes >> 20, "copy_GBps": n_bytes / s / 1e9, "read_write_GBps": 2 * n_bytes / s / 1e9}


def random_blocks(np, layout, field_offsets, t, nb: int, rng):
    """Random blocks with finite random scales (same recipe as the tests)."""
    blocks = rng.integers(0, 256, size=(nb, layout.type_size), dtype=np.uint8)  # (nb, type_size)
    if layout.block_size == 1:
        if layout.fields[0][1] == "f32":
            blocks = rng.standard_normal(nb).astype(np.float32).view(np.uint8).reshape(nb, 4)
        return blocks
    offsets = field_offsets(t)
    for name, dtype, count in layout.fields:
        o = offsets[name]
        if dtype == "f16":
            v = (rng.standard_normal((nb, count)) * 1e-2).astype("<f2")
            blocks[:, o:o + 2 * count] = v.view(np.uint8).reshape(nb, -1)
        elif dtype == "f32":
            v = (rng.standard_normal((nb, count)) * 1e-2).astype("<f4")
            blocks[:, o:o + 4 * count] = v.view(np.uint8).reshape(nb, -1)
    return blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64.0, help="MB of quantized input per type")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--types", default="", help="comma-separated GGMLType names (default: all supported)")
    ap.add_argument("--cold", action="store_true", help="compile into an empty Numba cache directory")
    args = ap.parse_args()
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="realm-numba-cache-")

    import numba
    import numpy as np

    t0 = time.perf_counter()
    from realm.kernels import dequantize, warmup
    from realm.quants import LAYOUTS, SUPPORTED, GGMLType, dequantize_ref, field_offsets
    import_s = time.perf_counter() - t0

    emit(bench="machine", cpus=os.cpu_count(), numba_threads=numba.config.NUMBA_NUM_THREADS,
         numba=numba.__version__, numpy=np.__version__, threading_layer=numba.config.THREADING_LAYER)
    emit(bench="memory", **memory_bandwidth(np, 256 << 20, args.repeat))
    c0 = time.process_time()
    warm_s = warmup()
    warm_cpu_s = time.process_time() - c0
    emit(bench="compile", import_s=round(import_s, 3), warmup_s=round(warm_s, 3),
         warmup_cpu_s=round(warm_cpu_s, 3), cold_cache=args.cold,
         note="warmup compiles (or loads from cache) every dequant/quant kernel")

    types = [GGMLType[n] for n in args.types.split(",") if n] or sorted(SUPPORTED)
    threads = [int(k) for k in args.threads.split(",")]
    rng = np.random.default_rng(0)
    for t in types:
        layout = LAYOUTS[t]
        nb = int(args.mb * (1 << 20)) // layout.type_size
        blocks = random_blocks(np, layout, field_offsets, t, nb, rng)
        blocks.setflags(write=False)  # like a memmapped weight
        n = nb * layout.block_size
        out = np.empty(n, dtype=np.float32)  # (n,)
        dequantize(blocks, t, out=out)  # fault in `out`
        nb_ref = max(1, nb // 8)
        ref_s = best_seconds(lambda: dequantize_ref(blocks[:nb_ref], t), 1)
        for k in threads:
            numba.set_num_threads(min(k, numba.config.NUMBA_NUM_THREADS))
            s, cpu_s = best_seconds(lambda: dequantize(blocks, t, out=out), args.repeat, cpu=True)
            copy_now = memory_bandwidth(np, 64 << 20, args.repeat)["copy_GBps"]  # the machine is shared: re-measure
            emit(bench="dequant", type=t.name, threads=numba.get_num_threads(), in_mb=round(blocks.nbytes / 2**20, 1),
                 out_mb=round(out.nbytes / 2**20, 1), ms=round(s * 1e3, 2),
                 in_GBps=round(blocks.nbytes / s / 1e9, 3), out_GBps=round(out.nbytes / s / 1e9, 3),
                 ns_per_element=round(s / n * 1e9, 3), cpu_ms=round(cpu_s * 1e3, 2),
                 out_GB_per_cpu_s=round(out.nbytes / cpu_s / 1e9, 3), copy_GBps_now=round(copy_now, 3),
                 out_vs_copy=round(out.nbytes / s / 1e9 / copy_now, 3),
                 numpy_ref_in_GBps=round(nb_ref * layout.type_size / ref_s / 1e9, 3))


if __name__ == "__main__":
    main()
