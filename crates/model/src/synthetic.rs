//! Random-weight models of a named shape, so speed benchmarks need no download: a
//! `config.json` and a `model.safetensors` of seeded random BF16 weights, written straight to
//! disk (the weights are never all in memory at once); or the same weights quantized to
//! msModelSlim's W8A8_DYNAMIC layout ([`Storage::W8A8Dynamic`]), for the INT8 figures.

use std::io::{BufWriter, Write};
use std::path::Path;

use half::bf16;

#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    #[error("unknown model shape {0:?} (known: {known})", known = SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))]
    UnknownShape(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The dimensions of a dense Qwen3 model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub tied: bool,
}

/// Shapes [`write_model`] knows, by name.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "qwen3-0.6b",
        hidden: 1024,
        layers: 28,
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        intermediate: 3072,
        vocab: 151_936,
        tied: true,
    },
    Shape {
        name: "qwen3-1.7b",
        hidden: 2048,
        layers: 28,
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        intermediate: 6144,
        vocab: 151_936,
        tied: true,
    },
    // Qwen3-8B and Qwen3-32B (their config.json on the Hub); the NPU decode benchmark cuts
    // them to a few layers with `--layers` and scales per layer.
    Shape {
        name: "qwen3-8b",
        hidden: 4096,
        layers: 36,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        intermediate: 12288,
        vocab: 151_936,
        tied: false,
    },
    Shape {
        name: "qwen3-32b",
        hidden: 5120,
        layers: 64,
        heads: 64,
        kv_heads: 8,
        head_dim: 128,
        intermediate: 25600,
        vocab: 151_936,
        tied: false,
    },
    // The fixture's dimensions: small enough for tests.
    Shape {
        name: "tiny",
        hidden: 64,
        layers: 2,
        heads: 8,
        kv_heads: 2,
        head_dim: 32,
        intermediate: 128,
        vocab: 151_936,
        tied: true,
    },
];

impl Shape {
    pub fn by_name(name: &str) -> Result<Shape, SyntheticError> {
        SHAPES
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| SyntheticError::UnknownShape(name.to_string()))
    }

    /// The shape of a dense model's config (None for MoE models).
    pub fn from_config(c: &crate::config::ModelConfig) -> Option<Shape> {
        if c.moe.is_some() {
            return None;
        }
        Some(Shape {
            name: "config",
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            tied: c.tie_word_embeddings,
        })
    }

    /// Every tensor as (name, shape), in file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, d, i) = (self.hidden, self.head_dim, self.intermediate);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * d, h],
            ));
            t.push((
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * d, h],
            ));
            t.push((
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * d, h],
            ));
            t.push((
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, self.heads * d],
            ));
            t.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            t.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        t
    }

    /// Bytes of BF16 weights one decode token reads: every linear weight and the LM head
    /// (the embedding is a row lookup unless tied, when it is the LM head).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let (h, d, i) = (self.hidden, self.head_dim, self.intermediate);
        let per_layer = (self.heads + 2 * self.kv_heads) * d * h + h * self.heads * d + 3 * i * h;
        (2 * (self.layers * per_layer + self.vocab * h)) as u64
    }

    /// The Hugging Face config.json of this shape.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": 40960,
            "max_window_layers": self.layers,
            "model_type": "qwen3",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-6,
            "rope_scaling": null,
            "rope_theta": 1000000,
            "sliding_window": null,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "bfloat16",
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": self.vocab
        })
    }
}

/// SplitMix64: a tiny seeded generator, so the same seed writes the same file everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SyntheticError + '_ {
    move |source| SyntheticError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How [`write_model_as`] stores the linear weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Bf16,
    /// msModelSlim W8A8_DYNAMIC: each linear's BF16 weights quantized per output channel
    /// (symmetric INT8, F32 `weight_scale` `[n, 1]`, zero `weight_offset`), described in
    /// `quant_model_description.json`; embeddings and norms stay BF16.
    W8A8Dynamic,
}

