//! AWQ and GPTQ int4/int8 fixtures (tests/fixtures/make_quant_fixtures.py) against transformers
//! run on the dequantized weights: logits within 1e-3 and identical greedy tokens, dense and
//! MoE, at TP 1 and 2; and the clear errors a wrong flag, bits value, packed shape or TP give.

mod common;

use common::*;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::Backend;
use qwen3_model::quant_config::QuantConfig;
use qwen3_model::{Qwen3, Shard, WeightDType, Worker};

/// Our F32 arithmetic against transformers' F32 on identical (dequantized) weights.
const TOL: f32 = 1e-3;

fn check(model: &str, world: usize) {
    let golden = golden(model);
    assert_eq!(golden.cases.len(), 2);
    for case in &golden.cases {
        let rec = recorded(case);
        // The last decode's logits are not recorded, so stop one step short.
        let rows = ranks::rank_logits(model, case, None, world, case.greedy_ids.len() - 1);
        let n = case.prompt_ids.len();
        let mut worst = 0.0f32;
        for (p, want) in rec.prefill.iter().enumerate() {
            let d = max_diff(&rows[p], want, &rec.columns);
            assert!(d < TOL, "{model} tp{world} {}: prefill {p}: {d}", case.name);
            worst = worst.max(d);
        }
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let logits = &rows[n - 1 + i];
            let d = max_diff(logits, &rec.decode[i], &rec.columns);
            assert!(d < TOL, "{model} tp{world} {}: decode {i}: {d}", case.name);
            worst = worst.max(d);
            assert_eq!(
                qwen3_backend::sampling::argmax(logits),
                tok,
                "{model} tp{world} {}: greedy token {i}",
                case.name
            );
        }
        eprintln!("{model} tp{world} {}: max |diff| {worst:.2e}", case.name);
    }
}

#[test]
fn awq_matches_dequantized_reference() {
    check("tiny-qwen3-awq", 1);
    check("tiny-qwen3-awq", 2);
}

#[test]
fn gptq_matches_dequantized_reference() {
    check("tiny-qwen3-gptq", 1);
    check("tiny-qwen3-gptq", 2);
}

#[test]
fn gptq_act_order_matches_dequantized_reference() {
    check("tiny-qwen3-gptq-actorder", 1);
    check("tiny-qwen3-gptq-actorder", 2);
}

#[test]
fn gptq_8bit_one_group_matches_dequantized_reference() {
    check("tiny-qwen3-gptq8", 1);
    check("tiny-qwen3-gptq8", 2);
}

#[test]
fn moe_awq_matches_dequantized_reference() {
    check("tiny-qwen3-moe-awq", 1);
    check("tiny-qwen3-moe-awq", 2);
}

#[test]
fn moe_gptq_act_order_matches_dequantized_reference() {
    check("tiny-qwen3-moe-gptq", 1);
    check("tiny-qwen3-moe-gptq", 2);
}

/// The MoE fixtures the NPU takes (crates/backend-ascend/tests/e2e_quant.rs), checked here on the
/// CPU in F32 first: the fixtures themselves against their references.
#[test]
fn moe_npu_fixtures_match_dequantized_reference() {
    for model in [
        "tiny-qwen3-moe-gptq-g32",
        "tiny-qwen3-moe-awq-pc",
        "tiny-qwen3-moe-gptq8",
        "tiny-qwen3-moe-awq-g32",
    ] {
        check(model, 1);
        check(model, 2);
    }
}

fn load(model_dir: &std::path::Path, cfg_json: &str, shard: Shard) -> Result<u64, String> {
    let cfg =
        qwen3_model::config::ModelConfig::from_json_str(cfg_json).map_err(|e| e.to_string())?;
    Qwen3::load(&CpuBackend::new(), model_dir, cfg, WeightDType::BF16, shard)
        .map(|m| m.weight_bytes())
        .map_err(|e| e.to_string())
}

