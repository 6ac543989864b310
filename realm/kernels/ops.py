"""Numba kernels of the forward pass besides the matvecs: RMSNorm, RoPE, attention, softmax, gated FFN.

Each kernel writes into caller-allocated arrays and has a NumPy twin (`*_ref`) it is tested against
(tests/unit/test_kernels_ops.py). The facts (RoPE pairing, sliding window, GELU-tanh) are the ones in
realm.config and llama.cpp (https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-cpu/ops.cpp).
"""

from __future__ import annotations

import math

import numpy as np

from realm.config import ACT_GELU_TANH, ACT_SILU, ROPE_NEOX, ROPE_NORM  # noqa: F401 (re-exported)
from realm.kernels._jit import jit, pjit, prange
GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.7978845608028654


# --- RMSNorm ---------------------------------------------------------------------------------------

@jit(fastmath=True)
def rmsnorm(x, w, eps, out):
    """x (n, dim) f32, w (dim,) f32 -> out (n, dim) = x / sqrt(mean(x^2) + eps) * w (out may be x)."""
    n, dim = x.shape
    for r in range(n):
        row = x[r]
        ss = 0.0
        for i in range(dim):
            ss += row[i] * row[i]
        inv = np.float32(1.0 / math.sqrt(ss / dim + eps))
        o = out[r]
        for i in range(dim):
            o[i] = row[i] * inv * w[i]
    return out


def rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)  # (n, dim)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w).astype(np.float32)


@jit
def add_rmsnorm(x, y, w, eps, out):
    """Residual add then norm: x (n, dim) += y (n, dim); out (n, dim) = rmsnorm(x, w)."""
    n, dim = x.shape
    for r in range(n):
        xr = x[r]
        yr = y[r]
        for i in range(dim):
            xr[i] += yr[i]
    return rmsnorm(x, w, eps, out)


@jit
def residual_norm(x, y, post_w, has_post, next_w, eps, xb):
    """End of a block: y (n, dim) = rmsnorm(y, post_w) if has_post; x (n, dim) += y; xb = rmsnorm(x, next_w)."""
    if has_post:
        rmsnorm(y, post_w, eps, y)
    return add_rmsnorm(x, y, next_w, eps, xb)


def residual_norm_ref(x, y, post_w, has_post, next_w, eps):
    """NumPy twin of `residual_norm`: returns (new x, xb)."""
    if has_post:
        y = rmsnorm_ref(y, post_w, eps)
    x = x + y  # (n, dim)
    return x, rmsnorm_ref(x, next_w, eps)


# --- RoPE -------------------------------------------------------------------------------------------

@jit
def rope_cos_sin(positions, base, scale, rope_dim, factors, mscale, cos, sin):
    """positions (T,) int64 -> cos, sin (T, rope_dim/2) f32 of angle (pos*scale) * base^(-2i/rope_dim) / factors[i],
    both multiplied by mscale (ggml_rope_ext's freq_factors and attn_factor; factors all ones: none)."""
    half = rope_dim // 2
    for i in range(half):
        freq = base ** (-2.0 * i / rope_dim) / factors[i]
        for t in range(positions.shape[0]):
            theta = positions[t] * scale * freq
            cos[t, i] = math.cos(theta) * mscale
            sin[t, i] = math.sin(theta) * mscale


