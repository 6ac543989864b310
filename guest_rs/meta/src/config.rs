//! `ModelConfigABI` from GGUF metadata: the twin of `realm/config.py` (`ModelConfig.from_gguf`)
//! packed as `realm/host/abi.py`'s `pack_model_config`, byte for byte; the same checks in the same
//! order, `ERR_BAD_GGUF` where Python raises ConfigError, `ERR_UNSUPPORTED` for UnsupportedError,
//! `ERR_INTERNAL` where the Python host's packing itself fails (a value outside u32 or f32).

use crate::abi::{config_word as w, *};
use crate::gguf::{Gguf, Value};
use crate::pyfmt::{repr_float, repr_str};
use crate::MetaError;

const SUPPORTED_ARCHS: [&str; 2] = ["llama", "gemma3"];

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
        Value::Array(_) => {
            return Err(MetaError::new(
                ERR_INTERNAL,
                "rope.scaling.type is an array (the Python host fails on it)".into(),
            ))
        }
    })
}

enum Kind {
    Int,
    Float,
}

/// A value of `{arch}.{key}`: Ok(None) when absent (and not required without default).
struct Md<'a> {
    g: &'a Gguf,
    arch: &'a str,
}

impl<'a> Md<'a> {
    /// Python's `get(key, kind, default, required)`; ints as i128, floats as f64.
    fn get(&self, key: &str, kind: Kind, default: Option<f64>, required: bool) -> Result<Option<f64>, MetaError> {
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
        let (value, kind_name) = match (&kind, v) {
            (Kind::Float, Value::Int(i)) => (*i as f64, "float"),
            (Kind::Float, Value::Float(f)) => (*f, "float"),
            (Kind::Int, Value::Int(i)) => {
                if *i < 0 {
                    return Err(config_error(format!(
                        "metadata key {} has invalid value {}",
                        repr_str(&full),
                        i
                    )));
                }
                (*i as f64, "int")
            }
            (k, v) => {
                let want = match k {
                    Kind::Int => "int",
                    Kind::Float => "float",
                };
                return Err(config_error(format!(
                    "metadata key {} has type {}, expected {}",
                    repr_str(&full),
                    v.py_type(),
                    want
                )));
            }
        };
        if kind_name == "float" && !value.is_finite() {
            return Err(config_error(format!(
                "metadata key {} has invalid value {}",
                repr_str(&full),
                repr_float(value)
            )));
        }
        Ok(Some(value))
    }

    /// An int key; exact (i128) rather than through f64.
    fn int(&self, key: &str, default: Option<i128>, required: bool) -> Result<Option<i128>, MetaError> {
        let full = format!("{}.{}", self.arch, key);
        match self.g.get(&full) {
            Some(Value::Int(i)) => {
                if *i < 0 {
                    return Err(config_error(format!(
                        "metadata key {} has invalid value {}",
                        repr_str(&full),
                        i
                    )));
                }
                Ok(Some(*i))
            }
            Some(_) => {
                self.get(key, Kind::Int, None, required)?;
                unreachable_internal()
            }
            None => {
                if required && default.is_none() {
                    return Err(config_error(format!("missing metadata key {}", repr_str(&full))));
                }
                Ok(default)
            }
        }
    }

    fn float(&self, key: &str, default: Option<f64>, required: bool) -> Result<Option<f64>, MetaError> {
        self.get(key, Kind::Float, default, required)
    }
}

fn unreachable_internal<T>() -> Result<T, MetaError> {
    Err(MetaError::new(ERR_INTERNAL, "config: unexpected value kind".into()))
}

