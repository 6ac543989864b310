"""Token sampling: greedy, repeat penalty, top-k, top-p, min-p, temperature, with a seeded RNG.

The algorithm and the RNG (splitmix64) are specified once, here, and the Rust guest's
`realm_sample` reproduces them bit for bit so a seed gives the same run on every engine.
The order and defaults follow llama.cpp's common sampler chain
(https://github.com/ggml-org/llama.cpp/blob/b6800/common/sampling.cpp):
penalties -> top-k -> top-p -> min-p -> temperature -> draw.

    1. x = logits (f32); repeat penalty on each distinct token among the last `repeat_last_n`
       of the history: x > 0 -> x / penalty, else x * penalty.
    2. temperature <= 0: argmax (lowest id among equal maxima); the RNG is not advanced.
    3. candidates ordered by (x desc, id asc); 0 < top_k < vocab keeps the first top_k.
    4. top_p < 1: softmax (f64) over the candidates, keep the shortest prefix with cumsum >= top_p.
    5. min_p > 0: softmax (f64) over the rest, keep p >= min_p * p_max.
    6. w = exp(x / temperature - max) (f64); u = uniform() * sum(w); the first candidate whose
       running sum exceeds u is drawn (the last one if rounding leaves none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from realm.errors import RealmError

_MASK64 = (1 << 64) - 1


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014): a tiny RNG both Python and the guest implement."""

    def __init__(self, seed: int):
        self.state = seed & _MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A float64 in [0, 1) from the top 53 bits."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


@dataclass
class SamplingParams:
    """Sampling settings; temperature 0 is greedy (realm's default, so runs are reproducible)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = 0

    def validate(self) -> "SamplingParams":
        checks = [
            (np.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (np.isfinite(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (np.isfinite(self.min_p) and 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (np.isfinite(self.repeat_penalty) and self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
            (0 <= self.seed < 1 << 64, "seed must be in [0, 2^64)"),
        ]
        for ok, message in checks:
            if not ok:
                raise RealmError(f"invalid sampling parameter: {message}")
        return self


@dataclass
class Sampler:
    """Stateful sampler: holds the RNG; `sample(logits, history)` returns one token id."""

    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self):
        self.params.validate()
        self.rng = SplitMix64(self.params.seed)

    def sample(self, logits: np.ndarray, history: list[int] | np.ndarray = ()) -> int:
        return sample(logits, history, self.params, self.rng)


def apply_repeat_penalty(x: np.ndarray, history, penalty: float, last_n: int) -> None:
    """In place on f32 logits `x`: penalize each distinct token among the last `last_n` of history."""
    if penalty == 1.0 or last_n <= 0 or len(history) == 0:
        return
    recent = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    recent = recent[(recent >= 0) & (recent < x.shape[0])]
    vals = x[recent]
    p = np.float32(penalty)
    x[recent] = np.where(vals > 0, vals / p, vals * p)


def sample(logits: np.ndarray, history, params: SamplingParams, rng: SplitMix64) -> int:
    """One token id from `logits` (vocab,) following the module docstring's algorithm."""
    x = np.array(logits, dtype=np.float32, copy=True).reshape(-1)  # (vocab,)
    apply_repeat_penalty(x, history, params.repeat_penalty, params.repeat_last_n)
    if params.temperature <= 0:
        return int(np.argmax(x))
    vocab = x.shape[0]
    if 0 < params.top_k < vocab:
        # the k largest, then ordered by (value desc, id asc); argpartition keeps ties arbitrary,
        # so take everything >= the k-th value and cut after the stable sort
        kth = np.partition(x, vocab - params.top_k)[vocab - params.top_k]
        cand = np.nonzero(x >= kth)[0]
    else:
        cand = np.arange(vocab)
    cand = cand[np.lexsort((cand, -x[cand].astype(np.float64)))]
    if 0 < params.top_k < cand.shape[0]:
        cand = cand[: params.top_k]
    xs = x[cand].astype(np.float64)  # (n_cand,) sorted descending
    if params.top_p < 1.0:
        c = np.cumsum(np.exp(xs - xs[0]))  # sequential sums, as the guest computes them
        keep = int(np.searchsorted(c / c[-1], params.top_p) + 1)
        cand, xs = cand[:keep], xs[:keep]
    if params.min_p > 0.0:
        p = np.exp(xs - xs[0])  # p[0] == 1 is the largest; normalising both sides cancels out
        keep = max(1, int(np.count_nonzero(p >= params.min_p)))
        cand, xs = cand[:keep], xs[:keep]
    y = xs / params.temperature
    c = np.cumsum(np.exp(y - y[0]))  # running sums of the weights
    u = rng.uniform() * float(c[-1])
    i = int(np.searchsorted(c, u, side="right"))
    return int(cand[min(i, cand.shape[0] - 1)])
