"""The Node host's row in `realm bench --engines ...,node`: the same guest hosted by Node.js
(js/src/node.js), one instance, in a worker process (`node js/bin/bench-worker.mjs`) that times prefill
and greedy decode itself. Parent side: realm.bench_worker.WorkerEngine. Needs Node.js >= 20 and the
checkout's js/ folder (it is not part of a wheel)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from realm.bench_worker import WorkerEngine
from realm.errors import RealmError

NODE_MIN = 20
ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "js" / "bin" / "bench-worker.mjs"
_TAG = "REALM-NODE "


def find_node() -> str:
    """The `node` binary, >= NODE_MIN; RealmError saying what is missing otherwise."""
    node = shutil.which("node")
    if node is None:
        raise RealmError("the node engine needs Node.js >= 20 on PATH (apt-get install nodejs)")
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RealmError(f"cannot run {node} --version: {e}") from e
    m = re.match(r"v(\d+)\.", version)
    if not m or int(m.group(1)) < NODE_MIN:
        raise RealmError(f"the node engine needs Node.js >= {NODE_MIN}, found {version or 'no version'} at {node}")
    return node


class NodeRunner(WorkerEngine):
    """A model loaded by the Node host in a child process: one guest instance at `memory_budget`."""

    name = "node"

    def __init__(self, model_path: str | Path, n_ctx: int, memory_budget: int = 64 << 20):
        if not WORKER.is_file():
            raise RealmError(f"the node engine needs the checkout's JavaScript host ({WORKER} is missing)")
        super().__init__([find_node(), str(WORKER)], _TAG, 1,
                         {"model": str(model_path), "n_ctx": n_ctx, "memory_budget": memory_budget})
