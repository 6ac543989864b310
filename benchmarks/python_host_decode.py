"""The Python host's 1-instance decode, 64 MiB guest, same steps as benchmarks/node_read_path.mjs: the
time per token and the part of it in the host's copies of model bytes into the guest (the
`ctypes.memmove` calls of realm.host.abi, timed through a wrapper)."""
import ctypes
import time
import types

import realm
import realm.host.abi as abi
from realm.engines import create_engine

copy = {"s": 0.0, "bytes": 0}


def timed_memmove(dst, src, n):
    t = time.perf_counter()
    r = ctypes.memmove(dst, src, n)
    copy["s"] += time.perf_counter() - t
    copy["bytes"] += n
    return r


abi.ctypes = types.SimpleNamespace(**{k: getattr(ctypes, k) for k in dir(ctypes) if not k.startswith("__")})
abi.ctypes.memmove = timed_memmove

m = realm.load()
eng = create_engine("wasm", m.gguf, m.config, threads=1)
eng.eval([2, 100, 200, 300])
for r in range(3):
    n, t = 16, time.perf_counter()
    copy.update(s=0.0, bytes=0)
    for i in range(n):
        eng.eval([400 + 16 * r + i])
    ms = (time.perf_counter() - t) / n * 1e3
    print(f"python host decode {1e3 / ms:.2f} tok/s: {ms:.1f} ms per token, of which copies {copy['s'] / n * 1e3:.1f} ms "
          f"({copy['bytes'] / n / 1e6:.1f} MB at {copy['bytes'] / copy['s'] / 1e9:.1f} GB/s)")
eng.close()
