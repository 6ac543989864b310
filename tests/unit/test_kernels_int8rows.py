"""realm.kernels.int8rows: repacked int8 rows against realm's NumPy reference dequantizers.

Repacking is exact (scale * q + bias is the reference's float32 value, bit for bit); matvec and
matmul on the repacked rows are bounded like the fused kernels (relative to sum(|w||x|) per row).
"""

from __future__ import annotations

import numpy as np
import pytest

from realm.errors import KernelArgumentError
from realm.kernels import int8rows as ir
from realm.quants import GGMLType, block_size_and_bytes, dequantize_ref

from test_kernels_matvec import _F32_DOT, assert_close, random_rows

TYPES = sorted(ir.REPACK_TYPES, key=lambda t: t.value)


@pytest.fixture
def rng():
    return np.random.default_rng(20261203)


def _ref(w: np.ndarray, t: GGMLType, cols: int) -> np.ndarray:
    return dequantize_ref(np.ascontiguousarray(w), t).reshape(w.shape[0], cols)  # (rows, cols) f32


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_repack_is_the_reference_dequantization_bit_for_bit(t, rng):
    cols = 2 * max(256, block_size_and_bytes(t)[0])
    w = random_rows(t, 7, cols, rng)
    m = ir.repack(w, t)
    assert m.qs.shape == (7, cols) and m.nbytes == ir.repacked_bytes(t, 7, cols)
    g = m.group
    y = m.scale.repeat(g, axis=1) * m.qs.astype(np.float32)  # (rows, cols) f32, one rounding
    if m.bias.shape[1]:
        y = y + m.bias.repeat(g, axis=1)
    np.testing.assert_array_equal(y.view(np.uint32), _ref(w, t, cols).view(np.uint32))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 6, 133])
def test_matvec_int8_matches_the_reference(t, rows, rng):
    cols = 3 * max(256, block_size_and_bytes(t)[0])
    w = random_rows(t, rows, cols, rng)
    m = ir.repack(w, t)
    wd = _ref(w, t, cols).astype(np.float64)
    x = rng.standard_normal(cols).astype(np.float32)
    for parallel in (False, True):
        out = np.full(rows, np.nan, np.float32)
        assert ir.matvec_int8(m, x, out, parallel=parallel) is out
        assert_close(out, wd @ x, np.abs(wd) @ np.abs(x), _F32_DOT, f"matvec_int8 {t.name} parallel={parallel}")


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("rows,n_tok", [(1, 1), (19, 5), (64, 9)])
def test_matmul_int8_matches_the_reference(t, rows, n_tok, rng):
    cols = 2 * max(256, block_size_and_bytes(t)[0])
    w = random_rows(t, rows, cols, rng)
    m = ir.repack(w, t)
    wd = _ref(w, t, cols).astype(np.float64)
    x = rng.standard_normal((n_tok, cols)).astype(np.float32)
    out = np.full((n_tok, rows), np.nan, np.float32)
    assert ir.matmul_int8(m, x, out) is out
    assert_close(out, x @ wd.T, np.abs(x) @ np.abs(wd).T, _F32_DOT, f"matmul_int8 {t.name} T={n_tok}")


def test_bad_arguments_are_typed_errors(rng):
    with pytest.raises(KernelArgumentError, match="no int8 form"):
        ir.repack(np.zeros((1, 64), np.uint8), GGMLType.F32)
    with pytest.raises(KernelArgumentError, match="whole number"):
        ir.repack(np.zeros((1, 35), np.uint8), GGMLType.Q8_0)
    m = ir.repack(random_rows(GGMLType.Q8_0, 2, 64, rng), GGMLType.Q8_0)
    with pytest.raises(KernelArgumentError, match="columns"):
        ir.matvec_int8(m, np.ones(32, np.float32), np.empty(2, np.float32))
    with pytest.raises(KernelArgumentError, match="out"):
        ir.matvec_int8(m, np.ones(64, np.float32), np.empty(3, np.float32))
    with pytest.raises(KernelArgumentError, match="x"):
        ir.matmul_int8(m, np.ones((2, 64), np.float64), np.empty((2, 2), np.float32))
