//! Ascend's msModelSlim W8A8 checkpoints: the description file, the flag, and each quantized
//! linear read (and sliced for tensor parallelism) into the backend's [`W8A8Host`] form.
//!
//! Format followed (stated here, checked by the fixtures of `tests/fixtures/make_w8a8_fixtures.py`):
//! msModelSlim's "quantized weight format" document (msmodelslim量化权重格式, W8A8 section) as
//! vllm-ascend's `--quantization ascend` reads it (main branch, 2026-12:
//! `vllm_ascend/quantization/modelslim_config.py`, `methods/w8a8_static.py`,
//! `methods/w8a8_dynamic.py`, `quant_utils.detect_quantization_method`):
//!
//! - The marker is `quant_model_description.json` beside the weights (vllm-ascend detects the
//!   format by that file alone; MindIE's `"quantize"` field in config.json is optional). It maps
//!   each tensor name to its scheme, `model_quant_type` to the model's.
//! - Schemes: `FLOAT` (kept as stored), `W8A8` (static: per-tensor activation scale/offset),
//!   `W8A8_DYNAMIC` (per-token activation scale). MoE experts: `W8A8_DYNAMIC` only, as in
//!   vllm-ascend. Anything else (W4A8, W8A16, W4A16, sparse W8A8S/W8A8SC, mixed W8A8_MIX,
//!   MX formats), KV-cache int8 (`kv_cache_type`) and attention quantization (`fa_quant_type`)
//!   are refused by name.
//! - A quantized linear `L` `[n, k]`: `L.weight` I8 `[n, k]`; `L.weight_scale` `[n, 1]` (or
//!   `[n]`) float; `L.weight_offset` likewise, all zero (the NPU's quant matmul takes no weight
//!   offset; vllm-ascend ignores it, so a non-zero one is refused rather than silently
//!   dropped). Static adds `L.input_scale`, `L.input_offset` `[1]`; `L.deq_scale` `[n]` F32 (BF16
//!   models) or I64 holding the F32's bits (F16 models); `L.quant_bias` I32 `[n]`.
//!   `y = (x_q @ W^T + quant_bias) · deq_scale`.
//! - Tensor parallelism splits whole output channels (column parallel: scales and biases
//!   sliced with the rows) or the inputs (row parallel: every rank keeps all scales, and only
//!   the rank holding input 0 adds `quant_bias`, which is per output and must count once, as
//!   vllm-ascend's `tp_rank == 0`).

use std::collections::BTreeMap;
use std::path::Path;

use qwen3_backend::{ActQuant, W8A8Host};
use serde_json::Value;

use crate::error::ModelError;
use crate::quant_unpack::Window;
use crate::weights::{DType, WeightStore};

/// The description file msModelSlim writes beside the weights.
pub const DESCRIPTION_FILE: &str = "quant_model_description.json";
/// `--quantization` for these checkpoints, as vllm-ascend spells it.
pub const FLAG: &str = "ascend";

/// A tensor's scheme in the description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Float,
    /// Static: per-tensor activation scale and offset.
    W8A8,
    /// Per-token dynamic activation scale.
    W8A8Dynamic,
}

impl Scheme {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "FLOAT" => Some(Scheme::Float),
            "W8A8" => Some(Scheme::W8A8),
            "W8A8_DYNAMIC" => Some(Scheme::W8A8Dynamic),
            _ => None,
        }
    }
}

/// A parsed `quant_model_description.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSlim {
    pub model_quant_type: String,
    tensors: BTreeMap<String, Scheme>,
}

fn invalid(msg: String) -> ModelError {
    ModelError::Invalid(msg)
}

const SUPPORTED: &str = "supported: W8A8, W8A8_DYNAMIC and FLOAT";

