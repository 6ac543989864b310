"""realm.tokenizer against llama.cpp's tokenizer test vectors, the default model, and hand-built vocabularies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realm.errors import TokenizerError, UnsupportedError
from realm.gguf import GGUFFile
from realm.tokenizer import PRE_VALUES, StreamDecoder, Tokenizer, TokenType
from realm.tokenizer.decode import clean_spaces

import vocab_vectors as vv  # noqa: E402  (tests/ is on sys.path)

@pytest.fixture(scope="module")
def tok(vocab):
    """name -> the cached tokenizer of ggml-vocab-<name>.gguf."""
    return lambda name: vv.load(vocab, name)


# -- llama.cpp test vectors ---------------------------------------------------------------------------

def test_every_vocabulary_with_vectors_is_tested(vocab):
    """The vectors present are exactly the 15 tested below: a missing or a new one fails here."""
    present = sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab.glob("ggml-vocab-*.gguf.inp"))
    assert present == sorted(vv.WITH_VECTORS)
    without = sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in vocab.glob("ggml-vocab-*.gguf"))
    assert sorted(set(without) - set(present)) == sorted(vv.WITHOUT_VECTORS)


@pytest.mark.parametrize("name", vv.WITH_VECTORS)
def test_vectors_reproduced_exactly(vocab, tok, name):
    t = tok(name)
    cases = vv.read_vectors(vocab, name)
    assert len(cases) > 40
    bad = [(text, want, got) for text, want in cases if (got := t.encode(text, add_bos=False)) != want]
    assert not bad, f"{name}: {len(bad)}/{len(cases)} mismatches, first: {bad[0]!r}"


def _expected_decode(t: Tokenizer, text: str) -> str | None:
    """What llama.cpp's detokenizer gives back for the ids of `text` (no BOS), when it is derivable from
    the text: SPM and byte-level BPE are lossless, then clean_spaces applies; None for WPM (lowercased)."""
    if t.kind == "wpm":
        return None
    return clean_spaces(text.encode("utf-8")).decode("utf-8") if t.clean_spaces else text


@pytest.mark.parametrize("name", vv.WITH_VECTORS)
def test_vectors_decode(vocab, tok, name):
    """decode(ids) of every vector: the text itself where llama.cpp round-trips (no clean_spaces),
    the cleaned-up text otherwise; streaming gives the same text, piece by piece."""
    t = tok(name)
    exact = 0
    for text, want in vv.read_vectors(vocab, name):
        got = t.decode(want)
        expected = _expected_decode(t, text)
        if expected is not None:
            assert got == expected, (name, text)
            exact += got == text
        sd = StreamDecoder(t, lstrip_first=True)
        pieces = [sd.feed(i) for i in want] + [sd.flush()]
        assert "".join(pieces) == got, (name, text)
        if "\ufffd" not in got:
            assert all("\ufffd" not in p for p in pieces)  # never half a character
    if not t.clean_spaces and t.kind != "wpm":
        assert exact == len(vv.read_vectors(vocab, name))


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_spm_bos_keeps_the_leading_space(vocab, tok, name):
    """llama.cpp removes the encoder's space prefix only from the very first piece: after a BOS it stays."""
    t = tok(name)
    for text, want in vv.read_vectors(vocab, name):
        with_bos = t.encode(text)
        assert with_bos == [t.bos_id] + want
        assert t.decode(with_bos) == (" " + text if text else "")
        assert t.decode(with_bos, remove_special=True) == (" " + text if text else "")


def test_wpm_bert(tok):
    bert = tok("bert-bge")
    assert bert.kind == "wpm" and bert.clean_spaces
    ids = bert.encode("Hello, WORLD! Ünïcode 中文")
    assert ids[0] == bert.bos_id == 101 and ids[-1] == bert.sep_id == 102  # [CLS] ... [SEP]
    # lowercased, accents stripped, punctuation and CJK split off; pieces carry the '▁' word prefix
    assert [bert.token_text(i) for i in ids[1:-1]][:5] == ["▁hello", "▁,", "▁world", "▁!", "▁unicode"]
    assert bert.decode(ids) == " hello, world! unicode 中 文"  # clean_spaces joins " ," and " !"
    assert bert.encode("xqzjvkw\u00a0", add_bos=False) == bert.encode("xqzjvkw", add_bos=False)


