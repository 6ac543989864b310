"""realm.tokenizer against llama.cpp's tokenizer test vectors, the default model, and hand-built vocabularies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realm.errors import TokenizerError, UnsupportedError
from realm.gguf import GGUFFile
from realm.tokenizer import StreamDecoder, Tokenizer, TokenType

SPM_VOCABS = ("llama-spm", "phi-3")
BPE_VOCABS = ("llama-bpe", "qwen2")
MARKER = "\n__ggml_vocab_test__\n"


def read_vectors(vocab: Path, name: str) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs of ggml-vocab-<name>.gguf.inp/.out (each input ends with the marker line)."""
    inp = (vocab / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    out = (vocab / f"ggml-vocab-{name}.gguf.out").read_bytes().decode("utf-8")
    assert inp.endswith(MARKER)
    texts = inp[: -len(MARKER)].split(MARKER)
    lines = out.split("\n")
    assert lines[-1] == ""  # trailing newline
    lines = lines[:-1]
    assert len(texts) == len(lines), (len(texts), len(lines))
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def spm_tokenizers(vocab) -> dict[str, Tokenizer]:
    out = {}
    for name in SPM_VOCABS:
        with GGUFFile(vocab / f"ggml-vocab-{name}.gguf") as g:
            out[name] = Tokenizer.from_gguf(g)
    return out


@pytest.fixture(scope="module")
def bpe_tokenizers(vocab) -> dict[str, Tokenizer]:
    out = {}
    for name in BPE_VOCABS:
        with GGUFFile(vocab / f"ggml-vocab-{name}.gguf") as g:
            out[name] = Tokenizer.from_gguf(g)
    return out


@pytest.fixture(scope="module")
def gemma(default_model) -> Tokenizer:
    with GGUFFile(default_model) as g:
        return Tokenizer.from_gguf(g)


# -- llama.cpp test vectors ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPM_VOCABS)
def test_vectors_reproduced_exactly(vocab, spm_tokenizers, name):
    tok = spm_tokenizers[name]
    cases = read_vectors(vocab, name)
    assert len(cases) > 40
    bad = [(text, want, got) for text, want in cases if (got := tok.encode(text, add_bos=False)) != want]
    assert not bad, f"{len(bad)}/{len(cases)} mismatches, first: {bad[0]!r}"


@pytest.mark.parametrize("name", SPM_VOCABS)
def test_vectors_round_trip(vocab, spm_tokenizers, name):
    tok = spm_tokenizers[name]
    for text, want in read_vectors(vocab, name):
        assert tok.decode(want) == text, repr(text)
        with_bos = tok.encode(text)
        assert with_bos == [tok.bos_id] + want
        assert tok.decode(with_bos) == text, repr(text)


@pytest.mark.parametrize("name", SPM_VOCABS)
def test_vector_stream_decoding_matches_decode(vocab, spm_tokenizers, name):
    tok = spm_tokenizers[name]
    for text, want in read_vectors(vocab, name):
        sd = StreamDecoder(tok, lstrip_first=True)
        pieces = [sd.feed(i) for i in want] + [sd.flush()]
        assert "".join(pieces) == text, repr(text)
        assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_bpe_vectors_reproduced_exactly(vocab, bpe_tokenizers, name):
    tok = bpe_tokenizers[name]
    assert tok.kind == "bpe"
    cases = read_vectors(vocab, name)
    assert len(cases) > 40
    bad = [(text, want, got) for text, want in cases if (got := tok.encode(text, add_bos=False)) != want]
    assert not bad, f"{len(bad)}/{len(cases)} mismatches, first: {bad[0]!r}"


def test_bpe_round_trip(vocab, bpe_tokenizers):
    qwen, llama3 = bpe_tokenizers["qwen2"], bpe_tokenizers["llama-bpe"]
    for text, want in read_vectors(vocab, "qwen2"):  # qwen2 keeps spaces as they are
        assert qwen.decode(want) == text, repr(text)
        sd = StreamDecoder(qwen)
        assert "".join(sd.feed(i) for i in want) + sd.flush() == text
    for text, want in read_vectors(vocab, "llama-bpe"):
        if not any(p in text for p in (" ?", " !", " .", " ,", " '")):  # llama3 cleans up those spaces
            assert llama3.decode(want) == text, repr(text)


def test_bpe_special_tokens_and_flags(bpe_tokenizers):
    llama3, qwen = bpe_tokenizers["llama-bpe"], bpe_tokenizers["qwen2"]
    # llama-bpe adds BOS (<|begin_of_text|>) by default, qwen2 does not
    assert llama3.encode("Hi")[0] == 128000 and qwen.encode("Hi")[0] != qwen.bos_id
    assert {128001, 128009} <= llama3.stop_ids
    assert {151643, 151645} <= qwen.stop_ids
    text = "<|im_start|>user\nHi<|im_end|>\n"
    ids = qwen.encode(text, special=True)
    assert ids[0] == 151644 and 151645 in ids
    assert 151644 not in qwen.encode(text)
    assert qwen.decode(ids, special=True) == text and qwen.decode(ids) == "user\nHi\n"
    # clean_up_tokenization_spaces (llama3 only): " ," -> ",", " 's" -> "'s", " ' " -> "'"
    assert llama3.decode(llama3.encode("Hello , world . It 's ' ok", add_bos=False)) == "Hello, world. It's'ok"
    assert qwen.decode(qwen.encode("Hello , world .")) == "Hello , world ."


def test_llama_spm_attributes(spm_tokenizers):
    tok = spm_tokenizers["llama-spm"]
    assert tok.kind == "spm"
    assert tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert tok.stop_ids == frozenset({2})
    assert tok.add_bos and not tok.add_eos and tok.add_space_prefix
    assert tok.token_text(1) == "<s>" and tok.id_of("</s>") == 2 and tok.id_of("no such token") is None
    assert tok.token_type(0) == TokenType.UNKNOWN and tok.token_type(3) == TokenType.BYTE
    assert tok.encode("") == [1] and tok.encode("", add_bos=False) == []
    assert tok.encode("Hello", add_eos=True) == [1, 15043, 2]


def test_phi3_stop_ids_and_rstrip(spm_tokenizers):
    tok = spm_tokenizers["phi-3"]
    # EOS <|endoftext|>, plus "<|end|>" and "</s>" by text (llama.cpp's end-of-generation list)
    assert tok.stop_ids == frozenset({32000, tok.id_of("<|end|>"), tok.id_of("</s>")})
    # Phi-3's special tokens swallow the whitespace to their right (llama.cpp sets RSTRIP for phi3)
    assert tok.encode("<|user|>\nHello", add_bos=False, special=True) == [tok.id_of("<|user|>"), tok.id_of("▁Hello")]
    # "</s>" is user-defined, but as an end-of-generation text it becomes control: matched only with special
    assert tok.id_of("</s>") not in tok.encode("Hi</s>", add_bos=False)
    assert tok.encode("Hi</s>  there", add_bos=False, special=True)[1:] == [tok.id_of("</s>"), tok.id_of("▁there")]


def test_control_tokens_only_with_special(spm_tokenizers):
    tok = spm_tokenizers["llama-spm"]
    plain = tok.encode("a<s>b", add_bos=False)
    assert 1 not in plain and tok.decode(plain) == "a<s>b"
    parsed = tok.encode("a<s>b", add_bos=False, special=True)
    # the fragment after a special token gets the space prefix again (llama.cpp's is_prev_special)
    assert parsed == [tok.id_of("▁a"), 1, tok.id_of("▁b")]
    assert tok.decode(parsed) == "ab"
    assert tok.decode(parsed, special=True) == "a<s>b"


def test_out_of_range_ids(spm_tokenizers):
    tok = spm_tokenizers["llama-spm"]
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


def test_invalid_utf8_replaced(spm_tokenizers):
    tok = spm_tokenizers["llama-spm"]
    f0 = tok.id_of("<0xF0>")
    assert tok.decode([f0]) == "\ufffd"
    assert tok.decode([f0, tok.id_of("▁a")]) == "\ufffd a"
    sd = StreamDecoder(tok)
    assert sd.feed(f0) == ""
    assert sd.flush() == "\ufffd"


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


@pytest.mark.parametrize("model", ["bert", "t5", "rwkv", "plamo2", ""])
def test_unsupported_model(model):
    md = good_md()
    md["tokenizer.ggml.model"] = model
    with pytest.raises(UnsupportedError, match=f"'{model}'"):
        Tokenizer.from_metadata(md)


@pytest.mark.parametrize("pre", [None, "default", "deepseek-llm", "chatglm-bpe"])
def test_unsupported_bpe_pre_tokenizer(pre):
    md = good_md()
    md["tokenizer.ggml.model"] = "gpt2"
    md["tokenizer.ggml.merges"] = ["a b"]
    if pre is not None:
        md["tokenizer.ggml.pre"] = pre
    with pytest.raises(UnsupportedError, match=f"'{pre or 'default'}'"):
        Tokenizer.from_metadata(md)


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
