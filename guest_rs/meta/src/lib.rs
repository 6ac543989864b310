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
mod gguf;
mod host;
#[path = "../../src/kernels.rs"]
#[allow(dead_code)]
mod kernels;
mod pyfmt;
#[path = "../../src/quants.rs"]
#[allow(dead_code)]
mod quants;

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
    error: String,
    last_size: i32, // bytes the last ERR_TOO_SMALL result needed
}

static mut STATE: State = State {
    gguf: None,
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
