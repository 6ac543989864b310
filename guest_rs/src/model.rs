//! The transformer: config, weights (resident cache + streaming), KV cache (f16), forward pass.
//!
//! Memory model (DESIGN.md): everything lives inside `budget` bytes of linear memory. At init the
//! KV cache, activations for `n_batch` tokens, the logits and a streaming chunk buffer are
//! allocated; the rest of the budget pins matrices in access order (layer by layer, then the
//! output matrix), loaded on first use. Matrices that do not fit are streamed through the chunk
//! buffer at every use; each chunk is multiplied with all tokens of the batch. Token embeddings are
//! fetched one row per token. llama, gemma3, qwen2, qwen3 and phi3 differ only through `Config`
//! fields (a fused tensor, e.g. phi3's `attn_qkv`, is read as several matrices at row offsets).
//!
//! Parts: an engine may run several instances of this guest (docs/abi.md, "Shards"). Each then
//! multiplies one part of every matrix's rows (`part_rows`) and caches only that part; the main
//! instance (part 0) does the rest of the forward pass and, around each group of a layer's
//! matrices, has the host start and gather the other parts (`group_matmul`).

use crate::abi::*;
use crate::host;
use crate::kernels::{self, XQBuf};
use crate::quants::{f32_to_f16, GgmlType};
use crate::sample;
use core::arch::wasm32::memory_size;
use core::sync::atomic::{compiler_fence, Ordering};
use std::alloc::{alloc as sys_alloc, dealloc, Layout};

const SLACK: usize = 1 << 20; // headroom for the allocator and small allocations
const MAX_BATCH: usize = 64; // tokens per weight pass
const MAX_CHUNK: usize = 1 << 20; // streaming chunk: 1 MiB stays cache-hot between the host's memmove and the kernel
const MIN_CHUNK: usize = 256 << 10;
const MAX_READ: usize = 1 << 30; // largest single host read
/// A streamed chunk is placed in the chunk buffer so that its guest address and its offset in the
/// tensor agree mod READ_ALIGN (tensor data is aligned in GGUF files, usually to 32 or more): the
/// Linux kernel's copy behind a JS host's pread runs 3-4x slower when source and destination
/// disagree mod 32 (1.6-2.0 GB/s at 1-8 bytes apart, 4.4 at 16, 6.7-7.1 at 0 or 32, measured in
/// Node: benchmarks/reports/2026-12-06-node-read-path); a memmove barely cares.
const READ_ALIGN: usize = 64;
/// Resident matrices (or shard parts) of at least this many bytes are multiplied with the kernels'
/// software prefetch (kernels::TOUCH_AHEAD). They are read from DRAM every token. Smaller ones
/// lost time with it at both the 64 MiB default and a budget holding the whole default model; only
/// this one threshold was measured.
const PREFETCH_MIN: usize = 4 << 20;

type Res<T> = Result<T, i32>;

// ---------------------------------------------------------------------------------------------
// Global state (the guest is single-threaded).

static mut ENGINE: Option<Box<Engine>> = None;
static mut STATS: GuestStats = GuestStats {
    bytes_fetched: 0,
    host_calls: 0,
    cache_hits: 0,
    cache_misses: 0,
    peak_memory: 0,
    n_past: 0,
    cache_bytes: 0,
    reserved: 0,
};
static mut HEAP_BASE: usize = 0; // linear memory size before the first engine was built
static mut ACCOUNTED: usize = 0; // bytes held by engine buffers

fn stats() -> &'static mut GuestStats {
    unsafe { &mut STATS }
}

/// Current linear memory size in bytes (also tracks the peak).
fn mem_bytes() -> usize {
    let m = memory_size(0) * 65536;
    let s = stats();
    if m as u64 > s.peak_memory {
        s.peak_memory = m as u64;
    }
    m
}

/// A range of guest memory given by the host, if it lies inside memory.
fn mem_range(ptr: i32, len: usize) -> Option<*mut u8> {
    let p = ptr as u32 as usize;
    if p.checked_add(len)? > mem_bytes() || p == 0 {
        return None;
    }
    Some(p as *mut u8)
}

/// A Vec of `n` copies of `v`, refusing (ERR_OOM) if it would push memory past the budget.
fn try_vec<T: Clone>(n: usize, v: T, budget: usize) -> Res<Vec<T>> {
    let bytes = n.checked_mul(core::mem::size_of::<T>()).ok_or(ERR_OOM)?;
    let projected = unsafe { HEAP_BASE + ACCOUNTED } + bytes + SLACK;
    if projected > budget {
        return Err(ERR_OOM);
    }
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| ERR_OOM)?;
    out.resize(n, v);
    unsafe { ACCOUNTED += bytes };
    mem_bytes();
    Ok(out)
}

/// Give back what `try_vec` accounted for.
fn release<T>(v: &mut Vec<T>) {
    let bytes = v.capacity() * core::mem::size_of::<T>();
    unsafe { ACCOUNTED = ACCOUNTED.saturating_sub(bytes) };
    *v = Vec::new();
}

pub fn alloc(size: i32) -> i32 {
    if size < 0 {
        return 0;
    }
    let layout = match Layout::from_size_align((size as usize).max(1), 8) {
        Ok(l) => l,
        Err(_) => return 0,
    };
    let p = unsafe { sys_alloc(layout) };
    mem_bytes();
    p as usize as i32
}

pub fn free(ptr: i32, size: i32) {
    if ptr == 0 || size < 0 {
        return;
    }
    if let Ok(layout) = Layout::from_size_align((size as usize).max(1), 8) {
        unsafe { dealloc(ptr as u32 as usize as *mut u8, layout) };
    }
}

// ---------------------------------------------------------------------------------------------
// Config.

/// `ModelConfigABI` decoded (fields as `realm.config.ModelConfig`).
#[derive(Clone, Copy)]
struct Config {
    dim: usize,
    hidden_dim: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    rope_theta: f32,
    rope_theta_local: f32,
    rope_freq_scale: f32,
    rope_dim: usize,
    rope_style: u32,
    norm_eps: f32,
    embed_scale: f32,
    attn_scale: f32,
    activation: u32,
    sliding_window: usize,
    sliding_window_pattern: usize,
    qk_norm: bool,
    post_norms: bool,
    tied_output: bool,
    final_logit_softcap: f32,
    rope_factors: u32,     // ROPE_FACTORS_*: which frequency-factor tensor divides RoPE's frequencies
    rope_orig_ctx: usize,  // LongRoPE: long factors iff n_ctx > this
    rope_attn_factor: f32, // RoPE's cos and sin are multiplied by this
    qkv_bias: bool,
    attn_output_bias: bool,
    fused_qkv: bool,
    fused_gate_up: bool,
}

impl Config {
    fn parse(b: &[u8; CONFIG_BYTES]) -> Res<Config> {
        use config_word as w;
        let u = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        let f = |i: usize| f32::from_bits(u(i));
        if u(w::ABI_VERSION) != ABI_VERSION {
            return Err(ERR_BAD_CONFIG);
        }
        let flags = u(w::FLAGS);
        let c = Config {
            dim: u(w::DIM) as usize,
            hidden_dim: u(w::HIDDEN_DIM) as usize,
            n_layers: u(w::N_LAYERS) as usize,
            n_heads: u(w::N_HEADS) as usize,
            n_kv_heads: u(w::N_KV_HEADS) as usize,
            head_dim: u(w::HEAD_DIM) as usize,
            vocab_size: u(w::VOCAB_SIZE) as usize,
            rope_theta: f(w::ROPE_THETA),
            rope_theta_local: f(w::ROPE_THETA_LOCAL),
            rope_freq_scale: f(w::ROPE_FREQ_SCALE),
            rope_dim: u(w::ROPE_DIM) as usize,
            rope_style: u(w::ROPE_STYLE),
            norm_eps: f(w::NORM_EPS),
            embed_scale: f(w::EMBED_SCALE),
            attn_scale: f(w::ATTN_SCALE),
            activation: u(w::ACTIVATION),
            sliding_window: u(w::SLIDING_WINDOW) as usize,
            sliding_window_pattern: u(w::SLIDING_WINDOW_PATTERN) as usize,
            qk_norm: flags & FLAG_QK_NORM != 0,
            post_norms: flags & FLAG_POST_NORMS != 0,
            tied_output: flags & FLAG_TIED_OUTPUT != 0,
            final_logit_softcap: f(w::FINAL_LOGIT_SOFTCAP),
            rope_factors: u(w::ROPE_FACTORS),
            rope_orig_ctx: u(w::ROPE_ORIG_CTX) as usize,
            rope_attn_factor: f(w::ROPE_ATTN_FACTOR),
            qkv_bias: flags & FLAG_QKV_BIAS != 0,
            attn_output_bias: flags & FLAG_ATTN_OUTPUT_BIAS != 0,
            fused_qkv: flags & FLAG_FUSED_QKV != 0,
            fused_gate_up: flags & FLAG_FUSED_GATE_UP != 0,
        };
        let small = |v: usize| v > 0 && v <= 1 << 20;
        let dims_ok = small(c.dim)
            && small(c.hidden_dim)
            && c.n_heads <= 1 << 12
            && c.n_kv_heads <= c.n_heads
            && c.head_dim <= 1 << 16
            && c.n_layers > 0
            && c.n_heads > 0
            && c.n_kv_heads > 0
            && c.n_heads % c.n_kv_heads == 0
            && c.head_dim > 0
            && c.head_dim % 2 == 0
            && c.vocab_size > 0
            && c.rope_dim > 0
            && c.rope_dim % 2 == 0
            && c.rope_dim <= c.head_dim
            && c.n_layers <= 4096
            && c.n_heads * c.head_dim <= 1 << 20
            && c.vocab_size <= 1 << 24;
        let floats_ok = [
            c.rope_theta,
            c.rope_theta_local,
            c.rope_freq_scale,
            c.norm_eps,
            c.embed_scale,
            c.attn_scale,
            c.rope_attn_factor,
        ]
        .iter()
        .all(|v| v.is_finite() && *v > 0.0)
            && c.final_logit_softcap.is_finite()
            && c.final_logit_softcap >= 0.0;
        let enums_ok = c.rope_style <= ROPE_NEOX
            && c.activation <= ACT_GELU_TANH
            && c.rope_factors <= ROPE_FACTORS_LONG_SHORT
            && flags < 1 << 7;
        if !(dims_ok && floats_ok && enums_ok) {
            return Err(ERR_BAD_CONFIG);
        }
        Ok(c)
    }

    fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn layer_is_sliding(&self, il: usize) -> bool {
        let p = self.sliding_window_pattern;
        self.sliding_window > 0 && p > 0 && il % p != p - 1
    }

    /// (tensor, first row, rows, tensor rows) of layer il's matrix `name`: fused tensors hold
    /// several matrices one after the other (`realm.config.ModelConfig.matrix_source`).
    fn matrix_source(&self, il: usize, name: &str) -> (String, usize, usize, usize) {
        let (q, kv, h) = (self.q_dim(), self.kv_dim(), self.hidden_dim);
        let t = |s: &str| format!("blk.{}.{}.weight", il, s);
        let qkv = q + 2 * kv;
        match name {
            "attn_q" if self.fused_qkv => (t("attn_qkv"), 0, q, qkv),
            "attn_k" if self.fused_qkv => (t("attn_qkv"), q, kv, qkv),
            "attn_v" if self.fused_qkv => (t("attn_qkv"), q + kv, kv, qkv),
            "ffn_gate" if self.fused_gate_up => (t("ffn_up"), 0, h, 2 * h),
            "ffn_up" if self.fused_gate_up => (t("ffn_up"), h, h, 2 * h),
            "attn_q" => (t(name), 0, q, q),
            "attn_k" | "attn_v" => (t(name), 0, kv, kv),
            "ffn_gate" | "ffn_up" => (t(name), 0, h, h),
            _ => (t(name), 0, self.dim, self.dim), // attn_output, ffn_down
        }
    }

    /// (tensor, start, n, tensor length) of the bias after layer il's matrix `name`, if any.
    fn bias_source(&self, il: usize, name: &str) -> Option<(String, usize, usize, usize)> {
        let b = |s: &str| format!("blk.{}.{}.bias", il, s);
        match name {
            "attn_q" | "attn_k" | "attn_v" if self.qkv_bias => {
                let (_, r0, rows, total) = self.matrix_source(il, name);
                Some(if self.fused_qkv { (b("attn_qkv"), r0, rows, total) } else { (b(name), 0, rows, rows) })
            }
            "attn_output" if self.attn_output_bias => Some((b(name), 0, self.dim, self.dim)),
            _ => None,
        }
    }

