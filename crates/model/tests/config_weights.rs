//! Config parsing against real Qwen3 hub configs and both layouts, and safetensors loading
//! (single, sharded, corrupt, conversion, TP slices) from small files made here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use proptest::prelude::*;
use qwen3_model::config::{Family, ModelConfig, RopeScaling};
use qwen3_model::error::{ConfigError, WeightError};
use qwen3_model::weights::{DType, TensorInfo, WeightStore};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// config.json

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configs")
}

fn hub(name: &str) -> ModelConfig {
    ModelConfig::from_file(&data_dir().join(name)).expect("hub config parses")
}

fn hub_json(name: &str) -> Value {
    let text = std::fs::read_to_string(data_dir().join(name)).expect("read config");
    serde_json::from_str(&text).expect("json")
}

fn parse(v: &Value) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_json_str(&v.to_string())
}

fn parse_err(v: &Value) -> String {
    parse(v).expect_err("config must be rejected").to_string()
}

#[test]
fn qwen3_0_6b() {
    let c = hub("qwen3-0.6b.json");
    assert_eq!(c.family, Family::Dense);
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
        (1024, 28, 16)
    );
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.intermediate_size),
        (8, 128, 3072)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.vocab_size, 151936);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.max_position_embeddings, 40960);
    assert_eq!(c.max_context_len(), 40960);
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    assert_eq!(c.bos_token_id, Some(151643));
    assert_eq!(c.eos_token_ids, vec![151645]);
    assert!(c.moe.is_none());
    assert!(!c.attention_bias);
    assert_eq!(c.sliding_window, None);
    assert!(!c.use_sliding_window);
    assert_eq!(c.max_window_layers, Some(28));
    assert_eq!(c.layer_types, None);
    assert_eq!(c.quantization_config, None);
    assert!((0..28).all(|l| !c.is_moe_layer(l) && !c.layer_uses_sliding_window(l)));
}

#[test]
fn qwen3_8b_and_32b() {
    let c = hub("qwen3-8b.json");
    assert_eq!(c.family, Family::Dense);
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (4096, 36, 32, 8)
    );
    assert_eq!((c.head_dim, c.intermediate_size), (128, 12288));
    assert!(!c.tie_word_embeddings);

    let c = hub("qwen3-32b.json");
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (5120, 64, 64, 8)
    );
    // head_dim is given; 5120 / 64 would be 80.
    assert_eq!((c.head_dim, c.intermediate_size), (128, 25600));
    assert!(!c.tie_word_embeddings);
}

#[test]
fn qwen3_30b_a3b() {
    let c = hub("qwen3-30b-a3b.json");
    assert_eq!(c.family, Family::Moe);
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (2048, 48, 32, 4)
    );
    // head_dim is given; 2048 / 32 would be 64.
    assert_eq!((c.head_dim, c.intermediate_size), (128, 6144));
    let moe = c.moe.as_ref().expect("moe section");
    assert_eq!(moe.num_experts, 128);
    assert_eq!(moe.num_experts_per_tok, 8);
    assert_eq!(moe.moe_intermediate_size, 768);
    assert!(moe.norm_topk_prob);
    assert_eq!(moe.decoder_sparse_step, 1);
    assert!(moe.mlp_only_layers.is_empty());
    assert!((0..48).all(|l| c.is_moe_layer(l)));
    assert!(!c.tie_word_embeddings);
}

#[test]
fn qwen3_235b_a22b() {
    let c = hub("qwen3-235b-a22b.json");
    assert_eq!(c.family, Family::Moe);
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (4096, 94, 64, 4)
    );
    assert_eq!(c.head_dim, 128);
    let moe = c.moe.as_ref().expect("moe section");
    assert_eq!(
        (
            moe.num_experts,
            moe.num_experts_per_tok,
            moe.moe_intermediate_size
        ),
        (128, 8, 1536)
    );
    assert!((0..94).all(|l| c.is_moe_layer(l)));
}

