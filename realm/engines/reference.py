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


def rope(x: np.ndarray, positions: np.ndarray, base: float, scale: float, rope_dim: int, style: int) -> np.ndarray:
    """Rotate x (T, n_heads, head_dim) over the first rope_dim dims of each head; returns a new array."""
    half = rope_dim // 2
    theta = np.outer(positions * scale, base ** (-2.0 * np.arange(half) / rope_dim))  # (T, half) f64
    cos = np.cos(theta).astype(np.float32)[:, None, :]  # (T, 1, half)
    sin = np.sin(theta).astype(np.float32)[:, None, :]
    if style == ROPE_NEOX:
        a, b = np.arange(half), np.arange(half) + half  # pairs (i, i + half)
    else:
        a, b = 2 * np.arange(half), 2 * np.arange(half) + 1  # pairs (2i, 2i+1)
    out = x.copy()  # (T, n_heads, head_dim)
    out[:, :, a] = x[:, :, a] * cos - x[:, :, b] * sin
    out[:, :, b] = x[:, :, a] * sin + x[:, :, b] * cos
    return out


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
        self.weights: dict[str, np.ndarray] = {}
        self.weight_bytes = 0
        for name, info in gguf_file.tensors.items():
            t = require_supported(info.ggml_type, name)
            self.weights[name] = dequantize_ref(gguf_file.tensor_bytes(name), t, tensor=name).reshape(info.shape)
            self.weight_bytes += info.n_bytes
        if c.tied_output:
            self.weights["output.weight"] = self.weights["token_embd.weight"]
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
            q = (xb @ W[b + "attn_q.weight"].T).reshape(T, c.n_heads, c.head_dim)  # (T, n_heads, hd)
            k = (xb @ W[b + "attn_k.weight"].T).reshape(T, c.n_kv_heads, c.head_dim)  # (T, n_kv, hd)
            v = (xb @ W[b + "attn_v.weight"].T).reshape(T, c.n_kv_heads, c.head_dim)  # (T, n_kv, hd)
            if c.qk_norm:
                q = rmsnorm(q, W[b + "attn_q_norm.weight"], c.norm_eps)
                k = rmsnorm(k, W[b + "attn_k_norm.weight"], c.norm_eps)
            base, scale = c.layer_rope(il)
            q = rope(q, positions, base, scale, c.rope_dim, c.rope_style)
            k = rope(k, positions, base, scale, c.rope_dim, c.rope_style)
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
            out = heads.reshape(T, c.q_dim) @ W[b + "attn_output.weight"].T  # (T, dim)
            if c.post_norms:
                out = rmsnorm(out, W[b + "post_attention_norm.weight"], c.norm_eps)
            x = x + out
            xb = rmsnorm(x, W[b + "ffn_norm.weight"], c.norm_eps)  # (T, dim)
            gate = activation(xb @ W[b + "ffn_gate.weight"].T, c.activation)  # (T, hidden)
            hb = gate * (xb @ W[b + "ffn_up.weight"].T)  # (T, hidden)
            out = hb @ W[b + "ffn_down.weight"].T  # (T, dim)
            if c.post_norms:
                out = rmsnorm(out, W[b + "post_ffw_norm.weight"], c.norm_eps)
            x = x + out
        x = rmsnorm(x, W["output_norm.weight"], c.norm_eps)
        logits = x @ W["output.weight"].T  # (T, vocab)
        if c.final_logit_softcap > 0:
            logits = c.final_logit_softcap * np.tanh(logits / c.final_logit_softcap)
        self.n_past = n_keys
        return np.ascontiguousarray(logits, dtype=np.float32)
