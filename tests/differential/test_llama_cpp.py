"""realm's reference forward against llama.cpp itself (llama-cpp-python 0.3.36, built from source).

llama.cpp is the independent implementation realm's architectures are meant to agree with. On
f32 weights with an f32 KV cache it computes the same function as realm's reference engine up to
float rounding, so every position's logits are compared; on quantized weights llama.cpp also rounds
the activations to 8-bit blocks (realm evaluates the quantized weights with f32 activations), so
there only the share of positions whose top token agrees is bounded, not required to be all.

The tests skip when `llama_cpp` is not importable (it is a from-source build, the `llamacpp` extra);
`REALM_REQUIRE_LLAMA_CPP=1` (set by .ci/run, which builds it) turns the skip into a failure.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from realm.api import load
from realm.quants import GGMLType
from synth import make_model

if os.environ.get("REALM_REQUIRE_LLAMA_CPP") == "1":
    import llama_cpp
else:
    llama_cpp = pytest.importorskip("llama_cpp")

N_CTX = 256  # llama.cpp pads a context to a multiple of 256: use one it keeps as given
N_TOKENS = 56
GGML_TYPE_F32 = 0

# (architecture options, vocabulary file or None for synth's tiny SPM vocabulary)
VARIANTS = {
    "llama": (dict(arch="llama"), None),
    "llama-rope-freqs": (dict(arch="llama", rope_freqs=True), None),  # Llama 3.x frequency factors
    "llama-mha": (dict(arch="llama", n_kv_heads=4), None),
    "qwen2": (dict(arch="qwen2"), None),
    "qwen3": (dict(arch="qwen3"), None),
    # llama.cpp's phi3 vocabulary loader needs phi-3's special tokens: borrow its vocabulary file
    "phi3": (dict(arch="phi3"), "ggml-vocab-phi-3.gguf"),
    "phi3-split-qkv": (dict(arch="phi3", fused_qkv=False), "ggml-vocab-phi-3.gguf"),
    "gemma3": (dict(arch="gemma3"), None),
}
# max |logit difference| allowed on f32 weights (logits here are of order 10). gemma3: llama.cpp
# evaluates GELU through an f16 table (measured 3.1e-3); the others agree to float rounding
# (measured <= 1e-5).
F32_TOLERANCE = {"gemma3": 1e-2}
F32_DEFAULT_TOLERANCE = 2e-4


@pytest.fixture(scope="module", autouse=True)
def no_extra_buffer_types():
    # llama.cpp's AMX buffer type crashes on these Xeons (see realm.bench_llamacpp)
    from realm.bench_llamacpp import no_extra_buffer_types as plain_cpu_buffers

    with plain_cpu_buffers():
        yield


def _llama_cpp_logits(path, tokens) -> np.ndarray:
    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, logits_all=True, verbose=False, n_threads=2,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        assert llm.n_ctx() == N_CTX
        llm.eval(list(map(int, tokens)))
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def _case(tmp_path, vocab_dir, variant, qtype):
    options, vocab_file = VARIANTS[variant]
    vocab_gguf = None if vocab_file is None else vocab_dir / vocab_file
    if qtype == GGMLType.Q4_K:  # rows of whole 256-element super-blocks
        options = dict(options, dim=256, hidden_dim=512, head_dim=64)
    path = make_model(tmp_path / f"{variant}-{qtype.name}.gguf", qtype=qtype, context_length=N_CTX,
                      vocab_gguf=vocab_gguf, seed=7, **options)
    model = load(path)
    rng = np.random.default_rng(11)
    tokens = [model.tokenizer.bos_id or 1] + list(rng.integers(3, model.config.vocab_size, N_TOKENS - 1))
    ours = model.engine("reference", n_ctx=N_CTX).eval(tokens, all_logits=True)
    return ours, _llama_cpp_logits(path, tokens)


@pytest.mark.parametrize("variant", VARIANTS)
def test_f32_weights_agree_with_llama_cpp(tmp_path, vocab, variant):
    ours, theirs = _case(tmp_path, vocab, variant, GGMLType.F32)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= F32_TOLERANCE.get(variant, F32_DEFAULT_TOLERANCE), f"{variant}: max |logit diff| {diff:.3g}"
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("variant", ["llama-rope-freqs", "qwen2", "gemma3"])
def test_quantized_weights_mostly_agree_with_llama_cpp(tmp_path, vocab, variant, qtype):
    ours, theirs = _case(tmp_path, vocab, variant, qtype)
    agree = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    # llama.cpp's 8-bit activations move near-ties: measured 53-56 of 56 positions on these files
    assert agree >= int(0.85 * N_TOKENS), f"{variant}/{qtype.name}: top-1 agrees at {agree} of {N_TOKENS}"
    # and the logits stay close on the scale of the quantization error
    assert float(np.abs(ours - theirs).max()) < 1.5
