"""The NumPy f32 reference forward pass: slow, short and obviously correct — the spec the other engines match.

Every weight is dequantized once to f32 with `realm.quants.dequantize_ref`; the forward pass follows the
shared forward-pass facts (RMSNorm, RoPE NORM/NEOX, GQA attention with sliding window, gated FFN, tied
output; see realm/config.py). Architecture differences come only from `ModelConfig` fields.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from realm.config import ACT_GELU_TANH, ROPE_NEOX, ModelConfig
from realm.engines import DEFAULT_CTX
from realm.errors import RealmError
from realm.quants import dequantize_ref, require_supported


def check_ids(ids, vocab_size: int, n_past: int, n_ctx: int) -> np.ndarray:
    """Token ids as int64 (T,), or RealmError: empty, not integers, out of range, or overflowing n_ctx."""
    arr = np.asarray(ids)
    if arr.size == 0:
        raise RealmError("eval needs at least one token id")
    if arr.dtype.kind not in "iu":
        raise RealmError(f"token ids must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)  # (T,)
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        raise RealmError(f"token id {int(bad[0])} is out of range [0, {vocab_size})")
    if n_past + arr.size > n_ctx:
        raise RealmError(f"context overflow: {n_past} cached + {arr.size} new tokens > n_ctx {n_ctx}")
    return arr


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x (..., n) -> x / sqrt(mean(x^2) + eps) * w, over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, positions: np.ndarray, base: float, scale: float, rope_dim: int, style: int,
         factors: np.ndarray | None = None, mscale: float = 1.0) -> np.ndarray:
    """Rotate x (T, n_heads, head_dim) over the first rope_dim dims of each head; returns a new array.

    Pair i turns by pos * scale * base^(-2i/rope_dim) / factors[i]; cos and sin are multiplied by
    mscale (ggml_rope_ext's freq_factors and attn_factor without YaRN)."""
    half = rope_dim // 2
    freqs = base ** (-2.0 * np.arange(half) / rope_dim)  # (half,) f64
    if factors is not None:
        freqs = freqs / factors.astype(np.float64)
    theta = np.outer(positions * scale, freqs)  # (T, half) f64
    cos = (np.cos(theta) * mscale).astype(np.float32)[:, None, :]  # (T, 1, half)
    sin = (np.sin(theta) * mscale).astype(np.float32)[:, None, :]
    if style == ROPE_NEOX:
        a, b = np.arange(half), np.arange(half) + half  # pairs (i, i + half)
    else:
        a, b = 2 * np.arange(half), 2 * np.arange(half) + 1  # pairs (2i, 2i+1)
    out = x.copy()  # (T, n_heads, head_dim)
    out[:, :, a] = x[:, :, a] * cos - x[:, :, b] * sin
    out[:, :, b] = x[:, :, a] * sin + x[:, :, b] * cos
    return out


def linear(W: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    """x (T, cols) @ W[name.weight].T (+ W[name.bias] when the model has one) -> (T, rows)."""
    out = x @ W[name + ".weight"].T
    bias = W.get(name + ".bias")
    return out if bias is None else out + bias


def activation(g: np.ndarray, kind: int) -> np.ndarray:
    if kind == ACT_GELU_TANH:
        return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
    return g / (1.0 + np.exp(-g))  # SiLU


class ReferenceEngine:
    """Plain NumPy engine; `eval(ids)` appends to the KV cache and returns logits (f32)."""

    name = "reference"

    def __init__(self, gguf_file, config: ModelConfig, n_ctx: int = DEFAULT_CTX):
        if n_ctx <= 0:
            raise RealmError(f"n_ctx must be positive, got {n_ctx}")
        self.config = c = config
        self.n_ctx = n_ctx
        tensors: dict[str, np.ndarray] = {}
        self.weight_bytes = 0
        for name, info in gguf_file.tensors.items():
            t = require_supported(info.ggml_type, name)
            tensors[name] = dequantize_ref(gguf_file.tensor_bytes(name), t, tensor=name).reshape(info.shape)
            self.weight_bytes += info.n_bytes
        # W: every weight under its logical name (fused tensors cut into their matrices, biases
        # "blk.N.attn_q.bias" etc. only where the config has them)
        self.weights = W = dict(tensors)
        if c.tied_output:
            W["output.weight"] = W["token_embd.weight"]
        for il in range(c.n_layers):
            for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                tensor, lo, hi = c.matrix_source(il, name)
                W[f"blk.{il}.{name}.weight"] = tensors[tensor][lo:hi]
                bias = c.bias_source(il, name)
                if bias is not None:
                    W[f"blk.{il}.{name}.bias"] = tensors[bias[0]][bias[1]:bias[2]]
        factors = c.rope_factors_tensor(n_ctx)
        self.rope_factors = c.check_rope_factors(tensors[factors], factors) if factors else None  # (rope_dim/2,)
        self.key_cache = np.zeros((c.n_layers, n_ctx, c.n_kv_heads, c.head_dim), np.float32)  # (L, n_ctx, n_kv, hd)
        self.value_cache = np.zeros_like(self.key_cache)  # (L, n_ctx, n_kv, hd)
        self.n_past = 0
        self._stats = {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0}

    def reset(self) -> None:
        self.n_past = 0

    def close(self) -> None:
        self.weights = {}

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "n_past": self.n_past, "n_ctx": self.n_ctx,
                "weight_bytes": self.weight_bytes, **self._stats}

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the cache; logits (vocab,) of the last position, or (T, vocab) of every one."""
        ids = check_ids(ids, self.config.vocab_size, self.n_past, self.n_ctx)  # (T,)
        start = time.perf_counter()
        logits = self._forward(ids)  # (T, vocab)
        kind = "prefill" if ids.size > 1 else "decode"
        self._stats[kind + "_tokens"] += int(ids.size)
        self._stats[kind + "_s"] += time.perf_counter() - start
        return logits if all_logits else logits[-1]

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        c, W = self.config, self.weights
        T, pos0 = ids.size, self.n_past
        n_keys = pos0 + T
        positions = np.arange(pos0, n_keys, dtype=np.float64)  # (T,)
        group = c.n_heads // c.n_kv_heads
        x = W["token_embd.weight"][ids] * np.float32(c.embed_scale)  # (T, dim)
        for il in range(c.n_layers):
            b = f"blk.{il}."
            xb = rmsnorm(x, W[b + "attn_norm.weight"], c.norm_eps)  # (T, dim)
            q = linear(W, b + "attn_q", xb).reshape(T, c.n_heads, c.head_dim)  # (T, n_heads, hd)
            k = linear(W, b + "attn_k", xb).reshape(T, c.n_kv_heads, c.head_dim)  # (T, n_kv, hd)
            v = linear(W, b + "attn_v", xb).reshape(T, c.n_kv_heads, c.head_dim)  # (T, n_kv, hd)
            if c.qk_norm:
                q = rmsnorm(q, W[b + "attn_q_norm.weight"], c.norm_eps)
                k = rmsnorm(k, W[b + "attn_k_norm.weight"], c.norm_eps)
            base, scale = c.layer_rope(il)
            q = rope(q, positions, base, scale, c.rope_dim, c.rope_style, self.rope_factors, c.rope_attn_factor)
            k = rope(k, positions, base, scale, c.rope_dim, c.rope_style, self.rope_factors, c.rope_attn_factor)
            self.key_cache[il, pos0:n_keys] = k
            self.value_cache[il, pos0:n_keys] = v
            keys = self.key_cache[il, :n_keys]  # (n_keys, n_kv, hd)
            values = self.value_cache[il, :n_keys]  # (n_keys, n_kv, hd)
            p, j = positions[:, None], np.arange(n_keys)[None, :]
            visible = j <= p  # (T, n_keys)
            if c.layer_is_sliding(il):
                visible &= p - j < c.sliding_window
            heads = np.empty((T, c.n_heads, c.head_dim), np.float32)  # (T, n_heads, hd)
            for h in range(c.n_heads):
                scores = q[:, h] @ keys[:, h // group].T * np.float32(c.attn_scale)  # (T, n_keys)
                scores = np.where(visible, scores, -np.inf)
                att = np.exp(scores - scores.max(axis=1, keepdims=True))  # (T, n_keys)
                att /= att.sum(axis=1, keepdims=True)
                heads[:, h] = att @ values[:, h // group]
            out = linear(W, b + "attn_output", heads.reshape(T, c.q_dim))  # (T, dim)
            if c.post_norms:
                out = rmsnorm(out, W[b + "post_attention_norm.weight"], c.norm_eps)
            x = x + out
            xb = rmsnorm(x, W[b + "ffn_norm.weight"], c.norm_eps)  # (T, dim)
            gate = activation(linear(W, b + "ffn_gate", xb), c.activation)  # (T, hidden)
            hb = gate * linear(W, b + "ffn_up", xb)  # (T, hidden)
            out = linear(W, b + "ffn_down", hb)  # (T, dim)
            if c.post_norms:
                out = rmsnorm(out, W[b + "post_ffw_norm.weight"], c.norm_eps)
            x = x + out
        x = rmsnorm(x, W["output_norm.weight"], c.norm_eps)
        logits = x @ W["output.weight"].T  # (T, vocab)
        if c.final_logit_softcap > 0:
            logits = c.final_logit_softcap * np.tanh(logits / c.final_logit_softcap)
        self.n_past = n_keys
        return np.ascontiguousarray(logits, dtype=np.float32)
