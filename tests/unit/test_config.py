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
