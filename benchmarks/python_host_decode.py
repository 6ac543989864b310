"""The Python host's 1-instance decode, 64 MiB guest, same steps as benchmarks/node_read_path.mjs."""
import time

import realm
from realm.engines import create_engine

m = realm.load()
eng = create_engine("wasm", m.gguf, m.config, threads=1)
eng.eval([2, 100, 200, 300])
for _ in range(3):
    n, t = 16, time.perf_counter()
    for i in range(n):
        eng.eval([400 + i])
    print(f"python host decode {n / (time.perf_counter() - t):.2f} tok/s")
eng.close()
