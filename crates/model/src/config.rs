//! Qwen3 `config.json` parsing: the hub layout (`rope_theta`, `rope_scaling`, `torch_dtype`,
//! `num_experts`) and the transformers-5 layout (`rope_parameters`, `dtype`,
//! `num_local_experts`, `layer_types`), with defaults as transformers' Qwen3 configs have them.
//!
//! Parsing goes through `serde_json::Value` by hand rather than `#[derive(Deserialize)]` so that
//! every error names the field at fault and both layouts map to one struct.

use std::path::Path;

use serde_json::{Map, Value};

pub use crate::error::ConfigError;

type Obj = Map<String, Value>;

/// transformers' `Qwen3Config.max_window_layers` default, used when the field is absent.
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;
/// transformers' default `rope_theta` for Qwen3.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// transformers' Qwen3 default `max_position_embeddings`.
const DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 32_768;

const SUPPORTED_ARCHITECTURES: &str = "Qwen3ForCausalLM, Qwen3MoeForCausalLM";
const SUPPORTED_MODEL_TYPES: &str = "qwen3, qwen3_moe";
const SUPPORTED_ROPE_TYPES: &str = "default, linear, dynamic, yarn";

/// Dense (`Qwen3ForCausalLM`, model_type `qwen3`) or mixture of experts
/// (`Qwen3MoeForCausalLM`, model_type `qwen3_moe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Dense,
    Moe,
}

