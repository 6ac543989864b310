"""The model metadata module (realm_meta.wasm) against its Python oracles: realm.gguf (header,
tensor table, every malformed file of the security corpus with the same message), realm.config +
the Python host's packing (ModelConfigABI bytes or the same error), on the default model, synthetic
models and llama.cpp's vocab files."""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import pytest

from realm.errors import ConfigError, GGUFError, RealmError, UnsupportedError
from realm.gguf import GGUFFile, GGUFValueType as VT
from realm.host.abi import Err, pack_model_config
from realm.host.meta import MetaModule, default_meta_path
from realm.quants import GGMLType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "security"))
import test_gguf_malformed as corpus  # noqa: E402  (its generators: the corpus, the mutator, the lying writer)
from test_gguf_malformed import Image, arr, gstr, kv, tinfo  # noqa: E402

pytestmark = pytest.mark.skipif(not default_meta_path().is_file(), reason="realm_meta.wasm not built")


def python_config(g: GGUFFile) -> tuple[bytes | None, int]:
    """What the Python host's realm_get_config answers: (bytes, 128) or (None, error code)."""
    from realm.config import ModelConfig

    try:
        return pack_model_config(ModelConfig.from_gguf(g)), 128
    except UnsupportedError as e:
        return str(e), int(Err.ERR_UNSUPPORTED)
    except (ConfigError, GGUFError) as e:
        return str(e), int(Err.ERR_BAD_GGUF)
    except Exception as e:  # the host's catch-all: ERR_INTERNAL
        return str(e), int(Err.ERR_INTERNAL)


def meta_config(m: MetaModule) -> tuple[bytes | str, int]:
    try:
        return m.config_bytes(), 128
    except UnsupportedError as e:
        return str(e), int(Err.ERR_UNSUPPORTED)
    except ConfigError as e:
        return str(e), int(Err.ERR_BAD_GGUF)
    except RealmError as e:
        return str(e), int(getattr(e, "code", 0) or 0)


def assert_same_model(path: Path, m: MetaModule | None = None) -> None:
    g = GGUFFile(path)
    m = m or MetaModule(path)
    got = m.tensors()
    want = [{"name": t.name, "ggml_type": int(t.ggml_type), "n_dims": len(t.ne),
             "ne": tuple(t.ne) + (1,) * (4 - len(t.ne)), "n_bytes": t.n_bytes, "offset": t.offset}
            for t in g.tensors.values()]
    assert got == want
    for key, value in g.metadata.items():
        if isinstance(value, str):
            assert m.get_string(key) == value, key
    py, py_code = python_config(g)
    rs, rs_code = meta_config(m)
    assert rs_code == py_code, (rs, py)
    if py_code == 128:
        assert rs == py
    elif py_code != Err.ERR_INTERNAL:
        assert rs == py  # the same message


# -- the header -----------------------------------------------------------------------------------

def test_default_model(default_model):
    m = MetaModule(default_model)
    assert_same_model(default_model, m)
    assert m.get_string("general.architecture") == "gemma3"
    assert m.get_string("no.such.key") is None
    assert m.memory_size < 64 << 20
    assert m.file_reads < 64  # the header in ~1 MiB reads, not one per field


def test_valid_corpus_file_and_every_type_id(tmp_path):
    from realm.quants import block_size_and_bytes

    path = tmp_path / "valid.gguf"
    path.write_bytes(corpus.VALID)
    assert_same_model(path)
    # the module's type table is realm.quants': every known id opens, every unknown id fails the same
    for t in range(64):
        data = corpus.with_tensors(tinfo("w", (256,), t, 0), data=b"\0" * 2048)
        p = tmp_path / f"t{t}.gguf"
        p.write_bytes(data)
        try:
            GGUFFile(data)
        except GGUFError as e:
            with pytest.raises(GGUFError) as info:
                MetaModule(p)
            assert str(info.value) == str(e)
        else:
            bs, ts = block_size_and_bytes(GGMLType(t))
            assert MetaModule(p).tensors()[0]["n_bytes"] == 256 // bs * ts