@pytest.mark.parametrize("name, model", [("aquila", "bpe"), ("baichuan", "spm"), ("gpt-neox", "bpe")])
def test_vocabularies_without_vectors_load(vocab, tok, name, model, caplog):
    t = tok(name)
    assert t.kind == model
    text = "Hello world, 123 héllo!"
    ids = t.encode(text, add_bos=False)
    assert ids and t.decode(ids) == (_expected_decode(t, text) or "")
    if model == "bpe":  # no tokenizer.ggml.pre: llama.cpp's "default" pre-tokenizer, with a warning
        assert t.pre.pre == "default"


def test_ugm_vocabulary_is_refused_clearly(vocab):
    with GGUFFile(vocab / "ggml-vocab-nomic-bert-moe.gguf") as g:
        with pytest.raises(UnsupportedError, match="'t5'.*UGM"):
            Tokenizer.from_gguf(g)


def test_missing_pre_is_default_and_warned(vocab, caplog):
    with GGUFFile(vocab / "ggml-vocab-gpt-neox.gguf") as g, caplog.at_level("WARNING"):
        t = Tokenizer.from_gguf(g)
    assert t.pre.family == "default" and "tokenizer.ggml.pre is missing" in caplog.text


def test_bpe_special_tokens_and_flags(tok):
    llama3, qwen = tok("llama-bpe"), tok("qwen2")
    # llama-bpe adds BOS (<|begin_of_text|>) by default, qwen2 does not
    assert llama3.encode("Hi")[0] == 128000 and qwen.encode("Hi")[0] != qwen.bos_id
    text = "<|im_start|>user\nHi<|im_end|>\n"
    ids = qwen.encode(text, special=True)
    assert ids[0] == 151644 and 151645 in ids
    assert 151644 not in qwen.encode(text)
    assert qwen.decode(ids, special=True) == text and qwen.decode(ids) == "user\nHi\n"
    # clean_up_tokenization_spaces (llama3 only): " ," -> ",", " 's" -> "'s", " ' " -> "'"
    assert llama3.decode(llama3.encode("Hello , world . It 's ' ok", add_bos=False)) == "Hello, world. It's'ok"
    assert qwen.decode(qwen.encode("Hello , world .")) == "Hello , world ."


# -- end of generation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, texts", [
    ("llama-bpe", ["<|end_of_text|>", "<|eot_id|>"]),
    ("qwen2", ["<|endoftext|>", "<|im_end|>", "</s>"]),
    ("qwen35", ["<|endoftext|>", "<|im_end|>", "</s>"]),
    ("phi-3", ["<|endoftext|>", "<|end|>", "</s>"]),
    ("llama-spm", ["</s>"]),
    ("gemma-4", ["<eos>", "<turn|>", "<|tool_response>"]),  # and not its normal "</s>"
    ("command-r", ["<|END_OF_TURN_TOKEN|>", "<PAD>"]),  # EOS by key; "<PAD>" is a FIM pad text
    ("deepseek-llm", ["<｜end▁of▁sentence｜>"]),
    ("starcoder", ["<|endoftext|>", "<fim_pad>"]),
])
def test_stop_ids_are_llama_cpp_eog_set(tok, name, texts):
    t = tok(name)
    assert sorted(t.token_text(i) for i in t.stop_ids) == sorted(texts)
    assert all(t.is_control(i) and t.is_eog(i) for i in t.stop_ids)


