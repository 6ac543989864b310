"""GGML tensor types and block layouts: the single source of truth for every quant format.

Everything that touches quantized bytes (the GGUF reader, the Numba kernels, the Rust guest's
structs, the tests) follows the `LAYOUTS` table below. Type ids and block sizes are ggml's:
https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/include/ggml.h (enum ggml_type) and
https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-common.h (block structs).
`dequantize_ref` is the plain NumPy dequantizer every kernel (Numba, Rust) must match bit for bit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from realm.errors import UnsupportedError

QK_K = 256  # elements per k-quant super-block
K_SCALE_SIZE = 12  # packed 6-bit scales/mins of Q4_K and Q5_K


class GGMLType(enum.IntEnum):
    """ggml tensor type ids, named like gguf-py's GGMLQuantizationType."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


@dataclass(frozen=True)
class BlockLayout:
    """One block of a type: `block_size` elements stored in `type_size` bytes, fields in on-disk order."""

    ggml_type: GGMLType
    block_size: int
    fields: tuple[tuple[str, str, int], ...]  # (name, element dtype, count)

    @property
    def type_size(self) -> int:
        return sum(_DTYPE_BYTES[dtype] * count for _, dtype, count in self.fields)


_DTYPE_BYTES = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "bf16": 2, "i16": 2, "u8": 1, "i8": 1}


def _layout(t: GGMLType, block_size: int, *fields: tuple[str, str, int]) -> BlockLayout:
    return BlockLayout(t, block_size, tuple(fields))


