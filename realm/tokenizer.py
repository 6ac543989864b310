"""Tokenizers built from GGUF metadata (SentencePiece "llama" and byte-level BPE "gpt2"), matching llama.cpp.

`GGUFFile.metadata` -> `Tokenizer` -> `encode(text)` -> ids for an engine; ids -> `decode`/`StreamDecoder` -> text.
Facts from llama.cpp's src/llama-vocab.cpp and src/unicode.cpp (permalinks at the SPM and BPE sections):
https://github.com/ggml-org/llama.cpp/blob/00ad355e009e83abf98f96a6ded7193b95763681/src/llama-vocab.cpp
"""

from __future__ import annotations

import codecs
import enum
import heapq
import logging
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from realm.errors import TokenizerError, UnsupportedError

log = logging.getLogger(__name__)

__all__ = ["Tokenizer", "StreamDecoder", "TokenType", "KEYS"]


class TokenType(enum.IntEnum):
    """Values of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Token attributes are bit flags (llama.cpp's llama_token_attr): the loader ORs CONTROL into tokens
# whose text names an end-of-generation or fill-in-the-middle role, and sets LSTRIP/RSTRIP per model.
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

_ATTR_OF_TYPE = {
    TokenType.UNDEFINED: ATTR_UNDEFINED,
    TokenType.NORMAL: ATTR_NORMAL,
    TokenType.UNKNOWN: ATTR_UNKNOWN,
    TokenType.CONTROL: ATTR_CONTROL,
    TokenType.USER_DEFINED: ATTR_USER_DEFINED,
    TokenType.UNUSED: ATTR_UNUSED,
    TokenType.BYTE: ATTR_BYTE,
}
_ATTR_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL  # omitted by decode unless special=True
_ATTR_PARTITION = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN  # matched in raw text before SPM

# GGUF keys, spelled verbatim once.
KEYS = {
    "model": "tokenizer.ggml.model",
    "pre": "tokenizer.ggml.pre",
    "tokens": "tokenizer.ggml.tokens",
    "scores": "tokenizer.ggml.scores",
    "token_type": "tokenizer.ggml.token_type",
    "merges": "tokenizer.ggml.merges",
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "add_bos": "tokenizer.ggml.add_bos_token",
    "add_eos": "tokenizer.ggml.add_eos_token",
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
    "name": "general.name",
}

# Roles llama.cpp finds by token text when the metadata does not give their ids. Each found token
# gets the CONTROL attribute; fim_pad/rep/sep also end generation. (key, texts)
_ROLE_TEXTS: dict[str, tuple[str | tuple[str, ...], tuple[str, ...]]] = {
    "eot": (
        KEYS["eot"],
        ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
         "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    ),
    "eom": (KEYS["eom"], ("<|eom_id|>",)),
    "fim_pre": (
        ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
        ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
         "<|code_prefix|>", "<|prefix|>"),
    ),
    "fim_suf": (
        ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
        ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
         "<|code_suffix|>", "<|suffix|>"),
    ),
    "fim_mid": (
        ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
        ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
         "<|code_middle|>", "<|middle|>"),
    ),
    "fim_pad": ("tokenizer.ggml.fim_pad_token_id", ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")),
    "fim_rep": (
        "tokenizer.ggml.fim_rep_token_id",
        ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ),
    "fim_sep": ("tokenizer.ggml.fim_sep_token_id", ("<|file_sep|>",)),
}

# Token texts that end generation (llama.cpp's EOG list; the tokens also become CONTROL).
EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

SPACE = "\u2581"  # '▁': SentencePiece's escaped space
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale, used by LSTRIP/RSTRIP
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Defaults when the metadata has no id (llama.cpp, tokenizer models "llama" and "gpt2").
_SPM_DEFAULT_IDS = {"bos": 1, "eos": 2, "unk": 0}
_BPE_DEFAULT_IDS = {"bos": 11, "eos": 11, "unk": None}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _get_bool(md: Mapping[str, Any], key: str, default: bool) -> bool:
    v = md.get(key)
    if v is None:
        return default
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if _is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise TokenizerError(f"{key} must be a bool, got {type(v).__name__}")


def _get_id(md: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    v = md.get(key)
    if v is None:
        return None
    if not _is_int(v):
        raise TokenizerError(f"{key} must be an integer token id, got {type(v).__name__}")
    if not 0 <= int(v) < n_tokens:
        raise TokenizerError(f"{key} = {int(v)} is out of range for a vocabulary of {n_tokens} tokens")
    return int(v)


def _numeric_array(md: Mapping[str, Any], key: str, n_tokens: int, dtype: type) -> np.ndarray | None:
    v = md.get(key)
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not isinstance(v, (np.ndarray, list, tuple)):
        raise TokenizerError(f"{key} must be a numeric array, got {type(v).__name__}")
    try:
        arr = np.asarray(v)
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.size == 0):
            raise TypeError(arr.dtype)
        if np.issubdtype(dtype, np.integer) and not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise TypeError(arr.dtype)
        if np.issubdtype(dtype, np.integer) and arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
            raise TypeError(arr.dtype)
        arr = arr.astype(dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise TokenizerError(f"{key} must be a 1-D numeric array ({e})") from None
    if len(arr) != n_tokens:
        raise TokenizerError(f"{key} has {len(arr)} entries but tokenizer.ggml.tokens has {n_tokens}")
    return arr


class Tokenizer:
    """A llama.cpp-compatible tokenizer built from GGUF metadata.

    Attributes
    ----------
    kind : "spm" (tokenizer.ggml.model "llama") or "bpe" ("gpt2" with a llama3, qwen2 or gpt2 pre-tokenizer)
    vocab_size, bos_id, eos_id, unk_id, eot_id : ids (None when the vocabulary has no such token)
    stop_ids : frozenset of end-of-generation ids (EOS, EOT, `<end_of_turn>`-like tokens)
    add_bos, add_eos, add_space_prefix : the metadata's flags (with llama.cpp's defaults per kind)
    """

    def __init__(self, md: Mapping[str, Any]):
        if not isinstance(md, Mapping):
            raise TokenizerError(f"tokenizer metadata must be a mapping, got {type(md).__name__}")
        model = md.get(KEYS["model"])
        if model is None:
            raise TokenizerError(f"missing {KEYS['model']}")
        if not isinstance(model, str):
            raise TokenizerError(f"{KEYS['model']} must be a string, got {type(model).__name__}")
        if model == "llama":
            self.kind = "spm"
        elif model == "gpt2":
            self.kind = "bpe"
            self._bpe = _BPE.from_metadata(md)  # checks the pre-tokenizer before the costly vocabulary work
        else:
            raise UnsupportedError(f"unsupported tokenizer model {KEYS['model']} = {model!r}")
        self._load_vocab(md)
        self._load_special(md)
        self._build_partition()
        log.debug("tokenizer %s: %d tokens, bos %s, eos %s, stop ids %s", self.kind, self.vocab_size,
                  self.bos_id, self.eos_id, sorted(self.stop_ids))

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF metadata dict (string arrays as list[str], numeric arrays as ndarray)."""
        return cls(md)

    @classmethod
    def from_gguf(cls, gguf_file: Any) -> Tokenizer:
        """Build from an open `realm.gguf.GGUFFile` (anything with a `metadata` mapping)."""
        return cls(gguf_file.metadata)

    def _load_vocab(self, md: Mapping[str, Any]) -> None:
        key = KEYS["tokens"]
        tokens = md.get(key)
        if tokens is None:
            raise TokenizerError(f"missing {key}")
        if not isinstance(tokens, (list, tuple)):
            raise TokenizerError(f"{key} must be an array of strings, got {type(tokens).__name__}")
        if len(tokens) == 0:
            raise TokenizerError(f"{key} is empty")
        if len(tokens) >= 2**31:
            raise TokenizerError(f"{key} has too many tokens ({len(tokens)})")
        try:
            "".join(tokens)  # C-speed check that every entry is a str
        except TypeError:
            for i, t in enumerate(tokens):
                if not isinstance(t, str):
                    raise TokenizerError(f"{key}[{i}] is not a string ({type(t).__name__})") from None
        n = len(tokens)
        self._token_to_id: dict[str, int] = dict(zip(tokens, range(n)))
        if "" in self._token_to_id:  # llama.cpp renames empty tokens; they would never match
            tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
            self._token_to_id = dict(zip(tokens, range(n)))
        self._tokens: list[str] = tokens if isinstance(tokens, list) else list(tokens)
        if len(self._token_to_id) != n:
            seen: dict[str, int] = {}
            for i, t in enumerate(tokens):
                if t in seen:
                    raise TokenizerError(f"{key}: duplicate token {t!r} at ids {seen[t]} and {i}")
                seen[t] = i

        scores = _numeric_array(md, KEYS["scores"], n, np.float32)
        if scores is None:
            scores = np.zeros(n, np.float32)
        scores = np.where(np.isnan(scores), np.float32(-np.inf), scores)  # NaN would make merge order undefined
        # SPM merges only compare scores: rank them, 0 = highest, equal scores equal ranks
        self._score_rank: list[int] = np.unique(-scores, return_inverse=True)[1].reshape(-1).tolist()

        types = _numeric_array(md, KEYS["token_type"], n, np.int64)
        if types is None:
            types = np.full(n, int(TokenType.NORMAL), np.int64)
        types = np.where((types < 0) | (types > int(TokenType.BYTE)), int(TokenType.UNDEFINED), types)
        lut = np.array([_ATTR_OF_TYPE[TokenType(t)] for t in range(len(TokenType))], np.int64)
        self._types = types.astype(np.int8)  # (n,) TokenType values as given
        self._attrs = lut[types]  # (n,) attribute bit flags; a list once construction is done

    def _load_special(self, md: Mapping[str, Any]) -> None:
        n = len(self._tokens)
        ids: dict[str, int | None] = {}
        defaults = _SPM_DEFAULT_IDS if self.kind == "spm" else _BPE_DEFAULT_IDS
        for role, default in defaults.items():
            given = _get_id(md, KEYS[role], n)
            ids[role] = given if given is not None else (default if default is not None and default < n else None)
        self.bos_id: int | None = ids["bos"]
        self.eos_id: int | None = ids["eos"]
        self.unk_id: int | None = ids["unk"]

        self.add_bos = _get_bool(md, KEYS["add_bos"], True if self.kind == "spm" else self._bpe.add_bos)
        self.add_eos = _get_bool(md, KEYS["add_eos"], False)
        # llama.cpp's BPE tokenizer never adds the prefix, so the key only counts for SPM
        self.add_space_prefix = self.kind == "spm" and _get_bool(md, KEYS["add_space_prefix"], True)
        if self.add_bos and self.bos_id is None:
            raise TokenizerError(f"{KEYS['add_bos']} is true, but {KEYS['bos']} is not set")
        if self.add_eos and self.eos_id is None:
            raise TokenizerError(f"{KEYS['add_eos']} is true, but {KEYS['eos']} is not set")

        attrs = self._attrs
        roles: dict[str, int | None] = {}
        for role, (keys, texts) in _ROLE_TEXTS.items():
            found = None
            for k in (keys,) if isinstance(keys, str) else keys:
                found = _get_id(md, k, n)
                if found is not None:
                    break
            if found is None:  # llama.cpp matches by text; take the lowest id so the result is deterministic
                hits = [self._token_to_id[t] for t in texts if t in self._token_to_id]
                if hits:
                    found = min(hits)
                    attrs[found] |= ATTR_CONTROL
            roles[role] = found
        self.eot_id: int | None = roles["eot"]
        self.eom_id: int | None = roles["eom"]

        eog = {roles[r] for r in ("fim_pad", "fim_rep", "fim_sep") if roles[r] is not None}
        for text in EOG_TEXTS:
            i = self._token_to_id.get(text)
            if i is not None:
                eog.add(i)
                attrs[i] |= ATTR_CONTROL
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        texts = {self._tokens[i]: i for i in eog}
        # o200k_harmony / solar-open: "<|end|>" is not an end of generation there
        if "<|end|>" in texts and (
            ("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
            or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)
        ):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "<|tool_response>" in texts and "</s>" in texts:  # gemma4 / paddleocr
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = ATTR_NORMAL
        self.stop_ids: frozenset[int] = frozenset(eog)

        # 256 byte-fallback ids: "<0xNN>", else the single character (ASCII only), else None
        self._byte_ids: list[int | None] = []
        for b in range(256):
            i = self._token_to_id.get(f"<0x{b:02X}>")
            if i is None and b < 0x80:
                i = self._token_to_id.get(chr(b))
            self._byte_ids.append(i)
        self._name = md.get(KEYS["name"]) if isinstance(md.get(KEYS["name"]), str) else ""

    def _build_partition(self) -> None:
        """Special tokens matched in raw text, longest first (llama.cpp's cache_special_tokens)."""
        attrs, tokens = self._attrs, self._tokens
        special = np.flatnonzero(attrs & _ATTR_PARTITION).tolist()
        name = self._name.lower()
        if "phi-3" in name or "phi3" in name:  # llama.cpp: Phi-3 special tokens eat whitespace to their right
            for i in special:
                attrs[i] |= ATTR_RSTRIP
            for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                i = self._token_to_id.get(text)
                if i is not None:
                    attrs[i] = (attrs[i] | ATTR_RSTRIP) if on else (attrs[i] & ~ATTR_RSTRIP)
        special.sort(key=lambda i: (-len(tokens[i].encode("utf-8")), i))
        self._special_rank = {tid: rank for rank, tid in enumerate(special)}  # partition order
        self._tries: dict[bool, tuple[dict, re.Pattern[str], int]] = {}
        self._attrs = attrs.tolist()

    # -- attributes --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def _check_id(self, token_id: Any) -> int:
        try:
            i = operator.index(token_id)
        except TypeError:
            raise TokenizerError(f"token id must be an integer, got {type(token_id).__name__}") from None
        if not 0 <= i < len(self._tokens):
            raise TokenizerError(f"token id {i} is out of range (vocabulary of {len(self._tokens)} tokens)")
        return i

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of `token_id` as stored (with '▁' for spaces)."""
        return self._tokens[self._check_id(token_id)]

    def token_type(self, token_id: int) -> TokenType:
        """The `tokenizer.ggml.token_type` of `token_id`."""
        return TokenType(int(self._types[self._check_id(token_id)]))

    def is_control(self, token_id: int) -> bool:
        """True for control tokens, including those llama.cpp promotes (EOG and FIM texts)."""
        return bool(self._attrs[self._check_id(token_id)] & ATTR_CONTROL)

    def id_of(self, text: str) -> int | None:
        """The id of the vocabulary entry `text` exactly, or None."""
        return self._token_to_id.get(text)

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, stop_ids={sorted(self.stop_ids)})")

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, special: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> token ids, as llama.cpp's `llama_tokenize`.

        Parameters
        ----------
        text : str (lone surrogates, which have no UTF-8 form, are replaced by U+FFFD)
        add_bos : prepend BOS if the model's `add_bos_token` asks for it (llama.cpp's add_special)
        special : match control tokens (`<start_of_turn>`, `<s>`, ...) written in the text;
            user-defined tokens are always matched
        add_eos : append EOS. Only when asked: unlike llama.cpp's add_special, `add_eos_token` in the
            metadata is not applied, since a prompt ending in EOS would end generation before it starts
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text)
        out: list[int] = []
        if add_bos and self.add_bos and self.bos_id is not None:
            out.append(self.bos_id)
        prev_special = True  # the first fragment gets the space prefix, as does any after a special token
        for frag in self._partition(text, special) if text else ():
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag
            if self.kind == "spm":
                self._spm(frag.replace(" ", SPACE), out)
            else:
                self._bpe.encode(frag, self._token_to_id, out)
            prev_special = False
        if add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        if len(out) >= 2 and out[0] == out[1] == self.bos_id and add_bos and self.add_bos:
            log.warning("the prompt starts with BOS and another was added: it now starts with two")
        return out

    def _partition(self, text: str, special: bool) -> list[str | int]:
        """Split `text` at special tokens as llama.cpp's tokenizer_st_partition: the longest token first,
        each taking its leftmost non-overlapping occurrences that lie wholly in still-unclaimed text.

        The tokens present are found by a trie walk from each position holding a possible first
        character (walks over identical windows are done once), so cost does not grow with the number
        of special tokens in the vocabulary.
        """
        trie, first, depth = self._special_trie(special)
        n = len(text)
        present: set[int] = set()
        walked: set[str] = set()
        for m in first.finditer(text):
            i = m.start()
            window = text[i:i + depth]
            if window in walked:
                continue
            walked.add(window)
            node = trie
            for ch in window:
                node = node.get(ch)
                if node is None:
                    break
                tid = node.get(None)
                if tid is not None:
                    present.add(tid)
        if not present:
            return [text]
        attrs, tokens, rank = self._attrs, self._tokens, self._special_rank
        claimed = bytearray(n)  # 1: inside a matched token or whitespace stripped next to one
        starts: dict[int, int] = {}  # position -> token id
        for tid in sorted(present, key=rank.__getitem__):
            tok, attr = tokens[tid], attrs[tid]
            size = len(tok)
            pos = 0
            while (p := text.find(tok, pos)) >= 0:
                q = claimed.find(1, p, p + size)
                if q >= 0:  # any occurrence starting up to q overlaps claimed text: go past it
                    pos = claimed.find(0, q)
                    if pos < 0:
                        break
                    continue
                claimed[p:p + size] = b"\x01" * size
                starts[p] = tid
                pos = p + size
                if attr & ATTR_LSTRIP:
                    k = p - 1
                    while k >= 0 and not claimed[k] and text[k] in _C_SPACE:
                        claimed[k] = 1
                        k -= 1
                if attr & ATTR_RSTRIP:
                    while pos < n and not claimed[pos] and text[pos] in _C_SPACE:
                        claimed[pos] = 1
                        pos += 1
        frags: list[str | int] = []
        i = 0
        while i < n:
            if not claimed[i]:
                j = claimed.find(1, i)
                j = n if j < 0 else j
                frags.append(text[i:j])
                i = j
            elif i in starts:
                frags.append(starts[i])
                i += len(tokens[starts[i]])
            else:
                i += 1  # stripped whitespace
        return frags

    def _special_trie(self, special: bool) -> tuple[dict, re.Pattern[str], int]:
        """Trie of the special tokens matched in raw text (with `special`: control and unknown ones
        too), a regex finding the characters they start with, and their longest length; built on
        first use."""
        cached = self._tries.get(special)
        if cached is None:
            trie: dict = {}
            depth = 0
            for tid in self._special_rank:
                if not special and self._attrs[tid] & _ATTR_SPECIAL:
                    continue
                node = trie
                for ch in self._tokens[tid]:
                    node = node.setdefault(ch, {})
                node[None] = tid
                depth = max(depth, len(self._tokens[tid]))
            chars = "".join(sorted(k for k in trie if k is not None))
            first = re.compile(f"[{re.escape(chars)}]" if chars else r"(?!x)x")
            cached = self._tries[special] = (trie, first, depth)
        return cached

    def _spm(self, text: str, out: list[int]) -> None:
        """SPM merge of one escaped fragment: start from characters, repeatedly merge the adjacent pair
        whose concatenation is a vocabulary token with the highest score (ties: leftmost), then map each
        symbol to its token or to byte-fallback tokens."""
        vocab, rank = self._token_to_id, self._score_rank
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
                self._byte_fallback(s, out)
            i = nxt[i]

    def _byte_fallback(self, s: str, out: list[int]) -> None:
        ids = [self._byte_ids[b] for b in s.encode("utf-8")]
        if all(i is not None for i in ids):
            out.extend(ids)  # type: ignore[arg-type]
        elif self.unk_id is not None:
            out.append(self.unk_id)
        else:
            raise TokenizerError(f"cannot encode {s!r}: no byte-fallback tokens and no unknown token")

    # -- decoding ----------------------------------------------------------------------------------

    def piece_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes one token stands for (llama.cpp's token_to_piece without lstrip)."""
        i = self._check_id(token_id)
        attr = self._attrs[i]
        if attr & _ATTR_SPECIAL and not special:
            return b""
        if attr & (_ATTR_SPECIAL | ATTR_USER_DEFINED):
            return self._tokens[i].encode("utf-8")
        if attr & ATTR_NORMAL:
            if self.kind == "bpe":
                return _bpe_piece(self._tokens[i])
            return self._tokens[i].replace(SPACE, " ").encode("utf-8")
        if attr & ATTR_BYTE:
            m = _BYTE_TOKEN.fullmatch(self._tokens[i])
            return bytes((int(m.group(1), 16),)) if m else b""
        return b""  # unused / undefined tokens print nothing

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Token ids -> text. Control tokens are omitted unless `special`; byte tokens are joined into
        UTF-8 and invalid sequences replaced by U+FFFD.

        With `add_space_prefix` the space the encoder put before the text is removed: one leading space
        of the first piece after any leading BOS, and of the piece after each control/user-defined token
        (the encoder prefixes every fragment that follows one), so `decode(encode(s)) == s`.
        """
        attrs = self._attrs
        buf = bytearray()
        strip = self.add_space_prefix
        leading = True
        for t in ids:
            i = self._check_id(t)
            if leading and i == self.bos_id:
                if special:
                    buf += self.piece_bytes(i, True)
                continue
            leading = False
            piece = self.piece_bytes(i, special)
            if strip and piece[:1] == b" ":
                piece = piece[1:]
            buf += piece
            strip = self.add_space_prefix and bool(attrs[i] & _ATTR_PARTITION)
        if self.kind == "bpe" and self._bpe.clean_spaces:
            buf = _clean_spaces(buf)
        return buf.decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental decoding of generated ids: `feed(id)` returns the text that is complete so far and
    never splits a UTF-8 character (bytes of byte-fallback tokens are held until the character is
    whole); `flush()` returns what is left, invalid bytes as U+FFFD.

    Generated text continues a prompt, so no leading space is stripped (llama.cpp's token_to_piece);
    pass `lstrip_first=True` to decode a sequence from its start like `Tokenizer.decode`. BPE space
    clean-up (llama3's " ," -> ",") is a whole-text pass of `decode` only.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False, lstrip_first: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._strip = lstrip_first and tokenizer.add_space_prefix
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        piece = self.tokenizer.piece_bytes(token_id, self.special)
        if self._strip and token_id != self.tokenizer.bos_id:
            self._strip = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


# -- byte-level BPE (tokenizer model "gpt2") ----------------------------------------------------------------
#
# Words come from a pre-tokenizer regex (llama.cpp's unicode_regex_split, src/unicode.cpp at
# https://github.com/ggml-org/llama.cpp/blob/0c4093cc5bdd0062b017a46017538fffa3ab8d5d/src/unicode.cpp),
# their UTF-8 bytes are mapped to printable characters (GPT-2's byte encoder), then the pair of adjacent
# symbols with the lowest merge rank is merged until none is left (ties: leftmost).

def _gpt2_byte_chars() -> list[str]:
    """byte -> printable character: printable Latin-1 bytes map to themselves, the rest to U+0100.."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars: list[str] = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


