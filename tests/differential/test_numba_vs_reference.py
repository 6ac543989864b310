"""Numba engine vs the NumPy f32 reference: logits at every position, both eval paths, greedy tokens.

Synthetic llama / gemma3 models (tests/synth.py) in every supported quant type, then the default model.
Both engines read the same quantized bytes; the reference dequantizes them with realm.quants.dequantize_ref
(itself tested bit-exact against gguf), so differences come only from f32 arithmetic order.
"""

from __future__ import annotations


import numba
import numpy as np
import pytest

from realm.config import ModelConfig
from realm.engines.numba import NumbaEngine
from realm.engines.reference import ReferenceEngine
from realm.errors import RealmError
from realm.gguf import GGUFFile
from realm.quants import GGMLType
from realm.tokenizer import Tokenizer

pytest.importorskip("gguf")
from compare import (TOLERANCE, assert_default_model_agrees, assert_greedy_equal,  # noqa: E402
                     assert_logits_close, types_for)
from synth import differential_kwargs, make_model  # noqa: E402


PROMPT = [1, 5, 9, 100, 200, 7, 3, 4, 5, 6, 7, 8]  # 12 > sliding window 4 of the gemma3 models
N_PREFILL = 5  # decode path: prefill this many, then one token at a time
N_GREEDY = 8
N_GREEDY_SYNTH = 4


# --- synthetic models ------------------------------------------------------------------------------


def _threads(arch: str, qtype: GGMLType) -> int:
    parallel = {("llama", GGMLType.Q4_K), ("gemma3", GGMLType.Q8_0), ("gemma3", GGMLType.Q6_K)}
    return min(2, numba.config.NUMBA_NUM_THREADS) if (arch, qtype) in parallel else 1


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


@pytest.mark.parametrize("qtype", types_for("numba-vs-reference"), ids=lambda t: t.name)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_synthetic_model(synth_dir, arch, qtype):
    path = make_model(synth_dir / f"{arch}-{qtype.name}.gguf", arch=arch, qtype=qtype, seed=int(qtype),
                      **differential_kwargs(arch, qtype))
    tol = TOLERANCE["numba-vs-reference", qtype]
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        ref = ReferenceEngine(f, config, n_ctx=64)
        # One thread keeps these tiny models fast on a busy machine; a few cases run the parallel paths.
        eng = NumbaEngine(f, config, n_ctx=64, threads=_threads(arch, qtype))
        expect = ref.eval(PROMPT, all_logits=True)  # (T, vocab)
        assert np.abs(expect).max() > 1.0, "degenerate synthetic model: logits all tiny"
        assert expect.argmax(axis=1).tolist() != [expect[0].argmax()] * len(PROMPT), "argmax never changes"

        assert_logits_close(expect, eng.eval(PROMPT, all_logits=True), tol, f"{arch}/{qtype.name} prefill")
        assert eng.n_past == len(PROMPT)

        eng.reset()
        steps = [eng.eval(PROMPT[:N_PREFILL], all_logits=True)]
        steps += [eng.eval([t], all_logits=True) for t in PROMPT[N_PREFILL:]]
        assert_logits_close(expect, np.concatenate(steps), tol, f"{arch}/{qtype.name} prefill+decode")

        assert_greedy_equal(ref, eng, PROMPT, N_GREEDY_SYNTH, tol, f"{arch}/{qtype.name}")


def test_parallel_attention_path(synth_dir, monkeypatch):
    """Heads spread over threads (normally only for long contexts) give the reference's logits too."""
    import realm.engines.numba as numba_engine

    monkeypatch.setattr(numba_engine, "_PARALLEL_ATTENTION_WORK", 0)
    path = make_model(synth_dir / "parallel.gguf", arch="gemma3", qtype=GGMLType.Q8_0, seed=7)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        expect = ReferenceEngine(f, config, n_ctx=64).eval(PROMPT, all_logits=True)
        eng = NumbaEngine(f, config, n_ctx=64, threads=min(2, numba.config.NUMBA_NUM_THREADS))
        steps = [eng.eval(PROMPT[:N_PREFILL], all_logits=True)]
        steps += [eng.eval([t], all_logits=True) for t in PROMPT[N_PREFILL:]]
        assert_logits_close(expect, np.concatenate(steps), TOLERANCE["numba-vs-reference", GGMLType.Q8_0], "parallel attention")


