"""GGML tensor types and block layouts: the single source of truth for every quant format.

Everything that touches quantized bytes (the GGUF reader, the Numba kernels, the Rust guest's
structs, the tests) follows the `LAYOUTS` table below. Type ids and block sizes are ggml's:
https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/include/ggml.h (enum ggml_type) and
https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-common.h (block structs).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
