//! `ModelConfigABI` from GGUF metadata: the twin of `realm/config.py` (`ModelConfig.from_gguf`)
//! packed as `realm/host/abi.py`'s `pack_model_config`, byte for byte; the same checks in the same
//! order, `ERR_BAD_GGUF` where Python raises ConfigError, `ERR_UNSUPPORTED` for UnsupportedError,
//! `ERR_INTERNAL` where the Python host's packing itself fails (a value outside u32 or f32).

use crate::abi::{config_word as w, *};
use crate::gguf::{Gguf, Value};
use crate::pyfmt::{repr_float, repr_str};
use crate::MetaError;

fn config_error(msg: String) -> MetaError {
    MetaError::new(ERR_BAD_GGUF, msg)
}

/// Python `repr` of a metadata value (for the rope scaling message).
fn repr_value(v: &Value) -> Result<String, MetaError> {
    Ok(match v {
        Value::Int(i) => format!("{}", i),
        Value::Float(f) => repr_float(*f),
        Value::Bool(b) => (if *b { "True" } else { "False" }).into(),
        Value::Str(s) => repr_str(s),
        Value::Array(crate::gguf::Array {
            data: crate::gguf::ArrayData::Strings(t),
            ..
        }) => {
            let items: Vec<String> = (0..t.len())
                .map(|i| repr_str(core::str::from_utf8(t.get(i)).unwrap_or("")))
                .collect();
            format!("[{}]", items.join(", "))
        }
        Value::Array(_) => {
            return Err(MetaError::new(
                ERR_INTERNAL,
                "rope.scaling.type is a numeric or nested array (the Python host fails on it)".into(),
            ))
        }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::Bool => "bool",
        }
    }
}

/// A metadata number as Python's `get` returns it.
#[derive(Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
    Bool(bool),
}

impl Num {
    fn repr(self) -> String {
        match self {
            Num::Int(i) => i.to_string(),
            Num::Float(f) => repr_float(f),
            Num::Bool(b) => (if b { "True" } else { "False" }).into(),
        }
    }
}

/// The values of `{arch}.{key}` keys, with the checks of `from_gguf`'s inner `get`.
struct Md<'a> {
    g: &'a Gguf,
    arch: &'a str,
}

impl<'a> Md<'a> {
    /// Python's `get(key, kind, default, required)`: Ok(None) when absent without default.
    fn get(&self, key: &str, kind: Kind, default: Option<Num>, required: bool) -> Result<Option<Num>, MetaError> {
        let full = format!("{}.{}", self.arch, key);
        let v = match self.g.get(&full) {
            None => {
                if required && default.is_none() {
                    return Err(config_error(format!("missing metadata key {}", repr_str(&full))));
                }
                return Ok(default);
            }
            Some(v) => v,
        };
        let value = match (kind, v) {
            (Kind::Float, Value::Int(i)) => Num::Float(*i as f64),
            (Kind::Float, Value::Float(f)) => Num::Float(*f),
            (Kind::Int, Value::Int(i)) => Num::Int(*i),
            (Kind::Bool, Value::Bool(b)) => Num::Bool(*b),
            (k, v) => {
                return Err(config_error(format!(
                    "metadata key {} has type {}, expected {}",
                    repr_str(&full),
                    v.py_type(),
                    k.name()
                )))
            }
        };
        let invalid = match value {
            Num::Int(i) => i < 0,
            Num::Float(f) => !f.is_finite(),
            Num::Bool(_) => false,
        };
        if invalid {
            return Err(config_error(format!(
                "metadata key {} has invalid value {}",
                repr_str(&full),
                value.repr()
            )));
        }
        Ok(Some(value))
    }

    fn int(&self, key: &str, default: Option<i128>, required: bool) -> Result<Option<i128>, MetaError> {
        Ok(match self.get(key, Kind::Int, default.map(Num::Int), required)? {
            Some(Num::Int(i)) => Some(i),
            _ => None,
        })
    }

    fn float(&self, key: &str, default: Option<f64>, required: bool) -> Result<Option<f64>, MetaError> {
        Ok(match self.get(key, Kind::Float, default.map(Num::Float), required)? {
            Some(Num::Float(f)) => Some(f),
            _ => None,
        })
    }

