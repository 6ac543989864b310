"""Numba kernels: dequantization, activation quantization (and, beside them, matvecs and ops).

    from realm.kernels import dequantize, quantize_q8_0, quantize_q8_k, warmup
    y = dequantize(gguf_file.tensor_bytes("token_embd.weight"), GGMLType.Q6_K)  # float32 (n_elements,)

Kernel options live in `realm.kernels._jit`; NumPy twins in `realm.quants` (dequantize_ref) and the
tests. Imports stay light: nothing from gguf, engines or host.
"""

from __future__ import annotations

import time

import numpy as np

from realm.kernels.dequant import dequantize
from realm.kernels.quantize import quantize_q8_0, quantize_q8_0_split, quantize_q8_k, quantize_q8_k_split
from realm.quants import LAYOUTS, SUPPORTED

__all__ = ["dequantize", "quantize_q8_0", "quantize_q8_k", "quantize_q8_0_split", "quantize_q8_k_split",
           "warmup"]


def warmup() -> float:
    """Compile (or load from Numba's cache) every dequant and quant kernel on tiny inputs.

    Returns the seconds it took, so benchmarks can report compile time apart from steady state.
    """
    t0 = time.perf_counter()
    for t in sorted(SUPPORTED):
        blocks = np.zeros(LAYOUTS[t].type_size, dtype=np.uint8)  # (type_size,): one block
        blocks.setflags(write=False)  # weights arrive as read-only mmap views: compile that variant
        dequantize(blocks, t)
    x = np.linspace(-1.0, 1.0, 256, dtype=np.float32)  # (256,)
    quantize_q8_0(x)
    quantize_q8_k(x)
    quantize_q8_k_split(x, np.empty(256, np.int8), np.empty(1, np.float32), np.empty(16, np.int32))
    return time.perf_counter() - t0