fn config_json(model: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(model).join("config.json")).expect("config");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn quantized_weights_take_about_a_quarter_of_bf16() {
    // The linears' packed codes against BF16 of the same shapes: 4-bit codes are a quarter of
    // BF16; an F16 scale and a U8 zero point per 32-input group add 3 / 32 bytes a weight
    // (0.594 / 2 = 0.297 in all; with the published group size 128 it is 0.262).
    let dir = fixtures().join("tiny-qwen3-gptq");
    let bytes = load(
        &dir,
        &config_json("tiny-qwen3-gptq").to_string(),
        Shard::WHOLE,
    )
    .expect("loads");
    let (h, i, qkvo) = (64u64, 128u64, (256 + 64 + 64 + 256) * 64);
    let linear_params = 2 * (qkvo + 3 * h * i);
    let other_bf16 = 2 * (512 * h + (2 * (2 * h + 2 * 32)) + h);
    let quant = bytes - other_bf16;
    let ratio = quant as f64 / (2 * linear_params) as f64;
    assert!(ratio > 0.29 && ratio < 0.31, "ratio {ratio}");
}

#[test]
fn wrong_quantization_flag_says_what_the_model_is() {
    let v = config_json("tiny-qwen3-awq");
    let q = QuantConfig::from_json(v.get("quantization_config")).expect("parses");
    let e = QuantConfig::check_flag(q.as_ref(), Some("gptq")).expect_err("mismatch");
    assert_eq!(
        e.to_string(),
        "--quantization gptq was given, but the model is quantized with awq"
    );
    assert!(QuantConfig::check_flag(q.as_ref(), Some("awq")).is_ok());
}

#[test]
fn unsupported_bits_is_a_clear_error() {
    let mut v = config_json("tiny-qwen3-gptq");
    v["quantization_config"]["bits"] = 3.into();
    let msg = load(
        &fixtures().join("tiny-qwen3-gptq"),
        &v.to_string(),
        Shard::WHOLE,
    )
    .expect_err("3 bits refused");
    assert!(msg.contains("gptq with 3 bits is not supported"), "{msg}");
}

