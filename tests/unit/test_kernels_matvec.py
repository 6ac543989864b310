"""realm.kernels.matvec: fused quantized matvec / matmul / get_rows against gguf-py's dequantizers.

The oracle is `gguf.quants.dequantize(w) @ x` in float64. Errors are measured relative to
`sum(|w| |x|)` per row (the scale of float32 rounding in a dot product); tolerances live in TOL.
"""

from __future__ import annotations

import numpy as np
import pytest

from realm.errors import UnsupportedError
from realm.kernels import matvec as mv
from realm.quants import LAYOUTS, GGMLType, block_size_and_bytes, row_bytes

gq = pytest.importorskip("gguf.quants")
GQT = pytest.importorskip("gguf").GGMLQuantizationType

# Largest allowed |out - ref| / sum(|w||x|) per row, per (operation, type). f32 accumulation over
# a few hundred products is ~1e-7 relative; the bound leaves room for reassociated (SIMD) sums.
_F32_DOT = 2e-6
TOL: dict[tuple[str, GGMLType], float] = {
    (op, t): _F32_DOT for op in ("matvec", "matmul") for t in mv.MATVEC_TYPES
}
# get_rows is a plain dequantization: bit-exact with gguf-py.
TOL.update({("get_rows", t): 0.0 for t in mv.MATVEC_TYPES})

ALL_TYPES = sorted(mv.MATVEC_TYPES, key=lambda t: t.value)
HOT_TYPES = [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K]


def _cols(t: GGMLType, n_blocks: int = 3) -> int:
    bs = block_size_and_bytes(t)[0]
    return bs * n_blocks if bs > 1 else 32 * n_blocks


def random_rows(t: GGMLType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, row_bytes) uint8, read-only: random bytes with finite, small f16 scale fields."""
    if t == GGMLType.F32:
        w = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    elif t == GGMLType.F16:
        w = rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    elif t == GGMLType.BF16:
        f = rng.standard_normal((rows, cols)).astype(np.float32)
        w = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        layout = LAYOUTS[t]
        w = rng.integers(0, 256, (rows, row_bytes(t, cols)), dtype=np.uint8)
        blocks = w.reshape(rows, -1, layout.type_size)
        off = 0
        for _name, dtype, count in layout.fields:
            size = {"f16": 2, "f32": 4, "i16": 2, "u8": 1, "i8": 1}[dtype] * count
            if dtype == "f16":
                v = rng.uniform(-0.05, 0.05, blocks.shape[:2] + (count,)).astype(np.float16)
                blocks[:, :, off:off + size] = v.view(np.uint8).reshape(blocks.shape[:2] + (size,))
            off += size
    w = np.ascontiguousarray(w)
    w.flags.writeable = False  # weights are read-only mmap views in the engine
    return w


def reference(w: np.ndarray, t: GGMLType, cols: int) -> np.ndarray:
    """gguf-py's dequantization as float64 (rows, cols)."""
    return np.asarray(gq.dequantize(np.asarray(w), GQT(int(t))), np.float64).reshape(w.shape[0], cols)


