"""realm's own engines (wasm, numba, reference) in a process of their own for `realm bench`, one process
per engine variant like the llama.cpp and Node rows, so no engine's threads, caches or allocator
state share a process with another's while it is measured.

Parent side: `LocalRunner` (a realm.bench_worker.WorkerEngine). Worker side: `python -m
realm.bench_local`, which loads the model, creates the engine and times it with the same
`realm.bench.time_generation` the in-process path uses.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from realm.bench_worker import WorkerEngine, serve

_TAG = "REALM-LOCAL "


def _plain(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}


class LocalRunner(WorkerEngine):
    """`model.engine(name, n_ctx, **options)` created and measured in a child process."""

    def __init__(self, model_path: str | Path, name: str, n_ctx: int, options: dict[str, Any]):
        self.name = name
        super().__init__([sys.executable, "-m", "realm.bench_local"], _TAG, int(options.get("threads") or 1),
                         {"model": str(model_path), "engine": name, "n_ctx": n_ctx, "options": options})


def _serve() -> None:
    import realm
    from realm.bench import time_generation

    state: dict[str, Any] = {}

    def engine():
        if "engine" not in state:
            raise RuntimeError("no engine: 'load' first")
        return state["engine"]

    def load(msg):
        t0 = time.perf_counter()
        e = state["engine"] = realm.load(msg["model"]).engine(msg["engine"], n_ctx=msg["n_ctx"], **msg["options"])
        return {**_plain(e.stats()), "load_seconds": time.perf_counter() - t0, "pid": os.getpid()}

    def run(msg):
        prefill, decode, per_token = time_generation(engine(), msg["ids"], msg["gen_tokens"])
        return {"prefill_s": prefill, "decode_s": decode, "per_token": per_token, "stats": _plain(engine().stats())}

    def logits(msg):
        engine().reset()
        out = np.ascontiguousarray(engine().eval(msg["ids"], all_logits=True), "<f4")  # (T, vocab)
        out.tofile(msg["path"])
        return {"shape": list(out.shape)}

    serve(_TAG, {"load": load, "run": run, "logits": logits})
    if "engine" in state:
        state["engine"].close()


if __name__ == "__main__":
    _serve()
