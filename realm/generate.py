"""The engine-agnostic generation loop: prefill, sample, decode, stream text, stop, measure.

Any engine (reference, numba, wasm) plugs in through `eval`; tokenizer and sampler sit outside it,
so all engines produce the same tokens from the same logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from realm.errors import RealmError
from realm.sampling import Sampler, SamplingParams
from realm.tokenizer import StreamDecoder, Tokenizer


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0  # time of every eval after the prefill, plus sampling
    load_seconds: float = 0.0  # model open + engine creation, when the caller measured it
    stop_reason: str = ""  # "eos", "stop_string", "max_tokens", "context", "cancelled"
    engine: dict[str, Any] = field(default_factory=dict)  # the engine's own stats()

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # the first generated token comes from the prefill's logits; the others cost one eval each
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "load_seconds": self.load_seconds,
            "prefill_tokens_per_second": self.prefill_tokens_per_second,
            "decode_tokens_per_second": self.decode_tokens_per_second,
            "stop_reason": self.stop_reason,
            "engine": self.engine,
        }


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Generation:
    """Iterate to stream text pieces; afterwards `.text`, `.tokens` and `.stats` hold the result.

    Generation ends at a token of `stop_ids` (default: the tokenizer's end-of-generation ids; chat
    templates add their end-of-turn tokens) or at a `stop` string, which with `stop_after_text` only
    counts once the reply has some non-whitespace text (so "\n\n" can end an answer that starts with it).
    """

    def __init__(self, engine, tokenizer: Tokenizer, prompt_ids: Sequence[int], *, max_tokens: int,
                 sampling: SamplingParams, stop: Sequence[str] = (), n_ctx: int | None = None,
                 load_seconds: float = 0.0, stop_ids: Iterable[int] | None = None, stop_after_text: bool = False):
        if max_tokens < 0:
            raise RealmError("max_tokens must be >= 0")
        if not prompt_ids:
            raise RealmError("the prompt is empty: nothing to evaluate")
        if any(not isinstance(s, str) or not s for s in stop):
            raise RealmError("stop strings must be non-empty")
        n_ctx = n_ctx if n_ctx is not None else getattr(engine, "n_ctx", None)
        if n_ctx is not None and len(prompt_ids) + engine.n_past > n_ctx:
            raise RealmError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {n_ctx - engine.n_past}; "
                "shorten the prompt or raise the context size")
        self.engine, self.tokenizer = engine, tokenizer
        self.prompt_ids = list(prompt_ids)
        self.max_tokens, self.stop, self.n_ctx = max_tokens, tuple(stop), n_ctx
        self.stop_ids = frozenset(stop_ids) if stop_ids is not None else tokenizer.stop_ids
        self.stop_after_text = stop_after_text
        self.sampler = Sampler(sampling)
        self.tokens: list[int] = []
        self.text = ""
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids), load_seconds=load_seconds)
        self._cancelled = False

    def _stop_from(self, pending: str) -> int:
        """Where stop strings may start in `pending` (past the reply's leading whitespace if asked)."""
        if not self.stop_after_text or self.text.strip():
            return 0
        return len(pending) - len(pending.lstrip())

    def _find_stop(self, pending: str) -> int:
        start = self._stop_from(pending)
        return min((i for i in (pending.find(s, start) for s in self.stop) if i >= 0), default=-1)

    def cancel(self) -> None:
        """Stop after the current token (safe to call from another thread)."""
        self._cancelled = True

    def __iter__(self) -> Iterator[str]:
        stats, engine = self.stats, self.engine
        history = list(self.prompt_ids)
        decoder = StreamDecoder(self.tokenizer)
        pending = ""  # decoded text not yet yielded (may be the start of a stop string)
        t0 = time.perf_counter()
        logits = engine.eval(self.prompt_ids)
        stats.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats.stop_reason = "max_tokens"
        while len(self.tokens) < self.max_tokens:
            if self._cancelled:
                stats.stop_reason = "cancelled"
                break
            token = self.sampler.sample(logits, history)
            if token in self.stop_ids:
                stats.stop_reason = "eos"
                break
            self.tokens.append(token)
            history.append(token)
            stats.generated_tokens = len(self.tokens)
            pending += decoder.feed(token)
            if self.stop:
                hit = self._find_stop(pending)
                if hit >= 0:
                    pending = pending[:hit]
                    stats.stop_reason = "stop_string"
                    break
                keep = _held_back(pending, self.stop) if self._stop_from(pending) < len(pending) else 0
            else:
                keep = 0
            if len(pending) > keep:
                piece, pending = pending[: len(pending) - keep], pending[len(pending) - keep:]
                self.text += piece
                yield piece
            if len(self.tokens) >= self.max_tokens:
                break
            if self.n_ctx is not None and engine.n_past >= self.n_ctx:
                stats.stop_reason = "context"
                break
            logits = engine.eval([token])
        stats.decode_seconds = time.perf_counter() - t0
        if stats.stop_reason != "stop_string":
            pending += decoder.flush()
            if self.stop:
                hit = self._find_stop(pending)
                if hit >= 0:
                    pending = pending[:hit]
        if pending:
            self.text += pending
            yield pending
        stats.engine = engine.stats()


def greedy(engine, prompt_ids: Sequence[int], n: int) -> tuple[list[int], np.ndarray]:
    """Reset `engine`, then take `n` greedy steps after `prompt_ids`.

    Returns the chosen ids and the logits each choice was made from, `(n, vocab)`. The plain
    argmax loop engines are compared and benchmarked with (no sampler, no stop tokens).
    """
    engine.reset()
    logits = engine.eval(prompt_ids)
    tokens, steps = [], []
    for _ in range(n):
        steps.append(logits)
        tokens.append(int(np.argmax(logits)))
        logits = engine.eval([tokens[-1]])
    return tokens, np.stack(steps) if steps else np.empty((0, 0), np.float32)
