"""Vocabulary facts shared by the tokenizers: GGUF keys, token types and attributes, the special-token
roles and end-of-generation texts llama.cpp recognises, and checked readers of untrusted metadata.

Facts from llama.cpp's llama_vocab::impl::load:
https://github.com/ggml-org/llama.cpp/blob/0c1e57098/src/llama-vocab.cpp
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import numpy as np

from realm.errors import TokenizerError


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

ATTR_OF_TYPE = {
    TokenType.UNDEFINED: ATTR_UNDEFINED,
    TokenType.NORMAL: ATTR_NORMAL,
    TokenType.UNKNOWN: ATTR_UNKNOWN,
    TokenType.CONTROL: ATTR_CONTROL,
    TokenType.USER_DEFINED: ATTR_USER_DEFINED,
    TokenType.UNUSED: ATTR_UNUSED,
    TokenType.BYTE: ATTR_BYTE,
}
ATTR_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL  # omitted by decode unless special=True
ATTR_PARTITION = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN  # matched in raw text before merging

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
    "sep": "tokenizer.ggml.seperator_token_id",  # sic
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "add_bos": "tokenizer.ggml.add_bos_token",
    "add_eos": "tokenizer.ggml.add_eos_token",
    "add_sep": "tokenizer.ggml.add_sep_token",
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
    "lowercase": "tokenizer.ggml.normalizer.lowercase",
    "strip_accents": "tokenizer.ggml.normalizer.strip_accents",
    "name": "general.name",
    "architecture": "general.architecture",
}

# Tokenizer models (tokenizer.ggml.model) -> realm's kind and the ids llama.cpp assumes when the
# metadata gives none (None: no such token). Other models llama.cpp knows are refused by name.
MODELS = {
    "llama": ("spm", {"bos": 1, "eos": 2, "unk": 0, "sep": None}),
    "gpt2": ("bpe", {"bos": 11, "eos": 11, "unk": None, "sep": None}),
    "gemma4": ("bpe", {"bos": None, "eos": None, "unk": None, "sep": None}),
    "bert": ("wpm", {"bos": 101, "eos": None, "unk": 100, "sep": 102}),
}
UNSUPPORTED_MODELS = {"t5": "UGM (T5 unigram)", "rwkv": "RWKV", "plamo2": "PLaMo-2", "hybriddna": "HybridDNA",
                      "whitespace": "whitespace", "no_vocab": "no vocabulary", "none": "no vocabulary",
                      "test": "test"}

# Roles llama.cpp finds by token text when the metadata does not give their ids. Each found token
# gets the CONTROL attribute; fim_pad/rep/sep also end generation. (keys, texts)
ROLE_TEXTS: dict[str, tuple[str | tuple[str, ...], tuple[str, ...]]] = {
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

# Token texts that end generation (llama.cpp's EOG list; the tokens also become CONTROL). Besides these,
# EOS, EOT, EOM and the FIM pad/repo/file-separator tokens end generation.
EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

# gpt-oss: always rendered, so llama.cpp makes them user-defined whatever their type
ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def get_bool(md: Mapping[str, Any], key: str, default: bool) -> bool:
    v = md.get(key)
    if v is None:
        return default
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise TokenizerError(f"{key} must be a bool, got {type(v).__name__}")


def get_str(md: Mapping[str, Any], key: str) -> str | None:
    v = md.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise TokenizerError(f"{key} must be a string, got {type(v).__name__}")
    return v


def get_id(md: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    v = md.get(key)
    if v is None:
        return None
    if not is_int(v):
        raise TokenizerError(f"{key} must be an integer token id, got {type(v).__name__}")
    if not 0 <= int(v) < n_tokens:
        raise TokenizerError(f"{key} = {int(v)} is out of range for a vocabulary of {n_tokens} tokens")
    return int(v)


def numeric_array(md: Mapping[str, Any], key: str, n_tokens: int, dtype: type) -> np.ndarray | None:
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
