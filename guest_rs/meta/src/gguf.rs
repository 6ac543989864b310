//! Strict GGUF v2/v3 header reader over the host's `realm_file_read`: metadata and tensor index,
//! every count and length bounded by the bytes the file actually has before anything is allocated.
//!
//! The twin (and oracle) of `realm/gguf.py`: the same checks in the same order, the same messages,
//! fields and byte offsets. Format facts:
//! https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/gguf.cpp

use crate::abi::{ERR_BAD_GGUF, ERR_OOM};
use crate::host;
use crate::pyfmt::{repr_bytes, repr_str, BigUint};
use crate::MetaError;
use std::collections::HashMap;

pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";
const MAX_KEY_BYTES: u64 = 65535;
const MAX_TENSOR_NAME_BYTES: u64 = 63; // ggml's GGML_MAX_NAME (64) includes the NUL
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_DEPTH: u32 = 3;
const MAX_KV: u64 = 1 << 20;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_NESTED_ARRAYS: u128 = 1 << 20;
const INT64_MAX: u64 = i64::MAX as u64;

// Smallest encodings, to bound counts by the bytes left.
const MIN_STRING: u64 = 8;
const MIN_ARRAY: u64 = 4 + 8;
const MIN_KV: u64 = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO: u64 = 8 + 1 + 4 + 8 + 4 + 8;

const CHUNK: usize = 1 << 20; // bytes asked of the host per read

/// GGUF metadata value types (gguf-py's GGUFValueType).
pub mod vt {
    pub const UINT8: u32 = 0;
    pub const INT8: u32 = 1;
    pub const UINT16: u32 = 2;
    pub const INT16: u32 = 3;
    pub const UINT32: u32 = 4;
    pub const INT32: u32 = 5;
    pub const FLOAT32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const UINT64: u32 = 10;
    pub const INT64: u32 = 11;
    pub const FLOAT64: u32 = 12;
    pub const NAMES: [&str; 13] = [
        "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64",
        "FLOAT64",
    ];

    /// Bytes of a fixed-size value (0 for STRING and ARRAY).
    pub fn size(t: u32) -> u64 {
        match t {
            UINT8 | INT8 | BOOL => 1,
            UINT16 | INT16 => 2,
            UINT32 | INT32 | FLOAT32 => 4,
            UINT64 | INT64 | FLOAT64 => 8,
            _ => 0,
        }
    }
}

/// ggml type id -> (name, elements per block, bytes per block): every type `realm.quants.GGMLType`
/// knows (a test compares the table with `realm.quants.block_size_and_bytes`).
pub fn ggml_type_info(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 40),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// Strings of a string array, packed: entry i is `bytes[ends[i-1]..ends[i]]` (valid UTF-8).
#[derive(Default)]
pub struct StrTable {
    pub bytes: Vec<u8>,
    pub ends: Vec<u32>,
}

impl StrTable {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }
}

pub enum ArrayData {
    Strings(StrTable),
    Raw(Vec<u8>), // little-endian fixed-size elements
    Nested,       // arrays of arrays: validated, not kept
}

pub struct Array {
    pub et: u32,
    pub n: u64,
    pub data: ArrayData,
}

pub enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Array),
}

impl Value {
    /// The Python type name of the value as `realm.gguf` returns it (for messages).
    pub fn py_type(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::Array(a) => match a.data {
                ArrayData::Raw(_) => "ndarray",
                _ => "list",
            },
        }
    }
}

pub struct Tensor {
    pub name: String,
    pub ggml_type: u32,
    pub n_dims: u32,
    pub ne: [u64; 4], // GGUF order, unused = 1
    pub offset: u64,  // absolute
    pub n_bytes: u64,
    pub info_offset: u64, // where its offset field sits in the file (for messages)
}

impl Tensor {
    /// NumPy-order shape (ne reversed).
    pub fn shape(&self) -> Vec<u64> {
        self.ne[..self.n_dims as usize].iter().rev().copied().collect()
    }
}

pub struct Gguf {
    pub file_size: u64,
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub keys: Vec<String>, // file order
    pub values: Vec<Value>,
    pub types: Vec<u32>,
    index: HashMap<String, usize>,
    pub tensors: Vec<Tensor>, // file order
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.values[i])
    }
    pub fn value_type(&self, key: &str) -> Option<u32> {
        self.index.get(key).map(|&i| self.types[i])
    }
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

