"""Quantized matvec (decode), matmul (prefill) and row lookup over raw GGML rows (rows, row_bytes) uint8.

Decode: four rows per iteration share each f32 activation load, dequantization fused into the dot
(Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K; the rest via an L1 scratch), software prefetch, prange over
row chunks. Prefill: a tile of rows is dequantized once for all T tokens. Layouts: `realm/quants.py`;
facts: https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-quants.c (dequantize_row_*).
"""

from __future__ import annotations

import numpy as np

from realm.errors import KernelArgumentError, UnsupportedError
from realm.kernels._jit import jit, jit_disabled, pjit, prange
from realm.quants import GGMLType, block_size_and_bytes, row_bytes

__all__ = [
    "KernelArgumentError", "MATVEC_TYPES", "matvec", "matmul", "get_rows", "dequantize_rows", "warmup",
]


# Dot products reassociate (vectorized reductions) and contract to FMA; tests bound the error.
_FAST = {"reassoc", "contract", "nsz"}

# f16 bits -> float32 for the per-block scales (256 KB, exact: built by NumPy).
F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

_U2 = np.uint8(2)
_U3 = np.uint8(3)
_U4 = np.uint8(4)
_U6 = np.uint8(6)
_U15 = np.uint8(15)
_U63 = np.uint8(63)
_F0 = np.float32(0)
_F4 = np.float32(4)
_F16_0 = np.float32(16)
# Q5 high bits as floats: _HB16[byte, i] = 16.0 * bit i of byte (256, 8); one table row covers 8
# elements, so the 5th bit costs a vector load and add instead of 64-bit lane compares (1.7 ->
# 3.8 GB/s for Q5_0 on one thread).
_HB16 = (((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1) * 16).astype(np.float32)

_ROW_CHUNK = 64  # rows per prange task (a multiple of 4)
# `matvec` runs smaller matrices on the calling thread: a parallel launch costs ~5-10 us, and on
# a busy machine a descheduled worker stalls the whole call for a time slice (measured 4-12 ms).
PARALLEL_MIN_BYTES = 64 << 10
_TILE_ROWS = 16  # rows per matmul tile (a multiple of 4); scratch (16, cols) float32
_PREFETCH_LINES = 64  # bytes per cache line

# ---------------------------------------------------------------------------------------------
# Software prefetch: hardware prefetchers do not keep up with four interleaved row streams plus
# compute (measured 3.2 -> 10.6 GB/s for Q8_0 on one thread). No-op without the JIT.
# ---------------------------------------------------------------------------------------------

if jit_disabled():

    def _prefetch(flat, i):
        """Hint the cache line of flat[i] (no-op in plain Python)."""

else:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _prefetch(typingctx, flat, i):
        """Hint the cache line holding flat[i] (1-D array) into all cache levels for reading."""
        if not isinstance(flat, types.Array) or not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
            name = "llvm.prefetch.p0i8"
            mod = builder.module
            fn = mod.globals.get(name) or ir.Function(mod, fnty, name=name)
            i32 = ir.IntType(32)
            builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, high locality, data cache
            return context.get_dummy_value()

        return types.void(flat, i), codegen


@jit
def _prefetch_range(flat, lo, hi):
    """Prefetch bytes flat[lo:hi] (clipped to the array)."""
    hi = min(hi, flat.shape[0])
    for p in range(lo, hi, _PREFETCH_LINES):
        _prefetch(flat, p)


# ---------------------------------------------------------------------------------------------
# Scalar helpers
# ---------------------------------------------------------------------------------------------


@jit
def _f16(tbl, b, o):
    """float32 of the little-endian f16 at bytes b[o], b[o+1]."""
    return tbl[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]


@jit
def _u32(b, o):
    """uint32 stored little-endian at bytes b[o .. o+3], as int64."""
    return (np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16)
            | (np.int64(b[o + 3]) << 24))


@jit
def _trip(k, cols, block):
    """k, as a value LLVM cannot prove constant (cols % block is 0 at run time).

    A constant trip count lets LLVM fully unroll a small dequant loop before vectorizing, and the
    unrolled stores (which might alias the loads, as Numba declares no `noalias`) stay scalar:
    measured 0.7 -> 0.2 ns/weight for Q8_0 with an opaque count (vectorized with a runtime check).
    """
    return k + cols % block


@jit
def _scale_min_k4(j, scales):
    """(sc, m) 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K / Q5_K.

      j < 4:  sc = scales[j] & 63               m = scales[j+4] & 63
      j >= 4: sc = scales[j+4] & 15 | (scales[j-4] >> 6) << 4
              m  = scales[j+4] >> 4 | (scales[j]   >> 6) << 4
    """
    if j < 4:
        return np.int32(scales[j] & 63), np.int32(scales[j + 4] & 63)
    sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4)
    m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)
    return np.int32(sc), np.int32(m)