    fn req_int(&self, key: &str, default: Option<i128>) -> Result<i128, MetaError> {
        self.int(key, default, true)?.ok_or_else(internal)
    }

    fn req_float(&self, key: &str, default: Option<f64>) -> Result<f64, MetaError> {
        self.float(key, default, true)?.ok_or_else(internal)
    }
}

fn internal() -> MetaError {
    MetaError::new(ERR_INTERNAL, "config: a required value is missing".into())
}

/// What an architecture fixes (`realm.config.ArchSpec`).
struct ArchSpec {
    name: &'static str,
    rope_style: u32,
    activation: u32,
    qk_norm: bool,
    post_norms: bool,
    scaled_embed: bool,
    gemma_sliding: bool,
    fused_gate_up: bool,
    rope_factors: u32, // 0: none; 1: rope_freqs, or long/short with rope.scaling.type longrope; 2: long/short
}

const fn spec(
    name: &'static str,
    rope_style: u32,
    activation: u32,
    flags: [bool; 5],
    rope_factors: u32,
) -> ArchSpec {
    ArchSpec {
        name,
        rope_style,
        activation,
        qk_norm: flags[0],
        post_norms: flags[1],
        scaled_embed: flags[2],
        gemma_sliding: flags[3],
        fused_gate_up: flags[4],
        rope_factors,
    }
}

/// `realm.config.ARCHS`, in its order (the order of the "supported" list in messages).
const ARCHS: [ArchSpec; 5] = [
    spec("llama", ROPE_NORM, ACT_SILU, [false, false, false, false, false], 1),
    spec("gemma3", ROPE_NEOX, ACT_GELU_TANH, [true, true, true, true, false], 0),
    spec("qwen2", ROPE_NEOX, ACT_SILU, [false, false, false, false, false], 0),
    spec("qwen3", ROPE_NEOX, ACT_SILU, [true, false, false, false, false], 0),
    spec("phi3", ROPE_NEOX, ACT_SILU, [false, false, false, false, true], 2),
];

/// `_UNIMPLEMENTED_KEYS`: keys that change llama.cpp's forward pass, with their neutral value.
const UNIMPLEMENTED_KEYS: [(&str, Kind, Num); 4] = [
    ("expert_count", Kind::Int, Num::Int(0)),
    ("expert_used_count", Kind::Int, Num::Int(0)),
    ("attn_logit_softcapping", Kind::Float, Num::Float(0.0)),
    ("attention.causal", Kind::Bool, Num::Bool(true)),
];
const ROPE_SCALING_TYPES: [&str; 3] = ["none", "linear", "longrope"];

/// The fields of `realm.config.ModelConfig`, as Python numbers.
struct Cfg {
    arch: &'static str,
    dim: i128,
    hidden_dim: i128,
    n_layers: i128,
    n_heads: i128,
    n_kv_heads: i128,
    head_dim: i128,
    vocab_size: i128,
    context_length: i128,
    rope_theta: f64,
    rope_theta_local: f64,
    rope_freq_scale: f64,
    rope_dim: i128,
    rope_style: u32,
    norm_eps: f64,
    embed_scale: f64,
    attn_scale: f64,
    activation: u32,
    sliding_window: i128,
    sliding_window_pattern: i128,
    qk_norm: bool,
    post_norms: bool,
    tied_output: bool,
    final_logit_softcap: f64,
    rope_factors: u32,
    rope_orig_ctx: i128,
    rope_attn_factor: f64,
    qkv_bias: bool,
    attn_output_bias: bool,
    fused_qkv: bool,
    fused_gate_up: bool,
}