fn fail(message: String, field: &str, offset: u64) -> MetaError {
    MetaError::new(
        ERR_BAD_GGUF,
        format!("{} (field {}, offset {})", message, field, offset),
    )
}

pub fn oom(what: &str) -> MetaError {
    MetaError::new(
        ERR_OOM,
        format!(
            "out of memory reading {}: raise the metadata module's memory limit",
            what
        ),
    )
}

/// Python's `UnicodeDecodeError` text: "(reason at byte start)".
fn utf8_error(b: &[u8], e: core::str::Utf8Error) -> String {
    let at = e.valid_up_to();
    let reason = match e.error_len() {
        None => "unexpected end of data",
        Some(_) => match b[at] {
            0x80..=0xc1 | 0xf5..=0xff => "invalid start byte",
            _ => "invalid continuation byte",
        },
    };
    format!("{} at byte {}", reason, at)
}

/// Cursor over the file; a window of it is held in memory, refilled through the host.
struct Reader {
    size: u64,
    pos: u64,
    win: Vec<u8>,
    win_start: u64,
    n_nested: u128,
}

impl Reader {
    fn new(size: u64) -> Reader {
        Reader {
            size,
            pos: 0,
            win: Vec::new(),
            win_start: 0,
            n_nested: 0,
        }
    }

    fn left(&self) -> u64 {
        self.size - self.pos.min(self.size)
    }

    fn need(&self, n: u64, field: &str, what: Option<&str>) -> Result<(), MetaError> {
        let left = self.left();
        if n > left {
            return Err(fail(
                format!(
                    "{} needs at least {} bytes, file has {} left (file size {})",
                    what.unwrap_or(field),
                    n,
                    left,
                    self.size
                ),
                field,
                self.pos,
            ));
        }
        Ok(())
    }

    /// The `n` bytes at `pos` (already checked to be inside the file), without advancing.
    fn peek(&mut self, n: u64) -> Result<&[u8], MetaError> {
        let end = self.pos + n;
        let win_end = self.win_start + self.win.len() as u64;
        if self.pos < self.win_start || end > win_end {
            let want = (n as usize).max(CHUNK).min(self.left() as usize).max(n as usize);
            if self.win.capacity() > 4 * CHUNK && want <= CHUNK {
                self.win = Vec::new(); // drop a window grown for one big value
            }
            self.win.clear();
            if self.win.try_reserve_exact(want).is_err() {
                return Err(oom(&format!("{} bytes of the file at offset {}", want, self.pos)));
            }
            self.win.resize(want, 0);
            let got = read_full(self.pos, &mut self.win)?;
            if got < n as usize {
                return Err(fail(
                    format!(
                        "the file ended early: {} bytes read of {} at offset {}",
                        got, n, self.pos
                    ),
                    "file",
                    self.pos,
                ));
            }
            self.win.truncate(got);
            self.win_start = self.pos;
        }
        let s = (self.pos - self.win_start) as usize;
        Ok(&self.win[s..s + n as usize])
    }

    fn u32(&mut self, field: &str) -> Result<u32, MetaError> {
        self.need(4, field, None)?;
        let b = self.peek(4)?;
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.pos += 4;
        Ok(v)
    }

    fn u64(&mut self, field: &str) -> Result<u64, MetaError> {
        self.need(8, field, None)?;
        let v = self.peek_u64()?;
        self.pos += 8;
        Ok(v)
    }