def assert_close(got: np.ndarray, ref: np.ndarray, scale: np.ndarray, tol: float, what: str) -> None:
    err = np.abs(got.astype(np.float64) - ref) / np.maximum(scale, 1e-30)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err[worst] <= tol, (
        f"{what}: worst at {tuple(int(i) for i in worst)}: got {got[worst]!r}, want {ref[worst]!r}, "
        f"relative error {err[worst]:.3e} > {tol:.1e}")


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 3, 5, 7, 131])
def test_matvec_matches_gguf(t, rows, rng):
    cols = _cols(t)
    w = random_rows(t, rows, cols, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    wd = reference(w, t, cols)
    for parallel in (False, True):
        out = np.full(rows, np.nan, np.float32)
        assert mv.matvec(w, t, x, out, parallel=parallel) is out
        assert_close(out, wd @ x.astype(np.float64), np.abs(wd) @ np.abs(x.astype(np.float64)),
                     TOL["matvec", t], f"matvec {t.name} ({rows}x{cols}, parallel={parallel})")


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,n_tok", [(1, 1), (5, 3), (37, 8)])
def test_matmul_matches_gguf(t, rows, n_tok, rng):
    cols = _cols(t, 2)
    w = random_rows(t, rows, cols, rng)
    x = rng.standard_normal((n_tok, cols)).astype(np.float32)  # (T, cols)
    wd = reference(w, t, cols)
    out = np.full((n_tok, rows), np.nan, np.float32)  # (T, rows)
    assert mv.matmul(w, t, x, out) is out
    xd = x.astype(np.float64)
    assert_close(out, xd @ wd.T, np.abs(xd) @ np.abs(wd).T, TOL["matmul", t],
                 f"matmul {t.name} (T={n_tok}, {rows}x{cols})")


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows_is_dequantization(t, rng):
    rows, cols = 9, _cols(t, 2)
    w = random_rows(t, rows, cols, rng)
    ids = [8, 0, 3, 3]
    out = mv.get_rows(w, t, ids, np.empty((len(ids), cols), np.float32))
    ref = reference(w, t, cols)[ids]
    assert_close(out, ref, np.maximum(np.abs(ref), 1e-30), TOL["get_rows", t], f"get_rows {t.name}")
    full = mv.dequantize_rows(w, t, np.empty((rows, cols), np.float32))
    np.testing.assert_array_equal(full, reference(w, t, cols).astype(np.float32))
    many = rng.integers(0, rows, mv.PARALLEL_MIN_BYTES // (4 * cols) + 3)  # the parallel path
    out = mv.get_rows(w, t, many, np.empty((len(many), cols), np.float32))
    np.testing.assert_array_equal(out, reference(w, t, cols).astype(np.float32)[many])


@pytest.mark.parametrize("t", HOT_TYPES, ids=lambda t: t.name)
def test_matvec_on_default_model_rows(t, default_model, rng):
    from realm.gguf import GGUFFile

    with GGUFFile(default_model) as f:
        name = next(n for n, info in f.tensors.items() if info.ggml_type == t and len(info.ne) == 2)
        cols = f.tensors[name].ne[0]
        w = f.tensor_rows(name)[:67]
        x = rng.standard_normal(cols).astype(np.float32)
        wd = reference(w, t, cols)
        out = mv.matvec(w, t, x, np.empty(w.shape[0], np.float32))
        assert_close(out, wd @ x.astype(np.float64), np.abs(wd) @ np.abs(x.astype(np.float64)),
                     TOL["matvec", t], f"matvec {name} ({t.name})")


def test_writeable_weights_and_exact_small_values(rng):
    # Q8_0 with d = 1 and small integers: the dot is exact in float32
    t = GGMLType.Q8_0
    w = np.zeros((3, 2, 34), np.uint8)
    w[:, :, 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    w[:, :, 2:] = rng.integers(-8, 8, (3, 2, 32)).astype(np.int8).view(np.uint8)
    w = w.reshape(3, 68)
    x = rng.integers(-4, 5, 64).astype(np.float32)
    q = w.reshape(3, 2, 34)[:, :, 2:].view(np.int8).reshape(3, 64).astype(np.float32)
    np.testing.assert_array_equal(mv.matvec(w, t, x, np.empty(3, np.float32)), q @ x)


# --- validation: every bad argument is a typed error, never a silent over-read ---------------


def _ok_args(rng, t=GGMLType.Q4_0, rows=4):
    cols = _cols(t, 2)
    return random_rows(t, rows, cols, rng), t, rng.standard_normal(cols).astype(np.float32), \
        np.empty(rows, np.float32)


def test_wrong_row_bytes_rejected(rng):
    w, t, x, out = _ok_args(rng)
    with pytest.raises(mv.KernelArgumentError, match="bytes"):
        mv.matvec(np.ascontiguousarray(w[:, :-1]), t, x, out)  # a short row: would over-read
    with pytest.raises(mv.KernelArgumentError):
        mv.matvec(w, t, np.zeros(x.shape[0] + 32, np.float32), out)  # x longer than the rows


def test_wrong_dtypes_rejected(rng):
    w, t, x, out = _ok_args(rng)
    with pytest.raises(mv.KernelArgumentError, match="float32"):
        mv.matvec(w, t, x.astype(np.float64), out)
    with pytest.raises(mv.KernelArgumentError, match="uint8"):
        mv.matvec(w.view(np.int8), t, x, out)
    with pytest.raises(mv.KernelArgumentError, match="float32"):
        mv.matvec(w, t, x, out.astype(np.float64))
    with pytest.raises(mv.KernelArgumentError):
        mv.matvec(w.tobytes(), t, x, out)


def test_short_or_wrong_outputs_rejected(rng):
    w, t, x, out = _ok_args(rng)
    with pytest.raises(mv.KernelArgumentError, match="shape"):
        mv.matvec(w, t, x, out[:-1])
    with pytest.raises(mv.KernelArgumentError, match="shape"):
        mv.matmul(w, t, x[None, :], np.empty((1, w.shape[0] - 1), np.float32))
    ro = np.empty(w.shape[0], np.float32)
    ro.flags.writeable = False
    with pytest.raises(mv.KernelArgumentError, match="writeable"):
        mv.matvec(w, t, x, ro)


def test_non_contiguous_rejected(rng):
    w, t, x, out = _ok_args(rng, rows=8)
    with pytest.raises(mv.KernelArgumentError, match="contiguous"):
        mv.matvec(w[::2], t, x, np.empty(4, np.float32))
    x2 = np.repeat(x, 2)[::2]
    with pytest.raises(mv.KernelArgumentError, match="contiguous"):
        mv.matvec(w, t, x2, out)
    with pytest.raises(mv.KernelArgumentError, match="contiguous"):
        mv.matvec(w, t, x, np.empty(2 * w.shape[0], np.float32)[::2])


def test_cols_not_a_block_multiple_rejected(rng):
    w, t, x, out = _ok_args(rng, t=GGMLType.Q4_K)
    with pytest.raises(mv.KernelArgumentError, match="block size"):
        mv.matvec(w, t, np.zeros(x.shape[0] - 32, np.float32), out)


@pytest.mark.parametrize("t", [GGMLType.Q8_K, GGMLType.IQ2_XXS, GGMLType.Q8_1, 99])
def test_unsupported_types(t, rng):
    w, _, x, out = _ok_args(rng)
    with pytest.raises(UnsupportedError):
        mv.matvec(w, t, x, out)
    with pytest.raises(UnsupportedError):
        mv.get_rows(w, t, [0], np.empty((1, x.shape[0]), np.float32))


def test_get_rows_bad_ids(rng):
    w, t, x, _ = _ok_args(rng)
    out = np.empty((1, x.shape[0]), np.float32)
    for bad in (-1, w.shape[0]):
        with pytest.raises(mv.KernelArgumentError, match="out of range"):
            mv.get_rows(w, t, [bad], out)
    with pytest.raises(mv.KernelArgumentError, match="shape"):
        mv.get_rows(w, t, [0, 1], out)


def test_matmul_zero_tokens_and_warmup(rng):
    w, t, x, _ = _ok_args(rng)
    out = np.empty((0, w.shape[0]), np.float32)
    assert mv.matmul(w, t, np.empty((0, x.shape[0]), np.float32), out).shape == (0, w.shape[0])
    mv.warmup()
