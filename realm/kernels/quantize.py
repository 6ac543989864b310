"""Activation quantizers: float32 vectors -> ggml's Q8_0 / Q8_K, for the fused integer matvecs.

Bit-exact with ggml's reference quantizers `quantize_row_q8_0_ref` and `quantize_row_q8_K_ref`
(https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-quants.c):
- Q8_0, per 32 values: d = amax / 127 (float32), id = 1/d (0 when d == 0, from the *unrounded* d),
  qs = roundf(x * id) (half away from zero), d stored as f16 (nearest even).
- Q8_K, per 256 values: max = the first value with the largest |x|; iscale = -127 / max;
  qs = min(127, nearest_int(iscale * x)) (half to even, ggml's 1.5 * 2^23 trick);
  bsums[k] = sum of qs[16k : 16k + 16]; d = 1 / iscale (float32). An all-zero block gives d = 0,
  qs = 0 and bsums = 0 (ggml leaves its bsums unwritten there).
`quantize_row_q8_0` / `quantize_row_q8_k` are plain jitted kernels (callable from other Numba code);
the `quantize_*` functions validate and allocate.
"""

from __future__ import annotations

import math

import numpy as np

from realm.errors import KernelArgumentError
from realm.kernels._jit import jit
from realm.kernels.dequant import f16_to_f32, f32_to_f16
from realm.quants import QK_K

QK8_0 = 32

_F32_127 = np.float32(127.0)
_F32_M127 = np.float32(-127.0)
_F32_ONE = np.float32(1.0)
_F32_ZERO = np.float32(0.0)
_NEAREST_INT_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer, ties to even


@jit
def _roundf(v):
    """C `roundf` of a float32 (half away from zero) as int; exact since |v| < 2^23 here."""
    r = math.floor(np.float64(abs(v)) + 0.5)
    return -r if v < 0 else r


@jit
def _nearest_int(v):
    """ggml's `nearest_int`: float32 -> int, ties to even, via float32 addition of 1.5 * 2^23."""
    return np.int64(v + _NEAREST_INT_MAGIC) - 12582912