    fn peek_u64(&mut self) -> Result<u64, MetaError> {
        let b = self.peek(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A string: (text, offset of its length field).
    fn string(&mut self, field: &str, max_bytes: Option<u64>) -> Result<(String, u64), MetaError> {
        let start = self.pos;
        let n = self.u64(field)?;
        if let Some(max) = max_bytes {
            if n > max {
                return Err(fail(
                    format!("{} is {} bytes long, limit is {}", field, n, max),
                    field,
                    start,
                ));
            }
        }
        self.need(n, field, Some(&format!("{} of {} bytes", field, n)))?;
        let b = self.peek(n)?;
        let s = match core::str::from_utf8(b) {
            Ok(s) => s,
            Err(e) => {
                return Err(fail(
                    format!("{} is not valid UTF-8 ({})", field, utf8_error(b, e)),
                    field,
                    start,
                ))
            }
        };
        let mut out = String::new();
        if out.try_reserve_exact(s.len()).is_err() {
            return Err(oom(field));
        }
        out.push_str(s);
        self.pos += n;
        Ok((out, start))
    }

    fn value_type(&mut self, field: &str) -> Result<u32, MetaError> {
        let start = self.pos;
        let t = self.u32(field)?;
        if t > vt::FLOAT64 {
            return Err(fail(format!("unknown metadata value type id {}", t), field, start));
        }
        Ok(t)
    }

    fn scalar(&mut self, t: u32, field: &str) -> Result<Value, MetaError> {
        if t == vt::STRING {
            return Ok(Value::Str(self.string(field, None)?.0));
        }
        let size = vt::size(t);
        self.need(size, field, None)?;
        let at = self.pos;
        let b = self.peek(size)?;
        let mut a = [0u8; 8];
        a[..size as usize].copy_from_slice(b);
        let raw = u64::from_le_bytes(a);
        let v = match t {
            vt::UINT8 | vt::UINT16 | vt::UINT32 | vt::UINT64 => Value::Int(raw as i128),
            vt::INT8 => Value::Int(raw as u8 as i8 as i128),
            vt::INT16 => Value::Int(raw as u16 as i16 as i128),
            vt::INT32 => Value::Int(raw as u32 as i32 as i128),
            vt::INT64 => Value::Int(raw as i64 as i128),
            vt::FLOAT32 => Value::Float(f32::from_bits(raw as u32) as f64),
            vt::FLOAT64 => Value::Float(f64::from_bits(raw)),
            _ => {
                if raw > 1 {
                    return Err(fail(format!("bool value is {}, must be 0 or 1", raw), field, at));
                }
                Value::Bool(raw == 1)
            }
        };
        self.pos += size;
        Ok(v)
    }

    /// (element type, value) of an array at nesting `depth` (1 = top level).
    fn array(&mut self, field: &str, depth: u32) -> Result<Array, MetaError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(fail(
                format!("arrays nested deeper than {} levels", MAX_ARRAY_DEPTH),
                field,
                self.pos,
            ));
        }
        let et = self.value_type(&format!("{}.element_type", field))?;
        let count_at = self.pos;
        let count_field = format!("{}.count", field);
        let n = self.u64(&count_field)?;
        if et == vt::ARRAY {
            self.n_nested += n as u128;
            if self.n_nested > MAX_NESTED_ARRAYS {
                return Err(fail(
                    format!(
                        "{}: more than {} nested arrays in the file (limit)",
                        field, MAX_NESTED_ARRAYS
                    ),
                    &count_field,
                    count_at,
                ));
            }
        }
        let min_size = match et {
            vt::STRING => MIN_STRING,
            vt::ARRAY => MIN_ARRAY,
            t => vt::size(t),
        };
        let left = self.left();
        if n > left / min_size {
            return Err(fail(
                format!(
                    "{}: array of {} {} needs at least {} bytes, file has {} left (file size {})",
                    field,
                    n,
                    vt::NAMES[et as usize],
                    n as u128 * min_size as u128,
                    left,
                    self.size
                ),
                &count_field,
                count_at,
            ));
        }
        let data = match et {
            vt::STRING => ArrayData::Strings(self.string_array(n, field)?),
            vt::ARRAY => {
                for i in 0..n {
                    self.array(&format!("{}[{}]", field, i), depth + 1)?;
                }
                ArrayData::Nested
            }
            _ => {
                let n_bytes = n * min_size;
                let mut raw = Vec::new();
                if raw.try_reserve_exact(n_bytes as usize).is_err() {
                    return Err(oom(field));
                }
                raw.resize(n_bytes as usize, 0);
                let got = read_full(self.pos, &mut raw)?;
                if got < raw.len() {
                    return Err(fail(format!("the file ended early reading {}", field), field, self.pos));
                }
                if et == vt::BOOL {
                    if let Some(i) = raw.iter().position(|&b| b > 1) {
                        let f = format!("{}[{}]", field, i);
                        return Err(fail(
                            format!("{}: bool value is {}, must be 0 or 1", f, raw[i]),
                            &f,
                            self.pos + i as u64,
                        ));
                    }
                }
                self.pos += n_bytes;
                ArrayData::Raw(raw)
            }
        };
        Ok(Array { et, n, data })
    }

