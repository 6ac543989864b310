"""The Python API: `realm.load(path)` -> `Model` (tokenizer, engines, generation)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from realm.config import ModelConfig
from realm.engines import DEFAULT_CTX, create_engine
from realm.errors import RealmError
from realm.generate import Generation
from realm.gguf import GGUFFile
from realm.models import Progress, resolve_model
from realm.sampling import SamplingParams
from realm.tokenizer import Tokenizer


class Model:
    """An open GGUF model: its metadata, tokenizer and config; engines are created on demand.

    Works on vocab-only GGUFs too (tokenizing only): then `config` is None and `engine()` raises,
    naming the reason.
    """

    def __init__(self, path: str | os.PathLike):
        t0 = time.perf_counter()
        self.path = Path(path)
        self.gguf = GGUFFile(self.path)
        self.tokenizer = Tokenizer.from_gguf(self.gguf)
        self.config: ModelConfig | None = None
        self.config_error: RealmError | None = None
        try:
            self.config = ModelConfig.from_gguf(self.gguf)
        except RealmError as e:  # a vocab-only or partial file: still useful for tokenizing
            self.config_error = e
        self.load_seconds = time.perf_counter() - t0

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def engine(self, name: str = "numba", *, n_ctx: int | None = None, **options):
        """A new engine (`reference`, `numba` or `wasm`) with its own KV cache."""
        if self.config is None:
            raise RealmError(f"{self.path.name} cannot run: {self.config_error}")
        if n_ctx is None:
            n_ctx = min(self.config.context_length, DEFAULT_CTX)
        if n_ctx <= 0:
            raise RealmError(f"context size must be positive, got {n_ctx}")
        return create_engine(name, self.gguf, self.config, n_ctx=n_ctx, **options)

    def generate(self, prompt: str, *, engine="wasm", max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 repeat_last_n: int = 64, seed: int = 0, stop: Sequence[str] = (), special: bool = False,
                 **engine_options) -> Generation:
        """Stream a completion of `prompt`: iterate the result for text pieces, then read `.stats`.

        `engine` is an engine name or an engine made by `Model.engine` (reused, its cache kept).
        """
        t0 = time.perf_counter()
        if isinstance(engine, str):
            engine = self.engine(engine, **engine_options)
        load = self.load_seconds + time.perf_counter() - t0
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
        ids = self.tokenize(prompt, add_bos=True, special=special)
        return Generation(engine, self.tokenizer, ids, max_tokens=max_tokens, sampling=sampling,
                          stop=stop, load_seconds=load)

    def close(self) -> None:
        self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(path: str | os.PathLike | None = None, progress: Progress | None = None) -> Model:
    """Open a GGUF model; None opens the default model (Gemma 3 270M Q4_K_M from PyPI)."""
    return Model(resolve_model(path, progress))
