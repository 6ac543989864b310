"""realm.quants: the layout table against gguf-py's, and the NumPy reference dequantizers bit-exact
against gguf-py's (libggml-exact) dequantizers on random blocks of every type."""

from __future__ import annotations

import numpy as np
import pytest

from realm.errors import UnsupportedError
from realm.quants import (LAYOUTS, QK_K, SUPPORTED, GGMLType, block_size_and_bytes,
                          dequantize_ref, field_offsets, get_scale_min_k4)

gguf = pytest.importorskip("gguf")
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from compare import assert_bits_equal  # noqa: E402
from synth import random_blocks  # noqa: E402

SUPPORTED_TYPES = sorted(SUPPORTED)
GGUF_DEQUANTIZES = [t for t in SUPPORTED_TYPES if t != GGMLType.Q8_K]  # gguf-py has no Q8_K


# --- the layout table ------------------------------------------------------------------------


@pytest.mark.parametrize("t", list(GGMLType), ids=lambda t: t.name)
def test_type_ids_and_sizes_match_gguf(t):
    gt = GGMLQuantizationType[t.name]
    assert int(gt) == int(t)
    assert block_size_and_bytes(t) == GGML_QUANT_SIZES[gt]


def test_layouts_have_fields_summing_to_the_block_size():
    q4k = LAYOUTS[GGMLType.Q4_K]
    assert q4k.type_size == 2 + 2 + 12 + QK_K // 2 == 144
    assert field_offsets(GGMLType.Q6_K)["d"] == 208  # Q6_K stores d last
    for t, layout in LAYOUTS.items():
        offsets = field_offsets(t)
        assert list(offsets) == [name for name, _, _ in layout.fields]
        assert max(offsets.values()) < layout.type_size


def test_get_scale_min_k4_unpacks_known_values():
    sc_want = np.array([1, 22, 63, 40, 17, 63, 0, 45], dtype=np.uint8)
    m_want = np.array([5, 0, 33, 63, 62, 9, 31, 1], dtype=np.uint8)
    packed = np.zeros((1, 12), dtype=np.uint8)
    for j in range(4):  # written from the diagram, independently of the unpacking code
        packed[0, j] = sc_want[j] | ((sc_want[j + 4] >> 4) << 6)
        packed[0, j + 4] = m_want[j] | ((m_want[j + 4] >> 4) << 6)
        packed[0, j + 8] = (sc_want[j + 4] & 15) | ((m_want[j + 4] & 15) << 4)
    sc, m = get_scale_min_k4(packed)
    np.testing.assert_array_equal(sc[0], sc_want)
    np.testing.assert_array_equal(m[0], m_want)


# --- reference dequantizers against gguf-py ---------------------------------------------------


@pytest.mark.parametrize("t", GGUF_DEQUANTIZES, ids=lambda t: t.name)
@pytest.mark.parametrize("nb", [1, 7, 64])
def test_dequantize_ref_matches_gguf(t, nb):
    rng = np.random.default_rng([int(t), nb])
    blocks = random_blocks(t, nb, rng)
    want = gguf_dequantize(blocks.reshape(-1), GGMLQuantizationType(int(t)))
    got = dequantize_ref(blocks.reshape(-1), t)
    assert got.dtype == np.float32 and got.shape == (nb * LAYOUTS[t].block_size,)
    if LAYOUTS[t].block_size > 1:
        assert np.isfinite(got).all()
    assert_bits_equal(got, want)


def test_dequantize_ref_q8_k_is_d_times_qs():
    rng = np.random.default_rng(15)
    blocks = random_blocks(GGMLType.Q8_K, 5, rng)
    d = blocks[:, 0:4].copy().view("<f4")  # (5, 1)
    qs = blocks[:, 4:4 + QK_K].copy().view(np.int8).astype(np.float32)  # (5, 256)
    assert_bits_equal(dequantize_ref(blocks, GGMLType.Q8_K), d * qs)


def test_dequantize_ref_accepts_bytes_and_read_only_views():
    rng = np.random.default_rng(0)
    blocks = random_blocks(GGMLType.Q4_K, 3, rng)
    want = dequantize_ref(blocks, GGMLType.Q4_K)
    ro = blocks.reshape(-1).copy()
    ro.setflags(write=False)
    assert_bits_equal(dequantize_ref(bytes(blocks), GGMLType.Q4_K), want)
    assert_bits_equal(dequantize_ref(memoryview(ro), GGMLType.Q4_K), want)
    assert_bits_equal(dequantize_ref(ro, GGMLType.Q4_K), want)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [GGMLType.IQ2_XXS, GGMLType.IQ4_NL, GGMLType.TQ1_0, GGMLType.MXFP4,
                               GGMLType.Q8_1, GGMLType.I8, GGMLType.F64], ids=lambda t: t.name)
def test_unsupported_type_names_type_and_tensor(t):
    with pytest.raises(UnsupportedError, match=f"blk.0.attn_q.weight.*{t.name}"):
        dequantize_ref(b"\0" * 1024, t, tensor="blk.0.attn_q.weight")


def test_unknown_type_id():
    with pytest.raises(UnsupportedError, match="unknown ggml type id 99"):
        dequantize_ref(b"\0" * 64, 99)


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q6_K, GGMLType.F16], ids=lambda t: t.name)
def test_partial_block_is_rejected(t):
    n = LAYOUTS[t].type_size * 2 + 1
    with pytest.raises(ValueError, match=f"output.weight.*{t.name}"):
        dequantize_ref(b"\0" * n, t, tensor="output.weight")


def test_empty_input_gives_empty_output():
    assert dequantize_ref(b"", GGMLType.Q4_K).shape == (0,)
