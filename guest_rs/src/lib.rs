//! realm's wasm32 guest: the exports of docs/abi.md, each forwarding into the model.
//!
//! The transformer lives in model.rs, kernels in kernels.rs, the sampler in sample.rs; host imports
//! only in host.rs. Every export returns an `abi::ERR_*` code on failure and never traps on bad input.

mod abi;
mod host;
mod kernels;
mod model;
mod quants;
mod sample;

/// Allocate `size` bytes (8-aligned) for the host; 0 on failure.
#[no_mangle]
pub extern "C" fn realm_alloc(size: i32) -> i32 {
    model::alloc(size)
}

/// Free what `realm_alloc` returned.
#[no_mangle]
pub extern "C" fn realm_free(ptr: i32, size: i32) {
    model::free(ptr, size)
}

/// Read config and tensor infos of `model_id`, allocate the KV cache and the weight cache.
#[no_mangle]
pub extern "C" fn realm_init(model_id: i64, n_ctx: i32, budget: i32) -> i32 {
    model::init(model_id, n_ctx, budget, 1)
}

/// `realm_init` for the main guest of `n_parts` instances: it multiplies part 0 of every layer
/// matrix's rows itself and has the host run its peers (`realm_init_shard`) on the other parts.
#[no_mangle]
pub extern "C" fn realm_init_main(model_id: i64, n_ctx: i32, budget: i32, n_parts: i32) -> i32 {
    model::init(model_id, n_ctx, budget, n_parts)
}

/// Build peer `part` (1 <= part < n_parts) of `model_id`: multiplies its row parts of the layer
/// matrices for the main guest (`realm_peer_run`) and of the output matrix for a hidden state the
/// host writes at `realm_hidden_ptr` (no norms, no KV cache; `realm_eval` fails); its rows stay
/// resident while they fit `budget`.
#[no_mangle]
pub extern "C" fn realm_init_shard(model_id: i64, budget: i32, part: i32, n_parts: i32) -> i32 {
    model::init_shard(model_id, budget, part, n_parts)
}

/// Peer: its row parts of matrix group `group` (0 q/k/v, 1 attn_output, 2 gate/up, 3 down) of
/// layer `layer` times the (nt, cols) input at `realm_peer_in_ptr`, written at `realm_peer_out_ptr`.
#[no_mangle]
pub extern "C" fn realm_peer_run(group: i32, layer: i32, nt: i32) -> i32 {
    model::peer_run(group, layer, nt)
}

/// Peer: serve the host's mailbox (at `realm_peer_mailbox`) until told to stop: each bump of its
/// sequence number runs one `realm_peer_run` without a call from the host.
#[no_mangle]
pub extern "C" fn realm_peer_serve() -> i32 {
    model::peer_serve()
}

/// Peer: address of its mailbox (8 i32 words, docs/abi.md).
#[no_mangle]
pub extern "C" fn realm_peer_mailbox() -> i32 {
    model::peer_mailbox()
}

/// Peer: address of its (64, max cols) f32 input buffer (0 if not a peer).
#[no_mangle]
pub extern "C" fn realm_peer_in_ptr() -> i32 {
    model::peer_in_ptr()
}

/// Peer: address of its output buffer (0 if not a peer).
#[no_mangle]
pub extern "C" fn realm_peer_out_ptr() -> i32 {
    model::peer_out_ptr()
}

/// Append tokens to the KV cache; mode 0: logits of the last position, 1: of every position,
/// 2: only the last position's final hidden state (see `realm_logits_rows`).
#[no_mangle]
pub extern "C" fn realm_eval(tokens_ptr: i32, n_tokens: i32, mode: i32) -> i32 {
    model::eval(tokens_ptr, n_tokens, mode)
}

/// Address of the (dim,) f32 hidden state the output matrix multiplies (after the final norm).
#[no_mangle]
pub extern "C" fn realm_hidden_ptr() -> i32 {
    model::hidden_ptr()
}

/// Logits rows [row0, row1) of the hidden state into the logits buffer (at their own indices).
#[no_mangle]
pub extern "C" fn realm_logits_rows(row0: i32, row1: i32) -> i32 {
    model::logits_rows(row0, row1)
}

/// Address of the logits of the last `realm_eval`.
#[no_mangle]
pub extern "C" fn realm_logits_ptr() -> i32 {
    model::logits_ptr()
}

/// Sample a token from the last position's logits.
#[no_mangle]
pub extern "C" fn realm_sample(params_ptr: i32) -> i32 {
    model::sample(params_ptr)
}

/// Empty the KV cache (weights stay cached).
#[no_mangle]
pub extern "C" fn realm_reset() -> i32 {
    model::reset()
}

/// Write `GuestStats` to `out_ptr`.
#[no_mangle]
pub extern "C" fn realm_stats(out_ptr: i32) -> i32 {
    model::stats_export(out_ptr)
}

/// Test export: dequantize `n_blocks` blocks of `ggml_type` at `src_ptr` into f32 at `dst_ptr`.
#[no_mangle]
pub extern "C" fn realm_debug_dequant(ggml_type: i32, src_ptr: i32, n_blocks: i32, dst_ptr: i32) -> i32 {
    model::debug_dequant(ggml_type, src_ptr, n_blocks, dst_ptr)
}

/// Test export: out[r] = w[r] · x for a (rows, cols) matrix of `ggml_type` (simd 0: scalar twin, 1: SIMD128).
#[no_mangle]
pub extern "C" fn realm_debug_matvec(
    ggml_type: i32,
    w_ptr: i32,
    rows: i32,
    cols: i32,
    x_ptr: i32,
    out_ptr: i32,
    simd: i32,
) -> i32 {
    model::debug_matvec(ggml_type, w_ptr, rows, cols, x_ptr, out_ptr, simd)
}

/// Test export: out (nt, rows) = x (nt, cols) @ w.T through the engine's matmul (decode/prefill paths).
#[no_mangle]
pub extern "C" fn realm_debug_matmul(
    ggml_type: i32,
    w_ptr: i32,
    rows: i32,
    cols: i32,
    x_ptr: i32,
    nt: i32,
    out_ptr: i32,
) -> i32 {
    model::debug_matmul(ggml_type, w_ptr, rows, cols, x_ptr, nt, out_ptr)
}

/// Test export: the guest's f16 -> f32 conversion of one bit pattern.
#[no_mangle]
pub extern "C" fn realm_debug_f16_to_f32(bits: i32) -> f32 {
    quants::f16_to_f32(bits as u16)
}

/// Test export: the guest's f32 -> f16 conversion (the KV cache format) of one value.
#[no_mangle]
pub extern "C" fn realm_debug_f32_to_f16(value: f32) -> i32 {
    quants::f32_to_f16(value) as i32
}