_BYTE_CHARS = _gpt2_byte_chars()
_BYTE_ENCODE = str.maketrans({chr(b): c for b, c in enumerate(_BYTE_CHARS)})  # latin-1 char -> byte char
_BYTE_DECODE = {c: b for b, c in enumerate(_BYTE_CHARS)}

# llama.cpp's whitespace set (Unicode White_Space), used for \s in the pre-tokenizer regexes
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"

_PRE_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\pL\pN]?[\pL]+|[\pN]{1,3}"
               r"| ?[^\s\pL\pN]+[\r\n]*|[\s]*[\r\n]+|[\s]+(?![^\s])|[\s]+")
_PRE_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\pL\pN]?[\pL]+|[\pN]"
              r"| ?[^\s\pL\pN]+[\r\n]*|[\s]*[\r\n]+|[\s]+(?![^\s])|[\s]+")
_PRE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?[\pL]+| ?[\pN]+| ?[^\s\pL\pN]+|[\s]+(?![^\s])|[\s]+"

# tokenizer.ggml.pre -> (regex, ignore_merges, add_bos default, clean_spaces)
_PRE_TOKENIZERS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
                    ("llama3", True, True, True)),
    **dict.fromkeys(("dbrx", "smaug-bpe"), ("llama3", False, False, True)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo"), ("qwen2", False, False, False)),
    **dict.fromkeys(("stablelm2", "megrez"), ("qwen2", False, False, True)),
    "hunyuan": ("qwen2", False, False, False),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "mpt",
                     "olmo", "jais", "exaone4"), ("gpt2", False, False, True)),
}

