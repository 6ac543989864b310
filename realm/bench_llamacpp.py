"""llama.cpp's row in `realm bench --compare-llama-cpp`: llama-cpp-python in a worker process of its own.

`LlamaCppRunner` (parent side) looks like a realm engine to `realm.bench`: it sends realm's token ids
to the worker (`python -m realm.bench_llamacpp`), which times prefill and greedy decode inside its
own process (nothing crosses the pipe inside the timed loop) and writes all-position logits to a
file for the agreement table (the protocol: realm.bench_worker). Optional: `pip install 'realm[llamacpp]'` (built from source).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from realm.bench_worker import WorkerEngine, serve
from realm.errors import RealmError

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
_TAG = "REALM-LLAMACPP "  # prefix of the worker's protocol lines (llama.cpp may print too)


def available() -> bool:
    """True when llama-cpp-python can be imported in this interpreter."""
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppRunner(WorkerEngine):
    """A llama.cpp model in a child process, driven with realm's token ids (one instance per thread count)."""

    name = "llama.cpp"

    def __init__(self, model_path: str | Path, n_ctx: int, threads: int):
        if not available():
            raise RealmError("--compare-llama-cpp needs llama-cpp-python: pip install 'realm[llamacpp]' "
                             f"({LLAMA_CPP_PYTHON}, built from source)")
        super().__init__([sys.executable, "-m", "realm.bench_llamacpp"], _TAG, threads,
                         {"model": str(model_path), "n_ctx": n_ctx, "threads": threads})


# ------------------------------------------------------------------ worker (child process) ------


def _load(model: str, n_ctx: int, threads: int, logits_all: bool = False):
    import llama_cpp

    with no_extra_buffer_types():
        return llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all, verbose=False)


@contextlib.contextmanager
def no_extra_buffer_types():
    """Models loaded meanwhile use llama.cpp's plain CPU buffers (no weight repacking, no AMX).

    `Llama(use_extra_bufts=False)` would land in **kwargs and be ignored: llama-cpp-python 0.3.36
    builds the model params from `llama_model_default_params()`, so that function is wrapped. The AMX
    path crashes on some Xeons; on this machine the plain CPU path measured as fast (2 threads,
    default model). Used by the bench worker, tests/differential/test_llama_cpp.py and
    benchmarks/llama_cpp_server.py.
    """
    from llama_cpp import llama_cpp as lib

    default_params = lib.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default_params


def _last_logits(llm) -> np.ndarray:
    from llama_cpp import llama_cpp as lib

    return np.ctypeslib.as_array(lib.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))


def _serve() -> None:
    state: dict[str, Any] = {}

    def load(msg):
        state["spec"] = spec = {k: msg[k] for k in ("model", "n_ctx", "threads")}
        t0 = time.perf_counter()
        state["llm"] = _load(**spec)
        import llama_cpp

        return {"load_seconds": time.perf_counter() - t0, "llama_cpp_python": llama_cpp.__version__,
                "use_extra_bufts": False}

    def run(msg):
        llm, ids, n = state["llm"], msg["ids"], msg["gen_tokens"]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t0  # like realm.bench.time_generation: the argmax after
        token = int(np.argmax(_last_logits(llm)))
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = int(np.argmax(_last_logits(llm)))
        return {"prefill_s": prefill, "decode_s": time.perf_counter() - t0}

    def logits(msg):
        full = _load(**state["spec"], logits_all=True)  # a second context that keeps every position's logits
        try:
            full.eval(msg["ids"])
            np.ascontiguousarray(full.scores[:len(msg["ids"])], "<f4").tofile(msg["path"])
        finally:
            full.close()
        return {"shape": [len(msg["ids"]), full.n_vocab()]}

    serve(_TAG, {"load": load, "run": run, "logits": logits})


if __name__ == "__main__":
    _serve()
