"""Soak test of the wasm sandbox: many guests generating from one stored model for minutes.

N guest threads run greedy generations in a loop and compare every result with a single-guest
reference run (bit-identical logits); a churn thread adds/removes other models (consumer and guest
side) and takes/drops references to the shared one; a hostile thread keeps starting guests that
trap (deadline, out-of-bounds access, stack overflow, memory bomb) on the same store. Every
`--interval` seconds, and once at the end, one JSON line:

    calls (realm_eval calls by the workers), tokens, generations, mismatches, errors (unexpected
    exceptions), traps (hostile guests stopped), escapes (hostile calls that did not end in a
    GuestError), churn_cycles, host_calls, store_copies (copies of the shared weights; must be 1),
    n_copies, rss_mb, rss_growth_mb (since the end of warm-up), cpu_s, load.

    python benchmarks/soak.py [--duration 120] [--guests 8] [--model synth|default|PATH] [--interval 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from realm.config import ModelConfig  # noqa: E402
from realm.errors import GuestError  # noqa: E402
from realm.gguf import GGUFFile  # noqa: E402
from realm.host.runtime import Guest  # noqa: E402
from realm.host.store import ModelStore  # noqa: E402
from realm.generate import greedy

PROXY = (ROOT / "tests" / "security" / "wat" / "proxy.wat").read_text()
BIG_AT = 0x10000
HOSTILE = {
    "deadline": """(module (memory (export "memory") 1) (func (export "go") (loop $l (br $l))))""",
    "oob": """(module (import "env" "realm_read_tensor" (func $r (param i64 i32 i64 i32 i32) (result i32)))
        (memory (export "memory") 16)
        (func (export "go") (drop (call $r (i64.const 1) (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 8)))
          (drop (i32.load (i32.const 0x7ffffff0)))))""",
    "stack": """(module (memory (export "memory") 1) (func $r (export "go") (call $r)))""",
    "bomb": """(module (memory (export "memory") 1)
        (func (export "go") (block $d (loop $l (br_if $d (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
          (br $l))) (i32.store (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))))""",
}


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.v = dict(calls=0, tokens=0, generations=0, mismatches=0, errors=0, traps=0, escapes=0,
                      churn_cycles=0)
        self.messages: list[str] = []

    def add(self, **kw) -> None:
        with self.lock:
            for k, n in kw.items():
                self.v[k] += n

    def error(self, where: str, e: BaseException) -> None:
        with self.lock:
            self.v["errors"] += 1
            if len(self.messages) < 10:
                self.messages.append(f"{where}: {type(e).__name__}: {e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    ap.add_argument("--guests", type=int, default=8)
    ap.add_argument("--model", default="synth", help="synth (a small Gemma-3-shaped Q4_K model), default, or a path")
    ap.add_argument("--steps", type=int, default=16, help="decoded tokens per generation")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between JSON lines")
    ap.add_argument("--no-churn", action="store_true")
    ap.add_argument("--no-hostile", action="store_true")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="realm-soak-")
    from synth import kquant_dims, make_model
    from realm.quants import GGMLType

    churn_paths = [make_model(Path(tmp.name) / f"c{i}.gguf", arch="llama", qtype=GGMLType.Q4_0, seed=10 + i)
                   for i in range(3)]
    if args.model == "synth":
        path = make_model(Path(tmp.name) / "shared.gguf", arch="gemma3", qtype=GGMLType.Q4_K, seed=4, **kquant_dims())
        prompts = [[1, 5, 9, 100, 200, 7], [1, 42, 43, 44], [1, 250, 3, 3, 3, 3, 3, 8], list(range(1, 70))]
    else:
        from realm.models import default_model_path

        path = default_model_path() if args.model == "default" else Path(args.model)
        prompts = [[2, 818, 5279, 529, 7001], [2, 651, 3823, 8864]]
    n_ctx = max(len(p) for p in prompts) + args.steps + 1

    from realm.engines.wasm import WasmEngine
    from realm.host.runtime import default_guest_path, load_module

    # one compiled module for the references and every guest, even if the .wasm is rebuilt meanwhile
    guest_bytes = default_guest_path().read_bytes()
    module = load_module(guest_bytes)
    guest_sha = hashlib.sha256(guest_bytes).hexdigest()[:16]
    f = GGUFFile(path)
    config = ModelConfig.from_gguf(f)
    expect = []
    for prompt in prompts:
        solo = WasmEngine(f, config, n_ctx=n_ctx, store=ModelStore(), wasm=module)
        expect.append(greedy(solo, prompt, args.steps))
        solo.close()
    store = ModelStore()
    shared = store.add(path)
    engines = [WasmEngine(f, config, n_ctx=n_ctx, store=store, wasm=module) for _ in range(args.guests)]
    c = Counters()
    stop = threading.Event()
    copies_seen: set[int] = set()

    def worker(i: int) -> None:
        eng, r = engines[i], i
        while not stop.is_set():
            k = r % len(prompts)
            r += 1
            try:
                tokens, logits = greedy(eng, prompts[k], args.steps)
            except BaseException as e:
                c.error(f"guest {i}", e)
                return
            same = tokens == expect[k][0] and np.array_equal(logits, expect[k][1])
            if not same:
                with c.lock:
                    if len(c.messages) < 10:
                        diff = float(np.abs(logits - expect[k][1]).max())
                        c.messages.append(f"guest {i} prompt {k}: tokens {tokens} vs {expect[k][0]}, "
                                          f"max |logit diff| {diff:.3g}")
            c.add(calls=1 + args.steps, tokens=len(prompts[k]) + args.steps, generations=1,
                  mismatches=0 if same else 1)

    def churn() -> None:
        images = [p.read_bytes() for p in churn_paths]
        n = 0
        while not stop.is_set():
            try:
                k = n % len(churn_paths)
                cid = store.add(churn_paths[k])
                g = Guest(PROXY, model_store=store)
                g.call("grow", 40)
                g.acquire(shared)
                image = images[(k + 1) % len(images)]
                g.write(BIG_AT, image)
                gid = g.call("call_realm_store_model", BIG_AT, len(image), 0)
                if gid <= 0 or g.call("call_realm_remove_model", gid) != 0:
                    raise RuntimeError(f"guest-side store/remove failed: {gid}")
                g.close()
                store.remove(cid)
                copies_seen.add(sum(1 for m in store.stats()["models"].values() if shared in m["ids"]))
                n += 1
                c.add(churn_cycles=1)
            except BaseException as e:
                c.error("churn", e)
                time.sleep(0.1)

    def hostile() -> None:
        kinds = list(HOSTILE)
        n = 0
        while not stop.is_set():
            kind = kinds[n % len(kinds)]
            n += 1
            try:
                g = Guest(HOSTILE[kind], model_store=store, memory_budget=8 << 20, timeout=0.05)
                if kind == "oob":
                    g.acquire(shared)
                try:
                    g.call("go")
                    c.add(escapes=1)  # returned normally: the limit did not hold
                except GuestError:
                    c.add(traps=1)
                finally:
                    g.close()
            except BaseException as e:
                c.add(escapes=1)
                c.error(f"hostile {kind}", e)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.guests)]
    if not args.no_churn:
        threads.append(threading.Thread(target=churn, daemon=True))
    if not args.no_hostile:
        threads.append(threading.Thread(target=hostile, daemon=True))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    rss0 = None

    def record(final: bool = False) -> dict:
        nonlocal rss0
        rss = rss_mb()
        if rss0 is None:
            rss0 = rss
        st = store.stats()
        with c.lock:
            v = dict(c.v)
        return dict(final=final, t=round(time.perf_counter() - t0, 1), **v,
                    host_calls=sum(e.guest.tenant.host_calls for e in engines),
                    store_copies=sum(1 for m in st["models"].values() if shared in m["ids"]),
                    store_copies_seen=sorted(copies_seen), n_copies=st["n_copies"],
                    rss_mb=round(rss, 1), rss_growth_mb=round(rss - rss0, 1),
                    cpu_s=round(time.process_time() - cpu0, 1), load=round(os.getloadavg()[0], 2),
                    guests=args.guests, model=str(path.name), guest_sha256=guest_sha)

    warm = min(args.interval, args.duration / 4)
    time.sleep(warm)
    emit(**record(), phase="warm-up done")
    next_t = time.perf_counter() + args.interval
    while time.perf_counter() - t0 < args.duration:
        time.sleep(max(0.0, min(next_t, t0 + args.duration) - time.perf_counter()))
        if time.perf_counter() >= next_t:
            emit(**record())
            next_t += args.interval
    stop.set()
    for t in threads:
        t.join(timeout=120)
    final = record(final=True)
    final["messages"] = c.messages
    for e in engines:
        e.close()
    store.remove(shared)
    final["n_copies_after_close"] = store.stats()["n_copies"]
    emit(**final)
    store.close()
    f.close()
    tmp.cleanup()
    ok = (final["mismatches"] == 0 and final["errors"] == 0 and final["escapes"] == 0
          and final["store_copies_seen"] in ([], [1]) and final["n_copies_after_close"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
