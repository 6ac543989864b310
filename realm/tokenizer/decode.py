"""Ids -> text, as llama.cpp's token_to_piece and llama_detokenize, whole or streamed.

A token's piece (`piece_bytes`): control and unknown tokens give nothing unless `special`; those and
user-defined tokens give their text; normal tokens their text with '▁' -> ' ' (SPM, WPM and SPM-style
BPE) or through GPT-2's byte map (byte-level BPE); byte tokens their byte; unused/undefined nothing.

`detokenize` joins the pieces, removing one leading space of the first piece when llama.cpp's
add_space_prefix flag is set (unless `remove_special` dropped a leading BOS), then, for vocabularies
with clean_spaces (most byte-level BPE and WPM ones), llama.cpp's clean_up_tokenization_spaces passes:
" ?", " !", " .", " ," lose the space; a lone "'" between spaces loses both; " 's", " 'm", " 're",
" 've" lose the space. Facts: https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realm.tokenizer.core import Tokenizer


def clean_spaces(buf: bytes | bytearray) -> bytes:
    """llama.cpp's three clean_up_tokenization_spaces passes over detokenized bytes."""
    t = list(buf)
    if len(t) < 2:
        return bytes(t)
    sp, q = ord(" "), ord("'")
    out = t[:1]  # pass 1: " ?", " !", " .", " ," lose the space
    for i in range(1, len(t)):
        if t[i - 1] == sp and t[i] in b"?!.,":
            out.pop()
        out.append(t[i])
    t, out = out, out[:1]  # pass 2: a lone apostrophe between spaces loses both spaces
    i = 1
    while i < len(t):
        x = t[i]
        if x == q and i + 1 < len(t) and t[i - 1] == sp and t[i + 1] == sp:
            out.pop()
            i += 1
            t[i] = 0  # the skipped space reads as NUL to the next step, as in llama.cpp's in-place pass
        out.append(x)
        i += 1
    t, out = out, out[:1]  # pass 3: " 's", " 'm", " 're", " 've" lose the space
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == sp and x == q and i + 1 < len(t):
            x1 = t[i + 1]
            if x1 in b"sm":
                out.pop()
            elif x1 not in b"td" and i + 2 < len(t) and bytes((x1, t[i + 2])) in (b"re", b"ve"):
                out.pop()
        out.append(x)
    return bytes(out)


def _safe_cut(buf: bytes | bytearray) -> int:
    """The longest prefix length k such that clean_spaces(buf[:k] + rest) == clean_spaces(buf[:k]) +
    clean_spaces(rest) for any rest: the passes look one byte back and two ahead and only remove spaces,
    so a cut after two bytes that are neither space nor apostrophe is safe."""
    k = len(buf)
    while k >= 1:
        if buf[k - 1] not in b" '" and (k == 1 or buf[k - 2] not in b" '"):
            return k
        k -= 1
    return 0


def detokenize(tok: Tokenizer, ids, special: bool = False, remove_special: bool = False) -> bytes:
    """llama.cpp's llama_detokenize(ids, remove_special, unparse_special=special), as bytes."""
    ids = [tok._check_id(t) for t in ids]
    strip = tok._lstrip_first
    if remove_special and tok.add_bos and ids and ids[0] == tok.bos_id:
        strip = False
        ids = ids[1:]
    if remove_special and tok.add_eos and ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
    buf = bytearray()
    for i in ids:
        piece = tok.piece_bytes(i, special)
        if strip and piece[:1] == b" ":
            piece = piece[1:]
        strip = False
        buf += piece
    return clean_spaces(buf) if tok.clean_spaces else bytes(buf)


class StreamDecoder:
    """Incremental decoding of generated ids: `feed(id)` returns the text that is complete so far,
    `flush()` what is left (invalid UTF-8 as U+FFFD). The pieces joined equal `Tokenizer.decode` of the
    ids fed (with `lstrip_first`; without it the first piece keeps its leading space, as llama.cpp's
    token_to_piece streaming does for text that continues a prompt).

    Never splits a UTF-8 character (bytes of byte-fallback tokens wait until the character is whole),
    and with clean_spaces holds back a trailing space or apostrophe until the next piece shows whether
    the clean-up removes it.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False, lstrip_first: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._strip = lstrip_first and tokenizer._lstrip_first
        self._clean = tokenizer.clean_spaces
        self._raw = bytearray()  # pieces not yet cleaned (clean_spaces only)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        piece = self.tokenizer.piece_bytes(token_id, self.special)
        if self._strip and piece[:1] == b" ":
            piece = piece[1:]
        self._strip = False
        if not self._clean:
            return self._decoder.decode(piece, final=False)
        self._raw += piece
        k = _safe_cut(self._raw)
        if k == 0:
            return ""
        done = clean_spaces(self._raw[:k])
        del self._raw[:k]
        return self._decoder.decode(done, final=False)

    def flush(self) -> str:
        rest = clean_spaces(self._raw) if self._raw else b""
        self._raw.clear()
        text = self._decoder.decode(rest, final=True)
        self._decoder.reset()
        return text
