//! `qwen3-serve bench mask`: what a structured-output mask costs per token. Random walks
//! (seeded) through a nested JSON schema take any allowed token; each mask computation over
//! the model's whole vocabulary is timed, and the median, p99 and worst are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use qwen3_engine::batch::{mask_allows, ConstraintKind, StructuredSpec};
use qwen3_guided::CompilerLimits;
use serde_json::json;

use crate::cli::BenchMaskArgs;

/// Qwen3's end tokens; walks never take them (they would end the walk).
const EOS: [u32; 2] = [151_645, 151_643];

fn nested_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string", "maxLength": 24},
            "email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,8}\\.com$"},
            "roles": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}, "maxItems": 4},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "maxLength": 20},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "geo": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}, "required": ["lat", "lon"]}
                },
                "required": ["street", "zip", "geo"]
            },
            "orders": {"type": "array", "maxItems": 3, "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 8}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                "required": ["sku", "qty"]
            }}
        },
        "required": ["id", "name", "email", "roles", "address", "orders"]
    })
}

pub fn run(args: &BenchMaskArgs) -> anyhow::Result<()> {
    let dir = &args.model_dir;
    let config = std::fs::read_to_string(dir.join("config.json"))
        .with_context(|| format!("reading {}/config.json", dir.display()))?;
    let vocab = qwen3_model::config::ModelConfig::from_json_str(&config)?.vocab_size;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", tok_path.display()))?;
    let t0 = Instant::now();
    let compiler = qwen3_guided::compiler_for(
        &tok_path,
        Arc::new(tokenizer),
        vocab,
        &EOS,
        CompilerLimits::default(),
    )?;
    println!("token table: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let schema = match &args.json_schema {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => nested_schema().to_string(),
    };
    let spec = StructuredSpec {
        kind: ConstraintKind::JsonSchema(schema),
        after_token: None,
    };
    let t0 = Instant::now();
    compiler.compile(&spec.kind)?;
    println!("schema compile: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..args.walks {
        let mut m = compiler.matcher(&spec)?;
        for _ in 0..400 {
            let t = Instant::now();
            let Some(mask) = m.mask()? else { break };
            times.push(t.elapsed());
            let allowed: Vec<u32> = (0..vocab as u32)
                .filter(|&t| mask_allows(&mask, t) && !EOS.contains(&t))
                .collect();
            if allowed.is_empty() {
                break;
            }
            m.advance(allowed[(next() % allowed.len() as u64) as usize])?;
        }
    }
    anyhow::ensure!(!times.is_empty(), "no mask was computed");
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "mask per token over {vocab} tokens, {} masks in {} walks: median {:.0} us, p99 {:.0} us, max {:.0} us",
        times.len(),
        args.walks,
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
