"""llama.cpp's vocabulary test vectors (models/ggml-vocab-*.gguf + .inp/.out) and a per-session cache of
their tokenizers, shared by the tokenizer tests."""

from __future__ import annotations

import functools
from pathlib import Path

from realm.gguf import GGUFFile
from realm.tokenizer import Tokenizer

MARKER = "\n__ggml_vocab_test__\n"

# The vocabularies llama.cpp 0.3.36 ships with vectors, and the ones without (tokenizer model noted)
WITH_VECTORS = ("bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2",
                "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder")
WITHOUT_VECTORS = ("aquila", "baichuan", "gpt-neox", "nomic-bert-moe")


def read_vectors(vocab: Path, name: str) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs of ggml-vocab-<name>.gguf.inp/.out: inputs separated by the marker line
    (gemma-4's file lacks the final one), one line of ids per input."""
    inp = (vocab / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    out = (vocab / f"ggml-vocab-{name}.gguf.out").read_bytes().decode("utf-8")
    if inp.endswith(MARKER):
        inp = inp[: -len(MARKER)]
    texts = inp.split(MARKER)
    lines = out.split("\n")
    assert lines[-1] == ""  # trailing newline
    lines = lines[:-1]
    assert len(texts) == len(lines), (name, len(texts), len(lines))
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@functools.cache
def load(vocab: Path, name: str) -> Tokenizer:
    """The tokenizer of ggml-vocab-<name>.gguf, loaded once per session."""
    with GGUFFile(vocab / f"ggml-vocab-{name}.gguf") as g:
        return Tokenizer.from_gguf(g)
