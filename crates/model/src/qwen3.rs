//! The Qwen3 forward pass (dense and MoE), written once over the backend's ops, and the
//! loading of one tensor-parallel rank's shard straight from the safetensors slices it needs.

use std::ops::Range;
use std::path::Path;

use qwen3_backend::comm::Communicator;
use qwen3_backend::{AttnGeometry, Backend, HostVec, KvCacheShape, MoeWeights, RopeSpec, StepMeta};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::modelslim::{load_w8a8, ModelSlim, Scheme, W8A8Owned};
use crate::quant_config::QuantConfig;
use crate::quant_unpack::{load_packed, Unpacked, Window};
use crate::rope::rope_spec;
use crate::weights::WeightStore;

/// How weights are kept on the device (`--dtype`). Not the element type a checkpoint stores
/// ([`crate::weights::DType`], converted from at load) nor a device's own descriptor types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    BF16,
    F32,
}

/// Which slice of the model a rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// `[start, start + len)` of `total` items split evenly (the last ranks may get one less).
    pub fn range(&self, total: usize) -> (usize, usize) {
        let base = total / self.world;
        let extra = total % self.world;
        let start = self.rank * base + self.rank.min(extra);
        let len = base + usize::from(self.rank < extra);
        (start, len)
    }
}

/// Tensor parallelism over `world` ranks must split the attention heads, the key/value heads
/// (or replicate them, with more ranks than KV heads) and the MLP widths the model uses
/// evenly. Checked when a rank's heads are planned, and by start-up before anything loads.
pub fn check_tp_split(cfg: &ModelConfig, world: usize) -> Result<(), ModelError> {
    let (hq, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let refuse = |what: String| {
        Err(ModelError::Invalid(format!(
            "tensor parallel size {world} must {what}"
        )))
    };
    if world == 0 || !hq.is_multiple_of(world) {
        return refuse(format!("divide the {hq} attention heads"));
    }
    if (hkv >= world && !hkv.is_multiple_of(world))
        || (hkv < world && (hkv == 0 || !world.is_multiple_of(hkv)))
    {
        return refuse(format!(
            "divide, or be a multiple of, the {hkv} key/value heads"
        ));
    }
    let layers = 0..cfg.num_hidden_layers;
    let i = cfg.intermediate_size;
    if layers.clone().any(|l| !cfg.is_moe_layer(l)) && !i.is_multiple_of(world) {
        return refuse(format!("divide intermediate_size {i}"));
    }
    if let Some(moe) = cfg
        .moe
        .as_ref()
        .filter(|_| layers.clone().any(|l| cfg.is_moe_layer(l)))
    {
        let im = moe.moe_intermediate_size;
        if !im.is_multiple_of(world) {
            return refuse(format!("divide moe_intermediate_size {im}"));
        }
    }
    Ok(())
}

/// Attention heads of one rank: its query heads, and the KV heads those need (replicated
/// across ranks when there are more ranks than KV heads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadPlan {
    pub q_start: usize,
    pub q_heads: usize,
    pub kv_start: usize,
    pub kv_heads: usize,
}

impl HeadPlan {
    pub fn new(cfg: &ModelConfig, shard: Shard) -> Result<Self, ModelError> {
        let (hq, hkv, w) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            shard.world,
        );
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(ModelError::Invalid(format!(
                "{hq} attention heads are not a multiple of {hkv} key/value heads"
            )));
        }
        check_tp_split(cfg, w)?;
        let q_heads = hq / w;
        let q_start = shard.rank * q_heads;
        let (kv_start, kv_heads) = if hkv >= w {
            (shard.rank * hkv / w, hkv / w)
        } else {
            (shard.rank * hkv / w, 1)
        };
        Ok(Self {
            q_start,
            q_heads,
            kv_start,
            kv_heads,
        })
    }
}

enum Mlp<T> {
    Dense {
        gate: T,
        up: T,
        down: T,
    },
    /// Gate and up as one `[2 * intermediate, hidden]` weight, gate rows first (backends
    /// where a launch costs more than the matmul: [`Backend::merges_gate_up`]).
    DenseMerged {
        gate_up: T,
        down: T,
    },
    Moe {
        router: T,
        experts: MoeWeights<T>,
    },
}

struct Layer<T> {
    input_norm: T,
    post_attn_norm: T,
    q: T,
    k: T,
    v: T,
    o: T,
    q_norm: T,
    k_norm: T,
    mlp: Mlp<T>,
    sliding_window: Option<usize>,
}

