"""SentencePiece-style merging (tokenizer model "llama"): llama.cpp's llm_tokenizer_spm_session.

Start from the characters of one escaped fragment ('▁' for spaces), repeatedly merge the adjacent pair
whose concatenation is a vocabulary token with the highest score (ties: leftmost), then map each symbol
to its token, or to its UTF-8 bytes' byte-fallback tokens, or to the unknown token.
Facts: https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from realm.errors import TokenizerError

SPACE = "\u2581"  # '▁': SentencePiece's escaped space


def spm_encode(text: str, vocab: Mapping[str, int], rank: Sequence[int], byte_ids: Sequence[int | None],
               unk_id: int | None, out: list[int]) -> None:
    """Append the ids of one escaped fragment. `rank[id]`: 0 for the highest score, equal scores equal
    ranks; `byte_ids[b]`: the byte-fallback token of byte b or None."""
    sym = list(text)  # symbol texts; a merged-away symbol becomes ""
    n = len(sym)
    if n == 0:
        return
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    # queue key: score rank (0 = best), then left index, then merged length, packed in one int
    # (ints compare much faster than tuples); the right symbol is nxt[left] when the key pops
    heap: list[int] = []
    for i in range(n - 1):
        tid = vocab.get(sym[i] + sym[i + 1])
        if tid is not None:
            heap.append(rank[tid] << 64 | i << 32 | 2)
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        key = pop(heap)
        left, size = key >> 32 & 0xFFFFFFFF, key & 0xFFFFFFFF
        right = nxt[left]
        ls = sym[left]
        if not ls or right < 0 or len(ls) + len(sym[right]) != size:
            continue  # stale: one side was merged since this pair was queued
        sym[left] = merged = ls + sym[right]
        sym[right] = ""
        nr = nxt[left] = nxt[right]
        if nr >= 0:
            prv[nr] = left
        pl = prv[left]
        if pl >= 0:
            s = sym[pl] + merged
            tid = vocab.get(s)
            if tid is not None:
                push(heap, rank[tid] << 64 | pl << 32 | len(s))
        if nr >= 0:
            s = merged + sym[nr]
            tid = vocab.get(s)
            if tid is not None:
                push(heap, rank[tid] << 64 | left << 32 | len(s))
    i = 0
    while i >= 0:
        s = sym[i]
        tid = vocab.get(s)
        if tid is not None:
            out.append(tid)
        else:  # only single characters can miss the vocabulary: fall back to their UTF-8 bytes
            ids = [byte_ids[b] for b in s.encode("utf-8")]
            if all(b is not None for b in ids):
                out.extend(ids)  # type: ignore[arg-type]
            elif unk_id is not None:
                out.append(unk_id)
            else:
                raise TokenizerError(f"cannot encode {s!r}: no byte-fallback tokens and no unknown token")
        i = nxt[i]
