"""realm.kernels dequantization and activation quantization.

Numba dequantizers bit-exact against gguf-py (libggml-exact) and `dequantize_ref` on random blocks of
every type and on every tensor of the default model; f16 conversions against NumPy over all bit
patterns; Q8_0 quantization byte-exact against gguf-py, Q8_K against a NumPy transcription of
ggml's `quantize_row_q8_K_ref`; the wrapper's validation.
"""

from __future__ import annotations

import numpy as np
import pytest

from realm.errors import UnsupportedError
from realm.kernels import (dequantize, quantize_q8_0, quantize_q8_0_split, quantize_q8_k,
                           quantize_q8_k_split, warmup)
from realm.kernels._jit import jit, jit_disabled
from realm.kernels.dequant import f16_to_f32, f32_to_f16
from realm.quants import LAYOUTS, QK_K, SUPPORTED, GGMLType, dequantize_ref

gguf = pytest.importorskip("gguf")
from gguf.constants import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from compare import assert_bits_equal  # noqa: E402
from synth import random_blocks  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

SUPPORTED_TYPES = sorted(SUPPORTED)
GGUF_DEQUANTIZES = [t for t in SUPPORTED_TYPES if t != GGMLType.Q8_K]  # gguf-py has no Q8_K


# --- f16 bit conversions ------------------------------------------------------------------------


def test_f16_to_f32_all_bit_patterns():
    h = np.arange(0x10000, dtype=np.uint32).astype(np.uint16)  # every f16 bit pattern
    want = h.view(np.float16).astype(np.float32)
    got = dequantize(h, GGMLType.F16)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN payloads too
    for bits in (0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0x7E01, 0x8001, 0xFC00):
        assert np.float32(f16_to_f32(bits)).view(np.uint32) == want.view(np.uint32)[bits]


@jit
def _f32_to_f16_array(f, out):
    for i in range(f.shape[0]):
        out[i] = f32_to_f16(f[i])


def test_f32_to_f16_matches_numpy_rounding():
    rng = np.random.default_rng(16)
    bits = np.concatenate([
        rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32),  # anything finite
        0x33000000 + rng.integers(0, 0x1000000, size=5000, dtype=np.uint32),  # f16 subnormal range
        np.arange(0x387FE000, 0x38802000, 0x10, dtype=np.uint32),  # subnormal/normal boundary
        np.arange(0x477FE000, 0x47802000, 0x10, dtype=np.uint32),  # around 65504 -> inf
        np.array([0, 0x80000000, 0x3F800000, 0x33000000, 0x33000001, 0x337FFFFF, 0x7F800000, 0xFF800000],
                 dtype=np.uint32),
    ])
    f = bits.view(np.float32)
    f = f[np.isfinite(f) | np.isinf(f)]
    got = np.empty(f.shape[0], dtype=np.int64)  # (n,)
    _f32_to_f16_array(f, got)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got.astype(np.uint16), want)


# --- dequantization on random blocks -------------------------------------------------------------


@pytest.mark.parametrize("t", GGUF_DEQUANTIZES, ids=lambda t: t.name)
@pytest.mark.parametrize("nb", [1, 5, 67])
def test_dequantize_matches_gguf(t, nb):
    rng = np.random.default_rng([int(t), nb, 1])
    blocks = random_blocks(t, nb, rng)
    want = gguf_dequantize(blocks.reshape(-1), GGMLQuantizationType(int(t)))
    got = dequantize(blocks.reshape(-1), t)
    assert got.dtype == np.float32 and got.shape == (nb * LAYOUTS[t].block_size,)
    assert_bits_equal(got, want, t.name)


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("nb", [1, 33])
def test_dequantize_matches_reference(t, nb):
    rng = np.random.default_rng([int(t), nb, 2])
    blocks = random_blocks(t, nb, rng)
    assert_bits_equal(dequantize(blocks, t), dequantize_ref(blocks, t), t.name)


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F16, GGMLType.BF16, GGMLType.F32],
                         ids=lambda t: t.name)
def test_dequantize_input_forms(t):
    """bytes, bytearray, memoryview, read-only arrays, 2-D row arrays and unaligned views all work."""
    rng = np.random.default_rng([int(t), 3])
    blocks = random_blocks(t, 16, rng)  # (16, type_size)
    want = dequantize_ref(blocks, t)
    ro = blocks.copy()
    ro.setflags(write=False)
    unaligned = np.frombuffer(b"\0" + blocks.tobytes(), dtype=np.uint8)[1:]
    for data in (blocks.tobytes(), bytearray(blocks.tobytes()), memoryview(blocks.tobytes()), ro,
                 ro.reshape(4, -1), unaligned):
        assert_bits_equal(dequantize(data, t), want, f"{t.name} from {type(data).__name__}")


