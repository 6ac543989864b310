"""Every architecture realm runs, on synthetic GGUFs (tests/synth.py) written with gguf.GGUFWriter.

For each variant (Llama 3.x RoPE factors, Mistral-style GQA llama, llama with biases, qwen2, qwen3,
phi3 with LongRoPE long and short factors, phi3 with separate q/k/v):
- the NumPy reference against an independent f32 forward written here from llama.cpp's formulas,
  reading the file with gguf-py's GGUFReader and dequantizer (F32/F16/Q8_0 weights);
- Numba against the reference at every position, prefill and decode (tolerances of tests/compare.py);
- the guest against Numba, logits at every position and greedy tokens.
Each feature is also shown to matter (turning it off changes the logits), so none is a no-op.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from realm.config import ROPE_FACTORS_LONG_SHORT, ROPE_NEOX, ModelConfig
from realm.engines.numba import NumbaEngine
from realm.engines.reference import ReferenceEngine, rope
from realm.gguf import GGUFFile
from realm.host.runtime import default_guest_path
from realm.quants import GGMLType

gguf = pytest.importorskip("gguf")
from compare import TOLERANCE, assert_greedy_equal, assert_logits_close  # noqa: E402
from synth import kquant_dims, make_model  # noqa: E402

PROMPT = [1, 5, 9, 100, 200, 7, 3, 4, 5, 6, 7, 8]
N_PREFILL = 5
N_CTX = 48  # phi3 files: original context 64 -> short factors; LONG_CTX -> long factors
LONG_CTX = 96

VARIANTS = {
    "llama3-rope-freqs": dict(arch="llama", rope_freqs=True),
    "mistral-gqa": dict(arch="llama", n_heads=8, n_kv_heads=2, head_dim=8, rope_base=1e6,
                        metadata={"attention.sliding_window": 4}),  # llama.cpp ignores the window
    "llama-biases": dict(arch="llama", qkv_bias=True, output_bias=True),
    "qwen2": dict(arch="qwen2"),
    "qwen3": dict(arch="qwen3"),
    "phi3": dict(arch="phi3"),
    "phi3-split-qkv-bias": dict(arch="phi3", fused_qkv=False, qkv_bias=True),
}
QTYPES = (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_K)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("archs")


def _model(synth_dir, variant: str, qtype: GGMLType, **extra):
    kwargs = dict(VARIANTS[variant], **extra)
    if qtype in (GGMLType.Q4_K,):
        kwargs.update({k: v for k, v in kquant_dims().items() if k not in kwargs})
        kwargs["head_dim"] = 256 // kwargs["n_heads"]  # q_dim a whole number of k-quant blocks
    name = f"{variant}-{qtype.name}-{len(extra)}.gguf"
    return make_model(synth_dir / name, qtype=qtype, seed=int(qtype) + len(variant), **kwargs)


# --- an independent f32 forward: gguf-py reads and dequantizes, formulas from llama.cpp -------------

def _ggml_rope(x, pos, base, n_rot, style, factors, scale, mscale):
    """ggml_rope_cache_init + rotation (ggml-cpu ops.cpp) for one position, f32 like ggml:
    theta_i = pos * base^(-2i/n_rot) computed by repeated multiplication, divided by freq_factors[i],
    times freq_scale; cos and sin times attn_factor."""
    out = x.copy()  # (n_heads, head_dim)
    theta_scale = np.float32(base ** (-2.0 / n_rot))
    theta = np.float32(pos)
    for i in range(n_rot // 2):
        ff = np.float32(1.0) if factors is None else np.float32(factors[i])
        angle = np.float32(scale) * (theta / ff)
        c, s = np.float32(math.cos(angle) * mscale), np.float32(math.sin(angle) * mscale)
        a, b = (i, i + n_rot // 2) if style == ROPE_NEOX else (2 * i, 2 * i + 1)
        x0, x1 = x[:, a].copy(), x[:, b].copy()
        out[:, a] = x0 * c - x1 * s
        out[:, b] = x0 * s + x1 * c
        theta = np.float32(theta * theta_scale)
    return out


def independent_forward(path, arch: str, ids: list[int], n_ctx: int) -> np.ndarray:
    """Logits (T, vocab) of `ids` from position 0, straight from the file: names, shapes and the
    forward pass as llama.cpp's src/models/{llama,qwen2,qwen3,phi3}.cpp build them."""
    r = gguf.GGUFReader(str(path))
    md = {k: f.contents() for k, f in r.fields.items()}
    W = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        W[t.name] = a.reshape([int(n) for n in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)
    g = lambda k, d=None: md.get(f"{arch}.{k}", d)  # noqa: E731
    n_embd, n_head = g("embedding_length"), g("attention.head_count")
    n_kv, hd = g("attention.head_count_kv"), g("attention.key_length")
    eps, base, n_rot = g("attention.layer_norm_rms_epsilon"), g("rope.freq_base"), g("rope.dimension_count")
    style = 0 if arch == "llama" else ROPE_NEOX  # llama_model_rope_type: LLAMA norm, QWEN2/QWEN3/PHI3 neox
    mscale = g("rope.scaling.attn_factor", 1.0)
    factors = W.get("rope_freqs.weight")
    if "rope_factors_long.weight" in W:  # get_rope_factors: long iff n_ctx > n_ctx_orig_yarn
        long = n_ctx > g("rope.scaling.original_context_length", g("context_length"))
        factors = W["rope_factors_long.weight" if long else "rope_factors_short.weight"]

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    T = len(ids)
    x = W["token_embd.weight"][ids]  # (T, n_embd)
    out_w = W.get("output.weight", W["token_embd.weight"])
    q_dim, kv_dim = n_head * hd, n_kv * hd
    for il in range(g("block_count")):
        p = f"blk.{il}."
        h = norm(x, W[p + "attn_norm.weight"])
        if p + "attn_qkv.weight" in W:
            qkv = h @ W[p + "attn_qkv.weight"].T + W.get(p + "attn_qkv.bias", 0)
            q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        else:
            q = h @ W[p + "attn_q.weight"].T + W.get(p + "attn_q.bias", 0)
            k = h @ W[p + "attn_k.weight"].T + W.get(p + "attn_k.bias", 0)
            v = h @ W[p + "attn_v.weight"].T + W.get(p + "attn_v.bias", 0)
        q, k, v = q.reshape(T, n_head, hd), k.reshape(T, n_kv, hd), v.reshape(T, n_kv, hd)
        if p + "attn_q_norm.weight" in W:
            q, k = norm(q, W[p + "attn_q_norm.weight"]), norm(k, W[p + "attn_k_norm.weight"])
        q = np.stack([_ggml_rope(q[t], t, base, n_rot, style, factors, 1.0, mscale) for t in range(T)])
        k = np.stack([_ggml_rope(k[t], t, base, n_rot, style, factors, 1.0, mscale) for t in range(T)])
        att_out = np.zeros((T, n_head, hd), np.float32)
        for hh in range(n_head):
            kvh = hh // (n_head // n_kv)
            s = q[:, hh] @ k[:, kvh].T / np.float32(math.sqrt(hd))  # (T, T)
            s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            att_out[:, hh] = (e / e.sum(axis=1, keepdims=True)) @ v[:, kvh]
        x = x + att_out.reshape(T, q_dim) @ W[p + "attn_output.weight"].T + W.get(p + "attn_output.bias", 0)
        h = norm(x, W[p + "ffn_norm.weight"])
        up = h @ W[p + "ffn_up.weight"].T
        if p + "ffn_gate.weight" in W:
            gate = h @ W[p + "ffn_gate.weight"].T
        else:  # phi3: LLM_FFN_SWIGLU on the fused up: silu(first half) * second half
            gate, up = up[:, :up.shape[1] // 2], up[:, up.shape[1] // 2:]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ W[p + "ffn_down.weight"].T
    return norm(x, W["output_norm.weight"]) @ out_w.T


def test_rope_matches_ggml_formula():
    """The reference's RoPE with frequency factors and attention factor is ggml's, both styles."""
    rng = np.random.default_rng(0)
    factors = np.geomspace(1.0, 8.0, 8).astype(np.float32)  # (rope_dim/2,)
    x = rng.standard_normal((3, 2, 16)).astype(np.float32)  # (T, n_heads, head_dim)
    positions = np.array([0, 7, 40], np.float64)
    for style in (0, ROPE_NEOX):
        got = rope(x, positions, 5e5, 0.5, 16, style, factors, 1.19)
        for t, pos in enumerate(positions):
            want = _ggml_rope(x[t], pos, 5e5, 16, style, factors, 0.5, 1.19)
            np.testing.assert_allclose(got[t], want, atol=2e-5, rtol=1e-5)
        plain = rope(x, positions, 5e5, 0.5, 16, style)
        assert np.abs(plain[1:] - got[1:]).max() > 0.1  # the factors change the rotation


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_vs_independent_forward(synth_dir, variant):
    for qtype in (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0):
        path = _model(synth_dir, variant, qtype)
        with GGUFFile(path) as f:
            config = ModelConfig.from_gguf(f)
            for n_ctx in ((N_CTX, LONG_CTX) if config.rope_factors == ROPE_FACTORS_LONG_SHORT else (N_CTX,)):
                got = ReferenceEngine(f, config, n_ctx=n_ctx).eval(PROMPT, all_logits=True)
                want = independent_forward(path, config.arch, PROMPT, n_ctx)
                assert np.abs(want).max() > 1.0
                # measured <= 8.6e-6 (f32 summation order only)
                assert_logits_close(want, got, 1e-4, f"{variant}/{qtype.name} n_ctx {n_ctx} vs independent")


def _off(config: ModelConfig, variant: str) -> ModelConfig | None:
    """The config with the variant's distinguishing feature turned off (to show it matters)."""
    off = {"llama3-rope-freqs": dict(rope_factors=0), "llama-biases": dict(qkv_bias=False, attn_output_bias=False),
           "qwen2": dict(qkv_bias=False), "qwen3": dict(qk_norm=False),
           "phi3": dict(rope_factors=0, rope_attn_factor=1.0), "mistral-gqa": dict(rope_theta=1e4)}.get(variant)
    return dataclasses.replace(config, **off) if off else None


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_numba_vs_reference(synth_dir, variant, qtype):
    path = _model(synth_dir, variant, qtype)
    tol = TOLERANCE["numba-vs-reference", qtype]
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        ref = ReferenceEngine(f, config, n_ctx=N_CTX)
        eng = NumbaEngine(f, config, n_ctx=N_CTX, threads=1)
        expect = ref.eval(PROMPT, all_logits=True)  # (T, vocab)
        assert np.abs(expect).max() > 1.0 and len(set(expect.argmax(axis=1).tolist())) > 1
        assert_logits_close(expect, eng.eval(PROMPT, all_logits=True), tol, f"{variant}/{qtype.name} prefill")
        eng.reset()
        steps = [eng.eval(PROMPT[:N_PREFILL], all_logits=True)] + [eng.eval([t], all_logits=True)
                                                                   for t in PROMPT[N_PREFILL:]]
        assert_logits_close(expect, np.concatenate(steps), tol, f"{variant}/{qtype.name} prefill+decode")
        off = _off(config, variant)
        if off is not None and qtype == GGMLType.F32:
            changed = NumbaEngine(f, off, n_ctx=N_CTX).eval(PROMPT, all_logits=True)
            assert np.abs(changed - expect).max() > 0.1, f"{variant}: the feature does not change the logits"


def test_phi3_long_factors_with_long_context(synth_dir):
    """n_ctx above the original context switches to the long factors in both engines (and it matters)."""
    path = _model(synth_dir, "phi3", GGMLType.Q8_0)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        assert config.rope_orig_ctx == 64 and config.rope_factors_tensor(LONG_CTX) == "rope_factors_long.weight"
        expect = ReferenceEngine(f, config, n_ctx=LONG_CTX).eval(PROMPT, all_logits=True)
        got = NumbaEngine(f, config, n_ctx=LONG_CTX, threads=1).eval(PROMPT, all_logits=True)
        assert_logits_close(expect, got, TOLERANCE["numba-vs-reference", GGMLType.Q8_0], "phi3 long")
        short = ReferenceEngine(f, config, n_ctx=N_CTX).eval(PROMPT, all_logits=True)
        assert np.abs(short - expect).max() > 0.1


# --- the guest --------------------------------------------------------------------------------------

needs_guest = pytest.mark.skipif(not default_guest_path().exists(), reason="the guest is not built")


@needs_guest
@pytest.mark.parametrize("qtype", (GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_K), ids=lambda t: t.name)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wasm_vs_numba(synth_dir, variant, qtype):
    from realm.engines.wasm import WasmEngine
    from realm.host.store import ModelStore

    path = _model(synth_dir, variant, qtype)
    tol = TOLERANCE["wasm-vs-numba", qtype]
    n_ctxs = (N_CTX, LONG_CTX) if variant == "phi3" and qtype == GGMLType.Q8_0 else (N_CTX,)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        for n_ctx in n_ctxs:
            ref = NumbaEngine(f, config, n_ctx=n_ctx, threads=1)
            eng = WasmEngine(f, config, n_ctx=n_ctx, store=ModelStore(), timeout=60)
            try:
                expect = ref.eval(PROMPT, all_logits=True)
                assert_logits_close(expect, eng.eval(PROMPT, all_logits=True), tol, f"{variant}/{qtype.name} prefill")
                eng.reset()
                last = np.stack([eng.eval([t]) for t in PROMPT])  # decode path, one token at a time
                assert_logits_close(expect, last, tol, f"{variant}/{qtype.name} decode")
                assert_greedy_equal(ref, eng, PROMPT, 8, tol, f"{variant}/{qtype.name} n_ctx {n_ctx}")
            finally:
                eng.close()
                ref.close()


@needs_guest
def test_wasm_shards_fused_matrices(synth_dir):
    """Two instances (a shard multiplies row parts) cut fused matrices as the one instance does."""
    from realm.engines.wasm import WasmEngine
    from realm.host.store import ModelStore

    path = _model(synth_dir, "phi3", GGMLType.Q8_0)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        one = WasmEngine(f, config, n_ctx=N_CTX, store=ModelStore(), threads=1)
        two = WasmEngine(f, config, n_ctx=N_CTX, store=ModelStore(), threads=2)
        try:
            a = one.eval(PROMPT, all_logits=True)
            b = two.eval(PROMPT, all_logits=True)
            assert np.array_equal(a, b)
        finally:
            one.close()
            two.close()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_rope_factors_refused(synth_dir, bad):
    """A zero, negative or non-finite frequency factor is a clear error in every engine, not NaN logits."""
    from realm.errors import ConfigError, GuestError

    factors = np.geomspace(1.0, 8.0, 8).astype(np.float32)
    factors[3] = bad
    path = make_model(synth_dir / f"bad-factors-{bad}.gguf", arch="llama", qtype=GGMLType.Q8_0,
                      extra_tensors={"rope_freqs.weight": factors})
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        for engine in (ReferenceEngine, NumbaEngine):
            with pytest.raises(ConfigError, match="rope_freqs.weight"):
                engine(f, config, n_ctx=N_CTX)
        if default_guest_path().exists():
            from realm.engines.wasm import WasmEngine
            from realm.host.store import ModelStore

            with pytest.raises(GuestError, match="BAD_CONFIG"):
                WasmEngine(f, config, n_ctx=N_CTX, store=ModelStore(), threads=1)


@needs_guest
@pytest.mark.parametrize("word,value", [(0, 1), (20, 1 << 7), (22, 3), (24, 0.0), (24, float("nan"))])
def test_guest_refuses_bad_config_words(synth_dir, monkeypatch, word, value):
    """The guest checks the version 2 words itself (an old host's version 1 struct, unknown flag bits,
    an unknown rope_factors kind, a non-positive attention factor): ERR_BAD_CONFIG, no trap."""
    import struct

    from realm.engines.wasm import WasmEngine
    from realm.errors import GuestError
    from realm.host import abi
    from realm.host.store import ModelStore

    good = abi.pack_model_config

    def patched(cfg):
        data = bytearray(good(cfg))
        data[4 * word:4 * word + 4] = struct.pack("<f" if isinstance(value, float) else "<I", value)
        return bytes(data)

    monkeypatch.setattr(abi, "pack_model_config", patched)
    path = _model(synth_dir, "phi3", GGMLType.Q8_0)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        with pytest.raises(GuestError, match="BAD_CONFIG"):
            WasmEngine(f, config, n_ctx=N_CTX, store=ModelStore(), threads=1)
