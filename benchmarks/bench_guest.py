"""Guest benchmark: decode/prefill tokens/s of the wasm engine next to the Numba engine, with a breakdown.

    python benchmarks/bench_guest.py [--model PATH] [--budgets 64,320] [--threads 1,2]
                                     [--prompt 32] [--decode 16] [--skip-numba] [--skip-kernels]

Prints JSON lines:
- `wasm_engine` per budget (MiB): prefill tok/s, decode tok/s (best and median per-token time), bytes
  fetched and host calls per decoded token (from the guest's stats), the estimated time of the host's
  copies (the same bytes memmoved in chunks of the guest's chunk size, timed here), the guest's
  compute per token (decode time minus copies), and the 1-minute load average;
- `guest_kernels`: milliseconds of one decode step's matrix products run in a guest through
  `realm_debug_matmul` on the model's real tensors (the output matrix on a slice of rows, scaled up),
  split into the output matvec and the layers' matvecs, with GB/s of quantized weight bytes;
- `numba_engine` per thread count: prefill and decode tok/s.
Wall timings are best-of-N; CPU timings (process/thread CPU seconds) are reported beside them because
the machine is shared (kernel times are thread CPU time). About 2-3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_engine(name: str, f, config, prompt: list[int], n_decode: int, repeats: int, **options) -> dict:
    """Prefill and decode timings (best of `repeats`) of one engine; guest stats deltas for wasm."""
    from realm.engines import create_engine

    n_ctx = len(prompt) + n_decode + 8
    t0 = time.perf_counter()
    engine = create_engine(name, f, config, n_ctx=n_ctx, **options)
    engine.eval(prompt[:2])  # warm up (loads resident weights, compiles)
    setup_s = time.perf_counter() - t0
    prefill = []
    for _ in range(repeats):
        engine.reset()
        t0 = time.perf_counter()
        logits = engine.eval(prompt)
        prefill.append(time.perf_counter() - t0)
    token = int(logits.argmax())
    s0 = engine.stats()
    steps, cpu = [], []
    for _ in range(n_decode):
        t0, c0 = time.perf_counter(), time.process_time()
        token = int(engine.eval([token]).argmax())
        steps.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    s1 = engine.stats()
    engine.close()
    steps.sort()
    cpu.sort()
    rec = {
        "setup_s": round(setup_s, 3),
        "prefill_tokens": len(prompt),
        "prefill_tok_s": round(len(prompt) / min(prefill), 2),
        "decode_tokens": n_decode,
        "decode_tok_s": round(1 / steps[0], 2),
        "decode_tok_s_median": round(1 / steps[len(steps) // 2], 2),
        "decode_ms_best": round(steps[0] * 1e3, 2),
        "decode_ms_median": round(steps[len(steps) // 2] * 1e3, 2),
        "decode_cpu_ms_best": round(cpu[0] * 1e3, 2),  # all threads of the process
        "decode_cpu_ms_median": round(cpu[len(cpu) // 2] * 1e3, 2),
        "decode_tok_per_cpu_s": round(1 / cpu[len(cpu) // 2], 2),
        "last_token": token,
    }
    if name == "wasm":
        for key in ("bytes_fetched", "host_calls", "cache_hits", "cache_misses"):
            rec[f"{key}_per_token"] = round((s1[key] - s0[key]) / n_decode, 1)
        rec["cache_bytes"] = s1["cache_bytes"]
        rec["peak_memory"] = s1["peak_memory"]
    return rec


def copy_ms(f, n_bytes: float, chunk: int, repeats: int = 5) -> float:
    """Milliseconds to memmove `n_bytes` from the model's mapping in `chunk`-byte pieces (the host's reads)."""
    src = f.buffer
    dst = np.empty(chunk, np.uint8)  # (chunk,)
    n = int(n_bytes)
    base = f.data_offset
    span = max(1, src.shape[0] - base - chunk)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        done = 0
        while done < n:
            k = min(chunk, n - done)
            off = base + done % span
            np.copyto(dst[:k], src[off:off + k])
            done += k
        best = min(best, time.thread_time() - t0)
    return best * 1e3


def guest_kernels(f, config, repeats: int, out_rows: int = 16384, wasm=None) -> dict:
    """One decode step's matvecs through realm_debug_matmul on the model's tensors (best of `repeats`)."""
    from realm.host.runtime import Guest
    from realm.quants import GGMLType

    guest = Guest(wasm, memory_budget=1 << 30, timeout=None)
    rng = np.random.default_rng(0)

    def place(name: str, rows: int | None = None):
        info = f.tensors[name]
        w = f.tensor_rows(name)  # (rows, row_bytes)
        if rows is not None:
            w = w[:rows]
        wp = guest.alloc(w.nbytes)
        guest.write(wp, np.ascontiguousarray(w))
        cols = int(info.ne[0])
        x = rng.standard_normal(cols).astype(np.float32)  # (cols,)
        xp = guest.alloc(4 * cols)
        guest.write(xp, x)
        op = guest.alloc(4 * w.shape[0])
        return (int(info.ggml_type), wp, w.shape[0], cols, xp, op, w.nbytes, GGMLType(info.ggml_type).name)

    def time_calls(calls) -> float:
        best = float("inf")  # thread CPU seconds: the guest runs on this thread
        for _ in range(repeats):
            t0 = time.thread_time()
            for c in calls:
                rc = guest.call("realm_debug_matmul", c[0], c[1], c[2], c[3], c[4], 1, c[5])
                assert rc == 0, rc
            best = min(best, time.thread_time() - t0)
        return best

    out_name = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
    out_call = place(out_name, out_rows)
    out_s = time_calls([out_call]) * config.vocab_size / out_call[2]
    out_bytes = f.tensors[out_name].n_bytes
    layer_calls = []
    per_type: dict[str, list] = {}
    for il in range(config.n_layers):
        for s in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            c = place(f"blk.{il}.{s}.weight")
            layer_calls.append(c)
            per_type.setdefault(c[7], []).append(c)
    layers_s = time_calls(layer_calls)
    layer_bytes = sum(c[6] for c in layer_calls)
    rec = {
        "output_type": out_call[7],
        "output_ms": round(out_s * 1e3, 2),
        "output_GBps": round(out_bytes / out_s / 1e9, 2),
        "layers_ms": round(layers_s * 1e3, 2),
        "layers_GBps": round(layer_bytes / layers_s / 1e9, 2),
    }
    for tname, calls in sorted(per_type.items()):
        s = time_calls(calls)
        nbytes = sum(c[6] for c in calls)
        rec[f"{tname}_ms"] = round(s * 1e3, 2)
        rec[f"{tname}_GBps"] = round(nbytes / s / 1e9, 2)
    guest.close()
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF path (default: the default model)")
    parser.add_argument("--budgets", default="64,320", help="comma-separated guest memory budgets in MiB")
    parser.add_argument("--threads", default="1,2", help="comma-separated Numba thread counts")
    parser.add_argument("--prompt", type=int, default=32, help="prefill tokens")
    parser.add_argument("--decode", type=int, default=16, help="decode tokens")
    parser.add_argument("--repeats", type=int, default=3, help="best-of-N repeats")
    parser.add_argument("--skip-numba", action="store_true")
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--wasm", default=None, help="another guest build (default: the shipped one)")
    args = parser.parse_args()

    from realm.config import ModelConfig
    from realm.gguf import GGUFFile
    from realm.models import resolve_model

    path = resolve_model(args.model)
    f = GGUFFile(path)
    config = ModelConfig.from_gguf(f)
    rng = np.random.default_rng(0)
    prompt = [2] + rng.integers(3, min(config.vocab_size, 20000), args.prompt - 1).tolist()
    emit(bench="setup", model=path.name, load_average=load(), cpus=os.cpu_count())

    if not args.skip_kernels:
        emit(bench="guest_kernels", **guest_kernels(f, config, args.repeats, wasm=args.wasm), load_average=load())

    for mib in (int(b) for b in args.budgets.split(",")):
        budget = mib << 20
        rec = run_engine("wasm", f, config, prompt, args.decode, args.repeats, memory_budget=budget, wasm=args.wasm)
        chunk = min(1 << 20, max(256 << 10, budget // 16))  # the guest's MAX_CHUNK/MIN_CHUNK (model.rs)
        rec["host_copy_ms_est"] = round(copy_ms(f, rec["bytes_fetched_per_token"], chunk), 2)
        rec["guest_cpu_ms_est"] = round(rec["decode_cpu_ms_median"] - rec["host_copy_ms_est"], 2)
        emit(bench="wasm_engine", budget_mib=mib, **rec, load_average=load())

    if not args.skip_numba:
        for threads in (int(t) for t in args.threads.split(",")):
            rec = run_engine("numba", f, config, prompt, args.decode, args.repeats, threads=threads)
            emit(bench="numba_engine", threads=threads, **rec, load_average=load())
    f.close()


if __name__ == "__main__":
    main()
