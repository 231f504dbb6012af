//! `quantization_config` of AWQ and GPTQ checkpoints: what the loader needs to unpack them, and
//! the checks `--quantization` must pass.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMethod {
    Awq,
    Gptq,
}

impl QuantMethod {
    pub fn name(self) -> &'static str {
        match self {
            QuantMethod::Awq => "awq",
            QuantMethod::Gptq => "gptq",
        }
    }
}

/// A weight-only quantization scheme as the checkpoint declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantConfig {
    pub method: QuantMethod,
    /// 4 (AWQ, GPTQ) or 8 (GPTQ).
    pub bits: u32,
    /// Input channels per scale/zero group; None for one group over all inputs (`-1`).
    pub group_size: Option<usize>,
    /// AWQ: asymmetric with zero points (`zero_point`); GPTQ: `!sym`.
    pub has_zero_points: bool,
    /// GPTQ act-order: inputs permuted by `g_idx` (`desc_act`).
    pub act_order: bool,
    /// GPTQ v1 checkpoints store zero points minus one (the historical off-by-one); v2 do not.
    pub zero_point_off_by_one: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("quantization_config has no quant_method")]
    NoMethod,
    #[error("quantization method {0:?} is not supported (supported: awq, gptq)")]
    UnsupportedMethod(String),
    #[error("{method} with {bits} bits is not supported (supported: awq 4; gptq 4 and 8)")]
    UnsupportedBits { method: &'static str, bits: u64 },
    #[error("quantization_config field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("AWQ version {0:?} is not supported (supported: gemm)")]
    UnsupportedAwqVersion(String),
    #[error("--quantization {flag} was given, but the model is quantized with {model}")]
    FlagMismatch { flag: String, model: &'static str },
    #[error("--quantization {0} was given, but the model's config.json has no quantization_config: it is not a {0} model")]
    NotQuantized(String),
}

fn get_bool(q: &Value, key: &str, default: bool) -> bool {
    q.get(key).and_then(Value::as_bool).unwrap_or(default)
}

impl QuantConfig {
    /// Parses a `quantization_config` object (None: the model is not quantized).
    pub fn from_json(q: Option<&Value>) -> Result<Option<Self>, QuantError> {
        let Some(q) = q else { return Ok(None) };
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .ok_or(QuantError::NoMethod)?
            .to_ascii_lowercase();
        let method = match method.as_str() {
            "awq" => QuantMethod::Awq,
            "gptq" => QuantMethod::Gptq,
            _ => return Err(QuantError::UnsupportedMethod(method)),
        };
        let bits = q
            .get("bits")
            .or_else(|| q.get("w_bit"))
            .and_then(Value::as_u64)
            .ok_or(QuantError::Invalid {
                field: "bits",
                reason: "missing or not an integer".into(),
            })?;
        match (method, bits) {
            (QuantMethod::Awq, 4) | (QuantMethod::Gptq, 4) | (QuantMethod::Gptq, 8) => {}
            _ => {
                return Err(QuantError::UnsupportedBits {
                    method: method.name(),
                    bits,
                })
            }
        }
        let group = q.get("group_size").or_else(|| q.get("q_group_size"));
        let group_size = match group.and_then(Value::as_i64) {
            Some(-1) => None,
            Some(g) if g > 0 => Some(g as usize),
            _ => {
                return Err(QuantError::Invalid {
                    field: "group_size",
                    reason: format!("expected a positive integer or -1, found {group:?}"),
                })
            }
        };
        if method == QuantMethod::Awq {
            if let Some(v) = q.get("version").and_then(Value::as_str) {
                if !v.eq_ignore_ascii_case("gemm") {
                    return Err(QuantError::UnsupportedAwqVersion(v.to_string()));
                }
            }
        }
        let (has_zero_points, act_order, off_by_one) = match method {
            QuantMethod::Awq => (get_bool(q, "zero_point", true), false, false),
            QuantMethod::Gptq => {
                let format = q
                    .get("checkpoint_format")
                    .and_then(Value::as_str)
                    .unwrap_or("gptq");
                (
                    !get_bool(q, "sym", true),
                    get_bool(q, "desc_act", false),
                    format != "gptq_v2",
                )
            }
        };
        Ok(Some(Self {
            method,
            bits: bits as u32,
            group_size,
            has_zero_points,
            act_order,
            zero_point_off_by_one: off_by_one,
        }))
    }

    /// Checks `--quantization` against what the checkpoint is.
    pub fn check_flag(model: Option<&Self>, flag: Option<&str>) -> Result<(), QuantError> {
        match (model, flag) {
            (_, None) => Ok(()),
            (None, Some(f)) => Err(QuantError::NotQuantized(f.to_string())),
            (Some(m), Some(f)) if !f.eq_ignore_ascii_case(m.method.name()) => {
                Err(QuantError::FlagMismatch {
                    flag: f.to_string(),
                    model: m.method.name(),
                })
            }
            (Some(_), Some(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<QuantConfig>, QuantError> {
        QuantConfig::from_json(Some(&v))
    }

    #[test]
    fn published_awq_and_gptq_configs() {
        // As Qwen3-*-AWQ and Qwen3-*-GPTQ-Int4/Int8 ship them.
        let awq = parse(
            json!({"bits": 4, "group_size": 128, "modules_to_not_convert": null,
            "quant_method": "awq", "version": "gemm", "zero_point": true}),
        )
        .ok()
        .flatten();
        assert_eq!(
            awq,
            Some(QuantConfig {
                method: QuantMethod::Awq,
                bits: 4,
                group_size: Some(128),
                has_zero_points: true,
                act_order: false,
                zero_point_off_by_one: false
            })
        );
        let gptq = parse(
            json!({"bits": 8, "group_size": -1, "desc_act": true, "sym": false,
            "quant_method": "gptq", "damp_percent": 0.01}),
        )
        .ok()
        .flatten();
        let g = gptq.expect("gptq parses");
        assert_eq!(
            (g.bits, g.group_size, g.act_order, g.has_zero_points),
            (8, None, true, true)
        );
        assert!(g.zero_point_off_by_one);
        let v2 = parse(
            json!({"bits": 4, "group_size": 32, "quant_method": "gptq", "checkpoint_format": "gptq_v2"}),
        );
        assert!(!v2.ok().flatten().expect("v2").zero_point_off_by_one);
    }

    #[test]
    fn unsupported_and_invalid_are_clear_errors() {
        let e = parse(json!({"bits": 3, "group_size": 128, "quant_method": "gptq"}))
            .expect_err("3 bits");
        assert_eq!(
            e.to_string(),
            "gptq with 3 bits is not supported (supported: awq 4; gptq 4 and 8)"
        );
        assert!(matches!(
            parse(json!({"bits": 8, "group_size": 128, "quant_method": "awq"})),
            Err(QuantError::UnsupportedBits { .. })
        ));
        assert!(matches!(
            parse(json!({"bits": 4, "quant_method": "fp8"})),
            Err(QuantError::UnsupportedMethod(_))
        ));
        assert!(matches!(
            parse(json!({"bits": 4, "group_size": 0, "quant_method": "awq"})),
            Err(QuantError::Invalid {
                field: "group_size",
                ..
            })
        ));
        assert!(matches!(
            parse(json!({"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemv"})),
            Err(QuantError::UnsupportedAwqVersion(_))
        ));
        assert_eq!(QuantConfig::from_json(None), Ok(None));
    }

    #[test]
    fn the_flag_must_agree() {
        let awq = parse(json!({"bits": 4, "group_size": 128, "quant_method": "awq"}))
            .ok()
            .flatten();
        assert!(QuantConfig::check_flag(awq.as_ref(), Some("awq")).is_ok());
        assert!(QuantConfig::check_flag(awq.as_ref(), None).is_ok());
        let e = QuantConfig::check_flag(awq.as_ref(), Some("gptq")).expect_err("mismatch");
        assert_eq!(
            e.to_string(),
            "--quantization gptq was given, but the model is quantized with awq"
        );
        assert!(matches!(
            QuantConfig::check_flag(None, Some("awq")),
            Err(QuantError::NotQuantized(_))
        ));
    }
}