fn derive(g: &Gguf) -> Result<Cfg, MetaError> {
    let arch = match g.get("general.architecture") {
        Some(Value::Str(s)) => s.as_str(),
        _ => {
            return Err(config_error(
                "missing or invalid metadata key 'general.architecture'".into(),
            ))
        }
    };
    let spec = match ARCHS.iter().find(|s| s.name == arch) {
        Some(s) => s,
        None => {
            let names: Vec<&str> = ARCHS.iter().map(|s| s.name).collect();
            return Err(MetaError::new(
                ERR_UNSUPPORTED,
                format!(
                    "architecture {} is not supported (supported: {})",
                    repr_str(arch),
                    names.join(", ")
                ),
            ));
        }
    };
    let md = Md { g, arch };
    for (key, kind, neutral) in UNIMPLEMENTED_KEYS.iter() {
        let value = md.get(key, *kind, Some(*neutral), false)?.unwrap_or(*neutral);
        if value != *neutral {
            return Err(MetaError::new(
                ERR_UNSUPPORTED,
                format!(
                    "{}.{} = {} is not supported (realm implements {})",
                    arch,
                    key,
                    value.repr(),
                    neutral.repr()
                ),
            ));
        }
    }
    let dim = md.req_int("embedding_length", None)?;
    let n_layers = md.req_int("block_count", None)?;
    let n_heads = md.req_int("attention.head_count", None)?;
    if dim <= 0 || n_layers <= 0 || n_heads <= 0 {
        return Err(config_error(format!(
            "{}: embedding_length, block_count and attention.head_count must be positive",
            arch
        )));
    }
    let n_kv_heads = md.req_int("attention.head_count_kv", Some(n_heads))?;
    let head_dim = md.req_int("attention.key_length", Some(dim / n_heads))?;
    let value_length = md.req_int("attention.value_length", Some(head_dim))?;
    if value_length != head_dim {
        return Err(MetaError::new(
            ERR_UNSUPPORTED,
            format!(
                "{}.attention.value_length {} != key_length {}",
                arch, value_length, head_dim
            ),
        ));
    }
    if n_kv_heads <= 0 || n_heads % n_kv_heads != 0 {
        return Err(config_error(format!(
            "{}.attention.head_count_kv = {} does not divide head_count {}",
            arch, n_kv_heads, n_heads
        )));
    }
    if head_dim <= 0 || head_dim % 2 != 0 {
        return Err(config_error(format!(
            "{}.attention.key_length = {} must be positive and even",
            arch, head_dim
        )));
    }
    let hidden_dim = md.req_int("feed_forward_length", None)?;
    let context_length = md.req_int("context_length", Some(2048))?;
    let norm_eps = md.req_float("attention.layer_norm_rms_epsilon", None)?;
    let rope_theta = md.req_float("rope.freq_base", Some(10000.0))?;
    let rope_dim = md.req_int("rope.dimension_count", Some(head_dim))?;
    if rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
        return Err(config_error(format!(
            "{}.rope.dimension_count = {} must be even and at most {}",
            arch, rope_dim, head_dim
        )));
    }
    // llama.cpp: a missing rope.scaling.type means "linear", and the factor applies when present
    let scaling_key = format!("{}.rope.scaling.type", arch);
    let scaling_type: &str = match g.get(&scaling_key) {
        None => "linear",
        Some(Value::Str(s)) if ROPE_SCALING_TYPES.contains(&s.as_str()) => s.as_str(),
        Some(v) => {
            return Err(MetaError::new(
                ERR_UNSUPPORTED,
                format!(
                    "{} = {} is not supported (supported: {})",
                    scaling_key,
                    repr_value(v)?,
                    ROPE_SCALING_TYPES.join(", ")
                ),
            ))
        }
    };
    let mut rope_freq_scale = 1.0f64;
    let factor = md.float("rope.scaling.factor", Some(0.0), false)?.unwrap_or(0.0);
    if scaling_type != "none" && factor != 0.0 {
        if factor < 0.0 {
            return Err(config_error(format!(
                "{}.rope.scaling.factor = {} must be positive",
                arch,
                repr_float(factor)
            )));
        }
        rope_freq_scale = 1.0 / factor;
    }
    let rope_attn_factor = md.float("rope.scaling.attn_factor", Some(1.0), false)?.unwrap_or(1.0);
    if rope_attn_factor <= 0.0 {
        return Err(config_error(format!(
            "{}.rope.scaling.attn_factor = {} must be positive",
            arch,
            repr_float(rope_attn_factor)
        )));
    }
    let rope_orig_ctx = md
        .int("rope.scaling.original_context_length", Some(context_length), false)?
        .unwrap_or(context_length);

    let embd = match g.tensor("token_embd.weight") {
        Some(t) => t,
        None => {
            return Err(config_error(
                "tensor 'token_embd.weight' is missing: not a complete model".into(),
            ))
        }
    };
    let vocab_size = embd.shape()[0] as i128;
    if let Some(tokens) = g.get("tokenizer.ggml.tokens") {
        let n = match tokens {
            Value::Array(a) => a.n as i128,
            Value::Str(s) => s.chars().count() as i128,
            v => {
                return Err(MetaError::new(
                    ERR_INTERNAL,
                    format!("object of type '{}' has no len() (tokenizer.ggml.tokens)", v.py_type()),
                ))
            }
        };
        if n != vocab_size {
            return Err(config_error(format!(
                "tokenizer.ggml.tokens has {} entries but token_embd.weight has {} rows",
                n, vocab_size
            )));
        }
    }

    // RoPE frequency factors: Llama 3.x rope_freqs, or LongRoPE's long/short pair
    let has_t = |n: &str| g.tensor(n).is_some();
    let long_short = spec.rope_factors == 2 || (spec.rope_factors == 1 && scaling_type == "longrope");
    let rope_factors = if long_short && (has_t("rope_factors_long.weight") || has_t("rope_factors_short.weight")) {
        ROPE_FACTORS_LONG_SHORT
    } else if spec.rope_factors == 1 && !long_short && has_t("rope_freqs.weight") {
        ROPE_FACTORS_FREQS
    } else {
        ROPE_FACTORS_NONE
    };
    // every layer has it (stops at the first missing one, so a huge block_count costs nothing)
    let has = |name: &str| -> bool {
        let mut il: i128 = 0;
        while il < n_layers {
            if !has_t(&format!("blk.{}.{}", il, name)) {
                return false;
            }
            il += 1;
        }
        true
    };
    let fused_qkv = has_t("blk.0.attn_qkv.weight");
    let qkv_bias = if fused_qkv {
        has("attn_qkv.bias")
    } else {
        has("attn_q.bias") || has("attn_k.bias") || has("attn_v.bias")
    };

    let window = if spec.gemma_sliding {
        md.int("attention.sliding_window", Some(0), false)?.unwrap_or(0)
    } else {
        // read (and type-checked) but ignored, as llama.cpp does for these architectures
        md.int("attention.sliding_window", Some(0), false)?;
        0
    };
    let final_logit_softcap = md.float("final_logit_softcapping", Some(0.0), false)?.unwrap_or(0.0);
    let cfg = Cfg {
        arch: spec.name,
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        context_length,
        rope_theta,
        rope_theta_local: if spec.gemma_sliding { 10000.0 } else { rope_theta },
        rope_freq_scale,
        rope_dim,
        rope_style: spec.rope_style,
        norm_eps,
        embed_scale: if spec.scaled_embed { (dim as f64).sqrt() } else { 1.0 },
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        activation: spec.activation,
        sliding_window: window,
        sliding_window_pattern: if window != 0 { 6 } else { 0 },
        qk_norm: spec.qk_norm,
        post_norms: spec.post_norms,
        tied_output: !has_t("output.weight"),
        final_logit_softcap,
        rope_factors,
        rope_orig_ctx,
        rope_attn_factor,
        qkv_bias,
        attn_output_bias: has("attn_output.bias"),
        fused_qkv,
        fused_gate_up: spec.fused_gate_up,
    };
    check_tensors(g, &cfg)?;
    Ok(cfg)
}

