"""realm.config.ModelConfig.from_gguf on synthetic llama / gemma3 files, broken metadata, and the default model."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest

from realm.config import ACT_GELU_TANH, ACT_SILU, ROPE_NEOX, ROPE_NORM, ModelConfig
from realm.errors import ConfigError, UnsupportedError
from realm.gguf import GGUFFile
from realm.quants import GGMLType

pytest.importorskip("gguf")
from synth import make_model  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("config")
    llama = make_model(d / "llama.gguf", arch="llama", qtype=GGMLType.Q8_0, n_layers=3, rope_dim=8,
                       vocab_size=280)
    gemma = make_model(d / "gemma3.gguf", arch="gemma3", qtype=GGMLType.Q8_0, n_layers=7, sliding_window=4,
                       rope_scaling=8.0)
    with GGUFFile(llama) as fl, GGUFFile(gemma) as fg:
        yield {"llama": fl, "gemma3": fg}


def fake(f, drop=(), set_=None, tensors=None):
    """A stand-in with the GGUFFile attributes from_gguf reads, with edited metadata/tensors."""
    md = {k: v for k, v in f.metadata.items() if k not in drop}
    md.update(set_ or {})
    return SimpleNamespace(metadata=md, tensors=tensors if tensors is not None else dict(f.tensors))


def test_llama(files):
    c = ModelConfig.from_gguf(files["llama"])
    assert (c.arch, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == \
        ("llama", 64, 128, 3, 4, 2, 16)
    assert c.vocab_size == 280 and c.context_length == 256
    assert c.rope_style == ROPE_NORM and c.activation == ACT_SILU and c.rope_dim == 8
    assert c.rope_theta == c.rope_theta_local == 10000.0 and c.rope_freq_scale == 1.0
    assert c.embed_scale == 1.0 and c.attn_scale == pytest.approx(0.25)
    assert c.norm_eps == pytest.approx(1e-5)
    assert not (c.qk_norm or c.post_norms or c.tied_output)
    assert c.sliding_window == 0 and c.final_logit_softcap == 0.0
    assert [c.layer_is_sliding(il) for il in range(3)] == [False] * 3
    assert c.layer_rope(1) == (10000.0, 1.0)
    assert (c.q_dim, c.kv_dim) == (64, 32)


def test_gemma3(files):
    c = ModelConfig.from_gguf(files["gemma3"])
    assert c.arch == "gemma3" and c.n_layers == 7
    assert c.rope_style == ROPE_NEOX and c.activation == ACT_GELU_TANH
    assert c.embed_scale == pytest.approx(math.sqrt(64))
    assert c.qk_norm and c.post_norms and c.tied_output
    assert c.sliding_window == 4 and c.sliding_window_pattern == 6
    assert c.rope_theta == 1e6 and c.rope_theta_local == 10000.0
    assert c.rope_freq_scale == pytest.approx(1 / 8)
    assert c.norm_eps == pytest.approx(1e-6)
    assert [c.layer_is_sliding(il) for il in range(7)] == [True] * 5 + [False] + [True]
    assert c.layer_rope(0) == (10000.0, 1.0)  # sliding layers: local base, no scaling
    assert c.layer_rope(5) == (1e6, pytest.approx(1 / 8))
    assert c.attn_scale == pytest.approx(1 / 4)


@pytest.mark.parametrize("key", ["embedding_length", "block_count", "attention.head_count",
                                 "feed_forward_length", "attention.layer_norm_rms_epsilon"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_missing_key(files, arch, key):
    with pytest.raises(ConfigError, match=f"{arch}.{key}"):
        ModelConfig.from_gguf(fake(files[arch], drop=[f"{arch}.{key}"]))


def test_missing_architecture(files):
    with pytest.raises(ConfigError, match="general.architecture"):
        ModelConfig.from_gguf(fake(files["llama"], drop=["general.architecture"]))


def test_wrong_key_type(files):
    with pytest.raises(ConfigError, match="llama.embedding_length"):
        ModelConfig.from_gguf(fake(files["llama"], set_={"llama.embedding_length": "64"}))


def test_unsupported_arch(files):
    with pytest.raises(UnsupportedError, match="gpt2"):
        ModelConfig.from_gguf(fake(files["llama"], set_={"general.architecture": "gpt2"}))


def test_unsupported_rope_scaling(files):
    with pytest.raises(UnsupportedError, match="yarn"):
        ModelConfig.from_gguf(fake(files["llama"], set_={"llama.rope.scaling.type": "yarn"}))


def test_bad_head_counts(files):
    with pytest.raises(ConfigError, match="head_count_kv"):
        ModelConfig.from_gguf(fake(files["llama"], set_={"llama.attention.head_count_kv": 3}))


def test_wrong_tensor_shape(files):
    f = files["llama"]
    tensors = dict(f.tensors)
    info = tensors["blk.1.attn_q.weight"]
    tensors["blk.1.attn_q.weight"] = dataclasses.replace(info, shape=(32, 64), ne=(64, 32))
    with pytest.raises(ConfigError, match="blk.1.attn_q.weight"):
        ModelConfig.from_gguf(fake(f, tensors=tensors))


def test_missing_tensor(files):
    f = files["gemma3"]
    tensors = {k: v for k, v in f.tensors.items() if k != "blk.2.attn_k_norm.weight"}
    with pytest.raises(ConfigError, match="blk.2.attn_k_norm.weight"):
        ModelConfig.from_gguf(fake(f, tensors=tensors))


def test_vocab_mismatch(files):
    f = files["llama"]
    with pytest.raises(ConfigError, match="tokenizer.ggml.tokens"):
        ModelConfig.from_gguf(fake(f, set_={"tokenizer.ggml.tokens": ["a"] * 10}))


def test_default_model(default_model):
    with GGUFFile(default_model) as f:
        c = ModelConfig.from_gguf(f)
    assert (c.arch, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == ("gemma3", 640, 18, 4, 1, 256)
    assert c.vocab_size == 262144 and c.hidden_dim == 2048
    assert c.sliding_window == 512 and c.sliding_window_pattern == 6
    assert [il for il in range(18) if not c.layer_is_sliding(il)] == [5, 11, 17]
    assert c.rope_theta == 1e6 and c.rope_theta_local == 10000.0 and c.rope_freq_scale == 1.0
    assert c.tied_output and c.qk_norm and c.post_norms and c.rope_style == ROPE_NEOX
    assert c.embed_scale == pytest.approx(math.sqrt(640)) and c.attn_scale == pytest.approx(1 / 16)
    assert c.norm_eps == pytest.approx(1e-6) and c.final_logit_softcap == 0.0


# --- architectures and what is refused -----------------------------------------------------------

@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("config_archs")
    paths = {
        "llama3": make_model(d / "llama3.gguf", arch="llama", qtype=GGMLType.F16, rope_freqs=True),
        "qwen2": make_model(d / "qwen2.gguf", arch="qwen2", qtype=GGMLType.Q8_0),
        "qwen3": make_model(d / "qwen3.gguf", arch="qwen3", qtype=GGMLType.Q8_0),
        "phi3": make_model(d / "phi3.gguf", arch="phi3", qtype=GGMLType.Q8_0),
    }
    files = {k: GGUFFile(p) for k, p in paths.items()}
    yield files
    for f in files.values():
        f.close()


def test_new_architectures(arch_files):
    from realm.config import ROPE_FACTORS_FREQS, ROPE_FACTORS_LONG_SHORT

    c = ModelConfig.from_gguf(arch_files["llama3"])
    assert c.rope_factors == ROPE_FACTORS_FREQS and c.rope_style == ROPE_NORM
    assert c.rope_factors_tensor(4096) == "rope_freqs.weight"
    c = ModelConfig.from_gguf(arch_files["qwen2"])
    assert c.qkv_bias and not c.qk_norm and c.rope_style == ROPE_NEOX and not c.fused_qkv
    assert c.bias_source(1, "attn_k") == ("blk.1.attn_k.bias", 0, 32) and c.bias_source(1, "ffn_up") is None
    c = ModelConfig.from_gguf(arch_files["qwen3"])
    assert c.qk_norm and not c.qkv_bias and not c.post_norms and c.rope_style == ROPE_NEOX
    assert c.embed_scale == 1.0 and c.activation == ACT_SILU
    c = ModelConfig.from_gguf(arch_files["phi3"])
    assert c.fused_qkv and c.fused_gate_up and c.rope_style == ROPE_NEOX
    assert c.rope_factors == ROPE_FACTORS_LONG_SHORT and c.rope_orig_ctx == 64
    assert c.rope_attn_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(64)))
    assert c.rope_factors_tensor(64) == "rope_factors_short.weight"
    assert c.rope_factors_tensor(65) == "rope_factors_long.weight"
    assert c.matrix_source(0, "attn_k") == ("blk.0.attn_qkv.weight", 64, 96)
    assert c.matrix_source(0, "ffn_up") == ("blk.0.ffn_up.weight", 128, 256)
    assert c.sliding_window == 0


@pytest.mark.parametrize("arch", ["falcon", "mamba", "gemma2", "qwen2moe", "phi2"])
def test_other_architecture_refused(files, arch):
    md = {k.replace("llama.", f"{arch}.", 1): v for k, v in files["llama"].metadata.items()}
    md["general.architecture"] = arch
    with pytest.raises(UnsupportedError, match=f"architecture '{arch}' is not supported"):
        ModelConfig.from_gguf(SimpleNamespace(metadata=md, tensors=dict(files["llama"].tensors)))


@pytest.mark.parametrize("name", ["rope_freqs.weight", "blk.0.attn_q.bias", "blk.1.ffn_up.bias", "output.bias",
                                  "blk.0.attn_rot_embd"])
def test_ignored_tensor_refused(files, name):
    """A tensor the forward pass would not read is refused by name (gemma3 has no rope factors;
    ffn/output biases and a bias on one layer only are not implemented)."""
    f = files["gemma3"] if name == "rope_freqs.weight" else files["llama"]
    tensors = dict(f.tensors)
    tensors[name] = dataclasses.replace(f.tensors["output_norm.weight"], name=name)
    with pytest.raises(UnsupportedError, match=name.replace(".", r"\.")):
        ModelConfig.from_gguf(fake(f, tensors=tensors))


def test_unsupported_tensor_type_refused(files):
    f = files["llama"]
    tensors = dict(f.tensors)
    tensors["blk.0.ffn_up.weight"] = dataclasses.replace(tensors["blk.0.ffn_up.weight"], ggml_type=GGMLType.IQ2_XXS)
    with pytest.raises(UnsupportedError, match="blk.0.ffn_up.weight.*IQ2_XXS"):
        ModelConfig.from_gguf(fake(f, tensors=tensors))


@pytest.mark.parametrize("key,value,match", [
    ("llama.expert_count", 8, "expert_count"),
    ("llama.attn_logit_softcapping", 50.0, "attn_logit_softcapping"),
    ("llama.attention.causal", False, "attention.causal"),
    ("llama.rope.scaling.type", "yarn", "yarn"),
    ("llama.rope.scaling.type", "su", "'su'"),
])
def test_unimplemented_metadata_refused(files, key, value, match):
    with pytest.raises((UnsupportedError, ConfigError), match=match):
        ModelConfig.from_gguf(fake(files["llama"], set_={key: value}))


def test_rope_scaling_factor_without_type_is_linear(files):
    """llama.cpp: a missing rope.scaling.type means linear, so the factor applies; type none ignores it."""
    c = ModelConfig.from_gguf(fake(files["llama"], set_={"llama.rope.scaling.factor": 4.0}))
    assert c.rope_freq_scale == pytest.approx(0.25)
    c = ModelConfig.from_gguf(fake(files["llama"], set_={"llama.rope.scaling.factor": 4.0,
                                                         "llama.rope.scaling.type": "none"}))
    assert c.rope_freq_scale == 1.0


def test_llama_sliding_window_ignored_like_llama_cpp(files, caplog):
    with caplog.at_level("WARNING"):
        c = ModelConfig.from_gguf(fake(files["llama"], set_={"llama.attention.sliding_window": 4096}))
    assert c.sliding_window == 0 and "sliding_window is ignored" in caplog.text


def test_missing_fused_part(arch_files):
    f = arch_files["phi3"]
    tensors = {k: v for k, v in f.tensors.items() if k != "rope_factors_short.weight"}
    with pytest.raises(ConfigError, match="rope_factors_short.weight"):
        ModelConfig.from_gguf(fake(f, tensors=tensors))
    tensors = dict(f.tensors)
    info = tensors["blk.1.attn_qkv.weight"]
    tensors["blk.1.attn_qkv.weight"] = dataclasses.replace(info, shape=(96, 64), ne=(64, 96))
    with pytest.raises(ConfigError, match="blk.1.attn_qkv.weight.*expected \\(128, 64\\)"):
        ModelConfig.from_gguf(fake(f, tensors=tensors))