fn is_linear(name: &str) -> bool {
    name.ends_with("_proj.weight")
}

/// Writes `config.json` and `model.safetensors` of `shape` into `dir` (created if missing).
/// Linear weights are uniform with the variance of `initializer_range` 0.02 scaled so
/// activations stay O(1); norm weights are 1. The tokenizer is not written: copy one beside.
pub fn write_model(dir: &Path, shape: &Shape, seed: u64) -> Result<(), SyntheticError> {
    write_model_as(dir, shape, seed, Storage::Bf16)
}

/// [`write_model`] with the linear weights stored as `storage` says (the same random model).
pub fn write_model_as(
    dir: &Path,
    shape: &Shape,
    seed: u64,
    storage: Storage,
) -> Result<(), SyntheticError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let w8a8 = storage == Storage::W8A8Dynamic;
    let mut cfg = shape.config_json();
    if w8a8 {
        cfg["quantize"] = "w8a8_dynamic".into();
    }
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    std::fs::write(&config, text).map_err(io_err(&config))?;

    let tensors = shape.tensors();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut desc = serde_json::Map::new();
    desc.insert("model_quant_type".into(), "W8A8_DYNAMIC".into());
    let mut offset = 0usize;
    let mut entry = |name: String, dtype: &str, dims: Vec<usize>, bytes: usize, scheme: &str| {
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": dims, "data_offsets": [offset, offset + bytes] }),
        );
        desc.insert(name, scheme.into());
        offset += bytes;
    };
    for (name, dims) in &tensors {
        let n = dims.iter().product::<usize>();
        if w8a8 && is_linear(name) {
            let base = name.trim_end_matches(".weight");
            entry(name.clone(), "I8", dims.clone(), n, "W8A8_DYNAMIC");
            for p in ["weight_scale", "weight_offset"] {
                entry(
                    format!("{base}.{p}"),
                    "F32",
                    vec![dims[0], 1],
                    4 * dims[0],
                    "W8A8_DYNAMIC",
                );
            }
        } else {
            entry(name.clone(), "BF16", dims.clone(), 2 * n, "FLOAT");
        }
    }
    if w8a8 {
        let path = dir.join(crate::modelslim::DESCRIPTION_FILE);
        let text =
            serde_json::to_string_pretty(&serde_json::Value::Object(desc)).unwrap_or_default();
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // The data starts 8-byte aligned, as safetensors writers pad it.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let path = dir.join("model.safetensors");
    let file = std::fs::File::create(&path).map_err(io_err(&path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|_| w.write_all(&header))
        .map_err(io_err(&path))?;
    let mut rng = SplitMix(seed);
    let mut buf = Vec::new();
    for (name, dims) in &tensors {
        let n: usize = dims.iter().product();
        buf.clear();
        if name.ends_with("norm.weight") {
            buf.extend(std::iter::repeat_n(bf16::ONE, n));
        } else {
            // Uniform in ±a has std a/√3: scale by fan-in so each product stays O(1).
            let fan_in = dims.last().copied().unwrap_or(1) as f32;
            let a = if name.contains("embed_tokens") || name.starts_with("lm_head") {
                0.05
            } else {
                3f32.sqrt() / fan_in.sqrt()
            };
            buf.extend((0..n).map(|_| bf16::from_f32(rng.uniform(a))));
        }
        if w8a8 && is_linear(name) {
            let k = dims.last().copied().unwrap_or(1);
            let (codes, scales) = quantize_rows(&buf, k);
            let zeros = vec![0f32; scales.len()];
            w.write_all(bytemuck::cast_slice(&codes))
                .and_then(|_| w.write_all(bytemuck::cast_slice(&scales)))
                .and_then(|_| w.write_all(bytemuck::cast_slice(&zeros)))
                .map_err(io_err(&path))?;
            continue;
        }
        w.write_all(bytemuck::cast_slice(&buf))
            .map_err(io_err(&path))?;
    }
    w.flush().map_err(io_err(&path))?;
    Ok(())
}

/// Symmetric per-row INT8 of `[rows, k]` values: codes and one scale (`max|w| / 127`) a row.
fn quantize_rows(v: &[bf16], k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(v.len() / k.max(1));
    for row in v.chunks(k.max(1)) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.to_f32().abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        codes.extend(
            row.iter()
                .map(|x| (x.to_f32() / s).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
        scales.push(s);
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightStore;

    #[test]
    fn w8a8_model_is_the_same_model_quantized() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shape = Shape::by_name("tiny").unwrap();
        write_model(a.path(), &shape, 5).unwrap();
        write_model_as(b.path(), &shape, 5, Storage::W8A8Dynamic).unwrap();
        let (fa, fb) = (
            WeightStore::open(a.path()).unwrap(),
            WeightStore::open(b.path()).unwrap(),
        );
        let name = "model.layers.0.mlp.down_proj";
        let w = fa.load_f32(&format!("{name}.weight"), &[64, 128]).unwrap();
        let (dt, codes) = fb.load_raw(&format!("{name}.weight"), &[64, 128]).unwrap();
        assert_eq!(dt, crate::weights::DType::I8);
        let s = fb
            .load_f32(&format!("{name}.weight_scale"), &[64, 1])
            .unwrap();
        for (i, (&c, &v)) in codes.iter().zip(&w).enumerate() {
            // Within half a quantization step of the BF16 weight.
            assert!((c as i8 as f32 * s[i / 128] - v).abs() <= 0.5 * s[i / 128] + 1e-7);
        }
        assert_eq!(
            fa.load_f32("model.norm.weight", &[64]).unwrap(),
            fb.load_f32("model.norm.weight", &[64]).unwrap()
        );
        let d = crate::modelslim::ModelSlim::from_dir(b.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            d.scheme(name).ok(),
            Some(crate::modelslim::Scheme::W8A8Dynamic)
        );
        assert_eq!(
            d.scheme("model.embed_tokens").ok(),
            Some(crate::modelslim::Scheme::Float)
        );
    }

    #[test]
    fn tiny_model_loads_and_matches_its_shape() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::by_name("tiny").unwrap();
        write_model(dir.path(), &shape, 7).unwrap();
        let store = WeightStore::open(dir.path()).unwrap();
        for (name, dims) in shape.tensors() {
            assert_eq!(store.info(&name).unwrap().shape, dims, "{name}");
        }
        let norm = store.load_f32("model.norm.weight", &[64]).unwrap();
        assert!(norm.iter().all(|&v| v == 1.0));
        let q = store
            .load_f32("model.layers.1.self_attn.q_proj.weight", &[256, 64])
            .unwrap();
        let bound = 3f32.sqrt() / 8.0 + 1e-3;
        assert!(q.iter().all(|v| v.abs() <= bound));
        assert!(q.iter().any(|&v| v != q[0]), "weights are not constant");
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let cfg = crate::config::ModelConfig::from_json_str(&text).unwrap();
        assert_eq!(cfg.hidden_size, 64);
        assert_eq!(cfg.num_hidden_layers, 2);
    }

    #[test]
    fn same_seed_same_weights() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shape = Shape::by_name("tiny").unwrap();
        write_model(a.path(), &shape, 3).unwrap();
        write_model(b.path(), &shape, 3).unwrap();
        let fa = std::fs::read(a.path().join("model.safetensors")).unwrap();
        let fb = std::fs::read(b.path().join("model.safetensors")).unwrap();
        assert_eq!(fa, fb);
        assert!(Shape::by_name("nope").is_err());
    }

    #[test]
    fn bytes_per_token_of_0_6b() {
        let s = Shape::by_name("qwen3-0.6b").unwrap();
        // 28 × 15,728,640 linear weights + the tied 151,936 × 1,024 head, 2 bytes each.
        assert_eq!(
            s.weight_bytes_per_token(),
            2 * (28 * 15_728_640 + 151_936 * 1024)
        );
    }
}
