//! realm's model metadata module (`realm/guest/realm_meta.wasm`): everything model-specific a host
//! needs besides the weights — the validated GGUF header, the `ModelConfigABI`, the tokenizer and
//! dequantization — in one sandboxed wasm32 module shared by the Python, Node and browser hosts.
//!
//! The exports of docs/abi.md ("The model metadata module") live here and forward into gguf.rs,
//! config.rs, tokenizer.rs; host imports only in host.rs. Error codes and the config layout are the
//! guest's own `abi.rs`; block layouts and dequantizers the guest's `quants.rs` and `kernels.rs`.
//! Every export returns an `ERR_*` code on failure (its text in `meta_error`) and never traps on bad
//! input; one open model per instance.

#[path = "../../src/abi.rs"]
mod abi;
mod config;
mod encode;
mod gguf;
mod host;
#[path = "../../src/kernels.rs"]
#[allow(dead_code)]
mod kernels;
mod pretok;
mod pyfmt;
#[path = "../../src/quants.rs"]
#[allow(dead_code)]
mod quants;
mod regex;
mod tables;
mod tokenizer;
mod unicode;

use abi::*;
use std::alloc::{alloc, dealloc, Layout};

/// An error code with its message (returned by `meta_error`).
pub struct MetaError {
    pub code: i32,
    pub msg: String,
}

impl MetaError {
    pub fn new(code: i32, msg: String) -> MetaError {
        MetaError { code, msg }
    }
}

struct State {
    gguf: Option<gguf::Gguf>,
    tok: Option<tokenizer::Tokenizer>,
    stream: Option<tokenizer::Stream>,
    error: String,
    last_size: i32, // bytes the last ERR_TOO_SMALL result needed
}

static mut STATE: State = State {
    gguf: None,
    tok: None,
    stream: None,
    error: String::new(),
    last_size: 0,
};

fn state() -> &'static mut State {
    // wasm32 without threads: one caller at a time
    unsafe { &mut *core::ptr::addr_of_mut!(STATE) }
}

/// Record `e` as the last error and return its code.
fn failed(e: MetaError) -> i32 {
    state().error = e.msg;
    e.code
}

fn done(r: Result<i32, MetaError>) -> i32 {
    match r {
        Ok(v) => v,
        Err(e) => failed(e),
    }
}

fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

/// `len` bytes at `ptr` of this module's memory (a host-supplied range), checked first.
fn mem<'a>(ptr: i32, len: usize) -> Result<&'a mut [u8], MetaError> {
    let p = ptr as u32 as usize;
    if p == 0 && len > 0 || p.checked_add(len).map_or(true, |end| end > memory_bytes()) {
        return Err(MetaError::new(
            ERR_BOUNDS,
            format!("range [{}, {}+{}) is outside the module's memory", p, p, len),
        ));
    }
    Ok(unsafe { core::slice::from_raw_parts_mut(p as *mut u8, len) })
}

fn length(n: i32, what: &str) -> Result<usize, MetaError> {
    if n < 0 {
        return Err(MetaError::new(ERR_BOUNDS, format!("{} is negative ({})", what, n)));
    }
    Ok(n as usize)
}

/// Copy `data` to `(out_ptr, out_max)`; ERR_TOO_SMALL (nothing written, `meta_last_size` = the size
/// needed) when it does not fit.
fn write_out(data: &[u8], out_ptr: i32, out_max: i32) -> Result<i32, MetaError> {
    let max = length(out_max, "out_max")?;
    if data.len() > max {
        state().last_size = data.len().min(i32::MAX as usize) as i32;
        return Err(MetaError::new(
            ERR_TOO_SMALL,
            format!("the result needs {} bytes, the buffer has {}", data.len(), max),
        ));
    }
    mem(out_ptr, data.len())?.copy_from_slice(data);
    Ok(data.len() as i32)
}

fn opened() -> Result<&'static gguf::Gguf, MetaError> {
    state()
        .gguf
        .as_ref()
        .ok_or_else(|| MetaError::new(ERR_NOT_INIT, "no model is open: call meta_open first".into()))
}