#[test]
fn yarn_hub_style() {
    let mut v = hub_json("qwen3-8b.json");
    v["rope_scaling"] =
        json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
    let c = parse(&v).expect("parses");
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32768,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        }
    );
    assert_eq!(c.max_context_len(), 131072);
    assert_eq!(c.rope_theta, 1_000_000.0);

    // The older "type" key, and integer numbers where floats are expected.
    v["rope_scaling"] = json!({"type": "yarn", "factor": 2, "original_max_position_embeddings": 32768,
        "beta_fast": 16, "mscale": 0.707, "truncate": false});
    match parse(&v).expect("parses").rope_scaling {
        RopeScaling::Yarn {
            factor,
            beta_fast,
            mscale,
            truncate,
            ..
        } => {
            assert_eq!(
                (factor, beta_fast, mscale, truncate),
                (2.0, 16.0, Some(0.707), false)
            );
        }
        other => panic!("expected yarn, got {other:?}"),
    }
}

#[test]
fn rope_scaling_override_like_cli() {
    let text = std::fs::read_to_string(data_dir().join("qwen3-0.6b.json")).expect("read");
    let ov = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 32768}, "max_position_embeddings": 131072});
    let c = ModelConfig::from_json_str_with_overrides(&text, Some(&ov)).expect("parses");
    assert!(matches!(c.rope_scaling, RopeScaling::Yarn { factor, .. } if factor == 4.0));
    assert_eq!(c.max_position_embeddings, 131072);
    assert_eq!(c.max_context_len(), 131072);
    // Other fields untouched.
    assert_eq!(c.hidden_size, 1024);

    // Overrides must be an object.
    let err = ModelConfig::from_json_str_with_overrides(&text, Some(&json!([1])))
        .expect_err("rejected")
        .to_string();
    assert!(err.contains("overrides"), "{err}");
}

#[test]
fn linear_and_dynamic_context() {
    let mut v = hub_json("qwen3-0.6b.json");
    v["rope_scaling"] = json!({"rope_type": "linear", "factor": 2.0});
    let c = parse(&v).expect("parses");
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(c.max_context_len(), 81920);

    v["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0});
    let c = parse(&v).expect("parses");
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Dynamic {
            factor: 2.0,
            original_max_position_embeddings: 40960
        }
    );
    assert_eq!(c.max_context_len(), 81920);

    v["rope_scaling"] = json!({"rope_type": "default"});
    assert_eq!(parse(&v).expect("parses").rope_scaling, RopeScaling::None);
}

fn transformers5_moe() -> Value {
    json!({
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 2.0,
                            "original_max_position_embeddings": 2048},
        "dtype": "bfloat16",
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "norm_topk_prob": true,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [0],
        "use_sliding_window": true,
        "sliding_window": 512,
        "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        "eos_token_id": [7, 8],
        "bos_token_id": null,
        "tie_word_embeddings": true
    })
}

#[test]
fn transformers5_layout() {
    let c = parse(&transformers5_moe()).expect("parses");
    assert_eq!(c.family, Family::Moe);
    assert_eq!(c.rope_theta, 500_000.0);
    assert!(matches!(
        c.rope_scaling,
        RopeScaling::Yarn { factor, original_max_position_embeddings: 2048, .. } if factor == 2.0
    ));
    assert_eq!(c.max_context_len(), 4096);
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    let moe = c.moe.as_ref().expect("moe");
    assert_eq!(moe.num_experts, 8);
    assert_eq!(moe.mlp_only_layers, vec![0]);
    assert_eq!(
        (0..4).map(|l| c.is_moe_layer(l)).collect::<Vec<_>>(),
        vec![false, true, true, true]
    );
    assert_eq!(
        (0..4)
            .map(|l| c.layer_uses_sliding_window(l))
            .collect::<Vec<_>>(),
        vec![false, true, false, true]
    );
    assert_eq!(c.sliding_window, Some(512));
    assert_eq!(c.eos_token_ids, vec![7, 8]);
    assert_eq!(c.bos_token_id, None);

    // Default rope_parameters mean no scaling, theta from inside them.
    let mut v = transformers5_moe();
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1000000.0});
    let c = parse(&v).expect("parses");
    assert_eq!(
        (c.rope_theta, &c.rope_scaling),
        (1_000_000.0, &RopeScaling::None)
    );
    assert_eq!(c.max_context_len(), 4096);
}

