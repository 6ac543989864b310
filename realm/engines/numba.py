"""The Numba engine: the forward pass on still-quantized, memory-mapped weights.

Weights are read-only views `GGUFFile.tensor_rows(name)`; a decode step multiplies them with fused
quantized matvecs (no f32 copy of any matrix), a prompt (`len(ids) > 1`) with matmuls that read each
weight once for all its tokens. Norms, RoPE and attention are `realm.kernels.ops`. The NumPy
reference (`realm.engines.reference`) is the spec this engine is tested against.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numba
import numpy as np

from realm.config import ModelConfig
from realm.engines import DEFAULT_CTX
from realm.engines.reference import check_ids
from realm.errors import RealmError
from realm.kernels import ops
from realm.kernels.dequant import dequantize
from realm.kernels.int8rows import REPACK_TYPES, matvec_int8
from realm.kernels.int8rows import repack as repack_rows
from realm.kernels.matvec import dequantize_rows, get_rows, matmul, matvec
from realm.quants import GGMLType, require_supported

Matrix = tuple[np.ndarray, GGMLType]  # (rows uint8 (rows, row_bytes) read-only view, type)
_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_PARALLEL_ATTENTION_WORK = 1 << 20
# Prompts of at least this many tokens multiply dequantized f32 copies of the matrices with BLAS:
# on the default model's layer matrices (2 threads) sgemm after dequantizing beat `matmul` by
# 1.3-2.1x at 128 tokens and lost by 1.2-2.7x at 16 (dequantizing costs the same for any T).
_BLAS_MIN_TOKENS = 64  # T * n_keys * n_heads * head_dim above which heads go parallel


@dataclass
class Layer:
    attn_norm: np.ndarray  # (dim,) f32
    attn_q: Matrix  # (q_dim, dim)
    attn_k: Matrix  # (kv_dim, dim)
    attn_v: Matrix  # (kv_dim, dim)
    attn_output: Matrix  # (dim, q_dim)
    bias_q: np.ndarray | None  # (q_dim,) f32 when config.qkv_bias
    bias_k: np.ndarray | None  # (kv_dim,)
    bias_v: np.ndarray | None  # (kv_dim,)
    bias_output: np.ndarray | None  # (dim,) when config.attn_output_bias
    attn_q_norm: np.ndarray  # (head_dim,), unused (ones) unless config.qk_norm
    attn_k_norm: np.ndarray  # (head_dim,)
    post_attention_norm: np.ndarray  # (dim,), unused (ones) unless config.post_norms
    ffn_norm: np.ndarray  # (dim,)
    ffn_gate: Matrix  # (hidden_dim, dim)
    ffn_up: Matrix  # (hidden_dim, dim)
    ffn_down: Matrix  # (dim, hidden_dim)
    post_ffw_norm: np.ndarray  # (dim,)
    window: int  # sliding window of this layer, 0 = global
    rope_slot: int  # index into the engine's RoPE tables: 0 global, 1 sliding
    packed: dict = field(default_factory=dict)  # matrix name -> Int8Rows for decode (see NumbaEngine)


class Buffers:
    """Activations for T tokens at a time, allocated once per T (decode reuses T=1)."""

    def __init__(self, c: ModelConfig, T: int):
        self.x = np.zeros((T, c.dim), np.float32)  # (T, dim) residual stream
        self.xb = np.zeros((T, c.dim), np.float32)  # (T, dim) normed input of a block
        self.out = np.zeros((T, c.dim), np.float32)  # (T, dim) block output
        self.q = np.zeros((T, c.q_dim), np.float32)  # (T, n_heads * head_dim)
        self.k = np.zeros((T, c.kv_dim), np.float32)  # (T, n_kv_heads * head_dim)
        self.v = np.zeros((T, c.kv_dim), np.float32)  # (T, n_kv_heads * head_dim)
        self.heads = np.zeros((T, c.q_dim), np.float32)  # (T, n_heads * head_dim) attention output
        self.hb = np.zeros((T, c.hidden_dim), np.float32)  # (T, hidden_dim)
        self.hb2 = np.zeros((T, c.hidden_dim), np.float32)  # (T, hidden_dim)
        self.ids = np.zeros(T, np.int64)  # (T,)


class NumbaEngine:
    """Quantized forward pass with Numba kernels; `eval(ids)` appends to the KV cache and returns logits."""

    name = "numba"

    def __init__(self, gguf_file, config: ModelConfig, n_ctx: int = DEFAULT_CTX, threads: int | None = None,
                 progress: Callable[[str], None] | None = None, warm: bool = True, repack: bool = True):
        """`threads`: Numba threads used by this engine's kernels (set around each `eval`, then restored).
        `warm`: compile (or load from Numba's cache) the kernels of this model's tensor types now, on
        two cores when the cache is cold (realm.kernels.warm), telling `progress` when that takes a while;
        otherwise the first prompt compiles them.
        `repack`: keep an int8 copy of each layer matrix of a bit-packed type (Q4/Q5/Q6, legacy and K;
        not Q8_0, already bytes) for decode steps: the same float32 weights, bit for bit, as
        scale * int8 + bias (realm.kernels.int8rows), so a matvec no longer unpacks nibbles and high
        bits for every token (2x faster on the default model's Q5_0/Q6_K layers), at 1.6x those
        matrices' bytes in anonymous memory. Prompts still multiply the mmapped quantized rows."""
        if n_ctx <= 0:
            raise RealmError(f"n_ctx must be positive, got {n_ctx}")
        if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise RealmError(f"threads must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {threads}")
        self.config = c = config
        self.n_ctx = n_ctx
        self.threads = threads if threads is not None else numba.get_num_threads()
        self._file = gguf_file
        self.weight_bytes = 0

        def mat(name: str, lo: int = 0, hi: int | None = None) -> Matrix:
            """Rows [lo, hi) of a tensor (a fused tensor holds several matrices)."""
            info = gguf_file.tensors[name]
            rows = gguf_file.tensor_rows(name)[lo:hi]  # (rows, row_bytes) view
            self.weight_bytes += rows.nbytes
            return rows, require_supported(info.ggml_type, name)

        def layer_mat(il: int, name: str) -> Matrix:
            return mat(*c.matrix_source(il, name))

        def bias(il: int, name: str) -> np.ndarray | None:
            src = c.bias_source(il, name)
            if src is None:
                return None
            full = vec(src[0])  # (n,) f32
            return np.ascontiguousarray(full[src[1]:src[2]])

        def vec(name: str) -> np.ndarray | None:
            info = gguf_file.tensors.get(name)
            if info is None:
                return None
            self.weight_bytes += info.n_bytes
            t = require_supported(info.ggml_type, name)
            return dequantize(gguf_file.tensor_bytes(name), t, info.n_elements, tensor=name)  # (n,) f32

        self.token_embd = mat("token_embd.weight")  # (vocab, dim)
        self.output = self.token_embd if c.tied_output else mat("output.weight")  # (vocab, dim)
        self.output_norm = vec("output_norm.weight")  # (dim,)
        ones_hd = np.ones(c.head_dim, np.float32)  # (head_dim,) stand-in for absent q/k norms
        ones_dim = np.ones(c.dim, np.float32)  # (dim,) stand-in for absent post norms
        self.layers: list[Layer] = []
        for il in range(c.n_layers):
            b = f"blk.{il}."
            sliding = c.layer_is_sliding(il)
            self.layers.append(Layer(
                attn_norm=vec(b + "attn_norm.weight"), attn_q=layer_mat(il, "attn_q"),
                attn_k=layer_mat(il, "attn_k"), attn_v=layer_mat(il, "attn_v"),
                attn_output=layer_mat(il, "attn_output"),
                bias_q=bias(il, "attn_q"), bias_k=bias(il, "attn_k"), bias_v=bias(il, "attn_v"),
                bias_output=bias(il, "attn_output"),
                attn_q_norm=vec(b + "attn_q_norm.weight") if c.qk_norm else ones_hd,
                attn_k_norm=vec(b + "attn_k_norm.weight") if c.qk_norm else ones_hd,
                post_attention_norm=vec(b + "post_attention_norm.weight") if c.post_norms else ones_dim,
                ffn_norm=vec(b + "ffn_norm.weight"), ffn_gate=layer_mat(il, "ffn_gate"),
                ffn_up=layer_mat(il, "ffn_up"), ffn_down=layer_mat(il, "ffn_down"),
                post_ffw_norm=vec(b + "post_ffw_norm.weight") if c.post_norms else ones_dim,
                window=c.sliding_window if sliding else 0, rope_slot=1 if sliding else 0,
            ))
        # Weight bytes one decode step reads: every layer matrix and the output matrix (+ one embedding row).
        self.bytes_per_token = sum(m[0].nbytes for L in self.layers for m in (
            L.attn_q, L.attn_k, L.attn_v, L.attn_output, L.ffn_gate, L.ffn_up, L.ffn_down)) + self.output[0].nbytes
        self.key_cache = np.zeros((c.n_layers, c.n_kv_heads, n_ctx, c.head_dim), np.float32)  # (L, n_kv, n_ctx, hd)
        self.value_cache = np.zeros_like(self.key_cache)  # (L, n_kv, n_ctx, hd)
        self.att = np.zeros((c.n_heads, n_ctx), np.float32)  # (n_heads, n_ctx) attention scratch
        # RoPE tables for every position: slot 0 global layers, slot 1 sliding layers.
        self.rope_cos = np.zeros((2, n_ctx, c.rope_dim // 2), np.float32)  # (slot, n_ctx, rope_dim/2)
        self.rope_sin = np.zeros_like(self.rope_cos)
        positions = np.arange(n_ctx, dtype=np.int64)  # (n_ctx,)
        factors_name = c.rope_factors_tensor(n_ctx)
        factors = (c.check_rope_factors(vec(factors_name), factors_name) if factors_name
                   else np.ones(c.rope_dim // 2, np.float32))  # (rope_dim/2,)
        for slot, (base, scale) in enumerate(((c.rope_theta, c.rope_freq_scale), (c.rope_theta_local, 1.0))):
            ops.rope_cos_sin(positions, base, scale, c.rope_dim, factors, c.rope_attn_factor,
                             self.rope_cos[slot], self.rope_sin[slot])
        self.logits = np.zeros(c.vocab_size, np.float32)  # (vocab,)
        self._decode = Buffers(c, 1)
        self.n_past = 0
        self._stats = {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0}
        self.warm_seconds = 0.0
        self._scratch: np.ndarray | None = None  # dequantized matrix for BLAS prompts, grown on demand
        packed_types = {t for L in self.layers for name in _MATRICES
                        if (t := getattr(L, name)[1]) in REPACK_TYPES and t != GGMLType.Q8_0} if repack else set()
        if warm:
            from realm.kernels.warm import warm as warm_kernels

            types = {getattr(L, name)[1] for L in self.layers for name in _MATRICES}
            self.warm_seconds = warm_kernels(types, embedding=self.token_embd[1], packed=packed_types,
                                             output=self.output[1], progress=progress)["seconds"]
        self.packed_bytes = 0
        if repack:
            for L in self.layers:
                for name in _MATRICES:
                    rows, t = getattr(L, name)
                    if t in REPACK_TYPES and t != GGMLType.Q8_0:
                        L.packed[name] = p = repack_rows(rows, t)
                        self.packed_bytes += p.nbytes
                        self.bytes_per_token += p.nbytes - rows.nbytes  # decode reads the copy instead

    # --- interface ----------------------------------------------------------------------------------

    def reset(self) -> None:
        self.n_past = 0

    def close(self) -> None:
        self.layers = []

    def stats(self) -> dict[str, Any]:
        s = dict(self._stats)
        for kind in ("prefill", "decode"):
            s[kind + "_tok_s"] = s[kind + "_tokens"] / s[kind + "_s"] if s[kind + "_s"] > 0 else 0.0
        return {"engine": self.name, "threads": self.threads, "n_past": self.n_past, "n_ctx": self.n_ctx,
                "warm_s": self.warm_seconds, "weight_bytes": self.weight_bytes, "packed_bytes": self.packed_bytes, "bytes_per_token": self.bytes_per_token, **s}

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Append `ids` to the cache; logits (vocab,) of the last position, or (T, vocab) of every one."""
        ids = check_ids(ids, self.config.vocab_size, self.n_past, self.n_ctx)  # (T,) int64
        T = ids.size
        start = time.perf_counter()
        B = self._decode if T == 1 else Buffers(self.config, T)
        B.ids[:] = ids
        caller_threads = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            with _blas_threads(self.threads if T >= _BLAS_MIN_TOKENS else None):
                self._forward(B, T)
                logits = self._logits(B, T, all_logits)
        finally:
            numba.set_num_threads(caller_threads)
        kind = "prefill" if T > 1 else "decode"
        self._stats[kind + "_tokens"] += T
        self._stats[kind + "_s"] += time.perf_counter() - start
        return logits

    # --- forward pass ---------------------------------------------------------------------------------

    def _linear(self, w: Matrix, x: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
                packed=None) -> None:
        """out (T, rows) = x (T, cols) @ w.T (+ bias (rows,)): matvec for one token (on the int8 copy
        `packed` when there is one); for a prompt of at least _BLAS_MIN_TOKENS tokens the matrix is
        dequantized into a scratch f32 buffer and multiplied by NumPy's BLAS (sgemm), for shorter
        ones by `matmul` (each weight row unpacked once for all tokens)."""
        T = x.shape[0]
        if T == 1:
            if packed is not None:
                matvec_int8(packed, x[0], out[0])
            else:
                matvec(w[0], w[1], x[0], out[0])
        elif T >= _BLAS_MIN_TOKENS:
            rows, cols = out.shape[1], x.shape[1]
            if self._scratch is None or self._scratch.size < rows * cols:
                self._scratch = np.empty(rows * cols, np.float32)  # (rows * cols,) dequantized weights
            dense = self._scratch[:rows * cols].reshape(rows, cols)  # (rows, cols)
            dequantize_rows(w[0], w[1], dense)
            np.matmul(x, dense.T, out=out)
        else:
            matmul(w[0], w[1], x, out)
        if bias is not None:
            out += bias

    def _forward(self, B: Buffers, T: int) -> None:
        c = self.config
        pos0 = self.n_past
        cos = self.rope_cos[:, pos0:pos0 + T]  # (slot, T, rope_dim/2)
        sin = self.rope_sin[:, pos0:pos0 + T]
        get_rows(self.token_embd[0], self.token_embd[1], B.ids, B.x)
        if c.embed_scale != 1.0:
            B.x *= np.float32(c.embed_scale)
        q3 = B.q.reshape(T, c.n_heads, c.head_dim)  # (T, n_heads, hd)
        k3 = B.k.reshape(T, c.n_kv_heads, c.head_dim)  # (T, n_kv, hd)
        v3 = B.v.reshape(T, c.n_kv_heads, c.head_dim)
        heads3 = B.heads.reshape(T, c.n_heads, c.head_dim)
        hb, hb2 = B.hb.reshape(-1), B.hb2.reshape(-1)  # (T * hidden_dim,)
        eps = c.norm_eps
        ops.rmsnorm(B.x, self.layers[0].attn_norm, eps, B.xb)
        for il, L in enumerate(self.layers):
            self._linear(L.attn_q, B.xb, B.q, L.bias_q, L.packed.get("attn_q"))
            self._linear(L.attn_k, B.xb, B.k, L.bias_k, L.packed.get("attn_k"))
            self._linear(L.attn_v, B.xb, B.v, L.bias_v, L.packed.get("attn_v"))
            kc, vc = self.key_cache[il], self.value_cache[il]  # (n_kv, n_ctx, hd)
            ops.qk_rope_store(q3, k3, v3, L.attn_q_norm, L.attn_k_norm, c.qk_norm, eps,
                              cos[L.rope_slot], sin[L.rope_slot], c.rope_style, kc, vc, pos0)
            # Heads over threads only when the attention work outweighs a parallel launch.
            n_keys = min(pos0 + T, L.window + T) if L.window else pos0 + T
            parallel = self.threads > 1 and T * n_keys * c.n_heads * c.head_dim >= _PARALLEL_ATTENTION_WORK
            (ops.attention_parallel if parallel else ops.attention)(
                q3, kc, vc, pos0, c.attn_scale, L.window, self.att, heads3)
            self._linear(L.attn_output, B.heads, B.out, L.bias_output, L.packed.get("attn_output"))
            ops.residual_norm(B.x, B.out, L.post_attention_norm, c.post_norms, L.ffn_norm, eps, B.xb)
            self._linear(L.ffn_gate, B.xb, B.hb, None, L.packed.get("ffn_gate"))
            self._linear(L.ffn_up, B.xb, B.hb2, None, L.packed.get("ffn_up"))
            ops.gated_act(hb, hb2, c.activation, hb)
            self._linear(L.ffn_down, B.hb, B.out, None, L.packed.get("ffn_down"))
            next_norm = self.layers[il + 1].attn_norm if il + 1 < len(self.layers) else self.output_norm
            ops.residual_norm(B.x, B.out, L.post_ffw_norm, c.post_norms, next_norm, eps, B.xb)
        self.n_past = pos0 + T

    def _logits(self, B: Buffers, T: int, all_logits: bool) -> np.ndarray:
        c = self.config
        if all_logits and T > 1:
            logits = np.empty((T, c.vocab_size), np.float32)  # (T, vocab)
            matmul(self.output[0], self.output[1], B.xb, logits)
        else:
            matvec(self.output[0], self.output[1], B.xb[-1], self.logits)
            logits = self.logits.copy()  # (vocab,): the caller keeps it across evals
            if all_logits:
                logits = logits.reshape(1, -1)
        if c.final_logit_softcap > 0:
            cap = np.float32(c.final_logit_softcap)
            np.tanh(logits / cap, out=logits)
            logits *= cap
        return logits


_BLAS_LIMITER = None


def _blas_threads(n: int | None):
    """A context limiting NumPy's BLAS to `n` threads (the engine's `threads`), or a no-op for None."""
    global _BLAS_LIMITER
    if n is None:
        return contextlib.nullcontext()
    if _BLAS_LIMITER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_LIMITER = ThreadpoolController()
    return _BLAS_LIMITER.limit(limits=n, user_api="blas")
