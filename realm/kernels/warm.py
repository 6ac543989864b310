"""Compile a model's Numba kernels before its first prompt, on two cores when the cache is cold.

A fresh install has an empty Numba cache, and the first prompt of the Numba engine used to compile
every kernel serially inside `eval` (44 s on the default model, with nothing printed). `warm()`
compiles exactly the kernels one model's tensor types need, through the same public wrappers the
engine calls (so the argument types, and hence the cached specializations, are the engine's):

    from realm.kernels.warm import warm
    warm({GGMLType.Q5_0, GGMLType.Q6_K}, embedding=GGMLType.Q8_0, packed={GGMLType.Q5_0, GGMLType.Q6_K},
         output=GGMLType.Q8_0, progress=print)

When some kernel has no cache entry yet and the machine has a second core, a worker process
compiles about half of the kernels into the shared cache while this process compiles the rest;
this process then loads the worker's half from the cache. With a warm cache it only loads (well
under a second) and starts no process. Progress goes to `progress` once warming has taken longer
than half a second. tests/unit/test_kernels_warm.py checks that an engine's first prompt and decode
step compile nothing after `warm()`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable

import numpy as np

from realm.errors import RealmError
from realm.quants import GGMLType, block_size_and_bytes

Progress = Callable[[str], None]

# Rough compile seconds of each task on this project's 2-core reference machine (cold cache),
# used only to balance the two halves.
_COST = {"matmul": 3.5, "matvec": 6.5, "get_rows": 1.7, "ops": 7.5, "repack": 1.0, "int8": 5.8}


def tasks_for(types: Iterable[GGMLType], embedding: GGMLType, packed: Iterable[GGMLType] = (),
              output: GGMLType | None = None) -> list[str]:
    """Task names ("matmul:Q4_K", "matvec:Q4_K", "repack:Q4_K", "int8", "get_rows:Q8_0", "ops") for a
    model's layer matrix types; a `packed` type decodes through its int8 copy (repack + int8 matvec);
    the `output` matrix is multiplied by `matvec` always (and by `matmul` for all-position logits)."""
    names = sorted({GGMLType(t).name for t in types} | ({GGMLType(output).name} if output is not None else set()))
    packed_names = {GGMLType(t).name for t in packed}
    out_name = GGMLType(output).name if output is not None else None
    tasks = ["ops", f"get_rows:{GGMLType(embedding).name}"] + (["int8"] if packed_names else [])
    for n in names:
        if n in packed_names:
            tasks.append(f"repack:{n}")
        if n not in packed_names or n == out_name:
            tasks.append(f"matvec:{n}")
        tasks.append(f"matmul:{n}")
    return tasks


def _rows(t: GGMLType, rows: int) -> tuple[np.ndarray, int]:
    """Read-only zero rows of type t (zero scales: finite everywhere), like the engine's mmap views."""
    bs, nbytes = block_size_and_bytes(t)
    cols = bs if bs > 1 else 32
    w = np.zeros((rows, cols // bs * nbytes), np.uint8)
    w.flags.writeable = False
    return w, cols


def run_task(name: str) -> None:
    """Compile (or load from cache) one task's kernels by calling them on tiny inputs."""
    from realm.kernels import matvec as mv
    from realm.kernels import ops

    if name == "ops":
        ops.warmup()
        return
    if name == "int8":
        from realm.kernels import int8rows as ir

        m = ir.Int8Rows(np.zeros((6, 64), np.int8), np.zeros((6, 2), np.float32), np.zeros((6, 2), np.float32),
                        32, GGMLType.Q4_K)  # every type's Int8Rows has these array types
        for parallel in (False, True):  # decode only: prompts multiply the quantized rows (matmul)
            ir.matvec_int8(m, np.ones(64, np.float32), np.empty(6, np.float32), parallel=parallel)
        return
    kind, _, tname = name.partition(":")
    try:
        t = GGMLType[tname]
    except KeyError:
        raise RealmError(f"warm: unknown ggml type {tname!r} in task {name!r}") from None
    w, cols = _rows(t, 6)
    if kind == "matvec":
        for parallel in (False, True):
            mv.matvec(w, t, np.ones(cols, np.float32), np.empty(6, np.float32), parallel=parallel)
    elif kind == "matmul":
        mv.matmul(w, t, np.ones((2, cols), np.float32), np.empty((2, 6), np.float32))
    elif kind == "get_rows":
        mv.get_rows(w, t, np.zeros(1, np.int64), np.empty((1, cols), np.float32))
    elif kind == "repack":
        from realm.kernels import int8rows

        int8rows.repack(w, t)
    else:
        raise RealmError(f"warm: unknown task {name!r}")


def _dispatchers(name: str) -> list:
    from realm.kernels import matvec as mv
    from realm.kernels import ops

    from realm.kernels import int8rows

    if name == "ops":
        return [ops.qk_rope_store, ops.attention, ops.residual_norm, ops.gated_act]
    if name == "int8":
        return [int8rows._matvec_serial, int8rows._matvec_parallel]
    kind, _, tname = name.partition(":")
    t = GGMLType[tname]
    if kind == "repack":
        return [int8rows.repack_kernel(t)]
    if kind == "matmul":
        return [mv._MATMUL[t]]
    if kind == "get_rows":
        return [mv._GET_ROWS[t]]
    return [mv.matvec_driver(t)]


def is_cached(name: str) -> bool:
    """Whether Numba's cache holds an index for every kernel of the task (a stale one still counts)."""
    try:
        return all(os.path.exists(d._cache._cache_file._index_path) for d in _dispatchers(name))
    except AttributeError:  # NUMBA_DISABLE_JIT, or a Numba whose cache internals moved: assume cached
        return True


def _split(tasks: list[str]) -> tuple[list[str], list[str]]:
    """Two halves of about equal estimated compile time (largest first, to the lighter half)."""
    mine: list[str] = []
    theirs: list[str] = []
    load = [0.0, 0.0]
    for name in sorted(tasks, key=lambda n: -_COST[n.partition(":")[0]]):
        side = 0 if load[0] <= load[1] else 1
        (mine if side == 0 else theirs).append(name)
        load[side] += _COST[name.partition(":")[0]]
    return mine, theirs


def warm(types: Iterable[GGMLType], embedding: GGMLType, packed: Iterable[GGMLType] = (),
         output: GGMLType | None = None, progress: Progress | None = None, workers: int | None = None) -> dict:
    """Compile or load every kernel a model of these matrix types needs; returns what was done."""
    from realm.kernels._jit import jit_disabled

    tasks = tasks_for(types, embedding, packed, output)
    t0 = time.perf_counter()
    if jit_disabled():
        return {"tasks": tasks, "cold": [], "worker": [], "seconds": 0.0}
    cold = [n for n in tasks if not is_cached(n)]
    if workers is None:
        workers = 1 if len(cold) >= 2 and (os.cpu_count() or 1) > 1 else 0
    done = threading.Event()
    if progress is not None:
        def announce():
            if not done.wait(0.5):
                what = ", ".join(sorted({n.partition(":")[2] for n in tasks if ":" in n and not n.startswith("get_rows")}))
                progress(f"compiling Numba kernels for {what} (first run only; cached for the next) ...")
        threading.Thread(target=announce, daemon=True).start()
    worker_tasks: list[str] = []
    proc = None
    if workers and cold:
        local, worker_tasks = _split(cold)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from realm.kernels.warm import _worker; "
                                 "_worker(sys.argv[1:])", *worker_tasks],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for name in tasks:
            if name not in worker_tasks:
                run_task(name)
        if proc is not None:
            try:
                _, err = proc.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                err = b"timed out after 900 s"
            if proc.returncode != 0 and progress is not None:  # not fatal: this process compiles them itself
                progress(f"kernel compile worker failed ({err.decode(errors='replace').strip()[-300:]}); "
                         "compiling here instead")
        for name in worker_tasks:
            run_task(name)  # loads what the worker cached (or compiles it, if the worker failed)
    finally:
        done.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - t0
    if progress is not None and seconds > 0.5:
        progress(f"Numba kernels ready in {seconds:.1f} s")
    return {"tasks": tasks, "cold": cold, "worker": worker_tasks, "seconds": seconds}


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker(tasks: list[str]) -> None:
    for name in tasks:
        run_task(name)