@pytest.mark.parametrize("name,data,expect", corpus.CORPUS, ids=[c[0] for c in corpus.CORPUS])
def test_malformed_corpus_same_error(tmp_path, name, data, expect):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError) as want:
        GGUFFile(data)
    with pytest.raises(GGUFError) as got:
        MetaModule(path)
    assert str(got.value) == str(want.value)
    assert (got.value.field, got.value.offset) == (want.value.field, want.value.offset)


def test_mutations_same_verdict(tmp_path):
    """Random mutations of the valid file: accepted by both with the same tensor table, or rejected
    by both with the same message."""
    rng = random.Random(1234)
    path = tmp_path / "m.gguf"
    n = len(corpus.VALID)
    for _ in range(300):
        ops = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["flip", "truncate", "insert", "delete", "u64", "u32"])
            if kind == "flip":
                ops.append((kind, rng.randrange(n), rng.randrange(8)))
            elif kind == "truncate":
                ops.append((kind, rng.randrange(n + 1)))
            elif kind == "insert":
                ops.append((kind, rng.randrange(n + 1), rng.randbytes(rng.randint(1, 16))))
            elif kind == "delete":
                ops.append((kind, rng.randrange(n), rng.randint(1, 16)))
            elif kind == "u64":
                ops.append((kind, rng.randrange(n - 8), rng.choice(corpus.EXTREME_U64)))
            else:
                ops.append((kind, rng.randrange(n - 4), rng.choice(corpus.EXTREME_U32)))
        data = corpus.mutate(corpus.VALID, ops)
        path.write_bytes(data)
        try:
            g = GGUFFile(data)
        except GGUFError as e:
            with pytest.raises(GGUFError) as info:
                MetaModule(path)
            assert str(info.value) == str(e), ops
            continue
        got = [(t["name"], t["offset"], t["n_bytes"]) for t in MetaModule(path).tensors()]
        assert got == [(t.name, t.offset, t.n_bytes) for t in g.tensors.values()], ops


def test_count_bombs_stay_small(tmp_path):
    """Counts from the file are bounded by the bytes present before anything is allocated."""
    for name in ("tensor_count_u64_max", "kv_count_1e9", "string_array_1e9", "array_count_1e9_u8",
                 "array_nested_count_bomb", "key_length_2_63", "n_elements_overflow"):
        data = dict((c[0], c[1]) for c in corpus.CORPUS)[name]
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        m = None
        with pytest.raises(GGUFError):
            m = MetaModule(path, memory_limit=4 << 20)
        assert m is None


def test_memory_limit_is_clean(default_model):
    from realm.errors import GuestError

    with pytest.raises(GuestError):
        MetaModule(default_model, memory_limit=2 << 20)