def test_dequantize_into_out():
    rng = np.random.default_rng(4)
    blocks = random_blocks(GGMLType.Q5_0, 8, rng)
    out = np.full(8 * 32, np.nan, dtype=np.float32)  # (256,)
    res = dequantize(blocks, GGMLType.Q5_0, n_elements=256, out=out)
    assert res is out
    assert_bits_equal(out, dequantize_ref(blocks, GGMLType.Q5_0))


def test_dequantize_empty():
    assert dequantize(b"", GGMLType.Q6_K).shape == (0,)


def test_warmup_returns_seconds():
    assert warmup() >= 0.0


# --- dequantization: wrapper validation ----------------------------------------------------------


def test_short_buffer_rejected():
    from realm.errors import KernelArgumentError, RealmError

    with pytest.raises(ValueError, match="blk.3.ffn_down.weight.*Q4_K") as e:
        dequantize(b"\0" * (144 * 2 - 1), GGMLType.Q4_K, tensor="blk.3.ffn_down.weight")
    assert isinstance(e.value, KernelArgumentError) and isinstance(e.value, RealmError)  # one-line CLI error


def test_element_count_mismatch_rejected():
    with pytest.raises(ValueError, match="expected 512"):
        dequantize(b"\0" * 144, GGMLType.Q4_K, n_elements=512)


@pytest.mark.parametrize("out", [
    np.empty(255, np.float32), np.empty(257, np.float32), np.empty(256, np.float64),
    np.empty((16, 16), np.float32), np.empty(512, np.float32)[::2], [0.0] * 256,
], ids=["short", "long", "float64", "2-D", "strided", "list"])
def test_bad_out_rejected(out):
    with pytest.raises(ValueError, match="out"):
        dequantize(b"\0" * 144, GGMLType.Q4_K, out=out)