/// Allocate `n` bytes (8-aligned) for the host; 0 on failure.
#[no_mangle]
pub extern "C" fn meta_alloc(n: i32) -> i32 {
    if n < 0 {
        return 0;
    }
    match Layout::from_size_align((n as usize).max(1), 8) {
        Ok(l) => unsafe { alloc(l) as usize as i32 },
        Err(_) => 0,
    }
}

/// Free what `meta_alloc(n)` returned.
#[no_mangle]
pub extern "C" fn meta_free(ptr: i32, n: i32) {
    if ptr == 0 || n < 0 {
        return;
    }
    if let Ok(l) = Layout::from_size_align((n as usize).max(1), 8) {
        unsafe { dealloc(ptr as u32 as usize as *mut u8, l) };
    }
}

/// Read and validate the header of the model file (`file_size` bytes) through `realm_file_read`.
#[no_mangle]
pub extern "C" fn meta_open(file_size: i64) -> i32 {
    let st = state();
    st.gguf = None;
    st.tok = None;
    st.stream = None;
    if file_size < 0 {
        return failed(MetaError::new(
            ERR_BAD_ARG,
            format!("file_size is negative ({})", file_size),
        ));
    }
    match gguf::parse(file_size as u64) {
        Ok(g) => {
            st.gguf = Some(g);
            0
        }
        Err(e) => failed(e),
    }
}

/// UTF-8 text of the last error (cut at a character boundary to fit); bytes written.
#[no_mangle]
pub extern "C" fn meta_error(out_ptr: i32, out_max: i32) -> i32 {
    let text = &state().error;
    let max = match length(out_max, "out_max") {
        Ok(m) => m,
        Err(e) => return e.code,
    };
    let mut n = text.len().min(max);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    match mem(out_ptr, n) {
        Ok(out) => {
            out.copy_from_slice(&text.as_bytes()[..n]);
            n as i32
        }
        Err(e) => e.code,
    }
}

/// Bytes the last call that returned `ERR_TOO_SMALL` needed.
#[no_mangle]
pub extern "C" fn meta_last_size() -> i32 {
    state().last_size
}

/// Number of tensors of the open model.
#[no_mangle]
pub extern "C" fn meta_tensor_count() -> i32 {
    done(opened().map(|g| g.tensors.len() as i32))
}

fn tensor_at(index: i32) -> Result<&'static gguf::Tensor, MetaError> {
    let g = opened()?;
    if index < 0 || index as usize >= g.tensors.len() {
        return Err(MetaError::new(
            ERR_NO_TENSOR,
            format!("tensor index {} is out of range ({} tensors)", index, g.tensors.len()),
        ));
    }
    Ok(&g.tensors[index as usize])
}

/// Write the 64-byte `MetaTensor` of tensor `index`: u32 ggml_type, u32 n_dims, u64 ne[4],
/// u64 n_bytes, u64 data_offset (absolute), u32 name_len, u32 reserved.
#[no_mangle]
pub extern "C" fn meta_tensor_entry(index: i32, out_ptr: i32) -> i32 {
    done(tensor_at(index).and_then(|t| {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&t.ggml_type.to_le_bytes());
        b[4..8].copy_from_slice(&t.n_dims.to_le_bytes());
        for d in 0..4 {
            b[8 + 8 * d..16 + 8 * d].copy_from_slice(&t.ne[d].to_le_bytes());
        }
        b[40..48].copy_from_slice(&t.n_bytes.to_le_bytes());
        b[48..56].copy_from_slice(&t.offset.to_le_bytes());
        b[56..60].copy_from_slice(&(t.name.len() as u32).to_le_bytes());
        mem(out_ptr, 64)?.copy_from_slice(&b);
        Ok(0)
    }))
}

/// UTF-8 name of tensor `index`; bytes written.
#[no_mangle]
pub extern "C" fn meta_tensor_name(index: i32, out_ptr: i32, out_max: i32) -> i32 {
    done(tensor_at(index).and_then(|t| write_out(t.name.as_bytes(), out_ptr, out_max)))
}

