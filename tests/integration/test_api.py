"""The Python API end to end: realm.load, tokenize/detokenize, engines, streaming generation."""

from __future__ import annotations

import numpy as np
import pytest

import realm
from realm.errors import RealmError


def test_vocab_only_model_tokenizes_but_cannot_run(vocab):
    with realm.load(vocab / "ggml-vocab-llama-spm.gguf") as model:
        ids = model.tokenize("Hello world")
        assert ids[0] == model.tokenizer.bos_id and len(ids) > 2
        assert model.detokenize(ids[1:]) == "Hello world"
        assert model.detokenize(ids) == " Hello world"  # llama.cpp's detokenizer keeps the space after BOS
        assert model.config is None
        with pytest.raises(RealmError, match="cannot run"):
            model.engine("numba")


@pytest.fixture(scope="module")
def model(default_model):
    with realm.load() as m:
        yield m


def test_default_model_tokenizes_the_paris_prompt(model):
    assert model.tokenize("What is the capital of France?") == [2, 3689, 563, 506, 5279, 529, 7001, 236881]
    ids = model.tokenize("<start_of_turn>user\nHi<end_of_turn>", special=True)
    assert 105 in ids and 106 in ids
    assert 105 not in model.tokenize("<start_of_turn>user", special=False)


def test_generate_streams_with_stats(model):
    gen = model.generate("What is the capital of France?", engine="numba", max_tokens=12)
    pieces = list(gen)
    assert len(pieces) > 1 and "".join(pieces) == gen.text
    assert "Paris" in gen.text
    s = gen.stats
    assert s.prompt_tokens == 8 and s.generated_tokens == len(gen.tokens) > 0
    assert s.prefill_tokens_per_second > 0 and s.load_seconds > 0
    assert s.stop_reason in ("eos", "max_tokens")


def test_engine_eval_all_logits_and_reset(model):
    eng = model.engine("numba", n_ctx=64)
    ids = model.tokenize("The quick brown fox")
    all_logits = eng.eval(ids, all_logits=True)
    assert all_logits.shape == (len(ids), model.config.vocab_size) and all_logits.dtype == np.float32
    assert eng.n_past == len(ids)
    eng.reset()
    last = eng.eval(ids)
    np.testing.assert_allclose(last, all_logits[-1], rtol=0, atol=1e-4)
    with pytest.raises(RealmError):
        eng.eval([model.config.vocab_size + 5])
    eng.close()


def test_seeded_sampling_reproduces(model):
    kw = dict(engine="numba", max_tokens=8, temperature=0.9, seed=1234)
    a = model.generate("Once upon a time", **kw)
    b = model.generate("Once upon a time", **kw)
    assert "".join(a) == "".join(b) and a.tokens == b.tokens
