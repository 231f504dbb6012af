//! msModelSlim W8A8 fixtures (tests/fixtures/make_w8a8_fixtures.py) on the CPU against
//! transformers run on the fake-quantized model (dequantized weights, activations quantized
//! and dequantized per scheme): dense and MoE, static and dynamic, TP 1 and 2; and the clear
//! errors a wrong description, a missing scale or a bad tensor give.

mod common;

use common::*;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::Backend;
use qwen3_model::{Qwen3, Shard, WeightDType};

/// The reference quantizes activations exactly as we do and sums in F32 where we sum integers
/// exactly (~1e-6 relative apart); measured worst 3.2e-5 over all fixtures and TP sizes. The
/// bound is the project's F32 1e-3: a rounding flip of one activation (one quantization step,
/// ~1 % of its row's largest value) would show as ~1e-3, and the fixtures are deterministic,
/// so a pass is not luck; a wrong scale, offset, bias or TP split moves logits by > 0.01
/// (tested below).
const TOL: f32 = 1e-3;

/// Largest difference from the references over both cases (and whether greedy tokens
/// agreed wherever the reference's margin is decisive).
///
/// Under W8A8_DYNAMIC each TP rank quantizes its own slice of a row-parallel layer's input
/// (per token, its own scale), so TP 2 has references of its own (`<model>__tp2`, made by the
/// fixture script the same way); static quantization is per tensor and split-invariant.
fn worst(model: &str, world: usize) -> f32 {
    let tp2 = format!("{model}__tp2");
    let has_tp2 = fixtures()
        .join("goldens")
        .join(format!("{tp2}.json"))
        .is_file();
    let golden = golden(if world == 2 && has_tp2 { &tp2 } else { model });
    let mut worst = 0.0f32;
    for case in &golden.cases {
        let rec = recorded(case);
        let rows = ranks::rank_logits(model, case, None, world, case.greedy_ids.len() - 1);
        let n = case.prompt_ids.len();
        for (p, want) in rec.prefill.iter().enumerate() {
            worst = worst.max(max_diff(&rows[p], want, &rec.columns));
        }
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let logits = &rows[n - 1 + i];
            worst = worst.max(max_diff(logits, &rec.decode[i], &rec.columns));
            // Decisive: the reference's top-2 gap at this step (its top 8 columns are
            // recorded) is well above the bound.
            let mut top: Vec<f32> = rec.decode[i].clone();
            top.sort_by(|a, b| b.total_cmp(a));
            if top[0] - top[1] > 4.0 * TOL {
                assert_eq!(
                    qwen3_backend::sampling::argmax(logits),
                    tok,
                    "{model} tp{world} {}: greedy token {i}",
                    case.name
                );
            }
        }
    }
    eprintln!("{model} tp{world}: max |diff| {worst:.2e}");
    worst
}

fn check(model: &str) {
    for world in [1, 2] {
        let w = worst(model, world);
        assert!(w < TOL, "{model} tp{world}: {w}");
    }
}

#[test]
fn dense_static_w8a8_with_a_float_layer_matches_the_fake_quant_reference() {
    check("tiny-qwen3-w8a8");
}

#[test]
fn dense_dynamic_w8a8_matches_the_fake_quant_reference() {
    check("tiny-qwen3-w8a8-dynamic");
}

#[test]
fn moe_static_attention_dynamic_experts_f16_deq_scale_matches_the_fake_quant_reference() {
    check("tiny-qwen3-moe-w8a8");
}

#[test]
fn moe_dynamic_w8a8_matches_the_fake_quant_reference() {
    check("tiny-qwen3-moe-w8a8-dynamic");
}

