//! Error codes and struct layouts of the host/guest ABI, exactly as `docs/abi.md` states them.
//!
//! The Python twin is `realm/host/abi.py`; a test checks that both code tables agree.

#![allow(dead_code)] // the whole table is mirrored, not every code is produced by the guest

pub const ABI_VERSION: u32 = 2;

pub const ERR_BOUNDS: i32 = -1;
pub const ERR_NO_MODEL: i32 = -2;
pub const ERR_NO_TENSOR: i32 = -3;
pub const ERR_RANGE: i32 = -4;
pub const ERR_TOO_SMALL: i32 = -5;
pub const ERR_BAD_GGUF: i32 = -6;
pub const ERR_ID_CONFLICT: i32 = -7;
pub const ERR_UNSUPPORTED: i32 = -8;
pub const ERR_BAD_ARG: i32 = -9;
pub const ERR_QUOTA: i32 = -10;
pub const ERR_INTERNAL: i32 = -11;
pub const ERR_OOM: i32 = -20;
pub const ERR_NOT_INIT: i32 = -21;
pub const ERR_CONTEXT_FULL: i32 = -22;
pub const ERR_BAD_CONFIG: i32 = -23;
pub const ERR_BAD_TOKEN: i32 = -24;

/// `realm_eval` modes.
pub const EVAL_LAST: i32 = 0;
pub const EVAL_ALL: i32 = 1;
pub const EVAL_HIDDEN: i32 = 2;

/// Matrix groups of one layer that the main guest and its peers multiply together
/// (`realm_peers_begin`, `realm_peer_run`): each is one all-gather of row parts.
pub const GROUP_QKV: i32 = 0; // attn_q, attn_k, attn_v
pub const GROUP_O: i32 = 1; // attn_output
pub const GROUP_GATE_UP: i32 = 2; // ffn_gate, ffn_up
pub const GROUP_DOWN: i32 = 3; // ffn_down

/// `TensorInfo` as the host writes it (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TensorInfo {
    pub ggml_type: u32,
    pub n_dims: u32,
    pub ne: [u64; 4], // GGUF order: ne[0] is the row length
    pub n_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<TensorInfo>() == 48);

/// One request of `realm_read_tensors` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ReadReq {
    pub handle: i32,
    pub out_ptr: i32,
    pub offset: i64,
    pub len: i32,
    pub reserved: i32,
}
const _: () = assert!(core::mem::size_of::<ReadReq>() == 24);

/// One output matrix of `realm_peers_end` (16 bytes): the host writes the peers' row parts of a
/// (nt, rows) result at `out_ptr` whose token rows are `stride` floats apart.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PeerOut {
    pub out_ptr: i32,
    pub stride: i32,
    pub rows: i32,
    pub reserved: i32,
}
const _: () = assert!(core::mem::size_of::<PeerOut>() == 16);

/// `ModelConfigABI`: 32 little-endian 4-byte words; the word index of each field.
pub const CONFIG_BYTES: usize = 128;
pub mod config_word {
    pub const ABI_VERSION: usize = 0;
    pub const DIM: usize = 1;
    pub const HIDDEN_DIM: usize = 2;
    pub const N_LAYERS: usize = 3;
    pub const N_HEADS: usize = 4;
    pub const N_KV_HEADS: usize = 5;
    pub const HEAD_DIM: usize = 6;
    pub const VOCAB_SIZE: usize = 7;
    pub const CONTEXT_LENGTH: usize = 8;
    pub const ROPE_THETA: usize = 9;
    pub const ROPE_THETA_LOCAL: usize = 10;
    pub const ROPE_FREQ_SCALE: usize = 11;
    pub const ROPE_DIM: usize = 12;
    pub const ROPE_STYLE: usize = 13;
    pub const NORM_EPS: usize = 14;
    pub const EMBED_SCALE: usize = 15;
    pub const ATTN_SCALE: usize = 16;
    pub const ACTIVATION: usize = 17;
    pub const SLIDING_WINDOW: usize = 18;
    pub const SLIDING_WINDOW_PATTERN: usize = 19;
    pub const FLAGS: usize = 20;
    pub const FINAL_LOGIT_SOFTCAP: usize = 21;
    pub const ROPE_FACTORS: usize = 22;
    pub const ROPE_ORIG_CTX: usize = 23;
    pub const ROPE_ATTN_FACTOR: usize = 24;
}
pub const FLAG_QK_NORM: u32 = 1 << 0;
pub const FLAG_POST_NORMS: u32 = 1 << 1;
pub const FLAG_TIED_OUTPUT: u32 = 1 << 2;
pub const FLAG_QKV_BIAS: u32 = 1 << 3;
pub const FLAG_ATTN_OUTPUT_BIAS: u32 = 1 << 4;
pub const FLAG_FUSED_QKV: u32 = 1 << 5;
pub const FLAG_FUSED_GATE_UP: u32 = 1 << 6;
pub const ROPE_FACTORS_NONE: u32 = 0;
pub const ROPE_FACTORS_FREQS: u32 = 1;
pub const ROPE_FACTORS_LONG_SHORT: u32 = 2;
pub const ROPE_NORM: u32 = 0;
pub const ROPE_NEOX: u32 = 1;
pub const ACT_SILU: u32 = 0;
pub const ACT_GELU_TANH: u32 = 1;

/// `SampleParams` (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub rng_state: u64,
    pub rng_state_out: u64,
}
const _: () = assert!(core::mem::size_of::<SampleParams>() == 40);

/// `GuestStats` (64 bytes, u64 each).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct GuestStats {
    pub bytes_fetched: u64,
    pub host_calls: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub peak_memory: u64,
    pub n_past: u64,
    pub cache_bytes: u64,
    pub reserved: u64,
}
const _: () = assert!(core::mem::size_of::<GuestStats>() == 64);