/// A string metadata value by key; bytes written. Absent key: `ERR_NO_TENSOR`; a key whose value
/// is not a string: `ERR_BAD_ARG`.
#[no_mangle]
pub extern "C" fn meta_get_string(key_ptr: i32, key_len: i32, out_ptr: i32, out_max: i32) -> i32 {
    done((|| {
        let g = opened()?;
        let key = mem(key_ptr, length(key_len, "key_len")?)?;
        let key =
            core::str::from_utf8(key).map_err(|_| MetaError::new(ERR_BAD_ARG, "the key is not valid UTF-8".into()))?;
        match g.get(key) {
            None => Err(MetaError::new(
                ERR_NO_TENSOR,
                format!("no metadata key {}", pyfmt::repr_str(key)),
            )),
            Some(gguf::Value::Str(s)) => write_out(s.as_bytes(), out_ptr, out_max),
            Some(_) => Err(MetaError::new(
                ERR_BAD_ARG,
                format!(
                    "metadata key {} has type {}, not STRING",
                    pyfmt::repr_str(key),
                    gguf::vt::NAMES[g.value_type(key).unwrap_or(0) as usize]
                ),
            )),
        }
    })())
}

/// The 128-byte `ModelConfigABI` (as the Python host's `realm_get_config`); bytes written.
#[no_mangle]
pub extern "C" fn meta_config(out_ptr: i32, out_max: i32) -> i32 {
    done(
        opened()
            .and_then(config::model_config)
            .and_then(|c| write_out(&c, out_ptr, out_max)),
    )
}

// -- the tokenizer (docs/abi.md "Tokenizer exports") -------------------------------------------------

/// Longest text one `meta_tokenize` call takes, in bytes.
const MAX_TEXT_BYTES: usize = 8 << 20;
/// Most ids one `meta_detokenize` call takes.
const MAX_DETOKENIZE_IDS: usize = 4 << 20;
/// Working memory a tokenize call may need per byte of text (pre-flight reservation).
const TOKENIZE_BYTES_PER_BYTE: usize = 96;

fn tok() -> Result<&'static mut tokenizer::Tokenizer, MetaError> {
    state()
        .tok
        .as_mut()
        .ok_or_else(|| MetaError::new(ERR_NOT_INIT, "the tokenizer is not built: call meta_tokenizer_init first".into()))
}

fn flags_ok(flags: i32, allowed: i32, what: &str) -> Result<(), MetaError> {
    if flags & !allowed != 0 {
        return Err(MetaError::new(ERR_BAD_ARG, format!("{}: unknown flag bits {:#x}", what, flags & !allowed)));
    }
    Ok(())
}

fn write_ids(ids: &[u32], out_ptr: i32, max_ids: i32) -> Result<i32, MetaError> {
    let max = length(max_ids, "max_ids")?;
    if ids.len() > max {
        state().last_size = (4 * ids.len()).min(i32::MAX as usize) as i32;
        return Err(MetaError::new(
            ERR_TOO_SMALL,
            format!("the result has {} ids, the buffer holds {}", ids.len(), max),
        ));
    }
    let out = mem(out_ptr, 4 * ids.len())?;
    for (k, &id) in ids.iter().enumerate() {
        out[4 * k..4 * k + 4].copy_from_slice(&(id as i32).to_le_bytes());
    }
    Ok(ids.len() as i32)
}

/// Build the tokenizer from the open model's metadata (once; later calls return 0 at once).
#[no_mangle]
pub extern "C" fn meta_tokenizer_init() -> i32 {
    done((|| {
        let st = state();
        if st.tok.is_some() {
            return Ok(0);
        }
        let g = opened()?;
        st.tok = Some(tokenizer::Tokenizer::from_gguf(g)?);
        Ok(0)
    })())
}

/// Number of tokens of the vocabulary.
#[no_mangle]
pub extern "C" fn meta_vocab_size() -> i32 {
    done(tok().map(|t| t.vocab_size() as i32))
}

/// The end-of-generation ids, ascending; count written (ERR_TOO_SMALL: meta_last_size = bytes needed).
#[no_mangle]
pub extern "C" fn meta_stop_ids(out_ptr: i32, max_ids: i32) -> i32 {
    done(tok().and_then(|t| {
        let ids = t.stop_ids.clone();
        write_ids(&ids, out_ptr, max_ids)
    }))
}