    /// The frequency-factor tensor an engine of context n_ctx uses, if any.
    fn rope_factors_tensor(&self, n_ctx: usize) -> Option<&'static str> {
        match self.rope_factors {
            ROPE_FACTORS_FREQS => Some("rope_freqs.weight"),
            ROPE_FACTORS_LONG_SHORT if n_ctx > self.rope_orig_ctx => Some("rope_factors_long.weight"),
            ROPE_FACTORS_LONG_SHORT => Some("rope_factors_short.weight"),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Weights: matrices resident in the cache or streamed through the chunk buffer.

#[derive(Clone, Copy)]
struct Matrix {
    handle: i32,
    ggml_type: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    n_bytes: u64, // may exceed 4 GiB (wasm32 usize is 32 bits): offsets into a tensor are u64
    base: u64,    // byte offset of row 0 inside the tensor (a matrix of a fused tensor)
    slot: Option<usize>, // index into Weights::cache when resident
}

struct Slot {
    data: Vec<u8>, // (rows, row_bytes) raw quantized bytes of matrix rows row0..row0 + rows
    loaded: bool,
    row0: usize,
}

struct Weights {
    model_id: i64,
    budget: usize,
    cache: Vec<Slot>,
    chunk: Vec<u8>, // streaming buffer: a whole number of rows of any matrix, + READ_ALIGN
}

/// Copy `out.len()` bytes of a tensor starting at byte `offset` (u64: tensors may exceed 4 GiB),
/// in <= MAX_READ pieces.
fn fetch(model_id: i64, handle: i32, offset: u64, out: &mut [u8]) -> Res<()> {
    let mut done = 0;
    while done < out.len() {
        let n = (out.len() - done).min(MAX_READ);
        let s = stats();
        s.host_calls += 1;
        let rc = host::read_tensor(model_id, handle, offset + done as u64, &mut out[done..done + n]);
        if rc < 0 {
            return Err(rc);
        }
        if rc as usize != n {
            return Err(ERR_INTERNAL);
        }
        s.bytes_fetched += n as u64;
        done += n;
    }
    Ok(())
}

impl Weights {
    /// out[t * out_stride + r] = m[r] · x[t] for t < nt (x is (nt, m.cols)).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        m: &Matrix,
        x: &[f32],
        nt: usize,
        out: &mut [f32],
        out_stride: usize,
        tmp: &mut [f32],
        xqb: &mut XQBuf,
    ) -> Res<()> {
        self.matmul_rows(m, 0, m.rows, x, nt, out, out_stride, tmp, xqb)
    }

    /// out[t * out_stride + (r - r0)] = m[r] · x[t] for rows r0 <= r < r1 and t < nt. Rows are
    /// multiplied in groups of four counted from row 0 of the matrix whatever r0 (a multiple of 4)
    /// and the chunk size, so a row's result does not depend on how the rows were split.
    #[allow(clippy::too_many_arguments)]
    fn matmul_rows(
        &mut self,
        m: &Matrix,
        r0: usize,
        r1: usize,
        x: &[f32],
        nt: usize,
        out: &mut [f32],
        out_stride: usize,
        tmp: &mut [f32],
        xqb: &mut XQBuf,
    ) -> Res<()> {
        let rb = m.row_bytes;
        let cached = m.slot.filter(|&s| {
            let slot = &self.cache[s];
            r0 >= slot.row0 && r1 <= slot.row0 + slot.data.len() / rb
        });
        if let Some(s) = cached {
            let slot = &mut self.cache[s];
            if !slot.loaded {
                stats().cache_misses += 1;
                fetch(self.model_id, m.handle, m.base + slot.row0 as u64 * rb as u64, &mut slot.data)?;
                slot.loaded = true;
                stats().cache_bytes += slot.data.len() as u64;
            } else {
                stats().cache_hits += 1;
            }
            let a = r0 - slot.row0;
            kernels::matmul(
                m.ggml_type,
                &slot.data[a * rb..(a + r1 - r0) * rb],
                r1 - r0,
                m.cols,
                x,
                nt,
                out,
                out_stride,
                tmp,
                xqb,
                slot.data.len() >= PREFETCH_MIN,
            );
            return Ok(());
        }
        stats().cache_misses += 1;
        let fit = ((self.chunk.len() - READ_ALIGN) / rb).max(1);
        let rows_per_chunk = if fit >= 4 { fit / 4 * 4 } else { fit };
        if kernels::uses_xq(m.ggml_type) {
            kernels::quantize_tokens(x, nt, m.cols, xqb); // once for every chunk
        }
        let mut r = r0;
        while r < r1 {
            let n = rows_per_chunk.min(r1 - r);
            let off = m.base + r as u64 * rb as u64;
            // guest address = offset in the tensor (mod READ_ALIGN): see READ_ALIGN
            let sh = (off as usize).wrapping_sub(self.chunk.as_ptr() as usize) % READ_ALIGN;
            let buf = &mut self.chunk[sh..sh + n * rb];
            fetch(self.model_id, m.handle, off, buf)?;
            // no prefetch: the host's copy has just brought the chunk into cache
            kernels::matmul_quantized(m.ggml_type, buf, n, m.cols, x, nt, &mut out[r - r0..], out_stride, tmp, xqb, false);
            r += n;
        }
        Ok(())
    }

    /// The loaded resident bytes of the whole of `m`, if any.
    fn resident(&self, m: &Matrix) -> Option<&[u8]> {
        let slot = &self.cache[m.slot?];
        if slot.loaded && slot.row0 == 0 && slot.data.len() as u64 == m.n_bytes {
            Some(&slot.data)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layers, activations, engine.

struct Layer {
    attn_norm: Vec<f32>,           // (dim,)
    attn_q_norm: Vec<f32>,         // (head_dim,) or empty
    attn_k_norm: Vec<f32>,         // (head_dim,) or empty
    post_attention_norm: Vec<f32>, // (dim,) or empty
    ffn_norm: Vec<f32>,            // (dim,)
    post_ffw_norm: Vec<f32>,       // (dim,) or empty
    bias_q: Vec<f32>,              // (q_dim,) or empty
    bias_k: Vec<f32>,              // (kv_dim,) or empty
    bias_v: Vec<f32>,              // (kv_dim,) or empty
    bias_output: Vec<f32>,         // (dim,) or empty
    attn_q: Matrix,                // (q_dim, dim)
    attn_k: Matrix,                // (kv_dim, dim)
    attn_v: Matrix,                // (kv_dim, dim)
    attn_output: Matrix,           // (dim, q_dim)
    ffn_gate: Matrix,              // (hidden_dim, dim)
    ffn_up: Matrix,                // (hidden_dim, dim)
    ffn_down: Matrix,              // (dim, hidden_dim)
    key_cache: Vec<u16>,           // (kv_cap, kv_dim) f16, position p in slot p % kv_cap
    value_cache: Vec<u16>,         // (kv_cap, kv_dim) f16
    kv_cap: usize,                 // n_ctx, or a ring of sliding_window + MAX_BATCH (kv_capacity)
    sliding: bool,
}

impl Layer {
    /// The matrices of group `g` (`abi::GROUP_*`) and how many there are.
    fn group(&self, g: i32) -> Option<([Matrix; 3], usize)> {
        Some(match g {
            GROUP_QKV => ([self.attn_q, self.attn_k, self.attn_v], 3),
            GROUP_O => ([self.attn_output; 3], 1),
            GROUP_GATE_UP => ([self.ffn_gate, self.ffn_up, self.ffn_up], 2),
            GROUP_DOWN => ([self.ffn_down; 3], 1),
            _ => return None,
        })
    }
}

struct Acts {
    x: Vec<f32>,        // (n_batch, dim) residual stream
    xb: Vec<f32>,       // (n_batch, dim)
    xb2: Vec<f32>,      // (n_batch, q_dim) attention output
    q: Vec<f32>,        // (n_batch, q_dim)
    k: Vec<f32>,        // (n_batch, kv_dim)
    v: Vec<f32>,        // (n_batch, kv_dim)
    hb: Vec<f32>,       // (n_batch, hidden_dim)
    hb2: Vec<f32>,      // (n_batch, hidden_dim)
    att: Vec<f32>,      // (n_ctx,) scores of one head
    tmp: Vec<f32>,      // (max cols,) a dequantized row
    xq: XQBuf,          // (n_batch, max cols) x quantized per block of 32 for the integer kernels
    rope: Vec<f32>,     // (2, n_batch, rope_dim / 2, 2) cos, sin for global (0) and local (1) layers
    embd: Vec<u8>,      // (n_batch, token_embd row_bytes)
    reqs: Vec<ReadReq>, // (n_batch,)
}

struct Engine {
    cfg: Config,
    n_ctx: usize,
    n_batch: usize,
    part: usize,    // this instance computes part `part` of `n_parts` of every matrix's rows
    n_parts: usize, // 1: alone; else the main guest is part 0 and its peers the others
    peer_in: Vec<f32>,  // peer: (MAX_BATCH, max cols) input the host writes for `realm_peer_run`
    peer_out: Vec<f32>, // peer: its row parts of one group, (nt, part rows) per matrix in turn
    w: Weights,
    layers: Vec<Layer>,
    token_embd: Matrix,    // (vocab_size, dim)
    output: Matrix,        // (vocab_size, dim); token_embd when tied
    output_norm: Vec<f32>, // (dim,)
    rope_factors: Vec<f32>, // (rope_dim/2,) divisors of RoPE's frequencies (ones without factors)
    a: Acts,
    hidden: Vec<f32>,     // (dim,) last position after output_norm: the output matrix's input
    logits: Vec<f32>,     // (vocab_size,) last position
    all_logits: Vec<f32>, // (n_tokens, vocab_size) when asked for every position
    use_all: bool,
    have_logits: bool,
    history: Vec<i32>, // (n_ctx,) tokens evaluated so far
    n_past: usize,
    sample_x: Vec<f32>,    // (vocab_size,) sampler scratch
    sample_cand: Vec<u32>, // (vocab_size,)
    sample_seen: Vec<i32>, // (n_ctx,)
}

impl Drop for Engine {
    fn drop(&mut self) {
        unsafe { ACCOUNTED = 0 };
    }
}

/// KV positions kept by layer il: all n_ctx, or on sliding layers a ring of the window plus one
/// batch, so a failed `realm_eval` of <= MAX_BATCH tokens never overwrites a position still visible.
fn kv_capacity(cfg: &Config, il: usize, n_ctx: usize) -> usize {
    if cfg.layer_is_sliding(il) {
        n_ctx.min(cfg.sliding_window.saturating_add(MAX_BATCH))
    } else {
        n_ctx
    }
}

/// Rows [start, end) of part `part` of `n` of a matrix of `rows` rows: near-equal contiguous parts
/// cut at multiples of 4 (rows are multiplied in groups of four counted from row 0, so no row's
/// result depends on the split); the last part ends at `rows`. The host's `_row_ranges` is the
/// same function.
fn part_rows(rows: usize, part: usize, n: usize) -> (usize, usize) {
    let cut = |i: usize| {
        if i >= n {
            rows
        } else {
            ((rows as u64 * i as u64 / n as u64) as usize / 4 * 4).min(rows)
        }
    };
    (cut(part), cut(part + 1))
}

fn lookup(model_id: i64, name: &str) -> Res<(i32, TensorInfo)> {
    stats().host_calls += 1;
    host::tensor_info(model_id, name)
}

/// Look up a matrix and check it is (rows, cols) of a supported type.
fn matrix(model_id: i64, name: &str, rows: usize, cols: usize) -> Res<Matrix> {
    matrix_part(model_id, name, rows, cols, 0, rows)
}

/// Rows [row0, row0 + rows) of a (total, cols) tensor of a supported type, as a matrix.
fn matrix_part(model_id: i64, name: &str, total: usize, cols: usize, row0: usize, rows: usize) -> Res<Matrix> {
    if row0 + rows > total {
        return Err(ERR_BAD_CONFIG);
    }
    let (handle, info) = lookup(model_id, name)?;
    let t = GgmlType::from_u32(info.ggml_type).ok_or(ERR_UNSUPPORTED)?;
    let dims_ok = info.n_dims == 2
        && info.ne[0] == cols as u64
        && info.ne[1] == total as u64
        && info.ne[2] == 1
        && info.ne[3] == 1;
    if !dims_ok {
        host::log(3, &format!("tensor {} has the wrong shape", name));
        return Err(ERR_BAD_CONFIG);
    }
    let row_bytes = t.row_bytes(cols).ok_or(ERR_BAD_CONFIG)?;
    // all < 2^32: no overflow in u64
    if info.n_bytes != row_bytes as u64 * total as u64 {
        return Err(ERR_BAD_CONFIG);
    }
    Ok(Matrix {
        handle,
        ggml_type: t,
        rows,
        cols,
        row_bytes,
        n_bytes: row_bytes as u64 * rows as u64,
        base: row_bytes as u64 * row0 as u64,
        slot: None,
    })
}

/// Fetch a 1-D weight of `n` elements (raw bytes, one read) and dequantize it in the guest.
fn vector(model_id: i64, name: &str, n: usize, budget: usize) -> Res<Vec<f32>> {
    let (handle, info) = lookup(model_id, name)?;
    let t = GgmlType::from_u32(info.ggml_type).ok_or(ERR_UNSUPPORTED)?;
    let n_elements = info.ne.iter().product::<u64>();
    let n_bytes = t.row_bytes(n);
    if n_elements != n as u64 || info.ne[0] != n as u64 || n_bytes.map(|b| b as u64) != Some(info.n_bytes) {
        host::log(3, &format!("tensor {} has the wrong shape", name));
        return Err(ERR_BAD_CONFIG);
    }
    let mut raw = try_vec(info.n_bytes as usize, 0u8, budget)?;
    let mut out = try_vec(n, 0f32, budget)?;
    let fetched = fetch(model_id, handle, 0, &mut raw);
    kernels::dequantize(t, &raw, &mut out);
    release(&mut raw);
    fetched?;
    Ok(out)
}

/// Elements [start, start + n) of a 1-D weight of `total` elements (a fused bias), if `src` is given.
fn vector_part(want: bool, model_id: i64, src: Option<(String, usize, usize, usize)>, budget: usize) -> Res<Vec<f32>> {
    match src {
        Some((name, start, n, total)) if want => {
            if start + n > total {
                return Err(ERR_BAD_CONFIG);
            }
            let mut full = vector(model_id, &name, total, budget)?;
            if start > 0 || n < total {
                let mut part = try_vec(n, 0f32, budget)?;
                part.copy_from_slice(&full[start..start + n]);
                release(&mut full);
                return Ok(part);
            }
            Ok(full)
        }
        _ => Ok(Vec::new()),
    }
}

fn optional_vector(want: bool, model_id: i64, name: &str, n: usize, budget: usize) -> Res<Vec<f32>> {
    if want {
        vector(model_id, name, n, budget)
    } else {
        Ok(Vec::new())
    }
}

impl Engine {
    /// `parts` = (part, n_parts): this instance multiplies part `part` of every layer matrix's rows
    /// (`part_rows`); (0, 1) alone. `shard`: a peer (`realm_init_shard`, part >= 1): no norms, no
    /// KV cache, no sampler buffers; it multiplies its row parts of a layer's matrices for the
    /// main guest (`realm_peer_run`) and its rows of the output matrix (`realm_logits_rows` on a
    /// `hidden` the host writes), keeping those rows resident while they fit its budget.
    fn new(model_id: i64, n_ctx: usize, budget: usize, shard: bool, parts: (usize, usize)) -> Res<Engine> {
        let (part, n_parts) = parts;
        if n_parts == 0 || part >= n_parts || shard != (part > 0) {
            return Err(ERR_BAD_ARG);
        }
        let mut raw = [0u8; CONFIG_BYTES];
        stats().host_calls += 1;
        let rc = host::get_config(model_id, &mut raw);
        if rc < 0 {
            return Err(rc);
        }
        if rc as usize != CONFIG_BYTES {
            return Err(ERR_BAD_CONFIG);
        }
        let cfg = Config::parse(&raw)?;
        stats().host_calls += 1;
        let (n_tensors, total) = host::get_model_info(model_id)?;
        host::log(
            0,
            &format!(
                "realm guest: model {} tensors, {} bytes; n_ctx {}, budget {}",
                n_tensors, total, n_ctx, budget
            ),
        );
        let (dim, hidden, q_dim, kv_dim, vocab) = (cfg.dim, cfg.hidden_dim, cfg.q_dim(), cfg.kv_dim(), cfg.vocab_size);
        // the KV cache alone must fit (checked in u64: positions x dims can exceed 32 bits)
        let kv_positions: u64 = (0..cfg.n_layers).map(|il| kv_capacity(&cfg, il, n_ctx) as u64).sum();
        let kv_bytes = 4 * kv_positions * kv_dim as u64;
        if kv_bytes > budget as u64 {
            return Err(ERR_OOM);
        }

        // tensors
        let token_embd = matrix(model_id, "token_embd.weight", vocab, dim)?;
        let output = if cfg.tied_output {
            token_embd
        } else {
            matrix(model_id, "output.weight", vocab, dim)?
        };
        let output_norm = vector(model_id, "output_norm.weight", dim, budget)?;
        let half = cfg.rope_dim / 2;
        let rope_factors = match cfg.rope_factors_tensor(n_ctx) {
            Some(name) if !shard => vector(model_id, name, half, budget)?,
            _ => try_vec(half, 1f32, budget)?,
        };
        // a factor must be a positive finite divisor
        if !rope_factors.iter().all(|v| v.is_finite() && *v > 0.0) {
            host::log(3, "RoPE frequency factors must be positive and finite");
            return Err(ERR_BAD_CONFIG);
        }
        let mut layers = Vec::new();
        layers.try_reserve_exact(cfg.n_layers).map_err(|_| ERR_OOM)?;
        let main = !shard;
        for il in 0..cfg.n_layers {
            let name = |s: &str| format!("blk.{}.{}.weight", il, s);
            let mat = |s: &str, cols: usize| {
                let (tensor, row0, rows, total) = cfg.matrix_source(il, s);
                matrix_part(model_id, &tensor, total, cols, row0, rows)
            };
            let bias = |s: &str| vector_part(main, model_id, cfg.bias_source(il, s), budget);
            let sliding = cfg.layer_is_sliding(il);
            let kv_cap = if main { kv_capacity(&cfg, il, n_ctx) } else { 0 };
            layers.push(Layer {
                attn_norm: optional_vector(main, model_id, &name("attn_norm"), dim, budget)?,
                attn_q_norm: optional_vector(main && cfg.qk_norm, model_id, &name("attn_q_norm"), cfg.head_dim, budget)?,
                attn_k_norm: optional_vector(main && cfg.qk_norm, model_id, &name("attn_k_norm"), cfg.head_dim, budget)?,
                post_attention_norm: optional_vector(
                    main && cfg.post_norms,
                    model_id,
                    &name("post_attention_norm"),
                    dim,
                    budget,
                )?,
                ffn_norm: optional_vector(main, model_id, &name("ffn_norm"), dim, budget)?,
                post_ffw_norm: optional_vector(main && cfg.post_norms, model_id, &name("post_ffw_norm"), dim, budget)?,
                bias_q: bias("attn_q")?,
                bias_k: bias("attn_k")?,
                bias_v: bias("attn_v")?,
                bias_output: bias("attn_output")?,
                attn_q: mat("attn_q", dim)?,
                attn_k: mat("attn_k", dim)?,
                attn_v: mat("attn_v", dim)?,
                attn_output: mat("attn_output", q_dim)?,
                ffn_gate: mat("ffn_gate", dim)?,
                ffn_up: mat("ffn_up", dim)?,
                ffn_down: mat("ffn_down", hidden)?,
                key_cache: try_vec(kv_cap * kv_dim, 0u16, budget)?,
                value_cache: try_vec(kv_cap * kv_dim, 0u16, budget)?,
                kv_cap,
                sliding,
            });
        }

        // activations for n_batch tokens: at most 1/8 of the budget
        let max_cols = dim.max(hidden).max(q_dim);
        let per_token = 4 * (2 * dim + 2 * q_dim + 2 * kv_dim + 2 * hidden + cfg.rope_dim * 2)
            + 3 * max_cols
            + token_embd.row_bytes
            + 24;
        // a peer takes whatever batch the main guest runs (<= MAX_BATCH) and needs only its input,
        // the quantized input and its outputs
        let n_batch = if shard {
            MAX_BATCH
        } else {
            (budget / 8 / per_token).clamp(1, MAX_BATCH).min(n_ctx.max(1))
        };
        let nb = if shard { 0 } else { n_batch };
        let a = Acts {
            x: try_vec(nb * dim, 0f32, budget)?,
            xb: try_vec(nb * dim, 0f32, budget)?,
            xb2: try_vec(nb * q_dim, 0f32, budget)?,
            q: try_vec(nb * q_dim, 0f32, budget)?,
            k: try_vec(nb * kv_dim, 0f32, budget)?,
            v: try_vec(nb * kv_dim, 0f32, budget)?,
            hb: try_vec(nb * hidden, 0f32, budget)?,
            hb2: try_vec(nb * hidden, 0f32, budget)?,
            att: try_vec(n_ctx, 0f32, budget)?,
            tmp: try_vec(max_cols, 0f32, budget)?,
            xq: XQBuf {
                q: try_vec(n_batch * max_cols, 0i16, budget)?,
                d: try_vec(n_batch * (max_cols / kernels::QKX + 1), 0f32, budget)?,
                s: try_vec(n_batch * (max_cols / kernels::QKX + 1), 0f32, budget)?,
            },
            rope: try_vec(2 * nb * cfg.rope_dim, 0f32, budget)?,
            embd: try_vec(nb * token_embd.row_bytes, 0u8, budget)?,
            reqs: try_vec(nb, ReadReq::default(), budget)?,
        };
        let (peer_in, peer_out) = if shard {
            let mut out_rows = 0;
            for l in &layers {
                for g in [GROUP_QKV, GROUP_O, GROUP_GATE_UP, GROUP_DOWN] {
                    if let Some((ms, k)) = l.group(g) {
                        let rows: usize = ms[..k].iter().map(|m| {
                            let (r0, r1) = part_rows(m.rows, part, n_parts);
                            r1 - r0
                        }).sum();
                        out_rows = out_rows.max(rows);
                    }
                }
            }
            (try_vec(MAX_BATCH * max_cols, 0f32, budget)?, try_vec(MAX_BATCH * out_rows, 0f32, budget)?)
        } else {
            (Vec::new(), Vec::new())
        };
        let hidden_state = try_vec(dim, 0f32, budget)?;
        let logits = try_vec(vocab, 0f32, budget)?;
        let history = try_vec(n_ctx, 0i32, budget)?;
        let n_sample = if shard { 0 } else { vocab };
        let sample_x = try_vec(n_sample, 0f32, budget)?;
        let sample_cand = try_vec(n_sample, 0u32, budget)?;
        let sample_seen = try_vec(n_ctx, 0i32, budget)?;

        // streaming chunk: a whole number of rows of every matrix
        let mut max_row = output.row_bytes;
        for l in &layers {
            for m in [
                &l.attn_q,
                &l.attn_k,
                &l.attn_v,
                &l.attn_output,
                &l.ffn_gate,
                &l.ffn_up,
                &l.ffn_down,
            ] {
                max_row = max_row.max(m.row_bytes);
            }
        }
        // a shard has nothing else to spend its budget on
        let chunk_len = (budget / if shard { 4 } else { 16 }).clamp(MIN_CHUNK, MAX_CHUNK).max(max_row);
        let chunk = try_vec(chunk_len + READ_ALIGN, 0u8, budget)?;

        let mut e = Engine {
            cfg,
            n_ctx,
            n_batch,
            part,
            n_parts,
            peer_in,
            peer_out,
            w: Weights {
                model_id,
                budget,
                cache: Vec::new(),
                chunk,
            },
            layers,
            token_embd,
            output,
            output_norm,
            rope_factors,
            a,
            hidden: hidden_state,
            logits,
            all_logits: Vec::new(),
            use_all: false,
            have_logits: false,
            history,
            n_past: 0,
            sample_x,
            sample_cand,
            sample_seen,
        };
        e.plan_cache(shard);
        Ok(e)
    }

    /// Pin this instance's row parts of the layer matrices in access order while they fit the rest
    /// of the budget, then the output matrix: all of it in the main guest (whose embedding lookups
    /// may need any row), a peer's own part of its rows.
    fn plan_cache(&mut self, shard: bool) {
        let (part, n_parts) = (self.part, self.n_parts);
        let budget = self.w.budget;
        let n_slots = self.layers.len() * 7 + 1;
        if self.w.cache.try_reserve_exact(n_slots).is_err() {
            return;
        }
        let mut plan: Vec<*mut Matrix> = Vec::new();
        if plan.try_reserve_exact(n_slots).is_err() {
            return;
        }
        for l in self.layers.iter_mut() {
            for m in [
                &mut l.attn_q,
                &mut l.attn_k,
                &mut l.attn_v,
                &mut l.attn_output,
                &mut l.ffn_gate,
                &mut l.ffn_up,
                &mut l.ffn_down,
            ] {
                plan.push(m as *mut Matrix);
            }
        }
        let n_layer_matrices = plan.len();
        plan.push(&mut self.output as *mut Matrix);
        for (i, mp) in plan.into_iter().enumerate() {
            let m = unsafe { &mut *mp };
            let (r0, r1) = if i < n_layer_matrices || shard {
                part_rows(m.rows, part, n_parts)
            } else {
                (0, m.rows)
            };
            let n_bytes = (r1 - r0) as u64 * m.row_bytes as u64;
            if r1 == r0 || n_bytes > i32::MAX as u64 {
                continue;
            }
            if let Ok(data) = try_vec(n_bytes as usize, 0u8, budget) {
                m.slot = Some(self.w.cache.len());
                self.w.cache.push(Slot {
                    data,
                    loaded: false,
                    row0: r0,
                });
            }
        }
        if self.cfg.tied_output {
            self.token_embd.slot = self.output.slot;
        }
    }

    /// (cos, sin) table of `pos` for RoPE base `theta` and position scale `scale` into `cs` (rope_dim/2
    /// pairs): pair i turns by pos * scale * theta^(-2i/rope_dim) / factors[i]; cos and sin are
    /// multiplied by the attention factor (ggml_rope_ext's freq_factors and attn_factor, no YaRN).
    fn rope_table(cfg: &Config, factors: &[f32], pos: usize, theta: f32, scale: f32, cs: &mut [f32]) {
        let half = cfg.rope_dim / 2;
        let p = pos as f64 * scale as f64;
        let m = cfg.rope_attn_factor as f64;
        for i in 0..half {
            let inv_freq = (theta as f64).powf(-2.0 * i as f64 / cfg.rope_dim as f64) / factors[i] as f64;
            let angle = p * inv_freq;
            cs[2 * i] = (angle.cos() * m) as f32;
            cs[2 * i + 1] = (angle.sin() * m) as f32;
        }
    }

    /// Append `tokens`; `mode` EVAL_LAST: logits of the last position, EVAL_ALL: of every position,
    /// EVAL_HIDDEN: only the last position's `hidden` (the host then asks for logit rows).
    fn eval(&mut self, tokens: &[i32], mode: i32) -> Res<()> {
        let all_logits = mode == EVAL_ALL;
        let n = tokens.len();
        if n == 0 {
            return Err(ERR_BAD_ARG);
        }
        if self.n_past + n > self.n_ctx {
            return Err(ERR_CONTEXT_FULL);
        }
        if tokens.iter().any(|&t| t < 0 || t as usize >= self.cfg.vocab_size) {
            return Err(ERR_BAD_TOKEN);
        }
        let vocab = self.cfg.vocab_size;
        self.have_logits = false;
        release(&mut self.all_logits);
        if all_logits {
            self.all_logits = try_vec(n.checked_mul(vocab).ok_or(ERR_OOM)?, 0f32, self.w.budget)?;
        }
        self.use_all = all_logits;
        let start = self.n_past;
        let mut i = 0;
        while i < n {
            let nt = self.n_batch.min(n - i);
            let batch = &tokens[i..i + nt];
            let last = i + nt == n;
            if let Err(e) = self.forward(batch, start + i, all_logits, last, i, mode == EVAL_LAST) {
                // positions already written stay unused: n_past is unchanged
                self.n_past = start;
                return Err(e);
            }
            i += nt;
        }
        self.history[start..start + n].copy_from_slice(tokens);
        self.n_past = start + n;
        stats().n_past = self.n_past as u64;
        self.have_logits = mode != EVAL_HIDDEN;
        Ok(())
    }

    /// A peer's share of group `group` of layer `layer`: its row part of each of the group's
    /// matrices times the (nt, cols) input in `peer_in`, into `peer_out` as one (nt, part rows)
    /// block per matrix in turn.
    fn peer_run(&mut self, group: i32, layer: usize, nt: usize) -> Res<()> {
        if self.part == 0 || layer >= self.layers.len() || nt == 0 || nt > MAX_BATCH {
            return Err(ERR_BAD_ARG);
        }
        let (ms, k) = self.layers[layer].group(group).ok_or(ERR_BAD_ARG)?;
        let cols = ms[0].cols;
        if nt * cols > self.peer_in.len() {
            return Err(ERR_BAD_ARG);
        }
        let mut off = 0;
        for m in &ms[..k] {
            let (r0, r1) = part_rows(m.rows, self.part, self.n_parts);
            let n = nt * (r1 - r0);
            if off + n > self.peer_out.len() {
                return Err(ERR_INTERNAL);
            }
            if n > 0 {
                let out = &mut self.peer_out[off..off + n];
                let x = &self.peer_in[..nt * cols];
                self.w.matmul_rows(m, r0, r1, x, nt, out, r1 - r0, &mut self.a.tmp, &mut self.a.xq)?;
            }
            off += n;
        }
        Ok(())
    }

    /// logits[r0..r1] = output[r0..r1] · hidden (softcapped); the other rows are left as they are.
    fn logits_rows(&mut self, r0: usize, r1: usize) -> Res<()> {
        if r0 > r1 || r1 > self.cfg.vocab_size {
            return Err(ERR_BAD_ARG);
        }
        self.use_all = false;
        release(&mut self.all_logits);
        let dim = self.cfg.dim;
        let out = &mut self.logits[r0..r1];
        self.w.matmul_rows(
            &self.output,
            r0,
            r1,
            &self.hidden[..dim],
            1,
            out,
            r1 - r0,
            &mut self.a.tmp,
            &mut self.a.xq,
        )?;
        softcap(out, self.cfg.final_logit_softcap);
        self.have_logits = true;
        Ok(())
    }

    /// Run `tokens` (at positions pos0..) through every layer; logits of every token into
    /// all_logits rows from `row0` (all) or of the last token into `logits` (last).
    fn forward(&mut self, tokens: &[i32], pos0: usize, all: bool, last: bool, row0: usize, logits: bool) -> Res<()> {
        let cfg = self.cfg;
        let nt = tokens.len();
        let (dim, hidden, q_dim, kv_dim, hd) = (cfg.dim, cfg.hidden_dim, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        self.embed(tokens)?;

        // RoPE tables for both layer kinds: rope[kind][t] = (cos, sin) pairs
        let half = cfg.rope_dim / 2;
        for t in 0..nt {
            let g = &mut self.a.rope[t * cfg.rope_dim..(t + 1) * cfg.rope_dim];
            Self::rope_table(&cfg, &self.rope_factors, pos0 + t, cfg.rope_theta, cfg.rope_freq_scale, g);
            let l = &mut self.a.rope[(nt + t) * cfg.rope_dim..(nt + t + 1) * cfg.rope_dim];
            Self::rope_table(&cfg, &self.rope_factors, pos0 + t, cfg.rope_theta_local, 1.0, l);
        }

        let parts = (self.part, self.n_parts);
        for il in 0..cfg.n_layers {
            let layer = &mut self.layers[il];
            let a = &mut self.a;
            let w = &mut self.w;
            // attention
            for t in 0..nt {
                rmsnorm(
                    &mut a.xb[t * dim..(t + 1) * dim],
                    &a.x[t * dim..(t + 1) * dim],
                    &layer.attn_norm,
                    cfg.norm_eps,
                );
            }
            group_matmul(
                w,
                parts,
                (GROUP_QKV, il),
                &[layer.attn_q, layer.attn_k, layer.attn_v],
                &a.xb[..nt * dim],
                nt,
                &mut [(&mut a.q[..], q_dim), (&mut a.k[..], kv_dim), (&mut a.v[..], kv_dim)],
                &mut a.tmp,
                &mut a.xq,
            )?;
            add_bias(&mut a.q[..nt * q_dim], &layer.bias_q);
            add_bias(&mut a.k[..nt * kv_dim], &layer.bias_k);
            add_bias(&mut a.v[..nt * kv_dim], &layer.bias_v);
            let kind = if layer.sliding { 1 } else { 0 };
            for t in 0..nt {
                let pos = pos0 + t;
                let q = &mut a.q[t * q_dim..(t + 1) * q_dim];
                let k = &mut a.k[t * kv_dim..(t + 1) * kv_dim];
                if cfg.qk_norm {
                    for h in q.chunks_exact_mut(hd) {
                        rmsnorm_inplace(h, &layer.attn_q_norm, cfg.norm_eps);
                    }
                    for h in k.chunks_exact_mut(hd) {
                        rmsnorm_inplace(h, &layer.attn_k_norm, cfg.norm_eps);
                    }
                }
                let cs = &a.rope[(kind * nt + t) * cfg.rope_dim..(kind * nt + t + 1) * cfg.rope_dim];
                for h in q.chunks_exact_mut(hd) {
                    rope(h, cs, half, cfg.rope_style);
                }
                for h in k.chunks_exact_mut(hd) {
                    rope(h, cs, half, cfg.rope_style);
                }
                // append k, v at slot pos % kv_cap, then attend: keys are written in order, so a
                // sliding layer's ring holds exactly the visible window of this query
                let slot = pos % layer.kv_cap;
                for (dst, src) in layer.key_cache[slot * kv_dim..(slot + 1) * kv_dim]
                    .iter_mut()
                    .zip(k.iter())
                {
                    *dst = f32_to_f16(*src);
                }
                let v = &a.v[t * kv_dim..(t + 1) * kv_dim];
                for (dst, src) in layer.value_cache[slot * kv_dim..(slot + 1) * kv_dim]
                    .iter_mut()
                    .zip(v.iter())
                {
                    *dst = f32_to_f16(*src);
                }
                let lo = if layer.sliding {
                    (pos + 1).saturating_sub(cfg.sliding_window)
                } else {
                    0
                };
                let out = &mut a.xb2[t * q_dim..(t + 1) * q_dim];
                attention(&cfg, layer, q, out, &mut a.att, lo, pos);
            }
            group_matmul(
                w,
                parts,
                (GROUP_O, il),
                &[layer.attn_output],
                &a.xb2[..nt * q_dim],
                nt,
                &mut [(&mut a.xb[..], dim)],
                &mut a.tmp,
                &mut a.xq,
            )?;
            add_bias(&mut a.xb[..nt * dim], &layer.bias_output);
            for t in 0..nt {
                let xb = &mut a.xb[t * dim..(t + 1) * dim];
                if cfg.post_norms {
                    rmsnorm_inplace(xb, &layer.post_attention_norm, cfg.norm_eps);
                }
                for (x, y) in a.x[t * dim..(t + 1) * dim].iter_mut().zip(xb.iter()) {
                    *x += *y;
                }
            }
            // feed-forward
            for t in 0..nt {
                rmsnorm(
                    &mut a.xb[t * dim..(t + 1) * dim],
                    &a.x[t * dim..(t + 1) * dim],
                    &layer.ffn_norm,
                    cfg.norm_eps,
                );
            }
            group_matmul(
                w,
                parts,
                (GROUP_GATE_UP, il),
                &[layer.ffn_gate, layer.ffn_up],
                &a.xb[..nt * dim],
                nt,
                &mut [(&mut a.hb[..], hidden), (&mut a.hb2[..], hidden)],
                &mut a.tmp,
                &mut a.xq,
            )?;
            for (g, u) in a.hb[..nt * hidden].iter_mut().zip(a.hb2.iter()) {
                *g = activation(cfg.activation, *g) * *u;
            }
            group_matmul(
                w,
                parts,
                (GROUP_DOWN, il),
                &[layer.ffn_down],
                &a.hb[..nt * hidden],
                nt,
                &mut [(&mut a.xb[..], dim)],
                &mut a.tmp,
                &mut a.xq,
            )?;
            for t in 0..nt {
                let xb = &mut a.xb[t * dim..(t + 1) * dim];
                if cfg.post_norms {
                    rmsnorm_inplace(xb, &layer.post_ffw_norm, cfg.norm_eps);
                }
                for (x, y) in a.x[t * dim..(t + 1) * dim].iter_mut().zip(xb.iter()) {
                    *x += *y;
                }
            }
        }

        // logits
        if all {
            for t in 0..nt {
                rmsnorm(
                    &mut self.a.xb[t * dim..(t + 1) * dim],
                    &self.a.x[t * dim..(t + 1) * dim],
                    &self.output_norm,
                    cfg.norm_eps,
                );
            }
            let vocab = cfg.vocab_size;
            let out = &mut self.all_logits[row0 * vocab..(row0 + nt) * vocab];
            self.w.matmul(
                &self.output,
                &self.a.xb,
                nt,
                out,
                vocab,
                &mut self.a.tmp,
                &mut self.a.xq,
            )?;
            softcap(out, cfg.final_logit_softcap);
            if last {
                let t = nt - 1;
                self.hidden[..dim].copy_from_slice(&self.a.xb[t * dim..(t + 1) * dim]);
            }
        } else if last {
            let t = nt - 1;
            rmsnorm(
                &mut self.hidden[..dim],
                &self.a.x[t * dim..(t + 1) * dim],
                &self.output_norm,
                cfg.norm_eps,
            );
            if logits {
                self.logits_rows(0, cfg.vocab_size)?;
            }
        }
        Ok(())
    }

    /// x[t] = token_embd[tokens[t]] * embed_scale: one batched host read of the rows.
    fn embed(&mut self, tokens: &[i32]) -> Res<()> {
        let m = self.token_embd;
        let dim = self.cfg.dim;
        let nt = tokens.len();
        let rb = m.row_bytes;
        if let Some(data) = self.w.resident(&m) {
            stats().cache_hits += 1;
            for (t, &tok) in tokens.iter().enumerate() {
                let row = &data[tok as usize * rb..(tok as usize + 1) * rb];
                kernels::dequantize(m.ggml_type, row, &mut self.a.x[t * dim..(t + 1) * dim]);
            }
        } else {
            let base = self.a.embd.as_ptr() as usize;
            for (t, &tok) in tokens.iter().enumerate() {
                self.a.reqs[t] = ReadReq {
                    handle: m.handle,
                    out_ptr: (base + t * rb) as i32,
                    offset: (tok as u64 * rb as u64) as i64,
                    len: rb as i32,
                    reserved: 0,
                };
            }
            let s = stats();
            s.host_calls += 1;
            let rc = host::read_tensors(self.w.model_id, &self.a.reqs[..nt]);
            if rc < 0 {
                return Err(rc);
            }
            if rc as usize != nt * rb {
                return Err(ERR_INTERNAL);
            }
            s.bytes_fetched += rc as u64;
            for t in 0..nt {
                kernels::dequantize(
                    m.ggml_type,
                    &self.a.embd[t * rb..(t + 1) * rb],
                    &mut self.a.x[t * dim..(t + 1) * dim],
                );
            }
        }
        let scale = self.cfg.embed_scale;
        for v in self.a.x[..nt * dim].iter_mut() {
            *v *= scale;
        }
        Ok(())
    }

    fn last_logits(&self) -> &[f32] {
        let vocab = self.cfg.vocab_size;
        if self.use_all {
            let n = self.all_logits.len() / vocab;
            &self.all_logits[(n - 1) * vocab..]
        } else {
            &self.logits
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward-pass pieces.

/// outs[j].0[t * outs[j].1 + r] = ms[j][r] · x[t] for every row r of the matrices of one group
/// (`what` = (group, layer)). With peers (`parts.1` > 1) the host starts them on their row parts
/// first, this instance multiplies its own part, then the host waits for the peers and writes
/// theirs: the same rows by the same kernels on the same input, so the result does not depend on
/// the number of parts.
#[allow(clippy::too_many_arguments)]
fn group_matmul(
    w: &mut Weights,
    parts: (usize, usize),
    what: (i32, usize),
    ms: &[Matrix],
    x: &[f32],
    nt: usize,
    outs: &mut [(&mut [f32], usize)],
    tmp: &mut [f32],
    xqb: &mut XQBuf,
) -> Res<()> {
    let (part, n_parts) = parts;
    if n_parts > 1 {
        stats().host_calls += 1;
        let rc = host::peers_begin(what.0, what.1 as i32, x, nt as i32, ms[0].cols as i32);
        if rc < 0 {
            return Err(rc);
        }
    }
    let mut res = Ok(());
    for (m, (out, stride)) in ms.iter().zip(outs.iter_mut()) {
        let (r0, r1) = part_rows(m.rows, part, n_parts);
        if r1 > r0 {
            res = w.matmul_rows(m, r0, r1, x, nt, &mut out[r0..], *stride, tmp, xqb);
            if res.is_err() {
                break;
            }
        }
    }
    if n_parts > 1 {
        // always gathered, even after an error: the peers never outlive this call
        let mut descs = [PeerOut::default(); 3];
        for (d, (m, (out, stride))) in descs.iter_mut().zip(ms.iter().zip(outs.iter())) {
            *d = PeerOut {
                out_ptr: out.as_ptr() as usize as i32,
                stride: *stride as i32,
                rows: m.rows as i32,
                reserved: 0,
            };
        }
        stats().host_calls += 1;
        let rc = host::peers_end(&descs[..ms.len()]);
        if rc < 0 && res.is_ok() {
            res = Err(rc);
        }
    }
    res
}

/// Add `bias` (n,) to every row of `x` (nt, n); nothing when the bias is empty.
fn add_bias(x: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias.iter()) {
            *v += *b;
        }
    }
}

/// out = x / sqrt(mean(x^2) + eps) * w
fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x.iter()).zip(w.iter()) {
        *o = *v * scale * *g;
    }
}

fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w.iter()) {
        *v = *v * scale * *g;
    }
}

/// Rotate the first rope_dim dims of one head: NORM pairs (2i, 2i+1), NEOX pairs (i, i + half).
fn rope(h: &mut [f32], cs: &[f32], half: usize, style: u32) {
    for i in 0..half {
        let (c, s) = (cs[2 * i], cs[2 * i + 1]);
        let (a, b) = if style == ROPE_NEOX {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (h[a], h[b]);
        h[a] = x0 * c - x1 * s;
        h[b] = x0 * s + x1 * c;
    }
}

fn activation(kind: u32, x: f32) -> f32 {
    if kind == ACT_GELU_TANH {
        // 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): one expf instead of
        // tanhf (expm1f inside), as the Numba engine's kernel computes it (realm/kernels/ops.py)
        const TWO_SQRT_2_OVER_PI: f32 = 1.595_769_1;
        x / (1.0 + (-(TWO_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))).exp())
    } else {
        x / (1.0 + (-x).exp())
    }
}

fn softcap(logits: &mut [f32], c: f32) {
    if c > 0.0 {
        for v in logits.iter_mut() {
            *v = c * (*v / c).tanh();
        }
    }
}

fn as_bytes(v: &[u16]) -> &[u8] {
    unsafe { core::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
}

/// Causal attention of one query token over key positions lo..=pos (all heads) -> out (q_dim).
fn attention(cfg: &Config, layer: &Layer, q: &[f32], out: &mut [f32], att: &mut [f32], lo: usize, pos: usize) {
    let hd = cfg.head_dim;
    let kv_dim = cfg.kv_dim();
    let group = cfg.n_heads / cfg.n_kv_heads;
    let n = pos + 1 - lo;
    for h in 0..cfg.n_heads {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let scores = &mut att[..n];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let slot = (lo + j) % layer.kv_cap;
            let k = &layer.key_cache[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
            *s = kernels::dot_f16_simd(as_bytes(k), qh) * cfg.attn_scale;
            if *s > max {
                max = *s;
            }
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.iter_mut().for_each(|v| *v = 0.0);
        for (j, s) in scores.iter().enumerate() {
            let slot = (lo + j) % layer.kv_cap;
            let v = &layer.value_cache[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
            kernels::axpy_f16_simd(oh, *s * inv, as_bytes(v));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exports (called from lib.rs).

fn engine() -> Res<&'static mut Engine> {
    unsafe { ENGINE.as_deref_mut().ok_or(ERR_NOT_INIT) }
}

fn code(r: Res<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e,
    }
}

pub fn init(model_id: i64, n_ctx: i32, budget: i32, n_parts: i32) -> i32 {
    if n_ctx <= 0 || n_parts <= 0 {
        return ERR_BAD_ARG;
    }
    build(model_id, n_ctx as usize, budget, false, (0, n_parts as usize))
}

pub fn init_shard(model_id: i64, budget: i32, part: i32, n_parts: i32) -> i32 {
    if part <= 0 || n_parts <= part {
        return ERR_BAD_ARG;
    }
    build(model_id, 0, budget, true, (part as usize, n_parts as usize))
}

fn build(model_id: i64, n_ctx: usize, budget: i32, shard: bool, parts: (usize, usize)) -> i32 {
    if model_id <= 0 || budget == 0 {
        return ERR_BAD_ARG;
    }
    unsafe {
        ENGINE = None;
        ACCOUNTED = 0;
        if HEAP_BASE == 0 {
            HEAP_BASE = mem_bytes();
        }
        STATS = GuestStats {
            peak_memory: STATS.peak_memory,
            ..GuestStats::default()
        };
    }
    let budget = budget as u32 as usize;
    match Engine::new(model_id, n_ctx, budget, shard, parts) {
        Ok(e) => {
            unsafe { ENGINE = Some(Box::new(e)) }; // the struct is small; its buffers are allocated
            mem_bytes();
            0
        }
        Err(c) => {
            unsafe { ACCOUNTED = 0 };
            c
        }
    }
}

pub fn eval(tokens_ptr: i32, n_tokens: i32, mode: i32) -> i32 {
    let e = match engine() {
        Ok(e) => e,
        Err(c) => return c,
    };
    if n_tokens <= 0 || tokens_ptr as u32 % 4 != 0 || !(EVAL_LAST..=EVAL_HIDDEN).contains(&mode) {
        return ERR_BAD_ARG;
    }
    let n = n_tokens as usize;
    let p = match mem_range(tokens_ptr, n * 4) {
        Some(p) => p,
        None => return ERR_BOUNDS,
    };
    let tokens = unsafe { core::slice::from_raw_parts(p as *const i32, n) };
    let r = code(e.eval(tokens, mode));
    mem_bytes();
    r
}

pub fn hidden_ptr() -> i32 {
    match engine() {
        Ok(e) => e.hidden.as_ptr() as usize as i32,
        Err(_) => 0,
    }
}

pub fn logits_rows(row0: i32, row1: i32) -> i32 {
    let e = match engine() {
        Ok(e) => e,
        Err(c) => return c,
    };
    if row0 < 0 || row1 < 0 {
        return ERR_BAD_ARG;
    }
    let r = code(e.logits_rows(row0 as usize, row1 as usize));
    mem_bytes();
    r
}

pub fn peer_run(group: i32, layer: i32, nt: i32) -> i32 {
    let e = match engine() {
        Ok(e) => e,
        Err(c) => return c,
    };
    if layer < 0 || nt <= 0 {
        return ERR_BAD_ARG;
    }
    let r = code(e.peer_run(group, layer as usize, nt as usize));
    mem_bytes();
    r
}

/// A peer's mailbox (`realm_peer_serve`), words: 0 seq (host), 1 group, 2 layer, 3 nt (host),
/// 4 done (peer: the seq it finished), 5 rc (peer), 6 stop (host), 7 polls before blocking (host).
static mut MAILBOX: [i32; 8] = [0; 8];
const MB_SEQ: usize = 0;
const MB_GROUP: usize = 1;
const MB_LAYER: usize = 2;
const MB_NT: usize = 3;
const MB_DONE: usize = 4;
const MB_RC: usize = 5;
const MB_STOP: usize = 6;
const MB_POLLS: usize = 7;
/// Most mailbox polls before a peer blocks in the host (`realm_peer_wait`): ~1 ms.
const MAX_POLLS: u32 = 1 << 20;

fn mailbox_read(i: usize) -> i32 {
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(MAILBOX[i])) }
}

pub fn peer_mailbox() -> i32 {
    unsafe { core::ptr::addr_of!(MAILBOX) as usize as i32 }
}

/// A peer's serving loop for one `realm_eval` of the main guest: wait for the host to bump the
/// mailbox's seq (polling, then blocking in `realm_peer_wait`), run the group it names
/// (`peer_run`), publish rc then done = seq and tell the host (`realm_peer_notify`: the main
/// guest's thread blocks rather than polls, which would hold the GIL against this peer's own host
/// calls); return when the host sets stop.
pub fn peer_serve() -> i32 {
    let e = match engine() {
        Ok(e) if e.part > 0 => e,
        Ok(_) => return ERR_BAD_ARG,
        Err(c) => return c,
    };
    let mut seen = mailbox_read(MB_DONE);
    // the host asks for no polling when the engine has more instances than cores
    let max_polls = (mailbox_read(MB_POLLS).max(0) as u32).min(MAX_POLLS);
    loop {
        let mut polls = 0u32;
        let mut seq = mailbox_read(MB_SEQ);
        while seq == seen {
            polls += 1;
            if polls >= max_polls {
                let rc = host::peer_wait(seen);
                if rc < 0 {
                    return rc;
                }
                polls = 0;
            }
            seq = mailbox_read(MB_SEQ);
        }
        // the host writes the input and the op before seq; read them only after it
        compiler_fence(Ordering::SeqCst);
        if mailbox_read(MB_STOP) != 0 {
            return 0;
        }
        let (group, layer, nt) = (mailbox_read(MB_GROUP), mailbox_read(MB_LAYER), mailbox_read(MB_NT));
        let rc = if layer < 0 || nt <= 0 {
            ERR_BAD_ARG
        } else {
            code(e.peer_run(group, layer as usize, nt as usize))
        };
        mem_bytes();
        compiler_fence(Ordering::SeqCst);
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!(MAILBOX[MB_RC]), rc);
            compiler_fence(Ordering::SeqCst);
            core::ptr::write_volatile(core::ptr::addr_of_mut!(MAILBOX[MB_DONE]), seq);
        }
        let rc = host::peer_notify();
        if rc < 0 {
            return rc;
        }
        seen = seq;
    }
}

pub fn peer_in_ptr() -> i32 {
    match engine() {
        Ok(e) if !e.peer_in.is_empty() => e.peer_in.as_ptr() as usize as i32,
        _ => 0,
    }
}

pub fn peer_out_ptr() -> i32 {
    match engine() {
        Ok(e) if !e.peer_out.is_empty() => e.peer_out.as_ptr() as usize as i32,
        _ => 0,
    }
}

pub fn logits_ptr() -> i32 {
    match engine() {
        Ok(e) if e.use_all => e.all_logits.as_ptr() as usize as i32,
        Ok(e) => e.logits.as_ptr() as usize as i32,
        Err(_) => 0,
    }
}

pub fn sample(params_ptr: i32) -> i32 {
    let e = match engine() {
        Ok(e) => e,
        Err(c) => return c,
    };
    let p = match mem_range(params_ptr, core::mem::size_of::<SampleParams>()) {
        Some(p) => p,
        None => return ERR_BOUNDS,
    };
    if !e.have_logits || e.sample_x.len() < e.cfg.vocab_size {
        return ERR_NOT_INIT; // no logits yet, or a shard (no sampler buffers)
    }
    let mut params: SampleParams = unsafe { core::ptr::read_unaligned(p as *const SampleParams) };
    let n_past = e.n_past;
    let logits: &[f32] = unsafe { &*(e.last_logits() as *const [f32]) };
    let (tok, state) = sample::sample(
        logits,
        &e.history[..n_past],
        &params,
        &mut e.sample_x,
        &mut e.sample_cand,
        &mut e.sample_seen,
    );
    params.rng_state_out = state;
    unsafe { core::ptr::write_unaligned(p as *mut SampleParams, params) };
    tok
}

pub fn reset() -> i32 {
    match engine() {
        Ok(e) => {
            e.n_past = 0;
            e.have_logits = false;
            stats().n_past = 0;
            0
        }
        Err(c) => c,
    }
}

pub fn stats_export(out_ptr: i32) -> i32 {
    let p = match mem_range(out_ptr, core::mem::size_of::<GuestStats>()) {
        Some(p) => p,
        None => return ERR_BOUNDS,
    };
    mem_bytes();
    unsafe { core::ptr::write_unaligned(p as *mut GuestStats, STATS) };
    0
}

pub fn debug_dequant(ggml_type: i32, src_ptr: i32, n_blocks: i32, dst_ptr: i32) -> i32 {
    let t = match GgmlType::from_u32(ggml_type as u32) {
        Some(t) if ggml_type >= 0 => t,
        _ => return ERR_UNSUPPORTED,
    };
    if n_blocks < 0 || dst_ptr as u32 % 4 != 0 {
        return ERR_BAD_ARG;
    }
    let (bs, ts) = t.block_size_and_bytes();
    let n = n_blocks as usize;
    let (src, dst) = match (mem_range(src_ptr, n * ts), mem_range(dst_ptr, n * bs * 4)) {
        (Some(s), Some(d)) => (s, d),
        _ => return ERR_BOUNDS,
    };
    let src = unsafe { core::slice::from_raw_parts(src as *const u8, n * ts) };
    let dst = unsafe { core::slice::from_raw_parts_mut(dst as *mut f32, n * bs) };
    kernels::dequantize(t, src, dst);
    0
}

/// out (nt, rows) = x (nt, cols) @ w.T through the production `kernels::matmul` (decode and prefill paths).
pub fn debug_matmul(ggml_type: i32, w_ptr: i32, rows: i32, cols: i32, x_ptr: i32, nt: i32, out_ptr: i32) -> i32 {
    let t = match GgmlType::from_u32(ggml_type as u32) {
        Some(t) if ggml_type >= 0 => t,
        _ => return ERR_UNSUPPORTED,
    };
    if rows < 0 || cols < 0 || nt <= 0 || x_ptr as u32 % 4 != 0 || out_ptr as u32 % 4 != 0 {
        return ERR_BAD_ARG;
    }
    let (rows, cols, nt) = (rows as usize, cols as usize, nt as usize);
    let rb = match t.row_bytes(cols) {
        Some(rb) => rb,
        None => return ERR_BAD_ARG,
    };
    let (w, x, out) = match (
        mem_range(w_ptr, rows * rb),
        mem_range(x_ptr, nt * cols * 4),
        mem_range(out_ptr, nt * rows * 4),
    ) {
        (Some(w), Some(x), Some(o)) => (w, x, o),
        _ => return ERR_BOUNDS,
    };
    let w = unsafe { core::slice::from_raw_parts(w as *const u8, rows * rb) };
    let x = unsafe { core::slice::from_raw_parts(x as *const f32, nt * cols) };
    let out = unsafe { core::slice::from_raw_parts_mut(out as *mut f32, nt * rows) };
    let nb = cols / kernels::QKX + 1;
    let mut xqb = XQBuf {
        q: vec![0; nt * cols],
        d: vec![0.0; nt * nb],
        s: vec![0.0; nt * nb],
    };
    let mut tmp = vec![0f32; cols];
    kernels::matmul(t, w, rows, cols, x, nt, out, rows, &mut tmp, &mut xqb, true);
    0
}

pub fn debug_matvec(ggml_type: i32, w_ptr: i32, rows: i32, cols: i32, x_ptr: i32, out_ptr: i32, simd: i32) -> i32 {
    let t = match GgmlType::from_u32(ggml_type as u32) {
        Some(t) if ggml_type >= 0 => t,
        _ => return ERR_UNSUPPORTED,
    };
    if rows < 0 || cols < 0 || x_ptr as u32 % 4 != 0 || out_ptr as u32 % 4 != 0 {
        return ERR_BAD_ARG;
    }
    let (rows, cols) = (rows as usize, cols as usize);
    let rb = match t.row_bytes(cols) {
        Some(rb) => rb,
        None => return ERR_BAD_ARG,
    };
    let (w, x, out) = match (
        mem_range(w_ptr, rows * rb),
        mem_range(x_ptr, cols * 4),
        mem_range(out_ptr, rows * 4),
    ) {
        (Some(w), Some(x), Some(o)) => (w, x, o),
        _ => return ERR_BOUNDS,
    };
    let w = unsafe { core::slice::from_raw_parts(w as *const u8, rows * rb) };
    let x = unsafe { core::slice::from_raw_parts(x as *const f32, cols) };
    let out = unsafe { core::slice::from_raw_parts_mut(out as *mut f32, rows) };
    let nb = if kernels::uses_xq(t) { cols / kernels::QKX } else { 0 };
    let mut xqb = XQBuf {
        q: vec![0; nb * kernels::QKX],
        d: vec![0.0; nb],
        s: vec![0.0; nb],
    };
    let xq = xqb.quantize(&x[..nb * kernels::QKX]);
    for r in 0..rows {
        out[r] = kernels::dot(t, &w[r * rb..(r + 1) * rb], x, &xq, simd != 0);
    }
    0
}