def test_end_of_turn_ids(tok):
    assert tok("llama-bpe").eot_id == tok("llama-bpe").id_of("<|eot_id|>")
    assert tok("qwen2").eot_id == tok("qwen2").id_of("<|im_end|>")
    assert tok("phi-3").eot_id == tok("phi-3").id_of("<|end|>") == 32007


def test_stream_decoder_holds_back_what_clean_spaces_may_remove(tok):
    llama3 = tok("llama-bpe")
    ids = llama3.encode("Hello , world 's", add_bos=False)
    assert [llama3.token_text(i) for i in ids] == ["Hello", "Ġ,", "Ġworld", "Ġ'", "s"]
    sd = StreamDecoder(llama3)
    pieces = [sd.feed(i) for i in ids] + [sd.flush()]
    # " ," waits: the next piece decides (here: the clean-up removes the space); so do " '" and "s"
    assert pieces == ["Hello", "", ", world", "", "", "'s"]
    assert "".join(pieces) == llama3.decode(ids) == "Hello, world's"
    qwen = tok("qwen2")  # no clean_spaces: nothing is held back
    ids = qwen.encode("Hello , world 's", add_bos=False)
    sd = StreamDecoder(qwen)
    assert [sd.feed(i) for i in ids] == [qwen.decode([i]) for i in ids]


def test_stream_decoder_never_splits_a_character(tok):
    gemma4 = tok("gemma-4")  # SPM-style BPE with <0xNN> byte fallback
    text = "a\U0002a6b2b"
    ids = gemma4.encode(text, add_bos=False)
    assert sum(gemma4.token_type(i) == TokenType.BYTE for i in ids) == 4
    sd = StreamDecoder(gemma4)
    pieces = [sd.feed(i) for i in ids]
    assert pieces[1:4] == ["", "", ""] and "".join(pieces) + sd.flush() == text


def test_harmony_and_gemma4_end_of_generation_exceptions():
    """llama.cpp: "<|end|>" is no end of generation next to <|return|> and <|call|> (gpt-oss), and "</s>"
    is a normal token next to "<|tool_response>" (Gemma 4)."""
    harmony = tiny(["<|return|>", "<|call|>", "<|end|>", "<|start|>"], [0] * 4, [3] * 4)
    assert sorted(harmony.token_text(i) for i in harmony.stop_ids) == ["</s>", "<|call|>", "<|return|>"]
    assert not harmony.is_control(harmony.id_of("<|end|>"))  # user-defined: always rendered
    assert harmony.decode([harmony.id_of("<|end|>"), harmony.id_of("<|start|>")]) == "<|end|><|start|>"
    plain = tiny(["<|end|>"], [0], [3])
    assert plain.id_of("<|end|>") in plain.stop_ids
    gemma4_like = tiny(["<|tool_response>", "<turn|>"], [0, 0], [3, 3])
    assert gemma4_like.id_of("</s>") not in gemma4_like.stop_ids
    assert {gemma4_like.id_of("<|tool_response>"), gemma4_like.id_of("<turn|>")} <= gemma4_like.stop_ids


def test_llama_spm_attributes(vocab):
    tok = vv.load(vocab, "llama-spm")
    assert tok.kind == "spm"
    assert tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert tok.stop_ids == frozenset({2})
    assert tok.add_bos and not tok.add_eos and tok.add_space_prefix
    assert tok.token_text(1) == "<s>" and tok.id_of("</s>") == 2 and tok.id_of("no such token") is None
    assert tok.token_type(0) == TokenType.UNKNOWN and tok.token_type(3) == TokenType.BYTE
    assert tok.encode("") == [1] and tok.encode("", add_bos=False) == []
    assert tok.encode("Hello", add_eos=True) == [1, 15043, 2]