/// ggml types the kernels handle (`realm.quants.SUPPORTED`).
fn type_supported(t: u32) -> bool {
    matches!(t, 0 | 1 | 30 | 2 | 3 | 6 | 7 | 8 | 10..=15)
}

/// The (tensor, shape) list of `ModelConfig.expected_tensors` for layer `il`, in that dict's
/// insertion order with the final shapes (fused tensors are entered once, at their first matrix).
fn layer_tensors(c: &Cfg, il: i128) -> Vec<(String, Vec<i128>)> {
    let b = |n: &str| format!("blk.{}.{}", il, n);
    let (q, kv, h, d) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.hidden_dim, c.dim);
    let mut out: Vec<(String, Vec<i128>)> = Vec::with_capacity(16);
    let mut put = |name: String, shape: Vec<i128>| {
        // the dict keeps the first position and grows the row count to the largest end
        if let Some(e) = out.iter_mut().find(|e| e.0 == name) {
            e.1[0] = e.1[0].max(shape[0]);
        } else {
            out.push((name, shape));
        }
    };
    put(b("attn_norm.weight"), vec![d]);
    put(b("ffn_norm.weight"), vec![d]);
    for name in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
        let cols = match name {
            "attn_output" => q,
            "ffn_down" => h,
            _ => d,
        };
        let qkv = matches!(name, "attn_q" | "attn_k" | "attn_v");
        let (tensor, hi) = if c.fused_qkv && qkv {
            let lo = match name {
                "attn_q" => 0,
                "attn_k" => q,
                _ => q + kv,
            };
            (b("attn_qkv.weight"), lo + if name == "attn_q" { q } else { kv })
        } else if c.fused_gate_up && (name == "ffn_gate" || name == "ffn_up") {
            (b("ffn_up.weight"), if name == "ffn_gate" { h } else { 2 * h })
        } else {
            let rows = match name {
                "attn_q" => q,
                "attn_k" | "attn_v" => kv,
                "attn_output" | "ffn_down" => d,
                _ => h,
            };
            (b(&format!("{}.weight", name)), rows)
        };
        put(tensor, vec![hi, cols]);
        if qkv && c.qkv_bias {
            let bias = if c.fused_qkv { b("attn_qkv.bias") } else { b(&format!("{}.bias", name)) };
            put(bias, vec![hi]);
        } else if name == "attn_output" && c.attn_output_bias {
            put(b("attn_output.bias"), vec![d]);
        }
    }
    if c.qk_norm {
        put(b("attn_q_norm.weight"), vec![c.head_dim]);
        put(b("attn_k_norm.weight"), vec![c.head_dim]);
    }
    if c.post_norms {
        put(b("post_attention_norm.weight"), vec![d]);
        put(b("post_ffw_norm.weight"), vec![d]);
    }
    out
}

