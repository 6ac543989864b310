"""Tokenizers built from GGUF metadata, matching llama.cpp: SPM ("llama"), BPE ("gpt2", "gemma4") with
every pre-tokenizer family llama.cpp knows, and WPM ("bert").

`GGUFFile.metadata` -> `Tokenizer` -> `encode(text)` -> ids for an engine; ids -> `decode`/`StreamDecoder`
-> text. Modules: `vocab` (keys, token types, special-token tables), `unicode` (llama.cpp's code point
classes), `pretok` (pre-tokenizer families), `bpe`, `spm`, `wpm`, `decode`, `core` (the Tokenizer).
"""

from realm.tokenizer.core import Tokenizer
from realm.tokenizer.decode import StreamDecoder
from realm.tokenizer.pretok import FAMILIES, PRE_VALUES, PreTokenizer
from realm.tokenizer.vocab import EOG_TEXTS, KEYS, TokenType

__all__ = ["Tokenizer", "StreamDecoder", "TokenType", "KEYS", "PreTokenizer", "FAMILIES", "PRE_VALUES", "EOG_TEXTS"]