/// The fields of `realm.config.ModelConfig`, as Python numbers.
struct Cfg {
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
    rope_style: i128,
    norm_eps: f64,
    embed_scale: f64,
    attn_scale: f64,
    activation: i128,
    sliding_window: i128,
    sliding_window_pattern: i128,
    qk_norm: bool,
    post_norms: bool,
    tied_output: bool,
    final_logit_softcap: f64,
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
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(MetaError::new(
            ERR_UNSUPPORTED,
            format!(
                "architecture {} is not supported (supported: {})",
                repr_str(arch),
                SUPPORTED_ARCHS.join(", ")
            ),
        ));
    }
    let md = Md { g, arch };
    let req = |k: &str| -> Result<i128, MetaError> { Ok(md.int(k, None, true)?.unwrap()) };
    let dim = req("embedding_length")?;
    let n_layers = req("block_count")?;
    let n_heads = req("attention.head_count")?;
    if dim <= 0 || n_layers <= 0 || n_heads <= 0 {
        return Err(config_error(format!(
            "{}: embedding_length, block_count and attention.head_count must be positive",
            arch
        )));
    }
    let n_kv_heads = md.int("attention.head_count_kv", Some(n_heads), true)?.unwrap();
    let head_dim = md.int("attention.key_length", Some(dim / n_heads), true)?.unwrap();
    let value_length = md.int("attention.value_length", Some(head_dim), true)?.unwrap();
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
    let hidden_dim = req("feed_forward_length")?;
    let context_length = md.int("context_length", Some(2048), true)?.unwrap();
    let norm_eps = md.float("attention.layer_norm_rms_epsilon", None, true)?.unwrap();
    let rope_theta = md.float("rope.freq_base", Some(10000.0), true)?.unwrap();
    let rope_dim = md.int("rope.dimension_count", Some(head_dim), true)?.unwrap();
    if rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
        return Err(config_error(format!(
            "{}.rope.dimension_count = {} must be even and at most {}",
            arch, rope_dim, head_dim
        )));
    }
    let scaling_key = format!("{}.rope.scaling.type", arch);
    let mut rope_freq_scale = 1.0f64;
    match g.get(&scaling_key) {
        None => {}
        Some(Value::Str(s)) if s == "none" => {}
        Some(Value::Str(s)) if s == "linear" => {
            let factor = md.float("rope.scaling.factor", None, true)?.unwrap();
            if factor <= 0.0 {
                return Err(config_error(format!(
                    "{}.rope.scaling.factor = {} must be positive",
                    arch,
                    repr_float(factor)
                )));
            }
            rope_freq_scale = 1.0 / factor;
        }
        Some(v) => {
            return Err(MetaError::new(
                ERR_UNSUPPORTED,
                format!("{} = {} is not supported", scaling_key, repr_value(v)?),
            ))
        }
    }

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
    let tied_output = g.tensor("output.weight").is_none();
    let final_logit_softcap = md.float("final_logit_softcapping", Some(0.0), false)?.unwrap();

    let cfg = if arch == "gemma3" {
        let window = md.int("attention.sliding_window", Some(0), false)?.unwrap();
        Cfg {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rope_theta,
            rope_theta_local: 10000.0,
            rope_freq_scale,
            rope_dim,
            rope_style: ROPE_NEOX as i128,
            norm_eps,
            embed_scale: (dim as f64).sqrt(),
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            activation: ACT_GELU_TANH as i128,
            sliding_window: window,
            sliding_window_pattern: if window != 0 { 6 } else { 0 },
            qk_norm: true,
            post_norms: true,
            tied_output,
            final_logit_softcap,
        }
    } else {
        Cfg {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rope_theta,
            rope_theta_local: rope_theta,
            rope_freq_scale,
            rope_dim,
            rope_style: ROPE_NORM as i128,
            norm_eps,
            embed_scale: 1.0,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            activation: ACT_SILU as i128,
            sliding_window: 0,
            sliding_window_pattern: 0,
            qk_norm: false,
            post_norms: false,
            tied_output,
            final_logit_softcap,
        }
    };
    check_tensors(g, &cfg)?;
    Ok(cfg)
}

/// Every tensor the forward pass reads exists with the shape the config implies, checked in the
/// order of Python's `_check_tensors` dict so the first error named is the same (layer by layer, so
/// a hostile block_count costs nothing before its first missing tensor).
fn check_tensors(g: &Gguf, c: &Cfg) -> Result<(), MetaError> {
    let chk = |name: &str, shape: &[i128]| -> Result<(), MetaError> {
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
        Ok(())
    };
    chk("token_embd.weight", &[c.vocab_size, c.dim])?;
    chk("output_norm.weight", &[c.dim])?;
    if !c.tied_output {
        chk("output.weight", &[c.vocab_size, c.dim])?;
    }
    let q_dim = c.n_heads * c.head_dim;
    let kv_dim = c.n_kv_heads * c.head_dim;
    for il in 0..c.n_layers {
        let b = |n: &str| format!("blk.{}.{}", il, n);
        chk(&b("attn_norm.weight"), &[c.dim])?;
        chk(&b("attn_q.weight"), &[q_dim, c.dim])?;
        chk(&b("attn_k.weight"), &[kv_dim, c.dim])?;
        chk(&b("attn_v.weight"), &[kv_dim, c.dim])?;
        chk(&b("attn_output.weight"), &[c.dim, q_dim])?;
        chk(&b("ffn_norm.weight"), &[c.dim])?;
        chk(&b("ffn_gate.weight"), &[c.hidden_dim, c.dim])?;
        chk(&b("ffn_up.weight"), &[c.hidden_dim, c.dim])?;
        chk(&b("ffn_down.weight"), &[c.dim, c.hidden_dim])?;
        if c.qk_norm {
            chk(&b("attn_q_norm.weight"), &[c.head_dim])?;
            chk(&b("attn_k_norm.weight"), &[c.head_dim])?;
        }
        if c.post_norms {
            chk(&b("post_attention_norm.weight"), &[c.dim])?;
            chk(&b("post_ffw_norm.weight"), &[c.dim])?;
        }
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
    words[w::ROPE_STYLE] = u32_word(c.rope_style, "rope_style")?;
    words[w::NORM_EPS] = f32_word(c.norm_eps, "norm_eps")?;
    words[w::EMBED_SCALE] = f32_word(c.embed_scale, "embed_scale")?;
    words[w::ATTN_SCALE] = f32_word(c.attn_scale, "attn_scale")?;
    words[w::ACTIVATION] = u32_word(c.activation, "activation")?;
    words[w::SLIDING_WINDOW] = u32_word(c.sliding_window, "sliding_window")?;
    words[w::SLIDING_WINDOW_PATTERN] = u32_word(c.sliding_window_pattern, "sliding_window_pattern")?;
    words[w::FLAGS] = (if c.qk_norm { FLAG_QK_NORM } else { 0 })
        | (if c.post_norms { FLAG_POST_NORMS } else { 0 })
        | (if c.tied_output { FLAG_TIED_OUTPUT } else { 0 });
    words[w::FINAL_LOGIT_SOFTCAP] = f32_word(c.final_logit_softcap, "final_logit_softcap")?;
    let mut out = [0u8; CONFIG_BYTES];
    for (i, v) in words.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}
