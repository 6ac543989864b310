"""The generation loop with a scripted engine: streaming, stop tokens, stop strings, limits, stats."""

from __future__ import annotations

import numpy as np
import pytest

from realm.errors import RealmError
from realm.generate import Generation, _held_back
from realm.sampling import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(vocab):
    from realm.gguf import GGUFFile
    from realm.tokenizer import Tokenizer

    return Tokenizer.from_gguf(GGUFFile(vocab / "ggml-vocab-llama-spm.gguf"))


class ScriptedEngine:
    """Returns logits whose argmax is the next id of a script; records what it was asked."""

    def __init__(self, script: list[int], vocab_size: int, n_ctx: int = 64):
        self.script, self.vocab_size, self.n_ctx = list(script), vocab_size, n_ctx
        self.n_past, self.calls = 0, []

    def eval(self, ids, all_logits=False):
        self.calls.append(list(ids))
        self.n_past += len(ids)
        logits = np.zeros(self.vocab_size, np.float32)
        logits[self.script.pop(0) if self.script else 0] = 10.0
        return logits

    def reset(self):
        self.n_past = 0

    def stats(self):
        return {"scripted": True}

    def close(self):
        pass


def run(tokenizer, text_out: str, max_tokens=50, stop=(), extra=(), n_ctx=64):
    # the llama-spm vocab adds a space prefix, so " x" is what the model streams for "x"
    assert text_out.startswith(" ")
    script = tokenizer.encode(text_out[1:], add_bos=False) + list(extra)
    engine = ScriptedEngine(script, tokenizer.vocab_size, n_ctx)
    gen = Generation(engine, tokenizer, tokenizer.encode("Hi"), max_tokens=max_tokens,
                     sampling=SamplingParams(), stop=stop)
    pieces = list(gen)
    assert "".join(pieces) == gen.text
    return gen, pieces, engine


def test_streams_until_eos(tokenizer):
    gen, pieces, engine = run(tokenizer, " The answer is forty two.", extra=[tokenizer.eos_id])
    assert gen.text == " The answer is forty two."
    assert len(pieces) > 3  # streamed, not all at once
    assert gen.stats.stop_reason == "eos"
    assert gen.stats.generated_tokens == len(gen.tokens) and tokenizer.eos_id not in gen.tokens
    assert engine.calls[0] == tokenizer.encode("Hi")  # one prefill, then one token per eval
    assert all(len(c) == 1 for c in engine.calls[1:])


def test_max_tokens(tokenizer):
    gen, _, engine = run(tokenizer, " one two three four five six", max_tokens=3)
    assert gen.stats.generated_tokens == 3 and gen.stats.stop_reason == "max_tokens"
    assert len(engine.calls) == 3  # the last sampled token is never evaluated


def test_stop_string_is_cut_and_never_streamed(tokenizer):
    gen, pieces, _ = run(tokenizer, " Paragraph one.\n\nParagraph two.", stop=["\n\n"])
    assert gen.text == " Paragraph one."
    assert gen.stats.stop_reason == "stop_string"
    assert not any("\n" in p for p in pieces)


def test_stop_string_spanning_tokens(tokenizer):
    gen, _, _ = run(tokenizer, " alpha beta gamma delta", stop=["ta gam"])
    assert gen.text == " alpha be"


def test_context_full_stops(tokenizer):
    gen, _, _ = run(tokenizer, " a b c d e f g h i j k l m n o p", n_ctx=6)
    assert gen.stats.stop_reason == "context"


def test_prompt_longer_than_context_is_an_error(tokenizer):
    engine = ScriptedEngine([], tokenizer.vocab_size, n_ctx=3)
    with pytest.raises(RealmError, match="context"):
        Generation(engine, tokenizer, tokenizer.encode("a long prompt of many words"), max_tokens=4,
                   sampling=SamplingParams())


def test_multibyte_characters_are_never_split(tokenizer):
    gen, pieces, _ = run(tokenizer, " naïve café 東京 🙂", extra=[tokenizer.eos_id])
    assert gen.text == " naïve café 東京 🙂"
    assert all("\ufffd" not in p for p in pieces)


def test_held_back():
    assert _held_back("abc", ["cd"]) == 1
    assert _held_back("abc", ["xyz"]) == 0
    assert _held_back("ab", ["abc", "b"]) == 2