def test_file_read_bounds_and_bad_exports(tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(corpus.VALID)
    m = MetaModule(path)
    size = m.memory_size
    assert m.call("meta_tensor_entry", 0, size - 8) == Err.ERR_BOUNDS
    assert m.call("meta_tensor_entry", 99, 8) == Err.ERR_NO_TENSOR
    assert m.call("meta_tensor_entry", -1, 8) == Err.ERR_NO_TENSOR
    assert m.call("meta_tensor_name", 0, 8, -1) == Err.ERR_BOUNDS
    assert m.call("meta_tensor_name", 0, 8, 0) == Err.ERR_TOO_SMALL
    assert m.call("meta_last_size") == len("norm.weight")
    assert m.call("meta_get_string", size - 2, 100, 8, 8) == Err.ERR_BOUNDS
    assert m.call("meta_open", -5) == Err.ERR_BAD_ARG
    assert m.call("meta_tensor_count") == Err.ERR_NOT_INIT  # the failed open closed the model


# -- the config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,qtype,extra", [
    ("llama", GGMLType.Q4_0, {}),
    ("llama", GGMLType.Q8_0, {"tied": True, "rope_dim": 8}),
    ("llama", GGMLType.F32, {"rope_scaling": 4.0}),
    ("gemma3", GGMLType.Q4_K, {}),
    ("gemma3", GGMLType.Q6_K, {"sliding_window": 0, "tied": False}),
    ("llama", GGMLType.Q8_0, {"rope_freqs": True}),
    ("llama", GGMLType.Q8_0, {"output_bias": True, "metadata": {"attention.sliding_window": 64}}),
    ("qwen2", GGMLType.Q4_0, {}),
    ("qwen2", GGMLType.Q8_0, {"qkv_bias": False, "tied": True}),
    ("qwen3", GGMLType.Q4_K, {}),
    ("phi3", GGMLType.Q8_0, {}),
    ("phi3", GGMLType.Q4_0, {"rope_long_short": False, "fused_qkv": False}),
])
def test_synthetic_models(tmp_path, arch, qtype, extra):
    from synth import make_model

    bs = 256 if qtype in (GGMLType.Q4_K, GGMLType.Q6_K) else 32
    path = make_model(tmp_path / "m.gguf", arch=arch, qtype=qtype, dim=bs, hidden_dim=bs, n_heads=2,
                      n_kv_heads=1, head_dim=bs // 2, **extra)
    assert_same_model(path)


def test_vocab_files(vocab):
    """Every llama.cpp vocab GGUF: the same tensor table (none), strings and config verdict."""
    files = sorted(vocab.glob("ggml-vocab-*.gguf"))
    assert len(files) >= 19
    for path in files:
        assert_same_model(path)


def _val(vtype: int, value) -> bytes:
    if vtype == VT.STRING:
        return gstr(value)
    if vtype == VT.ARRAY:
        et, items = value
        return arr(et, [_val(et, x) for x in items])
    fmt = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
           VT.FLOAT32: "<f", VT.BOOL: "<B", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}[vtype]
    return struct.pack(fmt, value)