/// Rotary scaling as the config asks for it; `rope::rope_spec` turns it into frequencies.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// "bfloat16" etc. (hub: `torch_dtype`; transformers 5: `dtype`), without a "torch." prefix.
    pub torch_dtype: Option<String>,
    pub moe: Option<MoeConfig>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: bool,
    pub max_window_layers: Option<usize>,
    /// transformers-5 per-layer "full_attention" / "sliding_attention".
    pub layer_types: Option<Vec<String>>,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` may be one id or a list in config.json.
    pub eos_token_ids: Vec<u32>,
    /// Raw; parsed where quantized weights are loaded.
    pub quantization_config: Option<Value>,
    pub attention_bias: bool,
}

impl ModelConfig {
    pub fn from_json_str(s: &str) -> Result<Self, ConfigError> {
        Self::from_json_str_with_overrides(s, None)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Applies a JSON object of overrides on the raw config before parsing (vLLM's
    /// --hf-overrides; also used for --rope-scaling as {"rope_scaling": {...}}).
    ///
    /// Top-level keys are replaced whole, as vLLM does. On a transformers-5 config,
    /// `rope_scaling` and `rope_theta` overrides are written into `rope_parameters`, so they
    /// take effect whichever layout the file uses.
    pub fn from_json_str_with_overrides(
        s: &str,
        overrides: Option<&Value>,
    ) -> Result<Self, ConfigError> {
        let mut raw: Value = serde_json::from_str(s).map_err(ConfigError::Json)?;
        let obj = raw.as_object_mut().ok_or(ConfigError::NotAnObject {
            what: "model config",
        })?;
        if let Some(ov) = overrides {
            apply_overrides(obj, ov)?;
        }
        parse(obj)
    }

    /// As transformers: not in `mlp_only_layers`, `num_experts > 0` and
    /// `(layer + 1) % decoder_sparse_step == 0`.
    // `is_multiple_of` is newer (1.87) than the workspace's rust-version (1.85).
    #[allow(clippy::manual_is_multiple_of)]
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        let Some(moe) = &self.moe else {
            return false;
        };
        !moe.mlp_only_layers.contains(&layer)
            && moe.num_experts > 0
            && moe.decoder_sparse_step > 0
            && (layer + 1) % moe.decoder_sparse_step == 0
    }

    /// As transformers' Qwen3: only with `use_sliding_window` and a `sliding_window`; then
    /// `layer_types[layer]` when given, else `layer >= max_window_layers` (default 28).
    pub fn layer_uses_sliding_window(&self, layer: usize) -> bool {
        if !self.use_sliding_window || self.sliding_window.is_none() {
            return false;
        }
        match &self.layer_types {
            Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
            None => layer >= self.max_window_layers.unwrap_or(DEFAULT_MAX_WINDOW_LAYERS),
        }
    }

    /// Longest context the rope config supports (vLLM's rule, used to validate
    /// --max-model-len): `max_position_embeddings`; times `factor` for linear and dynamic;
    /// `factor * original_max_position_embeddings` for yarn.
    pub fn max_context_len(&self) -> usize {
        // Factors are validated finite and positive; `as` saturates.
        match &self.rope_scaling {
            RopeScaling::None => self.max_position_embeddings,
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. } => {
                (self.max_position_embeddings as f64 * factor) as usize
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => (*original_max_position_embeddings as f64 * factor) as usize,
        }
    }
}

fn apply_overrides(raw: &mut Obj, overrides: &Value) -> Result<(), ConfigError> {
    let ov = overrides.as_object().ok_or(ConfigError::NotAnObject {
        what: "config overrides",
    })?;
    for (key, value) in ov {
        let has_params = raw.get("rope_parameters").is_some_and(Value::is_object);
        match key.as_str() {
            // transformers 5 keeps theta and scaling together in rope_parameters; a
            // hub-style rope_scaling override replaces the scaling and keeps the theta.
            "rope_scaling" if has_params => {
                let theta = raw
                    .get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .cloned();
                let mut params = match value {
                    Value::Null => {
                        let mut m = Obj::new();
                        m.insert("rope_type".into(), Value::from("default"));
                        m
                    }
                    Value::Object(m) => m.clone(),
                    // Left where parsing reports its type.
                    other => {
                        raw.insert(key.clone(), other.clone());
                        continue;
                    }
                };
                if let Some(theta) = theta {
                    params.entry("rope_theta").or_insert(theta);
                }
                raw.insert("rope_parameters".into(), Value::Object(params));
                raw.remove("rope_scaling");
            }
            "rope_theta" if has_params => {
                if let Some(Value::Object(p)) = raw.get_mut("rope_parameters") {
                    p.insert("rope_theta".into(), value.clone());
                }
                raw.insert(key.clone(), value.clone());
            }
            _ => {
                raw.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

fn parse(obj: &Obj) -> Result<ModelConfig, ConfigError> {
    let f = Fields { obj, prefix: "" };
    let family = family(&f)?;

    let hidden_size = f.positive("hidden_size")?;
    let num_attention_heads = f.positive("num_attention_heads")?;
    let num_hidden_layers = f.positive("num_hidden_layers")?;
    let vocab_size = f.positive("vocab_size")?;
    let intermediate_size = f.usize_req("intermediate_size")?;
    // transformers: absent or null means as many KV heads as query heads.
    let num_key_value_heads = f
        .usize_opt("num_key_value_heads")?
        .unwrap_or(num_attention_heads);
    if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(invalid(
            "num_key_value_heads",
            format!(
                "{num_key_value_heads} must be positive and divide \
                 num_attention_heads ({num_attention_heads})"
            ),
        ));
    }
    let head_dim = match f.usize_opt("head_dim")? {
        Some(d) => d,
        None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
        None => {
            return Err(invalid(
                "head_dim",
                format!(
                    "absent, and hidden_size ({hidden_size}) is not a multiple of \
                     num_attention_heads ({num_attention_heads}) to derive it"
                ),
            ))
        }
    };
    // Rotary embedding rotates pairs of dimensions.
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(invalid(
            "head_dim",
            format!("{head_dim} must be positive and even"),
        ));
    }

    let rms_norm_eps = f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
    if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
        return Err(invalid(
            "rms_norm_eps",
            format!("{rms_norm_eps} must be finite and non-negative"),
        ));
    }
    let max_position_embeddings = f
        .usize_opt("max_position_embeddings")?
        .unwrap_or(DEFAULT_MAX_POSITION_EMBEDDINGS);
    if max_position_embeddings == 0 {
        return Err(invalid(
            "max_position_embeddings",
            "must be positive".into(),
        ));
    }
    let (rope_theta, rope_scaling) = rope(&f, max_position_embeddings)?;

    let torch_dtype = match f.str_opt("dtype")? {
        Some(s) => Some(s),
        None => f.str_opt("torch_dtype")?,
    }
    .map(|s| s.strip_prefix("torch.").unwrap_or(s).to_string());

    let moe = match family {
        Family::Dense => None,
        Family::Moe => Some(moe(&f)?),
    };

    let sliding_window = f.usize_opt("sliding_window")?;
    if sliding_window == Some(0) {
        return Err(invalid("sliding_window", "must be positive".into()));
    }
    let layer_types = f.string_list_opt("layer_types")?;
    if let Some(types) = &layer_types {
        if types.len() != num_hidden_layers {
            return Err(invalid(
                "layer_types",
                format!(
                    "has {} entries but num_hidden_layers is {num_hidden_layers}",
                    types.len()
                ),
            ));
        }
        if let Some(bad) = types
            .iter()
            .find(|t| *t != "full_attention" && *t != "sliding_attention")
        {
            return Err(invalid(
                "layer_types",
                format!("{bad:?} is not \"full_attention\" or \"sliding_attention\""),
            ));
        }
    }

    Ok(ModelConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        max_position_embeddings,
        tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
        rope_theta,
        rope_scaling,
        torch_dtype,
        moe,
        sliding_window,
        use_sliding_window: f.bool_opt("use_sliding_window")?.unwrap_or(false),
        max_window_layers: f.usize_opt("max_window_layers")?,
        layer_types,
        bos_token_id: f.u32_opt("bos_token_id")?,
        eos_token_ids: f.u32_or_list("eos_token_id")?,
        quantization_config: f.get("quantization_config").cloned(),
        attention_bias: f.bool_opt("attention_bias")?.unwrap_or(false),
    })
}

/// From `architectures` and `model_type`; either suffices, and they must agree.
fn family(f: &Fields) -> Result<Family, ConfigError> {
    let from_arch = match f.string_list_opt("architectures")? {
        None => None,
        Some(archs) if archs.is_empty() => None,
        Some(archs) => {
            let found = archs.iter().find_map(|a| match a.as_str() {
                "Qwen3ForCausalLM" => Some(Family::Dense),
                "Qwen3MoeForCausalLM" => Some(Family::Moe),
                _ => None,
            });
            match found {
                Some(fam) => Some(fam),
                None => {
                    return Err(ConfigError::Unsupported {
                        what: "model architecture",
                        name: archs.join(", "),
                        supported: SUPPORTED_ARCHITECTURES,
                    })
                }
            }
        }
    };
    let from_type = match f.str_opt("model_type")? {
        None => None,
        Some("qwen3") => Some(Family::Dense),
        Some("qwen3_moe") => Some(Family::Moe),
        Some(other) => {
            return Err(ConfigError::Unsupported {
                what: "model_type",
                name: other.to_string(),
                supported: SUPPORTED_MODEL_TYPES,
            })
        }
    };
    match (from_arch, from_type) {
        (Some(a), Some(t)) if a != t => Err(invalid(
            "model_type",
            format!("{t:?} model_type contradicts the {a:?} architecture"),
        )),
        (Some(fam), _) | (None, Some(fam)) => Ok(fam),
        (None, None) => Err(ConfigError::MissingField {
            field: "model_type".into(),
        }),
    }
}

fn moe(f: &Fields) -> Result<MoeConfig, ConfigError> {
    // Hub configs say num_experts; transformers 5 may write num_local_experts.
    let num_experts = match f.usize_opt("num_experts")? {
        Some(n) => n,
        None => f
            .usize_opt("num_local_experts")?
            .ok_or_else(|| ConfigError::MissingField {
                field: "num_experts".into(),
            })?,
    };
    let num_experts_per_tok = f.usize_req("num_experts_per_tok")?;
    if num_experts > 0 && !(1..=num_experts).contains(&num_experts_per_tok) {
        return Err(invalid(
            "num_experts_per_tok",
            format!("{num_experts_per_tok} must be between 1 and num_experts ({num_experts})"),
        ));
    }
    let decoder_sparse_step = f.usize_opt("decoder_sparse_step")?.unwrap_or(1);
    if decoder_sparse_step == 0 {
        return Err(invalid("decoder_sparse_step", "must be at least 1".into()));
    }
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok,
        moe_intermediate_size: f.positive("moe_intermediate_size")?,
        norm_topk_prob: f.bool_opt("norm_topk_prob")?.unwrap_or(false),
        decoder_sparse_step,
        mlp_only_layers: f.usize_list_opt("mlp_only_layers")?.unwrap_or_default(),
    })
}

/// `(rope_theta, scaling)`. A non-null `rope_scaling` wins over `rope_parameters`; theta comes
/// from `rope_parameters`, then top-level `rope_theta`.
fn rope(f: &Fields, max_position_embeddings: usize) -> Result<(f64, RopeScaling), ConfigError> {
    let params = match f.get("rope_parameters") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => return Err(wrong_type("rope_parameters", "an object", other)),
    };
    let params_fields = params.map(|obj| Fields {
        obj,
        prefix: "rope_parameters.",
    });
    let params_theta = match &params_fields {
        Some(p) => p.f64_opt("rope_theta")?,
        None => None,
    };
    let theta = match params_theta {
        Some(t) => t,
        None => f.f64_opt("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA),
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(invalid(
            "rope_theta",
            format!("{theta} must be finite and positive"),
        ));
    }

    let (src, name) = match f.get("rope_scaling") {
        Some(Value::Object(m)) => (
            Fields {
                obj: m,
                prefix: "rope_scaling.",
            },
            "rope_scaling",
        ),
        Some(other) => return Err(wrong_type("rope_scaling", "an object or null", other)),
        None => match params_fields {
            Some(p) => (p, "rope_parameters"),
            None => return Ok((theta, RopeScaling::None)),
        },
    };
    let rope_type = match src.str_opt("rope_type")? {
        Some(t) => Some(t),
        None => src.str_opt("type")?,
    };
    let rope_type = match rope_type {
        Some(t) => t,
        // transformers 5 standardizes a missing type to default; an empty hub dict is as null.
        None if name == "rope_parameters" || src.obj.is_empty() => "default",
        None => {
            return Err(ConfigError::MissingField {
                field: "rope_scaling.rope_type".into(),
            })
        }
    };
    let factor = || -> Result<f64, ConfigError> {
        let v = src.f64_req("factor")?;
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(invalid(
                &src.name("factor"),
                format!("{v} must be finite and positive"),
            ))
        }
    };
    let original = || -> Result<usize, ConfigError> {
        match src.usize_opt("original_max_position_embeddings")? {
            Some(0) => Err(invalid(
                &src.name("original_max_position_embeddings"),
                "must be positive".into(),
            )),
            Some(n) => Ok(n),
            None => Ok(max_position_embeddings),
        }
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor()?,
            original_max_position_embeddings: original()?,
        },
        // Defaults as transformers' `_compute_yarn_parameters`.
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            original_max_position_embeddings: original()?,
            beta_fast: src.f64_opt("beta_fast")?.unwrap_or(32.0),
            beta_slow: src.f64_opt("beta_slow")?.unwrap_or(1.0),
            mscale: src.f64_opt("mscale")?,
            mscale_all_dim: src.f64_opt("mscale_all_dim")?,
            attention_factor: src.f64_opt("attention_factor")?,
            truncate: src.bool_opt("truncate")?.unwrap_or(true),
        },
        other => {
            return Err(ConfigError::Unsupported {
                what: "rope type",
                name: other.to_string(),
                supported: SUPPORTED_ROPE_TYPES,
            })
        }
    };
    Ok((theta, scaling))
}

fn invalid(field: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason,
    }
}

fn wrong_type(field: &str, expected: &'static str, found: &Value) -> ConfigError {
    ConfigError::WrongType {
        field: field.to_string(),
        expected,
        found: describe(found),
    }
}

/// A short rendering of a JSON value for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        Value::String(s) if s.chars().count() > 40 => {
            format!("{:?}...", s.chars().take(40).collect::<String>())
        }
        other => other.to_string(),
    }
}

/// Typed access to one JSON object; `prefix` makes nested field names ("rope_scaling.factor").
/// JSON null counts as absent, as `None` does in Python configs.
struct Fields<'a> {
    obj: &'a Obj,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingField {
            field: self.name(key),
        }
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.get(key)
            .map(|v| {
                as_usize(v).ok_or_else(|| wrong_type(&self.name(key), "a non-negative integer", v))
            })
            .transpose()
    }

    fn usize_req(&self, key: &str) -> Result<usize, ConfigError> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn positive(&self, key: &str) -> Result<usize, ConfigError> {
        match self.usize_req(key)? {
            0 => Err(invalid(&self.name(key), "must be positive".into())),
            n => Ok(n),
        }
    }

    fn u32_opt(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        self.get(key)
            .map(|v| as_u32(v).ok_or_else(|| wrong_type(&self.name(key), "a token id", v)))
            .transpose()
    }

    /// One id or a list of ids; absent means none.
    fn u32_or_list(&self, key: &str) -> Result<Vec<u32>, ConfigError> {
        let expected = "a token id or a list of token ids";
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| as_u32(v).ok_or_else(|| wrong_type(&self.name(key), expected, v)))
                .collect(),
            Some(v) => Ok(vec![
                as_u32(v).ok_or_else(|| wrong_type(&self.name(key), expected, v))?
            ]),
        }
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| wrong_type(&self.name(key), "a number", v))
            })
            .transpose()
    }

    fn f64_req(&self, key: &str) -> Result<f64, ConfigError> {
        self.f64_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| wrong_type(&self.name(key), "true or false", v))
            })
            .transpose()
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| wrong_type(&self.name(key), "a string", v))
            })
            .transpose()
    }

    fn usize_list_opt(&self, key: &str) -> Result<Option<Vec<usize>>, ConfigError> {
        let expected = "a list of non-negative integers";
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| as_usize(v).ok_or_else(|| wrong_type(&self.name(key), expected, v)))
                .collect::<Result<_, _>>()
                .map(Some),
            Some(v) => Err(wrong_type(&self.name(key), expected, v)),
        }
    }

    fn string_list_opt(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let expected = "a list of strings";
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| wrong_type(&self.name(key), expected, v))
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(v) => Err(wrong_type(&self.name(key), expected, v)),
        }
    }
}

/// Integers, and floats with no fractional part (Python sometimes writes `32768.0`).
fn as_usize(v: &Value) -> Option<usize> {
    if let Some(n) = v.as_u64() {
        return usize::try_from(n).ok();
    }
    let x = v.as_f64()?;
    if x.fract() == 0.0 && x >= 0.0 && x <= usize::MAX as f64 {
        Some(x as usize)
    } else {
        None
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    as_usize(v).and_then(|n| u32::try_from(n).ok())
}