def test_phi3_stop_ids_and_rstrip(vocab):
    tok = vv.load(vocab, "phi-3")
    # EOS <|endoftext|>, plus "<|end|>" and "</s>" by text (llama.cpp's end-of-generation list)
    assert tok.stop_ids == frozenset({32000, tok.id_of("<|end|>"), tok.id_of("</s>")})
    # Phi-3's special tokens swallow the whitespace to their right (llama.cpp sets RSTRIP for phi3)
    assert tok.encode("<|user|>\nHello", add_bos=False, special=True) == [tok.id_of("<|user|>"), tok.id_of("▁Hello")]
    # "</s>" is user-defined, but as an end-of-generation text it becomes control: matched only with special
    assert tok.id_of("</s>") not in tok.encode("Hi</s>", add_bos=False)
    assert tok.encode("Hi</s>  there", add_bos=False, special=True)[1:] == [tok.id_of("</s>"), tok.id_of("▁there")]


def test_control_tokens_only_with_special(vocab):
    tok = vv.load(vocab, "llama-spm")
    plain = tok.encode("a<s>b", add_bos=False)
    assert 1 not in plain and tok.decode(plain) == "a<s>b"
    parsed = tok.encode("a<s>b", add_bos=False, special=True)
    # the fragment after a special token gets the space prefix again (llama.cpp's is_prev_special)
    assert parsed == [tok.id_of("▁a"), 1, tok.id_of("▁b")]
    # ... which llama.cpp's detokenizer keeps: only the very first piece loses its space
    assert tok.decode(parsed) == "a b"
    assert tok.decode(parsed, special=True) == "a<s> b"


def test_out_of_range_ids(vocab):
    tok = vv.load(vocab, "llama-spm")
    for bad in (32000, -1, 10**12):
        with pytest.raises(TokenizerError):
            tok.decode([5, bad])
        with pytest.raises(TokenizerError):
            tok.token_text(bad)
        with pytest.raises(TokenizerError):
            StreamDecoder(tok).feed(bad)
    with pytest.raises(TokenizerError):
        tok.decode([1.5])
    assert tok.decode(np.array([15043, 3186], np.int32)) == "Hello world"


def test_invalid_utf8_replaced(vocab):
    tok = vv.load(vocab, "llama-spm")
    f0 = tok.id_of("<0xF0>")
    assert tok.decode([f0]) == "\ufffd"
    assert tok.decode([f0, tok.id_of("▁a")]) == "\ufffd a"
    sd = StreamDecoder(tok)
    assert sd.feed(f0) == ""
    assert sd.flush() == "\ufffd"


@pytest.fixture(scope="module")
def gemma(default_model) -> Tokenizer:
    with GGUFFile(default_model) as g:
        return Tokenizer.from_gguf(g)


# -- the default model (Gemma 3) ---------------------------------------------------------------------

def test_default_model_france(gemma):
    ids = gemma.encode("What is the capital of France?")
    assert ids == [2, 3689, 563, 506, 5279, 529, 7001, 236881]
    assert gemma.decode(ids) == "What is the capital of France?"
    assert (gemma.bos_id, gemma.eos_id, gemma.vocab_size) == (2, 1, 262144)
    assert not gemma.add_space_prefix


def test_default_model_stop_ids(gemma):
    assert {1, 106} <= gemma.stop_ids
    assert gemma.id_of("<end_of_turn>") == 106
    assert all(gemma.is_control(i) for i in gemma.stop_ids)


def test_default_model_chat_markup(gemma):
    sot, eot = gemma.id_of("<start_of_turn>"), gemma.id_of("<end_of_turn>")
    nl = gemma.id_of("\n")
    assert gemma.token_type(sot) == TokenType.CONTROL and gemma.token_type(nl) == TokenType.USER_DEFINED
    prompt = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    ids = gemma.encode(prompt, special=True)
    question = gemma.encode("What is the capital of France?", add_bos=False)
    user, model = gemma.encode("user", add_bos=False), gemma.encode("model", add_bos=False)
    assert ids == [2, sot, *user, nl, *question, eot, nl, sot, *model, nl]
    assert gemma.decode(ids) == "user\nWhat is the capital of France?\nmodel\n"
    assert gemma.decode(ids, special=True) == "<bos>" + prompt
    plain = gemma.encode(prompt, special=False)
    assert sot not in plain and eot not in plain
    assert gemma.decode(plain) == prompt
    # user-defined tokens (newline and space runs) are matched even without special
    assert gemma.encode("a\n\nb", add_bos=False) == [gemma.id_of("a"), gemma.id_of("\n\n"), gemma.id_of("b")]


