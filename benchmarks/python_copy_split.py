"""A Python host decode token split into the model copies (the host's memmoves from the mapped file
into the guest) and the rest: the twin of benchmarks/node_copy_split.mjs. Default model, 1 instance,
64 MiB. The copies are timed by wrapping the `ctypes.memmove` that realm.host.abi calls."""
import ctypes, time
import realm.host.abi as abi
orig = ctypes.memmove
acc = [0.0, 0]
class C:  # realm.host.abi's view of ctypes, with memmove timed
    def __getattr__(self, k): return getattr(ctypes, k)
    @staticmethod
    def memmove(d, s, n):
        t = time.perf_counter(); r = orig(d, s, n); acc[0] += time.perf_counter() - t; acc[1] += n; return r
abi.ctypes = C()
import realm
from realm.engines import create_engine
m = realm.load()
e = create_engine("wasm", m.gguf, m.config, threads=1)
e.eval([2, 100, 200, 300])
for i in range(8): e.eval([400 + i])
acc[0] = 0; acc[1] = 0; ms = []
N = 32
for i in range(N):
    t = time.perf_counter(); e.eval([500 + i]); ms.append((time.perf_counter() - t) * 1e3)
ms.sort()
print(f"python: token min {ms[0]:.1f} p50 {ms[N//2]:.1f} ms; copies {acc[0]/N*1e3:.1f} ms/token, {acc[1]/acc[0]/1e9:.1f} GB/s, {acc[1]/N/1e6:.1f} MB")
