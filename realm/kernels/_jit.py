"""The one place that holds Numba's options for every realm kernel.

    from realm.kernels._jit import jit, pjit, prange

    @jit                      # serial kernel
    def f(a, out): ...

    @pjit                     # parallel kernel: use prange over blocks / row chunks
    def g(a, out):
        for i in prange(n): ...

    @jit(fastmath=True)       # per-kernel overrides, only where a test shows results still match

Options: `cache=True` (compiled code cached next to the sources), `nogil=True` (kernels release
the GIL so host threads run in parallel), `fastmath=False`, `error_model="numpy"` (no
ZeroDivisionError checks in hot loops), `boundscheck=False` (wrappers validate lengths).
No eager signatures: weights are read-only memmaps, and lazy compilation accepts both.
`NUMBA_DISABLE_JIT=1` turns every decorator into the plain Python function (and `prange` into
`range`), so the tests still run, slowly.
"""

from __future__ import annotations

import os

# Numba's OpenMP workers spin after every parallel region by default; on a shared machine the spinning
# steals the cores the main thread needs between regions (2-thread decode of the default model measured
# 345-589 ms/token spinning vs ~100 ms sleeping, under load). Must be set before the first parallel
# launch loads libgomp; a user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

JIT_OPTIONS: dict = {
    "cache": True,
    "nogil": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
}

prange = numba.prange


def _decorator(base: dict, fn=None, **overrides):
    options = {**base, **overrides}
    if fn is not None:
        return numba.njit(**options)(fn)
    return numba.njit(**options)


def jit(fn=None, **overrides):
    """`numba.njit` with realm's options; use bare (`@jit`) or with overrides (`@jit(fastmath=True)`)."""
    return _decorator(JIT_OPTIONS, fn, **overrides)


def pjit(fn=None, **overrides):
    """Like `jit` with `parallel=True`, for kernels that use `prange`."""
    return _decorator({**JIT_OPTIONS, "parallel": True}, fn, **overrides)


def jit_disabled() -> bool:
    """True when `NUMBA_DISABLE_JIT=1`: kernels run as plain Python (for tests and debugging only)."""
    return bool(numba.config.DISABLE_JIT)
