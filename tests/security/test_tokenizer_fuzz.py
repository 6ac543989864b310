"""Hostile input for realm.tokenizer: arbitrary text, arbitrary ids and malformed metadata raise only
TokenizerError/UnsupportedError, and SPM with byte fallback round-trips text losslessly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realm.errors import TokenizerError, UnsupportedError
from realm.gguf import GGUFFile
from realm.tokenizer import StreamDecoder, Tokenizer

import vocab_vectors as vv  # tests/ is on sys.path

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def llama(vocab) -> Tokenizer:
    return vv.load(vocab, "llama-spm")


@pytest.fixture(scope="module")
def qwen(vocab) -> Tokenizer:
    return vv.load(vocab, "qwen2")


@pytest.fixture(scope="module")
def gemma(default_model) -> Tokenizer:
    with GGUFFile(default_model) as g:
        return Tokenizer.from_gguf(g)


# '▁' (U+2581) is how SPM escapes a space, so a literal one decodes as a space: the one lossy character.
chars = st.characters(exclude_categories=("Cs",), exclude_characters="\u2581")
pieces = st.one_of(
    st.text(chars, max_size=40),
    st.text(st.characters(max_codepoint=0x1F), max_size=10),  # control characters
    st.integers(1, 400).map(lambda k: " " * k),  # long runs of spaces
    st.sampled_from(["\n", "\n\n\n", "\t\t", "\r\n", "  ", "<s>", "</s>", "<unk>", "<bos>", "<eos>",
                     "<start_of_turn>", "<end_of_turn>", "<unused7>", "[multimodal]", "<0x41>", "\ufeff",
                     "🦙", "👨‍👩‍👧", "\U0010ffff", "\x00", "é", "日本語"]),
)
texts = st.lists(pieces, max_size=8).map("".join)


def spm_decoded(tok: Tokenizer, text: str, add_bos: bool, special: bool) -> str:
    """What llama.cpp's detokenizer returns for its own SPM tokenization of `text`: every fragment between
    matched special tokens got a space prefix, and only the very first piece loses it again."""
    parts, first_is_text = [], False
    for k, item in enumerate(tok._partition(text, special) if text else []):
        if isinstance(item, int):
            parts.append(tok.token_text(item) if special or not tok.is_control(item) else "")
        else:
            parts.append(" " + item)
            first_is_text = first_is_text or k == 0
    out = "".join(parts)
    if first_is_text and not add_bos:
        out = out[1:]
    return ("<s>" if add_bos and special else "") + out


@FUZZ
@given(text=texts, add_bos=st.booleans())
def test_llama_spm_round_trip(llama, text, add_bos):
    ids = llama.encode(text, add_bos=add_bos)
    assert all(0 <= i < llama.vocab_size for i in ids)
    assert llama.decode(ids) == spm_decoded(llama, text, add_bos, False)
    if not add_bos:
        assert llama.decode(ids) == text  # one fragment (no user-defined tokens): lossless
    parsed = llama.encode(text, add_bos=add_bos, special=True)
    assert llama.decode(parsed, special=True) == spm_decoded(llama, text, add_bos, True)


@FUZZ
@given(text=texts, add_bos=st.booleans())
def test_default_model_round_trip(gemma, text, add_bos):
    ids = gemma.encode(text, add_bos=add_bos)
    assert gemma.decode(ids) == text
    parsed = gemma.encode(text, add_bos=add_bos, special=True)
    assert gemma.decode(parsed, special=True) == ("<bos>" if add_bos else "") + text


@FUZZ
@given(text=texts | st.text(chars, max_size=100), add_bos=st.booleans())
def test_qwen2_bpe_round_trip(qwen, text, add_bos):
    ids = qwen.encode(text, add_bos=add_bos)  # byte-level BPE is lossless, '▁' included
    assert qwen.decode(ids) == text
    parsed = qwen.encode(text, special=True)
    assert qwen.decode(parsed, special=True) == text


def test_huge_inputs(llama, gemma, qwen):
    for text in (" " * 20000, "a" * 20000, "🦙" * 3000, "<" * 5000 + "<s>" * 500, "\n" * 10000, "1" * 9999):
        for tok in (llama, gemma, qwen):
            assert tok.decode(tok.encode(text, add_bos=False)) == text


@FUZZ
@given(text=st.text(max_size=200))  # anything, lone surrogates included
def test_encode_any_str(llama, text):
    ids = llama.encode(text, special=True)
    assert isinstance(llama.decode(ids), str)


@FUZZ
@given(data=st.data(), special=st.booleans())
def test_decode_random_ids(gemma, data, special):
    ids = data.draw(st.lists(st.integers(0, gemma.vocab_size - 1), max_size=64))
    text = gemma.decode(ids, special=special)
    sd = StreamDecoder(gemma, special=special)
    streamed = "".join(sd.feed(i) for i in ids) + sd.flush()
    assert streamed == text


@FUZZ
@given(ids=st.lists(st.integers(0, 31999), max_size=32), special=st.booleans())
def test_decode_random_ids_llama(llama, ids, special):
    assert isinstance(llama.decode(ids, special=special), str)


@FUZZ
@given(ids=st.lists(st.one_of(st.integers(-2**63, 2**63), st.floats(), st.text(max_size=3), st.none()),
                    min_size=1, max_size=8))
def test_decode_bad_ids_raise_tokenizer_error(llama, ids):
    try:
        llama.decode(ids)
    except TokenizerError:
        return
    assert all(isinstance(i, int) and 0 <= i < llama.vocab_size for i in ids)


# -- malformed metadata --------------------------------------------------------------------------------

KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.add_space_prefix", "general.name", "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.pre", "tokenizer.ggml.merges"]

DELETE = object()
values = st.one_of(
    st.just(DELETE),
    st.none(),
    st.booleans(),
    st.integers(-2**64, 2**64),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["llama", "gpt2", "bert", "phi3", "", "qwen2", "llama-bpe", "default"]),
    st.just(["▁ a", "a a", "<s> a", " x", "", "x"]),
    st.lists(st.text(max_size=4), max_size=8),
    st.lists(st.one_of(st.text(max_size=3), st.integers(), st.floats(), st.none()), max_size=8),
    st.lists(st.integers(-10, 10), max_size=8).map(lambda v: np.asarray(v, np.int32)),
    st.lists(st.floats(width=32), max_size=8).map(lambda v: np.asarray(v, np.float32)),
    st.lists(st.integers(0, 2**64 - 1), max_size=8).map(lambda v: np.asarray(v, np.uint64)),
    st.lists(st.lists(st.integers(), max_size=3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


def base_md() -> dict:
    tokens = ["<unk>", "<s>", "</s>", "▁", "a", "▁a", "<0x41>", "<|im_end|>"]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.asarray([0, 0, 0, -1, -2, -0.5, 0, 0], np.float32),
        "tokenizer.ggml.token_type": np.asarray([2, 3, 3, 1, 1, 1, 6, 4], np.int32),
    }


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4),
       text=st.text(max_size=30), ids=st.lists(st.integers(-2, 10), max_size=8))
def test_malformed_metadata(edits, text, ids):
    md = base_md()
    for key, value in edits:
        if value is DELETE:
            md.pop(key, None)
        else:
            md[key] = value
    try:
        tok = Tokenizer.from_metadata(md)
    except (TokenizerError, UnsupportedError):
        return
    for special in (False, True):
        try:
            tok.encode(text, special=special)
        except TokenizerError:
            pass
        try:
            tok.decode(ids, special=special)
        except TokenizerError:
            pass


# -- streaming equals whole decoding, whatever the ids ------------------------------------------------

def _tricky_ids(tok: Tokenizer) -> list[int]:
    """Ids whose pieces hold spaces, apostrophes, clean-up punctuation or partial UTF-8."""
    out = []
    for i in range(tok.vocab_size):
        p = tok.piece_bytes(i, True)
        if p and (set(p) & set(b" '?!.,") or p[0] >= 0x80) and len(p) <= 4:
            out.append(i)
        if len(out) >= 3000:
            break
    return out


@pytest.fixture(scope="module")
def streamed(vocab):
    return {name: (vv.load(vocab, name), _tricky_ids(vv.load(vocab, name)))
            for name in ("llama-bpe", "gemma-4", "llama-spm", "bert-bge")}


@FUZZ
@given(data=st.data(), name=st.sampled_from(["llama-bpe", "gemma-4", "llama-spm", "bert-bge"]),
       special=st.booleans(), lstrip=st.booleans())
def test_stream_decoder_equals_decode(streamed, data, name, special, lstrip):
    tok, tricky = streamed[name]
    ids = data.draw(st.lists(st.one_of(st.sampled_from(tricky), st.integers(0, tok.vocab_size - 1)), max_size=30))
    sd = StreamDecoder(tok, special=special, lstrip_first=lstrip)
    pieces = [sd.feed(i) for i in ids] + [sd.flush()]
    whole = tok.decode(ids, special=special)
    if lstrip or not tok._lstrip_first:
        assert "".join(pieces) == whole
    else:  # without lstrip_first the first piece keeps the one space decode() strips (of "   ", say)
        assert "".join(pieces) in (whole, " " + whole)