/// UTF-8 text -> ids (flags bit0 add_bos, bit1 parse special tokens); count written.
#[no_mangle]
pub extern "C" fn meta_tokenize(text_ptr: i32, text_len: i32, flags: i32, out_ptr: i32, max_ids: i32) -> i32 {
    done((|| {
        let t = tok()?;
        flags_ok(flags, 3, "meta_tokenize")?;
        let n = length(text_len, "text_len")?;
        length(max_ids, "max_ids")?;
        if n > MAX_TEXT_BYTES {
            return Err(MetaError::new(
                ERR_BAD_ARG,
                format!("the text has {} bytes, more than the {} one meta_tokenize call takes", n, MAX_TEXT_BYTES),
            ));
        }
        let raw = mem(text_ptr, n)?;
        if let Err(e) = core::str::from_utf8(raw) {
            return Err(MetaError::new(
                ERR_BAD_ARG,
                format!("the text is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            ));
        }
        // pre-flight: the working memory of the worst case exists, or a clean ERR_OOM (wasm memory
        // never shrinks, so the pages stay for the allocations below)
        let mut probe: Vec<u8> = Vec::new();
        if probe.try_reserve_exact(TOKENIZE_BYTES_PER_BYTE * n + (1 << 20)).is_err() {
            return Err(MetaError::new(
                ERR_OOM,
                format!("not enough module memory to tokenize {} bytes of text", n),
            ));
        }
        drop(probe);
        let mut copy: Vec<u8> = Vec::new();
        copy.try_reserve_exact(n).map_err(|_| gguf::oom("the text"))?;
        copy.extend_from_slice(raw);
        let text = String::from_utf8(copy).map_err(|_| MetaError::new(ERR_INTERNAL, "text changed".into()))?;
        let ids = t.encode(&text, flags & 1 != 0, flags & 2 != 0)?;
        write_ids(&ids, out_ptr, max_ids)
    })())
}

/// Ids (i32) -> UTF-8 text as Python `Tokenizer.decode` (flags bit0 special, bit1 remove_special);
/// bytes written.
#[no_mangle]
pub extern "C" fn meta_detokenize(ids_ptr: i32, n_ids: i32, flags: i32, out_ptr: i32, out_max: i32) -> i32 {
    done((|| {
        let t = tok()?;
        flags_ok(flags, 3, "meta_detokenize")?;
        let n = length(n_ids, "n_ids")?;
        if n > MAX_DETOKENIZE_IDS {
            return Err(MetaError::new(
                ERR_BAD_ARG,
                format!("{} ids, more than the {} one meta_detokenize call takes", n, MAX_DETOKENIZE_IDS),
            ));
        }
        let raw = mem(ids_ptr, 4 * n)?;
        let mut ids: Vec<u32> = Vec::new();
        ids.try_reserve_exact(n).map_err(|_| gguf::oom("the ids"))?;
        for k in 0..n {
            let v = i32::from_le_bytes([raw[4 * k], raw[4 * k + 1], raw[4 * k + 2], raw[4 * k + 3]]);
            ids.push(t.check_id(v)?);
        }
        let text = tokenizer::utf8_lossy(&t.detokenize(&ids, flags & 1 != 0, flags & 2 != 0));
        write_out(&text, out_ptr, out_max)
    })())
}

/// Start a streaming decode (flags bit0 special, bit1 lstrip_first), as Python `StreamDecoder`.
#[no_mangle]
pub extern "C" fn meta_stream_reset(flags: i32) -> i32 {
    done((|| {
        let t = tok()?;
        flags_ok(flags, 3, "meta_stream_reset")?;
        state().stream = Some(tokenizer::Stream::new(t, flags & 1 != 0, flags & 2 != 0));
        Ok(0)
    })())
}

fn stream_step(out_ptr: i32, out_max: i32, f: impl FnOnce(&mut tokenizer::Stream, &tokenizer::Tokenizer) -> Result<Vec<u8>, MetaError>) -> Result<i32, MetaError> {
    let t = tok()?;
    let cur = state()
        .stream
        .as_ref()
        .ok_or_else(|| MetaError::new(ERR_NOT_INIT, "no stream: call meta_stream_reset first".into()))?;
    // the step is committed only once its text is written (ERR_TOO_SMALL: retry the same call)
    let mut next = cur.clone();
    let text = f(&mut next, t)?;
    let n = write_out(&text, out_ptr, out_max)?;
    state().stream = Some(next);
    Ok(n)
}

/// Feed one generated id; the text completed by it (never half a UTF-8 character); bytes written.
#[no_mangle]
pub extern "C" fn meta_stream_feed(id: i32, out_ptr: i32, out_max: i32) -> i32 {
    done(stream_step(out_ptr, out_max, |s, t| {
        let id = t.check_id(id)?;
        Ok(s.feed(t, id))
    }))
}

/// What the stream still holds (an incomplete character as U+FFFD); bytes written.
#[no_mangle]
pub extern "C" fn meta_stream_flush(out_ptr: i32, out_max: i32) -> i32 {
    done(stream_step(out_ptr, out_max, |s, _| Ok(s.flush())))
}

// -- dequantization --------------------------------------------------------------------------------

/// Most raw bytes one `meta_dequantize` call takes.
const MAX_DEQUANT_BYTES: usize = 64 << 20;

/// Raw tensor bytes (whole blocks of `ggml_type`) -> little-endian f32 (the guest's kernels, bit-exact
/// with realm.quants' reference); bytes written.
#[no_mangle]
pub extern "C" fn meta_dequantize(ggml_type: i32, src_ptr: i32, n_bytes: i32, out_ptr: i32, out_max: i32) -> i32 {
    done((|| {
        let t = match quants::GgmlType::from_u32(ggml_type as u32) {
            Some(t) if ggml_type >= 0 => t,
            _ => {
                let name = gguf::ggml_type_info(ggml_type as u32).map_or("unknown", |i| i.0);
                return Err(MetaError::new(
                    ERR_UNSUPPORTED,
                    format!("ggml type {} ({}) cannot be dequantized", ggml_type, name),
                ));
            }
        };
        let n = length(n_bytes, "n_bytes")?;
        let max = length(out_max, "out_max")?;
        if n > MAX_DEQUANT_BYTES {
            return Err(MetaError::new(
                ERR_BAD_ARG,
                format!("{} bytes, more than the {} one meta_dequantize call takes", n, MAX_DEQUANT_BYTES),
            ));
        }
        let (bs, ts) = t.block_size_and_bytes();
        if n % ts != 0 {
            return Err(MetaError::new(
                ERR_BAD_ARG,
                format!("{} bytes is not a whole number of {:?} blocks of {} bytes", n, t, ts),
            ));
        }
        let count = n / ts * bs;
        if 4 * count > max {
            state().last_size = (4 * count).min(i32::MAX as usize) as i32;
            return Err(MetaError::new(
                ERR_TOO_SMALL,
                format!("the result needs {} bytes, the buffer has {}", 4 * count, max),
            ));
        }
        let src = mem(src_ptr, n)?;
        // an 8-aligned copy: the block structs are read in place
        let mut aligned: Vec<u64> = Vec::new();
        aligned.try_reserve_exact((n + 7) / 8).map_err(|_| gguf::oom("the raw blocks"))?;
        aligned.resize((n + 7) / 8, 0);
        let bytes = unsafe { core::slice::from_raw_parts_mut(aligned.as_mut_ptr() as *mut u8, n) };
        bytes.copy_from_slice(src);
        let mut dst: Vec<f32> = Vec::new();
        dst.try_reserve_exact(count).map_err(|_| gguf::oom("the f32 output"))?;
        dst.resize(count, 0.0);
        kernels::dequantize(t, bytes, &mut dst);
        let out = mem(out_ptr, 4 * count)?;
        for (k, v) in dst.iter().enumerate() {
            out[4 * k..4 * k + 4].copy_from_slice(&v.to_le_bytes());
        }
        Ok((4 * count) as i32)
    })())
}
