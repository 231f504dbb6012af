//! Structured outputs at start-up: vLLM's `--structured-outputs-config` and
//! `--guided-decoding-backend` checked, and the one constraint compiler (llguidance, vLLM's
//! `guidance` backend) built for the model's tokenizer, shared by the API and the engine.

use std::sync::Arc;

use anyhow::bail;
use qwen3_guided::{Compiler, CompilerLimits};
use tracing::{info, warn};

use crate::runtime::Loaded;

/// vLLM's backend names. `auto` picks; the others are vLLM's other engines, whose
/// constraints llguidance enforces the same way (a warning says so).
const BACKENDS: &[&str] = &[
    "auto",
    "guidance",
    "xgrammar",
    "outlines",
    "lm-format-enforcer",
];

/// Checks the structured-output flags as vLLM would (unknown backend or keys: an error)
/// and returns the compiler's settings from them.
pub fn check_flags(config: Option<&str>, backend: Option<&str>) -> anyhow::Result<CompilerLimits> {
    let mut limits = CompilerLimits::default();
    let mut named = backend.map(str::to_string);
    if let Some(text) = config {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("--structured-outputs-config is not JSON: {e}"))?;
        let Some(obj) = v.as_object() else {
            bail!("--structured-outputs-config must be a JSON object");
        };
        for (k, v) in obj {
            match k.as_str() {
                "backend" => named = v.as_str().map(str::to_string),
                // Only an explicit false lets JSON carry any whitespace (vLLM's default).
                "disable_any_whitespace" => limits.any_whitespace = v == &serde_json::json!(false),
                // Options of vLLM's other backends; llguidance has no switch for them.
                "disable_fallback"
                | "disable_additional_properties"
                | "reasoning_parser"
                | "enable_in_reasoning" => {}
                other => bail!("--structured-outputs-config: unknown key {other:?}"),
            }
        }
    }
    if let Some(b) = named.as_deref() {
        if !BACKENDS.contains(&b) {
            bail!(
                "unknown structured-output backend {b:?}; vLLM's are {}",
                BACKENDS.join(", ")
            );
        }
        if b != "auto" && b != "guidance" {
            warn!("structured-output backend {b:?}: this server enforces constraints with llguidance (vLLM's \"guidance\")");
        }
    }
    Ok(limits)
}

/// The compiler for `loaded`'s tokenizer. Its token table (~0.65 s for Qwen3's 151,936
/// tokens in a debug build) is built on a thread of its own so readiness does not wait for
/// it; the first constrained request does. If llguidance cannot read the tokenizer, a
/// warning says so and constrained requests are refused with a 400 naming the field.
pub fn compiler(loaded: &Loaded, limits: CompilerLimits) -> Arc<Compiler> {
    let vocab = loaded.vocab_size;
    Arc::new(qwen3_guided::compiler_in_background(
        loaded.dir.join("tokenizer.json"),
        loaded.tokenizer.clone(),
        vocab,
        loaded.engine_config.eos_token_ids.clone(),
        limits,
        move |built, took| {
            match built {
            Ok(()) => info!(
                "structured outputs: llguidance over {vocab} tokens, ready in {:.2} s (built in the background)",
                took.as_secs_f64()
            ),
            Err(e) => warn!("structured outputs are off: {e}"),
        }
        },
    ))
}