def rope_cos_sin_ref(positions: np.ndarray, base: float, scale: float, rope_dim: int, factors=None,
                     mscale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    freqs = base ** (-2.0 * np.arange(rope_dim // 2) / rope_dim)  # (rope_dim/2,) f64
    if factors is not None:
        freqs = freqs / np.asarray(factors, np.float64)
    theta = np.outer(np.asarray(positions, np.float64) * scale, freqs)  # (T, rope_dim/2)
    return (np.cos(theta) * mscale).astype(np.float32), (np.sin(theta) * mscale).astype(np.float32)


@jit
def rope(x, cos, sin, style):
    """Rotate x (T, n_heads, head_dim) f32 in place over the first 2*cos.shape[1] dims of each head.

    cos, sin (T, rope_dim/2); style ROPE_NORM rotates pairs (2i, 2i+1), ROPE_NEOX pairs (i, i + rope_dim/2).
    """
    T, n_heads, _ = x.shape
    half = cos.shape[1]
    for t in range(T):
        c = cos[t]
        s = sin[t]
        for h in range(n_heads):
            v = x[t, h]
            for i in range(half):
                if style == ROPE_NEOX:
                    a, b = i, i + half
                else:
                    a, b = 2 * i, 2 * i + 1
                x0 = v[a]
                x1 = v[b]
                v[a] = x0 * c[i] - x1 * s[i]
                v[b] = x0 * s[i] + x1 * c[i]
    return x


def rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: int) -> np.ndarray:
    """NumPy twin of `rope`, returns a new array."""
    out = x.copy()  # (T, n_heads, head_dim)
    half = cos.shape[1]
    if style == ROPE_NEOX:
        a, b = np.arange(half), np.arange(half) + half
    else:
        a, b = np.arange(half) * 2, np.arange(half) * 2 + 1
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, half)
    x0, x1 = x[:, :, a], x[:, :, b]  # (T, n_heads, half)
    out[:, :, a] = x0 * c - x1 * s
    out[:, :, b] = x0 * s + x1 * c
    return out


@jit
def qk_rope_store(q, k, v, q_norm, k_norm, qk_norm, eps, cos, sin, style, key_cache, value_cache, pos0):
    """Prepare one layer's new q, k, v (T, heads, head_dim), C-contiguous, in place, and cache k and v.

    If qk_norm: per-head RMSNorm of q with q_norm (head_dim,), of k with k_norm; then RoPE (cos, sin
    (T, rope_dim/2), style) on q and k; k and v are stored at positions pos0..pos0+T-1 of key_cache,
    value_cache (n_kv_heads, n_ctx, head_dim).
    """
    T, n_heads, head_dim = q.shape
    n_kv = k.shape[1]
    if qk_norm:  # per token: q[t] (n_heads, head_dim) is C-contiguous (no reshape: cheaper to compile)
        for t in range(T):
            rmsnorm(q[t], q_norm, eps, q[t])
            rmsnorm(k[t], k_norm, eps, k[t])
    rope(q, cos, sin, style)
    rope(k, cos, sin, style)
    for t in range(T):  # element loops: a slice assignment compiles Numba's shape-mismatch error path
        for h in range(n_kv):
            kd, vd, ks, vs = key_cache[h, pos0 + t], value_cache[h, pos0 + t], k[t, h], v[t, h]
            for i in range(head_dim):
                kd[i] = ks[i]
                vd[i] = vs[i]


def qk_rope_store_ref(q, k, v, q_norm, k_norm, qk_norm, eps, cos, sin, style, key_cache, value_cache, pos0):
    """NumPy twin of `qk_rope_store`: returns new (q, k) and writes the caches."""
    T, n_heads, head_dim = q.shape
    if qk_norm:
        q = rmsnorm_ref(q.reshape(-1, head_dim), q_norm, eps).reshape(q.shape)
        k = rmsnorm_ref(k.reshape(-1, head_dim), k_norm, eps).reshape(k.shape)
    q, k = rope_ref(q, cos, sin, style), rope_ref(k, cos, sin, style)
    key_cache[:, pos0:pos0 + T] = k.transpose(1, 0, 2)
    value_cache[:, pos0:pos0 + T] = v.transpose(1, 0, 2)
    return q, k


# --- softmax and attention ---------------------------------------------------------------------------

@jit
def softmax(x):
    """In place over x (n,) f32: exp(x - max) / sum."""
    m = x[0]
    for i in range(1, x.shape[0]):
        if x[i] > m:
            m = x[i]
    total = 0.0
    for i in range(x.shape[0]):
        e = math.exp(x[i] - m)
        x[i] = e
        total += e
    inv = np.float32(1.0 / total)
    for i in range(x.shape[0]):
        x[i] *= inv
    return x


def softmax_ref(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())  # (n,)
    return (e / e.sum()).astype(np.float32)


@jit(fastmath=True)
def _attend_head(q, keys, values, h, pos0, scale, window, a, out):
    """One head of `attention`: keys, values (n_ctx, head_dim) of its kv head; a (n_ctx,) scratch."""
    T = q.shape[0]
    head_dim = q.shape[2]
    for t in range(T):
        p = pos0 + t
        lo = 0
        if window > 0 and p - window + 1 > 0:
            lo = p - window + 1
        qv = q[t, h]
        m = np.float32(-np.inf)
        for j in range(lo, p + 1):
            kj = keys[j]
            s = np.float32(0.0)
            for i in range(head_dim):
                s += qv[i] * kj[i]
            s = s * np.float32(scale)
            a[j] = s
            m = max(m, s)
        total = np.float32(0.0)
        for j in range(lo, p + 1):
            e = np.float32(math.exp(a[j] - m))
            a[j] = e
            total += e
        o = out[t, h]
        o[:] = 0.0
        inv = np.float32(1.0) / total
        for j in range(lo, p + 1):
            wj = a[j] * inv
            vj = values[j]
            for i in range(head_dim):
                o[i] += wj * vj[i]


@jit
def attention(q, key_cache, value_cache, pos0, scale, window, att, out):
    """Causal attention of T new queries at positions pos0..pos0+T-1 over the cached keys (serial).

    q (T, n_heads, head_dim); key_cache, value_cache (n_kv_heads, n_ctx, head_dim) holding keys of
    positions 0..pos0+T-1; att (n_heads, n_ctx) scratch; out (T, n_heads, head_dim).
    Head h reads kv head h // (n_heads // n_kv_heads). Key j is visible from query p iff j <= p and,
    when window > 0, p - j < window.
    """
    n_heads = q.shape[1]
    group = n_heads // key_cache.shape[0]
    for h in range(n_heads):
        _attend_head(q, key_cache[h // group], value_cache[h // group], h, pos0, scale, window, att[h], out)
    return out


@pjit
def attention_parallel(q, key_cache, value_cache, pos0, scale, window, att, out):
    """`attention` with heads spread over threads (worth it for long contexts or prompts)."""
    n_heads = q.shape[1]
    group = n_heads // key_cache.shape[0]
    for h in prange(n_heads):
        _attend_head(q, key_cache[h // group], value_cache[h // group], h, pos0, scale, window, att[h], out)
    return out


def attention_ref(q: np.ndarray, key_cache: np.ndarray, value_cache: np.ndarray, pos0: int, scale: float,
                  window: int) -> np.ndarray:
    """NumPy twin of `attention`: returns out (T, n_heads, head_dim)."""
    T, n_heads, head_dim = q.shape
    group = n_heads // key_cache.shape[0]
    n_keys = pos0 + T
    p = pos0 + np.arange(T)[:, None]  # (T, 1)
    j = np.arange(n_keys)[None, :]  # (1, n_keys)
    visible = (j <= p) & ((window <= 0) | (p - j < window))  # (T, n_keys)
    out = np.empty_like(q)  # (T, n_heads, head_dim)
    for h in range(n_heads):
        keys = key_cache[h // group, :n_keys].astype(np.float64)  # (n_keys, head_dim)
        values = value_cache[h // group, :n_keys].astype(np.float64)
        scores = np.where(visible, q[:, h].astype(np.float64) @ keys.T * scale, -np.inf)  # (T, n_keys)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[:, h] = (scores / scores.sum(axis=1, keepdims=True)) @ values
    return out


# --- gated FFN activation ----------------------------------------------------------------------------

@jit
def gated_act(gate, up, activation, out):
    """gate, up, out (n,) f32: out = act(gate) * up, act SiLU or GELU-tanh (out may alias gate).

    GELU-tanh is computed as g * sigmoid(2u) with u = sqrt(2/pi)(g + 0.044715 g^3), which equals
    0.5 g (1 + tanh(u)) and is ~3x faster than calling tanh (no fastmath: exp may overflow to inf).
    """
    one = np.float32(1.0)
    for i in range(gate.shape[0]):
        g = gate[i]
        if activation == ACT_GELU_TANH:
            z = np.float32(2.0 * SQRT_2_OVER_PI) * (g + np.float32(GELU_COEF_A) * g * g * g)
        else:
            z = g
        out[i] = g * up[i] / (one + np.exp(-z))
    return out


def gated_act_ref(gate: np.ndarray, up: np.ndarray, activation: int) -> np.ndarray:
    g = gate.astype(np.float64)  # (n,)
    if activation == ACT_GELU_TANH:
        a = 0.5 * g * (1.0 + np.tanh(SQRT_2_OVER_PI * (g + GELU_COEF_A * g ** 3)))
    else:
        a = g / (1.0 + np.exp(-g))
    return (a * up).astype(np.float32)


def warmup() -> None:
    """Compile every kernel on tiny inputs (f32, the dtypes the engines pass)."""
    x = np.ones((2, 8), np.float32)  # (n, dim)
    w = np.ones(8, np.float32)  # (dim,)
    rmsnorm(x, w, 1e-6, x)
    add_rmsnorm(x, x.copy(), w, 1e-6, np.empty_like(x))
    pos = np.arange(2, dtype=np.int64)  # (T,)
    cos = np.empty((2, 4), np.float32)  # (T, rope_dim/2)
    sin = np.empty((2, 4), np.float32)
    rope_cos_sin(pos, 10000.0, 1.0, 8, np.ones(4, np.float32), 1.0, cos, sin)
    q = np.ones((2, 2, 8), np.float32)  # (T, n_heads, head_dim)
    rope(q, cos, sin, ROPE_NEOX)
    cache = np.ones((1, 4, 8), np.float32)  # (n_kv_heads, n_ctx, head_dim)
    att = np.empty((2, 4), np.float32)  # (n_heads, n_ctx)
    attention(q, cache, cache, 0, 0.5, 0, att, np.empty_like(q))
    attention_parallel(q, cache, cache, 0, 0.5, 0, att, np.empty_like(q))
    k = np.ones((2, 1, 8), np.float32)  # (T, n_kv_heads, head_dim)
    qk_rope_store(q, k, k.copy(), w, w, True, 1e-6, cos, sin, ROPE_NEOX, cache, cache.copy(), 0)
    residual_norm(x, x.copy(), w, True, w, 1e-6, np.empty_like(x))
    softmax(w)
    gated_act(w, w, ACT_SILU, np.empty_like(w))
