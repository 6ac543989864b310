"""ModelConfig: every hyperparameter and architecture difference of a model, read from GGUF metadata.

The forward passes (NumPy reference, Numba, the Rust guest) branch on these fields only, never on
the architecture name; the architecture table `ARCHS` below is the one place that knows names.
`from_gguf` refuses every tensor the forward pass would not read and every metadata key that would
change the math without being implemented: nothing runs silently wrong. Facts follow llama.cpp
(https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-model.cpp, src/models/{llama,gemma3,
qwen2,qwen3,phi3}.cpp, ggml/src/ggml-cpu/ops.cpp `ggml_rope_cache_init` for RoPE frequency factors).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from realm.errors import ConfigError, UnsupportedError
from realm.quants import require_supported

log = logging.getLogger(__name__)

ROPE_NORM = 0  # LLaMA GGUF: rotate interleaved pairs (2i, 2i+1)
ROPE_NEOX = 1  # Gemma, Qwen, Phi-3: rotate halves, pairs (i, i + rot_dim/2)
ACT_SILU = 0
ACT_GELU_TANH = 1
ROPE_FACTORS_NONE = 0
ROPE_FACTORS_FREQS = 1  # `rope_freqs.weight` (Llama 3.x): one divisor per rotated pair, every layer
ROPE_FACTORS_LONG_SHORT = 2  # `rope_factors_long/short.weight` (LongRoPE): long iff n_ctx > rope_orig_ctx


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture fixes (everything else comes from metadata and which tensors exist)."""

    rope_style: int
    activation: int
    qk_norm: bool  # attn_q_norm / attn_k_norm required
    post_norms: bool  # post_attention_norm / post_ffw_norm required
    scaled_embed: bool  # embeddings * sqrt(dim)
    gemma_sliding: bool  # sliding-window layers (pattern 6, local RoPE base 10000)
    fused_gate_up: bool  # ffn_up holds gate rows then up rows; no ffn_gate
    rope_factors: int  # 0: none; 1: rope_freqs, or long/short with rope.scaling.type longrope; 2: long/short


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(ROPE_NORM, ACT_SILU, False, False, False, False, False, 1),
    "gemma3": ArchSpec(ROPE_NEOX, ACT_GELU_TANH, True, True, True, True, False, 0),
    "qwen2": ArchSpec(ROPE_NEOX, ACT_SILU, False, False, False, False, False, 0),
    "qwen3": ArchSpec(ROPE_NEOX, ACT_SILU, True, False, False, False, False, 0),
    "phi3": ArchSpec(ROPE_NEOX, ACT_SILU, False, False, False, False, True, 2),
}
SUPPORTED_ARCHS = tuple(ARCHS)