    /// n strings; the hot loop of opening a model (262k tokens).
    fn string_array(&mut self, n: u64, field: &str) -> Result<StrTable, MetaError> {
        let mut t = StrTable::default();
        if t.ends.try_reserve_exact(n as usize).is_err() {
            return Err(oom(field));
        }
        for i in 0..n {
            let start = self.pos;
            let left = self.left();
            if left < 8 {
                let f = format!("{}[{}]", field, i);
                return Err(fail(
                    format!(
                        "{} length needs at least 8 bytes, file has {} left (file size {})",
                        f, left, self.size
                    ),
                    &f,
                    start,
                ));
            }
            let ln = self.peek_u64()?;
            if ln > left - 8 {
                let f = format!("{}[{}]", field, i);
                return Err(fail(
                    format!(
                        "{} of {} bytes needs at least {} bytes, file has {} left (file size {})",
                        f,
                        ln,
                        ln as u128 + 8,
                        left,
                        self.size
                    ),
                    &f,
                    start,
                ));
            }
            let b = self.peek(8 + ln)?;
            let s = &b[8..];
            if let Err(e) = core::str::from_utf8(s) {
                let f = format!("{}[{}]", field, i);
                return Err(fail(
                    format!("{} is not valid UTF-8 ({})", f, utf8_error(s, e)),
                    &f,
                    start,
                ));
            }
            if t.bytes.len() + s.len() > u32::MAX as usize || t.bytes.try_reserve(s.len()).is_err() {
                return Err(oom(field));
            }
            t.bytes.extend_from_slice(s);
            t.ends.push(t.bytes.len() as u32);
            self.pos += 8 + ln;
        }
        Ok(t)
    }
}

/// Read `out.len()` bytes at `offset` (several host calls if the host copies less); bytes copied.
fn read_full(offset: u64, out: &mut [u8]) -> Result<usize, MetaError> {
    let mut done = 0usize;
    while done < out.len() {
        let len = (out.len() - done).min(i32::MAX as usize & !0xfff);
        let rc = host::file_read(offset + done as u64, &mut out[done..done + len]);
        if rc < 0 {
            return Err(MetaError::new(
                rc,
                format!(
                    "the host could not read the file at offset {} (code {})",
                    offset + done as u64,
                    rc
                ),
            ));
        }
        if rc == 0 {
            break; // end of file
        }
        done += (rc as usize).min(len);
    }
    Ok(done)
}

struct Info {
    name: String,
    ggml_type: u32,
    ne: Vec<u64>,
    rel_offset: u64,
    n_bytes: u64,
    offset_at: u64,
}

