"""Synthetic test models: small random llama / gemma3 / qwen2 / qwen3 / phi3 GGUFs written with `gguf.GGUFWriter`.

    path = make_model(tmp_path / "m.gguf", arch="gemma3", qtype=GGMLType.Q4_K, dim=256, hidden_dim=512)

Weights are random but scaled so activations stay O(1), attention scores O(1) and logits O(1-10)
(no saturated softmax, no degenerate argmax). Types gguf can quantize (legacy, F16, BF16, F32) are
quantized from random floats; k-quants are random blocks whose f16 `d`/`dmin` are overwritten with
small values calibrated (with gguf's dequantizer) to the target standard deviation. The tokenizer is
copied from a llama.cpp vocab GGUF or, without one, a tiny generated SPM vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from realm.quants import LAYOUTS, QK_K, GGMLType, block_size_and_bytes, field_offsets

gguf = pytest.importorskip("gguf")

K_QUANTS = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)
# dmin / d that centres a block's values near zero: mean(sc * q) / mean(m) for uniform random bytes.
_DMIN_RATIO = {GGMLType.Q2_K: 1.5, GGMLType.Q4_K: 7.5, GGMLType.Q5_K: 15.5}


def field_offset(t: GGMLType, name: str) -> int:
    """Byte offset of field `name` inside one block of type `t` (from the LAYOUTS table)."""
    offset = 0
    for fname, dtype, count in LAYOUTS[t].fields:
        if fname == name:
            return offset
        offset += {"f32": 4, "f16": 2, "u8": 1, "i8": 1, "i16": 2}[dtype] * count
    raise KeyError(name)


def random_kquant_rows(rng: np.random.Generator, t: GGMLType, rows: int, cols: int, std: float) -> np.ndarray:
    """Random valid k-quant blocks -> uint8 (rows, row_bytes) whose dequantized values have ~`std`, mean ~0."""
    bs, ts = block_size_and_bytes(t)
    nb = rows * cols // bs
    blocks = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)  # (nb, type_size)
    d = (rng.uniform(0.5, 1.5, nb) * 1e-3).astype(np.float32)  # (nb,)
    ratio = _DMIN_RATIO.get(t)

    def put(scale: float) -> None:
        d16 = (d * scale).astype(np.float16)  # (nb,)
        blocks[:, field_offset(t, "d"):field_offset(t, "d") + 2] = d16.view(np.uint8).reshape(nb, 2)
        if ratio is not None:
            dmin16 = (d * scale * ratio).astype(np.float16)  # (nb,)
            blocks[:, field_offset(t, "dmin"):field_offset(t, "dmin") + 2] = dmin16.view(np.uint8).reshape(nb, 2)

    put(1.0)
    values = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(int(t)))  # (nb, bs)
    put(std / max(float(values.std()), 1e-30))
    return blocks.reshape(rows, cols // bs * ts)


def quantized(rng: np.random.Generator, t: GGMLType, shape: tuple[int, int], std: float) -> tuple[np.ndarray, GGMLType]:
    """Random matrix (rows, cols) with standard deviation `std`, encoded as `t` for GGUFWriter.add_tensor."""
    rows, cols = shape
    if t in K_QUANTS:
        return random_kquant_rows(rng, t, rows, cols, std), t
    w = (rng.standard_normal(shape) * std).astype(np.float32)  # (rows, cols)
    if t == GGMLType.F32:
        return w, t
    if t == GGMLType.F16:
        return w.astype(np.float16), t
    return gguf.quants.quantize(w, gguf.GGMLQuantizationType(int(t))), t


def _copy_tokenizer(writer, vocab_gguf: Path) -> int:
    """Copy every `tokenizer.*` key of a llama.cpp vocab GGUF; returns its vocabulary size."""
    reader = gguf.GGUFReader(str(vocab_gguf))
    n_vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            values = field.contents()
            writer.add_key_value(key, values, main, sub_type=field.types[-1])
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(values)
        else:
            writer.add_key_value(key, field.contents(), main)
    if not n_vocab:
        raise ValueError(f"{vocab_gguf} has no tokenizer.ggml.tokens")
    return n_vocab


def tiny_spm_vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """A small SPM vocabulary: <unk> <s> </s>, 256 byte tokens, then letters and words (tokens, scores,
    types); past the ~600 pieces, "<fillerN>" tokens (for models that need a big output matrix)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE...
    words = ("the of and to in is was for on that with as by at from it his an be are this which or "
             "capital France Paris hello world what").split()
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!'"
    pieces = ["\u2581"] + ["\u2581" + w for w in words] + list(letters) + ["\u2581" + c for c in letters]
    pieces += [a + b for a in "etaoinshr" for b in "etaoinshr"]
    pieces += ["\u2581" + a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "aeiou"]
    seen = set(tokens)
    for p in pieces:
        if len(tokens) >= vocab_size:
            break
        if p not in seen:
            seen.add(p)
            tokens.append(p)
            types.append(1)
    n_pieces = len(tokens)
    tokens += [f"<filler{i}>" for i in range(vocab_size - n_pieces)]
    types += [1] * (vocab_size - n_pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def make_model(path, arch: str = "llama", qtype: GGMLType = GGMLType.Q4_0, n_layers: int | None = None,
               dim: int = 64, hidden_dim: int = 128, n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 16,
               vocab_gguf=None, vocab_size: int | None = None, context_length: int = 256,
               sliding_window: int = 4, seed: int = 0, tied: bool | None = None,
               rope_dim: int | None = None, rope_scaling: float | None = None, rope_base: float | None = None,
               rope_freqs: bool = False, rope_long_short: bool | None = None, qkv_bias: bool | None = None,
               output_bias: bool = False, fused_qkv: bool | None = None, metadata: dict | None = None,
               extra_tensors: dict | None = None, chat_template: str | None = None) -> Path:
    """Write a random `arch` model whose 2-D weights are `qtype`; returns `path`.

    n_layers defaults to 2 (6 for gemma3, so one global layer follows five sliding ones);
    `sliding_window` (gemma3 only) should be shorter than the test sequence. `vocab_gguf` copies a
    real tokenizer (its vocabulary size wins); otherwise a tiny SPM vocab of `vocab_size` (default 300).
    `tied` defaults to True for gemma3 (no output.weight). `rope_dim` < head_dim gives partial rotary;
    `rope_scaling` writes linear `rope.scaling.factor` (global layers only on gemma3).
    Architecture options (defaults follow the architecture): `rope_freqs` writes Llama 3.x
    `rope_freqs.weight` factors; `rope_long_short` (phi3) LongRoPE `rope_factors_long/short.weight` with
    `rope.scaling.attn_factor` and an original context of context_length / 4; `qkv_bias` (qwen2) q/k/v
    biases; `output_bias` attn_output biases; `fused_qkv` (phi3) one attn_qkv matrix. qwen3 has per-head
    q/k norms, phi3 a fused gate+up `ffn_up`. `metadata` adds "<arch>.<key>" values,
    `extra_tensors` more f32 tensors (name -> array); `chat_template` writes `tokenizer.chat_template`.
    """
    qtype = GGMLType(qtype)
    path = Path(path)
    gemma = arch == "gemma3"
    phi3 = arch == "phi3"
    if n_layers is None:
        n_layers = 6 if gemma else 2
    if tied is None:
        tied = gemma
    if qkv_bias is None:
        qkv_bias = arch == "qwen2"
    if fused_qkv is None:
        fused_qkv = phi3
    if rope_long_short is None:
        rope_long_short = phi3
    qk_norm = arch in ("gemma3", "qwen3")
    bs, _ = block_size_and_bytes(qtype)
    for name, cols in (("dim", dim), ("hidden_dim", hidden_dim), ("n_heads * head_dim", n_heads * head_dim)):
        if cols % bs:
            raise ValueError(f"{name} = {cols} is not a multiple of {qtype.name}'s block size {bs}")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"synthetic {arch} {qtype.name}")
    writer.add_context_length(context_length)
    writer.add_embedding_length(dim)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(hidden_dim)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6 if gemma else 1e-5)
    writer.add_rope_freq_base(rope_base or (1e6 if gemma else 10000.0))
    writer.add_rope_dimension_count(rope_dim or head_dim)
    if rope_scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_scaling)
    if rope_long_short:
        writer.add_rope_scaling_orig_ctx_len(context_length // 4)
        scale = 4.0  # context_length / original context
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(context_length // 4)))
    if gemma:
        writer.add_sliding_window(sliding_window)
    for key, value in (metadata or {}).items():
        writer.add_key_value(f"{arch}.{key}", value, _value_type(value))
    writer.add_file_type(int(qtype))

    if vocab_gguf is not None:
        n_vocab = _copy_tokenizer(writer, Path(vocab_gguf))
    else:
        n_vocab = vocab_size or 300
        tokens, scores, types = tiny_spm_vocab(n_vocab)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def matrix(name: str, rows: int, cols: int, std: float) -> None:
        data, t = quantized(rng, qtype, (rows, cols), std)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(int(t)))

    def stacked(name: str, parts: list[tuple[int, int, float]]) -> None:
        """One matrix of several (rows, cols, std) parts, one after the other (fused tensors)."""
        blocks = [quantized(rng, qtype, (rows, cols), std)[0] for rows, cols, std in parts]
        writer.add_tensor(name, np.concatenate(blocks, axis=0), raw_dtype=gguf.GGMLQuantizationType(int(qtype)))

    def norm(name: str, n: int, center: float = 1.0) -> None:
        writer.add_tensor(name, (center + 0.1 * rng.standard_normal(n)).astype(np.float32))  # (n,)

    def vector(name: str, n: int, std: float) -> None:
        writer.add_tensor(name, (std * rng.standard_normal(n)).astype(np.float32))  # (n,)

    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    half = (rope_dim or head_dim) // 2
    # Gemma multiplies embeddings by sqrt(dim): store them 1/sqrt(dim) smaller so the residual is O(1);
    # the tied output then gives logits of std ~2.
    matrix("token_embd.weight", n_vocab, dim, 2.0 / math.sqrt(dim) if gemma else 1.0)
    norm("output_norm.weight", dim)
    if not tied:
        matrix("output.weight", n_vocab, dim, 3.0 / math.sqrt(dim))
    if rope_freqs:  # Llama 3.x-like: high frequencies kept, low ones divided by up to 8
        writer.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, half).astype(np.float32))  # (half,)
    if rope_long_short:
        writer.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 16.0, half).astype(np.float32))
        writer.add_tensor("rope_factors_short.weight", np.geomspace(1.0, 1.5, half).astype(np.float32))
    for il in range(n_layers):
        b = f"blk.{il}."
        norm(b + "attn_norm.weight", dim)
        if fused_qkv:
            stacked(b + "attn_qkv.weight", [(q_dim, dim, 1.5 / math.sqrt(dim)), (kv_dim, dim, 1.5 / math.sqrt(dim)),
                                            (kv_dim, dim, 1.0 / math.sqrt(dim))])
            if qkv_bias:
                vector(b + "attn_qkv.bias", q_dim + 2 * kv_dim, 0.5)
        else:
            matrix(b + "attn_q.weight", q_dim, dim, 1.5 / math.sqrt(dim))
            matrix(b + "attn_k.weight", kv_dim, dim, 1.5 / math.sqrt(dim))
            matrix(b + "attn_v.weight", kv_dim, dim, 1.0 / math.sqrt(dim))
            if qkv_bias:
                vector(b + "attn_q.bias", q_dim, 0.5)
                vector(b + "attn_k.bias", kv_dim, 0.5)
                vector(b + "attn_v.bias", kv_dim, 0.5)
        matrix(b + "attn_output.weight", dim, q_dim, 1.0 / math.sqrt(q_dim))
        if output_bias:
            vector(b + "attn_output.bias", dim, 0.3)
        if qk_norm:
            norm(b + "attn_q_norm.weight", head_dim)
            norm(b + "attn_k_norm.weight", head_dim)
        if gemma:
            norm(b + "post_attention_norm.weight", dim)
            norm(b + "post_ffw_norm.weight", dim)
        norm(b + "ffn_norm.weight", dim)
        if phi3:  # gate rows, then up rows
            stacked(b + "ffn_up.weight", [(hidden_dim, dim, 1.0 / math.sqrt(dim))] * 2)
        else:
            matrix(b + "ffn_gate.weight", hidden_dim, dim, 1.0 / math.sqrt(dim))
            matrix(b + "ffn_up.weight", hidden_dim, dim, 1.0 / math.sqrt(dim))
        matrix(b + "ffn_down.weight", dim, hidden_dim, 1.0 / math.sqrt(hidden_dim))
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, np.asarray(array, np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _value_type(value):
    if isinstance(value, bool):
        return gguf.GGUFValueType.BOOL
    if isinstance(value, int):
        return gguf.GGUFValueType.UINT32
    if isinstance(value, float):
        return gguf.GGUFValueType.FLOAT32
    return gguf.GGUFValueType.STRING


def kquant_dims() -> dict[str, int]:
    """Dimensions valid for every type, k-quants included (rows of multiples of QK_K)."""
    return dict(dim=QK_K, hidden_dim=2 * QK_K, n_heads=4, n_kv_heads=2, head_dim=64)


def random_blocks(t: GGMLType, nb: int, rng: np.random.Generator) -> np.ndarray:
    """nb random blocks (nb, type_size) uint8 whose scale fields are random *finite* values.

    Quant values and packed scales are random bytes; f16 scales are random finite f16 bit patterns
    (subnormals included), Q8_K's f32 d a random normal value of random magnitude.
    Float types (block of one element) stay fully random, NaNs and infs included.
    """
    layout = LAYOUTS[t]
    blocks = rng.integers(0, 256, size=(nb, layout.type_size), dtype=np.uint8)  # (nb, type_size)
    if layout.block_size == 1:
        return blocks
    offsets = field_offsets(t)
    for name, dtype, count in layout.fields:
        o = offsets[name]
        if dtype == "f16":
            h = rng.integers(0, 0x10000, size=(nb, count), dtype=np.uint16)
            h[(h & 0x7C00) == 0x7C00] &= 0xBFFF  # exponent all ones (inf/nan) -> finite
            blocks[:, o:o + 2 * count] = h.astype("<u2").view(np.uint8).reshape(nb, -1)
        elif dtype == "f32":
            v = rng.standard_normal((nb, count)) * 10.0 ** rng.uniform(-6, 6, size=(nb, count))
            blocks[:, o:o + 4 * count] = v.astype("<f4").view(np.uint8).reshape(nb, -1)
    return blocks


def differential_kwargs(arch: str, qtype: GGMLType) -> dict:
    """make_model options the differential tests use: k-quant dims, partial rotary (llama),
    linear RoPE scaling on the global layer (gemma3)."""
    kwargs = kquant_dims() if qtype in K_QUANTS else {}
    if arch == "llama":
        kwargs["rope_dim"] = kwargs.get("head_dim", 16) // 2  # partial rotary exercises the unrotated tail
    else:
        kwargs["rope_scaling"] = 2.0
    return kwargs
