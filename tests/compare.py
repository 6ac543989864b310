"""Engine comparisons shared by the differential tests: the one tolerance table and the assertions.

Tolerances are max |logit difference| keyed by (comparison, weight type), with the measured worst
case next to each group so headroom is visible. Synthetic models' logits reach ~10-40, the default
model's ~30.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from realm.generate import greedy
from realm.quants import GGMLType

log = logging.getLogger(__name__)

FLOAT_AND_LEGACY = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
                    GGMLType.Q5_1, GGMLType.Q8_0)
K_QUANT_TYPES = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)
DEFAULT_MODEL = "default model"

TOLERANCE: dict[tuple[str, GGMLType | str], float] = {
    # Numba vs the NumPy reference read the same bytes: f32 summation order only. Measured worst
    # (prefill and decode paths, both archs): float/legacy <= 1.1e-5, k-quants <= 7.2e-5 (llama Q4_K),
    # default model 7e-5 on 3 prompts.
    **{("numba-vs-reference", t): 1e-4 for t in FLOAT_AND_LEGACY},
    **{("numba-vs-reference", t): 5e-4 for t in K_QUANT_TYPES},
    ("numba-vs-reference", DEFAULT_MODEL): 1e-3,
    # The guest keeps K/V in f16 (Numba: f32), rounds activations to int16 per block for its integer
    # kernels and sums in another order. Measured worst: float/legacy <= 6.5e-3, k-quants <= 1.6e-2
    # (llama Q5_K, dim 256), default model 1.8e-2.
    **{("wasm-vs-numba", t): 2e-2 for t in FLOAT_AND_LEGACY if t != GGMLType.BF16},
    **{("wasm-vs-numba", t): 5e-2 for t in K_QUANT_TYPES},
    ("wasm-vs-numba", DEFAULT_MODEL): 0.1,
}


def types_for(comparison: str) -> list[GGMLType]:
    return [t for (c, t) in TOLERANCE if c == comparison and isinstance(t, GGMLType)]


def assert_logits_close(ref: np.ndarray, got: np.ndarray, tol: float, what: str) -> float:
    """ref, got (T, vocab): fail naming the worst position and its error; returns the worst error."""
    assert ref.shape == got.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite logits"
    err = np.abs(ref - got).max(axis=1)  # (T,)
    worst = int(err.argmax())
    log.info("%s: max |diff| %.3g at position %d", what, err[worst], worst)
    assert err[worst] <= tol, f"{what}: max |diff| {err[worst]:.3g} at position {worst} > tolerance {tol:g}"
    return float(err[worst])


def assert_greedy_equal(ref_engine, engine, prompt: list[int], n: int, tol: float, what: str) -> None:
    """Greedy continuations equal; a divergence where the reference's top-2 gap < tol is a logged near-tie."""
    ref_tokens, ref_steps = greedy(ref_engine, prompt, n)
    got_tokens, _ = greedy(engine, prompt, n)
    for i, (a, b) in enumerate(zip(ref_tokens, got_tokens)):
        if a != b:
            top2 = np.sort(ref_steps[i])[-2:]
            gap = float(top2[1] - top2[0])
            if gap < tol:
                log.warning("%s: greedy near-tie at step %d (top-2 gap %.3g): %d vs %d", what, i, gap, a, b)
                return
            pytest.fail(f"{what}: greedy token {i} differs: {a} vs {b} (top-2 gap {gap:.3g})")


def assert_default_model_agrees(ref_engine, engine, ids: list[int], comparison: str, n_greedy: int, what: str) -> None:
    """Logits at every position within tolerance, top-1 equal everywhere, greedy continuation equal."""
    tol = TOLERANCE[comparison, DEFAULT_MODEL]
    ref_engine.reset()
    engine.reset()
    expect = ref_engine.eval(ids, all_logits=True)  # (T, vocab)
    got = engine.eval(ids, all_logits=True)
    assert_logits_close(expect, got, tol, what)
    agree = expect.argmax(axis=1) == got.argmax(axis=1)
    assert agree.all(), f"{what}: top-1 differs at positions {np.flatnonzero(~agree).tolist()}"
    assert_greedy_equal(ref_engine, engine, ids, n_greedy, tol, what)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """float32 arrays equal bit for bit, except that any NaN matches any NaN; names the first mismatch."""
    got = np.asarray(got, dtype=np.float32).reshape(-1)
    want = np.asarray(want, dtype=np.float32).reshape(-1)
    assert got.shape == want.shape, what
    diff = got.view(np.uint32) != want.view(np.uint32)
    diff &= ~(np.isnan(got) & np.isnan(want))
    if diff.any():
        i = int(np.argmax(diff))
        pytest.fail(f"{what}: {int(diff.sum())} of {got.size} values differ; first at {i}: got {got[i]!r} "
                    f"(0x{got.view(np.uint32)[i]:08x}), want {want[i]!r} (0x{want.view(np.uint32)[i]:08x})")
