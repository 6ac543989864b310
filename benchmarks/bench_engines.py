"""Engine benchmark: prefill and decode tokens/s of the Numba engine, as a fraction of memory bandwidth.

    python benchmarks/bench_engines.py [--model PATH] [--threads 1,2] [--prompt 128] [--decode 64]

Prints JSON lines: the machine's copy bandwidth (large np.copyto, measured in the same run), then per
thread count: compile/warmup time, prefill tok/s, decode tok/s, weight bytes read per token, decode as a
fraction of bandwidth, and a breakdown of one decode step (output matvec, layer matvecs, attention, rest).
CPU seconds (all threads) are reported beside wall time because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numba
import numpy as np


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls (after one untimed call)."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def memory_bandwidth(n_bytes: int = 512 << 20, repeat: int = 5) -> float:
    """Copy bandwidth in GB/s counting read + write bytes (np.copyto of `n_bytes`)."""
    src = np.ones(n_bytes // 8, np.float64)  # (n,)
    dst = np.empty_like(src)
    best = min(timed(lambda: np.copyto(dst, src), 1) for _ in range(repeat))
    return 2 * n_bytes / best / 1e9


def decode_breakdown(engine, n_ctx_used: int, repeat: int = 5) -> dict[str, float]:
    """Milliseconds per decode step spent in each part, timed in isolation with the engine's own arrays."""
    from realm.kernels import ops
    from realm.kernels.matvec import matvec

    c = engine.config
    x = np.ones(c.dim, np.float32)  # (dim,)
    logits = np.empty(c.vocab_size, np.float32)  # (vocab,)
    out_ms = timed(lambda: matvec(engine.output[0], engine.output[1], x, logits), repeat) * 1e3

    bufs = {c.dim: np.ones(c.dim, np.float32), c.q_dim: np.ones(c.q_dim, np.float32),
            c.hidden_dim: np.ones(c.hidden_dim, np.float32)}  # inputs by length
    outs = {n: np.empty(n, np.float32) for n in (c.dim, c.q_dim, c.kv_dim, c.hidden_dim)}  # outputs by length

    def layer_matvecs():
        for L in engine.layers:
            for (w, t), cols in ((L.attn_q, c.dim), (L.attn_k, c.dim), (L.attn_v, c.dim), (L.attn_output, c.q_dim),
                                 (L.ffn_gate, c.dim), (L.ffn_up, c.dim), (L.ffn_down, c.hidden_dim)):
                matvec(w, t, bufs[cols], outs[w.shape[0]])

    layers_ms = timed(layer_matvecs, repeat) * 1e3
    q = np.ones((1, c.n_heads, c.head_dim), np.float32)  # (1, n_heads, hd)
    heads = np.empty_like(q)

    def attention():
        for il, L in enumerate(engine.layers):
            ops.attention(q, engine.key_cache[il], engine.value_cache[il], n_ctx_used - 1, c.attn_scale,
                          L.window, engine.att, heads)

    attn_ms = timed(attention, repeat) * 1e3
    return {"output_matvec_ms": out_ms, "layer_matvecs_ms": layers_ms, "attention_ms": attn_ms,
            "n_matvec_calls": 7 * len(engine.layers) + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF path (default: the default model)")
    parser.add_argument("--threads", default="1,2", help="comma-separated Numba thread counts")
    parser.add_argument("--prompt", type=int, default=128, help="prefill tokens")
    parser.add_argument("--decode", type=int, default=64, help="decode tokens")
    args = parser.parse_args()

    from realm.config import ModelConfig
    from realm.engines.numba import NumbaEngine
    from realm.gguf import GGUFFile
    from realm.kernels import matvec as matvec_module
    from realm.kernels import ops
    from realm.models import resolve_model

    path = resolve_model(args.model)
    bandwidth = memory_bandwidth()
    emit(bench="memory_bandwidth", copy_GBps=round(bandwidth, 2), note="np.copyto 512 MiB, read+write bytes")

    start = time.perf_counter()
    ops.warmup()
    matvec_module.warmup()
    emit(bench="kernel_warmup", seconds=round(time.perf_counter() - start, 3),
         note="compile or load from Numba's cache")

    f = GGUFFile(path)
    config = ModelConfig.from_gguf(f)
    rng = np.random.default_rng(0)
    prompt = [2] + rng.integers(3, min(config.vocab_size, 20000), args.prompt - 1).tolist()
    n_ctx = args.prompt + args.decode + 8
    for threads in (int(t) for t in args.threads.split(",")):
        numba.set_num_threads(threads)  # for the breakdown's direct kernel calls (eval sets its own)
        start = time.perf_counter()
        engine = NumbaEngine(f, config, n_ctx=n_ctx, threads=threads)
        engine.eval(prompt[:4])
        engine.eval([prompt[4]])
        first_s = time.perf_counter() - start

        prefill, prefill_cpu = [], []
        for _ in range(2):
            engine.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            logits = engine.eval(prompt)
            prefill.append(time.perf_counter() - t0)
            prefill_cpu.append(time.process_time() - c0)
        token = int(logits.argmax())
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.decode):
            token = int(engine.eval([token]).argmax())
        decode_s = time.perf_counter() - t0
        decode_cpu_s = time.process_time() - c0
        decode_tps = args.decode / decode_s
        bytes_per_token = engine.bytes_per_token + engine.token_embd[0].shape[1]
        breakdown = decode_breakdown(engine, engine.n_past)
        step_ms = decode_s / args.decode * 1e3
        rest_ms = step_ms - breakdown["output_matvec_ms"] - breakdown["layer_matvecs_ms"] - breakdown["attention_ms"]
        emit(bench="numba_engine", model=path.name, threads=engine.threads,
             first_eval_s=round(first_s, 3),
             prefill_tokens=args.prompt, prefill_tok_s=round(args.prompt / min(prefill), 1),
             prefill_cpu_s_per_token=round(min(prefill_cpu) / args.prompt, 5),
             decode_tokens=args.decode, decode_tok_s=round(decode_tps, 2), decode_ms_per_token=round(step_ms, 2),
             decode_cpu_ms_per_token=round(decode_cpu_s / args.decode * 1e3, 2),
             decode_tok_per_cpu_s=round(args.decode / decode_cpu_s, 2),
             load_average_1min=os.getloadavg()[0],
             weight_bytes_per_token=bytes_per_token,
             decode_GBps=round(bytes_per_token * decode_tps / 1e9, 2),
             decode_fraction_of_copy_bandwidth=round(bytes_per_token * decode_tps / 1e9 / bandwidth, 3),
             **{k: round(v, 2) if isinstance(v, float) else v for k, v in breakdown.items()},
             rest_ms=round(rest_ms, 2))
        engine.close()
    f.close()


if __name__ == "__main__":
    main()
