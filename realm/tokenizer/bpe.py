"""Byte-pair encoding of pre-tokenized words (llama.cpp's llm_tokenizer_bpe_session), and the GPT-2 byte map.

A word's symbols start as its characters (after GPT-2's byte-to-printable map when the family byte
encodes); the adjacent pair with the lowest merge rank is merged until no pair has a rank (ties: the
leftmost). Facts: https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from realm.errors import TokenizerError
from realm.tokenizer.pretok import PreTokenizer


def _gpt2_byte_chars() -> list[str]:
    """byte -> printable character: printable Latin-1 bytes map to themselves, the rest to U+0100.."""
    keep = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars: list[str] = []
    n = 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


BYTE_CHARS = _gpt2_byte_chars()
_BYTE_ENCODE = str.maketrans({chr(b): c for b, c in enumerate(BYTE_CHARS)})  # latin-1 char -> byte char
_BYTE_DECODE = {c: b for b, c in enumerate(BYTE_CHARS)}


def byte_encode(word: str) -> str:
    """A word's UTF-8 bytes as GPT-2's printable characters."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE)


def byte_decode(text: str) -> bytes:
    """A byte-level token's bytes (llama.cpp's llama_decode_text, including its marker for characters
    outside the byte map: "[UNK_BYTE_0x<utf-8 hex><whole token>]")."""
    try:
        return bytes(_BYTE_DECODE[c] for c in text)
    except KeyError:
        out = bytearray()
        for c in text:
            b = _BYTE_DECODE.get(c)
            if b is not None:
                out.append(b)
            else:
                out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)


class BPE:
    """Pre-tokenizer + merge ranks of a BPE vocabulary; `encode` appends the ids of one text fragment."""

    def __init__(self, pre: PreTokenizer, merges: Sequence[str]):
        self.pre = pre
        # "left right" -> rank, the first occurrence winning as in llama.cpp's emplace. The merge text is
        # the pair's key: symbols never hold a space (byte-level maps it to 'Ġ'; SPM-style escapes it)
        self.ranks: dict[str, int] = dict(zip(merges, range(len(merges))))
        if len(self.ranks) != len(merges):  # duplicates: the dict kept the last rank of each
            for i in range(len(merges) - 1, -1, -1):
                self.ranks[merges[i]] = i
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], pre: PreTokenizer, key: str) -> BPE:
        merges = md.get(key)
        if merges is None and pre.family == "kimi-k2":
            merges = []  # llama.cpp loads Kimi-K2 without merges
        if not isinstance(merges, (list, tuple)):
            raise TokenizerError(f"{key} must be an array of strings, got {type(merges).__name__}")
        try:
            "".join(merges)
        except TypeError:
            raise TokenizerError(f"{key} must be an array of strings") from None
        return cls(pre, list(merges))

    def encode(self, text: str, vocab: Mapping[str, int], out: list[int]) -> None:
        """Append the ids of `text` (one fragment between special tokens, whitespace already escaped
        for SPM-style families)."""
        cache = self._cache
        for word in self.pre.split(text):
            hit = cache.get(word)
            if hit is None:
                hit = tuple(self._word(word, vocab))
                if len(cache) > 50_000:
                    cache.clear()
                cache[word] = hit
            out.extend(hit)

    def _word(self, word: str, vocab: Mapping[str, int]) -> list[int]:
        pre = self.pre
        if pre.byte_encode:
            word = byte_encode(word)
        if pre.ignore_merges and word in vocab:
            return [vocab[word]]
        if pre.newline_words and word.strip("\n") == "" and word in vocab:
            return [vocab[word]]
        return [tid for sym in self._merge(word) for tid in self._symbol_ids(sym, vocab)]

    def _symbol_ids(self, sym: str, vocab: Mapping[str, int]) -> list[int]:
        tid = vocab.get(sym)
        if tid is not None:
            return [tid]
        # llama.cpp falls back to one token per UTF-8 byte of the symbol and drops bytes it cannot find:
        # byte-level vocabularies look the raw byte up as a one-byte text (only ASCII can exist),
        # SPM-style ones their <0xXX> token
        if self.pre.byte_encode:
            return [vocab[c] for c in sym if c.isascii() and c in vocab]
        return [vocab[t] for b in sym.encode("utf-8") if (t := f"<0x{b:02X}>") in vocab]

    def _merge(self, word: str) -> list[str]:
        """The symbols of `word` after all merges."""
        ranks = self.ranks
        sym = list(word)
        n = len(sym)
        if n < 2:
            return sym
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[int, int, int, str]] = []  # (rank, left, right, merged text)
        for i in range(n - 1):
            r = ranks.get(sym[i] + " " + sym[i + 1])
            if r is not None:
                heap.append((r, i, i + 1, sym[i] + sym[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            ls, rs = sym[left], sym[right]
            if not ls or not rs or ls + rs != merged:
                continue  # stale: one side was merged since this pair was queued
            sym[left], sym[right] = merged, ""
            nr = nxt[left] = nxt[right]
            if nr >= 0:
                prv[nr] = left
            pl = prv[left]
            if pl >= 0:
                r = ranks.get(sym[pl] + " " + merged)
                if r is not None:
                    heapq.heappush(heap, (r, pl, left, sym[pl] + merged))
            if nr >= 0:
                r = ranks.get(merged + " " + sym[nr])
                if r is not None:
                    heapq.heappush(heap, (r, left, nr, merged + sym[nr]))
        return [s for s in sym if s]
