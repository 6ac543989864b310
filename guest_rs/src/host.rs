//! The host functions the guest imports from module `env` (docs/abi.md), each with one safe wrapper.
//!
//! This is the only file with `extern "C"` imports. Wrappers pass `(ptr, len)` of guest memory the
//! caller owns; the host only writes inside those ranges. Negative returns are `abi::ERR_*` codes.

use crate::abi::{PeerOut, ReadReq, TensorInfo, CONFIG_BYTES};

#[link(wasm_import_module = "env")]
extern "C" {
    /// Store a GGUF image held in guest memory in the host; returns the model id or an error.
    fn realm_store_model(gguf_ptr: i32, gguf_len: i32, model_id: i64) -> i64;
    /// Copy a whole tensor, dequantized to f32 by the host; returns bytes written.
    fn realm_get_tensor(model_id: i64, name_ptr: i32, name_len: i32, out_ptr: i32, out_max: i32) -> i32;
    /// Write the tensor count (u32) and the total tensor data bytes (u64).
    fn realm_get_model_info(model_id: i64, out_tensor_count_ptr: i32, out_total_size_ptr: i32) -> i32;
    /// Drop this guest's reference to a model.
    fn realm_remove_model(model_id: i64) -> i32;
    /// Look a tensor up by name, write its 48-byte `TensorInfo`; returns a handle.
    fn realm_tensor_info(model_id: i64, name_ptr: i32, name_len: i32, out_ptr: i32) -> i32;
    /// Copy raw bytes `[offset, offset + len)` of a tensor's data; returns `len`.
    fn realm_read_tensor(model_id: i64, handle: i32, offset: i64, out_ptr: i32, len: i32) -> i32;
    /// Batched raw reads (`n_reqs` <= 4096 `ReadReq`s); returns the total bytes copied.
    fn realm_read_tensors(model_id: i64, reqs_ptr: i32, n_reqs: i32) -> i32;
    /// Write the 128-byte `ModelConfigABI`; returns bytes written.
    fn realm_get_config(model_id: i64, out_ptr: i32, out_max: i32) -> i32;
    /// Log a message (level 0 debug .. 3 error) through Python `logging`.
    fn realm_log(level: i32, msg_ptr: i32, msg_len: i32) -> i32;
    /// Start this engine's peer instances on their row parts of matrix group `group` of layer
    /// `layer` for the (nt, cols) f32 input at `x_ptr`; returns the number of peers.
    fn realm_peers_begin(group: i32, layer: i32, x_ptr: i32, nt: i32, cols: i32) -> i32;
    /// Wait for the peers started by `realm_peers_begin` and write their row parts into the
    /// `n_outs` outputs described by the `PeerOut` array at `outs_ptr`; returns 0.
    fn realm_peers_end(outs_ptr: i32, n_outs: i32) -> i32;
    /// Peer: block until the host posts work after sequence number `seq` (`realm_peer_serve`).
    fn realm_peer_wait(seq: i32) -> i32;
    /// Peer: tell the host it has published a result in its mailbox.
    fn realm_peer_notify() -> i32;
}

fn ptr<T>(p: *const T) -> i32 {
    p as usize as i32
}

/// Store a GGUF image; `model_id` 0 asks for a content-derived id.
#[allow(dead_code)]
pub fn store_model(gguf: &[u8], model_id: i64) -> i64 {
    unsafe { realm_store_model(ptr(gguf.as_ptr()), gguf.len() as i32, model_id) }
}

/// Fetch a tensor dequantized to f32 by the host into `out`; returns bytes written.
#[allow(dead_code)]
pub fn get_tensor(model_id: i64, name: &str, out: &mut [f32]) -> i32 {
    let out_max = (out.len() * 4).min(i32::MAX as usize) as i32;
    unsafe {
        realm_get_tensor(
            model_id,
            ptr(name.as_ptr()),
            name.len() as i32,
            ptr(out.as_ptr()),
            out_max,
        )
    }
}

/// (tensor count, total tensor data bytes) of a model, or an error code.
pub fn get_model_info(model_id: i64) -> Result<(u32, u64), i32> {
    let mut count: u32 = 0;
    let mut total: u64 = 0;
    let rc = unsafe { realm_get_model_info(model_id, ptr(&mut count as *mut u32), ptr(&mut total as *mut u64)) };
    count = unsafe { core::ptr::read_volatile(&count) };
    total = unsafe { core::ptr::read_volatile(&total) };
    if rc < 0 {
        Err(rc)
    } else {
        Ok((count, total))
    }
}

/// Drop this guest's reference to a model.
#[allow(dead_code)]
pub fn remove_model(model_id: i64) -> i32 {
    unsafe { realm_remove_model(model_id) }
}

/// Look a tensor up by name: its handle and `TensorInfo`, or an error code.
pub fn tensor_info(model_id: i64, name: &str) -> Result<(i32, TensorInfo), i32> {
    let mut info = TensorInfo::default();
    let rc = unsafe {
        realm_tensor_info(
            model_id,
            ptr(name.as_ptr()),
            name.len() as i32,
            ptr(&mut info as *mut TensorInfo),
        )
    };
    let info = unsafe { core::ptr::read_volatile(&info) };
    if rc < 0 {
        Err(rc)
    } else {
        Ok((rc, info))
    }
}

/// Copy raw tensor bytes starting at byte `offset` into `out` (all of it).
pub fn read_tensor(model_id: i64, handle: i32, offset: u64, out: &mut [u8]) -> i32 {
    unsafe { realm_read_tensor(model_id, handle, offset as i64, ptr(out.as_ptr()), out.len() as i32) }
}

/// Batched raw reads; every `out_ptr` must point into memory the caller owns.
pub fn read_tensors(model_id: i64, reqs: &[ReadReq]) -> i32 {
    unsafe { realm_read_tensors(model_id, ptr(reqs.as_ptr()), reqs.len() as i32) }
}

/// The model's `ModelConfigABI` bytes.
pub fn get_config(model_id: i64, out: &mut [u8; CONFIG_BYTES]) -> i32 {
    unsafe { realm_get_config(model_id, ptr(out.as_ptr()), CONFIG_BYTES as i32) }
}

/// Log a message through the host (level 0 debug .. 3 error).
pub fn log(level: i32, msg: &str) -> i32 {
    unsafe { realm_log(level, ptr(msg.as_ptr()), msg.len() as i32) }
}

/// Start the peers on group `group` of layer `layer` for input `x` (nt rows of `cols` floats).
pub fn peers_begin(group: i32, layer: i32, x: &[f32], nt: i32, cols: i32) -> i32 {
    unsafe { realm_peers_begin(group, layer, ptr(x.as_ptr()), nt, cols) }
}

/// Wait for the peers and gather their row parts into `outs` (memory the caller owns).
pub fn peers_end(outs: &[PeerOut]) -> i32 {
    unsafe { realm_peers_end(ptr(outs.as_ptr()), outs.len() as i32) }
}

/// Peer: block in the host until its mailbox moves past `seq`.
pub fn peer_wait(seq: i32) -> i32 {
    unsafe { realm_peer_wait(seq) }
}

/// Peer: wake the host thread waiting for this peer's result.
pub fn peer_notify() -> i32 {
    unsafe { realm_peer_notify() }
}