impl ModelSlim {
    /// The description in `dir`, if there is one.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, ModelError> {
        let path = dir.join(DESCRIPTION_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("{} is not valid JSON: {e}", path.display())))?;
        Self::from_json(&v)
            .map(Some)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// Parses a description object; refuses what is not W8A8 by name.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| "the description must be a JSON object".to_string())?;
        let mut tensors = BTreeMap::new();
        let mut model_quant_type = None;
        for (key, val) in obj {
            match key.as_str() {
                "model_quant_type" => {
                    let t = val.as_str().unwrap_or_default();
                    if Scheme::parse(t).is_none() {
                        return Err(format!(
                            "model_quant_type {val} is not supported ({SUPPORTED})"
                        ));
                    }
                    model_quant_type = Some(t.to_string());
                }
                "kv_cache_type" | "fa_quant_type" | "reduce_quant_type" => {
                    if !(val.is_null() || val.as_str() == Some("FLOAT")) {
                        let what = match key.as_str() {
                            "kv_cache_type" => "KV-cache quantization",
                            "fa_quant_type" => "attention (FA) quantization",
                            _ => "communication quantization",
                        };
                        return Err(format!("{what} ({key} {val}) is not supported"));
                    }
                }
                // The format's version and other metadata carry no tensor.
                _ if !key.contains('.') => {}
                _ => {
                    let s = val.as_str().unwrap_or_default();
                    let scheme = Scheme::parse(s).ok_or_else(|| {
                        format!("tensor `{key}` is quantized as {val}, which is not supported ({SUPPORTED})")
                    })?;
                    if key.contains(".module.") {
                        return Err(format!(
                            "tensor `{key}` is an anti-outlier norm (msModelSlim's \
                             norm.module.weight/bias), which is not supported"
                        ));
                    }
                    tensors.insert(key.clone(), scheme);
                }
            }
        }
        let model_quant_type =
            model_quant_type.ok_or_else(|| "model_quant_type is missing".to_string())?;
        Ok(Self {
            model_quant_type,
            tensors,
        })
    }

    /// The scheme of linear `prefix` (its `prefix.weight` entry).
    pub fn scheme(&self, prefix: &str) -> Result<Scheme, ModelError> {
        let key = format!("{prefix}.weight");
        self.tensors.get(&key).copied().ok_or_else(|| {
            invalid(format!(
                "{DESCRIPTION_FILE} has no entry for `{key}`; it must name every weight's scheme"
            ))
        })
    }

    /// Checks `--quantization` against the checkpoint: `ascend` needs a description, and a
    /// description needs `ascend` or no flag.
    pub fn check_flag(model: Option<&Self>, flag: Option<&str>) -> Result<(), ModelError> {
        match (model, flag) {
            (Some(_), Some(f)) if !f.eq_ignore_ascii_case(FLAG) => Err(invalid(format!(
                "--quantization {f} was given, but the model is an Ascend msModelSlim W8A8 \
                 checkpoint ({DESCRIPTION_FILE}); use --quantization {FLAG} or no flag"
            ))),
            (None, Some(f)) if f.eq_ignore_ascii_case(FLAG) => Err(invalid(format!(
                "--quantization {FLAG} was given, but the model directory has no \
                 {DESCRIPTION_FILE}: it is not an msModelSlim quantized model"
            ))),
            _ => Ok(()),
        }
    }
}

/// Owned data behind a [`W8A8Host`]: one matrix or a stack of `count`.
#[derive(Clone, Debug, PartialEq)]
pub struct W8A8Owned {
    pub count: usize,
    pub out: usize,
    pub inp: usize,
    pub weight: Vec<i8>,
    pub act: ActQuant,
    pub scale: Vec<f32>,
    pub bias: Option<Vec<i32>>,
}

impl W8A8Owned {
    pub fn host(&self) -> W8A8Host<'_> {
        W8A8Host {
            count: self.count,
            out_features: self.out,
            in_features: self.inp,
            weight: &self.weight,
            act: self.act,
            scale: &self.scale,
            bias: self.bias.as_deref(),
        }
    }

    /// Experts of one projection, stacked (all dynamic, of one shape).
    pub fn stack(parts: Vec<W8A8Owned>) -> Result<Self, ModelError> {
        let first = parts
            .first()
            .ok_or_else(|| invalid("no experts to stack".into()))?;
        let (out, inp, act) = (first.out, first.inp, first.act);
        if parts
            .iter()
            .any(|p| (p.out, p.inp, p.act, p.bias.is_some()) != (out, inp, act, false))
        {
            return Err(invalid(
                "W8A8 experts of one layer differ in shape or scheme".into(),
            ));
        }
        let count = parts.len();
        let mut s = Self {
            count,
            out,
            inp,
            weight: Vec::with_capacity(count * out * inp),
            act,
            scale: Vec::with_capacity(count * out),
            bias: None,
        };
        for p in parts {
            s.weight.extend(p.weight);
            s.scale.extend(p.scale);
        }
        Ok(s)
    }
}