/// Every tensor the forward pass reads exists with the shape the config implies, in a type the
/// kernels handle, checked in the order of Python's `_check_tensors` so the first error named is the
/// same (layer by layer, so a hostile block_count costs nothing before its first missing tensor);
/// then any tensor the forward pass would ignore is refused.
fn check_tensors(g: &Gguf, c: &Cfg) -> Result<(), MetaError> {
    let mut expected: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut chk = |name: &str, shape: &[i128]| -> Result<(), MetaError> {
        let t = match g.tensor(name) {
            Some(t) => t,
            None => return Err(config_error(format!("tensor {} is missing", repr_str(name)))),
        };
        let got: Vec<i128> = t.shape().iter().map(|&v| v as i128).collect();
        if got != shape {
            return Err(config_error(format!(
                "tensor {} has shape {}, expected {}",
                repr_str(name),
                py_tuple(&got),
                py_tuple(shape)
            )));
        }
        if !type_supported(t.ggml_type) {
            let type_name = crate::gguf::ggml_type_info(t.ggml_type).map_or("?", |i| i.0);
            return Err(MetaError::new(
                ERR_UNSUPPORTED,
                format!("tensor {}: ggml type {} is not supported", repr_str(name), type_name),
            ));
        }
        expected.insert(name.to_string());
        Ok(())
    };
    chk("token_embd.weight", &[c.vocab_size, c.dim])?;
    chk("output_norm.weight", &[c.dim])?;
    if !c.tied_output {
        chk("output.weight", &[c.vocab_size, c.dim])?;
    }
    let half = c.rope_dim / 2;
    if c.rope_factors == ROPE_FACTORS_FREQS {
        chk("rope_freqs.weight", &[half])?;
    } else if c.rope_factors == ROPE_FACTORS_LONG_SHORT {
        chk("rope_factors_long.weight", &[half])?;
        chk("rope_factors_short.weight", &[half])?;
    }
    let mut il: i128 = 0;
    while il < c.n_layers {
        for (name, shape) in layer_tensors(c, il) {
            chk(&name, &shape)?;
        }
        il += 1;
    }
    let mut extra: Vec<&str> = g
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !expected.contains(*n))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        let more = if extra.len() > 1 {
            format!(" (and {} more)", extra.len() - 1)
        } else {
            String::new()
        };
        return Err(MetaError::new(
            ERR_UNSUPPORTED,
            format!(
                "tensor {}{} is not used by realm's {} forward pass; running the model without it would be wrong",
                repr_str(extra[0]),
                more,
                c.arch
            ),
        ));
    }
    Ok(())
}

