"""Two guest builds side by side in one Python host process: decode tokens alternate between them, so
a slow spell of the machine hits both alike (a whole process here can run 40% slower than the next).

    python3 benchmarks/guest_ab.py OLD.wasm NEW.wasm [TOKENS]

Prints each build's fastest and median time per token and the median of NEW/OLD over token pairs.
Default model, one instance, 64 MiB. The Node twin: node benchmarks/guest_ab.mjs OLD.wasm NEW.wasm.
"""
import sys
import time
from pathlib import Path

import realm
from realm.engines import create_engine


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    old, new = Path(sys.argv[1]), Path(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) == 4 else 64
    m = realm.load()
    engines = [create_engine("wasm", m.gguf, m.config, threads=1, wasm=p) for p in (old, new)]
    for e in engines:
        e.eval([2, 100, 200, 300])
        for i in range(8):
            e.eval([400 + i])
    times: list[list[float]] = [[], []]
    for i in range(n):
        for k in ((0, 1) if i % 2 else (1, 0)):
            t = time.perf_counter()
            engines[k].eval([500 + i % 64])
            times[k].append((time.perf_counter() - t) * 1e3)
    ratio = sorted(b / a for a, b in zip(*times))
    med = lambda v: sorted(v)[len(v) // 2]
    print(f"python host: old min {min(times[0]):.2f} ms p50 {med(times[0]):.2f} | new min {min(times[1]):.2f} "
          f"p50 {med(times[1]):.2f} | new/old time per token, median {ratio[n // 2]:.3f}")
    for e in engines:
        e.close()


if __name__ == "__main__":
    main()
