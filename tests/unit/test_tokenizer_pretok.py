"""realm.tokenizer.pretok: every pre-tokenizer family llama.cpp maps, by known splits derived by hand from
its regexes, and the custom splitters against the general (collapsed-text) regex path."""

from __future__ import annotations

import re

import pytest

from realm.errors import UnsupportedError
from realm.tokenizer import FAMILIES, PRE_VALUES, PreTokenizer
from realm.tokenizer import pretok
from realm.tokenizer import unicode as U

import vocab_vectors as vv  # tests/ is on sys.path

# (pre value, text, words): each worked out from llama.cpp's regex list for that pre type
KNOWN_SPLITS = [
    ("llama3", "Hello\u3000\u3000world", ["Hello", "\u3000", "\u3000world"]),  # U+3000 is whitespace
    ("gpt-2", "a\xa0\xa0b", ["a", "\xa0", "\xa0", "b"]),
    ("default", "Hello, world!! 1234567", ["Hello", ",", " world", "!!", " ", "123", "456", "7"]),
    ("falcon", "a+b=12345", ["a", "+", "b", "=", "123", "45"]),
    ("deepseek-llm", "Hello 世界 123\n", ["Hello", " ", "世界", " ", "123", "\n"]),
    ("tiny_aya", "ab12345 x", ["ab", "12", "345", " x"]),  # digits grouped by three from the right
    ("tiny_aya", "1234567", ["1", "234", "567"]),
    ("superbpe", "x1234567y", ["x", "1", "234", "567", "y"]),  # split by an empty lookahead match
    ("kimi-k2", "Hello日本World's 1234", ["Hello", "日本", "World's", " ", "123", "4"]),
    ("gpt-4o", "HelloWorld ABCdef", ["Hello", "World", " ABCdef"]),
    ("tekken", "HelloWorld", ["Hello", "World"]),
    ("poro-chat", "Hello, world.", ["Hello", ",", " world", "."]),
    ("viking", "Hei, 123", ["Hei", ",", " ", "1", "2", "3"]),
    ("chameleon", "<sentinel:12>IMGIMGABZ  a1b, c",
     ["<", "sentinel", ":", "1", "2", ">", "IMGIMGABZ", "  ", "a", "1", "b", ",", " c"]),
    ("jais-2", "a      b", ["a", "    ", " ", " b"]),  # whitespace runs cut 512/256/.../4/2/1
    ("exaone-moe", "hello world", ["hello world"]),  # letters joined across single spaces
    ("bailingmoe", "I'LL go", ["I", "'LL", " go"]),
    ("seed-coder", "x = 12;\n", ["x", " =", " ", "1", "2", ";", "\n"]),
    ("ufakzeka", "Ankara'da 12", ["Ankara", "'da", " ", "1", "2"]),  # no contraction group
    ("laguna", "a b\n\nc", ["a", " b", "\n\n", "c"]),
    ("minicpm5", "x12345", ["x", "123", "45"]),
    ("spark2_5", "x12345", ["x", "1", "2", "3", "4", "5"]),
    ("whitespace", " a  b ", [" ", "a", "  ", "b", " "]),
    ("gemma4", "a b\n\n c", ["a b", "\n\n", " c"]),
]


@pytest.mark.parametrize("pre, text, words", KNOWN_SPLITS)
def test_known_splits(pre, text, words):
    assert PreTokenizer.named(pre).split(text) == words


def test_families_cover_every_pre_value():
    assert {family for family, _ in PRE_VALUES.values()} == set(FAMILIES)
    assert len(PRE_VALUES) == 91  # every value llama.cpp (0c1e57098, in llama-cpp-python 0.3.36) accepts, "default" included
    for pre in PRE_VALUES:
        p = PreTokenizer.named(pre)
        assert p.regexes == FAMILIES[p.family][0]


@pytest.mark.parametrize("pre", ["llama-3", "qwen", "gemma", "Default"])
def test_unknown_pre_value_is_named(pre):
    with pytest.raises(UnsupportedError, match=f"'{re.escape(pre)}'"):
        PreTokenizer.named(pre)


def _stl(regex: str):
    """`regex` run the general way (collapsed text), bypassing its custom splitter."""
    compiled = re.compile(pretok._py_classes(regex, pretok._collapsed_body), re.ASCII)
    return lambda text: pretok._pieces(text, U.collapse(text), compiled)


TRICKY = ["Hello\u3000\u3000world", "a\xa0\xa0b", "x\u2028\u2029y", "\u0301e\u0301 \u0301", "日本語 123456",
          "I'M you'RE we'll", " \n\n \t\r\n  end  ", "١٢٣ ٤", "emoji 🦙🦙  ok", "\U000e0001\U0010fffd tail"]


@pytest.mark.parametrize("regex", [pretok.LLAMA3, pretok.QWEN2, pretok.QWEN35])
def test_custom_splitters_equal_the_general_regex_path(vocab, regex):
    """llama.cpp's hand-written splitters behave as the regex they replace: realm's `re` versions with
    llama.cpp's classes agree with the collapsed-text path on every vector input."""
    texts = [t for name in ("llama-bpe", "qwen2", "qwen35", "gemma-4") for t, _ in vv.read_vectors(vocab, name)]
    custom, general = pretok._splitter(regex), _stl(regex)
    for text in texts + TRICKY:
        assert custom(text) == general(text), repr(text)


def test_gpt2_splitter_adds_whitespace_fallback():
    """llama.cpp's gpt2 regex has no final \\s+ alternative, but its custom splitter takes the run anyway."""
    custom, general = pretok._splitter(pretok.GPT2), _stl(pretok.GPT2)
    for text in TRICKY:
        assert "".join(custom(text)) == text
        assert custom(text) == general(text), repr(text)


def test_code_point_tables_are_llama_cpp_s():
    """The tables are llama.cpp's (Unicode 15.1 there), not this Python's unicodedata: spot checks."""
    cats = U.categories()
    assert cats[ord("a")] == U.LETTER and cats[ord("5")] == U.NUMBER and cats[ord(",")] == U.PUNCTUATION
    assert cats[ord("$")] == U.SYMBOL and cats[0x301] == U.ACCENT_MARK and cats[0x0] == U.CONTROL
    assert cats[0x31350] == U.LETTER  # CJK extension H (Unicode 15.0), unassigned in Python 3.11's table
    assert cats[0x2EBF0] == U.LETTER  # CJK extension I (Unicode 15.1)
    assert U.whitespace() >= {0x20, 0x85, 0xA0, 0x3000} and 0x200B not in U.whitespace()
    assert U.collapse("aé 1١ ́\u3000$€") == "a\xd2 1\xd1 \xd4\x0b$\xd5"
