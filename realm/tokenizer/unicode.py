"""Code point classes exactly as llama.cpp's tokenizers see them (src/unicode.cpp over unicode-data.cpp).

The tables come from llama.cpp (`unicode_tables.py`), not from Python's `unicodedata`, whose Unicode
version differs by Python release. `categories()` is one byte of category flags per code point;
the regex helpers turn those classes into `re` class bodies and llama.cpp's "collapsed" text.
"""

from __future__ import annotations

import functools

import numpy as np

from realm.tokenizer import unicode_tables as T

# llama.cpp's unicode_cpt_flags category bits (one per code point; whitespace is a separate set)
UNDEFINED = 0x01
NUMBER = 0x02  # \p{N}
LETTER = 0x04  # \p{L}
SEPARATOR = 0x08  # \p{Z}
ACCENT_MARK = 0x10  # \p{M}
PUNCTUATION = 0x20  # \p{P}
SYMBOL = 0x40  # \p{S}
CONTROL = 0x80  # \p{C}

N_CODEPOINTS = 0x110000

# \p{..} names llama.cpp's regex rewriter knows, and the category each stands for
# (the letter subclasses all collapse to "letter" there)
CATEGORY_OF_NAME = {"N": NUMBER, "L": LETTER, "P": PUNCTUATION, "M": ACCENT_MARK, "S": SYMBOL,
                    "Lu": LETTER, "Ll": LETTER, "Lt": LETTER, "Lm": LETTER, "Lo": LETTER}

# Collapsed text (llama.cpp's workaround for std::regex lacking \p{..}): ASCII stays, every other code
# point becomes one placeholder per category; \p{X} in a regex becomes [placeholder + X's ASCII members].
COLLAPSED_CHAR = {NUMBER: "\xd1", LETTER: "\xd2", PUNCTUATION: "\xd3", ACCENT_MARK: "\xd4", SYMBOL: "\xd5"}
COLLAPSED_OTHER = "\xd0"
COLLAPSED_SPACE = "\x0b"  # non-ASCII whitespace (std::regex's \s only knows ASCII)
COLLAPSED_ASCII = {NUMBER: "0-9", LETTER: "A-Za-z", PUNCTUATION: r"!-#%-*,-/:-;?-@\[-\]_{}",
                   ACCENT_MARK: "", SYMBOL: r"$+<=>\^`|~"}

# Han ranges of llama.cpp's unicode_cpt_is_han (Kimi-K2's pre-tokenizer)
HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _unpack(hexes: tuple[str, ...], widths: tuple[int, ...]) -> np.ndarray:
    """Packed hex rows -> (n, len(widths)) int64."""
    text = "".join(hexes)
    step = sum(widths)
    rows = np.array([text[i:i + step] for i in range(0, len(text), step)])
    out = np.empty((len(rows), len(widths)), np.int64)
    at = 0
    for k, w in enumerate(widths):
        out[:, k] = [int(s[at:at + w], 16) for s in rows.tolist()]
        at += w
    return out


@functools.cache
def categories() -> np.ndarray:
    """(0x110000,) uint8: llama.cpp's category flags of every code point."""
    ranges = _unpack(T.FLAG_RANGES, (6, 2))  # (n, 2) start, flags; the last start is 0x110000
    starts, flags = ranges[:, 0], ranges[:, 1]
    out = np.repeat(flags[:-1].astype(np.uint8), np.diff(starts))
    assert out.shape == (N_CODEPOINTS,)
    return out


@functools.cache
def whitespace() -> frozenset[int]:
    """llama.cpp's whitespace code points (\\s in its regexes)."""
    return frozenset(_unpack(T.WHITESPACE, (6,))[:, 0].tolist())


@functools.cache
def lowercase() -> dict[int, int]:
    """code point -> its lowercase (llama.cpp's unicode_tolower; absent: unchanged)."""
    pairs = _unpack(T.LOWERCASE, (6, 6))
    return dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))


@functools.cache
def nfd_first() -> np.ndarray:
    """(0x110000,) int64: the first code point of each code point's canonical decomposition."""
    out = np.arange(N_CODEPOINTS, dtype=np.int64)
    for first, last, nfd in _unpack(T.NFD, (6, 6, 6)).tolist():
        out[first:last + 1] = nfd
    return out


def _ranges_body(mask: np.ndarray) -> str:
    """A regex class body (no brackets) matching the code points where `mask` is true."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return "".join(f"\\U{a:08x}" if a == b - 1 else f"\\U{a:08x}-\\U{b - 1:08x}"
                   for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()))


@functools.cache
def class_body(name: str) -> str:
    """Regex class body for the raw (not collapsed) text: "L", "N", "M" by category, "s" for whitespace,
    "Han" for Kimi's Han ranges, "LnH" for letters that are not Han."""
    if name == "s":
        return "".join(f"\\U{c:08x}" for c in sorted(whitespace()))
    if name in ("Han", "LnH"):
        mask = np.zeros(N_CODEPOINTS, bool)
        for a, b in HAN_RANGES:
            mask[a:b + 1] = True
        if name == "LnH":
            mask = (categories() & LETTER).astype(bool) & ~mask
        return _ranges_body(mask)
    bit = {"L": LETTER, "N": NUMBER, "M": ACCENT_MARK}[name]
    return _ranges_body((categories() & bit).astype(bool))


@functools.cache
def _collapse_lut() -> np.ndarray:
    """(0x110000,) uint8: the collapsed character of every code point (ASCII maps to itself)."""
    cats = categories()
    lut = np.full(N_CODEPOINTS, ord(COLLAPSED_OTHER), np.uint8)
    for cat, ch in COLLAPSED_CHAR.items():
        lut[cats == cat] = ord(ch)
    lut[list(whitespace())] = ord(COLLAPSED_SPACE)
    lut[:128] = np.arange(128)
    return lut


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def collapse(text: str) -> str:
    """llama.cpp's collapsed text: one character per code point, for regexes using \\p{..} classes."""
    if text.isascii():
        return text
    return _collapse_lut()[_codepoints(text)].tobytes().decode("latin-1")


def ascii_whitespace(text: str) -> str:
    """Non-ASCII whitespace replaced by U+000B, as llama.cpp does before a std::wregex without \\p{..}."""
    if text.isascii():
        return text
    ws = whitespace()
    return "".join("\x0b" if ord(c) > 0x7F and ord(c) in ws else c for c in text)