@pytest.mark.parametrize("text", ["🦙🦙 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0002a6b2\U0002a6b3 漢字 \u0b8e"])
def test_default_model_stream_decoder_multibyte(gemma, text):
    ids = gemma.encode(text, add_bos=False)
    byte_ids = [i for i in ids if gemma.token_type(i) == TokenType.BYTE]
    assert len(byte_ids) >= 4, "test text should need byte fallback"
    sd = StreamDecoder(gemma)
    pieces = [sd.feed(i) for i in ids]
    pieces.append(sd.flush())
    assert "".join(pieces) == text == gemma.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    # a byte token that starts a character emits nothing until the character is complete
    first = ids.index(byte_ids[0])
    assert pieces[first] == ""


def test_default_model_encode_long_text(gemma):
    text = ("The quick brown fox jumps over the lazy dog.   Ünïcödé, 日本語, emoji 😀!\n\n\t" * 50)
    ids = gemma.encode(text)
    assert gemma.decode(ids) == text
    assert len(ids) < len(text)


# -- hand-built vocabularies: the merge rules themselves ---------------------------------------------

def make_md(tokens, scores=None, types=None, **extra):
    n = len(tokens)
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": list(tokens),
        "tokenizer.ggml.scores": np.asarray(scores if scores is not None else [0.0] * n, np.float32),
        "tokenizer.ggml.token_type": np.asarray(types if types is not None else [1] * n, np.int32),
    }
    md.update(extra)
    return md


BASE = ["<unk>", "<s>", "</s>"]
BASE_TYPES = [2, 3, 3]


def tiny(tokens, scores, types=None, add_space_prefix=True, **extra) -> Tokenizer:
    types = types if types is not None else [1] * len(tokens)
    extra["tokenizer.ggml.add_space_prefix"] = add_space_prefix
    return Tokenizer.from_metadata(make_md(BASE + tokens, [0.0] * 3 + scores, BASE_TYPES + types, **extra))


def test_merge_highest_score_first():
    # "abc": "ab" (-1) beats "bc" (-2), so "ab"+"c" even though "bc" with "a" would also tokenize
    tok = tiny(["a", "b", "c", "ab", "bc", "abc_unused"], [-5, -5, -5, -1, -2, -9], add_space_prefix=False)
    assert [tok.token_text(i) for i in tok.encode("abc", add_bos=False)] == ["ab", "c"]
    tok = tiny(["a", "b", "c", "ab", "bc"], [-5, -5, -5, -2, -1], add_space_prefix=False)
    assert [tok.token_text(i) for i in tok.encode("abc", add_bos=False)] == ["a", "bc"]


def test_merge_ties_go_leftmost():
    tok = tiny(["a", "aa"], [-5, -1], add_space_prefix=False)
    assert [tok.token_text(i) for i in tok.encode("aaa", add_bos=False)] == ["aa", "a"]


def test_merge_needs_pairwise_path():
    # "abc" is in the vocabulary but no pair leading to it is: SPM never reaches it
    tok = tiny(["a", "b", "c", "abc"], [-5, -5, -5, 0], add_space_prefix=False)
    assert [tok.token_text(i) for i in tok.encode("abc", add_bos=False)] == ["a", "b", "c"]


def test_space_prefix_and_escape():
    tok = tiny(["▁", "a", "▁a"], [-5, -5, -1])
    assert [tok.token_text(i) for i in tok.encode("a a", add_bos=False)] == ["▁a", "▁a"]
    tok = tiny(["▁", "a", "▁a"], [-5, -5, -1], add_space_prefix=False)
    assert [tok.token_text(i) for i in tok.encode("a a", add_bos=False)] == ["a", "▁a"]