/// Rows `(start, len)` of a per-output tensor `[out]` or `[out, 1]`, as f32 (float dtypes,
/// or I64 holding F32 bits: msModelSlim's `deq_scale` of F16 models).
fn per_output(
    store: &WeightStore,
    name: &str,
    out: usize,
    (start, len): (usize, usize),
) -> Result<Vec<f32>, ModelError> {
    let info = store.info(name)?;
    if info.shape != [out] && info.shape != [out, 1] {
        return Err(invalid(format!(
            "`{name}` has shape {:?}; W8A8 scales are per output channel ([{out}] or [{out}, 1]), \
             so per-group scales are not W8A8",
            info.shape
        )));
    }
    match info.dtype {
        DType::I64 => {
            let (_, bytes) = store.load_raw_slice(name, &info.shape, 0, start, len)?;
            Ok(bytes
                .chunks_exact(8)
                .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect())
        }
        _ => Ok(store.load_f32_slice(name, &info.shape, 0, start, len)?),
    }
}

/// A one-element tensor as f32 (float, or an int8 offset as vllm-ascend declares it).
fn scalar(store: &WeightStore, name: &str) -> Result<f32, ModelError> {
    let info = store.info(name)?;
    if info.shape.iter().product::<usize>() != 1 {
        return Err(invalid(format!(
            "`{name}` has shape {:?}; static W8A8 takes one activation scale and offset per \
             tensor ([1])",
            info.shape
        )));
    }
    let (dtype, b) = store.load_raw(name, &info.shape)?;
    Ok(match dtype {
        DType::I8 => b[0] as i8 as f32,
        DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        _ => store.load_f32(name, &info.shape)?[0],
    })
}

