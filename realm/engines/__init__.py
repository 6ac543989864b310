"""Engines: every engine turns token ids into logits behind the same small interface.

    engine = create_engine("numba", gguf_file, config, n_ctx=2048)
    logits = engine.eval(ids)                    # (vocab,) float32 for the last position
    logits = engine.eval(ids, all_logits=True)   # (len(ids), vocab) float32
    engine.n_past; engine.reset(); engine.stats(); engine.close()

`eval` appends `ids` to the engine's KV cache. Engines are imported lazily so that using one does
not pay for the others (Numba compilation, wasmtime).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from realm.errors import RealmError

DEFAULT_CTX = 2048

_ENGINES = {
    "reference": ("realm.engines.reference", "ReferenceEngine"),
    "numba": ("realm.engines.numba", "NumbaEngine"),
    "wasm": ("realm.engines.wasm", "WasmEngine"),
}
ENGINE_NAMES = tuple(_ENGINES)


class Engine(Protocol):
    n_past: int

    def eval(self, ids, all_logits: bool = False) -> np.ndarray: ...

    def reset(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def create_engine(name: str, gguf_file, config, **options) -> Engine:
    """Instantiate engine `name` (one of ENGINE_NAMES) for an open model."""
    if name not in _ENGINES:
        raise RealmError(f"unknown engine {name!r} (choose from: {', '.join(ENGINE_NAMES)})")
    module, cls = _ENGINES[name]
    return getattr(importlib.import_module(module), cls)(gguf_file, config, **options)