#[test]
fn overrides_reach_transformers5_rope_parameters() {
    let text = transformers5_moe().to_string();
    // --rope-scaling on a transformers-5 config replaces the scaling and keeps the theta.
    let ov = json!({"rope_scaling": {"rope_type": "linear", "factor": 3.0}});
    let c = ModelConfig::from_json_str_with_overrides(&text, Some(&ov)).expect("parses");
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 3.0 });
    assert_eq!(c.rope_theta, 500_000.0);
    // null turns scaling off.
    let ov = json!({"rope_scaling": null, "rope_theta": 20000.0});
    let c = ModelConfig::from_json_str_with_overrides(&text, Some(&ov)).expect("parses");
    assert_eq!(
        (c.rope_theta, &c.rope_scaling),
        (20_000.0, &RopeScaling::None)
    );
}

#[test]
fn sparse_step_and_mlp_only_layers() {
    let mut v = hub_json("qwen3-30b-a3b.json");
    v["decoder_sparse_step"] = json!(2);
    v["mlp_only_layers"] = json!([3]);
    let c = parse(&v).expect("parses");
    let moe_layers: Vec<usize> = (0..8).filter(|&l| c.is_moe_layer(l)).collect();
    assert_eq!(moe_layers, vec![1, 5, 7]);

    v["decoder_sparse_step"] = json!(0);
    assert!(parse_err(&v).contains("decoder_sparse_step"));

    v["decoder_sparse_step"] = json!(1);
    v["num_experts_per_tok"] = json!(200);
    assert!(parse_err(&v).contains("num_experts_per_tok"));
}

#[test]
fn sliding_window_by_max_window_layers() {
    let mut v = hub_json("qwen3-0.6b.json");
    v["use_sliding_window"] = json!(true);
    v["sliding_window"] = json!(4096);
    v["max_window_layers"] = json!(20);
    let c = parse(&v).expect("parses");
    assert!(!c.layer_uses_sliding_window(19));
    assert!(c.layer_uses_sliding_window(20));
    // Without use_sliding_window nothing slides, as transformers drops the window.
    v["use_sliding_window"] = json!(false);
    assert!(!parse(&v).expect("parses").layer_uses_sliding_window(27));

    v["layer_types"] = json!(["full_attention"]);
    let err = parse_err(&v);
    assert!(err.contains("layer_types") && err.contains("28"), "{err}");
    v["layer_types"] = json!(vec!["local"; 28]);
    assert!(parse_err(&v).contains("\"local\""));
}