@jit
def quantize_row_q8_0(x, qs_out, d_out):
    """x (n,) float32 -> qs_out (n,) int8, d_out (n/32,) float32 (the f16-rounded scale ggml stores)."""
    for i in range(x.shape[0] // QK8_0):
        xb = x[i * QK8_0:(i + 1) * QK8_0]
        qs = qs_out[i * QK8_0:(i + 1) * QK8_0]
        amax = _F32_ZERO
        for j in range(QK8_0):
            a = abs(xb[j])
            if a > amax:
                amax = a
        d = amax / _F32_127
        inv_d = _F32_ONE / d if d != _F32_ZERO else _F32_ZERO
        d_out[i] = f16_to_f32(f32_to_f16(d))
        for j in range(QK8_0):
            qs[j] = _roundf(xb[j] * inv_d)


@jit
def quantize_row_q8_k(x, qs_out, d_out, bsums_out):
    """x (n,) float32 -> qs_out (n,) int8, d_out (n/256,) float32, bsums_out (n/16,) int16 or int32."""
    for i in range(x.shape[0] // QK_K):
        xb = x[i * QK_K:(i + 1) * QK_K]
        qs = qs_out[i * QK_K:(i + 1) * QK_K]
        bsums = bsums_out[i * 16:(i + 1) * 16]
        amax = _F32_ZERO
        vmax = _F32_ZERO
        for j in range(QK_K):
            a = abs(xb[j])
            if a > amax:
                amax = a
                vmax = xb[j]
        if amax == _F32_ZERO:
            d_out[i] = _F32_ZERO
            for j in range(QK_K):
                qs[j] = 0
            for k in range(16):
                bsums[k] = 0
            continue
        iscale = _F32_M127 / vmax
        for j in range(QK_K):
            qs[j] = min(127, _nearest_int(iscale * xb[j]))
        for k in range(16):
            s = 0
            for j in range(16 * k, 16 * k + 16):
                s += np.int64(qs[j])
            bsums[k] = s
        d_out[i] = _F32_ONE / iscale


def _check_x(x, block: int, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1 or x.shape[0] % block:
        raise KernelArgumentError(f"{name}: x must be 1-D with a multiple of {block} elements, got shape {x.shape}")
    return x


def _check_out(a, n: int, dtypes: tuple, what: str) -> None:
    if not isinstance(a, np.ndarray) or a.dtype not in dtypes or a.ndim != 1 or a.shape[0] != n \
            or not a.flags.c_contiguous or not a.flags.writeable:
        want = "/".join(np.dtype(d).name for d in dtypes)
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise KernelArgumentError(f"{what} must be a writable C-contiguous 1-D {want} array of {n}, got {got}")


def quantize_q8_0_split(x, qs_out: np.ndarray, d_out: np.ndarray) -> None:
    """Quantize x (n,) to Q8_0 as separate arrays: qs_out (n,) int8 and d_out (n/32,) float32.

    `d_out` holds the f16-rounded scales (what the packed block stores, as float32).
    """
    x = _check_x(x, QK8_0, "quantize_q8_0_split")
    _check_out(qs_out, x.shape[0], (np.int8,), "qs_out")
    _check_out(d_out, x.shape[0] // QK8_0, (np.float32,), "d_out")
    quantize_row_q8_0(x, qs_out, d_out)


def quantize_q8_k_split(x, qs_out: np.ndarray, d_out: np.ndarray, bsums_out: np.ndarray) -> None:
    """Quantize x (n,) to Q8_K as separate arrays: qs_out (n,) int8, d_out (n/256,) float32,
    bsums_out (n/16,) int16 or int32."""
    x = _check_x(x, QK_K, "quantize_q8_k_split")
    n = x.shape[0]
    _check_out(qs_out, n, (np.int8,), "qs_out")
    _check_out(d_out, n // QK_K, (np.float32,), "d_out")
    _check_out(bsums_out, n // 16, (np.int16, np.int32), "bsums_out")
    quantize_row_q8_k(x, qs_out, d_out, bsums_out)


def quantize_q8_0(x) -> np.ndarray:
    """Quantize x (n,) float32 (n a multiple of 32) to packed Q8_0 blocks: uint8 (n/32*34,).

    Bytes equal ggml's `quantize_row_q8_0_ref` (and gguf-py's `quantize(x, Q8_0)`).
    """
    x = _check_x(x, QK8_0, "quantize_q8_0")
    nb = x.shape[0] // QK8_0
    qs = np.empty(x.shape[0], dtype=np.int8)  # (n,)
    d = np.empty(nb, dtype=np.float32)  # (nb,)
    quantize_row_q8_0(x, qs, d)
    blocks = np.empty((nb, 2 + QK8_0), dtype=np.uint8)  # (nb, 34): d f16 | qs int8[32]
    blocks[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(nb, 2)  # exact: d is f16-valued
    blocks[:, 2:] = qs.view(np.uint8).reshape(nb, QK8_0)
    return blocks.reshape(-1)


def quantize_q8_k(x) -> np.ndarray:
    """Quantize x (n,) float32 (n a multiple of 256) to packed Q8_K blocks: uint8 (n/256*292,).

    Bytes equal ggml's `quantize_row_q8_K_ref` (bsums are 0 in all-zero blocks).
    """
    x = _check_x(x, QK_K, "quantize_q8_k")
    nb = x.shape[0] // QK_K
    qs = np.empty(x.shape[0], dtype=np.int8)  # (n,)
    d = np.empty(nb, dtype=np.float32)  # (nb,)
    bsums = np.empty(x.shape[0] // 16, dtype=np.int16)  # (n/16,)
    quantize_row_q8_k(x, qs, d, bsums)
    blocks = np.empty((nb, 4 + QK_K + 32), dtype=np.uint8)  # (nb, 292): d f32 | qs int8[256] | bsums i16[16]
    blocks[:, 0:4] = d.astype("<f4").view(np.uint8).reshape(nb, 4)
    blocks[:, 4:4 + QK_K] = qs.view(np.uint8).reshape(nb, QK_K)
    blocks[:, 4 + QK_K:] = bsums.astype("<i2").view(np.uint8).reshape(nb, 32)
    return blocks.reshape(-1)
