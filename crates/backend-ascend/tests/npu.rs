//! On a real Ascend machine (`cargo test -p qwen3-backend-ascend --features npu`): the
//! fixture models through the backend against transformers' goldens, and `doctor`.
//! Without the feature this file is not compiled; with it but without CANN or a device,
//! each test says so and returns.
#![cfg(feature = "npu")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ascend_sys::Cann;
use qwen3_backend::Backend;
use qwen3_backend_ascend::{AscendBackend, AscendOptions};
use qwen3_model::config::ModelConfig;
use qwen3_model::{Qwen3, Shard, SingleExecutor, WeightDType, Worker};

const BLOCK_SIZE: usize = 128;

/// Real Qwen3's head_dim 128 (GQA 8:1): fused attention in layout TND takes 64/128/192 only.
const DENSE: &str = "tiny-qwen3-hd128";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Real CANN with at least one device, or `None` (the test is then skipped).
fn cann() -> Option<Arc<Cann>> {
    let cann = match Cann::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    };
    let mut n = 0u32;
    // SAFETY: aclInit with a null config, then a valid out-pointer.
    unsafe { (cann.acl.aclInit)(std::ptr::null()) };
    // SAFETY: valid out-pointer.
    let rc = unsafe { (cann.acl.aclrtGetDeviceCount)(&mut n) };
    if rc != 0 || n == 0 {
        eprintln!("skipped: no Ascend device");
        return None;
    }
    Some(Arc::new(cann))
}

struct Case {
    name: String,
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    columns: Vec<usize>,
    prefill: Vec<Vec<f32>>,
    decode: Vec<Vec<f32>>,
}

fn cases(model: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join(format!("goldens/{model}.json"))).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("config_overrides").is_none_or(|o| o.is_null()))
        .map(|c| {
            let file = fixtures()
                .join("goldens")
                .join(c["logits_file"].as_str().unwrap());
            let bytes = std::fs::read(file).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let rows = |name: &str| {
                let t = st.tensor(name).unwrap();
                let v: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                v.chunks(t.shape()[1]).map(|r| r.to_vec()).collect()
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                prompt: ids(&c["prompt_ids"]),
                greedy: ids(&c["greedy_ids"]),
                columns: st
                    .tensor("columns")
                    .unwrap()
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
                    .collect(),
                prefill: rows("prefill_logits"),
                decode: rows("decode_logits"),
            }
        })
        .collect()
}

fn executor(cann: &Arc<Cann>, model: &str, dtype: WeightDType) -> SingleExecutor<AscendBackend> {
    let opts = AscendOptions {
        kv_cache_f32: dtype == WeightDType::F32,
        ..AscendOptions::default()
    };
    let backend = AscendBackend::with_options(Arc::clone(cann), 0, opts).unwrap();
    let text = std::fs::read_to_string(fixtures().join(model).join("config.json")).unwrap();
    let cfg = ModelConfig::from_json_str_with_overrides(&text, None).unwrap();
    let m = Qwen3::load(&backend, &fixtures().join(model), cfg, dtype, Shard::WHOLE).unwrap();
    let kv = backend.alloc_kv_cache(m.kv_shape(4, BLOCK_SIZE)).unwrap();
    SingleExecutor::new(Worker {
        backend,
        model: m,
        kv,
    })
}

fn check(model: &str, dtype: WeightDType, tol: f32, greedy: bool) {
    let Some(cann) = cann() else { return };
    for case in cases(model) {
        let mut ex = executor(&cann, model, dtype);
        let vocab = ex.worker().model.config.vocab_size;
        let n = case.prompt.len();
        let b = qwen3_model::profile::single_seq_batch(1, &case.prompt, 0, true, BLOCK_SIZE);
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = ex.logits(&b, &rows).unwrap();
        let diff = |ours: &[f32], want: &[f32]| {
            case.columns
                .iter()
                .zip(want)
                .map(|(&c, w)| (ours[c] - w).abs())
                .fold(0.0f32, f32::max)
        };
        for (p, want) in case.prefill.iter().enumerate() {
            let d = diff(&logits[p * vocab..(p + 1) * vocab], want);
            assert!(d < tol, "{model}/{}: prefill {p} differs by {d}", case.name);
        }
        let mut last = logits[(n - 1) * vocab..].to_vec();
        for (i, &tok) in case.greedy.iter().enumerate() {
            let d = diff(&last, &case.decode[i]);
            assert!(d < tol, "{model}/{}: decode {i} differs by {d}", case.name);
            if greedy {
                assert_eq!(
                    qwen3_backend::sampling::argmax(&last),
                    tok,
                    "{}: token {i}",
                    case.name
                );
            }
            let b = qwen3_model::profile::single_seq_batch(1, &[tok], n + i, false, BLOCK_SIZE);
            last = ex.logits(&b, &[0]).unwrap();
        }
    }
}

#[test]
fn dense_f32_matches_goldens_on_the_npu() {
    // Matmuls in F32 on the cube may run as HF32 on some SoCs: a looser bound than the CPU's.
    check(DENSE, WeightDType::F32, 1e-2, true);
}

#[test]
fn dense_bf16_close_to_goldens_on_the_npu() {
    check(DENSE, WeightDType::BF16, 0.3, false);
}

#[test]
fn moe_f32_matches_goldens_on_the_npu() {
    check("tiny-qwen3-moe", WeightDType::F32, 1e-2, true);
}

/// The MoE fixture at real Qwen3's head_dim 128 (what fused attention's TND layout takes).
const MOE_HD128: &str = "tiny-qwen3-moe-hd128";

#[test]
fn moe_hd128_f32_matches_goldens_on_the_npu() {
    check(MOE_HD128, WeightDType::F32, 1e-2, true);
}

/// BF16 experts, routing and fused attention: the bound e2e_parity.rs uses for this
/// fixture on the emulator (0.5: a BF16 router logit can swap a token's k-th expert).
#[test]
fn moe_hd128_bf16_close_to_goldens_on_the_npu() {
    check(MOE_HD128, WeightDType::BF16, 0.5, false);
}

#[test]
fn doctor_is_clean_on_the_npu() {
    let Some(cann) = cann() else { return };
    let report = qwen3_backend_ascend::doctor::doctor(&cann);
    eprintln!("{report}");
    assert!(report.ok(), "{report}");
}