/// Reads this rank's `window` of W8A8 linear `prefix` (logical shape `[out, inp]`).
pub fn load_w8a8(
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    scheme: Scheme,
    w: Window,
) -> Result<W8A8Owned, ModelError> {
    let name = format!("{prefix}.weight");
    let (dtype, bytes) = if w.inp == (0, inp) {
        store.load_raw_slice(&name, &[out, inp], 0, w.out.0, w.out.1)?
    } else {
        store.load_raw_slice(&name, &[out, inp], 1, w.inp.0, w.inp.1)?
    };
    if dtype != DType::I8 {
        return Err(invalid(format!(
            "`{name}` has dtype {dtype}, but {DESCRIPTION_FILE} says {scheme:?}: W8A8 weights \
             are I8"
        )));
    }
    let weight: Vec<i8> = bytes.into_iter().map(|b| b as i8).collect();
    let offset_name = format!("{prefix}.weight_offset");
    if store.contains(&offset_name) {
        let off = per_output(store, &offset_name, out, w.out)?;
        if off.iter().any(|&o| o != 0.0) {
            return Err(invalid(format!(
                "`{offset_name}` is not zero: asymmetric W8A8 weights are not supported (the \
                 NPU's quant matmul takes no weight offset)"
            )));
        }
    }
    let (act, scale, bias) = match scheme {
        Scheme::W8A8Dynamic => (
            ActQuant::Dynamic,
            per_output(store, &format!("{prefix}.weight_scale"), out, w.out)?,
            None,
        ),
        Scheme::W8A8 => {
            let act = ActQuant::Static {
                scale: scalar(store, &format!("{prefix}.input_scale"))?,
                offset: scalar(store, &format!("{prefix}.input_offset"))?,
            };
            let deq = per_output(store, &format!("{prefix}.deq_scale"), out, w.out)?;
            let bias_name = format!("{prefix}.quant_bias");
            let bias = if w.inp.0 == 0 {
                let (dt, b) = store.load_raw_slice(&bias_name, &[out], 0, w.out.0, w.out.1)?;
                if dt != DType::I32 {
                    return Err(invalid(format!(
                        "`{bias_name}` has dtype {dt}; msModelSlim writes it as I32"
                    )));
                }
                Some(
                    b.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            } else {
                // Another rank of a row-parallel layer adds it; still check it is there.
                store.info(&bias_name)?;
                None
            };
            (act, deq, bias)
        }
        Scheme::Float => {
            return Err(invalid(format!(
                "`{prefix}` is FLOAT; it is not loaded as W8A8"
            )))
        }
    };
    let owned = W8A8Owned {
        count: 1,
        out: w.out.1,
        inp: w.inp.1,
        weight,
        act,
        scale,
        bias,
    };
    owned
        .host()
        .validate()
        .map_err(|e| invalid(format!("W8A8 linear `{prefix}`: {e}")))?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn descriptions_parse_and_other_schemes_are_refused_by_name() {
        let d = ModelSlim::from_json(&json!({
            "model_quant_type": "W8A8_DYNAMIC", "version": "1.0.0",
            "model.layers.0.self_attn.q_proj.weight": "W8A8",
            "model.layers.0.mlp.down_proj.weight": "FLOAT",
            "model.layers.0.mlp.experts.3.up_proj.weight": "W8A8_DYNAMIC",
            "kv_cache_type": null
        }))
        .expect("parses");
        assert_eq!(d.model_quant_type, "W8A8_DYNAMIC");
        assert_eq!(
            d.scheme("model.layers.0.self_attn.q_proj").ok(),
            Some(Scheme::W8A8)
        );
        assert_eq!(
            d.scheme("model.layers.0.mlp.down_proj").ok(),
            Some(Scheme::Float)
        );
        let e = d
            .scheme("model.layers.0.self_attn.k_proj")
            .expect_err("absent");
        assert!(
            e.to_string()
                .contains("`model.layers.0.self_attn.k_proj.weight`"),
            "{e}"
        );
        for (desc, needle) in [
            (
                json!({"model_quant_type": "W8A8", "model.layers.0.mlp.experts.0.up_proj.weight": "W4A8_DYNAMIC"}),
                "`model.layers.0.mlp.experts.0.up_proj.weight` is quantized as \"W4A8_DYNAMIC\"",
            ),
            (
                json!({"model_quant_type": "W8A8S"}),
                "model_quant_type \"W8A8S\" is not supported",
            ),
            (
                json!({"model_quant_type": "W8A8", "kv_cache_type": "C8"}),
                "KV-cache quantization (kv_cache_type \"C8\")",
            ),
            (
                json!({"model_quant_type": "W8A8", "fa_quant_type": "FAQuant"}),
                "attention (FA) quantization",
            ),
            (
                json!({"model_quant_type": "W8A8", "model.layers.0.input_layernorm.module.weight": "W8A8"}),
                "`model.layers.0.input_layernorm.module.weight` is an anti-outlier norm",
            ),
            (json!({"q.weight": "W8A8"}), "model_quant_type is missing"),
        ] {
            let e = ModelSlim::from_json(&desc).expect_err("refused");
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn the_flag_must_agree() {
        let d = ModelSlim::from_json(&json!({"model_quant_type": "W8A8"})).ok();
        assert!(ModelSlim::check_flag(d.as_ref(), None).is_ok());
        assert!(ModelSlim::check_flag(d.as_ref(), Some("ascend")).is_ok());
        let e = ModelSlim::check_flag(d.as_ref(), Some("awq")).expect_err("mismatch");
        assert!(e.to_string().contains("use --quantization ascend"), "{e}");
        let e = ModelSlim::check_flag(None, Some("ascend")).expect_err("not modelslim");
        assert!(
            e.to_string().contains("no quant_model_description.json"),
            "{e}"
        );
        assert!(ModelSlim::check_flag(None, Some("awq")).is_ok());
    }
}
