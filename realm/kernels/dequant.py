"""Numba dequantization kernels: raw GGML blocks -> float32, bit-exact with `realm.quants.dequantize_ref`.

Each `dequantize_<type>(blocks, out)` takes blocks (nb, type_size) uint8 and fills out
(nb * block_size,) float32, parallel over blocks; F16/BF16 take 1-D uint16 values and write float32
bit patterns into a uint32 view of `out` (F32 is a plain copy). Layouts and bit diagrams live in
`realm/quants.py` (the spec); operation order follows ggml's `dequantize_row_*`
(https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-quants.c), never fused (fastmath off).
Also the scalar bit helpers kernels share: `f16_to_f32`, `f32_to_f16`, `u32_as_f32`, `f32_as_u32`.
"""

from __future__ import annotations

import numpy as np

from realm.errors import KernelArgumentError
from realm.kernels._jit import jit, jit_disabled, pjit, prange
from realm.quants import LAYOUTS, GGMLType, as_bytes, require_supported

# ---------------------------------------------------------------------------------------------
# Scalar bit helpers (bitcasts are LLVM intrinsics; plain NumPy under NUMBA_DISABLE_JIT=1)
# ---------------------------------------------------------------------------------------------

if jit_disabled():

    def u32_as_f32(bits):
        """The float32 whose IEEE bits are the low 32 bits of `bits`."""
        return np.array([int(bits) & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]

    def f32_as_u32(f):
        """The IEEE bits of float32 `f` as uint32."""
        return np.array([f], dtype=np.float32).view(np.uint32)[0]

else:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def u32_as_f32(typingctx, bits):
        """The float32 whose IEEE bits are the low 32 bits of `bits`."""
        if not isinstance(bits, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            if bits.bitwidth > 32:
                v = builder.trunc(v, ir.IntType(32))
            elif bits.bitwidth < 32:
                v = builder.zext(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())

        return types.float32(bits), codegen

    @intrinsic
    def f32_as_u32(typingctx, f):
        """The IEEE bits of float32 `f` as uint32."""
        if f != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(f), codegen


_F16_SUBNORMAL_UNIT = np.float32(2.0**-24)  # value of the f16 bit pattern 0x0001
_CHUNK = 4096  # elements per parallel work item of the float-type kernels


@jit
def f16_to_f32(h):
    """IEEE half bits (low 16 bits of an int) -> float32, exact like NumPy (subnormals, inf, NaN payload)."""
    h = np.int64(h) & 0xFFFF
    sign = (h & 0x8000) << 16
    em = h & 0x7FFF  # exponent and mantissa
    if em >= 0x7C00:  # inf / nan: keep the payload
        return u32_as_f32(sign | 0x7F800000 | ((em & 0x3FF) << 13))
    if em >= 0x0400:  # normal: rebias the exponent by 127 - 15 = 112
        return u32_as_f32(sign | ((em << 13) + (112 << 23)))
    f = np.float32(em) * _F16_SUBNORMAL_UNIT  # zero / subnormal: em * 2^-24, exact in float32
    return -f if sign else f


@jit
def f32_to_f16(f):
    """float32 -> IEEE half bits (int), rounded to nearest even like NumPy; overflow -> inf, NaN stays NaN."""
    bits = np.int64(f32_as_u32(np.float32(f)))
    sign = (bits >> 16) & 0x8000
    exp = (bits >> 23) & 0xFF
    man = bits & 0x7FFFFF
    if exp == 0xFF:  # inf / nan (a NaN is kept quiet and non-zero)
        return sign | 0x7C00 | ((0x200 | (man >> 13)) if man else 0)
    if exp > 142:  # >= 2^16: beyond f16 even before rounding
        return sign | 0x7C00
    if exp >= 113:  # normal f16; a rounding carry may roll into the exponent (up to inf): correct
        h = ((exp - 112) << 10) | (man >> 13)
        rem = man & 0x1FFF
        if rem > 0x1000 or (rem == 0x1000 and (h & 1)):
            h += 1
        return sign | h
    if exp >= 102:  # subnormal f16: units of 2^-24
        m = man | 0x800000
        shift = 126 - exp  # 14 .. 24
        h = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (h & 1)):
            h += 1
        return sign | h
    return sign  # underflow to signed zero


@jit
def _f16_at(b, i):
    """float32 of the little-endian f16 at bytes b[i], b[i+1]."""
    return f16_to_f32(np.int64(b[i]) | (np.int64(b[i + 1]) << 8))


@jit
def _f32_at(b, i):
    """float32 stored little-endian at bytes b[i .. i+3]."""
    return u32_as_f32(np.int64(b[i]) | (np.int64(b[i + 1]) << 8) | (np.int64(b[i + 2]) << 16)
                      | (np.int64(b[i + 3]) << 24))


@jit
def _i8(v):
    """uint8 byte -> signed value (two's complement)."""
    v = np.int64(v)
    return v - ((v & 0x80) << 1)


# ---------------------------------------------------------------------------------------------
# Float types
# ---------------------------------------------------------------------------------------------


@jit
def f16_bits_to_f32_bits(h):
    """IEEE half bits -> float32 bits, branch-free (selects) so that bulk loops vectorize; = f16_to_f32."""
    h = np.int32(h) & 0xFFFF
    sign = (h & 0x8000) << 16
    em = h & 0x7FFF
    special = 0x7F800000 | ((em & 0x3FF) << 13)  # inf / nan
    normal = (em << 13) + (112 << 23)
    subnormal = np.int32(f32_as_u32(np.float32(em) * _F16_SUBNORMAL_UNIT))
    bits = special if em >= 0x7C00 else (normal if em >= 0x0400 else subnormal)
    return np.uint32(sign | bits)


@pjit
def dequantize_f16(h, out_bits):
    """h (n,) uint16 (IEEE half bits) -> out_bits (n,) uint32, the float32 bits."""
    n = h.shape[0]
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(n_chunks):
        lo = c * _CHUNK
        hc = h[lo:lo + _CHUNK]
        oc = out_bits[lo:lo + _CHUNK]
        for i in range(hc.shape[0]):
            oc[i] = f16_bits_to_f32_bits(hc[i])


@pjit
def dequantize_bf16(h, out_bits):
    """h (n,) uint16 (bfloat16 bits) -> out_bits (n,) uint32, the float32 bits (top half = h)."""
    n = h.shape[0]
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(n_chunks):
        lo = c * _CHUNK
        hc = h[lo:lo + _CHUNK]
        oc = out_bits[lo:lo + _CHUNK]
        for i in range(hc.shape[0]):
            oc[i] = np.uint32(hc[i]) << np.uint32(16)


# ---------------------------------------------------------------------------------------------
# Quantized blocks. Loop lengths (qk = elements per block and its fractions) are read from the
# array shapes, not written as literals: with literal trip counts LLVM fully unrolls the inner
# loops into scalar code (it cannot prove `blocks` and `out` do not alias), with run-time counts it
# vectorizes them behind an alias check (2-3x faster). The wrapper guarantees the shapes.
# ---------------------------------------------------------------------------------------------


@pjit
def dequantize_q4_0(blocks, out):
    """blocks (nb, 18) uint8 -> out (nb*32,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # 32
    half = qk // 2
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 0)
        qs = b[2:2 + half]
        for j in range(half):
            q = np.int32(qs[j])
            y[j] = d * np.float32((q & 0x0F) - 8)
            y[j + half] = d * np.float32((q >> 4) - 8)


@pjit
def dequantize_q4_1(blocks, out):
    """blocks (nb, 20) uint8 -> out (nb*32,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # 32
    half = qk // 2
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 0)
        m = _f16_at(b, 2)
        qs = b[4:4 + half]
        for j in range(half):
            q = np.int32(qs[j])
            y[j] = d * np.float32(q & 0x0F) + m
            y[j + half] = d * np.float32(q >> 4) + m


@pjit
def dequantize_q5_0(blocks, out):
    """blocks (nb, 22) uint8 -> out (nb*32,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # 32
    half = qk // 2
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 0)
        qh = np.uint32(b[2]) | (np.uint32(b[3]) << 8) | (np.uint32(b[4]) << 16) | (np.uint32(b[5]) << 24)
        qs = b[6:6 + half]
        for j in range(half):
            q = np.int32(qs[j])
            h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
            h1 = np.int32((qh >> np.uint32(j + half)) & np.uint32(1)) << 4
            y[j] = d * np.float32(((q & 0x0F) | h0) - 16)
            y[j + half] = d * np.float32(((q >> 4) | h1) - 16)


@pjit
def dequantize_q5_1(blocks, out):
    """blocks (nb, 24) uint8 -> out (nb*32,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # 32
    half = qk // 2
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 0)
        m = _f16_at(b, 2)
        qh = np.uint32(b[4]) | (np.uint32(b[5]) << 8) | (np.uint32(b[6]) << 16) | (np.uint32(b[7]) << 24)
        qs = b[8:8 + half]
        for j in range(half):
            q = np.int32(qs[j])
            h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
            h1 = np.int32((qh >> np.uint32(j + half)) & np.uint32(1)) << 4
            y[j] = d * np.float32((q & 0x0F) | h0) + m
            y[j + half] = d * np.float32((q >> 4) | h1) + m


@pjit
def dequantize_q8_0(blocks, out):
    """blocks (nb, 34) uint8 -> out (nb*32,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # 32
    blocks_i8 = blocks.view(np.int8)
    for i in prange(nb):
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(blocks[i], 0)
        qs = blocks_i8[i, 2:2 + qk]
        for j in range(qk):
            y[j] = d * np.float32(qs[j])


@pjit
def dequantize_q2_k(blocks, out):
    """blocks (nb, 84) uint8 -> out (nb*256,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # QK_K
    n16 = qk // 16
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        scales = b[0:16]
        qs = b[16:80]
        d = _f16_at(b, 80)
        dmin = _f16_at(b, 82)
        for s in range(16):  # sub-block of 16: element 128*h + 32*j + 16*(s % 2) + l
            sc = np.int32(scales[s])
            dl = d * np.float32(sc & 0x0F)
            ml = dmin * np.float32(sc >> 4)
            lo = 32 * (s // 8) + 16 * (s % 2)
            shift = 2 * ((s % 8) // 2)
            q = qs[lo:lo + n16]
            ys = y[n16 * s:n16 * (s + 1)]
            for l in range(n16):
                ys[l] = dl * np.float32((np.int32(q[l]) >> shift) & 3) - ml


@pjit
def dequantize_q3_k(blocks, out):
    """blocks (nb, 110) uint8 -> out (nb*256,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # QK_K
    n16 = qk // 16
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        qs = b[32:96]
        scales = b[96:108]
        d = _f16_at(b, 108)
        for s in range(16):
            low4 = (np.int32(scales[s % 8]) >> (4 * (s // 8))) & 0x0F
            high2 = (np.int32(scales[8 + s % 4]) >> (2 * (s // 4))) & 3
            dl = d * np.float32((low4 | (high2 << 4)) - 32)
            h = s // 8
            j = (s % 8) // 2
            l0 = 16 * (s % 2)
            q = qs[32 * h + l0:32 * h + l0 + n16]
            hm = b[l0:l0 + n16]  # hmask
            ys = y[n16 * s:n16 * (s + 1)]
            for l in range(n16):
                low = (np.int32(q[l]) >> (2 * j)) & 3
                hbit = (np.int32(hm[l]) >> (4 * h + j)) & 1
                ys[l] = dl * np.float32(low - 4 + 4 * hbit)


@jit
def _scale_min_k4(scales, s):
    """(sc, m) 6-bit pair of sub-block s of Q4_K/Q5_K (see get_scale_min_k4 in realm/quants.py)."""
    if s < 4:
        return np.int32(scales[s]) & 63, np.int32(scales[s + 4]) & 63
    sc = (np.int32(scales[s + 4]) & 0x0F) | ((np.int32(scales[s - 4]) >> 6) << 4)
    m = (np.int32(scales[s + 4]) >> 4) | ((np.int32(scales[s]) >> 6) << 4)
    return sc, m


@pjit
def dequantize_q4_k(blocks, out):
    """blocks (nb, 144) uint8 -> out (nb*256,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # QK_K
    n32 = qk // 8
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 0)
        dmin = _f16_at(b, 2)
        scales = b[4:16]
        for c in range(4):  # 32 bytes of qs -> 64 elements (two sub-blocks)
            q = b[16 + 32 * c:16 + 32 * c + n32]
            sc1, m1 = _scale_min_k4(scales, 2 * c)
            sc2, m2 = _scale_min_k4(scales, 2 * c + 1)
            d1 = d * np.float32(sc1)
            dm1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            dm2 = dmin * np.float32(m2)
            y1 = y[64 * c:64 * c + n32]
            y2 = y[64 * c + 32:64 * c + 32 + n32]
            for l in range(n32):
                v = np.int32(q[l])
                y1[l] = d1 * np.float32(v & 0x0F) - dm1
                y2[l] = d2 * np.float32(v >> 4) - dm2


@pjit
def dequantize_q5_k(blocks, out):
    """blocks (nb, 176) uint8 -> out (nb*256,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # QK_K
    n32 = qk // 8
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 0)
        dmin = _f16_at(b, 2)
        scales = b[4:16]
        qh = b[16:16 + n32]
        for c in range(4):
            q = b[48 + 32 * c:48 + 32 * c + n32]
            sc1, m1 = _scale_min_k4(scales, 2 * c)
            sc2, m2 = _scale_min_k4(scales, 2 * c + 1)
            d1 = d * np.float32(sc1)
            dm1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            dm2 = dmin * np.float32(m2)
            y1 = y[64 * c:64 * c + n32]
            y2 = y[64 * c + 32:64 * c + 32 + n32]
            for l in range(n32):
                v = np.int32(q[l])
                h = np.int32(qh[l])
                y1[l] = d1 * np.float32((v & 0x0F) | (((h >> (2 * c)) & 1) << 4)) - dm1
                y2[l] = d2 * np.float32((v >> 4) | (((h >> (2 * c + 1)) & 1) << 4)) - dm2


@pjit
def dequantize_q6_k(blocks, out):
    """blocks (nb, 210) uint8 -> out (nb*256,) float32 (Q6_K stores d last)."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # QK_K
    n16 = qk // 16
    for i in prange(nb):
        b = blocks[i]
        y = out[i * qk:(i + 1) * qk]
        d = _f16_at(b, 208)
        for h in range(2):  # halves of 128 elements: element 128*h + 32*k + l
            for k in range(4):
                shift_l = 4 * (k // 2)
                shift_h = 2 * k
                for part in range(2):  # l in [0, 16) and [16, 32): one scale each
                    lo = 16 * part
                    ql = b[64 * h + 32 * (k % 2) + lo:64 * h + 32 * (k % 2) + lo + n16]
                    qh = b[128 + 32 * h + lo:128 + 32 * h + lo + n16]
                    dl = d * np.float32(_i8(b[192 + 8 * h + 2 * k + part]))
                    ys = y[128 * h + 32 * k + lo:128 * h + 32 * k + lo + n16]
                    for l in range(n16):
                        low = (np.int32(ql[l]) >> shift_l) & 0x0F
                        high = (np.int32(qh[l]) >> shift_h) & 3
                        ys[l] = dl * np.float32((low | (high << 4)) - 32)


@pjit
def dequantize_q8_k(blocks, out):
    """blocks (nb, 292) uint8 -> out (nb*256,) float32."""
    nb = blocks.shape[0]
    if nb == 0:
        return
    qk = out.shape[0] // nb  # QK_K
    blocks_i8 = blocks.view(np.int8)
    for i in prange(nb):
        y = out[i * qk:(i + 1) * qk]
        d = _f32_at(blocks[i], 0)
        qs = blocks_i8[i, 4:4 + qk]
        for j in range(qk):
            y[j] = d * np.float32(qs[j])


# ---------------------------------------------------------------------------------------------
# Python driver: validate, then dispatch by GGMLType
# ---------------------------------------------------------------------------------------------

_BLOCK_KERNELS = {
    GGMLType.Q4_0: dequantize_q4_0,
    GGMLType.Q4_1: dequantize_q4_1,
    GGMLType.Q5_0: dequantize_q5_0,
    GGMLType.Q5_1: dequantize_q5_1,
    GGMLType.Q8_0: dequantize_q8_0,
    GGMLType.Q2_K: dequantize_q2_k,
    GGMLType.Q3_K: dequantize_q3_k,
    GGMLType.Q4_K: dequantize_q4_k,
    GGMLType.Q5_K: dequantize_q5_k,
    GGMLType.Q6_K: dequantize_q6_k,
    GGMLType.Q8_K: dequantize_q8_k,
}


def _run_f32(buf: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, buf.view("<f4"))


def _run_f16(buf: np.ndarray, out: np.ndarray) -> None:
    dequantize_f16(buf.view("<u2"), out.view(np.uint32))


def _run_bf16(buf: np.ndarray, out: np.ndarray) -> None:
    dequantize_bf16(buf.view("<u2"), out.view(np.uint32))


_FLOAT_RUNNERS = {GGMLType.F32: _run_f32, GGMLType.F16: _run_f16, GGMLType.BF16: _run_bf16}


def dequantize(data, ggml_type: GGMLType, n_elements: int | None = None, out: np.ndarray | None = None,
               *, tensor: str | None = None) -> np.ndarray:
    """Dequantize raw GGML blocks to float32 (Numba), bit-exact with `realm.quants.dequantize_ref`.

    Parameters
    ----------
    data : bytes-like or C-contiguous ndarray
        Whole blocks of `ggml_type` in file layout (e.g. `GGUFFile.tensor_bytes(name)`, read-only is fine).
    ggml_type : GGMLType
    n_elements : int, optional
        Expected element count; checked against the byte length.
    out : np.ndarray, optional
        float32 (n_elements,) C-contiguous, writable; filled and returned.
    tensor : str, optional
        Tensor name for error messages.

    Returns
    -------
    np.ndarray
        float32 (n_elements,).

    Raises
    ------
    UnsupportedError
        `ggml_type` has no kernel (IQ*, TQ*, MXFP4, unknown ids).
    KernelArgumentError (a RealmError and a ValueError)
        The byte length is not a whole number of blocks or disagrees with `n_elements`, or `out`
        has the wrong size, dtype or layout.
    """
    t = require_supported(ggml_type, tensor if tensor is not None else "?")
    layout = LAYOUTS[t]
    buf = as_bytes(data)
    if buf.flags.writeable:  # one compiled variant per kernel: weights are read-only mmap views anyway
        buf = buf.view()
        buf.flags.writeable = False
    where = f"tensor {tensor!r}: " if tensor is not None else ""
    if buf.size % layout.type_size:
        raise KernelArgumentError(f"{where}{buf.size} bytes is not a whole number of {t.name} blocks "
                         f"of {layout.type_size} bytes")
    nb = buf.size // layout.type_size
    n = nb * layout.block_size
    if n_elements is not None and n_elements != n:
        raise KernelArgumentError(f"{where}{buf.size} bytes of {t.name} hold {n} elements, expected {n_elements}")
    if out is None:
        out = np.empty(n, dtype=np.float32)  # (n_elements,)
    elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 1:
        raise KernelArgumentError(f"{where}out must be a 1-D float32 ndarray")
    elif out.shape[0] != n or not out.flags.c_contiguous or not out.flags.writeable:
        raise KernelArgumentError(f"{where}out must be a writable C-contiguous float32 array of {n} elements, "
                         f"got shape {out.shape}")
    if nb == 0:
        return out
    runner = _FLOAT_RUNNERS.get(t)
    if runner is not None:
        runner(buf, out)
    else:
        _BLOCK_KERNELS[t](buf.reshape(nb, layout.type_size), out)
    return out