@pytest.mark.parametrize("qtype", [GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q8_0], ids=lambda t: t.name)
def test_blas_prompt_path(synth_dir, monkeypatch, qtype):
    """Prompts long enough for the dequantize + BLAS path, and the int8 decode copies (both on by
    default), give the reference's logits; forced on for a short prompt too."""
    import realm.engines.numba as numba_engine

    path = make_model(synth_dir / f"blas-{qtype.name}.gguf", arch="gemma3", qtype=qtype, seed=11,
                      **differential_kwargs("gemma3", qtype))
    tol = TOLERANCE["numba-vs-reference", qtype]
    prompt = [1] + [(7 * i + 3) % 290 + 2 for i in range(numba_engine._BLAS_MIN_TOKENS + 5)]
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        expect = ReferenceEngine(f, config, n_ctx=128).eval(prompt, all_logits=True)
        eng = NumbaEngine(f, config, n_ctx=128, threads=min(2, numba.config.NUMBA_NUM_THREADS))
        assert eng.packed_bytes > 0 or qtype == GGMLType.Q8_0
        assert_logits_close(expect, eng.eval(prompt, all_logits=True), tol, f"{qtype.name} BLAS prompt")
        monkeypatch.setattr(numba_engine, "_BLAS_MIN_TOKENS", 2)
        eng.reset()
        steps = [eng.eval(prompt[:N_PREFILL], all_logits=True)]
        steps += [eng.eval([t], all_logits=True) for t in prompt[N_PREFILL:20]]
        assert_logits_close(expect[:20], np.concatenate(steps), tol, f"{qtype.name} short BLAS prompt + int8 decode")


def test_sliding_window_matters(synth_dir):
    """The test models really exercise the window: a huge window changes the late logits."""
    import dataclasses

    path = make_model(synth_dir / "window.gguf", arch="gemma3", qtype=GGMLType.F32)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        assert config.sliding_window < len(PROMPT)
        windowed = NumbaEngine(f, config, n_ctx=64).eval(PROMPT, all_logits=True)
        wide = dataclasses.replace(config, sliding_window=1000)
        full = NumbaEngine(f, wide, n_ctx=64).eval(PROMPT, all_logits=True)
        assert np.allclose(windowed[:config.sliding_window], full[:config.sliding_window], atol=1e-5)
        assert np.abs(windowed[-1] - full[-1]).max() > 1e-2


@pytest.mark.parametrize("engine_cls", [ReferenceEngine, NumbaEngine])
def test_errors_and_stats(synth_dir, engine_cls):
    path = make_model(synth_dir / "errors.gguf", arch="llama", qtype=GGMLType.Q8_0)
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        eng = engine_cls(f, config, n_ctx=8)
        with pytest.raises(RealmError, match=str(config.vocab_size)):
            eng.eval([1, config.vocab_size])
        with pytest.raises(RealmError, match="-1"):
            eng.eval([-1])
        with pytest.raises(RealmError, match="at least one"):
            eng.eval([])
        with pytest.raises(RealmError, match="integers"):
            eng.eval([1.5])
        assert eng.n_past == 0
        eng.eval([1, 2, 3, 4, 5, 6])
        eng.eval([7])
        with pytest.raises(RealmError, match="context overflow"):
            eng.eval([1, 2])
        assert eng.n_past == 7
        s = eng.stats()
        assert s["prefill_tokens"] == 6 and s["decode_tokens"] == 1 and s["prefill_s"] > 0
        eng.reset()
        assert eng.n_past == 0 and eng.eval([1]).shape == (config.vocab_size,)
        eng.close()


# --- the default model ------------------------------------------------------------------------------

PROMPTS = ["What is the capital of France?", "The quick brown fox", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def default_engines(default_model):
    f = GGUFFile(default_model)
    config = ModelConfig.from_gguf(f)
    encode = Tokenizer.from_gguf(f).encode
    ref = ReferenceEngine(f, config, n_ctx=64)  # dequantizes ~250 MB to ~1 GB of f32, once
    eng = NumbaEngine(f, config, n_ctx=64)
    yield ref, eng, encode
    f.close()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_default_model(default_engines, prompt):
    ref, eng, encode = default_engines
    assert_default_model_agrees(ref, eng, encode(prompt), "numba-vs-reference", N_GREEDY, f"default model {prompt!r}")