#[test]
fn corrupt_qweight_shape_names_the_tensor() {
    let src = fixtures().join("tiny-qwen3-awq");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let bad = "model.layers.1.self_attn.q_proj.qweight";
    let mut tensors = Vec::new();
    for (name, t) in st.tensors() {
        let mut shape = t.shape().to_vec();
        if name == bad {
            // Same bytes, transposed shape: what a mis-exported checkpoint looks like.
            shape.reverse();
        }
        let view = safetensors::tensor::TensorView::new(t.dtype(), shape, t.data()).expect("view");
        tensors.push((name, view));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    safetensors::serialize_to_file(tensors, None, &dir.path().join("model.safetensors"))
        .expect("write");
    let cfg = config_json("tiny-qwen3-awq").to_string();
    let msg = load(dir.path(), &cfg, Shard::WHOLE).expect_err("corrupt shape refused");
    assert!(msg.contains(bad), "{msg}");
    assert!(
        msg.contains("[64, 32]") && msg.contains("[32, 64]"),
        "{msg}"
    );
}

#[test]
fn tp_that_would_split_a_group_is_refused() {
    // Group size 32; at TP 8 each rank would take 16 of down_proj's 128 inputs.
    let model = "tiny-qwen3-gptq";
    let msg = load(
        &fixtures().join(model),
        &config_json(model).to_string(),
        Shard { rank: 0, world: 8 },
    )
    .expect_err("TP 8 refused");
    assert!(msg.contains("would split the quantization groups"), "{msg}");
    assert!(msg.contains("down_proj"), "{msg}");
}

#[test]
fn qweight_without_quantization_config_is_refused() {
    let mut v = config_json("tiny-qwen3-awq");
    v.as_object_mut()
        .expect("object")
        .remove("quantization_config");
    let msg = load(
        &fixtures().join("tiny-qwen3-awq"),
        &v.to_string(),
        Shard::WHOLE,
    )
    .expect_err("refused");
    assert!(msg.contains("has no quantization_config"), "{msg}");
}

/// The resident-memory figure on a 0.6B-shaped model and its GPTQ-int4 twin, written by
/// `make_quant_fixtures.py --big DIR`: run with
/// `QWEN3_QUANT_BIG=DIR cargo test -p qwen3-model --test quantized -- --ignored --nocapture`.
#[test]
#[ignore = "needs the 0.6B-shaped models (about 1.5 GB) from make_quant_fixtures.py --big"]
fn resident_memory_of_a_0_6b_shaped_model() {
    let Ok(dir) = std::env::var("QWEN3_QUANT_BIG") else {
        panic!("set QWEN3_QUANT_BIG to the directory make_quant_fixtures.py --big wrote");
    };
    let dir = std::path::Path::new(&dir);
    let mut figures = Vec::new();
    for name in ["gptq-int4", "bf16"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(path.join("config.json")).expect("config");
        let cfg = qwen3_model::config::ModelConfig::from_json_str(&text).expect("config");
        let backend = CpuBackend::new();
        let before = rss_anon();
        let start = std::time::Instant::now();
        let m = Qwen3::load(&backend, &path, cfg, WeightDType::BF16, Shard::WHOLE).expect("loads");
        let load_s = start.elapsed().as_secs_f64();
        let rss = rss_anon().saturating_sub(before);
        // A decode step's worth of work: one token through every layer, timed (informative only).
        let kv = backend
            .alloc_kv_cache(m.kv_shape(4, BLOCK_SIZE))
            .expect("kv");
        let mut ex = qwen3_model::SingleExecutor::new(Worker {
            backend,
            model: m,
            kv,
        });
        let b = single_seq_batch(&[1, 2, 3, 4], 0, true);
        ex.logits(&b, &[3]).expect("prefill");
        let t = std::time::Instant::now();
        let steps = 5;
        for i in 0..steps {
            let b = single_seq_batch(&[5 + i as u32], 4 + i, false);
            ex.logits(&b, &[0]).expect("decode");
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let bytes = ex.worker().model.weight_bytes();
        eprintln!(
            "{name}: weight bytes {:.1} MB, anonymous RSS after load +{:.1} MB, load {load_s:.1} s, decode {ms:.1} ms/token",
            bytes as f64 / 1e6,
            rss as f64 / 1e6
        );
        figures.push(bytes);
    }
    // Tied embedding 151936 × 1024 BF16 is the same in both.
    let embed = 151_936u64 * 1024 * 2;
    let (q, b) = (figures[0], figures[1]);
    eprintln!(
        "total {:.3} of BF16; without the shared BF16 embedding {:.3}",
        q as f64 / b as f64,
        (q - embed) as f64 / (b - embed) as f64
    );
    assert!(q < b / 2);
}

#[test]
fn a_tp_rank_reads_about_its_share_of_the_packed_weights() {
    use qwen3_model::weights::WeightStore;
    for model in [
        "tiny-qwen3-awq",
        "tiny-qwen3-gptq",
        "tiny-qwen3-gptq-actorder",
        "tiny-qwen3-moe-gptq",
    ] {
        let dir = fixtures().join(model);
        let read = |shard: Shard| {
            let store = WeightStore::open(&dir).expect("store");
            Qwen3::load_from_store(
                &CpuBackend::new(),
                &store,
                config(model, None),
                WeightDType::BF16,
                shard,
            )
            .expect("loads");
            store.bytes_read()
        };
        let total = read(Shard::WHOLE);
        let part = read(Shard { rank: 1, world: 2 });
        // Norms, scales of column-parallel layers and act-order group tables are read whole;
        // they are a few percent.
        assert!(
            part * 100 < total * 60,
            "{model}: rank 1 of 2 read {part} of {total} bytes"
        );
    }
}