# Metadata keys (after "<arch>.") that change llama.cpp's forward pass for these architectures and
# that realm does not implement: present with a value other than the neutral one -> UnsupportedError.
_UNIMPLEMENTED_KEYS: dict[str, Any] = {
    "expert_count": 0,  # mixture of experts (Mixtral-style llama files)
    "expert_used_count": 0,
    "attn_logit_softcapping": 0.0,
    "attention.causal": True,
}
_ROPE_SCALING_TYPES = ("none", "linear", "longrope")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    dim: int  # embedding length
    hidden_dim: int  # feed-forward length
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int  # key/value length per head
    vocab_size: int
    context_length: int  # trained context
    rope_theta: float  # RoPE base of global layers
    rope_theta_local: float  # RoPE base of sliding-window layers (== rope_theta when there are none)
    rope_freq_scale: float  # linear RoPE scaling of global layers: positions are multiplied by this
    rope_dim: int  # rotated dimensions per head (== head_dim unless partial rotary)
    rope_style: int  # ROPE_NORM or ROPE_NEOX
    norm_eps: float
    embed_scale: float  # token embeddings are multiplied by this (sqrt(dim) for Gemma)
    attn_scale: float  # scores = q·k * attn_scale
    activation: int  # ACT_SILU or ACT_GELU_TANH, applied to ffn_gate's output
    sliding_window: int  # 0: no sliding-window layers
    sliding_window_pattern: int  # layer il slides iff pattern > 0 and il % pattern != pattern - 1
    qk_norm: bool  # per-head RMSNorm on q and k (attn_q_norm, attn_k_norm) before RoPE
    post_norms: bool  # sandwich norms: post_attention_norm and post_ffw_norm before each residual add
    tied_output: bool  # no output.weight: logits use token_embd
    final_logit_softcap: float  # 0: none
    # RoPE frequency factors (every layer): angle of pair i = pos * scale * theta^(-2i/rope_dim) / factor[i]
    rope_factors: int = ROPE_FACTORS_NONE  # ROPE_FACTORS_NONE / _FREQS / _LONG_SHORT
    rope_orig_ctx: int = 0  # LongRoPE: the long factors are used iff the engine's n_ctx > this
    rope_attn_factor: float = 1.0  # RoPE's cos and sin are multiplied by this (LongRoPE attention factor)
    qkv_bias: bool = False  # q, k, v get a bias (attn_q/k/v.bias, or attn_qkv.bias when fused)
    attn_output_bias: bool = False  # attn_output.bias
    fused_qkv: bool = False  # one attn_qkv.weight (q_dim + 2 kv_dim, dim): q rows, then k, then v
    fused_gate_up: bool = False  # ffn_up.weight (2 hidden_dim, dim): gate rows, then up rows; no ffn_gate

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    def layer_is_sliding(self, il: int) -> bool:
        p = self.sliding_window_pattern
        return self.sliding_window > 0 and p > 0 and il % p != p - 1

    def layer_rope(self, il: int) -> tuple[float, float]:
        """(rope base, position scale) of layer il."""
        if self.layer_is_sliding(il):
            return self.rope_theta_local, 1.0
        return self.rope_theta, self.rope_freq_scale

    def rope_factors_tensor(self, n_ctx: int) -> str | None:
        """Name of the (rope_dim/2,) frequency-factor tensor an engine of context n_ctx uses, or None
        (LongRoPE: the long factors iff n_ctx > rope_orig_ctx, as llama.cpp's get_rope_factors)."""
        if self.rope_factors == ROPE_FACTORS_FREQS:
            return "rope_freqs.weight"
        if self.rope_factors == ROPE_FACTORS_LONG_SHORT:
            return "rope_factors_long.weight" if n_ctx > self.rope_orig_ctx else "rope_factors_short.weight"
        return None

    def check_rope_factors(self, factors, name: str):
        """The factor tensor's values (rope_dim/2,) as read by an engine: every one positive and finite,
        else ConfigError naming the tensor (a zero or NaN divisor would give NaN logits)."""
        values = np.asarray(factors, np.float32).reshape(-1)  # (rope_dim/2,)
        if values.shape != (self.rope_dim // 2,) or not (np.isfinite(values) & (values > 0)).all():
            raise ConfigError(
                f"tensor {name!r}: RoPE frequency factors must be {self.rope_dim // 2} positive finite values")
        return values

    def matrix_source(self, il: int, name: str) -> tuple[str, int, int]:
        """(tensor name, first row, end row) of layer il's matrix `name` (attn_q .. ffn_down):
        fused tensors hold several matrices one after the other."""
        b = f"blk.{il}."
        q, kv, h = self.q_dim, self.kv_dim, self.hidden_dim
        if self.fused_qkv and name in ("attn_q", "attn_k", "attn_v"):
            lo = {"attn_q": 0, "attn_k": q, "attn_v": q + kv}[name]
            return b + "attn_qkv.weight", lo, lo + (q if name == "attn_q" else kv)
        if self.fused_gate_up and name in ("ffn_gate", "ffn_up"):
            lo = 0 if name == "ffn_gate" else h
            return b + "ffn_up.weight", lo, lo + h
        rows = {"attn_q": q, "attn_k": kv, "attn_v": kv, "attn_output": self.dim, "ffn_gate": h,
                "ffn_up": h, "ffn_down": self.dim}[name]
        return b + name + ".weight", 0, rows

    def bias_source(self, il: int, name: str) -> tuple[str, int, int] | None:
        """(tensor name, start, end) of the bias added after layer il's matrix `name`, or None."""
        b = f"blk.{il}."
        if name in ("attn_q", "attn_k", "attn_v") and self.qkv_bias:
            if self.fused_qkv:
                tensor, lo, hi = self.matrix_source(il, name)
                return b + "attn_qkv.bias", lo, hi
            return b + name + ".bias", 0, self.matrix_source(il, name)[2]
        if name == "attn_output" and self.attn_output_bias:
            return b + "attn_output.bias", 0, self.dim
        return None

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward pass reads, with its shape (NumPy order)."""
        expect: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.vocab_size, self.dim),
            "output_norm.weight": (self.dim,),
        }
        if not self.tied_output:
            expect["output.weight"] = (self.vocab_size, self.dim)
        half = self.rope_dim // 2
        if self.rope_factors == ROPE_FACTORS_FREQS:
            expect["rope_freqs.weight"] = (half,)
        elif self.rope_factors == ROPE_FACTORS_LONG_SHORT:
            expect["rope_factors_long.weight"] = (half,)
            expect["rope_factors_short.weight"] = (half,)
        for il in range(self.n_layers):
            b = f"blk.{il}."
            expect[b + "attn_norm.weight"] = (self.dim,)
            expect[b + "ffn_norm.weight"] = (self.dim,)
            for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                tensor, lo, hi = self.matrix_source(il, name)
                cols = {"attn_output": self.q_dim, "ffn_down": self.hidden_dim}.get(name, self.dim)
                expect[tensor] = (max(expect.get(tensor, (0,))[0], hi), cols)
                bias = self.bias_source(il, name)
                if bias is not None:
                    expect[bias[0]] = (max(expect.get(bias[0], (0,))[0], bias[2]),)
            if self.qk_norm:
                expect[b + "attn_q_norm.weight"] = (self.head_dim,)
                expect[b + "attn_k_norm.weight"] = (self.head_dim,)
            if self.post_norms:
                expect[b + "post_attention_norm.weight"] = (self.dim,)
                expect[b + "post_ffw_norm.weight"] = (self.dim,)
        return expect

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_gguf(cls, gguf) -> "ModelConfig":
        """Build from an open `realm.gguf.GGUFFile`; missing or inconsistent metadata raises ConfigError,
        an architecture, tensor, tensor type or metadata value realm does not implement UnsupportedError."""
        md = gguf.metadata
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise ConfigError("missing or invalid metadata key 'general.architecture'")
        spec = ARCHS.get(arch)
        if spec is None:
            raise UnsupportedError(
                f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

        def get(key: str, kind: type, default: Any = None, required: bool = True) -> Any:
            full = f"{arch}.{key}"
            if full not in md:
                if required and default is None:
                    raise ConfigError(f"missing metadata key {full!r}")
                return default
            value = md[full]
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value)
            elif kind is int and isinstance(value, int) and not isinstance(value, bool):
                pass
            elif kind is bool and isinstance(value, bool):
                pass
            else:
                raise ConfigError(f"metadata key {full!r} has type {type(value).__name__}, expected {kind.__name__}")
            if kind is int and value < 0 or (kind is float and not math.isfinite(value)):
                raise ConfigError(f"metadata key {full!r} has invalid value {value!r}")
            return value

        for key, neutral in _UNIMPLEMENTED_KEYS.items():
            value = get(key, type(neutral), default=neutral, required=False)
            if value != neutral:
                raise UnsupportedError(f"{arch}.{key} = {value!r} is not supported (realm implements {neutral!r})")

        dim = get("embedding_length", int)
        n_layers = get("block_count", int)
        n_heads = get("attention.head_count", int)
        if dim <= 0 or n_layers <= 0 or n_heads <= 0:
            raise ConfigError(f"{arch}: embedding_length, block_count and attention.head_count must be positive")
        n_kv_heads = get("attention.head_count_kv", int, default=n_heads)
        head_dim = get("attention.key_length", int, default=dim // n_heads)
        value_length = get("attention.value_length", int, default=head_dim)
        if value_length != head_dim:
            raise UnsupportedError(f"{arch}.attention.value_length {value_length} != key_length {head_dim}")
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ConfigError(f"{arch}.attention.head_count_kv = {n_kv_heads} does not divide head_count {n_heads}")
        if head_dim <= 0 or head_dim % 2:
            raise ConfigError(f"{arch}.attention.key_length = {head_dim} must be positive and even")
        hidden_dim = get("feed_forward_length", int)
        context_length = get("context_length", int, default=2048)
        norm_eps = get("attention.layer_norm_rms_epsilon", float)
        rope_theta = get("rope.freq_base", float, default=10000.0)
        rope_dim = get("rope.dimension_count", int, default=head_dim)
        if rope_dim <= 0 or rope_dim > head_dim or rope_dim % 2:
            raise ConfigError(f"{arch}.rope.dimension_count = {rope_dim} must be even and at most {head_dim}")
        # llama.cpp: a missing rope.scaling.type means "linear", and the factor applies when present
        scaling_type = md.get(f"{arch}.rope.scaling.type", "linear")
        if scaling_type not in _ROPE_SCALING_TYPES:
            raise UnsupportedError(f"{arch}.rope.scaling.type = {scaling_type!r} is not supported "
                                   f"(supported: {', '.join(_ROPE_SCALING_TYPES)})")
        rope_freq_scale = 1.0
        factor = get("rope.scaling.factor", float, default=0.0, required=False)
        if scaling_type != "none" and factor != 0.0:
            if factor < 0:
                raise ConfigError(f"{arch}.rope.scaling.factor = {factor} must be positive")
            rope_freq_scale = 1.0 / factor
        rope_attn_factor = get("rope.scaling.attn_factor", float, default=1.0, required=False)
        if rope_attn_factor <= 0:
            raise ConfigError(f"{arch}.rope.scaling.attn_factor = {rope_attn_factor} must be positive")
        rope_orig_ctx = get("rope.scaling.original_context_length", int, default=context_length, required=False)

        tensors = gguf.tensors
        if "token_embd.weight" not in tensors:
            raise ConfigError("tensor 'token_embd.weight' is missing: not a complete model")
        vocab_size = tensors["token_embd.weight"].shape[0]
        tokens = md.get("tokenizer.ggml.tokens")
        if tokens is not None and len(tokens) != vocab_size:
            raise ConfigError(
                f"tokenizer.ggml.tokens has {len(tokens)} entries but token_embd.weight has {vocab_size} rows")

        # RoPE frequency factors: Llama 3.x rope_freqs, or LongRoPE's long/short pair (llama.cpp reads
        # the pair on llama files only with rope.scaling.type longrope, on phi3 files always).
        rope_factors = ROPE_FACTORS_NONE
        long_short = spec.rope_factors == 2 or (spec.rope_factors == 1 and scaling_type == "longrope")
        if long_short and ("rope_factors_long.weight" in tensors or "rope_factors_short.weight" in tensors):
            rope_factors = ROPE_FACTORS_LONG_SHORT
        elif spec.rope_factors == 1 and not long_short and "rope_freqs.weight" in tensors:
            rope_factors = ROPE_FACTORS_FREQS

        def has(name: str) -> bool:
            return all(f"blk.{il}.{name}" in tensors for il in range(n_layers))

        fused_qkv = "blk.0.attn_qkv.weight" in tensors
        qkv_bias = has("attn_qkv.bias") if fused_qkv else has("attn_q.bias") or has("attn_k.bias") or has("attn_v.bias")

        window = 0
        if spec.gemma_sliding:
            window = get("attention.sliding_window", int, default=0, required=False)
        elif get("attention.sliding_window", int, default=0, required=False):
            # llama.cpp reads no sliding window for llama/qwen2/qwen3 and disables it for phi3
            log.warning("%s.attention.sliding_window is ignored, as llama.cpp does for %s", arch, arch)
        cfg = cls(
            arch=arch, dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab_size,
            context_length=context_length, rope_theta=rope_theta,
            rope_theta_local=10000.0 if spec.gemma_sliding else rope_theta,
            rope_freq_scale=rope_freq_scale, rope_dim=rope_dim, rope_style=spec.rope_style,
            norm_eps=norm_eps, embed_scale=math.sqrt(dim) if spec.scaled_embed else 1.0,
            attn_scale=1.0 / math.sqrt(head_dim), activation=spec.activation, sliding_window=window,
            sliding_window_pattern=6 if window else 0, qk_norm=spec.qk_norm, post_norms=spec.post_norms,
            tied_output="output.weight" not in tensors,
            final_logit_softcap=get("final_logit_softcapping", float, default=0.0, required=False),
            rope_factors=rope_factors, rope_orig_ctx=rope_orig_ctx, rope_attn_factor=rope_attn_factor,
            qkv_bias=qkv_bias, attn_output_bias=has("attn_output.bias"), fused_qkv=fused_qkv,
            fused_gate_up=spec.fused_gate_up,
        )
        cfg._check_tensors(tensors)
        return cfg

    def _check_tensors(self, tensors) -> None:
        """Every tensor the forward pass reads exists with the shape this config implies, in a type
        the kernels handle; any other tensor (one the forward pass would ignore) is refused."""
        expect = self.expected_tensors()
        for name, shape in expect.items():
            info = tensors.get(name)
            if info is None:
                raise ConfigError(f"tensor {name!r} is missing")
            if tuple(info.shape) != shape:
                raise ConfigError(f"tensor {name!r} has shape {tuple(info.shape)}, expected {shape}")
            require_supported(info.ggml_type, name)
        extra = sorted(set(tensors) - set(expect))
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise UnsupportedError(
                f"tensor {extra[0]!r}{more} is not used by realm's {self.arch} forward pass; running the "
                "model without it would be wrong")
