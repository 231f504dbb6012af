//! Mask computation per token over Qwen3's 151,936-token vocabulary for a nested JSON
//! schema: walks that take random allowed tokens (seeded) are timed mask by mask, and the
//! median and p99 reported. `cargo bench -p qwen3-guided --bench mask`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qwen3_guided::{Compiler, CompilerLimits, ConstraintKind, StructuredSpec};
use qwen3_step::mask_allows;
use serde_json::json;
use tokenizers::Tokenizer;

const VOCAB: usize = 151_936;
const EOS: [u32; 2] = [151_645, 151_643];

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-qwen3/tokenizer.json");
    let text = std::fs::read_to_string(path).expect("fixture tokenizer");
    let tok = Arc::new(Tokenizer::from_bytes(text.as_bytes()).expect("tokenizer"));
    let t0 = Instant::now();
    let env = qwen3_guided::tok_env(&text, tok, VOCAB, &EOS).expect("tok env");
    let compiler = Compiler::new(env, CompilerLimits::default()).expect("compiler");
    println!("token table + factory: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let schema = json!({
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
    });
    let spec = StructuredSpec {
        kind: ConstraintKind::JsonSchema(schema.to_string()),
        after_token: None,
    };
    let t0 = Instant::now();
    compiler.compile(&spec.kind).expect("compiles");
    println!("schema compile: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);

    let mut times: Vec<Duration> = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let walks = 20;
    for _ in 0..walks {
        let mut m = compiler.matcher(&spec).expect("matcher");
        for _ in 0..400 {
            let t = Instant::now();
            let mask = m.mask().expect("mask").expect("active");
            times.push(t.elapsed());
            let allowed: Vec<u32> = (0..VOCAB as u32)
                .filter(|&t| mask_allows(&mask, t) && !EOS.contains(&t))
                .collect();
            if allowed.is_empty() {
                break;
            }
            m.advance(allowed[(next() % allowed.len() as u64) as usize])
                .expect("advance");
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "mask per token over {VOCAB} tokens, {} masks in {walks} walks: median {:.0} us, p99 {:.0} us, max {:.0} us",
        times.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