fn py_tuple(v: &[i128]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

fn u32_word(v: i128, field: &str) -> Result<u32, MetaError> {
    if v < 0 || v > u32::MAX as i128 {
        return Err(MetaError::new(
            ERR_INTERNAL,
            format!(
                "config field {} = {} does not fit the ABI's u32 (the Python host fails too)",
                field, v
            ),
        ));
    }
    Ok(v as u32)
}

fn f32_word(v: f64, field: &str) -> Result<u32, MetaError> {
    let f = v as f32;
    if f.is_infinite() && v.is_finite() {
        return Err(MetaError::new(
            ERR_INTERNAL,
            format!(
                "config field {} = {} does not fit the ABI's f32 (the Python host fails too)",
                field,
                repr_float(v)
            ),
        ));
    }
    Ok(f.to_bits())
}

/// The 128-byte `ModelConfigABI` of the file, or the error the Python host gives.
pub fn model_config(g: &Gguf) -> Result<[u8; CONFIG_BYTES], MetaError> {
    let c = derive(g)?;
    let mut words = [0u32; CONFIG_BYTES / 4];
    words[w::ABI_VERSION] = ABI_VERSION;
    words[w::DIM] = u32_word(c.dim, "dim")?;
    words[w::HIDDEN_DIM] = u32_word(c.hidden_dim, "hidden_dim")?;
    words[w::N_LAYERS] = u32_word(c.n_layers, "n_layers")?;
    words[w::N_HEADS] = u32_word(c.n_heads, "n_heads")?;
    words[w::N_KV_HEADS] = u32_word(c.n_kv_heads, "n_kv_heads")?;
    words[w::HEAD_DIM] = u32_word(c.head_dim, "head_dim")?;
    words[w::VOCAB_SIZE] = u32_word(c.vocab_size, "vocab_size")?;
    words[w::CONTEXT_LENGTH] = u32_word(c.context_length, "context_length")?;
    words[w::ROPE_THETA] = f32_word(c.rope_theta, "rope_theta")?;
    words[w::ROPE_THETA_LOCAL] = f32_word(c.rope_theta_local, "rope_theta_local")?;
    words[w::ROPE_FREQ_SCALE] = f32_word(c.rope_freq_scale, "rope_freq_scale")?;
    words[w::ROPE_DIM] = u32_word(c.rope_dim, "rope_dim")?;
    words[w::ROPE_STYLE] = c.rope_style;
    words[w::NORM_EPS] = f32_word(c.norm_eps, "norm_eps")?;
    words[w::EMBED_SCALE] = f32_word(c.embed_scale, "embed_scale")?;
    words[w::ATTN_SCALE] = f32_word(c.attn_scale, "attn_scale")?;
    words[w::ACTIVATION] = c.activation;
    words[w::SLIDING_WINDOW] = u32_word(c.sliding_window, "sliding_window")?;
    words[w::SLIDING_WINDOW_PATTERN] = u32_word(c.sliding_window_pattern, "sliding_window_pattern")?;
    words[w::FLAGS] = (if c.qk_norm { FLAG_QK_NORM } else { 0 })
        | (if c.post_norms { FLAG_POST_NORMS } else { 0 })
        | (if c.tied_output { FLAG_TIED_OUTPUT } else { 0 })
        | (if c.qkv_bias { FLAG_QKV_BIAS } else { 0 })
        | (if c.attn_output_bias { FLAG_ATTN_OUTPUT_BIAS } else { 0 })
        | (if c.fused_qkv { FLAG_FUSED_QKV } else { 0 })
        | (if c.fused_gate_up { FLAG_FUSED_GATE_UP } else { 0 });
    words[w::FINAL_LOGIT_SOFTCAP] = f32_word(c.final_logit_softcap, "final_logit_softcap")?;
    words[w::ROPE_FACTORS] = c.rope_factors;
    words[w::ROPE_ORIG_CTX] = u32_word(c.rope_orig_ctx, "rope_orig_ctx")?;
    words[w::ROPE_ATTN_FACTOR] = f32_word(c.rope_attn_factor, "rope_attn_factor")?;
    let mut out = [0u8; CONFIG_BYTES];
    for (i, v) in words.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}