/// What a pipeline stage hands the next, `[tokens, hidden]` each: the residual stream and
/// the last layer's all-reduced MLP output, not yet added, so that the next stage's first
/// norm fuses the add exactly as one node would (vLLM's `IntermediateTensors` carry the same
/// pair).
pub struct StageHidden<T> {
    pub residual: T,
    pub mlp_out: T,
}

/// What [`Qwen3::stage_forward`] gives back.
pub enum StageOut<T> {
    /// Not the last stage: the next one's input.
    Hidden(StageHidden<T>),
    /// The last stage: final-normed hidden states.
    Normed(T),
}

/// One rank's shard of a Qwen3 model on backend `B`.
pub struct Qwen3<B: Backend> {
    pub config: ModelConfig,
    pub shard: Shard,
    pub heads: HeadPlan,
    pub rope: RopeSpec,
    /// The decoder layers this rank runs (all but on a pipeline stage, see
    /// [`crate::pipeline`]); `layers[i]` is model layer `stage.start + i`.
    pub stage: Range<usize>,
    /// On the first pipeline stage, and on the last when tied to the LM head.
    embed: Option<B::Tensor>,
    /// None when tied to the embedding.
    lm_head: Option<B::Tensor>,
    vocab_start: usize,
    /// The final norm: on the last pipeline stage only.
    norm: Option<B::Tensor>,
    layers: Vec<Layer<B::Tensor>>,
    eps: f32,
    weight_bytes: u64,
}

/// The part of a `[out, in]` linear of `shape` a rank holds: `len` items from `start` along
/// `dim` (0: outputs, 1: inputs).
fn window(shape: &[usize], dim: usize, (start, len): (usize, usize)) -> Window {
    let mut w = Window::whole(shape[0], shape[1]);
    if dim == 0 {
        w.out = (start, len);
    } else {
        w.inp = (start, len);
    }
    w
}

/// Reads tensors of one rank from the store and uploads them.
struct Loader<'a, B: Backend> {
    store: &'a WeightStore,
    backend: &'a B,
    dtype: WeightDType,
    /// The checkpoint's quantization_config, if any.
    quant: Option<QuantConfig>,
    /// The msModelSlim description (W8A8), if any.
    modelslim: Option<ModelSlim>,
    bytes: u64,
}

