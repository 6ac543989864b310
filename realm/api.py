"""The Python API: `realm.load(path)` -> `Model` (tokenizer, engines, generation, chat)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from realm.chat import ChatSession, ChatTemplate
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

    def chat_template(self, template: ChatTemplate | str | os.PathLike | None = None) -> ChatTemplate:
        """`template` as a ChatTemplate: None -> the GGUF's own, a str -> a built-in by name, a path -> a file."""
        if isinstance(template, ChatTemplate):
            return template
        if template is None or isinstance(template, str):
            return ChatTemplate.for_model(self, name=template)
        if isinstance(template, os.PathLike):
            return ChatTemplate.for_model(self, file=template)
        raise RealmError(f"template must be a ChatTemplate, a built-in name or a path, got {type(template).__name__}")

    def chat(self, messages: list[dict], *, template: ChatTemplate | str | os.PathLike | None = None,
             engine="wasm", max_tokens: int = 256, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
             min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64, seed: int = 0,
             stop: Sequence[str] = (), **engine_options) -> Generation:
        """Stream the assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]).

        The prompt is the chat template's rendering (see `chat_template`); generation stops at the
        template's end-of-turn tokens too. An engine object passed as `engine` is reset first (the
        prompt is the whole conversation); for multi-turn reuse of the KV cache, use `chat_session`.
        """
        t0 = time.perf_counter()
        tmpl = self.chat_template(template)
        ids = tmpl.encode(self.tokenizer, messages, add_generation_prompt=True)
        if isinstance(engine, str):
            engine = self.engine(engine, **engine_options)
        elif engine.n_past:
            engine.reset()
        load = self.load_seconds + time.perf_counter() - t0
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
        return Generation(engine, self.tokenizer, ids, max_tokens=max_tokens, sampling=sampling, stop=stop,
                          stop_ids=tmpl.stop_ids_for(self.tokenizer), load_seconds=load)

    def chat_session(self, *, template: ChatTemplate | str | os.PathLike | None = None, engine="wasm",
                     system: str | None = None, max_tokens: int = 256, temperature: float = 0.0, top_k: int = 40,
                     top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                     seed: int = 0, stop: Sequence[str] = (), **engine_options) -> ChatSession:
        """A multi-turn conversation keeping one engine's KV cache: `session.send(text)` streams a reply
        and evaluates only the tokens the turn adds; `session.reset()` starts over."""
        tmpl = self.chat_template(template)
        if isinstance(engine, str):
            engine = self.engine(engine, **engine_options)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
        return ChatSession(self, engine, tmpl, system=system, max_tokens=max_tokens, sampling=sampling, stop=stop)

    def close(self) -> None:
        self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(path: str | os.PathLike | None = None, progress: Progress | None = None) -> Model:
    """Open a GGUF model; None opens the default model (Gemma 3 270M Q4_K_M from PyPI)."""
    return Model(resolve_model(path, progress))
