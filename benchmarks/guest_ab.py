"""Two guest builds side by side in one Python host process: steps alternate between them, so a slow
spell of the machine hits both alike (a whole process here can run 40% slower than the next).

    python3 benchmarks/guest_ab.py OLD.wasm NEW.wasm [--steps 64] [--prefill N] [--threads T] [--budget-mib M]

A step is one decode token, or with --prefill N a fresh N-token prompt. Prints each build's fastest
and median time per step and the median of NEW/OLD over step pairs. Default model, 64 MiB.
The Node twin (decode, one instance): node --no-liftoff benchmarks/guest_ab.mjs OLD.wasm NEW.wasm.
"""
import argparse
import time
from pathlib import Path

import realm
from realm.engines import create_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=0, help="time N-token prompts instead of decode tokens")
    ap.add_argument("--threads", type=int, default=1, help="guest instances per engine")
    ap.add_argument("--budget-mib", type=int, default=64, help="guest memory budget (large: weights resident)")
    a = ap.parse_args()
    m = realm.load()
    engines = [create_engine("wasm", m.gguf, m.config, threads=a.threads, wasm=p,
                             memory_budget=a.budget_mib << 20) for p in (a.old, a.new)]
    prompt = [2] + [100 + 7 * i for i in range(max(a.prefill, 4) - 1)]

    def step(e, i: int) -> None:
        if a.prefill:
            e.reset()
            e.eval(prompt)
        else:
            e.eval([500 + i % 64])

    for e in engines:
        e.eval(prompt)
        for i in range(8):
            step(e, i)
    times: list[list[float]] = [[], []]
    for i in range(a.steps):
        for k in ((0, 1) if i % 2 else (1, 0)):
            t = time.perf_counter()
            step(engines[k], i)
            times[k].append((time.perf_counter() - t) * 1e3)
    ratio = sorted(b / a for a, b in zip(*times))
    med = lambda v: sorted(v)[len(v) // 2]
    what = f"{a.prefill}-token prefill" if a.prefill else "decode token"
    print(f"python host, {a.threads} instance(s) at {a.budget_mib} MiB, ms per {what}: old min {min(times[0]):.2f} p50 {med(times[0]):.2f} | "
          f"new min {min(times[1]):.2f} p50 {med(times[1]):.2f} | new/old median {ratio[len(ratio) // 2]:.3f}")
    for e in engines:
        e.close()


if __name__ == "__main__":
    main()