#[test]
fn defaults_when_absent() {
    let v = json!({"model_type": "qwen3", "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4});
    let c = parse(&v).expect("parses");
    assert_eq!(c.family, Family::Dense);
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.num_key_value_heads, 4);
    assert_eq!(c.rope_theta, 10_000.0);
    assert_eq!(c.max_position_embeddings, 32768);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert!(c.eos_token_ids.is_empty());
    assert_eq!(c.torch_dtype, None);
    assert!(!c.tie_word_embeddings);
}

#[test]
fn unknown_architecture_is_named() {
    let mut v = hub_json("qwen3-8b.json");
    v["architectures"] = json!(["LlamaForCausalLM"]);
    v["model_type"] = json!("llama");
    let err = parse_err(&v);
    assert!(err.contains("LlamaForCausalLM"), "{err}");
    assert!(
        err.contains("Qwen3ForCausalLM") && err.contains("Qwen3MoeForCausalLM"),
        "{err}"
    );

    let mut v = hub_json("qwen3-8b.json");
    v.as_object_mut().expect("object").remove("architectures");
    v["model_type"] = json!("qwen2");
    let err = parse_err(&v);
    assert!(err.contains("qwen2") && err.contains("qwen3_moe"), "{err}");

    // Contradicting architecture and model_type.
    let mut v = hub_json("qwen3-8b.json");
    v["model_type"] = json!("qwen3_moe");
    assert!(parse_err(&v).contains("model_type"));

    let mut v = hub_json("qwen3-8b.json");
    let o = v.as_object_mut().expect("object");
    o.remove("architectures");
    o.remove("model_type");
    assert!(parse_err(&v).contains("model_type"));
}

#[test]
fn missing_fields_are_named() {
    for field in [
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "intermediate_size",
    ] {
        let mut v = hub_json("qwen3-8b.json");
        v.as_object_mut().expect("object").remove(field);
        let err = parse(&v).expect_err("rejected");
        assert!(
            matches!(&err, ConfigError::MissingField { field: f } if f == field),
            "{err:?}"
        );
        assert!(err.to_string().contains(field));
    }
    let mut v = hub_json("qwen3-30b-a3b.json");
    v.as_object_mut().expect("object").remove("num_experts");
    assert!(parse_err(&v).contains("num_experts"));

    let mut v = hub_json("qwen3-8b.json");
    v["rope_scaling"] = json!({"rope_type": "yarn"});
    assert!(parse_err(&v).contains("rope_scaling.factor"));
    v["rope_scaling"] = json!({"factor": 2.0});
    assert!(parse_err(&v).contains("rope_scaling.rope_type"));
}

#[test]
fn wrong_types_are_named() {
    let cases = [
        ("hidden_size", json!("4096")),
        ("hidden_size", json!(-1)),
        ("hidden_size", json!(4096.5)),
        ("tie_word_embeddings", json!("yes")),
        ("rope_theta", json!("big")),
        ("eos_token_id", json!(["a"])),
        ("rope_scaling", json!(4)),
        ("layer_types", json!("full_attention")),
        ("torch_dtype", json!(16)),
    ];
    for (field, value) in cases {
        let mut v = hub_json("qwen3-8b.json");
        v[field] = value.clone();
        let err = parse(&v).expect_err("rejected");
        assert!(
            matches!(&err, ConfigError::WrongType { field: f, .. } if f == field),
            "{field}={value}: {err:?}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
    let mut v = hub_json("qwen3-8b.json");
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": "four"});
    assert!(parse_err(&v).contains("rope_scaling.factor"));
    v["rope_scaling"] = json!({"rope_type": "longrope", "factor": 4.0});
    let err = parse_err(&v);
    assert!(err.contains("longrope") && err.contains("yarn"), "{err}");
    v["rope_scaling"] = json!({"rope_type": "linear", "factor": 0.0});
    assert!(parse_err(&v).contains("rope_scaling.factor"));
    // Integral floats are fine where integers are expected.
    let mut v = hub_json("qwen3-8b.json");
    v["max_position_embeddings"] = json!(40960.0);
    assert_eq!(parse(&v).expect("parses").max_position_embeddings, 40960);
}

#[test]
fn inconsistent_heads_are_rejected() {
    let mut v = hub_json("qwen3-8b.json");
    v["num_key_value_heads"] = json!(5);
    assert!(parse_err(&v).contains("num_key_value_heads"));
    let mut v = hub_json("qwen3-8b.json");
    v["head_dim"] = json!(127);
    assert!(parse_err(&v).contains("head_dim"));
}

#[test]
fn bad_json_and_files() {
    assert!(matches!(
        ModelConfig::from_json_str("{not json"),
        Err(ConfigError::Json(_))
    ));
    assert!(matches!(
        ModelConfig::from_json_str("[1, 2]"),
        Err(ConfigError::NotAnObject { .. })
    ));
    let missing = data_dir().join("no-such-config.json");
    let err = ModelConfig::from_file(&missing).expect_err("missing file");
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("no-such-config.json"));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"model_type": "qwen3"}"#).expect("write");
    let err = ModelConfig::from_file(&path)
        .expect_err("incomplete")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn quantization_config_is_kept_raw() {
    let mut v = hub_json("qwen3-8b.json");
    let q = json!({"quant_method": "awq", "bits": 4, "group_size": 128});
    v["quantization_config"] = q.clone();
    assert_eq!(parse(&v).expect("parses").quantization_config, Some(q));
}

// ---------------------------------------------------------------------------------------
// safetensors

/// A tensor to write: dtype and shape and little-endian bytes.
struct T {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_tensor(shape: &[usize], f: impl Fn(usize) -> f32) -> T {
    let n: usize = shape.iter().product();
    T {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: (0..n).flat_map(|i| f(i).to_le_bytes()).collect(),
    }
}

fn bf16_tensor(shape: &[usize], f: impl Fn(usize) -> f32) -> T {
    let n: usize = shape.iter().product();
    T {
        dtype: Dtype::BF16,
        shape: shape.to_vec(),
        bytes: (0..n)
            .flat_map(|i| bf16::from_f32(f(i)).to_bits().to_le_bytes())
            .collect(),
    }
}

fn serialize(tensors: &[(&str, &T)]) -> Vec<u8> {
    let views: BTreeMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, t)| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("view");
            (name.to_string(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

fn write(dir: &Path, file: &str, tensors: &[(&str, &T)]) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, serialize(tensors)).expect("write");
    path
}

fn value(i: usize) -> f32 {
    // Exact in bf16, so conversions are checked bit for bit.
    (i % 200) as f32 * 0.5 - 37.0
}

fn single_model() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let embed = bf16_tensor(&[16, 8], value);
    let norm = f32_tensor(&[8], |i| 1.0 + i as f32);
    let packed = T {
        dtype: Dtype::I32,
        shape: vec![2, 2],
        bytes: [1i32, -2, 3, i32::MAX]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    };
    let path = write(
        dir.path(),
        "model.safetensors",
        &[
            ("model.embed_tokens.weight", &embed),
            ("model.norm.weight", &norm),
            ("qweight", &packed),
        ],
    );
    (dir, path)
}

fn err_of<T: std::fmt::Debug>(r: Result<T, WeightError>) -> WeightError {
    r.expect_err("must fail")
}

#[test]
fn single_file() {
    let (dir, _) = single_model();
    let s = WeightStore::open(dir.path()).expect("open");
    assert_eq!(
        s.names().collect::<Vec<_>>(),
        vec!["model.embed_tokens.weight", "model.norm.weight", "qweight"]
    );
    assert!(s.contains("model.norm.weight"));
    assert!(!s.contains("lm_head.weight"));
    assert_eq!(
        s.info("model.embed_tokens.weight").expect("info"),
        TensorInfo {
            dtype: DType::BF16,
            shape: vec![16, 8]
        }
    );
    assert_eq!(s.bytes_read(), 0);

    let e = s
        .load_bf16("model.embed_tokens.weight", &[16, 8])
        .expect("load");
    assert_eq!(e.len(), 128);
    assert!(e.iter().enumerate().all(|(i, x)| x.to_f32() == value(i)));
    assert_eq!(s.bytes_read(), 256);
    let ef = s
        .load_f32("model.embed_tokens.weight", &[16, 8])
        .expect("load");
    assert!(ef.iter().enumerate().all(|(i, x)| *x == value(i)));

    let n = s.load_f32("model.norm.weight", &[8]).expect("load");
    assert_eq!(n, (0..8).map(|i| 1.0 + i as f32).collect::<Vec<_>>());

    let (dtype, raw) = s.load_raw("qweight", &[2, 2]).expect("raw");
    assert_eq!(dtype, DType::I32);
    let ints: Vec<i32> = raw
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(ints, vec![1, -2, 3, i32::MAX]);
    let err = err_of(s.load_bf16("qweight", &[2, 2]));
    assert!(matches!(err, WeightError::NotFloat { .. }), "{err}");
    assert!(err.to_string().contains("qweight") && err.to_string().contains("I32"));
}

fn write_index(dir: &Path, map: &[(&str, &str)]) {
    let weight_map: serde_json::Map<String, Value> = map
        .iter()
        .map(|(t, f)| (t.to_string(), Value::from(*f)))
        .collect();
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).expect("json"),
    )
    .expect("write index");
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

fn sharded_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = bf16_tensor(&[4, 4], value);
    let b = bf16_tensor(&[4], |i| value(i + 100));
    let c = f32_tensor(&[2, 3], |i| i as f32);
    write(dir.path(), SHARD1, &[("a", &a), ("b", &b)]);
    write(dir.path(), SHARD2, &[("c", &c), ("extra", &c)]);
    write_index(dir.path(), &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2)]);
    dir
}

