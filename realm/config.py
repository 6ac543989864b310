"""ModelConfig: every hyperparameter and architecture difference of a model, read from GGUF metadata.

The forward passes (NumPy reference, Numba, the Rust guest) branch on these fields only, never on
the architecture name. Gemma 3 facts follow llama.cpp's implementation
(https://github.com/ggml-org/llama.cpp/blob/b6800/src/llama-model.cpp, LLM_ARCH_GEMMA3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from realm.errors import ConfigError, UnsupportedError

SUPPORTED_ARCHS = ("llama", "gemma3")

ROPE_NORM = 0  # LLaMA GGUF: rotate interleaved pairs (2i, 2i+1)
ROPE_NEOX = 1  # Gemma: rotate halves, pairs (i, i + rot_dim/2)
ACT_SILU = 0
ACT_GELU_TANH = 1


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_gguf(cls, gguf) -> "ModelConfig":
        """Build from an open `realm.gguf.GGUFFile`; missing or inconsistent metadata raises ConfigError."""
        md = gguf.metadata
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise ConfigError("missing or invalid metadata key 'general.architecture'")
        if arch not in SUPPORTED_ARCHS:
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
            else:
                raise ConfigError(f"metadata key {full!r} has type {type(value).__name__}, expected {kind.__name__}")
            if kind is int and value < 0 or (kind is float and not math.isfinite(value)):
                raise ConfigError(f"metadata key {full!r} has invalid value {value!r}")
            return value

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
        scaling_type = md.get(f"{arch}.rope.scaling.type", "none")
        rope_freq_scale = 1.0
        if scaling_type == "linear":
            factor = get("rope.scaling.factor", float)
            if factor <= 0:
                raise ConfigError(f"{arch}.rope.scaling.factor = {factor} must be positive")
            rope_freq_scale = 1.0 / factor
        elif scaling_type not in ("none", None):
            raise UnsupportedError(f"{arch}.rope.scaling.type = {scaling_type!r} is not supported")

        tensors = gguf.tensors
        if "token_embd.weight" not in tensors:
            raise ConfigError("tensor 'token_embd.weight' is missing: not a complete model")
        vocab_size = tensors["token_embd.weight"].shape[0]
        tokens = md.get("tokenizer.ggml.tokens")
        if tokens is not None and len(tokens) != vocab_size:
            raise ConfigError(
                f"tokenizer.ggml.tokens has {len(tokens)} entries but token_embd.weight has {vocab_size} rows")

        common = dict(
            arch=arch, dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab_size,
            context_length=context_length, rope_theta=rope_theta, rope_freq_scale=rope_freq_scale,
            rope_dim=rope_dim, norm_eps=norm_eps, tied_output="output.weight" not in tensors,
            final_logit_softcap=get("final_logit_softcapping", float, default=0.0, required=False),
        )
        if arch == "gemma3":
            window = get("attention.sliding_window", int, default=0, required=False)
            cfg = cls(
                **common, rope_theta_local=10000.0, rope_style=ROPE_NEOX,
                embed_scale=math.sqrt(dim), attn_scale=1.0 / math.sqrt(head_dim),
                activation=ACT_GELU_TANH, sliding_window=window,
                sliding_window_pattern=6 if window else 0, qk_norm=True, post_norms=True,
            )
        else:  # llama
            cfg = cls(
                **common, rope_theta_local=rope_theta, rope_style=ROPE_NORM, embed_scale=1.0,
                attn_scale=1.0 / math.sqrt(head_dim), activation=ACT_SILU, sliding_window=0,
                sliding_window_pattern=0, qk_norm=False, post_norms=False,
            )
        cfg._check_tensors(tensors)
        return cfg

    def _check_tensors(self, tensors) -> None:
        """Every tensor the forward pass reads exists with the shape this config implies."""
        expect: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.vocab_size, self.dim),
            "output_norm.weight": (self.dim,),
        }
        if not self.tied_output:
            expect["output.weight"] = (self.vocab_size, self.dim)
        for il in range(self.n_layers):
            b = f"blk.{il}."
            expect.update({
                b + "attn_norm.weight": (self.dim,),
                b + "attn_q.weight": (self.q_dim, self.dim),
                b + "attn_k.weight": (self.kv_dim, self.dim),
                b + "attn_v.weight": (self.kv_dim, self.dim),
                b + "attn_output.weight": (self.dim, self.q_dim),
                b + "ffn_norm.weight": (self.dim,),
                b + "ffn_gate.weight": (self.hidden_dim, self.dim),
                b + "ffn_up.weight": (self.hidden_dim, self.dim),
                b + "ffn_down.weight": (self.dim, self.hidden_dim),
            })
            if self.qk_norm:
                expect[b + "attn_q_norm.weight"] = (self.head_dim,)
                expect[b + "attn_k_norm.weight"] = (self.head_dim,)
            if self.post_norms:
                expect[b + "post_attention_norm.weight"] = (self.dim,)
                expect[b + "post_ffw_norm.weight"] = (self.dim,)
        for name, shape in expect.items():
            info = tensors.get(name)
            if info is None:
                raise ConfigError(f"tensor {name!r} is missing")
            if tuple(info.shape) != shape:
                raise ConfigError(f"tensor {name!r} has shape {tuple(info.shape)}, expected {shape}")