@jit
def _q3_k_scale(scales, i):
    """Signed 6-bit scale i (0..15) of Q3_K from its 12 packed bytes.

    low 4 bits: scales[i % 8] >> (4 * (i // 8)); high 2 bits: scales[8 + i % 4] >> (2 * (i // 4)).
    """
    lo = (np.int32(scales[i % 8]) >> (4 * (i // 8))) & 15
    hi = (np.int32(scales[8 + i % 4]) >> (2 * (i // 4))) & 3
    return np.int32((lo | (hi << 4)) - 32)


# ---------------------------------------------------------------------------------------------
# Row dequantizers: row (row_bytes,) uint8 -> dst (cols,) float32. Every inner loop runs over a
# slice with a constant scale so LLVM vectorizes it; integers become float via int32.
# ---------------------------------------------------------------------------------------------


@jit
def _dq_row_f32(row, tbl, dst):
    """F32: 4-byte little-endian floats."""
    v = row.view(np.float32)
    for i in range(dst.shape[0]):
        dst[i] = v[i]


@jit
def _dq_row_f16(row, tbl, dst):
    """F16: 2-byte IEEE halves (table lookup)."""
    v = row.view(np.uint16)
    for i in range(dst.shape[0]):
        dst[i] = tbl[v[i]]


@jit
def _dq_row_bf16(row, tbl, dst):
    """BF16: the top 16 bits of a float32."""
    v = row.view(np.uint16)
    bits = dst.view(np.uint32)
    for i in range(dst.shape[0]):
        bits[i] = np.uint32(v[i]) << np.uint32(16)


@jit
def _dq_row_q4_0(row, tbl, dst):
    """Q4_0 block (18 B): d f16 | qs[16]; y[j] = d * (lo4(qs[j]) - 8), y[j+16] = d * (hi4(qs[j]) - 8)."""
    n16 = _trip(16, dst.shape[0], 32)
    for b in range(dst.shape[0] // 32):
        o = b * 18
        d = _f16(tbl, row, o)
        qs = row[o + 2:o + 18]
        y = dst[b * 32:b * 32 + 32]
        for j in range(n16):
            q = np.int32(qs[j])
            y[j] = d * np.float32((q & 15) - 8)
            y[j + 16] = d * np.float32((q >> 4) - 8)


@jit
def _dq_row_q4_1(row, tbl, dst):
    """Q4_1 block (20 B): d f16 | m f16 | qs[16]; y = d * q + m."""
    n16 = _trip(16, dst.shape[0], 32)
    for b in range(dst.shape[0] // 32):
        o = b * 20
        d = _f16(tbl, row, o)
        m = _f16(tbl, row, o + 2)
        qs = row[o + 4:o + 20]
        y = dst[b * 32:b * 32 + 32]
        for j in range(n16):
            q = np.int32(qs[j])
            y[j] = d * np.float32(q & 15) + m
            y[j + 16] = d * np.float32(q >> 4) + m


@jit
def _dq_row_q5_0(row, tbl, dst):
    """Q5_0 block (22 B): d f16 | qh u32 | qs[16]; bit j of qh is bit 4 of element j; y = d * (q - 16).

    Lane j (0..7) writes elements j, j+8 (low nibbles of qs[j], qs[8+j]) and j+16, j+24 (high
    nibbles), their 5th bits from qh bytes 0..3 via the _HB16 table (all values exact in f32).
    """
    n8 = _trip(8, dst.shape[0], 32)
    hb = _HB16
    for b in range(dst.shape[0] // 32):
        o = b * 22
        d = _f16(tbl, row, o)
        h0 = hb[row[o + 2]]
        h1 = hb[row[o + 3]]
        h2 = hb[row[o + 4]]
        h3 = hb[row[o + 5]]
        qs = row[o + 6:o + 22]
        y = dst[b * 32:b * 32 + 32]
        for j in range(n8):
            u = qs[j]
            v = qs[8 + j]
            y[j] = d * (np.float32(np.int32(u & _U15)) + h0[j] - _F16_0)
            y[j + 8] = d * (np.float32(np.int32(v & _U15)) + h1[j] - _F16_0)
            y[j + 16] = d * (np.float32(np.int32(u >> _U4)) + h2[j] - _F16_0)
            y[j + 24] = d * (np.float32(np.int32(v >> _U4)) + h3[j] - _F16_0)


@jit
def _dq_row_q5_1(row, tbl, dst):
    """Q5_1 block (24 B): d f16 | m f16 | qh u32 | qs[16]; y = d * q + m (order: `_dq_row_q5_0`)."""
    n8 = _trip(8, dst.shape[0], 32)
    hb = _HB16
    for b in range(dst.shape[0] // 32):
        o = b * 24
        d = _f16(tbl, row, o)
        m = _f16(tbl, row, o + 2)
        h0 = hb[row[o + 4]]
        h1 = hb[row[o + 5]]
        h2 = hb[row[o + 6]]
        h3 = hb[row[o + 7]]
        qs = row[o + 8:o + 24]
        y = dst[b * 32:b * 32 + 32]
        for j in range(n8):
            u = qs[j]
            v = qs[8 + j]
            y[j] = d * (np.float32(np.int32(u & _U15)) + h0[j]) + m
            y[j + 8] = d * (np.float32(np.int32(v & _U15)) + h1[j]) + m
            y[j + 16] = d * (np.float32(np.int32(u >> _U4)) + h2[j]) + m
            y[j + 24] = d * (np.float32(np.int32(v >> _U4)) + h3[j]) + m


@jit
def _dq_row_q8_0(row, tbl, dst):
    """Q8_0 block (34 B): d f16 | qs[32] int8; y = d * q."""
    n32 = _trip(32, dst.shape[0], 32)
    qi = row.view(np.int8)
    for b in range(dst.shape[0] // 32):
        o = b * 34
        d = _f16(tbl, row, o)
        qs = qi[o + 2:o + 34]
        y = dst[b * 32:b * 32 + 32]
        for j in range(n32):
            y[j] = d * np.float32(qs[j])


@jit
def _dq_row_q2_k(row, tbl, dst):
    """Q2_K block (84 B): scales[16] | qs[64] | d f16 | dmin f16.

    scales[i] = sc (low 4) | m (high 4) of 16 elements; element order: for each 128-half n, for
    shift 0,2,4,6 (j): 16 from qs[32n + l] then 16 from qs[32n + 16 + l], value (q >> 2j) & 3,
    scale index 8n + 2j + h. y = d * sc * q - dmin * m. Loop: (n, h) outside, the 4 shifts inside.
    """
    n16 = _trip(16, dst.shape[0], 256)
    for b in range(dst.shape[0] // 256):
        o = b * 84
        scales = row[o:o + 16]
        d = _f16(tbl, row, o + 80)
        dmin = _f16(tbl, row, o + 82)
        for n in range(2):
            for h in range(2):
                q = row[o + 16 + 32 * n + 16 * h:o + 32 + 32 * n + 16 * h]
                s0 = np.int32(scales[8 * n + h])
                s1 = np.int32(scales[8 * n + 2 + h])
                s2 = np.int32(scales[8 * n + 4 + h])
                s3 = np.int32(scales[8 * n + 6 + h])
                d0 = d * np.float32(s0 & 15)
                d1 = d * np.float32(s1 & 15)
                d2 = d * np.float32(s2 & 15)
                d3 = d * np.float32(s3 & 15)
                m0 = dmin * np.float32(s0 >> 4)
                m1 = dmin * np.float32(s1 >> 4)
                m2 = dmin * np.float32(s2 >> 4)
                m3 = dmin * np.float32(s3 >> 4)
                base = b * 256 + 128 * n + 16 * h
                y = dst[base:base + 112]
                for l in range(n16):
                    v = q[l]
                    y[l] = d0 * np.float32(np.int32(v & _U3)) - m0
                    y[l + 32] = d1 * np.float32(np.int32((v >> _U2) & _U3)) - m1
                    y[l + 64] = d2 * np.float32(np.int32((v >> _U4) & _U3)) - m2
                    y[l + 96] = d3 * np.float32(np.int32(v >> _U6)) - m3


@jit
def _dq_row_q3_k(row, tbl, dst):
    """Q3_K block (110 B): hmask[32] | qs[64] | scales[12] (16 x 6-bit, -32) | d f16.

    Like Q2_K's order; the 3rd bit of element (n, j, h, l) is hmask[16h + l] bit (4n + j): clear
    means -4.
    """
    n16 = _trip(16, dst.shape[0], 256)
    for b in range(dst.shape[0] // 256):
        o = b * 110
        scales = row[o + 96:o + 108]
        d = _f16(tbl, row, o + 108)
        for n in range(2):
            for h in range(2):
                q = row[o + 32 + 32 * n + 16 * h:o + 48 + 32 * n + 16 * h]
                hm = row[o + 16 * h:o + 16 * h + 16]
                d0 = d * np.float32(_q3_k_scale(scales, 8 * n + h))
                d1 = d * np.float32(_q3_k_scale(scales, 8 * n + 2 + h))
                d2 = d * np.float32(_q3_k_scale(scales, 8 * n + 4 + h))
                d3 = d * np.float32(_q3_k_scale(scales, 8 * n + 6 + h))
                b0 = np.uint8(1 << (4 * n))
                b1 = np.uint8(2 << (4 * n))
                b2 = np.uint8(4 << (4 * n))
                b3 = np.uint8(8 << (4 * n))
                base = b * 256 + 128 * n + 16 * h
                y = dst[base:base + 112]
                for l in range(n16):
                    v = q[l]
                    g = hm[l]
                    y[l] = d0 * (np.float32(np.int32(v & _U3)) - (_F0 if g & b0 else _F4))
                    y[l + 32] = d1 * (np.float32(np.int32((v >> _U2) & _U3)) - (_F0 if g & b1 else _F4))
                    y[l + 64] = d2 * (np.float32(np.int32((v >> _U4) & _U3)) - (_F0 if g & b2 else _F4))
                    y[l + 96] = d3 * (np.float32(np.int32(v >> _U6)) - (_F0 if g & b3 else _F4))


@jit
def _dq_row_q4_k(row, tbl, dst):
    """Q4_K block (144 B): d f16 | dmin f16 | scales[12] (8 x (sc, m) 6-bit) | qs[128].

    Each 64 elements: 32 low nibbles of qs[32c:32c+32] (sub-block 2c), then 32 high nibbles (2c+1).
    y = d * sc * q - dmin * m.
    """
    n32 = _trip(32, dst.shape[0], 256)
    for b in range(dst.shape[0] // 256):
        o = b * 144
        d = _f16(tbl, row, o)
        dmin = _f16(tbl, row, o + 2)
        scales = row[o + 4:o + 16]
        for c in range(4):
            sc1, m1 = _scale_min_k4(2 * c, scales)
            sc2, m2 = _scale_min_k4(2 * c + 1, scales)
            d1 = d * np.float32(sc1)
            d2 = d * np.float32(sc2)
            n1 = dmin * np.float32(m1)
            n2 = dmin * np.float32(m2)
            qs = row[o + 16 + 32 * c:o + 48 + 32 * c]
            base = b * 256 + 64 * c
            y = dst[base:base + 64]
            for l in range(n32):
                q = np.int32(qs[l])
                y[l] = d1 * np.float32(q & 15) - n1
                y[l + 32] = d2 * np.float32(q >> 4) - n2


@jit
def _dq_row_q5_k(row, tbl, dst):
    """Q5_K block (176 B): d | dmin | scales[12] | qh[32] | qs[128]; Q4_K plus a 5th bit.

    The 5th bit of element l of 64-chunk c is qh[l] bit 2c (low nibbles) / 2c+1 (high nibbles).
    """
    n32 = _trip(32, dst.shape[0], 256)
    for b in range(dst.shape[0] // 256):
        o = b * 176
        d = _f16(tbl, row, o)
        dmin = _f16(tbl, row, o + 2)
        scales = row[o + 4:o + 16]
        qh = row[o + 16:o + 48]
        for c in range(4):
            sc1, m1 = _scale_min_k4(2 * c, scales)
            sc2, m2 = _scale_min_k4(2 * c + 1, scales)
            d1 = d * np.float32(sc1)
            d2 = d * np.float32(sc2)
            n1 = dmin * np.float32(m1)
            n2 = dmin * np.float32(m2)
            qs = row[o + 48 + 32 * c:o + 80 + 32 * c]
            base = b * 256 + 64 * c
            y = dst[base:base + 64]
            for l in range(n32):
                q = np.int32(qs[l])
                h = np.int32(qh[l])
                y[l] = d1 * np.float32((q & 15) | (((h >> (2 * c)) & 1) << 4)) - n1
                y[l + 32] = d2 * np.float32((q >> 4) | (((h >> (2 * c + 1)) & 1) << 4)) - n2


@jit
def _dq_row_q6_k(row, tbl, dst):
    """Q6_K block (210 B): ql[128] | qh[64] | scales[16] int8 | d f16 (d is LAST).

    Per 128-half n (ql += 64, qh += 32, sc += 8), for l in 0..31 (is = l // 16):
      y[l]    = d*sc[is]  *((ql[l]    & 15 | (qh[l] >> 0 & 3) << 4) - 32)
      y[l+32] = d*sc[is+2]*((ql[l+32] & 15 | (qh[l] >> 2 & 3) << 4) - 32)
      y[l+64] = d*sc[is+4]*((ql[l]   >> 4  | (qh[l] >> 4 & 3) << 4) - 32)
      y[l+96] = d*sc[is+6]*((ql[l+32] >> 4 | (qh[l] >> 6 & 3) << 4) - 32)
    """
    n16 = _trip(16, dst.shape[0], 256)
    ri = row.view(np.int8)
    for b in range(dst.shape[0] // 256):
        o = b * 210
        d = _f16(tbl, row, o + 208)
        for n in range(2):
            for h in range(2):
                ql = row[o + 64 * n + 16 * h:o + 64 * n + 16 * h + 48]  # [0:16] and [32:48] used
                qh = row[o + 128 + 32 * n + 16 * h:o + 128 + 32 * n + 16 * h + 16]
                sc = ri[o + 192 + 8 * n + h:o + 192 + 8 * n + h + 7]  # sc[0], sc[2], sc[4], sc[6]
                d1 = d * np.float32(sc[0])
                d2 = d * np.float32(sc[2])
                d3 = d * np.float32(sc[4])
                d4 = d * np.float32(sc[6])
                base = b * 256 + 128 * n + 16 * h
                y = dst[base:base + 112]
                for l in range(n16):
                    a = np.int32(ql[l])
                    c = np.int32(ql[l + 32])
                    hh = np.int32(qh[l])
                    y[l] = d1 * np.float32(((a & 15) | ((hh & 3) << 4)) - 32)
                    y[l + 32] = d2 * np.float32(((c & 15) | (((hh >> 2) & 3) << 4)) - 32)
                    y[l + 64] = d3 * np.float32(((a >> 4) | (((hh >> 4) & 3) << 4)) - 32)
                    y[l + 96] = d4 * np.float32(((c >> 4) | (((hh >> 6) & 3) << 4)) - 32)


# Kind codes for the one jitted dispatcher (Numba cannot take a dict of functions).
_KINDS: dict[GGMLType, int] = {
    t: i for i, t in enumerate((
        GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
        GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
        GGMLType.Q6_K,
    ))
}
_K_F32, _K_F16, _K_BF16 = _KINDS[GGMLType.F32], _KINDS[GGMLType.F16], _KINDS[GGMLType.BF16]
_K_Q4_0, _K_Q4_1, _K_Q5_0 = _KINDS[GGMLType.Q4_0], _KINDS[GGMLType.Q4_1], _KINDS[GGMLType.Q5_0]
_K_Q5_1, _K_Q8_0, _K_Q2_K = _KINDS[GGMLType.Q5_1], _KINDS[GGMLType.Q8_0], _KINDS[GGMLType.Q2_K]
_K_Q3_K, _K_Q4_K, _K_Q5_K = _KINDS[GGMLType.Q3_K], _KINDS[GGMLType.Q4_K], _KINDS[GGMLType.Q5_K]
_K_Q6_K = _KINDS[GGMLType.Q6_K]

MATVEC_TYPES: frozenset[GGMLType] = frozenset(_KINDS)


@jit
def _dequantize_row(kind, row, tbl, dst):
    """row (row_bytes,) uint8 of type `kind` -> dst (cols,) float32."""
    if kind == _K_Q8_0:
        _dq_row_q8_0(row, tbl, dst)
    elif kind == _K_Q4_K:
        _dq_row_q4_k(row, tbl, dst)
    elif kind == _K_Q6_K:
        _dq_row_q6_k(row, tbl, dst)
    elif kind == _K_Q5_0:
        _dq_row_q5_0(row, tbl, dst)
    elif kind == _K_F32:
        _dq_row_f32(row, tbl, dst)
    elif kind == _K_F16:
        _dq_row_f16(row, tbl, dst)
    elif kind == _K_BF16:
        _dq_row_bf16(row, tbl, dst)
    elif kind == _K_Q4_0:
        _dq_row_q4_0(row, tbl, dst)
    elif kind == _K_Q4_1:
        _dq_row_q4_1(row, tbl, dst)
    elif kind == _K_Q5_1:
        _dq_row_q5_1(row, tbl, dst)
    elif kind == _K_Q2_K:
        _dq_row_q2_k(row, tbl, dst)
    elif kind == _K_Q3_K:
        _dq_row_q3_k(row, tbl, dst)
    elif kind == _K_Q5_K:
        _dq_row_q5_k(row, tbl, dst)


# ---------------------------------------------------------------------------------------------
# Dots (f32, four rows share each activation load)
# ---------------------------------------------------------------------------------------------


@jit(fastmath=_FAST)
def _dot4(a0, a1, a2, a3, x):
    """(a0·x, a1·x, a2·x, a3·x) for float32 vectors of equal length."""
    s0 = np.float32(0)
    s1 = np.float32(0)
    s2 = np.float32(0)
    s3 = np.float32(0)
    for i in range(x.shape[0]):
        xi = x[i]
        s0 += a0[i] * xi
        s1 += a1[i] * xi
        s2 += a2[i] * xi
        s3 += a3[i] * xi
    return s0, s1, s2, s3


@jit(fastmath=_FAST)
def _dot4x2(a0, a1, a2, a3, x, y):
    """(a0·x, a0·y, a1·x, a1·y, a2·x, a2·y, a3·x, a3·y): 8 FMAs per 6 loads (matmul micro-kernel)."""
    s00 = np.float32(0)
    s01 = np.float32(0)
    s10 = np.float32(0)
    s11 = np.float32(0)
    s20 = np.float32(0)
    s21 = np.float32(0)
    s30 = np.float32(0)
    s31 = np.float32(0)
    for i in range(x.shape[0]):
        xi = x[i]
        yi = y[i]
        w = a0[i]
        s00 += w * xi
        s01 += w * yi
        w = a1[i]
        s10 += w * xi
        s11 += w * yi
        w = a2[i]
        s20 += w * xi
        s21 += w * yi
        w = a3[i]
        s30 += w * xi
        s31 += w * yi
    return s00, s01, s10, s11, s20, s21, s30, s31


@jit(fastmath=_FAST)
def _dot1(a, x):
    """a·x for float32 vectors."""
    s = np.float32(0)
    for i in range(x.shape[0]):
        s += a[i] * x[i]
    return s


# ---------------------------------------------------------------------------------------------
# matvec: generic (dequantize 4 rows into scratch, then dot4) and fused Q8_0
# ---------------------------------------------------------------------------------------------


@jit(fastmath=_FAST)
def _matvec_rows(kind, w, tbl, x, out, lo, hi, scratch):
    """out[lo:hi] = dequant(w[lo:hi]) @ x; scratch (4, cols) float32."""
    flat = w.reshape(-1)
    rb = w.shape[1]
    r = lo
    while r + 4 <= hi:
        _prefetch_range(flat, (r + 4) * rb, (r + 8) * rb)
        for k in range(4):
            _dequantize_row(kind, w[r + k], tbl, scratch[k])
        s0, s1, s2, s3 = _dot4(scratch[0], scratch[1], scratch[2], scratch[3], x)
        out[r] = s0
        out[r + 1] = s1
        out[r + 2] = s2
        out[r + 3] = s3
        r += 4
    while r < hi:
        _dequantize_row(kind, w[r], tbl, scratch[0])
        out[r] = _dot1(scratch[0], x)
        r += 1


@jit(fastmath=_FAST)
def _matvec_rows_q8_0(w, tbl, x, out, lo, hi):
    """Fused Q8_0: out[lo:hi] = w[lo:hi] @ x, four rows per iteration, per-block f32 sums."""
    wi = w.view(np.int8)
    flat = w.reshape(-1)
    rb = w.shape[1]
    nb = x.shape[0] // 32
    r = lo
    while r + 4 <= hi:
        r0 = w[r]
        r1 = w[r + 1]
        r2 = w[r + 2]
        r3 = w[r + 3]
        i0 = wi[r]
        i1 = wi[r + 1]
        i2 = wi[r + 2]
        i3 = wi[r + 3]
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        p = (r + 4) * rb  # the next four rows, 136 bytes further per block
        for b in range(nb):
            o = b * 34
            _prefetch_range(flat, p, p + 136)
            p += 136
            xb = x[b * 32:b * 32 + 32]
            q0 = i0[o + 2:o + 34]
            q1 = i1[o + 2:o + 34]
            q2 = i2[o + 2:o + 34]
            q3 = i3[o + 2:o + 34]
            s0 = np.float32(0)
            s1 = np.float32(0)
            s2 = np.float32(0)
            s3 = np.float32(0)
            for i in range(32):
                xi = xb[i]
                s0 += np.float32(q0[i]) * xi
                s1 += np.float32(q1[i]) * xi
                s2 += np.float32(q2[i]) * xi
                s3 += np.float32(q3[i]) * xi
            a0 += _f16(tbl, r0, o) * s0
            a1 += _f16(tbl, r1, o) * s1
            a2 += _f16(tbl, r2, o) * s2
            a3 += _f16(tbl, r3, o) * s3
        out[r] = a0
        out[r + 1] = a1
        out[r + 2] = a2
        out[r + 3] = a3
        r += 4
    while r < hi:
        r0 = w[r]
        i0 = wi[r]
        a0 = np.float32(0)
        for b in range(nb):
            o = b * 34
            xb = x[b * 32:b * 32 + 32]
            q0 = i0[o + 2:o + 34]
            s0 = np.float32(0)
            for i in range(32):
                s0 += np.float32(q0[i]) * xb[i]
            a0 += _f16(tbl, r0, o) * s0
        out[r] = a0
        r += 1




@jit(fastmath=_FAST)
def _block_sums(x, size):
    """(cols/size,) float32 sums of x over consecutive groups of `size`."""
    n = x.shape[0] // size
    xs = np.empty(n, np.float32)  # (cols/size,)
    for b in range(n):
        s = np.float32(0)
        for j in range(size):
            s += x[size * b + j]
        xs[b] = s
    return xs


@jit(fastmath=_FAST)
def _matvec_rows_q4q5(w, tbl, x, xs, out, lo, hi, bpb, m_off, qh_off, qs_off, bias):
    """Fused Q4_0 / Q4_1 / Q5_0 / Q5_1: out[lo:hi] = w[lo:hi] @ x; xs (cols/32,) block sums of x.

    Blocks of `bpb` bytes: d f16 at 0, m f16 at m_off (or -1), qh u32 at qh_off (or -1), qs[16]
    at qs_off. Per block: d * (sum_j q_j x_j - bias * xs[b]) + m * xs[b], q_j = nibble + 16 *
    (qh bit j). Lane j of the 8-wide loop handles elements j, j+8 (low nibbles of qs[j], qs[8+j])
    and j+16, j+24 (their high nibbles), whose 5th bits are bit j of qh bytes 0, 1, 2, 3.
    """
    flat = w.reshape(-1)
    rb = w.shape[1]
    nb = x.shape[0] // 32
    hb = _HB16
    qh_at = max(qh_off, 0)  # without qh, every block reads hb[0] (all zeros)
    qh_mask = 255 if qh_off >= 0 else 0
    r = lo
    while r < hi:
        n_rows = min(4, hi - r)  # 4, or a 1..3 remainder (the last row repeats; stores skipped)
        r0 = w[r]
        r1 = w[r + min(1, n_rows - 1)]
        r2 = w[r + min(2, n_rows - 1)]
        r3 = w[r + min(3, n_rows - 1)]
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        p = (r + 4) * rb
        for b in range(nb):
            o = b * bpb
            _prefetch_range(flat, p, p + 4 * bpb)
            p += 4 * bpb
            xb = x[b * 32:b * 32 + 32]
            g0 = r0[o + qh_at:o + qh_at + 4]
            g1 = r1[o + qh_at:o + qh_at + 4]
            g2 = r2[o + qh_at:o + qh_at + 4]
            g3 = r3[o + qh_at:o + qh_at + 4]
            q0 = r0[o + qs_off:o + qs_off + 16]
            q1 = r1[o + qs_off:o + qs_off + 16]
            q2 = r2[o + qs_off:o + qs_off + 16]
            q3 = r3[o + qs_off:o + qs_off + 16]
            h00 = hb[g0[0] & qh_mask]
            h01 = hb[g0[1] & qh_mask]
            h02 = hb[g0[2] & qh_mask]
            h03 = hb[g0[3] & qh_mask]
            h10 = hb[g1[0] & qh_mask]
            h11 = hb[g1[1] & qh_mask]
            h12 = hb[g1[2] & qh_mask]
            h13 = hb[g1[3] & qh_mask]
            h20 = hb[g2[0] & qh_mask]
            h21 = hb[g2[1] & qh_mask]
            h22 = hb[g2[2] & qh_mask]
            h23 = hb[g2[3] & qh_mask]
            h30 = hb[g3[0] & qh_mask]
            h31 = hb[g3[1] & qh_mask]
            h32 = hb[g3[2] & qh_mask]
            h33 = hb[g3[3] & qh_mask]
            s0 = np.float32(0)
            s1 = np.float32(0)
            s2 = np.float32(0)
            s3 = np.float32(0)
            for j in range(8):
                x0 = xb[j]
                x1 = xb[j + 8]
                x2 = xb[j + 16]
                x3 = xb[j + 24]
                u = q0[j]
                v = q0[8 + j]
                s0 += ((np.float32(np.int32(u & _U15)) + h00[j]) * x0
                       + (np.float32(np.int32(v & _U15)) + h01[j]) * x1
                       + (np.float32(np.int32(u >> _U4)) + h02[j]) * x2
                       + (np.float32(np.int32(v >> _U4)) + h03[j]) * x3)
                u = q1[j]
                v = q1[8 + j]
                s1 += ((np.float32(np.int32(u & _U15)) + h10[j]) * x0
                       + (np.float32(np.int32(v & _U15)) + h11[j]) * x1
                       + (np.float32(np.int32(u >> _U4)) + h12[j]) * x2
                       + (np.float32(np.int32(v >> _U4)) + h13[j]) * x3)
                u = q2[j]
                v = q2[8 + j]
                s2 += ((np.float32(np.int32(u & _U15)) + h20[j]) * x0
                       + (np.float32(np.int32(v & _U15)) + h21[j]) * x1
                       + (np.float32(np.int32(u >> _U4)) + h22[j]) * x2
                       + (np.float32(np.int32(v >> _U4)) + h23[j]) * x3)
                u = q3[j]
                v = q3[8 + j]
                s3 += ((np.float32(np.int32(u & _U15)) + h30[j]) * x0
                       + (np.float32(np.int32(v & _U15)) + h31[j]) * x1
                       + (np.float32(np.int32(u >> _U4)) + h32[j]) * x2
                       + (np.float32(np.int32(v >> _U4)) + h33[j]) * x3)
            xsb = xs[b]
            xbias = bias * xsb
            a0 += _f16(tbl, r0, o) * (s0 - xbias)
            a1 += _f16(tbl, r1, o) * (s1 - xbias)
            a2 += _f16(tbl, r2, o) * (s2 - xbias)
            a3 += _f16(tbl, r3, o) * (s3 - xbias)
            if m_off >= 0:
                a0 += _f16(tbl, r0, o + m_off) * xsb
                a1 += _f16(tbl, r1, o + m_off) * xsb
                a2 += _f16(tbl, r2, o + m_off) * xsb
                a3 += _f16(tbl, r3, o + m_off) * xsb
        _store4(out, r, n_rows, a0, a1, a2, a3)
        r += n_rows


@jit
def _store4(out, r, n_rows, a0, a1, a2, a3):
    """out[r : r + n_rows] = (a0, a1, a2, a3)[:n_rows]."""
    out[r] = a0
    if n_rows > 1:
        out[r + 1] = a1
    if n_rows > 2:
        out[r + 2] = a2
    if n_rows > 3:
        out[r + 3] = a3


# (bytes per block, m offset, qh offset, qs offset, bias) of the legacy 32-element types
_Q4Q5_PARAMS: dict[int, tuple[int, int, int, int, np.float32]] = {
    _K_Q4_0: (18, -1, -1, 2, np.float32(8)),
    _K_Q4_1: (20, 2, -1, 4, np.float32(0)),
    _K_Q5_0: (22, -1, 2, 6, np.float32(16)),
    _K_Q5_1: (24, 2, 4, 8, np.float32(0)),
}
_NO_Q4Q5 = (0, -1, -1, 0, np.float32(0))


@jit(fastmath=_FAST, inline="always")
def _k4_block_scales(row, o, tbl, xsb, dsc):
    """Q4_K block at row[o:]: dsc[j] = d * sc_j (j < 8); returns dmin * sum_j m_j * xsb[j]."""
    d = _f16(tbl, row, o)
    dmin = _f16(tbl, row, o + 2)
    s = row[o + 4:o + 16]
    mt = np.float32(0)
    for j in range(4):  # get_scale_min_k4, unrolled: j and j + 4
        dsc[j] = d * np.float32(np.int32(s[j] & _U63))
        mt += np.float32(np.int32(s[j + 4] & _U63)) * xsb[j]
        dsc[j + 4] = d * np.float32(np.int32(s[j + 8] & _U15) | (np.int32(s[j] >> _U6) << 4))
        mt += np.float32(np.int32(s[j + 8] >> _U4) | (np.int32(s[j + 4] >> _U6) << 4)) * xsb[j + 4]
    return dmin * mt


@jit(fastmath=_FAST)
def _matvec_rows_q4_k(w, tbl, x, xs, out, lo, hi, dsc):
    """Fused Q4_K: out[lo:hi] = w[lo:hi] @ x; xs (cols/32,) sums of x; dsc (4, 8) scratch.

    Per block: sum_j d*sc_j * (q·x over sub-block j) - dmin * sum_j m_j * xs[j].
    """
    flat = w.reshape(-1)
    rb = w.shape[1]
    nb = x.shape[0] // 256
    e0 = dsc[0]
    e1 = dsc[1]
    e2 = dsc[2]
    e3 = dsc[3]
    r = lo
    while r < hi:
        n_rows = min(4, hi - r)
        r0 = w[r]
        r1 = w[r + min(1, n_rows - 1)]
        r2 = w[r + min(2, n_rows - 1)]
        r3 = w[r + min(3, n_rows - 1)]
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        p = (r + 4) * rb
        for b in range(nb):
            o = b * 144
            _prefetch_range(flat, p, p + 576)
            p += 576
            xsb = xs[8 * b:8 * b + 8]
            a0 -= _k4_block_scales(r0, o, tbl, xsb, e0)
            a1 -= _k4_block_scales(r1, o, tbl, xsb, e1)
            a2 -= _k4_block_scales(r2, o, tbl, xsb, e2)
            a3 -= _k4_block_scales(r3, o, tbl, xsb, e3)
            for c in range(4):  # 64 elements: 32 low nibbles (sub-block 2c), 32 high (2c+1)
                xl = x[256 * b + 64 * c:256 * b + 64 * c + 32]
                xh = x[256 * b + 64 * c + 32:256 * b + 64 * c + 64]
                q0 = r0[o + 16 + 32 * c:o + 48 + 32 * c]
                q1 = r1[o + 16 + 32 * c:o + 48 + 32 * c]
                q2 = r2[o + 16 + 32 * c:o + 48 + 32 * c]
                q3 = r3[o + 16 + 32 * c:o + 48 + 32 * c]
                l0 = np.float32(0)
                l1 = np.float32(0)
                l2 = np.float32(0)
                l3 = np.float32(0)
                h0 = np.float32(0)
                h1 = np.float32(0)
                h2 = np.float32(0)
                h3 = np.float32(0)
                for l in range(32):
                    xa = xl[l]
                    xb = xh[l]
                    v = q0[l]
                    l0 += np.float32(np.int32(v & _U15)) * xa
                    h0 += np.float32(np.int32(v >> _U4)) * xb
                    v = q1[l]
                    l1 += np.float32(np.int32(v & _U15)) * xa
                    h1 += np.float32(np.int32(v >> _U4)) * xb
                    v = q2[l]
                    l2 += np.float32(np.int32(v & _U15)) * xa
                    h2 += np.float32(np.int32(v >> _U4)) * xb
                    v = q3[l]
                    l3 += np.float32(np.int32(v & _U15)) * xa
                    h3 += np.float32(np.int32(v >> _U4)) * xb
                a0 += e0[2 * c] * l0 + e0[2 * c + 1] * h0
                a1 += e1[2 * c] * l1 + e1[2 * c + 1] * h1
                a2 += e2[2 * c] * l2 + e2[2 * c + 1] * h2
                a3 += e3[2 * c] * l3 + e3[2 * c + 1] * h3
        _store4(out, r, n_rows, a0, a1, a2, a3)
        r += n_rows


@jit(fastmath=_FAST)
def _matvec_rows_q5_k(w, tbl, x, xs, out, lo, hi, dsc):
    """Fused Q5_K: Q4_K (`_matvec_rows_q4_k`) plus a 5th bit per element from qh[32].

    Element l of 64-chunk c gets 16 * (qh[l] bit 2c) (low nibbles) or (qh[l] bit 2c+1) (high).
    """
    flat = w.reshape(-1)
    rb = w.shape[1]
    nb = x.shape[0] // 256
    e0 = dsc[0]
    e1 = dsc[1]
    e2 = dsc[2]
    e3 = dsc[3]
    r = lo
    while r < hi:
        n_rows = min(4, hi - r)
        r0 = w[r]
        r1 = w[r + min(1, n_rows - 1)]
        r2 = w[r + min(2, n_rows - 1)]
        r3 = w[r + min(3, n_rows - 1)]
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        p = (r + 4) * rb
        for b in range(nb):
            o = b * 176
            _prefetch_range(flat, p, p + 704)
            p += 704
            xsb = xs[8 * b:8 * b + 8]
            a0 -= _k4_block_scales(r0, o, tbl, xsb, e0)
            a1 -= _k4_block_scales(r1, o, tbl, xsb, e1)
            a2 -= _k4_block_scales(r2, o, tbl, xsb, e2)
            a3 -= _k4_block_scales(r3, o, tbl, xsb, e3)
            for c in range(4):  # 64 elements: 32 low nibbles (sub-block 2c), 32 high (2c+1)
                xl = x[256 * b + 64 * c:256 * b + 64 * c + 32]
                xh = x[256 * b + 64 * c + 32:256 * b + 64 * c + 64]
                q0 = r0[o + 48 + 32 * c:o + 80 + 32 * c]
                q1 = r1[o + 48 + 32 * c:o + 80 + 32 * c]
                q2 = r2[o + 48 + 32 * c:o + 80 + 32 * c]
                q3 = r3[o + 48 + 32 * c:o + 80 + 32 * c]
                g0 = r0[o + 16:o + 48]
                g1 = r1[o + 16:o + 48]
                g2 = r2[o + 16:o + 48]
                g3 = r3[o + 16:o + 48]
                mlo = np.uint8(1 << (2 * c))
                mhi = np.uint8(2 << (2 * c))
                l0 = np.float32(0)
                l1 = np.float32(0)
                l2 = np.float32(0)
                l3 = np.float32(0)
                h0 = np.float32(0)
                h1 = np.float32(0)
                h2 = np.float32(0)
                h3 = np.float32(0)
                for l in range(32):
                    xa = xl[l]
                    xb = xh[l]
                    v = q0[l]
                    g = g0[l]
                    l0 += (np.float32(np.int32(v & _U15)) + (_F16_0 if g & mlo else _F0)) * xa
                    h0 += (np.float32(np.int32(v >> _U4)) + (_F16_0 if g & mhi else _F0)) * xb
                    v = q1[l]
                    g = g1[l]
                    l1 += (np.float32(np.int32(v & _U15)) + (_F16_0 if g & mlo else _F0)) * xa
                    h1 += (np.float32(np.int32(v >> _U4)) + (_F16_0 if g & mhi else _F0)) * xb
                    v = q2[l]
                    g = g2[l]
                    l2 += (np.float32(np.int32(v & _U15)) + (_F16_0 if g & mlo else _F0)) * xa
                    h2 += (np.float32(np.int32(v >> _U4)) + (_F16_0 if g & mhi else _F0)) * xb
                    v = q3[l]
                    g = g3[l]
                    l3 += (np.float32(np.int32(v & _U15)) + (_F16_0 if g & mlo else _F0)) * xa
                    h3 += (np.float32(np.int32(v >> _U4)) + (_F16_0 if g & mhi else _F0)) * xb
                a0 += e0[2 * c] * l0 + e0[2 * c + 1] * h0
                a1 += e1[2 * c] * l1 + e1[2 * c + 1] * h1
                a2 += e2[2 * c] * l2 + e2[2 * c + 1] * h2
                a3 += e3[2 * c] * l3 + e3[2 * c + 1] * h3
        _store4(out, r, n_rows, a0, a1, a2, a3)
        r += n_rows


@jit(fastmath=_FAST)
def _matvec_rows_q6_k(w, tbl, x, out, lo, hi):
    """Fused Q6_K: out[lo:hi] = w[lo:hi] @ x (layout and element order: `_dq_row_q6_k`).

    Per (half n, group h) of 64 elements, lane l (16) holds elements l, l+32, l+64, l+96, each
    with its own scale d * sc[8n + h + {0, 2, 4, 6}], folded in per element (one accumulator).
    """
    flat = w.reshape(-1)
    rb = w.shape[1]
    nb = x.shape[0] // 256
    wi = w.view(np.int8)
    r = lo
    while r < hi:
        n_rows = min(4, hi - r)
        k1 = r + min(1, n_rows - 1)
        k2 = r + min(2, n_rows - 1)
        k3 = r + min(3, n_rows - 1)
        r0 = w[r]
        r1 = w[k1]
        r2 = w[k2]
        r3 = w[k3]
        i0 = wi[r]
        i1 = wi[k1]
        i2 = wi[k2]
        i3 = wi[k3]
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        p = (r + 4) * rb
        for b in range(nb):
            o = b * 210
            _prefetch_range(flat, p, p + 840)
            p += 840
            d0 = _f16(tbl, r0, o + 208)
            d1 = _f16(tbl, r1, o + 208)
            d2 = _f16(tbl, r2, o + 208)
            d3 = _f16(tbl, r3, o + 208)
            s0 = np.float32(0)
            s1 = np.float32(0)
            s2 = np.float32(0)
            s3 = np.float32(0)
            for n in range(2):
                for h in range(2):
                    lq = o + 64 * n + 16 * h  # ql[l] at lq + l, ql[l + 32] at lq + 32 + l
                    lh = o + 128 + 32 * n + 16 * h
                    ls = o + 192 + 8 * n + h
                    xb = x[256 * b + 128 * n + 16 * h:256 * b + 128 * n + 16 * h + 112]
                    ql0 = r0[lq:lq + 48]
                    ql1 = r1[lq:lq + 48]
                    ql2 = r2[lq:lq + 48]
                    ql3 = r3[lq:lq + 48]
                    qh0 = r0[lh:lh + 16]
                    qh1 = r1[lh:lh + 16]
                    qh2 = r2[lh:lh + 16]
                    qh3 = r3[lh:lh + 16]
                    f00 = d0 * np.float32(i0[ls])
                    f01 = d0 * np.float32(i0[ls + 2])
                    f02 = d0 * np.float32(i0[ls + 4])
                    f03 = d0 * np.float32(i0[ls + 6])
                    f10 = d1 * np.float32(i1[ls])
                    f11 = d1 * np.float32(i1[ls + 2])
                    f12 = d1 * np.float32(i1[ls + 4])
                    f13 = d1 * np.float32(i1[ls + 6])
                    f20 = d2 * np.float32(i2[ls])
                    f21 = d2 * np.float32(i2[ls + 2])
                    f22 = d2 * np.float32(i2[ls + 4])
                    f23 = d2 * np.float32(i2[ls + 6])
                    f30 = d3 * np.float32(i3[ls])
                    f31 = d3 * np.float32(i3[ls + 2])
                    f32 = d3 * np.float32(i3[ls + 4])
                    f33 = d3 * np.float32(i3[ls + 6])
                    for l in range(16):
                        x0 = xb[l]
                        x1 = xb[l + 32]
                        x2 = xb[l + 64]
                        x3 = xb[l + 96]
                        a = ql0[l]
                        c = ql0[l + 32]
                        g = qh0[l]
                        s0 += (np.float32(np.int32(a & _U15) + (np.int32(g & _U3) << 4) - 32) * f00 * x0
                               + np.float32(np.int32(c & _U15) + (np.int32((g >> 2) & _U3) << 4) - 32) * f01 * x1
                               + np.float32(np.int32(a >> _U4) + (np.int32((g >> 4) & _U3) << 4) - 32) * f02 * x2
                               + np.float32(np.int32(c >> _U4) + (np.int32(g >> _U6) << 4) - 32) * f03 * x3)
                        a = ql1[l]
                        c = ql1[l + 32]
                        g = qh1[l]
                        s1 += (np.float32(np.int32(a & _U15) + (np.int32(g & _U3) << 4) - 32) * f10 * x0
                               + np.float32(np.int32(c & _U15) + (np.int32((g >> 2) & _U3) << 4) - 32) * f11 * x1
                               + np.float32(np.int32(a >> _U4) + (np.int32((g >> 4) & _U3) << 4) - 32) * f12 * x2
                               + np.float32(np.int32(c >> _U4) + (np.int32(g >> _U6) << 4) - 32) * f13 * x3)
                        a = ql2[l]
                        c = ql2[l + 32]
                        g = qh2[l]
                        s2 += (np.float32(np.int32(a & _U15) + (np.int32(g & _U3) << 4) - 32) * f20 * x0
                               + np.float32(np.int32(c & _U15) + (np.int32((g >> 2) & _U3) << 4) - 32) * f21 * x1
                               + np.float32(np.int32(a >> _U4) + (np.int32((g >> 4) & _U3) << 4) - 32) * f22 * x2
                               + np.float32(np.int32(c >> _U4) + (np.int32(g >> _U6) << 4) - 32) * f23 * x3)
                        a = ql3[l]
                        c = ql3[l + 32]
                        g = qh3[l]
                        s3 += (np.float32(np.int32(a & _U15) + (np.int32(g & _U3) << 4) - 32) * f30 * x0
                               + np.float32(np.int32(c & _U15) + (np.int32((g >> 2) & _U3) << 4) - 32) * f31 * x1
                               + np.float32(np.int32(a >> _U4) + (np.int32((g >> 4) & _U3) << 4) - 32) * f32 * x2
                               + np.float32(np.int32(c >> _U4) + (np.int32(g >> _U6) << 4) - 32) * f33 * x3)
            a0 += s0
            a1 += s1
            a2 += s2
            a3 += s3
        _store4(out, r, n_rows, a0, a1, a2, a3)
        r += n_rows


@jit(fastmath=_FAST)
def _matvec_range(kind, w, tbl, x, xs, out, lo, hi, bpb, m_off, qh_off, qs_off, bias):
    """out[lo:hi] = dequant(w[lo:hi]) @ x with the kernel of `kind` (serial; xs: `_block_sums(x, 32)`)."""
    if kind == _K_Q8_0:
        _matvec_rows_q8_0(w, tbl, x, out, lo, hi)
    elif bpb > 0:  # Q4_0, Q4_1, Q5_0, Q5_1
        _matvec_rows_q4q5(w, tbl, x, xs, out, lo, hi, bpb, m_off, qh_off, qs_off, bias)
    elif kind == _K_Q4_K:
        _matvec_rows_q4_k(w, tbl, x, xs, out, lo, hi, np.empty((4, 8), np.float32))
    elif kind == _K_Q6_K:
        _matvec_rows_q6_k(w, tbl, x, out, lo, hi)
    elif kind == _K_Q5_K:
        _matvec_rows_q5_k(w, tbl, x, xs, out, lo, hi, np.empty((4, 8), np.float32))
    else:
        _matvec_rows(kind, w, tbl, x, out, lo, hi, np.empty((4, x.shape[0]), np.float32))


@pjit(fastmath=_FAST)
def _matvec_parallel(kind, w, tbl, x, out, bpb, m_off, qh_off, qs_off, bias):
    """out (rows,) = dequant(w (rows, row_bytes)) @ x (cols,), parallel over chunks of rows."""
    rows = w.shape[0]
    xs = _block_sums(x, 32)  # (cols/32,)
    n_chunks = (rows + _ROW_CHUNK - 1) // _ROW_CHUNK
    for c in prange(n_chunks):
        lo = c * _ROW_CHUNK
        _matvec_range(kind, w, tbl, x, xs, out, lo, min(rows, lo + _ROW_CHUNK), bpb, m_off, qh_off, qs_off,
                      bias)


@jit(fastmath=_FAST)
def _matvec_serial(kind, w, tbl, x, out, bpb, m_off, qh_off, qs_off, bias):
    """Like `_matvec_parallel` on the calling thread only (small matrices, busy machines)."""
    xs = _block_sums(x, 32)  # (cols/32,)
    _matvec_range(kind, w, tbl, x, xs, out, 0, w.shape[0], bpb, m_off, qh_off, qs_off, bias)


# ---------------------------------------------------------------------------------------------
# matmul (prefill): each row tile dequantized once, reused for every token
# ---------------------------------------------------------------------------------------------


@jit(fastmath=_FAST)
def _tile_dots(tile, x, out, lo, hi):
    """out[t, lo:hi] = tile[:hi-lo] @ x[t] for every token t: two tokens x four rows per micro-tile."""
    n_tok = x.shape[0]
    n_full = (hi - lo) // 4 * 4
    t = 0
    while t + 2 <= n_tok:  # two tokens x four rows per micro-tile
        xt = x[t]
        yt = x[t + 1]
        ot = out[t]
        pt = out[t + 1]
        for k in range(0, n_full, 4):
            s00, s01, s10, s11, s20, s21, s30, s31 = _dot4x2(
                tile[k], tile[k + 1], tile[k + 2], tile[k + 3], xt, yt)
            ot[lo + k] = s00
            pt[lo + k] = s01
            ot[lo + k + 1] = s10
            pt[lo + k + 1] = s11
            ot[lo + k + 2] = s20
            pt[lo + k + 2] = s21
            ot[lo + k + 3] = s30
            pt[lo + k + 3] = s31
        t += 2
    for t in range(n_tok):
        xt = x[t]
        ot = out[t]
        if t == n_tok - 1 and n_tok % 2 == 1:
            for k in range(0, n_full, 4):
                s0, s1, s2, s3 = _dot4(tile[k], tile[k + 1], tile[k + 2], tile[k + 3], xt)
                ot[lo + k] = s0
                ot[lo + k + 1] = s1
                ot[lo + k + 2] = s2
                ot[lo + k + 3] = s3
        for k in range(n_full, hi - lo):
            ot[lo + k] = _dot1(tile[k], xt)


# Prefill matmul, one driver per type (a `kind` switch would compile all thirteen dequantizers
# into every model's first prompt): out (T, rows) = x (T, cols) @ dequant(w (rows, row_bytes)).T,
# parallel over tiles of _TILE_ROWS rows, each tile dequantized once for all T tokens.
@pjit(fastmath=_FAST)
def _matmul_f32(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_f32(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_f16(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_f16(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_bf16(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_bf16(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q4_0(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q4_0(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q4_1(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q4_1(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q5_0(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q5_0(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q5_1(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q5_1(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q8_0(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q8_0(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q2_k(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q2_k(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q3_k(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q3_k(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q4_k(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q4_k(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q5_k(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q5_k(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


@pjit(fastmath=_FAST)
def _matmul_q6_k(w, tbl, x, out):
    rows, cols = w.shape[0], x.shape[1]
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        for k in range(hi - lo):
            _dq_row_q6_k(w[lo + k], tbl, tile[k])
        _tile_dots(tile, x, out, lo, hi)


_MATMUL = {
    GGMLType.F32: _matmul_f32, GGMLType.F16: _matmul_f16, GGMLType.BF16: _matmul_bf16,
    GGMLType.Q4_0: _matmul_q4_0, GGMLType.Q4_1: _matmul_q4_1, GGMLType.Q5_0: _matmul_q5_0,
    GGMLType.Q5_1: _matmul_q5_1, GGMLType.Q8_0: _matmul_q8_0, GGMLType.Q2_K: _matmul_q2_k,
    GGMLType.Q3_K: _matmul_q3_k, GGMLType.Q4_K: _matmul_q4_k, GGMLType.Q5_K: _matmul_q5_k,
    GGMLType.Q6_K: _matmul_q6_k,
}


# One get_rows per type, so a model compiles only the dequantizers of its own types (a `kind`
# switch would compile all thirteen). Serial: an embedding lookup is a few rows.
@jit
def _get_rows_f32(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_f32(w[ids[i]], tbl, out[i])


@jit
def _get_rows_f16(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_f16(w[ids[i]], tbl, out[i])


@jit
def _get_rows_bf16(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_bf16(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q4_0(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q4_0(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q4_1(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q4_1(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q5_0(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q5_0(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q5_1(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q5_1(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q8_0(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q8_0(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q2_k(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q2_k(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q3_k(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q3_k(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q4_k(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q4_k(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q5_k(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q5_k(w[ids[i]], tbl, out[i])


@jit
def _get_rows_q6_k(w, tbl, ids, out):
    for i in range(ids.shape[0]):
        _dq_row_q6_k(w[ids[i]], tbl, out[i])


_GET_ROWS = {
    GGMLType.F32: _get_rows_f32, GGMLType.F16: _get_rows_f16, GGMLType.BF16: _get_rows_bf16,
    GGMLType.Q4_0: _get_rows_q4_0, GGMLType.Q4_1: _get_rows_q4_1, GGMLType.Q5_0: _get_rows_q5_0,
    GGMLType.Q5_1: _get_rows_q5_1, GGMLType.Q8_0: _get_rows_q8_0, GGMLType.Q2_K: _get_rows_q2_k,
    GGMLType.Q3_K: _get_rows_q3_k, GGMLType.Q4_K: _get_rows_q4_k, GGMLType.Q5_K: _get_rows_q5_k,
    GGMLType.Q6_K: _get_rows_q6_k,
}


# matvec drivers per fused family (Q8_0, the legacy 4/5-bit types, Q4_K, Q5_K, Q6_K), so a model
# compiles only its own; `_matvec_parallel` / `_matvec_serial` (every kind) remain for the rest.
@pjit(fastmath=_FAST)
def _matvec_parallel_q8_0(w, tbl, x, out):
    rows = w.shape[0]
    for c in prange((rows + _ROW_CHUNK - 1) // _ROW_CHUNK):
        lo = c * _ROW_CHUNK
        _matvec_rows_q8_0(w, tbl, x, out, lo, min(rows, lo + _ROW_CHUNK))


@jit(fastmath=_FAST)
def _matvec_serial_q8_0(w, tbl, x, out):
    _matvec_rows_q8_0(w, tbl, x, out, 0, w.shape[0])


@pjit(fastmath=_FAST)
def _matvec_parallel_q4q5(w, tbl, x, out, bpb, m_off, qh_off, qs_off, bias):
    rows = w.shape[0]
    xs = _block_sums(x, 32)  # (cols/32,)
    for c in prange((rows + _ROW_CHUNK - 1) // _ROW_CHUNK):
        lo = c * _ROW_CHUNK
        _matvec_rows_q4q5(w, tbl, x, xs, out, lo, min(rows, lo + _ROW_CHUNK), bpb, m_off, qh_off, qs_off, bias)


@jit(fastmath=_FAST)
def _matvec_serial_q4q5(w, tbl, x, out, bpb, m_off, qh_off, qs_off, bias):
    xs = _block_sums(x, 32)  # (cols/32,)
    _matvec_rows_q4q5(w, tbl, x, xs, out, 0, w.shape[0], bpb, m_off, qh_off, qs_off, bias)


@pjit(fastmath=_FAST)
def _matvec_parallel_q4_k(w, tbl, x, out):
    rows = w.shape[0]
    xs = _block_sums(x, 32)  # (cols/32,)
    for c in prange((rows + _ROW_CHUNK - 1) // _ROW_CHUNK):
        lo = c * _ROW_CHUNK
        _matvec_rows_q4_k(w, tbl, x, xs, out, lo, min(rows, lo + _ROW_CHUNK), np.empty((4, 8), np.float32))


@jit(fastmath=_FAST)
def _matvec_serial_q4_k(w, tbl, x, out):
    _matvec_rows_q4_k(w, tbl, x, _block_sums(x, 32), out, 0, w.shape[0], np.empty((4, 8), np.float32))


@pjit(fastmath=_FAST)
def _matvec_parallel_q5_k(w, tbl, x, out):
    rows = w.shape[0]
    xs = _block_sums(x, 32)  # (cols/32,)
    for c in prange((rows + _ROW_CHUNK - 1) // _ROW_CHUNK):
        lo = c * _ROW_CHUNK
        _matvec_rows_q5_k(w, tbl, x, xs, out, lo, min(rows, lo + _ROW_CHUNK), np.empty((4, 8), np.float32))


@jit(fastmath=_FAST)
def _matvec_serial_q5_k(w, tbl, x, out):
    _matvec_rows_q5_k(w, tbl, x, _block_sums(x, 32), out, 0, w.shape[0], np.empty((4, 8), np.float32))


@pjit(fastmath=_FAST)
def _matvec_parallel_q6_k(w, tbl, x, out):
    rows = w.shape[0]
    for c in prange((rows + _ROW_CHUNK - 1) // _ROW_CHUNK):
        lo = c * _ROW_CHUNK
        _matvec_rows_q6_k(w, tbl, x, out, lo, min(rows, lo + _ROW_CHUNK))


@jit(fastmath=_FAST)
def _matvec_serial_q6_k(w, tbl, x, out):
    _matvec_rows_q6_k(w, tbl, x, out, 0, w.shape[0])


# ---------------------------------------------------------------------------------------------
# Python wrappers: validate, then dispatch by GGMLType
# ---------------------------------------------------------------------------------------------


# GGMLType (or its int value) -> (GGMLType, kind, elements per block, bytes per block)
_TYPE_INFO: dict[GGMLType, tuple[GGMLType, int, int, int]] = {
    t: (t, kind) + block_size_and_bytes(t) for t, kind in _KINDS.items()
}


_FAMILY_MATVEC = {
    _K_Q8_0: (_matvec_parallel_q8_0, _matvec_serial_q8_0), _K_Q4_K: (_matvec_parallel_q4_k, _matvec_serial_q4_k),
    _K_Q5_K: (_matvec_parallel_q5_k, _matvec_serial_q5_k), _K_Q6_K: (_matvec_parallel_q6_k, _matvec_serial_q6_k),
}


def _kind(ggml_type) -> tuple[GGMLType, int, int, int]:
    info = _TYPE_INFO.get(ggml_type)  # IntEnum hashes like its int: one lookup on the hot path
    if info is not None:
        return info
    try:
        t = GGMLType(ggml_type)
    except ValueError:
        raise UnsupportedError(f"unknown ggml type id {ggml_type}") from None
    raise UnsupportedError(f"matvec: ggml type {t.name} is not supported")


def _check_weights(w_rows, info: tuple[GGMLType, int, int, int], cols: int) -> None:
    t, _, bs, ts = info
    if not isinstance(w_rows, np.ndarray) or w_rows.dtype != np.uint8 or w_rows.ndim != 2:
        raise KernelArgumentError(
            f"w_rows must be a 2-D uint8 array (rows, row_bytes), got {_describe(w_rows)}")
    if not w_rows.flags.c_contiguous:
        raise KernelArgumentError("w_rows must be C-contiguous")
    if cols % bs:
        raise KernelArgumentError(f"{cols} columns is not a multiple of {t.name}'s block size {bs}")
    expected = cols // bs * ts
    if w_rows.shape[1] != expected:
        raise KernelArgumentError(
            f"{t.name} rows of {cols} elements take {expected} bytes, w_rows has {w_rows.shape[1]}")


def _check_f32(a, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise KernelArgumentError(f"{name} must be a float32 array, got {_describe(a)}")
    if a.shape != shape:
        raise KernelArgumentError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise KernelArgumentError(f"{name} must be C-contiguous")


def _check_out(out, shape: tuple[int, ...]) -> None:
    _check_f32(out, "out", shape)
    if not out.flags.writeable:
        raise KernelArgumentError("out must be writeable")


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def matvec(w_rows: np.ndarray, ggml_type: GGMLType, x: np.ndarray, out: np.ndarray,
           parallel: bool | None = None) -> np.ndarray:
    """Quantized matrix-vector product ``out = dequant(w_rows) @ x``.

    Parameters
    ----------
    w_rows : (rows, row_bytes) uint8, C-contiguous, may be read-only (an mmap view).
    ggml_type : the GGMLType of the rows; row_bytes must equal ``row_bytes(ggml_type, cols)``.
    x : (cols,) float32, C-contiguous.
    out : (rows,) float32, C-contiguous, written in place and returned.
    parallel : run on Numba's threads (True) or the calling thread only (False); None: parallel
        when the matrix has at least PARALLEL_MIN_BYTES bytes.
    """
    info = _kind(ggml_type)
    kind = info[1]
    if not isinstance(x, np.ndarray) or x.ndim != 1:
        raise KernelArgumentError(f"x must be a 1-D float32 array, got {_describe(x)}")
    _check_f32(x, "x", x.shape)
    _check_weights(w_rows, info, x.shape[0])
    _check_out(out, (w_rows.shape[0],))
    bpb, m_off, qh_off, qs_off, bias = _Q4Q5_PARAMS.get(kind, _NO_Q4Q5)
    if parallel is None:
        parallel = w_rows.nbytes >= PARALLEL_MIN_BYTES
    w = _readonly(w_rows)
    if bpb:
        (_matvec_parallel_q4q5 if parallel else _matvec_serial_q4q5)(
            w, F16_TABLE, x, out, bpb, m_off, qh_off, qs_off, bias)
    elif kind in _FAMILY_MATVEC:
        _FAMILY_MATVEC[kind][0 if parallel else 1](w, F16_TABLE, x, out)
    elif parallel:
        _matvec_parallel(kind, w, F16_TABLE, x, out, bpb, m_off, qh_off, qs_off, bias)
    else:
        _matvec_serial(kind, w, F16_TABLE, x, out, bpb, m_off, qh_off, qs_off, bias)
    return out


def matvec_driver(ggml_type: GGMLType):
    """The parallel matvec kernel `matvec` runs for this type (for cache checks, realm.kernels.warm)."""
    kind = _kind(ggml_type)[1]
    if _Q4Q5_PARAMS.get(kind, _NO_Q4Q5)[0]:
        return _matvec_parallel_q4q5
    return _FAMILY_MATVEC[kind][0] if kind in _FAMILY_MATVEC else _matvec_parallel


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view, so kernels see one array type whatever the caller passes (fewer compiles)."""
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def matmul(w_rows: np.ndarray, ggml_type: GGMLType, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Quantized matrix product for prefill: ``out = x @ dequant(w_rows).T``.

    Parameters
    ----------
    w_rows : (rows, row_bytes) uint8, as for `matvec`; each row is dequantized once.
    ggml_type : the GGMLType of the rows.
    x : (T, cols) float32, C-contiguous.
    out : (T, rows) float32, C-contiguous, written in place and returned.
    """
    info = _kind(ggml_type)
    kind = info[1]
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise KernelArgumentError(f"x must be a 2-D float32 array (T, cols), got {_describe(x)}")
    _check_f32(x, "x", x.shape)
    _check_weights(w_rows, info, x.shape[1])
    _check_out(out, (x.shape[0], w_rows.shape[0]))
    if x.shape[0] and w_rows.shape[0]:
        _MATMUL[info[0]](_readonly(w_rows), F16_TABLE, x, out)
    return out


def get_rows(w_rows: np.ndarray, ggml_type: GGMLType, ids, out: np.ndarray) -> np.ndarray:
    """Embedding lookup: ``out[i] = dequant(w_rows[ids[i]])``.

    Parameters
    ----------
    w_rows : (rows, row_bytes) uint8, as for `matvec`.
    ggml_type : the GGMLType of the rows.
    ids : sequence of row indices (ints), each in [0, rows).
    out : (len(ids), cols) float32, C-contiguous, written in place and returned.
    """
    info = _kind(ggml_type)
    kind = info[1]
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if not isinstance(out, np.ndarray) or out.ndim != 2:
        raise KernelArgumentError(f"out must be a 2-D float32 array (n, cols), got {_describe(out)}")
    _check_out(out, (ids.shape[0], out.shape[1]))
    _check_weights(w_rows, info, out.shape[1])
    if ids.size and (ids.min() < 0 or ids.max() >= w_rows.shape[0]):
        bad = ids[(ids < 0) | (ids >= w_rows.shape[0])][0]
        raise KernelArgumentError(f"row id {bad} out of range [0, {w_rows.shape[0]})")
    if ids.size:
        _GET_ROWS[info[0]](_readonly(w_rows), F16_TABLE, ids, out)
    return out


def dequantize_rows(w_rows: np.ndarray, ggml_type: GGMLType, out: np.ndarray) -> np.ndarray:
    """Dequantize every row: out (rows, cols) float32 = dequant(w_rows (rows, row_bytes))."""
    return get_rows(w_rows, ggml_type, np.arange(w_rows.shape[0] if isinstance(w_rows, np.ndarray) else 0),
                    out)


def _random_rows(t: GGMLType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes of `rows` rows of type t with finite f16/bf16/f32 fields (for warmup only)."""
    if t == GGMLType.F32:
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if t in (GGMLType.F16, GGMLType.BF16):
        return np.full((rows, cols), 0x3C00, np.uint16).view(np.uint8)
    return np.zeros((rows, row_bytes(t, cols)), np.uint8)  # zero scales: finite everywhere


def warmup() -> None:
    """Compile (or load from cache) every kernel on tiny inputs, one and several rows."""
    rng = np.random.default_rng(0)
    for t in sorted(MATVEC_TYPES):
        bs = block_size_and_bytes(t)[0]
        cols = bs if bs > 1 else 32
        for writeable in (False, True):  # read-only mmap views and ordinary arrays type differently
            for rows in (1, 6):
                w = _random_rows(t, rows, cols, rng)
                w.flags.writeable = writeable
                x = np.ones(cols, np.float32)
                for parallel in (False, True):
                    matvec(w, t, x, np.empty(rows, np.float32), parallel=parallel)
                matmul(w, t, np.ones((2, cols), np.float32), np.empty((2, rows), np.float32))
                get_rows(w, t, [0], np.empty((1, cols), np.float32))