def test_byte_fallback_and_unknown():
    bytes_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = tiny(["a"] + bytes_tokens, [-1] + [0] * 256, [1] + [6] * 256, add_space_prefix=False)
    ids = tok.encode("aé", add_bos=False)
    assert [tok.token_text(i) for i in ids] == ["a", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == "aé"
    tok = tiny(["a"], [-1], add_space_prefix=False)  # no byte tokens: the unknown token, once per character
    assert tok.encode("aéb", add_bos=False) == [tok.id_of("a"), 0, 0]


def test_partition_longest_token_first():
    # llama.cpp splits on the longest special token first, wherever it is: "wxyz" -> "w" + "xyz"
    tok = tiny(["w", "x", "y", "z", "wx", "xyz"], [-1] * 4 + [0, 0], [1] * 4 + [4, 4], add_space_prefix=False)
    assert [tok.token_text(i) for i in tok.encode("wxyz", add_bos=False)] == ["w", "xyz"]
    assert [tok.token_text(i) for i in tok.encode("wxwx", add_bos=False)] == ["wx", "wx"]


def test_add_bos_flag_and_eos():
    tok = tiny(["a"], [-1], add_space_prefix=False, **{"tokenizer.ggml.add_bos_token": False})
    assert tok.encode("a") == [tok.id_of("a")]
    assert tok.encode("a", add_eos=True) == [tok.id_of("a"), 2]
    tok = tiny(["a"], [-1], add_space_prefix=False, **{"tokenizer.ggml.add_eos_token": True})
    assert tok.add_eos and tok.encode("a") == [1, tok.id_of("a")]  # EOS only when asked
    assert tok.encode("a", add_eos=True) == [1, tok.id_of("a"), 2]


def test_eot_key_and_texts():
    tok = tiny(["a", "<|im_end|>", "<end_of_turn>"], [0, 0, 0], [1, 1, 3],
               **{"tokenizer.ggml.eot_token_id": 4})
    assert tok.eot_id == 4
    assert tok.stop_ids == frozenset({2, 4, 5})
    assert tok.is_control(4)  # a normal-typed end-of-generation text is promoted, as llama.cpp does


# -- validation of untrusted metadata ----------------------------------------------------------------

def good_md():
    return make_md(BASE + ["a", "b"], [0, 0, 0, -1, -2], BASE_TYPES + [1, 1])


@pytest.mark.parametrize("key, value", [
    ("tokenizer.ggml.tokens", None),
    ("tokenizer.ggml.tokens", "abc"),
    ("tokenizer.ggml.tokens", []),
    ("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "a", 7]),
    ("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "a", "a"]),
    ("tokenizer.ggml.scores", np.zeros(4, np.float32)),
    ("tokenizer.ggml.scores", ["x"] * 5),
    ("tokenizer.ggml.scores", np.zeros((5, 1), np.float32)),
    ("tokenizer.ggml.token_type", np.ones(6, np.int32)),
    ("tokenizer.ggml.token_type", np.ones(5, np.float32)),
    ("tokenizer.ggml.bos_token_id", 5),
    ("tokenizer.ggml.eos_token_id", -1),
    ("tokenizer.ggml.eos_token_id", "2"),
    ("tokenizer.ggml.unknown_token_id", 99),
    ("tokenizer.ggml.eot_token_id", 2**40),
    ("tokenizer.ggml.add_bos_token", "yes"),
    ("tokenizer.ggml.add_space_prefix", 3),
    ("tokenizer.ggml.model", None),
    ("tokenizer.ggml.model", 5),
])
def test_bad_metadata_names_the_key(key, value):
    md = good_md()
    if value is None:
        del md[key]
    else:
        md[key] = value
    with pytest.raises(TokenizerError, match=key.replace(".", r"\.")):
        Tokenizer.from_metadata(md)


@pytest.mark.parametrize("model", ["t5", "rwkv", "plamo2", "hybriddna", "no_vocab", "", "Llama"])
def test_unsupported_model(model):
    md = good_md()
    md["tokenizer.ggml.model"] = model
    with pytest.raises(UnsupportedError, match=f"'{model}'"):
        Tokenizer.from_metadata(md)


@pytest.mark.parametrize("pre", ["no-such-pre", "Llama3", "qwen-2", ""])
def test_unsupported_bpe_pre_tokenizer(pre):
    md = good_md()
    md["tokenizer.ggml.model"] = "gpt2"
    md["tokenizer.ggml.merges"] = ["a b"]
    md["tokenizer.ggml.pre"] = pre
    with pytest.raises(UnsupportedError, match=f"tokenizer.ggml.pre = '{pre}'"):
        Tokenizer.from_metadata(md)


@pytest.mark.parametrize("pre", sorted(PRE_VALUES))
def test_every_llama_cpp_pre_value_is_accepted(pre):
    md = good_md()
    md.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.pre": pre,
               "tokenizer.ggml.bos_token_id": 1})
    t = Tokenizer.from_metadata(md)
    assert t.pre.pre == pre and t.pre.family == PRE_VALUES[pre][0]
    text = "ab a\u00e9 12345 ,.! 日本\n\n  x's"
    words = t.pre.split(text)
    assert "".join(words) == text and all(words)  # a partition of the text
    t.encode(text)


@pytest.mark.parametrize("key, value", [("tokenizer.ggml.merges", None), ("tokenizer.ggml.merges", ["a b", 3]),
                                        ("tokenizer.ggml.merges", "a b"), ("tokenizer.ggml.pre", 7)])
def test_bad_bpe_metadata(key, value):
    md = good_md()
    md.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.merges": ["a b"]})
    if value is None:
        del md[key]
    else:
        md[key] = value
    with pytest.raises(TokenizerError, match=key.replace(".", r"\.")):
        Tokenizer.from_metadata(md)


def test_not_a_mapping():
    with pytest.raises(TokenizerError):
        Tokenizer.from_metadata([("tokenizer.ggml.model", "llama")])


def test_optional_arrays_and_small_vocab():
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["x", "▁x"]}
    tok = Tokenizer.from_metadata(md)  # default bos 1 fits, eos 2 does not: disabled
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, None)
    assert tok.stop_ids == frozenset()
    assert tok.encode("x") == [1, 1]  # "▁x" is also BOS here; a silly but valid vocabulary
    md["tokenizer.ggml.tokens"] = ["x", "", "▁x"]  # empty entries are renamed, as llama.cpp does
    tok = Tokenizer.from_metadata(md)
    assert tok.token_text(1) == "[EMPTY_1]"


def test_metadata_is_not_modified():
    md = make_md(BASE + ["a", "", "<|im_end|>"], [0, 0, 0, -1, 0, 0], BASE_TYPES + [1, 1, 1])
    tokens, types = list(md["tokenizer.ggml.tokens"]), md["tokenizer.ggml.token_type"].copy()
    tok = Tokenizer.from_metadata(md)
    assert md["tokenizer.ggml.tokens"] == tokens and np.array_equal(md["tokenizer.ggml.token_type"], types)
    assert tok.is_control(5) and tok.token_type(5) == TokenType.NORMAL  # promoted, but the type is as given


def test_unused_and_undefined_tokens_decode_to_nothing():
    tok = tiny(["a", "b", "c"], [-1, -1, -1], [1, 5, 0], add_space_prefix=False)
    assert tok.decode([3, 4, 5, 3]) == "aa"
    assert tok.decode([3, 4, 5, 3], special=True) == "aa"
    assert tok.decode([0, 1, 2], special=True) == "<unk><s></s>" and tok.decode([0, 1, 2]) == ""
