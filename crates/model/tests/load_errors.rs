//! Loading errors name what is wrong: a mis-shaped tensor, a missing tensor, a broken file.

mod common;

use common::*;
use qwen3_backend::cpu::CpuBackend;
use qwen3_model::{Qwen3, Shard, WeightDType};

fn copy_fixture(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(fixtures().join(model)).expect("fixture") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
    }
    dir
}

fn load_err(dir: &std::path::Path, cfg_json: &str) -> String {
    let cfg = qwen3_model::config::ModelConfig::from_json_str(cfg_json).expect("config");
    match Qwen3::load(
        &CpuBackend::new(),
        dir,
        cfg,
        WeightDType::BF16,
        Shard::WHOLE,
    ) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_shape_names_the_tensor_and_shapes() {
    let dir = copy_fixture("tiny-qwen3");
    let text = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["intermediate_size"] = 96.into();
    let msg = load_err(dir.path(), &v.to_string());
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight"), "{msg}");
    assert!(msg.contains("96"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("tiny-qwen3");
    let text = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["num_hidden_layers"] = 3.into();
    let msg = load_err(dir.path(), &v.to_string());
    assert!(msg.contains("model.layers.2."), "{msg}");
}

#[test]
fn truncated_shard_is_a_clear_error() {
    let dir = copy_fixture("tiny-qwen3-moe");
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    let len = std::fs::metadata(&shard).expect("shard").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    let text = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
    let msg = load_err(dir.path(), &text);
    assert!(msg.contains("model-00002-of-00003.safetensors"), "{msg}");
}

#[test]
fn unknown_model_type_is_refused() {
    let text = std::fs::read_to_string(fixtures().join("tiny-qwen3/config.json")).expect("config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["model_type"] = "llama".into();
    v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    let err = qwen3_model::config::ModelConfig::from_json_str(&v.to_string()).expect_err("refused");
    assert!(
        err.to_string().contains("llama") || err.to_string().contains("Llama"),
        "{err}"
    );
}