/// Parse and validate the header of a `file_size`-byte file.
pub fn parse(file_size: u64) -> Result<Gguf, MetaError> {
    let mut r = Reader::new(file_size);
    if file_size == 0 {
        return Err(fail("empty file, not a GGUF file".into(), "magic", 0));
    }
    r.need(4, "magic", None)?;
    let magic = r.peek(4)?.to_vec();
    if magic != b"GGUF" {
        return Err(fail(
            format!(
                "not a GGUF file: magic is {}, expected {}",
                repr_bytes(&magic),
                repr_bytes(b"GGUF")
            ),
            "magic",
            0,
        ));
    }
    r.pos = 4;
    let version = r.u32("version")?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if (1..=3).contains(&swapped) {
            return Err(fail(
                format!("big-endian GGUF not supported (version reads {:#010x})", version),
                "version",
                4,
            ));
        }
        return Err(fail(
            format!("GGUF version {} not supported (supported: 2, 3)", version),
            "version",
            4,
        ));
    }
    let n_tensors = r.u64("tensor_count")?;
    let n_kv = r.u64("kv_count")?;
    if n_tensors > MAX_TENSORS {
        return Err(fail(
            format!("tensor_count {} is over the limit of {}", n_tensors, MAX_TENSORS),
            "tensor_count",
            8,
        ));
    }
    if n_kv > MAX_KV {
        return Err(fail(
            format!("kv_count {} is over the limit of {}", n_kv, MAX_KV),
            "kv_count",
            16,
        ));
    }
    let mut left = r.left();
    if n_tensors > left / MIN_TENSOR_INFO {
        return Err(fail(
            format!(
                "tensor_count {} needs at least {} bytes, file has {} left (file size {})",
                n_tensors,
                n_tensors * MIN_TENSOR_INFO,
                left,
                file_size
            ),
            "tensor_count",
            8,
        ));
    }
    left -= n_tensors * MIN_TENSOR_INFO;
    if n_kv > left / MIN_KV {
        return Err(fail(
            format!(
                "kv_count {} needs at least {} bytes, file has {} left after the tensor infos (file size {})",
                n_kv,
                n_kv * MIN_KV,
                left,
                file_size
            ),
            "kv_count",
            16,
        ));
    }

    let mut g = Gguf {
        file_size,
        version,
        alignment: DEFAULT_ALIGNMENT,
        data_offset: 0,
        keys: Vec::new(),
        values: Vec::new(),
        types: Vec::new(),
        index: HashMap::new(),
        tensors: Vec::new(),
        tensor_index: HashMap::new(),
    };
    let mut kv_offsets: Vec<u64> = Vec::new();
    for i in 0..n_kv {
        let key_at = r.pos;
        let field = format!("kv[{}].key", i);
        if r.left() >= 8 && r.peek_u64()? == 0 {
            return Err(fail("empty metadata key".into(), &field, r.pos));
        }
        let (key, _) = r.string(&field, Some(MAX_KEY_BYTES))?;
        if g.index.contains_key(&key) {
            return Err(fail(format!("duplicate metadata key {}", repr_str(&key)), &key, key_at));
        }
        let t = r.value_type(&format!("{}.type", key))?;
        let value = if t == vt::ARRAY {
            Value::Array(r.array(&key, 1)?)
        } else {
            r.scalar(t, &key)?
        };
        g.index.insert(key.clone(), g.keys.len());
        g.keys.push(key);
        g.values.push(value);
        g.types.push(t);
        kv_offsets.push(key_at);
    }
    if let Some(&i) = g.index.get(ALIGNMENT_KEY) {
        let at = kv_offsets[i];
        if g.types[i] != vt::UINT32 {
            return Err(fail(
                format!(
                    "{} has type {}, must be UINT32",
                    ALIGNMENT_KEY,
                    vt::NAMES[g.types[i] as usize]
                ),
                ALIGNMENT_KEY,
                at,
            ));
        }
        let a = match g.values[i] {
            Value::Int(a) => a as u64,
            _ => 0,
        };
        if a == 0 || a & (a - 1) != 0 {
            return Err(fail(
                format!("{} is {}, must be a power of two", ALIGNMENT_KEY, a),
                ALIGNMENT_KEY,
                at,
            ));
        }
        g.alignment = a;
    }

    let mut infos: Vec<Info> = Vec::new();
    for i in 0..n_tensors {
        let info = tensor_info(&mut r, &mut g, i)?;
        infos.push(info);
    }
    g.data_offset = (r.pos + g.alignment - 1) / g.alignment * g.alignment;
    place_tensors(&mut g, infos)?;
    Ok(g)
}

