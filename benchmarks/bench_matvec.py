"""Benchmark of realm's quantized matvec/matmul kernels; prints one JSON object per line.

    python benchmarks/bench_matvec.py [--quick] [--cold] [--types Q8_0,Q4_K] [--reps N] [--threads 1]

Lines: `membw` (the machine's copy bandwidth, same run), `compile` (warmup seconds; `--cold`
compiles into a fresh cache dir), `matvec` (weight GB/s per type, shape and thread count),
`matmul` (tokens/s and weight GB/s for T tokens). Weights are random bytes with finite f16 fields.
On a shared machine compare single-thread numbers (`--threads 1`) taken in the same run.

Measured alternatives that did NOT beat the f32 fused kernels (Q5_0 2048x640, 1 thread, same run;
details in the 2026-11-26 kernel report): int16-quantized activations with `vpmaddwd` (Numba emits
it for `s = np.int32(s + np.int16(a) * np.int16(b))` over an opaque trip count, with x slices
instead of `x[j + 16]`, whose negative-index wraparound turns the loads into gathers) ran at
0.9-1.2 GB/s vs 3.3 (per-block horizontal sums and int->float work outweigh the cheaper
multiplies; one int16 pass is also 100x less accurate, 4e-6 vs 4e-8 relative); per-lane f32
accumulators across blocks (stores to a (4, 8) scratch stay scalar: 0.7 GB/s); the Q5_0 5th bit
OR-ed in as uint8 before the float conversion (2.8 vs 3.8 GB/s; no consistent
difference at 23000x2048); matmul with K-blocking of
128-512 columns or a 4x4 micro-kernel (both slower than the 4-row x 2-token kernel).
Accuracy of integer activations (llama.cpp's approach), simulated on the default model by rounding
the Q5_0/Q4_K/Q6_K matvec/matmul inputs per 32-element block, 3 prompts + 8 greedy steps: int8 moves
logits by up to 0.85 in prefill and changes greedy tokens; one int16 pass moves them by 4e-3 (the
differential test allows 1e-3 on this model). Only an exact-ish two-pass int16 (x = d*(hi + lo/2^16))
keeps f32 accuracy, and it costs more instructions than the f32 kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _emit(**kv) -> None:
    kv["loadavg_1m"] = round(os.getloadavg()[0], 2)  # other processes skew 2-thread numbers
    print(json.dumps(kv), flush=True)


def _best(fn, reps: int, min_time: float = 0.2) -> float:
    """Best wall time of `fn()` over at least `reps` runs (and at least `min_time` seconds)."""
    fn()
    best = float("inf")
    start = time.perf_counter()
    n = 0
    while n < reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best


def _random_rows(t, rows: int, cols: int, rng) -> np.ndarray:
    from realm.quants import LAYOUTS, GGMLType, row_bytes

    if t == GGMLType.F32:
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if t in (GGMLType.F16, GGMLType.BF16):
        bits = rng.integers(0x3000, 0x3C00, (rows, cols), dtype=np.uint16)
        return bits.view(np.uint8)
    layout = LAYOUTS[t]
    w = rng.integers(0, 256, (rows, row_bytes(t, cols)), dtype=np.uint8)
    blocks = w.reshape(rows, -1, layout.type_size)
    off = 0
    for _name, dtype, count in layout.fields:
        size = {"f16": 2, "f32": 4, "i16": 2, "u8": 1, "i8": 1}[dtype] * count
        if dtype == "f16":
            blocks[:, :, off + 1] = 0x20  # high byte of a small normal f16
        off += size
    return w


def _membw(n_bytes: int, reps: int) -> None:
    a = np.ones(n_bytes, np.uint8)
    b = np.empty(n_bytes, np.uint8)
    t = _best(lambda: np.copyto(b, a), reps)
    _emit(kind="membw", method="np.copyto", bytes=n_bytes, seconds=t,
          copy_gb_s=n_bytes / t / 1e9, read_plus_write_gb_s=2 * n_bytes / t / 1e9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller matrices, fewer repetitions")
    ap.add_argument("--cold", action="store_true", help="compile into a fresh NUMBA_CACHE_DIR")
    ap.add_argument("--types", default="", help="comma-separated GGMLType names (default: all)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-matmul", action="store_true")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = ap.parse_args(argv)
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="realm-numba-")

    import numba

    t0 = time.perf_counter()
    from realm.kernels import matvec as mv
    from realm.quants import GGMLType, block_size_and_bytes, row_bytes
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mv.warmup()
    _emit(kind="compile", import_s=import_s, warmup_s=time.perf_counter() - t0, cold=args.cold,
          threads_max=numba.config.NUMBA_NUM_THREADS, threading_layer=numba.threading_layer())

    reps = 3 if args.quick else args.reps
    _membw((64 if args.quick else 256) << 20, reps)

    types = ([GGMLType[n.strip()] for n in args.types.split(",") if n.strip()]
             or sorted(mv.MATVEC_TYPES, key=lambda t: t.name))
    rng = np.random.default_rng(0)
    threads = [n for n in (int(v) for v in args.threads.split(",") if v.strip())
               if 1 <= n <= numba.config.NUMBA_NUM_THREADS]
    big_bytes = (16 if args.quick else 64) << 20
    for t in types:
        block = block_size_and_bytes(t)[0]
        shapes = [(2048, 640) if 640 % block == 0 else (640, 2048)]  # ffn_gate/up, ffn_down
        if t == GGMLType.Q8_0:
            shapes.insert(0, (65536 if args.quick else 262144, 640))  # the tied token_embd/output
        cols = 2048
        shapes.append((max(4, big_bytes // row_bytes(t, cols)), cols))
        for rows, cols in shapes:
            w = _random_rows(t, rows, cols, rng)
            w.flags.writeable = False
            x = rng.standard_normal(cols, dtype=np.float32)
            out = np.empty(rows, np.float32)
            for n in threads:
                numba.set_num_threads(n)
                s = _best(lambda: mv.matvec(w, t, x, out), reps)
                _emit(kind="matvec", type=t.name, rows=rows, cols=cols, threads=n, bytes=w.nbytes,
                      ms=s * 1e3, gb_s=w.nbytes / s / 1e9)
        if args.no_matmul:
            continue
        rows, cols = shapes[-2]
        w = _random_rows(t, rows, cols, rng)
        w.flags.writeable = False
        for n_tok in (8, 32, 128):
            x = rng.standard_normal((n_tok, cols), dtype=np.float32)
            out = np.empty((n_tok, rows), np.float32)
            for n in threads:
                numba.set_num_threads(n)
                s = _best(lambda: mv.matmul(w, t, x, out), max(2, reps // 2))
                _emit(kind="matmul", type=t.name, rows=rows, cols=cols, T=n_tok, threads=n,
                      ms=s * 1e3, tokens_s=n_tok / s, gb_s=w.nbytes / s / 1e9,
                      gflop_s=2 * n_tok * rows * cols / s / 1e9)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
