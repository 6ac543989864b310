"""A small synthetic instruct-style model for chat tests, written with `gguf.GGUFWriter`.

A 1-layer f32 llama whose residual stream is dominated by the current token's embedding (attention
and FFN outputs are small), so the next token is nearly a function of the current one, and whose
output rows make a few designated "bigrams" win by a wide margin: after the generation prompt's last
token the model says " hello world" and then `<|im_end|>`. Everything else it says is noise. The
vocabulary is `synth.tiny_spm_vocab` plus the chat special tokens (control tokens), and the file
carries a ChatML `tokenizer.chat_template`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synth import gguf, tiny_spm_vocab

SPECIALS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
REPLY = (" hello", " world")  # what the model answers after "...assistant\n", then <|im_end|>


def vocabulary(n_pieces: int = 400) -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = tiny_spm_vocab(n_pieces)
    tokens, scores, types = list(tokens), list(scores), list(types)
    for s in SPECIALS:
        tokens.append(s)
        scores.append(0.0)
        types.append(3)  # CONTROL
    return tokens, scores, types


def make_chat_model(path, *, chat_template: str | None = CHATML, dim: int = 64, hidden_dim: int = 128,
                    n_heads: int = 4, n_kv_heads: int = 2, context_length: int = 512, seed: int = 0,
                    mixing: float = 0.02) -> Path:
    """Write the model to `path`; `mixing` scales the attention/FFN outputs (the context's influence)."""
    path = Path(path)
    tokens, scores, types = vocabulary()
    ids = {t: i for i, t in enumerate(tokens)}
    n_vocab, head_dim = len(tokens), dim // n_heads
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic chat llama")
    w.add_context_length(context_length)
    w.add_embedding_length(dim)
    w.add_block_count(1)
    w.add_feed_forward_length(hidden_dim)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    emb = rng.standard_normal((n_vocab, dim))  # (n_vocab, dim)
    out = rng.standard_normal((n_vocab, dim)) * 0.05 / np.sqrt(dim)  # (n_vocab, dim): weak everywhere...
    chain = [ids["<0x0A>"], ids["\u2581hello"], ids["\u2581world"], ids["<|im_end|>"]]
    for prev, nxt in zip(chain, chain[1:]):  # ...but strong for the designated bigrams
        out[nxt] = 2.0 * emb[prev] / np.linalg.norm(emb[prev])
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    w.add_tensor("token_embd.weight", f32(emb))
    w.add_tensor("output_norm.weight", f32(np.ones(dim)))
    w.add_tensor("output.weight", f32(out))
    w.add_tensor("blk.0.attn_norm.weight", f32(np.ones(dim)))
    w.add_tensor("blk.0.attn_q.weight", f32(rng.standard_normal((q_dim, dim)) / np.sqrt(dim)))
    w.add_tensor("blk.0.attn_k.weight", f32(rng.standard_normal((kv_dim, dim)) / np.sqrt(dim)))
    w.add_tensor("blk.0.attn_v.weight", f32(rng.standard_normal((kv_dim, dim)) / np.sqrt(dim)))
    w.add_tensor("blk.0.attn_output.weight", f32(rng.standard_normal((dim, q_dim)) * mixing))
    w.add_tensor("blk.0.ffn_norm.weight", f32(np.ones(dim)))
    w.add_tensor("blk.0.ffn_gate.weight", f32(rng.standard_normal((hidden_dim, dim)) / np.sqrt(dim)))
    w.add_tensor("blk.0.ffn_up.weight", f32(rng.standard_normal((hidden_dim, dim)) / np.sqrt(dim)))
    w.add_tensor("blk.0.ffn_down.weight", f32(rng.standard_normal((dim, hidden_dim)) * mixing))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
