//! The host functions the metadata module imports from module `env` (docs/abi.md), each with one
//! safe wrapper. The only file with `extern "C"` imports.

#[link(wasm_import_module = "env")]
extern "C" {
    /// Copy bytes `[offset, offset + len)` of the model file to `out_ptr`; returns the bytes copied
    /// (short only at the end of the file) or a negative `ERR_*` code.
    fn realm_file_read(offset: i64, out_ptr: i32, len: i32) -> i32;
    /// Log a message (level 0 debug .. 3 error) through the host.
    fn realm_log(level: i32, msg_ptr: i32, msg_len: i32) -> i32;
}

/// Fill `out` from the model file at `offset`; returns the bytes copied or a negative code.
pub fn file_read(offset: u64, out: &mut [u8]) -> i32 {
    unsafe { realm_file_read(offset as i64, out.as_mut_ptr() as usize as i32, out.len() as i32) }
}

/// Log through the host (level 0 debug .. 3 error).
#[allow(dead_code)]
pub fn log(level: i32, msg: &str) -> i32 {
    unsafe { realm_log(level, msg.as_ptr() as usize as i32, msg.len() as i32) }
}