/// A copy of fixture `model` whose tensors pass through `edit` (None drops one) and whose
/// description through `desc`.
fn altered(
    model: &str,
    edit: impl Fn(
        &str,
        &safetensors::tensor::TensorView<'_>,
    ) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    desc: impl Fn(&mut serde_json::Value),
) -> tempfile::TempDir {
    let src = fixtures().join(model);
    let bytes = std::fs::read(src.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut owned = Vec::new();
    for (name, t) in st.tensors() {
        if let Some(v) = edit(&name, &t) {
            owned.push((name, v));
        }
    }
    let views: Vec<_> = owned
        .iter()
        .map(|(n, (d, s, b))| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
            (n.clone(), v)
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors"))
        .expect("write");
    for f in ["config.json", "quant_model_description.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    let path = dir.path().join("quant_model_description.json");
    let mut d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("desc")).expect("json");
    desc(&mut d);
    std::fs::write(&path, d.to_string()).expect("write desc");
    dir
}

fn keep(
    _: &str,
    t: &safetensors::tensor::TensorView<'_>,
) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    Some((t.dtype(), t.shape().to_vec(), t.data().to_vec()))
}

fn load(dir: &std::path::Path, model: &str, shard: Shard) -> Result<u64, String> {
    Qwen3::load(
        &CpuBackend::new(),
        dir,
        config(model, None),
        WeightDType::F32,
        shard,
    )
    .map(|m| m.weight_bytes())
    .map_err(|e| e.to_string())
}

#[test]
fn a_missing_scale_names_the_tensor() {
    let model = "tiny-qwen3-w8a8";
    for gone in [
        "model.layers.0.self_attn.o_proj.deq_scale",
        "model.layers.1.mlp.up_proj.input_scale",
        "model.layers.0.mlp.down_proj.quant_bias",
    ] {
        let dir = altered(
            model,
            |n, t| (n != gone).then(|| keep(n, t)).flatten(),
            |_| {},
        );
        // Row-parallel o_proj/down_proj: rank 1 does not add quant_bias, yet still wants it.
        for shard in [Shard::WHOLE, Shard { rank: 1, world: 2 }] {
            let msg = load(dir.path(), model, shard).expect_err("refused");
            assert!(msg.contains(gone), "{msg}");
        }
    }
    let model = "tiny-qwen3-moe-w8a8-dynamic";
    let gone = "model.layers.2.mlp.experts.5.down_proj.weight_scale";
    let dir = altered(
        model,
        |n, t| (n != gone).then(|| keep(n, t)).flatten(),
        |_| {},
    );
    let msg = load(dir.path(), model, Shard::WHOLE).expect_err("refused");
    assert!(msg.contains(gone), "{msg}");
}

#[test]
fn unsupported_schemes_and_bad_tensors_are_refused_by_name() {
    let model = "tiny-qwen3-w8a8-dynamic";
    let q = "model.layers.1.self_attn.q_proj";
    let cases: Vec<(tempfile::TempDir, String)> = vec![
        (
            altered(model, keep, |d| {
                d[format!("{q}.weight")] = "W4A8_DYNAMIC".into()
            }),
            format!("`{q}.weight` is quantized as \"W4A8_DYNAMIC\""),
        ),
        (
            altered(model, keep, |d| d["kv_cache_type"] = "C8".into()),
            "KV-cache quantization".into(),
        ),
        (
            altered(model, keep, |d| {
                d.as_object_mut().map(|o| o.remove(&format!("{q}.weight")));
            }),
            format!("no entry for `{q}.weight`"),
        ),
        (
            // Per-group scales [n, 2] are W4A16/W8A16's, not W8A8's.
            altered(
                model,
                |n, t| {
                    if n == format!("{q}.weight_scale") {
                        let rows = t.shape()[0];
                        let mut b = t.data().to_vec();
                        b.extend_from_slice(t.data());
                        Some((t.dtype(), vec![rows, 2], b))
                    } else {
                        keep(n, t)
                    }
                },
                |_| {},
            ),
            format!("`{q}.weight_scale` has shape [256, 2]"),
        ),
        (
            altered(
                model,
                |n, t| {
                    if n == format!("{q}.weight_offset") {
                        let b = 1.0f32.to_le_bytes().repeat(t.shape()[0]);
                        Some((t.dtype(), t.shape().to_vec(), b))
                    } else {
                        keep(n, t)
                    }
                },
                |_| {},
            ),
            format!("`{q}.weight_offset` is not zero"),
        ),
        (
            // A BF16 weight described as W8A8_DYNAMIC: not int8 codes.
            altered(
                model,
                |n, t| {
                    if n == format!("{q}.weight") {
                        let b: Vec<u8> = t.data().iter().flat_map(|&x| [x, 0]).collect();
                        Some((safetensors::Dtype::BF16, t.shape().to_vec(), b))
                    } else {
                        keep(n, t)
                    }
                },
                |_| {},
            ),
            format!("`{q}.weight` has dtype BF16"),
        ),
    ];
    for (dir, needle) in cases {
        let msg = load(dir.path(), model, Shard::WHOLE).expect_err("refused");
        assert!(msg.contains(&needle), "{msg} lacks {needle}");
    }
}

#[test]
fn static_experts_are_refused() {
    let model = "tiny-qwen3-moe-w8a8-dynamic";
    let dir = altered(model, keep, |d| {
        for (k, v) in d.as_object_mut().expect("object").iter_mut() {
            if k.contains(".experts.") {
                *v = "W8A8".into();
            }
        }
    });
    let msg = load(dir.path(), model, Shard::WHOLE).expect_err("refused");
    assert!(msg.contains("W8A8_DYNAMIC only"), "{msg}");
}

#[test]
fn a_wrong_quant_bias_or_deq_scale_is_caught_by_the_parity_bound() {
    // Guards the bound: a bias counted on both TP ranks, or a scale off by 1 %, breaks it.
    let model = "tiny-qwen3-w8a8";
    let bias = "model.layers.0.self_attn.o_proj.quant_bias";
    let dir = altered(
        model,
        |n, t| {
            if n == bias {
                let b: Vec<u8> = t
                    .data()
                    .chunks_exact(4)
                    .flat_map(|c| (i32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 2).to_le_bytes())
                    .collect();
                Some((t.dtype(), t.shape().to_vec(), b))
            } else {
                keep(n, t)
            }
        },
        |_| {},
    );
    let golden = golden(model);
    let case = &golden.cases[0];
    let rec = recorded(case);
    let rows = ranks::rank_logits_in(dir.path(), model, case, None, 1, 1);
    let ok = ranks::rank_logits(model, case, None, 1, 1);
    assert!(max_diff(&ok[0], &rec.prefill[0], &rec.columns) < TOL);
    let d = max_diff(&rows[0], &rec.prefill[0], &rec.columns);
    assert!(
        d > 10.0 * TOL,
        "a doubled quant_bias moved the logits by only {d}"
    );
}

#[test]
fn int8_weights_take_about_half_of_bf16() {
    // Dense dynamic: every linear int8, plus an F32 scale and an I32 correction per output
    // (8 bytes per row of 64 or 128 inputs: +6–12 %); the rest as loaded (F32 here).
    let model = "tiny-qwen3-w8a8-dynamic";
    let dir = fixtures().join(model);
    let bytes = load(&dir, model, Shard::WHOLE).expect("loads");
    let (h, i) = (64u64, 128u64);
    let qkvo_rows = 256 + 64 + 64 + 64;
    let linear_weights = 2 * ((256 + 64 + 64) * h + h * 256 + 3 * h * i);
    let rows = 2 * (qkvo_rows + i + i + h);
    let other_f32 = 4 * (512 * h + 2 * (2 * h + 2 * 32) + h);
    assert_eq!(bytes, linear_weights + 8 * rows + other_f32);
}

/// Weight bytes, resident memory and single-stream decode time of a 0.6B-shaped random model,
/// BF16 against the same model in W8A8_DYNAMIC (`bench make-model` writes both): run with
/// `QWEN3_W8A8_BIG=DIR cargo test -p qwen3-model --test w8a8 -- --ignored --nocapture`
/// (DIR gets about 2 GB of models, written once). Decode steps of the two models alternate,
/// so load from other jobs hits both alike; figures are informative, not asserted.
#[test]
#[ignore = "writes and loads 0.6B-shaped models (about 2 GB)"]
fn resident_memory_of_a_0_6b_shaped_w8a8_model() {
    use qwen3_model::synthetic::{write_model_as, Shape, Storage};
    let Ok(dir) = std::env::var("QWEN3_W8A8_BIG") else {
        panic!("set QWEN3_W8A8_BIG to a directory for the models");
    };
    let shape = Shape::by_name("qwen3-0.6b").expect("shape");
    let mut figures = Vec::new();
    let mut executors = Vec::new();
    for (name, storage) in [("w8a8", Storage::W8A8Dynamic), ("bf16", Storage::Bf16)] {
        let path = std::path::Path::new(&dir).join(name);
        if !path.join("config.json").is_file() {
            write_model_as(&path, &shape, 0, storage).expect("write");
        }
        let text = std::fs::read_to_string(path.join("config.json")).expect("config");
        let cfg = qwen3_model::config::ModelConfig::from_json_str(&text).expect("config");
        let backend = CpuBackend::new();
        let before = rss_anon();
        let m = Qwen3::load(&backend, &path, cfg, WeightDType::BF16, Shard::WHOLE).expect("loads");
        let rss = rss_anon().saturating_sub(before);
        let bytes = m.weight_bytes();
        eprintln!(
            "{name}: weight bytes {:.1} MB, anonymous RSS after load +{:.1} MB",
            bytes as f64 / 1e6,
            rss as f64 / 1e6
        );
        figures.push(bytes);
        let kv = backend
            .alloc_kv_cache(m.kv_shape(8, BLOCK_SIZE))
            .expect("kv");
        let mut ex = qwen3_model::SingleExecutor::new(qwen3_model::Worker {
            backend,
            model: m,
            kv,
        });
        ex.logits(&single_seq_batch(&[1, 2, 3, 4], 0, true), &[3])
            .expect("prefill");
        executors.push((name, ex, 4usize, Vec::new()));
    }
    for _round in 0..5 {
        for (_, ex, pos, times) in executors.iter_mut() {
            let t = std::time::Instant::now();
            for _ in 0..8 {
                let b = single_seq_batch(&[5 + *pos as u32], *pos, false);
                ex.logits(&b, &[0]).expect("decode");
                *pos += 1;
            }
            times.push(t.elapsed().as_secs_f64() * 1e3 / 8.0);
        }
    }
    for (name, _, _, times) in &executors {
        let fmt: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
        eprintln!(
            "{name}: decode ms/token, 5 alternated rounds of 8: {}",
            fmt.join(", ")
        );
    }
    // The tied embedding (the LM head too) stays BF16 in both: 151936 x 1024 x 2 bytes.
    let embed = 151_936u64 * 1024 * 2;
    let (q, b) = (figures[0], figures[1]);
    eprintln!(
        "total {:.3} of BF16; linears alone {:.3}",
        q as f64 / b as f64,
        (q - embed) as f64 / (b - embed) as f64
    );
    assert!((q - embed) * 10 < (b - embed) * 6);
}