fn tensor_info(r: &mut Reader, g: &mut Gguf, i: u64) -> Result<Info, MetaError> {
    let info_at = r.pos;
    let field = format!("tensor[{}].name", i);
    if r.left() >= 8 && r.peek_u64()? == 0 {
        return Err(fail("empty tensor name".into(), &field, r.pos));
    }
    let (name, _) = r.string(&field, Some(MAX_TENSOR_NAME_BYTES))?;
    if g.tensor_index.contains_key(&name) {
        return Err(fail(
            format!("duplicate tensor name {}", repr_str(&name)),
            &field,
            info_at,
        ));
    }
    g.tensor_index.insert(name.clone(), i as usize);
    let wher = format!("tensor {}", repr_str(&name));
    let dims_at = r.pos;
    let n_dims = r.u32(&format!("{}.n_dims", name))?;
    if !(1..=MAX_DIMS).contains(&n_dims) {
        return Err(fail(
            format!("{}: n_dims is {}, must be 1..{}", wher, n_dims, MAX_DIMS),
            &format!("{}.n_dims", name),
            dims_at,
        ));
    }
    let mut ne = Vec::new();
    for d in 0..n_dims {
        let at = r.pos;
        let f = format!("{}.ne[{}]", name, d);
        let v = r.u64(&f)?;
        if v == 0 || v > INT64_MAX {
            return Err(fail(
                format!("{}: ne[{}] is {}, must be 1..{}", wher, d, v, INT64_MAX),
                &f,
                at,
            ));
        }
        ne.push(v);
    }
    let type_at = r.pos;
    let type_id = r.u32(&format!("{}.type", name))?;
    let (type_name, block_size, type_size) = match ggml_type_info(type_id) {
        Some(x) => x,
        None => {
            return Err(fail(
                format!("{}: unknown ggml type id {}", wher, type_id),
                &format!("{}.type", name),
                type_at,
            ))
        }
    };
    let offset_at = r.pos;
    let rel_offset = r.u64(&format!("{}.offset", name))?;
    let mut n_elements = BigUint::one();
    for &v in &ne {
        n_elements.mul_u64(v);
    }
    let n_el = match n_elements.to_u128() {
        Some(v) if v <= INT64_MAX as u128 => v as u64,
        _ => {
            return Err(fail(
                format!("{}: {} elements overflow int64", wher, n_elements.to_decimal()),
                &format!("{}.ne", name),
                dims_at + 4,
            ))
        }
    };
    if ne[0] % block_size != 0 {
        return Err(fail(
            format!(
                "{}: ne[0] = {} is not a multiple of {}'s block size {}",
                wher, ne[0], type_name, block_size
            ),
            &format!("{}.ne[0]", name),
            dims_at + 4,
        ));
    }
    let n_bytes = (n_el / block_size) as u128 * type_size as u128;
    if n_bytes > INT64_MAX as u128 {
        return Err(fail(
            format!("{}: {} bytes overflow int64", wher, n_bytes),
            &format!("{}.ne", name),
            dims_at + 4,
        ));
    }
    if rel_offset % g.alignment != 0 {
        return Err(fail(
            format!(
                "{}: data offset {} is not a multiple of the alignment {}",
                wher, rel_offset, g.alignment
            ),
            &format!("{}.offset", name),
            offset_at,
        ));
    }
    Ok(Info {
        name,
        ggml_type: type_id,
        ne,
        rel_offset,
        n_bytes: n_bytes as u64,
        offset_at,
    })
}

fn place_tensors(g: &mut Gguf, infos: Vec<Info>) -> Result<(), MetaError> {
    let mut placed: Vec<(u64, u64, usize)> = Vec::new(); // (start, end, index)
    for info in infos {
        let field = format!("{}.offset", info.name);
        let wher = repr_str(&info.name);
        if info.rel_offset as u128 + info.n_bytes as u128 > u64::MAX as u128 {
            return Err(fail(
                format!(
                    "tensor {}: offset {} + size {} wraps around 2^64",
                    wher, info.rel_offset, info.n_bytes
                ),
                &field,
                info.offset_at,
            ));
        }
        let start = g.data_offset as u128 + info.rel_offset as u128;
        let end = start + info.n_bytes as u128;
        if end > g.file_size as u128 {
            return Err(fail(
                format!(
                    "tensor {}: data [{}, {}) needs at least {} bytes, file has {}",
                    wher, start, end, end, g.file_size
                ),
                &field,
                info.offset_at,
            ));
        }
        let mut ne = [1u64; 4];
        ne[..info.ne.len()].copy_from_slice(&info.ne);
        placed.push((start as u64, end as u64, g.tensors.len()));
        g.tensors.push(Tensor {
            name: info.name,
            ggml_type: info.ggml_type,
            n_dims: info.ne.len() as u32,
            ne,
            offset: start as u64,
            n_bytes: info.n_bytes,
            info_offset: info.offset_at,
        });
    }
    // Python sorts (start, end, name, offset_at) tuples
    placed.sort_by(|a, b| (a.0, a.1, g.tensors[a.2].name.as_bytes()).cmp(&(b.0, b.1, g.tensors[b.2].name.as_bytes())));
    for w in placed.windows(2) {
        let (s0, e0, i0) = w[0];
        let (s1, e1, i1) = w[1];
        if s1 < e0 {
            let n1 = &g.tensors[i1].name;
            return Err(fail(
                format!(
                    "tensor {} data [{}, {}) overlaps tensor {} data [{}, {})",
                    repr_str(n1),
                    s1,
                    e1,
                    repr_str(&g.tensors[i0].name),
                    s0,
                    e0
                ),
                &format!("{}.offset", n1),
                g.tensors[i1].info_offset,
            ));
        }
    }
    Ok(())
}