def config_image(arch: str = "llama", over: dict | None = None, tensors: dict | None = None,
                 drop: tuple[str, ...] = ()) -> bytes:
    """A header-only model: metadata (key -> (type, value)) and F32 tensors (name -> ne) of zeros."""
    a = arch if isinstance(arch, str) else "x"
    md = {
        "general.architecture": (VT.STRING, arch) if isinstance(arch, str) else arch,
        f"{a}.embedding_length": (VT.UINT32, 64), f"{a}.block_count": (VT.UINT32, 1),
        f"{a}.attention.head_count": (VT.UINT32, 4), f"{a}.attention.head_count_kv": (VT.UINT32, 2),
        f"{a}.feed_forward_length": (VT.UINT32, 96), f"{a}.attention.layer_norm_rms_epsilon": (VT.FLOAT32, 1e-5),
        f"{a}.context_length": (VT.UINT32, 512), f"{a}.rope.freq_base": (VT.FLOAT32, 10000.0),
        "tokenizer.ggml.tokens": (VT.ARRAY, (VT.STRING, [f"t{i}" for i in range(8)])),
    }
    md.update(over or {})
    for k in drop:
        md.pop(k, None)
    ts = {"token_embd.weight": (64, 8), "output_norm.weight": (64,), "output.weight": (64, 8),
          "blk.0.attn_norm.weight": (64,), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (64, 32),
          "blk.0.attn_v.weight": (64, 32), "blk.0.attn_output.weight": (64, 64), "blk.0.ffn_norm.weight": (64,),
          "blk.0.ffn_gate.weight": (64, 96), "blk.0.ffn_up.weight": (64, 96), "blk.0.ffn_down.weight": (96, 64)}
    if arch == "gemma3":
        ts.update({"blk.0.attn_q_norm.weight": (16,), "blk.0.attn_k_norm.weight": (16,),
                   "blk.0.post_attention_norm.weight": (64,), "blk.0.post_ffw_norm.weight": (64,)})
    ts.update(tensors or {})
    infos, offset = [], 0
    for name, ne in ts.items():
        if ne is None:
            continue
        infos.append(tinfo(name, ne, int(GGMLType.F32), offset))
        n = 4
        for d in ne:
            n *= d
        offset += -(-n // 32) * 32
    kvs = [kv(k, t, _val(t, v)) for k, (t, v) in md.items()]
    return bytes(Image(kvs=kvs, tensors=infos, data=b"\0" * offset))


CONFIG_CASES = {
    "llama": {},
    "gemma3": {"arch": "gemma3", "over": {"gemma3.attention.sliding_window": (VT.UINT32, 512)}},
    "gemma3_no_window": {"arch": "gemma3"},
    "tied": {"tensors": {"output.weight": None}},
    "unsupported_arch": {"arch": "mamba"},
    "arch_not_string": {"arch": (VT.UINT32, 7)},
    "arch_missing": {"drop": ("general.architecture",)},
    "missing_dim": {"drop": ("llama.embedding_length",)},
    "missing_eps": {"drop": ("llama.attention.layer_norm_rms_epsilon",)},
    "dim_is_string": {"over": {"llama.embedding_length": (VT.STRING, "64")}},
    "dim_is_bool": {"over": {"llama.embedding_length": (VT.BOOL, True)}},
    "dim_is_float": {"over": {"llama.embedding_length": (VT.FLOAT32, 64.0)}},
    "dim_is_array": {"over": {"llama.embedding_length": (VT.ARRAY, (VT.UINT32, [64]))}},
    "dim_is_str_array": {"over": {"llama.embedding_length": (VT.ARRAY, (VT.STRING, ["64"]))}},
    "dim_zero": {"over": {"llama.embedding_length": (VT.UINT32, 0)}},
    "dim_negative": {"over": {"llama.embedding_length": (VT.INT32, -64)}},
    "dim_u64": {"over": {"llama.embedding_length": (VT.UINT64, 64)}},
    "eps_int": {"over": {"llama.attention.layer_norm_rms_epsilon": (VT.UINT8, 0)}},
    "eps_f64": {"over": {"llama.attention.layer_norm_rms_epsilon": (VT.FLOAT64, 1e-6)}},
    "eps_nan": {"over": {"llama.attention.layer_norm_rms_epsilon": (VT.FLOAT32, float("nan"))}},
    "eps_inf": {"over": {"llama.attention.layer_norm_rms_epsilon": (VT.FLOAT64, float("-inf"))}},
    "theta_f64_too_big_for_f32": {"over": {"llama.rope.freq_base": (VT.FLOAT64, 1e300)}},
    "context_over_u32": {"over": {"llama.context_length": (VT.UINT64, 2**40)}},
    "context_default": {"drop": ("llama.context_length",)},
    "kv_not_dividing": {"over": {"llama.attention.head_count_kv": (VT.UINT32, 3)}},
    "kv_zero": {"over": {"llama.attention.head_count_kv": (VT.UINT32, 0)}},
    "value_length_differs": {"over": {"llama.attention.value_length": (VT.UINT32, 8)}},
    "head_dim_odd": {"over": {"llama.attention.key_length": (VT.UINT32, 15)}},
    "rope_dim_too_big": {"over": {"llama.rope.dimension_count": (VT.UINT32, 32)}},
    "rope_dim_partial": {"over": {"llama.rope.dimension_count": (VT.UINT32, 8)}},
    "rope_linear": {"over": {"llama.rope.scaling.type": (VT.STRING, "linear"),
                             "llama.rope.scaling.factor": (VT.FLOAT32, 8.0)}},
    "rope_linear_no_factor": {"over": {"llama.rope.scaling.type": (VT.STRING, "linear")}},
    "rope_linear_factor_0": {"over": {"llama.rope.scaling.type": (VT.STRING, "linear"),
                                      "llama.rope.scaling.factor": (VT.FLOAT32, 0.0)}},
    "rope_none": {"over": {"llama.rope.scaling.type": (VT.STRING, "none")}},
    "rope_yarn": {"over": {"llama.rope.scaling.type": (VT.STRING, "yarn")}},
    "rope_type_int": {"over": {"llama.rope.scaling.type": (VT.INT32, -3)}},
    "rope_type_quote": {"over": {"llama.rope.scaling.type": (VT.STRING, "it's \"odd\"\n")}},
    "softcap": {"over": {"llama.final_logit_softcapping": (VT.FLOAT32, 30.0)}},
    "tokens_mismatch": {"over": {"tokenizer.ggml.tokens": (VT.ARRAY, (VT.STRING, ["a", "b"]))}},
    "tokens_numeric": {"over": {"tokenizer.ggml.tokens": (VT.ARRAY, (VT.INT32, list(range(8))))}},
    "tokens_string": {"over": {"tokenizer.ggml.tokens": (VT.STRING, "abcdéfgh")}},
    "tokens_scalar": {"over": {"tokenizer.ggml.tokens": (VT.UINT32, 8)}},
    "no_embeddings": {"tensors": {"token_embd.weight": None}},
    "missing_layer_tensor": {"tensors": {"blk.0.ffn_up.weight": None}},
    "wrong_shape": {"tensors": {"blk.0.attn_k.weight": (64, 16)}},
    "wrong_rank": {"tensors": {"output_norm.weight": (64, 1)}},
    "layers_many": {"over": {"llama.block_count": (VT.UINT64, 3000)}},
    "gemma_missing_qk_norm": {"arch": "gemma3", "tensors": {"blk.0.attn_k_norm.weight": None}},
    # ABI v2: architectures, RoPE factors, biases, refusals of what the forward pass would ignore
    "qwen2_bias": {"arch": "qwen2", "tensors": {"blk.0.attn_q.bias": (64,), "blk.0.attn_k.bias": (32,),
                                                "blk.0.attn_v.bias": (32,)}},
    "qwen2_bias_partial": {"arch": "qwen2", "tensors": {"blk.0.attn_k.bias": (32,)}},
    "qwen2_bias_wrong_shape": {"arch": "qwen2", "tensors": {"blk.0.attn_q.bias": (16,)}},
    "qwen3_missing_norm": {"arch": "qwen3"},
    "qwen3": {"arch": "qwen3", "tensors": {"blk.0.attn_q_norm.weight": (16,), "blk.0.attn_k_norm.weight": (16,)}},
    "output_bias": {"tensors": {"blk.0.attn_output.bias": (64,)}},
    "phi3_fused": {"arch": "phi3", "tensors": {"blk.0.attn_q.weight": None, "blk.0.attn_k.weight": None,
                                               "blk.0.attn_v.weight": None, "blk.0.attn_qkv.weight": (64, 128),
                                               "blk.0.attn_qkv.bias": (128,), "blk.0.ffn_gate.weight": None,
                                               "blk.0.ffn_up.weight": (64, 192)}},
    "phi3_unfused_gate": {"arch": "phi3"},
    "phi3_longrope": {"arch": "phi3", "over": {"phi3.rope.scaling.attn_factor": (VT.FLOAT32, 1.25),
                                               "phi3.rope.scaling.original_context_length": (VT.UINT32, 128)},
                      "tensors": {"blk.0.ffn_gate.weight": None, "blk.0.ffn_up.weight": (64, 192),
                                  "rope_factors_long.weight": (8,), "rope_factors_short.weight": (8,)}},
    "phi3_longrope_short_missing": {"arch": "phi3", "tensors": {
        "blk.0.ffn_gate.weight": None, "blk.0.ffn_up.weight": (64, 192), "rope_factors_long.weight": (8,)}},
    "rope_freqs": {"tensors": {"rope_freqs.weight": (8,)}},
    "rope_freqs_wrong_shape": {"tensors": {"rope_freqs.weight": (16,)}},
    "rope_freqs_longrope_llama": {"over": {"llama.rope.scaling.type": (VT.STRING, "longrope")},
                                  "tensors": {"rope_freqs.weight": (8,)}},
    "llama_longrope": {"over": {"llama.rope.scaling.type": (VT.STRING, "longrope")},
                       "tensors": {"rope_factors_long.weight": (8,), "rope_factors_short.weight": (8,)}},
    "qwen2_rope_freqs_refused": {"arch": "qwen2", "tensors": {"rope_freqs.weight": (8,)}},
    "extra_tensors": {"tensors": {"zzz.weight": (4,), "aaa.weight": (4,)}},
    "factor_no_type": {"over": {"llama.rope.scaling.factor": (VT.FLOAT32, 2.0)}},
    "factor_none_type": {"over": {"llama.rope.scaling.type": (VT.STRING, "none"),
                                  "llama.rope.scaling.factor": (VT.FLOAT32, 2.0)}},
    "factor_negative": {"over": {"llama.rope.scaling.factor": (VT.FLOAT32, -2.0)}},
    "factor_string": {"over": {"llama.rope.scaling.factor": (VT.STRING, "2")}},
    "attn_factor_zero": {"over": {"llama.rope.scaling.attn_factor": (VT.FLOAT32, 0.0)}},
    "orig_ctx_negative": {"over": {"llama.rope.scaling.original_context_length": (VT.INT32, -1)}},
    "orig_ctx_over_u32": {"over": {"llama.rope.scaling.original_context_length": (VT.UINT64, 2**33)}},
    "experts": {"over": {"llama.expert_count": (VT.UINT32, 8)}},
    "experts_zero": {"over": {"llama.expert_count": (VT.UINT32, 0), "llama.expert_used_count": (VT.UINT32, 0)}},
    "experts_bool": {"over": {"llama.expert_count": (VT.BOOL, False)}},
    "attn_softcap": {"over": {"llama.attn_logit_softcapping": (VT.FLOAT32, 50.0)}},
    "attn_softcap_int_zero": {"over": {"llama.attn_logit_softcapping": (VT.INT32, 0)}},
    "non_causal": {"over": {"llama.attention.causal": (VT.BOOL, False)}},
    "causal_int": {"over": {"llama.attention.causal": (VT.UINT8, 1)}},
    "llama_window_ignored": {"over": {"llama.attention.sliding_window": (VT.UINT32, 128)}},
    "llama_window_float": {"over": {"llama.attention.sliding_window": (VT.FLOAT32, 128.0)}},
    "rope_type_array": {"over": {"llama.rope.scaling.type": (VT.ARRAY, (VT.STRING, ["linear"]))}},
    "rope_type_str_array2": {"over": {"llama.rope.scaling.type": (VT.ARRAY, (VT.STRING, ["a'b", "x"]))}},
    "rope_type_num_array": {"over": {"llama.rope.scaling.type": (VT.ARRAY, (VT.UINT32, [1, 2]))}},
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_cases(tmp_path, case):
    data = config_image(**CONFIG_CASES[case])
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    g = GGUFFile(data)
    py, py_code = python_config(g)
    rs, rs_code = meta_config(MetaModule(path))
    assert rs_code == py_code, (case, rs, py)
    if py_code != Err.ERR_INTERNAL:
        assert rs == py, case


def test_config_layer_count_bomb_fails_fast(tmp_path):
    """block_count 2^60 with one layer present: the first missing tensor is named at once (the
    Python oracle builds the whole expected-tensor table first, so it is not run here)."""
    path = tmp_path / "bomb.gguf"
    path.write_bytes(config_image(over={"llama.block_count": (VT.UINT64, 2**60)}))
    with pytest.raises(ConfigError, match=r"^tensor 'blk.1.attn_norm.weight' is missing$"):
        MetaModule(path).config_bytes()


def test_config_cases_cover_every_outcome():
    codes = set()
    for case in CONFIG_CASES.values():
        codes.add(python_config(GGUFFile(config_image(**case)))[1])
    assert codes == {128, int(Err.ERR_BAD_GGUF), int(Err.ERR_UNSUPPORTED), int(Err.ERR_INTERNAL)}