def test_read_only_out_rejected():
    out = np.empty(256, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        dequantize(b"\0" * 144, GGMLType.Q4_K, out=out)


def test_non_contiguous_input_rejected():
    blocks = np.zeros((4, 288), dtype=np.uint8)[:, :144]
    with pytest.raises(ValueError, match="contiguous"):
        dequantize(blocks, GGMLType.Q4_K)


@pytest.mark.parametrize("t", [GGMLType.IQ2_XS, GGMLType.TQ2_0, GGMLType.MXFP4, GGMLType.Q8_1, 99],
                         ids=str)
def test_unsupported_type_rejected(t):
    with pytest.raises(UnsupportedError, match="token_embd.weight"):
        dequantize(b"\0" * 1088, t, tensor="token_embd.weight")


# --- every tensor of the default model -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(jit_disabled(), reason="the whole model is too slow without the JIT")
def test_every_default_model_tensor_matches_gguf(default_model):
    from realm.gguf import GGUFFile

    seen = set()
    with GGUFFile(default_model) as g:
        for name, info in g.tensors.items():
            rows = g.tensor_rows(name)  # (n_rows, row_bytes) read-only
            qtype = GGMLQuantizationType(int(info.ggml_type))
            step = max(1, (1 << 22) // max(1, info.ne[0]))  # ~4M elements per chunk
            for lo in range(0, rows.shape[0], step):
                chunk = rows[lo:lo + step]
                want = gguf_dequantize(chunk, qtype)
                got = dequantize(chunk, info.ggml_type, n_elements=want.size, tensor=name)
                assert_bits_equal(got, want, f"{name} rows {lo}..{lo + chunk.shape[0]}")
            seen.add(info.ggml_type)
    assert seen >= {GGMLType.F32, GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K}


# --- activation quantization ---------------------------------------------------------------------


def q8_k_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy transcription of ggml's quantize_row_q8_K_ref facts -> (d (nb,), qs (nb, 256), bsums (nb, 16))."""
    xb = x.reshape(-1, QK_K)  # (nb, 256)
    nb = xb.shape[0]
    d = np.zeros(nb, dtype=np.float32)
    qs = np.zeros((nb, QK_K), dtype=np.int8)
    for i in range(nb):
        j = int(np.argmax(np.abs(xb[i])))  # first index of the largest |x|
        if np.abs(xb[i, j]) == 0:
            continue
        iscale = np.float32(-127.0) / xb[i, j]
        q = np.rint(iscale * xb[i]).astype(np.int32)  # nearest, ties to even (float32 product)
        qs[i] = np.minimum(q, 127)
        d[i] = np.float32(1.0) / iscale
    bsums = qs.reshape(nb, 16, 16).astype(np.int32).sum(axis=2).astype(np.int16)
    return d, qs, bsums


def activations(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ties = np.tile(np.array([127.0, -2.5, 2.5, 0.5, -0.5, 1.5, 3.5, -126.5], np.float32), n // 8)
    xs = [(rng.standard_normal(n) * s).astype(np.float32) for s in (1e-4, 1.0, 300.0)]
    xs.append(ties)  # exact .5 ties: Q8_0 rounds away from zero, Q8_K to even
    xs.append(-ties)
    xs.append(np.zeros(n, np.float32))
    spiky = (rng.standard_normal(n) * 0.01).astype(np.float32)
    spiky[::37] = 50.0
    spiky[5::37] = -50.0  # equal |x| of both signs: the first one sets the sign of d
    xs.append(spiky)
    return xs


@pytest.mark.parametrize("n", [32, 256, 2048])
def test_quantize_q8_0_matches_gguf(n):
    for k, x in enumerate(activations(n, n)):
        want = gguf_quantize(x, GGMLQuantizationType.Q8_0).reshape(-1)
        got = quantize_q8_0(x)
        assert got.dtype == np.uint8 and got.shape == (n // 32 * 34,)
        np.testing.assert_array_equal(got, want, err_msg=f"activation set {k}")


@pytest.mark.parametrize("n", [256, 2048])
def test_quantize_q8_k_matches_ggml_reference(n):
    for k, x in enumerate(activations(n, n + 1)):
        d, qs, bsums = q8_k_reference(x)
        got = quantize_q8_k(x).reshape(-1, 292)
        assert got.shape == (n // 256, 292)
        np.testing.assert_array_equal(got[:, 0:4].copy().view("<f4")[:, 0].view(np.uint32),
                                      d.view(np.uint32), err_msg=f"d, set {k}")
        np.testing.assert_array_equal(got[:, 4:260].view(np.int8), qs, err_msg=f"qs, set {k}")
        np.testing.assert_array_equal(got[:, 260:].copy().view("<i2"), bsums, err_msg=f"bsums, set {k}")


def test_quantize_round_trip_error_bounds():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(4096) * 3).astype(np.float32)
    y0 = dequantize(quantize_q8_0(x), GGMLType.Q8_0)
    amax0 = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
    # |x - q*d16| <= d/2 + 127*|d - d16| with d16 the f16-rounded d
    assert (np.abs(y0 - x).reshape(-1, 32) <= amax0 / 127 * (0.5 + 127 * 2.0**-11) * 1.0001).all()
    yk = dequantize(quantize_q8_k(x), GGMLType.Q8_K)
    amaxk = np.abs(x.reshape(-1, 256)).max(axis=1, keepdims=True)
    assert (np.abs(yk - x).reshape(-1, 256) <= amaxk / 127 * 0.5001).all()


def test_split_equals_packed():
    for x in activations(1024, 9):
        packed0 = quantize_q8_0(x).reshape(-1, 34)
        qs = np.empty(1024, np.int8)
        d = np.empty(32, np.float32)
        quantize_q8_0_split(x, qs, d)
        np.testing.assert_array_equal(qs, packed0[:, 2:].reshape(-1).view(np.int8))
        np.testing.assert_array_equal(d.view(np.uint32),
                                      packed0[:, :2].copy().view("<f2").astype(np.float32)[:, 0].view(np.uint32))
        packedk = quantize_q8_k(x).reshape(-1, 292)
        for bsums_dtype in (np.int16, np.int32):
            qs = np.empty(1024, np.int8)
            d = np.empty(4, np.float32)
            bsums = np.empty(64, bsums_dtype)
            quantize_q8_k_split(x, qs, d, bsums)
            np.testing.assert_array_equal(qs, packedk[:, 4:260].reshape(-1).view(np.int8))
            np.testing.assert_array_equal(d.view(np.uint32), packedk[:, 0:4].copy().view("<u4")[:, 0])
            np.testing.assert_array_equal(bsums, packedk[:, 260:].copy().view("<i2").reshape(-1))


def test_quantize_validation():
    x = np.zeros(256, np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.zeros(33, np.float32))
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q8_k(np.zeros(512 + 32, np.float32))
    with pytest.raises(ValueError, match="qs_out"):
        quantize_q8_0_split(x, np.empty(256, np.uint8), np.empty(8, np.float32))
    with pytest.raises(ValueError, match="d_out"):
        quantize_q8_0_split(x, np.empty(256, np.int8), np.empty(7, np.float32))
    with pytest.raises(ValueError, match="bsums_out"):
        quantize_q8_k_split(x, np.empty(256, np.int8), np.empty(1, np.float32), np.empty(16, np.int64))
