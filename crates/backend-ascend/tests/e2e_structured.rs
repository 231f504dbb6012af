//! Structured outputs on the emulated NPU at F32: the mask is applied on the device
//! (aclnnBitwiseAndTensor, aclnnEqScalar, aclnnInplaceMaskedFillScalar), each constrained
//! output is valid (JSON against its schema with a JSON-schema validator, the regex, one of
//! the choices), the tokens are the CPU engine's, and no vocabulary-sized row of logits
//! crosses to the host.

mod common;

use std::sync::Arc;

use common::*;
use qwen3_backend_ascend::sample::MAX_CANDIDATES;
use qwen3_backend_ascend::AscendOptions;
use qwen3_engine::batch::{ConstraintKind, SamplingParams, StructuredSpec};
use qwen3_engine::{EngineConfig, EngineCore, EngineHandle, EngineRequest, Executor};
use qwen3_model::load::{cpu_executor, LoadOptions};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
            "home": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "home"],
        "additionalProperties": false
    })
}

const REGEX: &str = "[a-z]{2,5}@[a-z]{2,4}\\.(com|org)";

fn choices() -> Vec<String> {
    vec!["red".into(), "green".into(), "blue sky".into()]
}

/// `(prompt, constraint, top_k, seed)` of every request: greedy, sampled with a top-k, and
/// sampled unbounded (where the mask's few allowed ids bound the device's candidates).
fn cases() -> Vec<(&'static str, ConstraintKind, u32, Option<u64>)> {
    let json = ConstraintKind::JsonSchema(schema().to_string());
    vec![
        ("Describe a person as JSON:", json.clone(), 0, None),
        ("Describe a person as JSON:", json, 20, Some(3)),
        ("An email:", ConstraintKind::Regex(REGEX.into()), 0, None),
        ("An email:", ConstraintKind::Regex(REGEX.into()), 5, Some(4)),
        ("A colour:", ConstraintKind::Choice(choices()), 0, None),
        ("A colour:", ConstraintKind::Choice(choices()), 0, Some(5)),
    ]
}

fn requests(tok: &Tokenizer) -> Vec<EngineRequest> {
    cases()
        .into_iter()
        .enumerate()
        .map(|(i, (prompt, kind, top_k, seed))| {
            let ids = tok
                .encode(prompt, false)
                .expect("encode")
                .get_ids()
                .to_vec();
            let mut r = EngineRequest::new(format!("s{i}"), ids);
            r.sampling = SamplingParams {
                temperature: if seed.is_some() { 1.0 } else { 0.0 },
                top_k,
                seed,
                structured: Some(StructuredSpec {
                    kind,
                    after_token: None,
                }),
                ..SamplingParams::default()
            };
            r.max_tokens = Some(60);
            r
        })
        .collect()
}

/// Runs the requests at once on an engine with a structured-output compiler; each one's
/// tokens and text, in order.
fn run(
    cfg: EngineConfig,
    executor: Box<dyn Executor>,
    tok: Arc<Tokenizer>,
) -> Vec<(Vec<u32>, String)> {
    let compiler = Arc::new(
        qwen3_guided::compiler_for(
            &fixtures().join(DENSE).join("tokenizer.json"),
            Arc::clone(&tok),
            config(DENSE, None).vocab_size,
            &cfg.eos_token_ids,
            qwen3_guided::CompilerLimits::default(),
        )
        .expect("structured-output compiler"),
    );
    let reqs = requests(&tok);
    let core = EngineCore::new(cfg, executor, tok)
        .expect("engine core")
        .with_structured(compiler);
    let e = EngineHandle::start_core(core).expect("engine starts");
    let out = rt().block_on(async {
        let streams: Vec<_> = reqs
            .into_iter()
            .map(|r| e.submit(r).expect("submit"))
            .collect();
        let mut out = Vec::new();
        for mut s in streams {
            let (mut ids, mut text, mut finish) = (Vec::new(), String::new(), None);
            while let Some(o) = s.next().await {
                ids.extend(o.token_ids);
                text.push_str(&o.text);
                finish = finish.or(o.finish_reason);
            }
            assert_eq!(
                finish,
                Some(qwen3_engine::FinishReason::Stop),
                "{text:?} did not end where its grammar accepts"
            );
            out.push((ids, text));
        }
        out
    });
    stop(e);
    out
}

#[test]
fn constrained_outputs_on_the_npu_match_the_cpu_and_mask_on_the_device() {
    let setup = Setup::default();
    let emu = Emu::new();
    let (cfg, executor, tok) = engine_parts(&emu, DENSE, &setup, AscendOptions::default());
    let before = emu.stats();
    let npu = run(cfg.clone(), executor, Arc::clone(&tok));
    let s = emu.stats();
    emu.assert_clean();

    // The same model and requests on the CPU at F32.
    let opts = LoadOptions {
        dir: fixtures().join(DENSE),
        config: config(DENSE, None),
        dtype: setup.dtype,
        tensor_parallel_size: 1,
        block_size: BLOCK_SIZE,
        num_blocks: setup.num_blocks,
    };
    let cpu = run(cfg, cpu_executor(&opts).expect("cpu executor"), tok);

    let validator = jsonschema::validator_for(&schema()).expect("schema");
    let rx = regex::Regex::new(&format!("^(?:{REGEX})$")).expect("regex");
    for (i, ((kind, _), ((ids, text), (cpu_ids, _)))) in cases()
        .iter()
        .map(|c| (&c.1, c.3))
        .zip(npu.iter().zip(&cpu))
        .enumerate()
    {
        match kind {
            ConstraintKind::JsonSchema(_) => {
                let v: Value =
                    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                assert!(validator.is_valid(&v), "{text} does not validate");
            }
            ConstraintKind::Regex(_) => assert!(rx.is_match(text), "{text:?}"),
            _ => assert!(choices().contains(text), "{text:?}"),
        }
        // F32 on both: logits agree to ~1e-5 (the 1e-3 transformers bound of the goldens
        // holds for each), far inside the random model's top-2 gaps, so the tokens match.
        assert_eq!(ids, cpu_ids, "request {i}: {text:?}");
    }

    // Every masked row was selected on the device: per sampled token at most its
    // candidates came back (values F32 and ids I64, at most MAX_CANDIDATES of them, or one
    // argmax id), never its 151,936-logit row (607,744 bytes), which the host path copies.
    let vocab = config(DENSE, None).vocab_size;
    let tokens: usize = npu.iter().map(|(ids, _)| ids.len()).sum();
    let per_token = (MAX_CANDIDATES * 12 + 8) as u64;
    assert!(per_token * 10 < (vocab * 4) as u64);
    let d2h = s.d2h_bytes - before.d2h_bytes;
    assert!(
        d2h <= tokens as u64 * per_token,
        "{d2h} bytes came to the host for {tokens} sampled tokens: full rows crossed"
    );
    assert!(s.op_launches > before.op_launches);
}
