"""Int8 rows: a layer matrix repacked once at load into int8 values plus f32 scales, for fast matvec/matmul.

Every block quant of realm's matrices (Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K, Q6_K) stores, per group of
g = 32 (16 for Q6_K) elements, small integers q and a per-group affine map; repacked:

    qs    (rows, cols)    int8     q, element order of the row (Q5_0: q - 16, Q6_K: q - 32, ...)
    scale (rows, cols/g)  float32  d (legacy) or d * sc (K-quants)
    bias  (rows, cols/g)  float32  m (Q4_1/Q5_1) or -dmin * m (Q4_K/Q5_K); absent (0 columns) otherwise

so that element j of group b is exactly `scale[b] * qs[j] + bias[b]`, the reference's float32 value
(tests/unit/test_kernels_int8rows.py compares bit for bit with `realm.quants.dequantize_ref`). The
unpacking of nibbles and high bits happens once per weight at load instead of once per token; a
matvec then streams 1 byte + 4/g bytes per weight at the speed of an int8 -> f32 FMA loop
(layouts: `realm/quants.py`). Costs memory: 1.1-2.2x the quantized bytes of the repacked matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from realm.errors import KernelArgumentError
from realm.kernels._jit import jit, pjit, prange
from realm.kernels.matvec import F16_TABLE, _f16, _prefetch_range, _trip
from realm.quants import GGMLType, block_size_and_bytes

__all__ = ["Int8Rows", "REPACK_TYPES", "repack", "repacked_bytes", "matvec_int8", "matmul_int8", "warmup"]

_ROW_CHUNK = 64  # rows per prange task in matvec (a multiple of 4)
_TILE_ROWS = 16  # rows per matmul tile: (16, cols) float32 scratch per task
# Smaller matrices run on the calling thread (a parallel launch and the sleeping worker's wake-up
# cost tens of microseconds). Default model, 2 threads, decode of its 0.2-1.7 MB repacked Q5_0/Q6_K
# layer matrices, one process, 6 interleaved rounds on a quiet machine (2026-12-04): 26.4-27.6 tok/s
# with a 4 MiB threshold (every layer matvec serial), 29.1-30.8 with 256 KiB. (An earlier run on a
# shared machine had favoured 4 MiB: 30.4 serial vs 21.7 split; a descheduled worker stalls a split.)
PARALLEL_MIN_BYTES = 256 << 10


@dataclass(frozen=True)
class Int8Rows:
    """A repacked matrix; `ggml_type` is the type it came from (for messages and stats)."""

    qs: np.ndarray  # (rows, cols) int8
    scale: np.ndarray  # (rows, cols/g) float32
    bias: np.ndarray  # (rows, cols/g) float32, or (rows, 0) when the type has no offset
    group: int  # g: elements per scale
    ggml_type: GGMLType

    @property
    def shape(self) -> tuple[int, int]:
        return self.qs.shape

    @property
    def nbytes(self) -> int:
        return self.qs.nbytes + self.scale.nbytes + self.bias.nbytes


# ---------------------------------------------------------------------------------------------
# Repack, one kernel per type: w (rows, row_bytes) uint8 -> qs, scale, bias (see the module doc)
# ---------------------------------------------------------------------------------------------
# Serial (`prange` is `range` outside a parallel kernel): repacking all of the default model's
# matrices takes 0.08 s on 1 thread, while a parallel kernel costs about twice the compile time
# of a serial one on a fresh install.


@jit
def _repack_q8_0(w, tbl, qs, scale, bias):
    """Q8_0 block (34 B): d f16 | qs[32] int8."""
    wi = w.view(np.int8)
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(scale.shape[1]):
            o = b * 34
            scale[r, b] = _f16(tbl, row, o)
            for j in range(32):
                qs[r, 32 * b + j] = wi[r, o + 2 + j]


@jit
def _repack_q4q5(w, tbl, qs, scale, bias, bpb, m_off, qh_off, qs_off, offset):
    """Q4_0 / Q4_1 / Q5_0 / Q5_1 (bytes per block, m f16 at m_off or -1, qh u32 at qh_off or -1,
    qs[16] at qs_off): element j < 16 is the low nibble of qs[j], j >= 16 the high nibble of
    qs[j - 16], bit j of qh its 5th bit; stored q - offset (8 for Q4_0, 16 for Q5_0, else 0)."""
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(scale.shape[1]):
            o = b * bpb
            scale[r, b] = _f16(tbl, row, o)
            if m_off >= 0:
                bias[r, b] = _f16(tbl, row, o + m_off)
            qh = 0
            if qh_off >= 0:
                qh = (np.int64(row[o + qh_off]) | (np.int64(row[o + qh_off + 1]) << 8)
                      | (np.int64(row[o + qh_off + 2]) << 16) | (np.int64(row[o + qh_off + 3]) << 24))
            for j in range(16):
                v = np.int64(row[o + qs_off + j])
                lo = (v & 15) | (((qh >> j) & 1) << 4)
                hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
                qs[r, 32 * b + j] = np.int8(lo - offset)
                qs[r, 32 * b + j + 16] = np.int8(hi - offset)


@jit
def _repack_k4(w, tbl, qs, scale, bias, bpb, qh_off, qs_off):
    """Q4_K (144 B) / Q5_K (176 B, qh[32] at qh_off): d | dmin | scales[12] | [qh] | qs[128].

    Sub-block s = 2c + u (32 elements): nibble u of qs[32c + l], 5th bit qh[l] bit s;
    scale d * sc_s, bias -(dmin * m_s) (get_scale_min_k4)."""
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(scale.shape[1] // 8):
            o = b * bpb
            d = _f16(tbl, row, o)
            dmin = _f16(tbl, row, o + 2)
            s = row[o + 4:o + 16]
            for j in range(8):
                if j < 4:
                    sc = np.int64(s[j] & 63)
                    m = np.int64(s[j + 4] & 63)
                else:
                    sc = np.int64(s[j + 4] & 15) | (np.int64(s[j - 4] >> 6) << 4)
                    m = np.int64(s[j + 4] >> 4) | (np.int64(s[j] >> 6) << 4)
                scale[r, 8 * b + j] = d * np.float32(sc)
                bias[r, 8 * b + j] = -(dmin * np.float32(m))
            for c in range(4):
                for l in range(32):
                    v = np.int64(row[o + qs_off + 32 * c + l])
                    h = np.int64(row[o + qh_off + l]) if qh_off >= 0 else np.int64(0)
                    lo = (v & 15) | (((h >> (2 * c)) & 1) << 4)
                    hi = (v >> 4) | (((h >> (2 * c + 1)) & 1) << 4)
                    qs[r, 256 * b + 64 * c + l] = np.int8(lo)
                    qs[r, 256 * b + 64 * c + 32 + l] = np.int8(hi)


@jit
def _repack_q6_k(w, tbl, qs, scale, bias):
    """Q6_K (210 B): ql[128] | qh[64] | scales[16] int8 | d f16 (d last); groups of 16, q - 32.

    Element 128h + 32k + l: low 4 bits nibble (k // 2) of ql[64h + 32(k % 2) + l], high 2 bits
    bits 2k..2k+1 of qh[32h + l]; scale d * scales[element // 16]."""
    wi = w.view(np.int8)
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(scale.shape[1] // 16):
            o = b * 210
            d = _f16(tbl, row, o + 208)
            for s in range(16):
                scale[r, 16 * b + s] = d * np.float32(wi[r, o + 192 + s])
            for h in range(2):
                for k in range(4):
                    for l in range(32):
                        v = np.int64(row[o + 64 * h + 32 * (k % 2) + l])
                        lo = (v >> (4 * (k // 2))) & 15
                        hi = (np.int64(row[o + 128 + 32 * h + l]) >> (2 * k)) & 3
                        qs[r, 256 * b + 128 * h + 32 * k + l] = np.int8((lo | (hi << 4)) - 32)


# type -> (group, has bias)
_GROUPS: dict[GGMLType, tuple[int, bool]] = {
    GGMLType.Q8_0: (32, False), GGMLType.Q4_0: (32, False), GGMLType.Q4_1: (32, True),
    GGMLType.Q5_0: (32, False), GGMLType.Q5_1: (32, True), GGMLType.Q4_K: (32, True),
    GGMLType.Q5_K: (32, True), GGMLType.Q6_K: (16, False),
}
REPACK_TYPES: frozenset[GGMLType] = frozenset(_GROUPS)

# (bytes per block, m offset, qh offset, qs offset, stored offset) of the legacy 32-element types
_Q4Q5: dict[GGMLType, tuple[int, int, int, int, int]] = {
    GGMLType.Q4_0: (18, -1, -1, 2, 8), GGMLType.Q4_1: (20, 2, -1, 4, 0),
    GGMLType.Q5_0: (22, -1, 2, 6, 16), GGMLType.Q5_1: (24, 2, 4, 8, 0),
}


def repack_kernel(ggml_type: GGMLType):
    """The Numba kernel `repack` runs for this type (for cache checks, realm.kernels.warm)."""
    t = GGMLType(ggml_type)
    if t == GGMLType.Q8_0:
        return _repack_q8_0
    if t in _Q4Q5:
        return _repack_q4q5
    return _repack_q6_k if t == GGMLType.Q6_K else _repack_k4


def repacked_bytes(ggml_type: GGMLType, rows: int, cols: int) -> int:
    """Bytes `repack` allocates for a (rows, cols) matrix of `ggml_type`."""
    g, has_bias = _GROUPS[GGMLType(ggml_type)]
    return rows * cols + rows * (cols // g) * 4 * (2 if has_bias else 1)


def repack(w_rows: np.ndarray, ggml_type: GGMLType) -> Int8Rows:
    """Repack raw rows (rows, row_bytes) uint8 of a REPACK_TYPES type into an `Int8Rows`."""
    t = GGMLType(ggml_type)
    if t not in _GROUPS:
        raise KernelArgumentError(f"repack: {t.name} has no int8 form (types: "
                                  f"{', '.join(sorted(x.name for x in REPACK_TYPES))})")
    if not isinstance(w_rows, np.ndarray) or w_rows.dtype != np.uint8 or w_rows.ndim != 2:
        raise KernelArgumentError("repack: w_rows must be a 2-D uint8 array (rows, row_bytes)")
    if not w_rows.flags.c_contiguous:
        raise KernelArgumentError("repack: w_rows must be C-contiguous")
    bs, ts = block_size_and_bytes(t)
    if w_rows.shape[1] % ts:
        raise KernelArgumentError(f"repack: {w_rows.shape[1]} bytes per row is not a whole number of "
                                  f"{t.name} blocks of {ts} bytes")
    rows, cols = w_rows.shape[0], w_rows.shape[1] // ts * bs
    g, has_bias = _GROUPS[t]
    qs = np.empty((rows, cols), np.int8)  # (rows, cols)
    scale = np.empty((rows, cols // g), np.float32)  # (rows, cols/g)
    bias = np.zeros((rows, cols // g if has_bias else 0), np.float32)  # (rows, cols/g) or (rows, 0)
    w = _readonly(w_rows)
    if rows:
        if t == GGMLType.Q8_0:
            _repack_q8_0(w, F16_TABLE, qs, scale, bias)
        elif t in _Q4Q5:
            _repack_q4q5(w, F16_TABLE, qs, scale, bias, *_Q4Q5[t])
        elif t == GGMLType.Q6_K:
            _repack_q6_k(w, F16_TABLE, qs, scale, bias)
        else:  # Q4_K, Q5_K
            _repack_k4(w, F16_TABLE, qs, scale, bias, ts, 16 if t == GGMLType.Q5_K else -1,
                       48 if t == GGMLType.Q5_K else 16)
    return Int8Rows(qs, scale, bias, g, t)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view, so every kernel sees one array type (fewer specializations to compile)."""
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


# ---------------------------------------------------------------------------------------------
# matvec (decode): four rows share each activation load; per group one f32 sum scaled once
# ---------------------------------------------------------------------------------------------


@jit(fastmath={"reassoc", "contract", "nsz"})
def _matvec_rows(qs, scale, bias, g, x, xs, out, lo, hi):
    """out[lo:hi] = (scale * qs + bias) @ x for rows lo..hi; xs (cols/g,) group sums of x."""
    flat = qs.reshape(-1)
    cols = qs.shape[1]
    ng = scale.shape[1]
    ngt = _trip(g, cols, g)
    has_bias = bias.shape[1] > 0
    r = lo
    while r < hi:
        n_rows = min(4, hi - r)  # 4, or a 1..3 remainder (the last row repeats; stores skipped)
        k1 = r + min(1, n_rows - 1)
        k2 = r + min(2, n_rows - 1)
        k3 = r + min(3, n_rows - 1)
        q0 = qs[r]
        q1 = qs[k1]
        q2 = qs[k2]
        q3 = qs[k3]
        c0 = scale[r]
        c1 = scale[k1]
        c2 = scale[k2]
        c3 = scale[k3]
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        p = (r + 4) * cols  # the next four rows: 4 * g bytes further per group
        for b in range(ng):
            _prefetch_range(flat, p, p + 4 * g)
            p += 4 * g
            o = b * g
            xb = x[o:o + g]
            w0 = q0[o:o + g]
            w1 = q1[o:o + g]
            w2 = q2[o:o + g]
            w3 = q3[o:o + g]
            s0 = np.float32(0)
            s1 = np.float32(0)
            s2 = np.float32(0)
            s3 = np.float32(0)
            for j in range(ngt):
                xj = xb[j]
                s0 += np.float32(w0[j]) * xj
                s1 += np.float32(w1[j]) * xj
                s2 += np.float32(w2[j]) * xj
                s3 += np.float32(w3[j]) * xj
            a0 += c0[b] * s0
            a1 += c1[b] * s1
            a2 += c2[b] * s2
            a3 += c3[b] * s3
        if has_bias:
            e0 = bias[r]
            e1 = bias[k1]
            e2 = bias[k2]
            e3 = bias[k3]
            for b in range(ng):
                xsb = xs[b]
                a0 += e0[b] * xsb
                a1 += e1[b] * xsb
                a2 += e2[b] * xsb
                a3 += e3[b] * xsb
        out[r] = a0
        if n_rows > 1:
            out[r + 1] = a1
        if n_rows > 2:
            out[r + 2] = a2
        if n_rows > 3:
            out[r + 3] = a3
        r += n_rows


@jit(fastmath={"reassoc", "contract", "nsz"})
def _group_sums(x, g):
    """(cols/g,) float32 sums of x over consecutive groups of g."""
    n = x.shape[0] // g
    xs = np.empty(n, np.float32)  # (cols/g,)
    for b in range(n):
        s = np.float32(0)
        for j in range(g):
            s += x[g * b + j]
        xs[b] = s
    return xs


@pjit
def _matvec_parallel(qs, scale, bias, g, x, out):
    """out (rows,) = dequant(rows) @ x, parallel over chunks of rows."""
    rows = qs.shape[0]
    xs = _group_sums(x, g)  # (cols/g,)
    for c in prange((rows + _ROW_CHUNK - 1) // _ROW_CHUNK):
        lo = c * _ROW_CHUNK
        _matvec_rows(qs, scale, bias, g, x, xs, out, lo, min(rows, lo + _ROW_CHUNK))


@jit
def _matvec_serial(qs, scale, bias, g, x, out):
    """Like `_matvec_parallel` on the calling thread."""
    xs = _group_sums(x, g)  # (cols/g,)
    _matvec_rows(qs, scale, bias, g, x, xs, out, 0, qs.shape[0])


# ---------------------------------------------------------------------------------------------
# matmul (prefill): a tile of rows is dequantized once, then 4 rows x 4 tokens per micro-kernel
# ---------------------------------------------------------------------------------------------


@jit(fastmath={"reassoc", "contract", "nsz"})
def _dot4x4(a0, a1, a2, a3, x0, x1, x2, x3):
    """The 16 dots a_i . x_t (rows i, tokens t), returned row-major: 16 FMAs per 8 loads."""
    s00 = s01 = s02 = s03 = np.float32(0)
    s10 = s11 = s12 = s13 = np.float32(0)
    s20 = s21 = s22 = s23 = np.float32(0)
    s30 = s31 = s32 = s33 = np.float32(0)
    for i in range(x0.shape[0]):
        y0 = x0[i]
        y1 = x1[i]
        y2 = x2[i]
        y3 = x3[i]
        w = a0[i]
        s00 += w * y0
        s01 += w * y1
        s02 += w * y2
        s03 += w * y3
        w = a1[i]
        s10 += w * y0
        s11 += w * y1
        s12 += w * y2
        s13 += w * y3
        w = a2[i]
        s20 += w * y0
        s21 += w * y1
        s22 += w * y2
        s23 += w * y3
        w = a3[i]
        s30 += w * y0
        s31 += w * y1
        s32 += w * y2
        s33 += w * y3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)


@jit(fastmath={"reassoc", "contract", "nsz"})
def _dot1(a, x):
    s = np.float32(0)
    for i in range(x.shape[0]):
        s += a[i] * x[i]
    return s


@jit
def _dequantize_tile(qs, scale, bias, g, lo, hi, tile):
    """tile[k] = scale * qs + bias of row lo + k (the reference's float32 values)."""
    cols = qs.shape[1]
    ngt = _trip(g, cols, g)
    has_bias = bias.shape[1] > 0
    for k in range(hi - lo):
        q = qs[lo + k]
        c = scale[lo + k]
        y = tile[k]
        for b in range(scale.shape[1]):
            d = c[b]
            m = bias[lo + k, b] if has_bias else np.float32(0)
            for j in range(ngt):
                y[b * g + j] = d * np.float32(q[b * g + j]) + m


@jit(fastmath={"reassoc", "contract", "nsz"})
def matmul_f32_tile(tile, n_rows, x, out, lo):
    """out[:, lo:lo+n_rows] = x (T, cols) @ tile[:n_rows].T: 4 x 4 micro-tiles, remainders by dots."""
    n_tok = x.shape[0]
    n4 = n_rows // 4 * 4
    t = 0
    while t + 4 <= n_tok:
        x0 = x[t]
        x1 = x[t + 1]
        x2 = x[t + 2]
        x3 = x[t + 3]
        for k in range(0, n4, 4):
            s = _dot4x4(tile[k], tile[k + 1], tile[k + 2], tile[k + 3], x0, x1, x2, x3)
            for i in range(4):
                out[t, lo + k + i] = s[4 * i]
                out[t + 1, lo + k + i] = s[4 * i + 1]
                out[t + 2, lo + k + i] = s[4 * i + 2]
                out[t + 3, lo + k + i] = s[4 * i + 3]
        t += 4
    for t2 in range(t, n_tok):
        for k in range(n4):
            out[t2, lo + k] = _dot1(tile[k], x[t2])
    for t2 in range(n_tok):
        for k in range(n4, n_rows):
            out[t2, lo + k] = _dot1(tile[k], x[t2])


@pjit
def _matmul(qs, scale, bias, g, x, out):
    """out (T, rows) = x (T, cols) @ dequant(rows).T, parallel over row tiles."""
    rows, cols = qs.shape
    for c in prange((rows + _TILE_ROWS - 1) // _TILE_ROWS):
        tile = np.empty((_TILE_ROWS, cols), np.float32)  # (TILE_ROWS, cols)
        lo = c * _TILE_ROWS
        hi = min(rows, lo + _TILE_ROWS)
        _dequantize_tile(qs, scale, bias, g, lo, hi, tile)
        matmul_f32_tile(tile, hi - lo, x, out, lo)


# ---------------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------------


def _check(m: Int8Rows, cols: int) -> None:
    if not isinstance(m, Int8Rows):
        raise KernelArgumentError(f"expected Int8Rows, got {type(m).__name__}")
    if m.qs.shape[1] != cols:
        raise KernelArgumentError(f"matrix has {m.qs.shape[1]} columns, x has {cols}")


def _check_f32(a, name: str, shape: tuple[int, ...], writeable: bool = False) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise KernelArgumentError(f"{name} must be a C-contiguous float32 array of shape {shape}, got {got}")
    if writeable and not a.flags.writeable:
        raise KernelArgumentError(f"{name} must be writeable")


def matvec_int8(m: Int8Rows, x: np.ndarray, out: np.ndarray, parallel: bool | None = None) -> np.ndarray:
    """out (rows,) = dequant(m) @ x (cols,) float32; parallel: None = by size (PARALLEL_MIN_BYTES)."""
    if not isinstance(x, np.ndarray) or x.ndim != 1:
        raise KernelArgumentError("x must be a 1-D float32 array")
    _check(m, x.shape[0])
    _check_f32(x, "x", x.shape)
    _check_f32(out, "out", (m.qs.shape[0],), writeable=True)
    if parallel is None:
        parallel = m.nbytes >= PARALLEL_MIN_BYTES and numba.get_num_threads() > 1
    (_matvec_parallel if parallel else _matvec_serial)(m.qs, m.scale, m.bias, m.group, x, out)
    return out


def matmul_int8(m: Int8Rows, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (T, rows) = x (T, cols) @ dequant(m).T; each row tile dequantized once for all T tokens."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise KernelArgumentError("x must be a 2-D float32 array (T, cols)")
    _check(m, x.shape[1])
    _check_f32(x, "x", x.shape)
    _check_f32(out, "out", (x.shape[0], m.qs.shape[0]), writeable=True)
    if x.shape[0] and m.qs.shape[0]:
        _matmul(m.qs, m.scale, m.bias, m.group, x, out)
    return out


def warmup(types=None) -> None:
    """Compile (or load from cache) the repack kernels of `types` (default all) and the int8 matvec/matmul."""
    for t in sorted(REPACK_TYPES if types is None else set(types) & REPACK_TYPES):
        bs, ts = block_size_and_bytes(t)
        w = np.zeros((1, 256 // bs * ts), np.uint8)  # one row of 256 elements, zero scales
        m = repack(w, t)
    m = repack(np.zeros((1, 34 * 8), np.uint8), GGMLType.Q8_0)  # every type's Int8Rows types alike
    x = np.ones(m.qs.shape[1], np.float32)
    matvec_int8(m, x, np.empty(1, np.float32), parallel=False)
    matvec_int8(m, x, np.empty(1, np.float32), parallel=True)
    matmul_int8(m, np.ones((2, m.qs.shape[1]), np.float32), np.empty((2, 1), np.float32))
