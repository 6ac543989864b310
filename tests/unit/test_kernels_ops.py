"""realm.kernels.ops: every Numba kernel against its NumPy twin (and the twins against first principles)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from realm.kernels import ops

RTOL = 1e-5
ATOL = 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("n,dim", [(1, 8), (3, 64), (5, 256)])
def test_rmsnorm(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32) * 3  # (n, dim)
    w = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)  # (dim,)
    out = np.empty_like(x)
    ops.rmsnorm(x, w, 1e-6, out)
    np.testing.assert_allclose(out, ops.rmsnorm_ref(x, w, 1e-6), rtol=RTOL, atol=ATOL)
    # first principles: unit RMS before the weight
    np.testing.assert_allclose(np.sqrt(np.mean((out / w) ** 2, axis=1)), 1.0, rtol=1e-4)


def test_rmsnorm_in_place_and_strided_heads(rng):
    q = rng.standard_normal((2, 4 * 16)).astype(np.float32)  # (T, n_heads * head_dim)
    w = rng.standard_normal(16).astype(np.float32)  # (head_dim,)
    heads = q.reshape(8, 16)
    expect = ops.rmsnorm_ref(heads, w, 1e-5)
    ops.rmsnorm(heads, w, 1e-5, heads)
    np.testing.assert_allclose(q.reshape(8, 16), expect, rtol=RTOL, atol=ATOL)


def test_add_rmsnorm(rng):
    x = rng.standard_normal((3, 32)).astype(np.float32)  # (n, dim)
    y = rng.standard_normal((3, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    expect_x = x + y
    out = np.empty_like(x)
    ops.add_rmsnorm(x, y, w, 1e-6, out)
    np.testing.assert_allclose(x, expect_x, rtol=1e-6)
    np.testing.assert_allclose(out, ops.rmsnorm_ref(expect_x, w, 1e-6), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("base,scale,rope_dim", [(10000.0, 1.0, 16), (1e6, 0.125, 64), (10000.0, 1.0, 8)])
def test_rope_cos_sin(base, scale, rope_dim):
    pos = np.array([0, 1, 7, 511, 2047], np.int64)  # (T,)
    cos = np.empty((5, rope_dim // 2), np.float32)  # (T, rope_dim/2)
    sin = np.empty_like(cos)
    ops.rope_cos_sin(pos, base, scale, rope_dim, np.ones(rope_dim // 2, np.float32), 1.0, cos, sin)
    c_ref, s_ref = ops.rope_cos_sin_ref(pos, base, scale, rope_dim)
    np.testing.assert_allclose(cos, c_ref, atol=1e-6)
    np.testing.assert_allclose(sin, s_ref, atol=1e-6)
    # first principles: pair i=1 at position 7
    theta = 7 * scale * base ** (-2.0 / rope_dim)
    assert math.isclose(cos[2, 1], math.cos(theta), abs_tol=1e-6)


@pytest.mark.parametrize("style", [ops.ROPE_NORM, ops.ROPE_NEOX])
@pytest.mark.parametrize("rope_dim", [16, 8])
def test_rope(rng, style, rope_dim):
    T, n_heads, head_dim = 3, 4, 16
    x = rng.standard_normal((T, n_heads, head_dim)).astype(np.float32)  # (T, n_heads, head_dim)
    pos = np.array([0, 5, 100], np.int64)
    cos, sin = ops.rope_cos_sin_ref(pos, 10000.0, 1.0, rope_dim)
    expect = ops.rope_ref(x, cos, sin, style)
    ops.rope(x, cos, sin, style)
    np.testing.assert_allclose(x, expect, rtol=RTOL, atol=ATOL)
    assert np.array_equal(x[0], expect[0])  # position 0 is the identity
    np.testing.assert_array_equal(x[:, :, rope_dim:], expect[:, :, rope_dim:])  # unrotated tail kept


def test_rope_ref_pairs():
    """First principles: NORM rotates (0,1), NEOX rotates (0, half) — a unit vector on dim 0 moves there."""
    x = np.zeros((1, 1, 8), np.float32)  # (T, n_heads, head_dim)
    x[0, 0, 0] = 1
    cos, sin = ops.rope_cos_sin_ref(np.array([1]), 10000.0, 1.0, 8)
    norm = ops.rope_ref(x, cos, sin, ops.ROPE_NORM)[0, 0]
    neox = ops.rope_ref(x, cos, sin, ops.ROPE_NEOX)[0, 0]
    assert norm[1] == pytest.approx(math.sin(1.0)) and norm[4] == 0
    assert neox[4] == pytest.approx(math.sin(1.0)) and neox[1] == 0


def test_softmax(rng):
    x = (rng.standard_normal(37) * 10).astype(np.float32)  # (n,)
    expect = ops.softmax_ref(x)
    ops.softmax(x)
    np.testing.assert_allclose(x, expect, rtol=1e-5, atol=1e-7)
    assert x.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 2), (4, 1), (2, 2)])
@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("pos0,T", [(0, 1), (0, 6), (5, 1), (4, 3)])
def test_attention(rng, n_heads, n_kv_heads, window, pos0, T):
    head_dim, n_ctx = 16, 16
    q = rng.standard_normal((T, n_heads, head_dim)).astype(np.float32)  # (T, n_heads, head_dim)
    key_cache = rng.standard_normal((n_kv_heads, n_ctx, head_dim)).astype(np.float32)  # (n_kv, n_ctx, hd)
    value_cache = rng.standard_normal((n_kv_heads, n_ctx, head_dim)).astype(np.float32)
    att = np.empty((n_heads, n_ctx), np.float32)  # (n_heads, n_ctx)
    out = np.empty_like(q)
    expect = ops.attention_ref(q, key_cache, value_cache, pos0, 0.25, window)
    ops.attention(q, key_cache, value_cache, pos0, 0.25, window, att, out)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    out_parallel = np.empty_like(q)
    ops.attention_parallel(q, key_cache, value_cache, pos0, 0.25, window, att, out_parallel)
    np.testing.assert_allclose(out_parallel, expect, rtol=1e-4, atol=1e-5)


def test_attention_ref_window_first_principles():
    """With window 1 each query sees only its own position, so the output is that value row."""
    T, head_dim = 4, 8
    rng = np.random.default_rng(0)
    q = rng.standard_normal((T, 1, head_dim)).astype(np.float32)
    kc = rng.standard_normal((1, T, head_dim)).astype(np.float32)
    vc = rng.standard_normal((1, T, head_dim)).astype(np.float32)
    np.testing.assert_allclose(ops.attention_ref(q, kc, vc, 0, 1.0, 1)[:, 0], vc[0], rtol=1e-6)
    # position 0 sees only key 0 whatever the window
    np.testing.assert_allclose(ops.attention_ref(q, kc, vc, 0, 1.0, 0)[0, 0], vc[0, 0], rtol=1e-6)


@pytest.mark.parametrize("activation", [ops.ACT_SILU, ops.ACT_GELU_TANH])
def test_gated_act(rng, activation):
    gate = (rng.standard_normal(300) * 4).astype(np.float32)  # (n,)
    up = rng.standard_normal(300).astype(np.float32)
    out = np.empty_like(gate)
    ops.gated_act(gate, up, activation, out)
    np.testing.assert_allclose(out, ops.gated_act_ref(gate, up, activation), rtol=1e-5, atol=1e-6)


def test_gated_act_ref_values():
    g = np.array([0.0, 1.0, -2.0], np.float32)
    one = np.ones(3, np.float32)
    silu = ops.gated_act_ref(g, one, ops.ACT_SILU)
    np.testing.assert_allclose(silu, [0.0, 1 / (1 + math.exp(-1)), -2 / (1 + math.exp(2))], rtol=1e-6)
    gelu = ops.gated_act_ref(g, one, ops.ACT_GELU_TANH)
    assert gelu[1] == pytest.approx(0.841192, abs=1e-5)  # GELU-tanh(1)


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("style", [ops.ROPE_NORM, ops.ROPE_NEOX])
def test_qk_rope_store(rng, qk_norm, style):
    T, n_heads, n_kv, head_dim, n_ctx, pos0 = 3, 4, 2, 16, 10, 4
    q = rng.standard_normal((T, n_heads, head_dim)).astype(np.float32)  # (T, n_heads, hd)
    k = rng.standard_normal((T, n_kv, head_dim)).astype(np.float32)  # (T, n_kv, hd)
    v = rng.standard_normal((T, n_kv, head_dim)).astype(np.float32)
    q_norm = rng.standard_normal(head_dim).astype(np.float32)  # (hd,)
    k_norm = rng.standard_normal(head_dim).astype(np.float32)
    cos, sin = ops.rope_cos_sin_ref(np.arange(pos0, pos0 + T), 1e6, 1.0, 12)
    kc_ref = rng.standard_normal((n_kv, n_ctx, head_dim)).astype(np.float32)  # (n_kv, n_ctx, hd)
    vc_ref = rng.standard_normal((n_kv, n_ctx, head_dim)).astype(np.float32)
    kc, vc = kc_ref.copy(), vc_ref.copy()
    q_ref, k_ref = ops.qk_rope_store_ref(q, k, v, q_norm, k_norm, qk_norm, 1e-6, cos, sin, style, kc_ref, vc_ref, pos0)
    ops.qk_rope_store(q, k, v, q_norm, k_norm, qk_norm, 1e-6, cos, sin, style, kc, vc, pos0)
    np.testing.assert_allclose(q, q_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(k, k_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(kc, kc_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(vc, vc_ref)
    np.testing.assert_array_equal(vc[:, pos0:pos0 + T], v.transpose(1, 0, 2))


@pytest.mark.parametrize("has_post", [False, True])
def test_residual_norm(rng, has_post):
    x = rng.standard_normal((2, 32)).astype(np.float32)  # (n, dim)
    y = rng.standard_normal((2, 32)).astype(np.float32)
    post_w = rng.standard_normal(32).astype(np.float32)  # (dim,)
    next_w = rng.standard_normal(32).astype(np.float32)
    x_ref, xb_ref = ops.residual_norm_ref(x, y, post_w, has_post, next_w, 1e-6)
    xb = np.empty_like(x)
    ops.residual_norm(x, y, post_w, has_post, next_w, 1e-6, xb)
    np.testing.assert_allclose(x, x_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(xb, xb_ref, rtol=1e-4, atol=1e-5)