#[test]
fn sharded_with_index() {
    let dir = sharded_model();
    let s = WeightStore::open(dir.path()).expect("open");
    assert_eq!(s.names().collect::<Vec<_>>(), vec!["a", "b", "c", "extra"]);
    let b = s.load_f32("b", &[4]).expect("b");
    assert_eq!(b, (100..104).map(value).collect::<Vec<_>>());
    let c = s.load_f32("c", &[2, 3]).expect("c");
    assert_eq!(c, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(s.info("c").expect("info").dtype, DType::F32);
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = sharded_model();
    std::fs::remove_file(dir.path().join(SHARD2)).expect("rm");
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::MissingShard { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(SHARD2) && msg.contains("`c`"), "{msg}");
}

#[test]
fn index_disagreeing_with_shards() {
    let dir = sharded_model();
    write_index(dir.path(), &[("a", SHARD2)]);
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::IndexMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("`a`"));

    write_index(dir.path(), &[("a", "../elsewhere.safetensors")]);
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::BadIndex { .. }), "{err:?}");

    std::fs::write(dir.path().join("model.safetensors.index.json"), "{oops").expect("write");
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::BadIndex { .. }), "{err:?}");
    assert!(err.to_string().contains("index.json"));
}

#[test]
fn shards_without_index_are_globbed() {
    let dir = sharded_model();
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).expect("rm");
    let s = WeightStore::open(dir.path()).expect("open");
    assert_eq!(s.names().count(), 4);
}

