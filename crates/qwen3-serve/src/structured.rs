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

/// The compiler for `loaded`'s tokenizer, or None (with a warning) when llguidance cannot
/// read it: structured-output requests are then refused with a 400.
pub fn compiler(loaded: &Loaded, limits: CompilerLimits) -> Option<Arc<Compiler>> {
    let started = std::time::Instant::now();
    match qwen3_guided::compiler_for(
        &loaded.dir.join("tokenizer.json"),
        loaded.tokenizer.clone(),
        loaded.vocab_size,
        &loaded.engine_config.eos_token_ids,
        limits,
    ) {
        Ok(c) => {
            info!(
                "structured outputs: llguidance over {} tokens, ready in {:.2} s",
                loaded.vocab_size,
                started.elapsed().as_secs_f64()
            );
            Some(Arc::new(c))
        }
        Err(e) => {
            warn!("structured outputs are off: {e}");
            None
        }
    }
}