# Q6_K stores `d` last; Q8_K's `d` is f32 and it carries 16 block sums (one per 16 elements).
LAYOUTS: dict[GGMLType, BlockLayout] = {
    layout.ggml_type: layout
    for layout in (
        _layout(GGMLType.F32, 1, ("v", "f32", 1)),
        _layout(GGMLType.F16, 1, ("v", "f16", 1)),
        _layout(GGMLType.BF16, 1, ("v", "bf16", 1)),
        _layout(GGMLType.F64, 1, ("v", "f64", 1)),
        _layout(GGMLType.I8, 1, ("v", "i8", 1)),
        _layout(GGMLType.I16, 1, ("v", "i16", 1)),
        _layout(GGMLType.I32, 1, ("v", "i32", 1)),
        _layout(GGMLType.I64, 1, ("v", "i64", 1)),
        _layout(GGMLType.Q4_0, 32, ("d", "f16", 1), ("qs", "u8", 16)),
        _layout(GGMLType.Q4_1, 32, ("d", "f16", 1), ("m", "f16", 1), ("qs", "u8", 16)),
        _layout(GGMLType.Q5_0, 32, ("d", "f16", 1), ("qh", "u8", 4), ("qs", "u8", 16)),
        _layout(GGMLType.Q5_1, 32, ("d", "f16", 1), ("m", "f16", 1), ("qh", "u8", 4), ("qs", "u8", 16)),
        _layout(GGMLType.Q8_0, 32, ("d", "f16", 1), ("qs", "i8", 32)),
        _layout(GGMLType.Q8_1, 32, ("d", "f32", 1), ("s", "f32", 1), ("qs", "i8", 32)),
        _layout(GGMLType.Q2_K, QK_K, ("scales", "u8", QK_K // 16), ("qs", "u8", QK_K // 4),
                ("d", "f16", 1), ("dmin", "f16", 1)),
        _layout(GGMLType.Q3_K, QK_K, ("hmask", "u8", QK_K // 8), ("qs", "u8", QK_K // 4),
                ("scales", "u8", 12), ("d", "f16", 1)),
        _layout(GGMLType.Q4_K, QK_K, ("d", "f16", 1), ("dmin", "f16", 1),
                ("scales", "u8", K_SCALE_SIZE), ("qs", "u8", QK_K // 2)),
        _layout(GGMLType.Q5_K, QK_K, ("d", "f16", 1), ("dmin", "f16", 1),
                ("scales", "u8", K_SCALE_SIZE), ("qh", "u8", QK_K // 8), ("qs", "u8", QK_K // 2)),
        _layout(GGMLType.Q6_K, QK_K, ("ql", "u8", QK_K // 2), ("qh", "u8", QK_K // 4),
                ("scales", "i8", QK_K // 16), ("d", "f16", 1)),
        _layout(GGMLType.Q8_K, QK_K, ("d", "f32", 1), ("qs", "i8", QK_K), ("bsums", "i16", QK_K // 16)),
    )
}

# Sizes of the types realm recognises but cannot compute with (so files using them still open and
# `realm info` can describe them); (block_size, type_size) from ggml-common.h.
FOREIGN_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
}

# Types the kernels dequantize (and, except Q8_K, multiply with): the set the engines accept.
SUPPORTED: frozenset[GGMLType] = frozenset({
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q8_K,
})


def block_size_and_bytes(t: GGMLType) -> tuple[int, int]:
    """(elements per block, bytes per block) of any known type."""
    layout = LAYOUTS.get(t)
    if layout is not None:
        return layout.block_size, layout.type_size
    return FOREIGN_SIZES[t]


def row_bytes(t: GGMLType, n_cols: int) -> int:
    """Bytes of one row of `n_cols` elements; `n_cols` must be a multiple of the block size."""
    bs, ts = block_size_and_bytes(t)
    if n_cols % bs:
        raise UnsupportedError(f"row of {n_cols} elements is not a multiple of {t.name}'s block size {bs}")
    return n_cols // bs * ts


def require_supported(t: int, tensor: str = "?") -> GGMLType:
    """Return `t` as a GGMLType the kernels handle, else raise UnsupportedError naming type and tensor."""
    try:
        gt = GGMLType(t)
    except ValueError:
        raise UnsupportedError(f"tensor {tensor!r}: unknown ggml type id {t}") from None
    if gt not in SUPPORTED:
        raise UnsupportedError(f"tensor {tensor!r}: ggml type {gt.name} is not supported")
    return gt


# ---------------------------------------------------------------------------------------------
# NumPy reference dequantizers: the spec the Numba kernels and the Rust guest must match bit for
# bit. Plain and vectorized; each computes in float32 in the same order of operations as ggml's
# `dequantize_row_*` (products like `(d * sc) * q - (dmin * m)` are rounded step by step, never
# fused), so results equal libggml's and gguf-py's exactly. Facts from
# https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-common.h (block structs) and
# https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-quants.c (dequantize_row_*).
# Every multi-byte field is little-endian.
# ---------------------------------------------------------------------------------------------

_NP_DTYPES = {"f64": "<f8", "i64": "<i8", "f32": "<f4", "i32": "<i4", "f16": "<f2", "bf16": "<u2",
              "i16": "<i2", "u8": "u1", "i8": "i1"}


def field_offsets(t: GGMLType) -> dict[str, int]:
    """Byte offset of each field inside one block of `t`, from `LAYOUTS`."""
    offsets, pos = {}, 0
    for name, dtype, count in LAYOUTS[t].fields:
        offsets[name] = pos
        pos += _DTYPE_BYTES[dtype] * count
    return offsets


def as_bytes(data) -> np.ndarray:
    """bytes / bytearray / memoryview / C-contiguous ndarray (any dtype, read-only too) -> flat uint8 view."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("quantized data must be a C-contiguous array")
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        raise TypeError(f"expected bytes-like data or an ndarray, got {type(data).__name__}") from None


def _blocks(data, t: GGMLType, tensor: str | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Split raw bytes into blocks (nb, type_size) and each field as an array (nb, count)."""
    layout = LAYOUTS[t]
    buf = as_bytes(data)
    if buf.size % layout.type_size:
        where = f"tensor {tensor!r}: " if tensor else ""
        raise ValueError(f"{where}{buf.size} bytes is not a whole number of {t.name} blocks of "
                         f"{layout.type_size} bytes")
    blocks = buf.reshape(-1, layout.type_size)  # (nb, type_size)
    fields, pos = {}, 0
    for name, dtype, count in layout.fields:
        n = _DTYPE_BYTES[dtype] * count
        raw = np.ascontiguousarray(blocks[:, pos:pos + n])  # (nb, n) bytes
        fields[name] = raw.view(_NP_DTYPES[dtype])  # (nb, count)
        if dtype == "f16":
            fields[name] = fields[name].astype(np.float32)
        pos += n
    return blocks, fields


def _nibbles(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low and high 4-bit halves of each byte."""
    return qs & 0x0F, qs >> 4


# Q4_0 (32 elements, 18 bytes): d f16 | qs[16]
#   element j < 16 is the low nibble of qs[j], element j + 16 its high nibble; y = d * (q - 8).
def _dequantize_q4_0(f: dict[str, np.ndarray]) -> np.ndarray:
    lo, hi = _nibbles(f["qs"])
    q = np.concatenate([lo, hi], axis=1).astype(np.float32) - np.float32(8)  # (nb, 32)
    return f["d"] * q


# Q4_1 (32 elements, 20 bytes): d f16 | m f16 | qs[16]; nibbles as Q4_0, y = d * q + m.
def _dequantize_q4_1(f: dict[str, np.ndarray]) -> np.ndarray:
    lo, hi = _nibbles(f["qs"])
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)  # (nb, 32)
    return f["d"] * q + f["m"]


def _q5_values(f: dict[str, np.ndarray]) -> np.ndarray:
    """5-bit values of Q5_0/Q5_1: nibbles as Q4_0, bit j of the u32 `qh` is bit 4 of element j."""
    lo, hi = _nibbles(f["qs"])
    qh = f["qh"].view("<u4")  # (nb, 1)
    high = (qh >> np.arange(32, dtype=np.uint32)) & 1  # (nb, 32)
    return np.concatenate([lo, hi], axis=1) | (high.astype(np.uint8) << 4)  # (nb, 32) in 0..31


# Q5_0 (32 elements, 22 bytes): d f16 | qh[4] | qs[16]; y = d * (q - 16).
#   qh as u32:  bit 31 ............ bit 16 | bit 15 ............ bit 0
#               bit 4 of elements 31..16   | bit 4 of elements 15..0
def _dequantize_q5_0(f: dict[str, np.ndarray]) -> np.ndarray:
    return f["d"] * (_q5_values(f).astype(np.float32) - np.float32(16))


# Q5_1 (32 elements, 24 bytes): d f16 | m f16 | qh[4] | qs[16]; y = d * q + m.
def _dequantize_q5_1(f: dict[str, np.ndarray]) -> np.ndarray:
    return f["d"] * _q5_values(f).astype(np.float32) + f["m"]


# Q8_0 (32 elements, 34 bytes): d f16 | qs int8[32]; y = d * q.
def _dequantize_q8_0(f: dict[str, np.ndarray]) -> np.ndarray:
    return f["d"] * f["qs"].astype(np.float32)


# Q2_K (256 elements, 84 bytes): scales[16] | qs[64] | d f16 | dmin f16
#   Sub-block s (16 elements, s = element // 16) has scale byte scales[s] = (m << 4) | sc.
#   Element 128*h + 32*j + l (h < 2, j < 4, l < 32) is bits 2j..2j+1 of qs[32*h + l].
#   y = (d * sc) * q - (dmin * m).
def _dequantize_q2_k(f: dict[str, np.ndarray]) -> np.ndarray:
    nb = f["qs"].shape[0]
    qs = f["qs"].reshape(nb, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((qs >> shifts) & 3).astype(np.float32).reshape(nb, 16, 16)  # (nb, sub-block, 16)
    sc = (f["scales"] & 0x0F).astype(np.float32)  # (nb, 16)
    m = (f["scales"] >> 4).astype(np.float32)  # (nb, 16)
    dl = f["d"] * sc
    ml = f["dmin"] * m
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(nb, QK_K)


def _q3_k_scales(scales: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit scales of Q3_K (as signed values - 32) from 12 packed bytes (nb, 12) -> (nb, 16).

    byte:      0 .. 7                              8 .. 11
             +---------+---------+               +------+------+------+------+
             | hi nib  | lo nib  |               | b7b6 | b5b4 | b3b2 | b1b0 |
             +---------+---------+               +------+------+------+------+
    scale i:  low 4 bits = nibble (i // 8) of byte (i % 8)
              high 2 bits = bits 2*(i // 4) .. +1 of byte 8 + (i % 4)
    """
    i = np.arange(16)
    low = (scales[:, i % 8] >> (4 * (i // 8)).astype(np.uint8)) & 0x0F
    high = (scales[:, 8 + i % 4] >> (2 * (i // 4)).astype(np.uint8)) & 0x03
    return (low | (high << 4)).astype(np.int8) - np.int8(32)  # (nb, 16) in -32..31


# Q3_K (256 elements, 110 bytes): hmask[32] | qs[64] | scales[12] | d f16
#   Element 128*h + 32*j + l (h < 2, j < 4, l < 32): low 2 bits are bits 2j..2j+1 of qs[32*h + l];
#   bit 4*h + j of hmask[l] set means q = low, clear means q = low - 4 (q in -4..3).
#   Sub-block s = element // 16 has the 6-bit scale sc[s] (see _q3_k_scales); y = (d * sc) * q.
def _dequantize_q3_k(f: dict[str, np.ndarray]) -> np.ndarray:
    nb = f["qs"].shape[0]
    qs = f["qs"].reshape(nb, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    low = (qs >> shifts) & 3  # (nb, 2, 4, 32)
    bit = (np.arange(8, dtype=np.uint8)).reshape(1, 2, 4, 1)  # 4*h + j
    hbit = (f["hmask"].reshape(nb, 1, 1, 32) >> bit) & 1  # (nb, 2, 4, 32)
    q = (low.astype(np.int8) - np.int8(4) * (1 - hbit.astype(np.int8))).astype(np.float32)
    dl = f["d"] * _q3_k_scales(f["scales"]).astype(np.float32)  # (nb, 16)
    return (dl[:, :, None] * q.reshape(nb, 16, 16)).reshape(nb, QK_K)


def get_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eight 6-bit scales `sc` and mins `m` of Q4_K/Q5_K from 12 packed bytes: (nb, 12) -> 2 x (nb, 8).

    byte  0..3 : | m4..7 hi 2 (for sc4..7) | sc0..3 (6 bits) |   bits 7-6 | 5-0
    byte  4..7 : | m hi 2 (for m4..7)      | m0..3  (6 bits) |   bits 7-6 | 5-0
    byte 8..11 : | m4..7 low 4             | sc4..7 low 4    |   bits 7-4 | 3-0
    j < 4:  sc = q[j] & 63,                        m = q[j+4] & 63
    j >= 4: sc = (q[j+4] & 15) | (q[j-4] >> 6) << 4, m = (q[j+4] >> 4) | (q[j] >> 6) << 4
    """
    q = scales
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 15) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m  # (nb, 8) each, values 0..63


def _k4_scales(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per 32-element sub-block (d * sc, dmin * m) of Q4_K/Q5_K, each (nb, 8, 1) float32."""
    sc, m = get_scale_min_k4(f["scales"])
    return (f["d"] * sc.astype(np.float32))[:, :, None], (f["dmin"] * m.astype(np.float32))[:, :, None]


# Q4_K (256 elements, 144 bytes): d f16 | dmin f16 | scales[12] | qs[128]
#   Element 64*c + 32*u + l (c < 4, u < 2, l < 32) is nibble u of qs[32*c + l], in sub-block
#   s = 2*c + u with 6-bit (sc, m) from get_scale_min_k4; y = (d * sc) * q - (dmin * m).
def _q4_k_low(f: dict[str, np.ndarray]) -> np.ndarray:
    nb = f["qs"].shape[0]
    qs = f["qs"].reshape(nb, 4, 1, 32)
    shifts = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return ((qs >> shifts) & 0x0F).reshape(nb, 8, 32)  # (nb, sub-block, 32)


def _dequantize_q4_k(f: dict[str, np.ndarray]) -> np.ndarray:
    dl, ml = _k4_scales(f)
    q = _q4_k_low(f).astype(np.float32)
    return (dl * q - ml).reshape(-1, QK_K)


# Q5_K (256 elements, 176 bytes): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
#   Low 4 bits as Q4_K; bit s of qh[l] is bit 4 of element 32*s + l (sub-block s).
#   y = (d * sc) * q - (dmin * m), q in 0..31.
def _dequantize_q5_k(f: dict[str, np.ndarray]) -> np.ndarray:
    nb = f["qs"].shape[0]
    dl, ml = _k4_scales(f)
    s = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = (f["qh"].reshape(nb, 1, 32) >> s) & 1  # (nb, 8, 32)
    q = (_q4_k_low(f) | (high << 4)).astype(np.float32)
    return (dl * q - ml).reshape(nb, QK_K)


# Q6_K (256 elements, 210 bytes): ql[128] | qh[64] | scales int8[16] | d f16   (d stored LAST)
#   Element 128*h + 32*k + l (h < 2, k < 4, l < 32):
#     low 4 bits  = nibble (k // 2) of ql[64*h + 32*(k % 2) + l]
#     high 2 bits = bits 2k..2k+1 of qh[32*h + l]
#   Sub-block s = element // 16 has signed scale scales[s]; y = (d * sc) * (q - 32).
def _dequantize_q6_k(f: dict[str, np.ndarray]) -> np.ndarray:
    nb = f["ql"].shape[0]
    ql = f["ql"].reshape(nb, 2, 1, 2, 32)  # (nb, h, nibble, k % 2, l)
    low = (ql >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1, 1)) & 0x0F
    low = low.reshape(nb, 2, 4, 32)  # k = 2 * nibble + k % 2
    qh = f["qh"].reshape(nb, 2, 1, 32)
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3  # (nb, h, k, l)
    q = (low | (high << 4)).astype(np.float32) - np.float32(32)
    dl = f["d"] * f["scales"].astype(np.float32)  # (nb, 16)
    return (dl[:, :, None] * q.reshape(nb, 16, 16)).reshape(nb, QK_K)


# Q8_K (256 elements, 292 bytes): d f32 | qs int8[256] | bsums int16[16]; y = d * q.
#   (An activation format: bsums[i] = sum of qs[16*i : 16*i + 16]; not needed to dequantize.)
def _dequantize_q8_k(f: dict[str, np.ndarray]) -> np.ndarray:
    return f["d"] * f["qs"].astype(np.float32)


_REF_DEQUANTIZERS = {
    GGMLType.Q4_0: _dequantize_q4_0,
    GGMLType.Q4_1: _dequantize_q4_1,
    GGMLType.Q5_0: _dequantize_q5_0,
    GGMLType.Q5_1: _dequantize_q5_1,
    GGMLType.Q8_0: _dequantize_q8_0,
    GGMLType.Q2_K: _dequantize_q2_k,
    GGMLType.Q3_K: _dequantize_q3_k,
    GGMLType.Q4_K: _dequantize_q4_k,
    GGMLType.Q5_K: _dequantize_q5_k,
    GGMLType.Q6_K: _dequantize_q6_k,
    GGMLType.Q8_K: _dequantize_q8_k,
}


def _float_ref(buf: np.ndarray, t: GGMLType) -> np.ndarray:
    """F32 (copy), F16 (IEEE half -> float32, exact), BF16 (the top 16 bits of a float32)."""
    if t == GGMLType.F32:
        return buf.view("<f4").astype(np.float32)
    if t == GGMLType.F16:
        return buf.view("<f2").astype(np.float32)
    return (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)


def dequantize_ref(data, ggml_type: GGMLType, *, tensor: str | None = None) -> np.ndarray:
    """Dequantize raw GGML bytes to float32 with plain NumPy (the reference for every kernel).

    Parameters
    ----------
    data : bytes-like or C-contiguous ndarray
        Whole blocks of `ggml_type`, in file layout.
    ggml_type : GGMLType
    tensor : str, optional
        Tensor name, only used in error messages.

    Returns
    -------
    np.ndarray
        float32 (n_elements,), a new array.

    Raises
    ------
    UnsupportedError
        The type has no dequantizer (IQ*, TQ*, MXFP4, unknown ids).
    ValueError
        The length is not a whole number of blocks, or the array is not C-contiguous.
    """
    t = require_supported(ggml_type, tensor if tensor is not None else "?")
    if t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        buf = as_bytes(data)
        size = LAYOUTS[t].type_size
        if buf.size % size:
            where = f"tensor {tensor!r}: " if tensor else ""
            raise ValueError(f"{where}{buf.size} bytes is not a whole number of {t.name} values "
                             f"of {size} bytes")
        return _float_ref(buf, t)
    _, fields = _blocks(data, t, tensor)
    return np.ascontiguousarray(_REF_DEQUANTIZERS[t](fields), dtype=np.float32).reshape(-1)