_UNICODE_CLASSES: dict[str, str] = {}


def _unicode_classes() -> dict[str, str]:
    """Regex class bodies for letters (L*), numbers (N*) and llama.cpp's whitespace; built once (~0.3 s)."""
    if not _UNICODE_CLASSES:
        import unicodedata

        everything = "".join(map(chr, range(0xD800))) + "\ud800" * 0x800 + "".join(map(chr, range(0xE000, 0x110000)))
        first = "".join(map(operator.itemgetter(0), map(unicodedata.category, everything)))
        major = np.frombuffer(first.encode("ascii"), np.uint8)  # (0x110000,) first letter of each category

        def body(letter: str) -> str:
            mask = np.concatenate(([False], major == ord(letter), [False]))
            edges = np.flatnonzero(np.diff(mask.astype(np.int8)))  # starts and ends (exclusive), interleaved
            return "".join(f"\\U{a:08x}" if a == b - 1 else f"\\U{a:08x}-\\U{b - 1:08x}"
                           for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()))

        ws = "".join(f"\\U{ord(c):08x}" for c in _WHITESPACE)
        _UNICODE_CLASSES.update(L=body("L"), N=body("N"), s=ws)
    return _UNICODE_CLASSES


def _compile_pre(pattern: str) -> re.Pattern[str]:
    cls = _unicode_classes()
    # every \pL, \pN, \s in the patterns above sits inside [...]: substitute the class bodies
    return re.compile(pattern.replace(r"\pL", cls["L"]).replace(r"\pN", cls["N"]).replace(r"\s", cls["s"]))


