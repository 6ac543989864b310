//! The tokenizer built from GGUF metadata: the twin of `realm/tokenizer/core.py` + `decode.py`
//! (llama.cpp's llama_vocab: load, tokenize, detokenize), for the models "llama" (SPM), "gpt2" and
//! "gemma4" (BPE with every pre-tokenizer family of tables.rs) and "bert" (WPM). Same checks, same
//! messages: ERR_BAD_GGUF where Python raises TokenizerError, ERR_UNSUPPORTED for UnsupportedError.
//!
//! Text is UTF-8 bytes; a token's text is a slice of the vocabulary's packed string table. Special
//! tokens are split off first (llama.cpp's tokenizer_st_partition), each remaining fragment goes to
//! the model's encoder (encode.rs); decoding maps pieces back to bytes.

use crate::abi::{ERR_BAD_GGUF, ERR_BAD_TOKEN, ERR_UNSUPPORTED};
use crate::encode::{self, push, Bpe, Index};
use crate::gguf::{vt, Array, ArrayData, Gguf, StrTable, Value};
use crate::pretok::{try_grow, Pre};
use crate::pyfmt::repr_str;
use crate::regex::Runner;
use crate::tables as T;
use crate::MetaError;

// llama_token_type values and llama_token_attr bits
const TYPE_BYTE: i128 = 6;
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;
const ATTR_LSTRIP: u16 = 1 << 7;
const ATTR_RSTRIP: u16 = 1 << 8;
const ATTR_OF_TYPE: [u16; 7] = [0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE];
const ATTR_SPECIAL: u16 = ATTR_UNKNOWN | ATTR_CONTROL; // omitted by decode unless special
const ATTR_PARTITION: u16 = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN; // matched in raw text

const SPACE: &str = "\u{2581}"; // '▁': SentencePiece's escaped space

const K_MODEL: &str = "tokenizer.ggml.model";
const K_PRE: &str = "tokenizer.ggml.pre";
const K_TOKENS: &str = "tokenizer.ggml.tokens";
const K_SCORES: &str = "tokenizer.ggml.scores";
const K_TYPES: &str = "tokenizer.ggml.token_type";
const K_MERGES: &str = "tokenizer.ggml.merges";
const K_IDS: [&str; 4] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.seperator_token_id", // sic
];
const K_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const K_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const K_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const K_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
const K_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";

fn tok_error(msg: String) -> MetaError {
    MetaError::new(ERR_BAD_GGUF, msg)
}

#[derive(PartialEq, Clone, Copy)]
pub enum Kind {
    Spm,
    Bpe,
    Wpm,
}

pub struct Tokenizer {
    pub kind: Kind,
    bpe: Option<Bpe>,
    pub vocab: Index,
    scores: Vec<f32>, // NaN replaced by -inf (SPM only)
    attrs: Vec<u16>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    lstrip_first: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    lowercase: bool,
    strip_accents: bool,
    pub stop_ids: Vec<u32>, // sorted
    byte_ids: [Option<u32>; 256],
    max_len: usize,           // WPM: the longest token in code points
    special: Vec<u32>,        // partition order: longest (bytes) first, then id
    first_bytes: [[bool; 256]; 2], // [special?][byte]: a partition token starts with it
    lens: [Vec<usize>; 2],         // distinct byte lengths of the partition tokens, descending
    runner: Runner,
    scratch: Vec<u8>,
}

fn get_bool(g: &Gguf, key: &str, default: bool) -> Result<bool, MetaError> {
    match g.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Int(i)) if *i == 0 || *i == 1 => Ok(*i == 1),
        Some(v) => Err(tok_error(format!("{} must be a bool, got {}", key, v.py_type()))),
    }
}

fn get_str<'a>(g: &'a Gguf, key: &str) -> Result<Option<&'a str>, MetaError> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(v) => Err(tok_error(format!("{} must be a string, got {}", key, v.py_type()))),
    }
}

fn get_id(g: &Gguf, key: &str, n: usize) -> Result<Option<u32>, MetaError> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Int(i)) => {
            if *i < 0 || *i >= n as i128 {
                return Err(tok_error(format!("{} = {} is out of range for a vocabulary of {} tokens", key, i, n)));
            }
            Ok(Some(*i as u32))
        }
        Some(v) => Err(tok_error(format!("{} must be an integer token id, got {}", key, v.py_type()))),
    }
}

