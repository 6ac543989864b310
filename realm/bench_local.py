"""realm's own engines (wasm, numba, reference) in a process of their own for `realm bench`, one process
per engine variant like the llama.cpp and Node rows, so no engine's threads, caches or allocator
state share a process with another's while it is measured.

Parent side: `LocalRunner` (a realm.bench_worker.WorkerEngine). Worker side: `python -m
realm.bench_local`, which loads the model, creates the engine and times it with the same
`realm.bench.time_generation` the in-process path uses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from realm.bench_worker import WorkerEngine

_TAG = "REALM-LOCAL "


def _plain(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}


class LocalRunner(WorkerEngine):
    """`model.engine(name, n_ctx, **options)` created and measured in a child process."""

    def __init__(self, model_path: str | Path, name: str, n_ctx: int, options: dict[str, Any]):
        self.name = name
        super().__init__([sys.executable, "-m", "realm.bench_local"], _TAG, int(options.get("threads") or 1),
                         {"model": str(model_path), "engine": name, "n_ctx": n_ctx, "options": options})

    def timed_generation(self, ids: list[int], gen_tokens: int) -> tuple[float, float, dict[str, float]]:
        r = self._request({"op": "run", "ids": [int(i) for i in ids], "gen_tokens": gen_tokens})
        self._stats.update(r.get("stats", {}))
        return r["prefill_s"], r["decode_s"], r.get("per_token", {})

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)


def _serve() -> None:
    import realm
    from realm.bench import time_generation

    out = sys.stdout
    engine = None

    def reply(obj: dict[str, Any]) -> None:
        out.write(_TAG + json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "load":
                t0 = time.perf_counter()
                model = realm.load(msg["model"])
                engine = model.engine(msg["engine"], n_ctx=msg["n_ctx"], **msg["options"])
                reply({**_plain(engine.stats()), "load_seconds": time.perf_counter() - t0, "pid": os.getpid()})
            elif engine is None:
                reply({"error": f"{msg['op']} before load"})
            elif msg["op"] == "run":
                prefill, decode, per_token = time_generation(engine, msg["ids"], msg["gen_tokens"])
                reply({"prefill_s": prefill, "decode_s": decode, "per_token": per_token,
                       "stats": _plain(engine.stats())})
            elif msg["op"] == "logits":
                engine.reset()
                logits = np.ascontiguousarray(engine.eval(msg["ids"], all_logits=True), "<f4")  # (T, vocab)
                logits.tofile(msg["path"])
                reply({"shape": list(logits.shape)})
            else:
                reply({"error": f"unknown op {msg['op']!r}"})
        except Exception as e:  # reported to the parent, which raises RealmError
            reply({"error": f"{type(e).__name__}: {e}"})
    if engine is not None:
        engine.close()


if __name__ == "__main__":
    _serve()
