"""An engine in a process of its own, for `realm bench`: realm's engines (realm.bench_local), the llama.cpp
row (realm.bench_llamacpp) and the Node host's row (realm.bench_node).

`WorkerEngine` (parent side) looks like a realm engine to `realm.bench`: it sends realm's token ids to
the worker, which times prefill and greedy decode inside its own process (nothing crosses the pipe in
the timed loop) and writes all-position logits to a file (raw little-endian float32, T x vocab) for the
agreement table. Protocol: one JSON request per line on the worker's stdin; one JSON reply per request
on its stdout, on a line starting with the worker's tag (other output is ignored); `{"error": ...}`
replies become RealmError. The worker's stderr is kept and its last lines quoted when it fails.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from realm.errors import RealmError

REPLY_TIMEOUT_S = 900.0  # one request (model load, one timed run, all-logits pass)


class WorkerEngine:
    name = "worker"

    def __init__(self, cmd: list[str], tag: str, threads: int, load: dict[str, Any], cwd: str | None = None):
        self.threads = threads
        self._tag = tag
        self._log = tempfile.TemporaryFile(mode="w+")  # the worker's stderr, quoted when it fails
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                          text=True, bufsize=1, cwd=cwd)
        except OSError as e:
            self._log.close()
            raise RealmError(f"cannot start the {self.name} worker ({cmd[0]}): {e}") from e
        self._stats: dict[str, Any] = {}
        self._stats = self._request({"op": "load", **load})

    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc.poll() is not None:
            raise RealmError(f"{self.name} worker exited with code {proc.returncode}: {self._tail()}")
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                self.close()
                raise RealmError(f"{self.name} worker did not answer {msg['op']!r} within {REPLY_TIMEOUT_S:.0f} s")
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=10)
                raise RealmError(f"{self.name} worker exited with code {proc.returncode} during "
                                 f"{msg['op']!r}: {self._tail()}")
            if line.startswith(self._tag):
                reply = json.loads(line[len(self._tag):])
                if "error" in reply:
                    raise RealmError(f"{self.name} worker: {reply['error']}")
                return reply

    def _tail(self) -> str:
        self._log.seek(0)
        lines = [ln for ln in self._log.read().splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "no output"

    # --- the engine-like interface realm.bench uses -----------------------------------------------

    def timed_generation(self, ids: list[int], gen_tokens: int) -> tuple[float, float, dict[str, float]]:
        """(prefill s, decode s of gen_tokens greedy steps, counters per decoded token) measured in the worker."""
        r = self._request({"op": "run", "ids": [int(i) for i in ids], "gen_tokens": gen_tokens})
        self._stats.update({k: r[k] for k in ("peak_memory",) if k in r})
        self._stats.update(r.get("stats", {}))  # a worker that reports its engine's stats after each run
        return r["prefill_s"], r["decode_s"], r.get("per_token", {})

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Logits (T, vocab) of every position of `ids` (from a fresh cache), or (vocab,) of the last."""
        with tempfile.TemporaryDirectory(prefix="realm-bench-worker-") as tmp:
            path = os.path.join(tmp, "logits.f32")
            r = self._request({"op": "logits", "ids": [int(i) for i in ids], "path": path})
            shape = tuple(int(n) for n in r["shape"])
            logits = np.fromfile(path, dtype="<f4")
            if logits.size != shape[0] * shape[1] or shape[0] != len(ids):
                raise RealmError(f"{self.name} worker wrote {logits.size} logits, not {len(ids)} x {shape[1]}")
        logits = logits.reshape(shape)
        return logits if all_logits else logits[-1]

    def reset(self) -> None:
        """Every request starts from an empty cache."""

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "threads": self.threads, **self._stats}

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if not self._log.closed:
            self._log.close()


def serve(tag: str, handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """The worker side of the protocol (Python workers): one request per stdin line, dispatched on its
    "op" to `handlers`, whose dict is the reply; a failure becomes an {"error": ...} reply. Returns
    when stdin closes."""
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        handler = handlers.get(msg.get("op"))
        try:
            reply = handler(msg) if handler else {"error": f"unknown op {msg.get('op')!r}"}
        except Exception as e:  # reported to the parent, which raises RealmError
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(tag + json.dumps(reply) + "\n")
        out.flush()
