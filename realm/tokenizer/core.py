"""The Tokenizer: GGUF metadata -> `encode(text)` -> ids for an engine; ids -> `decode`/`StreamDecoder` -> text.

Matches llama.cpp's llama_vocab (load, tokenize, detokenize) for the tokenizer models "llama" (SPM),
"gpt2" and "gemma4" (BPE, every pre-tokenizer family of `pretok.py`) and "bert" (WPM):
https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp

Flags per model (llama.cpp's defaults; the GGUF keys add_bos_token, add_eos_token and
add_space_prefix override them; BPE flags come from the pre-tokenizer, see pretok.py):

| model  | kind | add_bos | space prefix | clean_spaces | default bos/eos/unk ids |
| ------ | ---- | ------- | ------------ | ------------ | ----------------------- |
| llama  | spm  | yes     | yes          | no           | 1 / 2 / 0               |
| gpt2   | bpe  | family  | no           | family       | 11 / 11 / -             |
| gemma4 | bpe  | forced  | no           | yes          | - / - / - (pre gemma4)  |
| bert   | wpm  | yes     | no           | yes          | 101 / - / 100, sep 102  |

The space prefix is added by the SPM encoder before the first fragment and after each special token;
llama.cpp's add_space_prefix flag also makes `decode` drop one leading space of the first piece (for
any model). End of generation (`stop_ids`): EOS, EOT, EOM, FIM pad/repo/file-separator and every token
whose text is in vocab.EOG_TEXTS, except "<|end|>" in harmony-style vocabularies (<|return|> with
<|call|>, or <|calls|> with <|flush|>) and "</s>" next to "<|tool_response>" (Gemma 4).
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from realm.errors import TokenizerError, UnsupportedError
from realm.tokenizer import decode as D
from realm.tokenizer.bpe import BPE, byte_decode
from realm.tokenizer.pretok import PreTokenizer
from realm.tokenizer.spm import SPACE, spm_encode
from realm.tokenizer.vocab import (
    ALWAYS_RENDERED, ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_OF_TYPE, ATTR_PARTITION,
    ATTR_RSTRIP, ATTR_SPECIAL, ATTR_USER_DEFINED, EOG_TEXTS, KEYS, MODELS, ROLE_TEXTS, UNSUPPORTED_MODELS,
    TokenType, get_bool, get_id, get_str, numeric_array,
)
from realm.tokenizer.wpm import wpm_encode

log = logging.getLogger(__name__)

_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale, used by LSTRIP/RSTRIP
_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """A llama.cpp-compatible tokenizer built from GGUF metadata.

    Attributes
    ----------
    kind : "spm" (model "llama"), "bpe" ("gpt2", "gemma4") or "wpm" ("bert")
    pre : the BPE pre-tokenizer (`PreTokenizer`: family, regexes, flags), None for SPM/WPM
    vocab_size, bos_id, eos_id, unk_id, eot_id, eom_id, sep_id : ids (None when there is no such token)
    stop_ids : frozenset of end-of-generation ids (llama.cpp's EOG set)
    add_bos, add_eos : the metadata's flags (with llama.cpp's defaults per model and pre-tokenizer)
    add_space_prefix : the encoder prefixes a space (SPM)
    clean_spaces : decode applies clean_up_tokenization_spaces
    """

    def __init__(self, md: Mapping[str, Any]):
        if not isinstance(md, Mapping):
            raise TokenizerError(f"tokenizer metadata must be a mapping, got {type(md).__name__}")
        model = md.get(KEYS["model"])
        if model is None:
            raise TokenizerError(f"missing {KEYS['model']}")
        if not isinstance(model, str):
            raise TokenizerError(f"{KEYS['model']} must be a string, got {type(model).__name__}")
        if model in UNSUPPORTED_MODELS:
            raise UnsupportedError(f"unsupported tokenizer model {KEYS['model']} = {model!r} "
                                   f"({UNSUPPORTED_MODELS[model]})")
        if model not in MODELS:
            raise UnsupportedError(f"unsupported tokenizer model {KEYS['model']} = {model!r}")
        self.model = model
        self.kind, default_ids = MODELS[model]
        self.pre: PreTokenizer | None = None
        self._bpe: BPE | None = None
        if self.kind == "bpe":  # checks the pre-tokenizer before the costly vocabulary work
            self.pre = PreTokenizer.named("gemma4" if model == "gemma4" else get_str(md, KEYS["pre"]))
            self._bpe = BPE.from_metadata(md, self.pre, KEYS["merges"])
        self._load_vocab(md)
        self._load_flags(md, default_ids)
        self._load_special(md)
        self._build_partition(md)
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

        scores = numeric_array(md, KEYS["scores"], n, np.float32)
        if scores is None:
            scores = np.zeros(n, np.float32)
        scores = np.where(np.isnan(scores), np.float32(-np.inf), scores)  # NaN would make merge order undefined
        # SPM merges only compare scores: rank them, 0 = highest, equal scores equal ranks
        self._score_rank: list[int] = (np.unique(-scores, return_inverse=True)[1].reshape(-1).tolist()
                                       if self.kind == "spm" else [])

        types = numeric_array(md, KEYS["token_type"], n, np.int64)
        if types is None:
            types = np.full(n, int(TokenType.NORMAL), np.int64)
        types = np.where((types < 0) | (types > int(TokenType.BYTE)), int(TokenType.UNDEFINED), types)
        lut = np.array([ATTR_OF_TYPE[TokenType(t)] for t in range(len(TokenType))], np.int64)
        self._types = types.astype(np.int8)  # (n,) TokenType values as given
        self._attrs = lut[types]  # (n,) attribute bit flags; a list once construction is done

    def _load_flags(self, md: Mapping[str, Any], default_ids: dict[str, int | None]) -> None:
        n = len(self._tokens)
        pre = self.pre
        ids: dict[str, int | None] = {}
        for role, default in default_ids.items():
            if role == "bos" and pre is not None and pre.no_bos:
                default = None
            given = get_id(md, KEYS[role], n)
            ids[role] = given if given is not None else (default if default is not None and default < n else None)
        self.bos_id: int | None = ids["bos"]
        self.eos_id: int | None = ids["eos"]
        self.unk_id: int | None = ids["unk"]
        self.sep_id: int | None = ids["sep"]

        if self.kind == "bpe":
            assert pre is not None
            add_bos, prefix, clean = pre.add_bos, False, pre.clean_spaces
        elif self.kind == "spm":
            add_bos, prefix, clean = True, True, False
        else:  # wpm
            add_bos, prefix, clean = True, False, True
        self.add_bos = get_bool(md, KEYS["add_bos"], add_bos)
        if pre is not None and pre.force_bos:
            self.add_bos = True  # llama.cpp overrides add_bos_token = false for Gemma 4
        self.add_eos = get_bool(md, KEYS["add_eos"], False)
        # llama.cpp's add_space_prefix: the SPM encoder prefixes a space; decode (any model) drops one
        self._lstrip_first = get_bool(md, KEYS["add_space_prefix"], prefix)
        self.add_space_prefix = self.kind == "spm" and self._lstrip_first
        self.clean_spaces = clean
        self._lowercase = get_bool(md, KEYS["lowercase"], True)
        self._strip_accents = get_bool(md, KEYS["strip_accents"], self._lowercase)
        if self.add_bos and self.bos_id is None:
            raise TokenizerError(f"{KEYS['add_bos']} is true, but {KEYS['bos']} is not set")
        if self.add_eos and self.eos_id is None:
            raise TokenizerError(f"{KEYS['add_eos']} is true, but {KEYS['eos']} is not set")

    def _load_special(self, md: Mapping[str, Any]) -> None:
        n = len(self._tokens)
        attrs = self._attrs
        roles: dict[str, int | None] = {}
        for role, (keys, texts) in ROLE_TEXTS.items():
            found = None
            for k in (keys,) if isinstance(keys, str) else keys:
                found = get_id(md, k, n)
                if found is not None:
                    break
            if found is None:  # llama.cpp matches by text (in hash order); take the first text listed
                hits = [self._token_to_id[t] for t in texts if t in self._token_to_id]
                if hits:
                    found = hits[0]
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
        for text in ALWAYS_RENDERED:
            i = self._token_to_id.get(text)
            if i is not None:
                attrs[i] = ATTR_USER_DEFINED
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        texts = {self._tokens[i]: i for i in eog}
        # o200k_harmony / solar-open: "<|end|>" is not an end of generation there
        if "<|end|>" in texts and (
            ("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
            or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)
        ):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):  # gemma4, plamo
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
        self._max_len = max(map(len, self._tokens)) if self.kind == "wpm" else 0

    def _build_partition(self, md: Mapping[str, Any]) -> None:
        """Special tokens matched in raw text, longest first (llama.cpp's cache_special_tokens), and the
        per-model LSTRIP/RSTRIP attributes llama.cpp sets by model name, pre-tokenizer or architecture."""
        attrs, tokens, ids = self._attrs, self._tokens, self._token_to_id
        special = np.flatnonzero(attrs & ATTR_PARTITION).tolist()
        name = md.get(KEYS["name"]) if isinstance(md.get(KEYS["name"]), str) else ""
        pre = md.get(KEYS["pre"]) if isinstance(md.get(KEYS["pre"]), str) else ""
        arch = md.get(KEYS["architecture"]) if isinstance(md.get(KEYS["architecture"]), str) else ""
        name = "".join(c.lower() if c.isascii() else c for c in name)  # C tolower, byte by byte
        if (any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
                or any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3"))):
            if "<mask>" in ids:
                attrs[ids["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:  # Phi-3 special tokens eat whitespace to their right
            for i in special:
                attrs[i] |= ATTR_RSTRIP
            for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                i = ids.get(text)
                if i is not None:
                    attrs[i] = (attrs[i] | ATTR_RSTRIP) if on else (attrs[i] & ~ATTR_RSTRIP)
        elif "modern-bert" in name and "[MASK]" in ids:
            attrs[ids["[MASK]"]] |= ATTR_LSTRIP
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

    def is_eog(self, token_id: int) -> bool:
        """True if generating `token_id` ends the turn (llama.cpp's llama_vocab_is_eog)."""
        return self._check_id(token_id) in self.stop_ids

    def id_of(self, text: str) -> int | None:
        """The id of the vocabulary entry `text` exactly, or None."""
        return self._token_to_id.get(text)

    def __repr__(self) -> str:
        family = f", pre={self.pre.pre!r} ({self.pre.family})" if self.pre else ""
        return (f"Tokenizer(kind={self.kind!r}{family}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, stop_ids={sorted(self.stop_ids)})")

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, special: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> token ids, as llama.cpp's `llama_tokenize`.

        Parameters
        ----------
        text : str (lone surrogates, which have no UTF-8 form, are replaced by U+FFFD)
        add_bos : prepend BOS if the model's `add_bos_token` asks for it (llama.cpp's add_special);
            for WPM also append SEP, as llama.cpp does
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
        vocab = self._token_to_id
        prev_special = True  # the first fragment gets the space prefix, as does any after a special token
        for frag in self._partition(text, special) if text else ():
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.kind == "spm":
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                spm_encode(frag.replace(" ", SPACE), vocab, self._score_rank, self._byte_ids, self.unk_id, out)
            elif self.kind == "bpe":
                assert self._bpe is not None and self.pre is not None
                self._bpe.encode(frag.replace(" ", SPACE) if self.pre.escape_whitespaces else frag, vocab, out)
            else:
                wpm_encode(frag, vocab, self._max_len, self.unk_id, self._lowercase, self._strip_accents, out)
            prev_special = False
        if self.kind == "wpm" and add_bos and self.sep_id is not None:
            out.append(self.sep_id)
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
                if not special and self._attrs[tid] & ATTR_SPECIAL:
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

    # -- decoding ----------------------------------------------------------------------------------

    def piece_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes one token stands for (llama.cpp's token_to_piece without lstrip)."""
        i = self._check_id(token_id)
        attr = self._attrs[i]
        if attr & ATTR_SPECIAL and not special:
            return b""
        text = self._tokens[i]
        if attr & (ATTR_SPECIAL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & ATTR_NORMAL:
            if self.pre is not None and not self.pre.escape_whitespaces:
                return byte_decode(text)
            return text.replace(SPACE, " ").encode("utf-8")
        if attr & ATTR_BYTE:
            return bytes((_hex_byte(text[3:5]),))
        return b""  # unused / undefined tokens print nothing

    def decode(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> str:
        """Token ids -> text, as llama.cpp's `llama_detokenize(ids, remove_special, unparse_special=special)`;
        invalid UTF-8 (a lone byte token, say) becomes U+FFFD.

        Control and unknown tokens are omitted unless `special`. With llama.cpp's add_space_prefix
        flag (SPM) one leading space of the first piece is removed, so `decode(encode(s, add_bos=False))
        == s`; a leading BOS takes that place, so decoding a prompt with its BOS keeps the space, as in
        llama.cpp. `remove_special` drops a leading BOS (and keeps that space) and a trailing EOS when
        the model adds them. Vocabularies with clean_spaces get llama.cpp's clean-up (" ," -> ",", ...).
        """
        return D.detokenize(self, ids, special, remove_special).decode("utf-8", errors="replace")


def _hex_byte(digits: str) -> int:
    """strtol(digits, 16) of a byte token's "NN" in "<0xNN>" (leading hex digits; none: 0)."""
    m = re.match("[0-9A-Fa-f]*", digits)
    return int(m.group(), 16) & 0xFF if m and m.group() else 0