#[test]
fn empty_or_missing_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::NoWeights { .. }), "{err:?}");
    let gone = dir.path().join("nope");
    let err = err_of(WeightStore::open(&gone));
    assert!(matches!(err, WeightError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"));
}

fn truncated_at(cut: impl Fn(&[u8]) -> usize) -> (WeightError, String) {
    let (dir, path) = single_model();
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..cut(&bytes)]).expect("write");
    let err = err_of(WeightStore::open(dir.path()));
    let msg = err.to_string();
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err:?}");
    assert!(msg.contains("model.safetensors"), "{msg}");
    (err, msg)
}

fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize
}

#[test]
fn truncated_in_data() {
    let (_, msg) = truncated_at(|b| {
        let data_start = 8 + header_len(b);
        data_start + (b.len() - data_start) / 2
    });
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn truncated_in_header() {
    let (_, msg) = truncated_at(|b| 8 + header_len(b) / 2);
    assert!(msg.contains("truncated"), "{msg}");
    let (_, msg) = truncated_at(|_| 5);
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn trailing_bytes() {
    let (dir, path) = single_model();
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0; 10]);
    std::fs::write(&path, &bytes).expect("write");
    let msg = err_of(WeightStore::open(dir.path())).to_string();
    assert!(msg.contains("trailing"), "{msg}");
}

#[test]
fn garbage_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let header = b"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).expect("write");
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("JSON"),
        "{msg}"
    );

    // A header whose sizes disagree with shape and dtype.
    let header = br#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).expect("write");
    let err = err_of(WeightStore::open(dir.path()));
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err:?}");
}