_PRE_COMPILED: dict[str, re.Pattern[str]] = {}


class _BPE:
    """Pre-tokenizer regex + merge ranks of a byte-level BPE vocabulary."""

    def __init__(self, pre: str, merges: list[str]):
        regex_name, self.ignore_merges, self.add_bos, self.clean_spaces = _PRE_TOKENIZERS[pre]
        if regex_name not in _PRE_COMPILED:
            src = {"llama3": _PRE_LLAMA3, "qwen2": _PRE_QWEN2, "gpt2": _PRE_GPT2}[regex_name]
            _PRE_COMPILED[regex_name] = _compile_pre(src)
        self.regex = _PRE_COMPILED[regex_name]
        # "left right" -> rank; byte-level symbols never contain a space, so the string is the pair's key
        self.ranks: dict[str, int] = dict(zip(merges, range(len(merges))))
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> _BPE:
        pre = md.get(KEYS["pre"], "default")
        if not isinstance(pre, str):
            raise TokenizerError(f"{KEYS['pre']} must be a string for a BPE vocabulary, got {type(pre).__name__}")
        if pre not in _PRE_TOKENIZERS:
            raise UnsupportedError(f"unsupported BPE pre-tokenizer {KEYS['pre']} = {pre!r}")
        merges = md.get(KEYS["merges"])
        if not isinstance(merges, (list, tuple)):
            raise TokenizerError(f"{KEYS['merges']} must be an array of strings, got {type(merges).__name__}")
        try:
            "".join(merges)
        except TypeError:
            raise TokenizerError(f"{KEYS['merges']} must be an array of strings") from None
        return cls(pre, list(merges))

    def encode(self, text: str, vocab: dict[str, int], out: list[int]) -> None:
        pos = 0
        for m in self.regex.finditer(text):
            if m.start() > pos:  # unmatched gap (cannot happen with the patterns above): its own word
                self._word(text[pos:m.start()], vocab, out)
            self._word(m.group(), vocab, out)
            pos = m.end()
        if pos < len(text):
            self._word(text[pos:], vocab, out)

    def _word(self, word: str, vocab: dict[str, int], out: list[int]) -> None:
        hit = self._cache.get(word)
        if hit is None:
            hit = tuple(self._merge(word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE), vocab))
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[word] = hit
        out.extend(hit)

    def _merge(self, word: str, vocab: dict[str, int]) -> list[int]:
        if self.ignore_merges and word in vocab:
            return [vocab[word]]
        ranks = self.ranks
        sym = list(word)
        n = len(sym)
        if n == 0:
            return []
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
                continue
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
        ids: list[int] = []
        i = 0
        while i >= 0:
            tid = vocab.get(sym[i])
            if tid is not None:
                ids.append(tid)
            else:  # llama.cpp falls back to single-byte tokens and drops what it cannot find
                ids.extend(vocab[c] for c in sym[i] if c in vocab)
            i = nxt[i]
        return ids


def _bpe_piece(text: str) -> bytes:
    """A normal byte-level BPE token's bytes (llama.cpp's llama_decode_text)."""
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


def _clean_spaces(buf: bytes | bytearray) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces passes over the detokenized bytes."""
    t = list(buf)
    sp, q = ord(" "), ord("'")
    if len(t) < 2:
        return bytes(t)
    out = [t[0]]  # pass 1: " ?", " !", " .", " ," lose the space
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
            t[i] = 0
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