const NP_NAMES: [&str; 13] = [
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "str", "object", "uint64", "int64",
    "float64",
];

/// Element `i` of a numeric array as f64 and, for integer types, as an exact integer.
fn element(a: &Array, raw: &[u8], i: usize) -> (f64, Option<i128>) {
    let size = vt::size(a.et) as usize;
    let mut w = [0u8; 8];
    w[..size].copy_from_slice(&raw[i * size..(i + 1) * size]);
    let u = u64::from_le_bytes(w);
    match a.et {
        vt::UINT8 | vt::UINT16 | vt::UINT32 | vt::UINT64 | vt::BOOL => (u as f64, Some(u as i128)),
        vt::INT8 => (u as u8 as i8 as f64, Some(u as u8 as i8 as i128)),
        vt::INT16 => (u as u16 as i16 as f64, Some(u as u16 as i16 as i128)),
        vt::INT32 => (u as u32 as i32 as f64, Some(u as u32 as i32 as i128)),
        vt::INT64 => (u as i64 as f64, Some(u as i64 as i128)),
        vt::FLOAT32 => (f32::from_bits(u as u32) as f64, None),
        _ => (f64::from_bits(u), None),
    }
}

/// `vocab.numeric_array`: None when absent, an error for anything but a 1-D numeric array of n.
fn numeric_array<'a>(g: &'a Gguf, key: &str, n: usize, integer: bool) -> Result<Option<(&'a Array, &'a [u8])>, MetaError> {
    let v = match g.get(key) {
        None => return Ok(None),
        Some(v) => v,
    };
    let a = match v {
        Value::Array(a) => a,
        v => return Err(tok_error(format!("{} must be a numeric array, got {}", key, v.py_type()))),
    };
    let raw: &[u8] = match &a.data {
        ArrayData::Raw(r) => r,
        _ if a.n == 0 => &[],
        ArrayData::Strings(t) => {
            // NumPy's dtype of the list of str: <U + the longest entry in characters (at least 1)
            let longest = (0..t.len())
                .map(|i| core::str::from_utf8(t.get(i)).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
                .max(1);
            return Err(tok_error(format!("{} must be a 1-D numeric array (<U{})", key, longest)));
        }
        ArrayData::Nested => return Err(tok_error(format!("{} must be a 1-D numeric array (object)", key))),
    };
    if a.n > 0 {
        let name = NP_NAMES[a.et as usize];
        if a.et == vt::BOOL || (integer && (a.et == vt::FLOAT32 || a.et == vt::FLOAT64)) {
            return Err(tok_error(format!("{} must be a 1-D numeric array ({})", key, name)));
        }
        if integer {
            for i in 0..a.n as usize {
                let x = element(a, raw, i).1.unwrap_or(0);
                if x < -(1i128 << 31) || x >= 1i128 << 31 {
                    return Err(tok_error(format!("{} must be a 1-D numeric array ({})", key, name)));
                }
            }
        }
    }
    if a.n as usize != n {
        return Err(tok_error(format!("{} has {} entries but {} has {}", key, a.n, K_TOKENS, n)));
    }
    Ok(Some((a, raw)))
}

/// A string array of the metadata, copied (checked as Python's `_load_vocab` / BPE.from_metadata).
fn string_array(g: &Gguf, key: &str, tokens: bool) -> Result<StrTable, MetaError> {
    let v = match g.get(key) {
        None if tokens => return Err(tok_error(format!("missing {}", key))),
        None => return Err(tok_error(format!("{} must be an array of strings, got NoneType", key))),
        Some(v) => v,
    };
    let a = match v {
        Value::Array(a) => a,
        v => return Err(tok_error(format!("{} must be an array of strings, got {}", key, v.py_type()))),
    };
    let t = match &a.data {
        ArrayData::Strings(t) => t,
        ArrayData::Raw(_) => return Err(tok_error(format!("{} must be an array of strings, got ndarray", key))),
        ArrayData::Nested if tokens => return Err(tok_error(format!("{}[0] is not a string (list)", key))),
        ArrayData::Nested => return Err(tok_error(format!("{} must be an array of strings", key))),
    };
    let mut out = StrTable::default();
    try_grow(&mut out.bytes, t.bytes.len())?;
    try_grow(&mut out.ends, t.ends.len())?;
    out.bytes.extend_from_slice(&t.bytes);
    out.ends.extend_from_slice(&t.ends);
    Ok(out)
}

/// C isspace() in the "C" locale.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

enum Frag {
    Text(usize, usize), // byte range
    Token(u32),
}

/// strtol(digits, 16) of a byte token's "NN" in "<0xNN>" (leading hex digits; none: 0), & 0xFF.
fn hex_byte(text: &[u8]) -> u8 {
    let digits = if text.len() > 3 { &text[3..text.len().min(5)] } else { &[][..] };
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    (v & 0xff) as u8
}

fn code_points(s: &str) -> Vec<u32> {
    s.chars().map(|c| c as u32).collect()
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, MetaError> {
        let model = match g.get(K_MODEL) {
            None => return Err(tok_error(format!("missing {}", K_MODEL))),
            Some(Value::Str(s)) => s.as_str(),
            Some(v) => return Err(tok_error(format!("{} must be a string, got {}", K_MODEL, v.py_type()))),
        };
        if let Some(&(_, what)) = T::UNSUPPORTED_MODELS.iter().find(|e| e.0 == model) {
            return Err(MetaError::new(
                ERR_UNSUPPORTED,
                format!("unsupported tokenizer model {} = {} ({})", K_MODEL, repr_str(model), what),
            ));
        }
        let &(_, kind, default_ids) = match T::MODELS.iter().find(|e| e.0 == model) {
            Some(e) => e,
            None => {
                return Err(MetaError::new(
                    ERR_UNSUPPORTED,
                    format!("unsupported tokenizer model {} = {}", K_MODEL, repr_str(model)),
                ))
            }
        };
        let kind = match kind {
            0 => Kind::Spm,
            1 => Kind::Bpe,
            _ => Kind::Wpm,
        };
        let mut bpe = None;
        if kind == Kind::Bpe {
            // the pre-tokenizer is checked before the costly vocabulary work
            let pre = Pre::named(if model == "gemma4" { Some("gemma4") } else { get_str(g, K_PRE)? })?;
            let merges = if g.get(K_MERGES).is_none() && pre.family == "kimi-k2" {
                StrTable::default() // llama.cpp loads Kimi-K2 without merges
            } else {
                string_array(g, K_MERGES, false)?
            };
            bpe = Some(Bpe::new(pre, merges)?);
        }

        // -- vocabulary
        let mut tokens = string_array(g, K_TOKENS, true)?;
        let n = tokens.len();
        if n == 0 {
            return Err(tok_error(format!("{} is empty", K_TOKENS)));
        }
        if n >= 1 << 31 {
            return Err(tok_error(format!("{} has too many tokens ({})", K_TOKENS, n)));
        }
        if (0..n).any(|i| tokens.get(i).is_empty()) {
            // llama.cpp renames empty tokens; they would never match
            let mut t = StrTable::default();
            for i in 0..n {
                let s = tokens.get(i);
                if s.is_empty() {
                    t.bytes.extend_from_slice(format!("[EMPTY_{}]", i).as_bytes());
                } else {
                    t.bytes.extend_from_slice(s);
                }
                t.ends.push(t.bytes.len() as u32);
            }
            tokens = t;
        }
        let (vocab, dup) = Index::new(tokens)?;
        if let Some((a, b)) = dup {
            let t = String::from_utf8_lossy(vocab.text(b as u32)).into_owned();
            return Err(tok_error(format!("{}: duplicate token {} at ids {} and {}", K_TOKENS, repr_str(&t), a, b)));
        }
        let mut scores = Vec::new();
        let sc = numeric_array(g, K_SCORES, n, false)?;
        if kind == Kind::Spm {
            try_grow(&mut scores, n)?;
            scores.resize(n, 0f32);
            if let Some((a, raw)) = sc {
                for (i, s) in scores.iter_mut().enumerate() {
                    let x = element(a, raw, i).0 as f32;
                    *s = if x.is_nan() { f32::NEG_INFINITY } else { x };
                }
            }
        }
        let mut attrs = Vec::new();
        try_grow(&mut attrs, n)?;
        attrs.resize(n, ATTR_NORMAL);
        if let Some((a, raw)) = numeric_array(g, K_TYPES, n, true)? {
            for (i, at) in attrs.iter_mut().enumerate() {
                let t = element(a, raw, i).1.unwrap_or(0);
                *at = if (0..=TYPE_BYTE).contains(&t) { ATTR_OF_TYPE[t as usize] } else { 0 };
            }
        }

        let mut tk = Tokenizer {
            kind,
            bpe,
            vocab,
            scores,
            attrs,
            bos_id: None,
            eos_id: None,
            unk_id: None,
            sep_id: None,
            add_bos: false,
            add_eos: false,
            lstrip_first: false,
            add_space_prefix: false,
            clean_spaces: false,
            lowercase: true,
            strip_accents: true,
            stop_ids: Vec::new(),
            byte_ids: [None; 256],
            max_len: 0,
            special: Vec::new(),
            first_bytes: [[false; 256]; 2],
            lens: [Vec::new(), Vec::new()],
            runner: Runner::new(),
            scratch: Vec::new(),
        };
        tk.load_flags(g, default_ids)?;
        tk.load_special(g)?;
        tk.build_partition(g);
        Ok(tk)
    }

    fn pre(&self) -> Option<&Pre> {
        self.bpe.as_ref().map(|b| &b.pre)
    }

    fn load_flags(&mut self, g: &Gguf, default_ids: [i64; 4]) -> Result<(), MetaError> {
        let n = self.vocab.len();
        let no_bos = self.pre().map_or(false, |p| p.has(T::PRE_NO_BOS));
        let mut ids = [None; 4];
        for r in 0..4 {
            let mut default = default_ids[r];
            if r == 0 && no_bos {
                default = -1;
            }
            let given = get_id(g, K_IDS[r], n)?;
            ids[r] = given.or(if default >= 0 && (default as usize) < n { Some(default as u32) } else { None });
        }
        self.bos_id = ids[0];
        self.eos_id = ids[1];
        self.unk_id = ids[2];
        self.sep_id = ids[3];
        let (add_bos, prefix, clean) = match self.kind {
            Kind::Bpe => {
                let p = self.pre().unwrap();
                (p.has(T::PRE_ADD_BOS), false, p.has(T::PRE_CLEAN_SPACES))
            }
            Kind::Spm => (true, true, false),
            Kind::Wpm => (true, false, true),
        };
        self.add_bos = get_bool(g, K_ADD_BOS, add_bos)?;
        if self.pre().map_or(false, |p| p.has(T::PRE_FORCE_BOS)) {
            self.add_bos = true; // llama.cpp overrides add_bos_token = false for Gemma 4
        }
        self.add_eos = get_bool(g, K_ADD_EOS, false)?;
        self.lstrip_first = get_bool(g, K_ADD_SPACE_PREFIX, prefix)?;
        self.add_space_prefix = self.kind == Kind::Spm && self.lstrip_first;
        self.clean_spaces = clean;
        self.lowercase = get_bool(g, K_LOWERCASE, true)?;
        self.strip_accents = get_bool(g, K_STRIP_ACCENTS, self.lowercase)?;
        if self.add_bos && self.bos_id.is_none() {
            return Err(tok_error(format!("{} is true, but {} is not set", K_ADD_BOS, K_IDS[0])));
        }
        if self.add_eos && self.eos_id.is_none() {
            return Err(tok_error(format!("{} is true, but {} is not set", K_ADD_EOS, K_IDS[1])));
        }
        Ok(())
    }

    fn load_special(&mut self, g: &Gguf) -> Result<(), MetaError> {
        let n = self.vocab.len();
        let mut roles: Vec<Option<u32>> = Vec::new();
        for &(_, keys, texts) in T::ROLE_TEXTS.iter() {
            let mut found = None;
            for k in keys.iter() {
                found = get_id(g, k, n)?;
                if found.is_some() {
                    break;
                }
            }
            if found.is_none() {
                // llama.cpp matches by text (in hash order); take the first text listed
                found = texts.iter().find_map(|t| self.vocab.get(t.as_bytes()));
                if let Some(i) = found {
                    self.attrs[i as usize] |= ATTR_CONTROL;
                }
            }
            roles.push(found);
        }
        let role = |name: &str| {
            T::ROLE_TEXTS.iter().position(|e| e.0 == name).and_then(|i| roles[i])
        };
        let (eot, eom) = (role("eot"), role("eom"));
        let mut eog: Vec<u32> = ["fim_pad", "fim_rep", "fim_sep"].iter().filter_map(|r| role(r)).collect();
        for t in T::EOG_TEXTS.iter() {
            if let Some(i) = self.vocab.get(t.as_bytes()) {
                eog.push(i);
                self.attrs[i as usize] |= ATTR_CONTROL;
            }
        }
        for t in T::ALWAYS_RENDERED.iter() {
            if let Some(i) = self.vocab.get(t.as_bytes()) {
                self.attrs[i as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([self.eos_id, eot, eom].iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        // texts of the EOG set -> id (ids of a text are unique: the vocabulary has no duplicates)
        let vocab = &self.vocab;
        let has = |eog: &Vec<u32>, t: &str| vocab.get(t.as_bytes()).filter(|i| eog.contains(i));
        // o200k_harmony / solar-open: "<|end|>" is not an end of generation there
        if let Some(end) = has(&eog, "<|end|>") {
            let call = has(&eog, "<|call|>").is_some() || has(&eog, "<|calls|>").is_some();
            if (has(&eog, "<|return|>").is_some() && call) || (call && has(&eog, "<|flush|>").is_some()) {
                eog.retain(|&i| i != end);
                self.attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        if let Some(s) = has(&eog, "</s>") {
            if has(&eog, "<|tool_response>").is_some() || has(&eog, "<|plamo:eos|>").is_some() {
                eog.retain(|&i| i != s); // gemma4, plamo
                self.attrs[s as usize] = ATTR_NORMAL;
            }
        }
        self.stop_ids = eog;
        for b in 0..256usize {
            let mut i = self.vocab.get(format!("<0x{:02X}>", b).as_bytes());
            if i.is_none() && b < 0x80 {
                i = self.vocab.get(&[b as u8]);
            }
            self.byte_ids[b] = i;
        }
        if self.kind == Kind::Wpm {
            self.max_len = (0..n)
                .map(|i| core::str::from_utf8(self.vocab.text(i as u32)).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0);
        }
        Ok(())
    }

    fn build_partition(&mut self, g: &Gguf) {
        let n = self.vocab.len();
        let mut special: Vec<u32> = (0..n as u32).filter(|&i| self.attrs[i as usize] & ATTR_PARTITION != 0).collect();
        let s = |k: &str| match g.get(k) {
            Some(Value::Str(s)) => s.clone(),
            _ => String::new(),
        };
        let name: String = s("general.name").chars().map(|c| c.to_ascii_lowercase()).collect();
        let pre = s(K_PRE);
        let arch = s("general.architecture");
        let id = |t: &str| self.vocab.get(t.as_bytes());
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|x| pre.contains(x))
            || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|x| arch.contains(x))
        {
            if let Some(i) = id("<mask>") {
                self.attrs[i as usize] |= ATTR_LSTRIP;
            }
        } else if name.contains("phi-3") || name.contains("phi3") {
            // Phi-3 special tokens eat whitespace to their right
            for &i in &special {
                self.attrs[i as usize] |= ATTR_RSTRIP;
            }
            for (text, on) in [("</s>", true), ("<unk>", false), ("<s>", false), ("<|endoftext|>", false)] {
                if let Some(i) = id(text) {
                    let a = &mut self.attrs[i as usize];
                    *a = if on { *a | ATTR_RSTRIP } else { *a & !ATTR_RSTRIP };
                }
            }
        } else if name.contains("modern-bert") {
            if let Some(i) = id("[MASK]") {
                self.attrs[i as usize] |= ATTR_LSTRIP;
            }
        }
        let vocab = &self.vocab;
        special.sort_by(|&a, &b| vocab.text(b).len().cmp(&vocab.text(a).len()).then(a.cmp(&b)));
        for &t in &special {
            let text = vocab.text(t);
            let is_special = self.attrs[t as usize] & ATTR_SPECIAL != 0;
            for (mode, on) in [(0usize, !is_special), (1usize, true)] {
                if on && !text.is_empty() {
                    self.first_bytes[mode][text[0] as usize] = true;
                    if !self.lens[mode].contains(&text.len()) {
                        self.lens[mode].push(text.len());
                    }
                }
            }
        }
        for l in self.lens.iter_mut() {
            l.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.special = special;
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn check_id(&self, id: i32) -> Result<u32, MetaError> {
        if id < 0 || id as usize >= self.vocab.len() {
            return Err(MetaError::new(
                ERR_BAD_TOKEN,
                format!("token id {} is out of range (vocabulary of {} tokens)", id, self.vocab.len()),
            ));
        }
        Ok(id as u32)
    }

    // -- encoding ---------------------------------------------------------------------------------

    /// Text -> ids as `realm.tokenizer.Tokenizer.encode(text, add_bos, special)`.
    pub fn encode(&mut self, text: &str, add_bos: bool, special: bool) -> Result<Vec<u32>, MetaError> {
        let mut out: Vec<u32> = Vec::new();
        try_grow(&mut out, text.len() / 2 + 8)?;
        if add_bos && self.add_bos {
            if let Some(b) = self.bos_id {
                out.push(b);
            }
        }
        let mut prev_special = true; // the first fragment gets the space prefix, as does any after a special token
        let frags = if text.is_empty() { Vec::new() } else { self.partition(text.as_bytes(), special)? };
        let mut scratch = core::mem::take(&mut self.scratch);
        for frag in frags {
            let (a, b) = match frag {
                Frag::Token(id) => {
                    push(&mut out, id)?;
                    prev_special = true;
                    continue;
                }
                Frag::Text(a, b) => (a, b),
            };
            let piece = &text[a..b];
            match self.kind {
                Kind::Spm => {
                    let mut escaped = String::new();
                    if self.add_space_prefix && prev_special {
                        escaped.push_str(SPACE);
                    }
                    escaped.push_str(&piece.replace(' ', SPACE));
                    encode::spm(&self.vocab, &self.scores, &self.byte_ids, self.unk_id, escaped.as_bytes(), &mut out)?;
                }
                Kind::Bpe => {
                    let bpe = self.bpe.as_ref().unwrap();
                    let cps = if bpe.pre.has(T::PRE_ESCAPE_WHITESPACES) {
                        code_points(&piece.replace(' ', SPACE))
                    } else {
                        code_points(piece)
                    };
                    for (s, e) in bpe.pre.split(&cps, &mut self.runner)? {
                        bpe.word(&self.vocab, &cps[s..e], &mut out, &mut scratch)?;
                    }
                }
                Kind::Wpm => {
                    let cps = code_points(piece);
                    encode::wpm(&self.vocab, &cps, self.max_len, self.unk_id, self.lowercase, self.strip_accents, &mut out)?;
                }
            }
            prev_special = false;
        }
        self.scratch = scratch;
        if self.kind == Kind::Wpm && add_bos {
            if let Some(s) = self.sep_id {
                push(&mut out, s)?;
            }
        }
        Ok(out)
    }

    /// Split at special tokens as llama.cpp's tokenizer_st_partition: the longest token first, each
    /// taking its leftmost non-overlapping occurrences in still-unclaimed text; LSTRIP/RSTRIP tokens
    /// also claim the whitespace beside them.
    fn partition(&self, t: &[u8], special: bool) -> Result<Vec<Frag>, MetaError> {
        let n = t.len();
        let mode = special as usize;
        let matchable = |id: u32| {
            let a = self.attrs[id as usize];
            a & ATTR_PARTITION != 0 && (special || a & ATTR_SPECIAL == 0)
        };
        // every occurrence of a matchable token, found in one pass: (id, position)
        let mut occ: Vec<(u32, u32)> = Vec::new();
        let lens = &self.lens[mode];
        for i in 0..n {
            if !self.first_bytes[mode][t[i] as usize] || t[i] & 0xc0 == 0x80 {
                continue;
            }
            for &l in lens {
                if i + l <= n {
                    if let Some(id) = self.vocab.get(&t[i..i + l]) {
                        if matchable(id) {
                            if occ.len() == occ.capacity() {
                                let more = occ.len().max(64);
                                try_grow(&mut occ, more)?;
                            }
                            occ.push((id, i as u32));
                        }
                    }
                }
            }
        }
        let mut frags = Vec::new();
        if occ.is_empty() {
            frags.push(Frag::Text(0, n));
            return Ok(frags);
        }
        let vocab = &self.vocab;
        // partition order: longest token first, then lowest id; each token's occurrences left to right
        occ.sort_unstable_by(|a, b| {
            vocab.text(b.0).len().cmp(&vocab.text(a.0).len()).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
        });
        let mut claimed: Vec<bool> = Vec::new();
        try_grow(&mut claimed, n)?;
        claimed.resize(n, false);
        let mut starts: Vec<(usize, u32)> = Vec::new();
        let mut k = 0;
        while k < occ.len() {
            let tid = occ[k].0;
            let tok = vocab.text(tid);
            let attr = self.attrs[tid as usize];
            let size = tok.len();
            let mut pos = 0;
            let mut done_token = false;
            while k < occ.len() && occ[k].0 == tid {
                let p = occ[k].1 as usize;
                k += 1;
                if done_token || p < pos {
                    continue; // the leftmost occurrence at or after pos comes next, as str.find
                }
                if let Some(q) = (p..p + size).find(|&j| claimed[j]) {
                    match (q..n).find(|&j| !claimed[j]) {
                        Some(next) => pos = next,
                        None => done_token = true,
                    }
                    continue;
                }
                for c in &mut claimed[p..p + size] {
                    *c = true;
                }
                starts.push((p, tid));
                pos = p + size;
                if attr & ATTR_LSTRIP != 0 {
                    let mut j = p;
                    while j > 0 && !claimed[j - 1] && c_space(t[j - 1]) {
                        claimed[j - 1] = true;
                        j -= 1;
                    }
                }
                if attr & ATTR_RSTRIP != 0 {
                    while pos < n && !claimed[pos] && c_space(t[pos]) {
                        claimed[pos] = true;
                        pos += 1;
                    }
                }
            }
        }
        starts.sort_unstable();
        let mut i = 0;
        let mut si = 0;
        while i < n {
            if !claimed[i] {
                let j = (i..n).find(|&k| claimed[k]).unwrap_or(n);
                frags.push(Frag::Text(i, j));
                i = j;
            } else if si < starts.len() && starts[si].0 == i {
                frags.push(Frag::Token(starts[si].1));
                i += vocab.text(starts[si].1).len();
                si += 1;
            } else {
                i += 1; // stripped whitespace
            }
        }
        Ok(frags)
    }

    // -- decoding ---------------------------------------------------------------------------------

    /// The bytes one token stands for (llama.cpp's token_to_piece without lstrip).
    pub fn piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let attr = self.attrs[id as usize];
        let text = self.vocab.text(id);
        if attr & ATTR_SPECIAL != 0 && !special {
            return;
        }
        if attr & (ATTR_SPECIAL | ATTR_USER_DEFINED) != 0 {
            out.extend_from_slice(text);
        } else if attr & ATTR_NORMAL != 0 {
            if self.pre().map_or(false, |p| !p.has(T::PRE_ESCAPE_WHITESPACES)) {
                encode::byte_decode(text, out);
            } else {
                let s = core::str::from_utf8(text).unwrap_or("");
                out.extend_from_slice(s.replace(SPACE, " ").as_bytes());
            }
        } else if attr & ATTR_BYTE != 0 {
            out.push(hex_byte(text));
        }
    }

    /// Ids -> bytes as llama.cpp's llama_detokenize (Python `decode.detokenize`), before the
    /// UTF-8 replacement of invalid sequences.
    pub fn detokenize(&self, ids: &[u32], special: bool, remove_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut strip = self.lstrip_first;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos_id {
            strip = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == self.eos_id {
            ids = &ids[..ids.len() - 1];
        }
        let mut buf = Vec::new();
        let mut piece = Vec::new();
        for &i in ids {
            piece.clear();
            self.piece(i, special, &mut piece);
            let p = if strip && piece.first() == Some(&b' ') { &piece[1..] } else { &piece[..] };
            strip = false;
            buf.extend_from_slice(p);
        }
        if self.clean_spaces {
            clean_spaces(&buf)
        } else {
            buf
        }
    }
}

/// llama.cpp's three clean_up_tokenization_spaces passes over detokenized bytes.
pub fn clean_spaces(buf: &[u8]) -> Vec<u8> {
    let mut t: Vec<u8> = buf.to_vec();
    if t.len() < 2 {
        return t;
    }
    let (sp, q) = (b' ', b'\'');
    let mut out = vec![t[0]]; // pass 1: " ?", " !", " .", " ," lose the space
    for i in 1..t.len() {
        if t[i - 1] == sp && b"?!.,".contains(&t[i]) {
            out.pop();
        }
        out.push(t[i]);
    }
    t = out;
    out = vec![t[0]]; // pass 2: a lone apostrophe between spaces loses both spaces
    let mut i = 1;
    while i < t.len() {
        let x = t[i];
        if x == q && i + 1 < t.len() && t[i - 1] == sp && t[i + 1] == sp {
            out.pop();
            i += 1;
            t[i] = 0; // the skipped space reads as NUL to the next step, as in llama.cpp's in-place pass
        }
        out.push(x);
        i += 1;
    }
    t = out;
    out = vec![t[0]]; // pass 3: " 's", " 'm", " 're", " 've" lose the space
    for i in 1..t.len() {
        let x = t[i];
        if t[i - 1] == sp && x == q && i + 1 < t.len() {
            let x1 = t[i + 1];
            if x1 == b's' || x1 == b'm' {
                out.pop();
            } else if x1 != b't' && x1 != b'd' && i + 2 < t.len() && (&[x1, t[i + 2]] == b"re" || &[x1, t[i + 2]] == b"ve") {
                out.pop();
            }
        }
        out.push(x);
    }
    out
}

/// The longest prefix length k such that clean_spaces(buf[:k] + rest) == clean_spaces(buf[:k]) +
/// clean_spaces(rest) for any rest (Python `decode._safe_cut`).
fn safe_cut(buf: &[u8]) -> usize {
    let mut k = buf.len();
    while k >= 1 {
        if !b" '".contains(&buf[k - 1]) && (k == 1 || !b" '".contains(&buf[k - 2])) {
            return k;
        }
        k -= 1;
    }
    0
}

/// Valid UTF-8 of `pending` (invalid sequences as U+FFFD); an incomplete character at the end
/// stays in `pending` unless `last`.
fn utf8_take(pending: &mut Vec<u8>, last: bool, out: &mut Vec<u8>) {
    let mut rest: &[u8] = pending;
    loop {
        match core::str::from_utf8(rest) {
            Ok(s) => {
                out.extend_from_slice(s.as_bytes());
                rest = &[];
                break;
            }
            Err(e) => {
                let ok = e.valid_up_to();
                out.extend_from_slice(&rest[..ok]);
                match e.error_len() {
                    Some(bad) => {
                        out.extend_from_slice("\u{fffd}".as_bytes());
                        rest = &rest[ok + bad..];
                    }
                    None => {
                        rest = &rest[ok..];
                        if last {
                            out.extend_from_slice("\u{fffd}".as_bytes());
                            rest = &[];
                        }
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *pending = keep;
}

/// Text as Python's `bytes.decode("utf-8", errors="replace")`.
pub fn utf8_lossy(b: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(b).into_owned().into_bytes()
}

/// Incremental decoding of generated ids, exactly as `realm.tokenizer.StreamDecoder`.
#[derive(Clone, Default)]
pub struct Stream {
    special: bool,
    strip: bool,
    raw: Vec<u8>,     // pieces not yet cleaned (clean_spaces only)
    pending: Vec<u8>, // an incomplete UTF-8 character
}

impl Stream {
    pub fn new(tk: &Tokenizer, special: bool, lstrip_first: bool) -> Stream {
        Stream { special, strip: lstrip_first && tk.lstrip_first, raw: Vec::new(), pending: Vec::new() }
    }

    pub fn feed(&mut self, tk: &Tokenizer, id: u32) -> Vec<u8> {
        let mut piece = Vec::new();
        tk.piece(id, self.special, &mut piece);
        if self.strip && piece.first() == Some(&b' ') {
            piece.remove(0);
        }
        self.strip = false;
        let mut out = Vec::new();
        if !tk.clean_spaces {
            self.pending.extend_from_slice(&piece);
            utf8_take(&mut self.pending, false, &mut out);
            return out;
        }
        self.raw.extend_from_slice(&piece);
        let k = safe_cut(&self.raw);
        if k == 0 {
            return out;
        }
        let done = clean_spaces(&self.raw[..k]);
        self.raw.drain(..k);
        self.pending.extend_from_slice(&done);
        utf8_take(&mut self.pending, false, &mut out);
        out
    }

    pub fn flush(&mut self) -> Vec<u8> {
        let rest = if self.raw.is_empty() { Vec::new() } else { clean_spaces(&self.raw) };
        self.raw.clear();
        self.pending.extend_from_slice(&rest);
        let mut out = Vec::new();
        utf8_take(&mut self.pending, true, &mut out);
        self.pending.clear();
        out
    }
}