impl<B: Backend> Loader<'_, B> {
    /// The whole tensor.
    fn full(&mut self, name: &str, shape: &[usize]) -> Result<B::Tensor, ModelError> {
        self.slice(name, shape, 0, 0, shape.first().copied().unwrap_or(1))
    }

    /// `len` items from `start` along `dim` of a tensor of `shape`.
    fn slice(
        &mut self,
        name: &str,
        shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<B::Tensor, ModelError> {
        let mut out_shape = shape.to_vec();
        out_shape[dim] = len;
        let whole = start == 0 && len == shape[dim];
        let t = match self.dtype {
            WeightDType::BF16 => {
                let data = if whole {
                    self.store.load_bf16(name, shape)?
                } else {
                    self.store.load_bf16_slice(name, shape, dim, start, len)?
                };
                self.backend.upload_owned(HostVec::BF16(data), &out_shape)?
            }
            WeightDType::F32 => {
                let data = if whole {
                    self.store.load_f32(name, shape)?
                } else {
                    self.store.load_f32_slice(name, shape, dim, start, len)?
                };
                self.backend.upload_owned(HostVec::F32(data), &out_shape)?
            }
        };
        self.bytes += self.backend.size_bytes(&t);
        Ok(t)
    }

    /// The linear `prefix` of shape `[out, in]` (`prefix.weight`, or `prefix.qweight` and its
    /// companions when quantized), `len` items from `start` along `dim`.
    fn linear(
        &mut self,
        prefix: &str,
        shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<B::Tensor, ModelError> {
        if let Some(scheme) = self.w8a8_scheme(prefix)? {
            let o = load_w8a8(
                self.store,
                prefix,
                shape[0],
                shape[1],
                scheme,
                window(shape, dim, (start, len)),
            )?;
            return self.upload_w8a8(&o);
        }
        if !self.is_quantized(prefix) {
            return self.slice(&format!("{prefix}.weight"), shape, dim, start, len);
        }
        let u = self.unpack_slice(prefix, shape, dim, (start, len))?;
        let t = self.backend.upload_quantized(&u.host())?;
        self.bytes += self.backend.size_bytes(&t);
        Ok(t)
    }

    /// The W8A8 scheme of linear `prefix`; None when it is kept as stored.
    fn w8a8_scheme(&self, prefix: &str) -> Result<Option<Scheme>, ModelError> {
        match &self.modelslim {
            None => Ok(None),
            Some(ms) => Ok(Some(ms.scheme(prefix)?).filter(|&s| s != Scheme::Float)),
        }
    }

    fn upload_w8a8(&mut self, o: &W8A8Owned) -> Result<B::Tensor, ModelError> {
        let t = self.backend.upload_w8a8(&o.host())?;
        self.bytes += self.backend.size_bytes(&t);
        Ok(t)
    }

    /// The linears `prefixes` (each `[out, in]`, rows `start..start + len` of each) stacked
    /// along the output rows as one weight; None when one is quantized, AWQ/GPTQ or W8A8
    /// (their packed groups and scales stay per projection).
    fn stacked_rows(
        &mut self,
        prefixes: &[&str],
        shape: &[usize],
        (start, len): (usize, usize),
    ) -> Result<Option<B::Tensor>, ModelError> {
        for p in prefixes {
            if self.is_quantized(p) || self.w8a8_scheme(p)?.is_some() {
                return Ok(None);
            }
        }
        let out_shape = [len * prefixes.len(), shape[1]];
        let t = match self.dtype {
            WeightDType::BF16 => {
                let mut all = Vec::with_capacity(out_shape[0] * out_shape[1]);
                for p in prefixes {
                    let name = format!("{p}.weight");
                    self.store
                        .append_bf16_slice(&name, shape, 0, start, len, &mut all)?;
                }
                self.backend.upload_owned(HostVec::BF16(all), &out_shape)?
            }
            WeightDType::F32 => {
                let mut all = Vec::with_capacity(out_shape[0] * out_shape[1]);
                for p in prefixes {
                    let name = format!("{p}.weight");
                    self.store
                        .append_f32_slice(&name, shape, 0, start, len, &mut all)?;
                }
                self.backend.upload_owned(HostVec::F32(all), &out_shape)?
            }
        };
        self.bytes += self.backend.size_bytes(&t);
        Ok(Some(t))
    }

    fn is_quantized(&self, prefix: &str) -> bool {
        self.store.contains(&format!("{prefix}.qweight"))
    }

    fn unpack_slice(
        &self,
        prefix: &str,
        shape: &[usize],
        dim: usize,
        (start, len): (usize, usize),
    ) -> Result<Unpacked, ModelError> {
        let q = self.quant.as_ref().ok_or_else(|| {
            ModelError::Invalid(format!(
                "`{prefix}.qweight` is quantized, but config.json has no quantization_config"
            ))
        })?;
        load_packed(
            self.store,
            prefix,
            shape[0],
            shape[1],
            q,
            window(shape, dim, (start, len)),
        )
    }

    /// Experts `0..n` of `model.layers.L.mlp.experts.E.<proj>.weight`, stacked, each sliced.
    fn stacked_experts(
        &mut self,
        prefix: &str,
        proj: &str,
        n: usize,
        shape: &[usize],
        dim: usize,
        (start, len): (usize, usize),
    ) -> Result<B::Tensor, ModelError> {
        if let Some(scheme) = self.w8a8_scheme(&format!("{prefix}.experts.0.{proj}"))? {
            if scheme != Scheme::W8A8Dynamic {
                return Err(ModelError::Invalid(format!(
                    "`{prefix}.experts.0.{proj}` is static W8A8; MoE experts take W8A8_DYNAMIC \
                     only (as vllm-ascend)"
                )));
            }
            let parts = (0..n)
                .map(|e| {
                    let p = format!("{prefix}.experts.{e}.{proj}");
                    let s = self.w8a8_scheme(&p)?;
                    if s != Some(scheme) {
                        return Err(ModelError::Invalid(format!(
                            "`{p}` is {s:?} but expert 0 is {scheme:?}: one scheme per layer"
                        )));
                    }
                    load_w8a8(
                        self.store,
                        &p,
                        shape[0],
                        shape[1],
                        scheme,
                        window(shape, dim, (start, len)),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            return self.upload_w8a8(&W8A8Owned::stack(parts)?);
        }
        if self.is_quantized(&format!("{prefix}.experts.0.{proj}")) {
            let parts = (0..n)
                .map(|e| {
                    let p = format!("{prefix}.experts.{e}.{proj}");
                    self.unpack_slice(&p, shape, dim, (start, len))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let t = self
                .backend
                .upload_quantized(&Unpacked::stack(parts)?.host())?;
            self.bytes += self.backend.size_bytes(&t);
            return Ok(t);
        }
        let mut out_shape = shape.to_vec();
        out_shape[dim] = len;
        let per = out_shape.iter().product::<usize>();
        let mut out_shape3 = vec![n];
        out_shape3.extend_from_slice(&out_shape);
        let t = match self.dtype {
            WeightDType::BF16 => {
                let mut all = Vec::with_capacity(per * n);
                for e in 0..n {
                    let name = format!("{prefix}.experts.{e}.{proj}.weight");
                    self.store
                        .append_bf16_slice(&name, shape, dim, start, len, &mut all)?;
                }
                self.backend.upload_owned(HostVec::BF16(all), &out_shape3)?
            }
            WeightDType::F32 => {
                let mut all = Vec::with_capacity(per * n);
                for e in 0..n {
                    let name = format!("{prefix}.experts.{e}.{proj}.weight");
                    self.store
                        .append_f32_slice(&name, shape, dim, start, len, &mut all)?;
                }
                self.backend.upload_owned(HostVec::F32(all), &out_shape3)?
            }
        };
        self.bytes += self.backend.size_bytes(&t);
        Ok(t)
    }
}

impl<B: Backend> Qwen3<B> {
    /// Loads rank `shard` of the model in `dir` (config already parsed, overrides applied).
    pub fn load(
        backend: &B,
        dir: &Path,
        config: ModelConfig,
        dtype: WeightDType,
        shard: Shard,
    ) -> Result<Self, ModelError> {
        let store = WeightStore::open(dir)?;
        Self::load_from_store(backend, &store, config, dtype, shard)
    }

    pub fn load_from_store(
        backend: &B,
        store: &WeightStore,
        config: ModelConfig,
        dtype: WeightDType,
        shard: Shard,
    ) -> Result<Self, ModelError> {
        let all = 0..config.num_hidden_layers;
        Self::load_stage(backend, store, config, dtype, shard, all)
    }

    /// Loads rank `shard` of the pipeline stage running decoder layers `stage` only: the
    /// embedding on the first stage, the final norm and the LM head on the last.
    pub fn load_stage(
        backend: &B,
        store: &WeightStore,
        config: ModelConfig,
        dtype: WeightDType,
        shard: Shard,
        stage: Range<usize>,
    ) -> Result<Self, ModelError> {
        let cfg = &config;
        if stage.is_empty() || stage.end > cfg.num_hidden_layers {
            return Err(ModelError::Invalid(format!(
                "pipeline stage of layers {stage:?} in a model of {} layers",
                cfg.num_hidden_layers
            )));
        }
        let (first, last) = (stage.start == 0, stage.end == cfg.num_hidden_layers);
        let heads = HeadPlan::new(cfg, shard)?;
        let (h, d, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let (hq, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let mut ld = Loader {
            store,
            backend,
            dtype,
            quant: QuantConfig::from_json(cfg.quantization_config.as_ref())?,
            modelslim: ModelSlim::from_dir(store.dir())?,
            bytes: 0,
        };
        let vocab = shard.range(v);
        let embed = if first || (last && cfg.tie_word_embeddings) {
            Some(ld.slice("model.embed_tokens.weight", &[v, h], 0, vocab.0, vocab.1)?)
        } else {
            None
        };
        let lm_head = if cfg.tie_word_embeddings || !last {
            None
        } else {
            Some(ld.slice("lm_head.weight", &[v, h], 0, vocab.0, vocab.1)?)
        };
        let norm = if last {
            Some(ld.full("model.norm.weight", &[h])?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(stage.len());
        for l in stage.clone() {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let (qs, qn) = (heads.q_start * d, heads.q_heads * d);
            let (ks, kn) = (heads.kv_start * d, heads.kv_heads * d);
            let mlp = if cfg.is_moe_layer(l) {
                let moe = cfg.moe.as_ref().ok_or_else(|| {
                    ModelError::Invalid(format!("layer {l} is MoE but the config has no experts"))
                })?;
                let (ne, im) = (moe.num_experts, moe.moe_intermediate_size);
                let cols = shard.range(im);
                let m = format!("{p}.mlp");
                Mlp::Moe {
                    router: ld.full(&format!("{m}.gate.weight"), &[ne, h])?,
                    experts: MoeWeights {
                        gate: ld.stacked_experts(&m, "gate_proj", ne, &[im, h], 0, cols)?,
                        up: ld.stacked_experts(&m, "up_proj", ne, &[im, h], 0, cols)?,
                        down: ld.stacked_experts(&m, "down_proj", ne, &[h, im], 1, cols)?,
                        num_experts: ne,
                        top_k: moe.num_experts_per_tok,
                        renormalize: moe.norm_topk_prob,
                    },
                }
            } else {
                let i = cfg.intermediate_size;
                let (is, il) = shard.range(i);
                let (gp, upp) = (format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj"));
                let down = format!("{p}.mlp.down_proj");
                // This rank's rows of each: the merged weight is TP-sharded like the two.
                let merged = if backend.merges_gate_up() {
                    ld.stacked_rows(&[&gp, &upp], &[i, h], (is, il))?
                } else {
                    None
                };
                match merged {
                    Some(gate_up) => Mlp::DenseMerged {
                        gate_up,
                        down: ld.linear(&down, &[h, i], 1, is, il)?,
                    },
                    None => Mlp::Dense {
                        gate: ld.linear(&gp, &[i, h], 0, is, il)?,
                        up: ld.linear(&upp, &[i, h], 0, is, il)?,
                        down: ld.linear(&down, &[h, i], 1, is, il)?,
                    },
                }
            };
            layers.push(Layer {
                input_norm: ld.full(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attn_norm: ld.full(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                q: ld.linear(&format!("{a}.q_proj"), &[hq * d, h], 0, qs, qn)?,
                k: ld.linear(&format!("{a}.k_proj"), &[hkv * d, h], 0, ks, kn)?,
                v: ld.linear(&format!("{a}.v_proj"), &[hkv * d, h], 0, ks, kn)?,
                o: ld.linear(&format!("{a}.o_proj"), &[h, hq * d], 1, qs, qn)?,
                q_norm: ld.full(&format!("{a}.q_norm.weight"), &[d])?,
                k_norm: ld.full(&format!("{a}.k_norm.weight"), &[d])?,
                mlp,
                sliding_window: if cfg.layer_uses_sliding_window(l) {
                    cfg.sliding_window
                } else {
                    None
                },
            });
        }
        let weight_bytes = ld.bytes;
        Ok(Self {
            rope: rope_spec(cfg),
            eps: cfg.rms_norm_eps as f32,
            heads,
            shard,
            stage,
            embed,
            lm_head,
            vocab_start: vocab.0,
            norm,
            layers,
            weight_bytes,
            config,
        })
    }

    /// Device bytes of this rank's weights.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// This rank's KV cache geometry for `num_blocks` blocks.
    pub fn kv_shape(&self, num_blocks: usize, block_size: usize) -> KvCacheShape {
        KvCacheShape {
            num_layers: self.layers.len(),
            num_blocks,
            block_size,
            num_kv_heads: self.heads.kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Runs the step and returns the logits `[rows.len(), vocab]` of the given token rows
    /// (complete on every rank after the gather).
    pub fn forward(
        &self,
        backend: &B,
        comm: &dyn Communicator<B>,
        meta: &StepMeta<'_>,
        kv: &mut B::KvCache,
        rows: &[u32],
    ) -> Result<B::Tensor, ModelError> {
        let hidden = self.hidden(backend, comm, meta, kv)?;
        self.logits(backend, comm, &hidden, rows)
    }

    /// Runs the step's layers and returns the final-normed hidden states `[tokens, hidden]`
    /// of every token, from which [`Self::logits`] takes the rows it needs.
    pub fn hidden(
        &self,
        backend: &B,
        comm: &dyn Communicator<B>,
        meta: &StepMeta<'_>,
        kv: &mut B::KvCache,
    ) -> Result<B::Tensor, ModelError> {
        match self.stage_forward(backend, comm, meta, kv, None)? {
            StageOut::Normed(h) => Ok(h),
            StageOut::Hidden(_) => Err(ModelError::Invalid(format!(
                "layers {:?} are not the model's last stage: it has no final norm",
                self.stage
            ))),
        }
    }

    /// Whether this rank holds the first pipeline stage (it embeds the tokens).
    pub fn is_first_stage(&self) -> bool {
        self.stage.start == 0
    }

    /// Whether this rank holds the last pipeline stage (final norm, LM head, sampling).
    pub fn is_last_stage(&self) -> bool {
        self.stage.end == self.config.num_hidden_layers
    }

    /// Runs this stage's layers on `input`, the previous stage's hand-off (None on the first
    /// stage, which embeds the step's tokens): the next stage's hand-off, or on the last
    /// stage the final-normed hidden states.
    pub fn stage_forward(
        &self,
        backend: &B,
        comm: &dyn Communicator<B>,
        meta: &StepMeta<'_>,
        kv: &mut B::KvCache,
        input: Option<StageHidden<B::Tensor>>,
    ) -> Result<StageOut<B::Tensor>, ModelError> {
        let step = backend.prepare_step(meta)?;
        let d = self.config.head_dim;
        let geometry = AttnGeometry {
            num_heads: self.heads.q_heads,
            num_kv_heads: self.heads.kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            sliding_window: None,
        };
        let (mut residual, mut pending) = match (input, &self.embed) {
            (Some(h), _) => (h.residual, Some(h.mlp_out)),
            (None, Some(embed)) if self.is_first_stage() => {
                let mut r = backend.embedding(embed, &step, self.vocab_start)?;
                comm.all_reduce_sum(backend, &mut r)?;
                (r, None)
            }
            (None, _) => {
                return Err(ModelError::Invalid(format!(
                    "layers {:?} need the previous stage's hidden states",
                    self.stage
                )))
            }
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let x = match pending.take() {
                None => backend.rms_norm(&residual, &layer.input_norm, self.eps)?,
                Some(out) => {
                    backend.add_rms_norm(&out, &mut residual, &layer.input_norm, self.eps)?
                }
            };
            let mut q = backend.linear(&x, &layer.q)?;
            let k = backend.linear(&x, &layer.k)?;
            let v = backend.linear(&x, &layer.v)?;
            let norms = (&layer.q_norm, &layer.k_norm);
            backend.qk_norm_rope_write_kv(&mut q, k, &v, norms, self.eps, kv, l, &step, d)?;
            let g = AttnGeometry {
                sliding_window: layer.sliding_window,
                ..geometry
            };
            let attn = backend.attention(&q, kv, l, &step, &g)?;
            let mut o = backend.linear(&attn, &layer.o)?;
            comm.all_reduce_sum(backend, &mut o)?;
            let x = backend.add_rms_norm(&o, &mut residual, &layer.post_attn_norm, self.eps)?;
            let mut y = match &layer.mlp {
                Mlp::Dense { gate, up, down } => {
                    let g = backend.linear(&x, gate)?;
                    let u = backend.linear(&x, up)?;
                    backend.linear(&backend.silu_mul(&g, &u)?, down)?
                }
                Mlp::DenseMerged { gate_up, down } => {
                    let gu = backend.linear(&x, gate_up)?;
                    backend.linear(&backend.silu_mul_merged(&gu)?, down)?
                }
                Mlp::Moe { router, experts } => {
                    let logits = backend.linear(&x, router)?;
                    backend.moe(&x, &logits, experts)?
                }
            };
            comm.all_reduce_sum(backend, &mut y)?;
            pending = Some(y);
        }
        let Some(norm) = &self.norm else {
            // Every stage has a layer, so `pending` holds the last one's MLP output.
            return match pending {
                Some(mlp_out) => Ok(StageOut::Hidden(StageHidden { residual, mlp_out })),
                None => Err(ModelError::Invalid(
                    "a pipeline stage without layers".into(),
                )),
            };
        };
        Ok(StageOut::Normed(match pending {
            Some(out) => backend.add_rms_norm(&out, &mut residual, norm, self.eps)?,
            None => backend.rms_norm(&residual, norm, self.eps)?,
        }))
    }

    /// The logits `[rows.len(), vocab]` of the given rows of `hidden` (a collective at TP > 1:
    /// every rank calls it with the same rows).
    pub fn logits(
        &self,
        backend: &B,
        comm: &dyn Communicator<B>,
        hidden: &B::Tensor,
        rows: &[u32],
    ) -> Result<B::Tensor, ModelError> {
        let picked = backend.select_rows(hidden, rows)?;
        let head = self
            .lm_head
            .as_ref()
            .or(self.embed.as_ref())
            .filter(|_| self.is_last_stage())
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "layers {:?} are not the model's last stage: it has no LM head",
                    self.stage
                ))
            })?;
        let local = backend.linear(&picked, head)?;
        Ok(comm.all_gather_cols(backend, local)?)
    }
}