#[test]
fn unaligned_data() {
    // A header padded to an odd length puts every tensor at an odd address in the mmap.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut header =
        br#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}, "h": {"dtype": "BF16", "shape": [2], "data_offsets": [12, 16]}}"#.to_vec();
    if header.len() & 1 == 0 {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    for x in [1.5f32, -2.25, 1e-3] {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    for x in [3.0f32, -0.5] {
        bytes.extend_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes());
    }
    std::fs::write(dir.path().join("model.safetensors"), &bytes).expect("write");
    let s = WeightStore::open(dir.path()).expect("open");
    assert_eq!(s.load_f32("w", &[3]).expect("w"), vec![1.5, -2.25, 1e-3]);
    assert_eq!(
        s.load_bf16("h", &[2]).expect("h"),
        vec![bf16::from_f32(3.0), bf16::from_f32(-0.5)]
    );
    assert_eq!(
        s.load_f32_slice("w", &[3], 0, 1, 2).expect("w"),
        vec![-2.25, 1e-3]
    );
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    let (dir, _) = single_model();
    let s = WeightStore::open(dir.path()).expect("open");
    let err = err_of(s.load_bf16("model.embed_tokens.weight", &[8, 16]));
    assert!(matches!(err, WeightError::ShapeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.embed_tokens.weight")
            && msg.contains("[8, 16]")
            && msg.contains("[16, 8]"),
        "{msg}"
    );
    assert!(s.load_raw("qweight", &[4]).is_err());
    assert!(s
        .load_bf16_slice("model.embed_tokens.weight", &[16], 0, 0, 1)
        .is_err());
    assert_eq!(s.bytes_read(), 0);
}

#[test]
fn missing_tensor_is_named() {
    let (dir, _) = single_model();
    let s = WeightStore::open(dir.path()).expect("open");
    for err in [
        err_of(s.info("lm_head.weight")),
        err_of(s.load_f32("lm_head.weight", &[1])),
        err_of(s.load_raw("lm_head.weight", &[1])),
    ] {
        assert!(matches!(err, WeightError::MissingTensor { .. }), "{err:?}");
        assert!(err.to_string().contains("lm_head.weight"));
    }
}

#[test]
fn unsupported_dtype_is_named_on_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = T {
        dtype: Dtype::F64,
        shape: vec![2],
        bytes: [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let ok = f32_tensor(&[2], |i| i as f32);
    write(dir.path(), "model.safetensors", &[("d", &t), ("ok", &ok)]);
    // The file opens; only the tensor itself cannot be read.
    let s = WeightStore::open(dir.path()).expect("open");
    assert_eq!(s.load_f32("ok", &[2]).expect("ok"), vec![0.0, 1.0]);
    let err = err_of(s.info("d"));
    assert!(
        matches!(err, WeightError::UnsupportedDType { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("F64") && err.to_string().contains("`d`"));
    assert!(s.load_raw("d", &[2]).is_err());
}

#[test]
fn f16_and_f32_round_to_nearest_even() {
    let dir = tempfile::tempdir().expect("tempdir");
    // bf16 keeps 7 mantissa bits: 0x3F80_8000 is halfway between 0x3F80 and 0x3F81 (ties to
    // the even 0x3F80), 0x3F81_8000 ties to 0x3F82, and 0x3F80_8001 rounds up.
    let f32_bits: [u32; 8] = [
        0x3F80_0000,
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_8001,
        0x3F80_7FFF,
        0xC2F6_E979, // -123.456
        0x7F80_0000, // inf
        0x7FC0_0000, // NaN
    ];
    let f32s = T {
        dtype: Dtype::F32,
        shape: vec![8],
        bytes: f32_bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
    };
    // f16: 1.0, 1 + 2^-10 (under half a bf16 ulp: down), 1 + 2^-8 (tie: down to even),
    // 1 + 3*2^-8 (tie: up to even), 65504 (max), -2^-24 (smallest subnormal).
    let f16_bits: [u16; 6] = [0x3C00, 0x3C01, 0x3C04, 0x3C0C, 0x7BFF, 0x8001];
    let f16s = T {
        dtype: Dtype::F16,
        shape: vec![6],
        bytes: f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
    };
    write(
        dir.path(),
        "model.safetensors",
        &[("f32", &f32s), ("f16", &f16s)],
    );
    let s = WeightStore::open(dir.path()).expect("open");

    let got: Vec<u16> = s
        .load_bf16("f32", &[8])
        .expect("f32")
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(
        &got[..7],
        &[0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F80, 0xC2F7, 0x7F80]
    );
    assert!(bf16::from_bits(got[7]).is_nan());

    let got: Vec<u16> = s
        .load_bf16("f16", &[6])
        .expect("f16")
        .iter()
        .map(|x| x.to_bits())
        .collect();
    // 65504 = 1.1111111111b * 2^15 rounds up to 2^16 = 0x4780; -2^-24 = 0xB380.
    assert_eq!(got, vec![0x3F80, 0x3F80, 0x3F80, 0x3F82, 0x4780, 0xB380]);
    let want: Vec<u16> = f16_bits
        .iter()
        .map(|&b| bf16::from_f32(f16::from_bits(b).to_f32()).to_bits())
        .collect();
    assert_eq!(got, want);

    // f32 loading of f16 and bf16 is exact.
    let f = s.load_f32("f16", &[6]).expect("f16 as f32");
    assert_eq!(f[4], 65504.0);
    assert_eq!(f[5], -(2f32.powi(-24)));
}

fn slice_model(dtype: Dtype, shape: &[usize]) -> (tempfile::TempDir, WeightStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = match dtype {
        Dtype::BF16 => bf16_tensor(shape, value),
        _ => f32_tensor(shape, value),
    };
    write(dir.path(), "model.safetensors", &[("w", &t)]);
    let s = WeightStore::open(dir.path()).expect("open");
    (dir, s)
}

/// `[start, start + len)` along `dim` of a row-major tensor, by index arithmetic.
fn reference_slice(
    whole: &[f32],
    shape: &[usize],
    dim: usize,
    start: usize,
    len: usize,
) -> Vec<f32> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        let base = o * shape[dim] * inner;
        out.extend_from_slice(&whole[base + start * inner..base + (start + len) * inner]);
    }
    out
}

#[test]
fn slices_read_only_their_bytes() {
    let shape = [12, 10];
    let (_dir, s) = slice_model(Dtype::BF16, &shape);
    let whole = s.load_f32("w", &shape).expect("whole");
    let before = s.bytes_read();
    assert_eq!(before, 240);

    // Rank 1 of 4 along dim 0: 3 rows of 10.
    let rows = s.load_bf16_slice("w", &shape, 0, 3, 3).expect("rows");
    assert_eq!(s.bytes_read() - before, 3 * 10 * 2);
    let want = reference_slice(&whole, &shape, 0, 3, 3);
    assert_eq!(rows.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), want);
    assert_eq!(
        rows,
        s.load_bf16("w", &shape).expect("whole")[30..60].to_vec()
    );

    // Rank 2 of 5 along dim 1: 2 columns of each of 12 rows.
    let before = s.bytes_read();
    let cols = s.load_f32_slice("w", &shape, 1, 4, 2).expect("cols");
    assert_eq!(cols, reference_slice(&whole, &shape, 1, 4, 2));
    assert_eq!(s.bytes_read() - before, 12 * 2 * 2);

    // Out of range and bad dims.
    for (dim, start, len) in [(0, 10, 3), (1, 0, 11), (2, 0, 1), (0, usize::MAX, 2)] {
        let err = err_of(s.load_bf16_slice("w", &shape, dim, start, len));
        assert!(matches!(err, WeightError::BadSlice { .. }), "{err:?}");
        assert!(err.to_string().contains("`w`"));
    }
    // An empty slice reads nothing.
    let before = s.bytes_read();
    assert!(s
        .load_bf16_slice("w", &shape, 1, 10, 0)
        .expect("empty")
        .is_empty());
    assert_eq!(s.bytes_read(), before);
}

#[test]
fn big_tensor_parallel_paths() {
    // Over PAR_CHUNK elements, so the rayon paths run; compared against index arithmetic.
    let shape = [300, 700];
    let (_dir, s) = slice_model(Dtype::F32, &shape);
    let whole = s.load_f32("w", &shape).expect("whole");
    assert!(whole.iter().enumerate().all(|(i, x)| *x == value(i)));
    let bf = s.load_bf16("w", &shape).expect("bf16");
    assert!(bf.iter().enumerate().all(|(i, x)| x.to_f32() == value(i)));
    let cols = s.load_bf16_slice("w", &shape, 1, 350, 175).expect("cols");
    let want = reference_slice(&whole, &shape, 1, 350, 175);
    assert_eq!(cols.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), want);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn slices_match_the_whole(
        shape in prop::collection::vec(1usize..7, 1..4),
        dim_seed in 0usize..8,
        a in 0usize..8,
        b in 0usize..8,
        bf in any::<bool>(),
    ) {
        let dim = dim_seed % shape.len();
        let n = shape[dim];
        let (x, y) = (a % (n + 1), b % (n + 1));
        let (start, len) = (x.min(y), x.max(y) - x.min(y));
        let dtype = if bf { Dtype::BF16 } else { Dtype::F32 };
        let (_dir, s) = slice_model(dtype, &shape);
        let whole = s.load_f32("w", &shape).expect("whole");
        let want = reference_slice(&whole, &shape, dim, start, len);

        let before = s.bytes_read();
        let got = s.load_f32_slice("w", &shape, dim, start, len).expect("slice");
        prop_assert_eq!(&got, &want);
        let elem = if bf { 2 } else { 4 };
        prop_assert_eq!(s.bytes_read() - before, (want.len() * elem) as u64);

        let got = s.load_bf16_slice("w", &shape, dim, start, len).expect("slice");
        let want_bf: Vec<bf16> = want.iter().map(|x| bf16::from_f32(*x)).collect();
        prop_assert_eq!(got, want_bf);
    }
}
