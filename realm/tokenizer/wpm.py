"""WordPiece (tokenizer model "bert"): llama.cpp's llm_tokenizer_wpm_session.

Normalize (optionally the first code point of each NFD decomposition and lowercase; drop NUL, U+FFFD,
control characters and, when stripping accents, marks), split at whitespace and around every
punctuation character, ASCII symbol and CJK ideograph, then cover each word, prefixed with '▁',
greedily by the longest vocabulary entries; a word that cannot be covered becomes the unknown token.
Facts: https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp
"""

from __future__ import annotations

from collections.abc import Mapping

from realm.tokenizer import unicode as U

# CJK ideograph ranges of llama.cpp's WPM is_chinese_char (0x2B920, not 0x2B820, as in HF's Rust code)
_CHINESE = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
            (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_chinese(cpt: int) -> bool:
    return any(a <= cpt <= b for a, b in _CHINESE)


def wpm_words(text: str, lowercase: bool, strip_accents: bool) -> list[str]:
    """llama.cpp's WPM preprocess: normalized words."""
    cats, ws, lower = U.categories(), U.whitespace(), U.lowercase()
    nfd = U.nfd_first() if strip_accents else None
    words: list[str] = [""]
    for ch in text:
        cpt = ord(ch)
        if nfd is not None:
            cpt = int(nfd[cpt])
        flags = int(cats[cpt])
        if cpt in ws:
            if words[-1]:
                words.append("")
            continue
        if cpt == 0 or cpt == 0xFFFD or flags & U.CONTROL:
            continue
        if strip_accents and flags & U.ACCENT_MARK:
            continue
        s = chr(lower.get(cpt, cpt) if lowercase else cpt)
        if flags & U.PUNCTUATION or (cpt < 0x7F and flags & U.SYMBOL) or _is_chinese(cpt):
            if words[-1]:
                words.append("")
            words[-1] = s
            words.append("")
        else:
            words[-1] += s
    return [w for w in words if w]


def wpm_encode(text: str, vocab: Mapping[str, int], max_len: int, unk_id: int | None, lowercase: bool,
               strip_accents: bool, out: list[int]) -> None:
    """Append the ids of one fragment; `max_len`: the longest vocabulary entry, in characters."""
    for word in wpm_words(text, lowercase, strip_accents):
        w = "\u2581" + word
        n = len(w)
        start = len(out)
        i = 0
        while i < n:
            for j in range(min(n, i + max_len + 1), i, -1):
                tid = vocab.get(w[i:j])
                if tid is not None:
                    out.append(tid)
                    i = j
                    break
            else:  # no entry starts here: the whole word is unknown
                del out[start:]
                break
        if len(out) == start and unk_id is not None:
            out.append(unk_id)
