//! Wiring: model directory → config → executor → engine (→ server).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use qwen3_backend::cpu::{CpuDType, CpuPrecision};
use qwen3_backend::Backend;
use qwen3_backend_ascend::device_query::{self, Cann};
use qwen3_backend_ascend::{AscendOptions, AttentionBackend};
use qwen3_engine::batch::SamplingParams;
use qwen3_engine::{EngineConfig, EngineHandle, EngineRequest};
use qwen3_model::config::ModelConfig;
use qwen3_model::load::{load_executor, LoadOptions, Placement};
use qwen3_model::profile::{decode_warmup, profile_step};
use qwen3_model::qwen3::check_tp_split;
use qwen3_model::{ResizableExecutor, WeightDType};
use tracing::info;

use crate::cli::{
    AttentionBackendArg, DTypeArg, DeviceArg, GenerateArgs, KvCacheDTypeArg, ModelArgs, ServeArgs,
};
use crate::model_dir;

/// The CPU KV cache default when no space is given, as vLLM's CPU backend (4 GiB).
const DEFAULT_CPU_KV_SPACE: u64 = 4 << 30;
/// Tokens of the NPU's profiling pass (scaled up to max-num-batched-tokens).
const PROFILE_TOKENS: usize = 512;
/// Tokens of the CPU's profiling pass: 512 took 4 of the 5.5–6 s to `/health` on the 0.6B
/// shape (2 cores). Scaling 64 linearly over-counts the step's fixed part (scratch, the
/// sampled row's logits) some 30 times, tens of MiB of a KV budget of GiBs.
const CPU_PROFILE_TOKENS: usize = 64;
/// Tokens per step with chunked prefill when --max-num-batched-tokens is not given (vLLM V1's
/// default for online serving).
const CHUNKED_PREFILL_TOKENS: usize = 8192;
const GIB: f64 = (1u64 << 30) as f64;

/// A loaded model, ready for an engine.
pub struct Loaded {
    pub dir: PathBuf,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub engine_config: EngineConfig,
    pub executor: Box<dyn qwen3_engine::Executor>,
    /// Rows of the model's logits (at least the tokenizer's size).
    pub vocab_size: usize,
    /// The NPUs serving (ACL device ids); empty on the CPU.
    pub npus: Vec<i32>,
}

/// Engine limits that are not part of model loading.
pub struct Limits {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: Option<usize>,
    pub block_size: Option<usize>,
    pub memory_utilization: f64,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    pub max_waiting_requests: usize,
    /// None: the device's default (on for the NPU, off for the CPU).
    pub async_scheduling: Option<bool>,
}

fn model_config(dir: &std::path::Path, args: &ModelArgs) -> anyhow::Result<ModelConfig> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .with_context(|| format!("reading {}/config.json", dir.display()))?;
    let mut overrides = match &args.hf_overrides {
        Some(s) => {
            serde_json::from_str::<serde_json::Value>(s).context("--hf-overrides is not JSON")?
        }
        None => serde_json::json!({}),
    };
    if let Some(s) = &args.rope_scaling {
        let v: serde_json::Value = serde_json::from_str(s).context("--rope-scaling is not JSON")?;
        if let Some(o) = overrides.as_object_mut() {
            o.insert("rope_scaling".into(), v);
        }
    }
    let has = overrides.as_object().is_some_and(|o| !o.is_empty());
    Ok(ModelConfig::from_json_str_with_overrides(
        &text,
        has.then_some(&overrides),
    )?)
}

/// EOS ids: the model's, plus generation_config.json's (Qwen3 lists <|im_end|> there).
fn eos_ids(dir: &std::path::Path, config: &ModelConfig) -> Vec<u32> {
    let mut ids = config.eos_token_ids.clone();
    if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            match v.get("eos_token_id") {
                Some(serde_json::Value::Array(a)) => {
                    ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
                }
                Some(x) => ids.extend(x.as_u64().map(|x| x as u32)),
                None => {}
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Quantized (AWQ / GPTQ, and Ascend's msModelSlim W8A8) checkpoints are recognised and
/// checked against --quantization; the loader unpacks them (the backend must support them).
fn check_quantization(
    config: &ModelConfig,
    dir: &std::path::Path,
    flag: Option<&str>,
) -> anyhow::Result<()> {
    use qwen3_model::modelslim::{ModelSlim, FLAG};
    use qwen3_model::quant_config::QuantConfig;
    let slim = ModelSlim::from_dir(dir)?;
    if slim.is_some() || flag.is_some_and(|f| f.eq_ignore_ascii_case(FLAG)) {
        ModelSlim::check_flag(slim.as_ref(), flag)?;
        if let Some(s) = slim {
            tracing::info!(scheme = s.model_quant_type, "msModelSlim W8A8 model");
        }
        return Ok(());
    }
    let q = QuantConfig::from_json(config.quantization_config.as_ref())?;
    QuantConfig::check_flag(q.as_ref(), flag)?;
    if let Some(q) = q {
        tracing::info!(
            method = q.method.name(),
            bits = q.bits,
            group_size = q
                .group_size
                .map_or("all inputs".to_string(), |g| g.to_string()),
            act_order = q.act_order,
            "quantized model"
        );
    }
    Ok(())
}

/// Devices listed in ASCEND_RT_VISIBLE_DEVICES, if set.
fn visible_npus() -> Option<usize> {
    let v = std::env::var("ASCEND_RT_VISIBLE_DEVICES").ok()?;
    Some(v.split(',').filter(|s| !s.trim().is_empty()).count())
}

/// Resolves --device: `npu` needs CANN and `world` devices; `auto` takes the NPU when both are
/// there and says why not otherwise.
/// On the NPU, decode graphs are captured unless `enforce_eager`.
pub fn pick_device(
    device: DeviceArg,
    world: usize,
    enforce_eager: bool,
) -> anyhow::Result<Placement> {
    if device == DeviceArg::Npu {
        if let Some(n) = visible_npus() {
            if n < world {
                bail!(
                    "--tensor-parallel-size {world} needs {world} NPUs, but ASCEND_RT_VISIBLE_DEVICES lists only {n}"
                );
            }
        }
    }
    if device == DeviceArg::Cpu {
        info!("device: cpu (as asked)");
        return Ok(Placement::Cpu {
            precision: CpuPrecision::default(),
        });
    }
    let npus = Cann::load()
        .map_err(anyhow::Error::from)
        .and_then(|cann| Ok((device_query::device_count(&cann)?, cann)));
    match (device, npus) {
        (DeviceArg::Npu | DeviceArg::Cpu, Err(e)) => {
            bail!("--device npu: CANN could not be used: {e:#}")
        }
        (DeviceArg::Npu, Ok((n, _))) if (n as usize) < world => bail!(
            "--device npu: --tensor-parallel-size {world} needs {world} NPUs, but CANN sees {n}"
        ),
        (DeviceArg::Auto, Err(e)) => {
            info!("device: cpu (auto: no usable CANN: {e:#})");
            Ok(Placement::Cpu {
                precision: CpuPrecision::default(),
            })
        }
        (DeviceArg::Auto, Ok((n, _))) if (n as usize) < world => {
            info!("device: cpu (auto: CANN sees {n} NPUs, --tensor-parallel-size {world} needs {world})");
            Ok(Placement::Cpu {
                precision: CpuPrecision::default(),
            })
        }
        (_, Ok((n, cann))) => {
            let devices: Vec<i32> = (0..world as i32).collect();
            info!(
                "device: npu {devices:?} of {n} ({}; CANN {})",
                if device == DeviceArg::Auto {
                    "auto"
                } else {
                    "as asked"
                },
                cann.cann_version()
                    .unwrap_or_else(|| "version unknown".into())
            );
            if enforce_eager {
                info!("--enforce-eager: decode graphs off");
            }
            Ok(Placement::Npu {
                cann: Arc::new(cann),
                devices,
                // Decode graphs cut the host time between launches; the backend captures whole
                // steps where CANN has the task-update API (piecewise, single-rank only,
                // where not) and falls back to eager where CANN cannot capture.
                // `QWEN3_SERVE_DECODE_GRAPHS=piecewise` keeps them piecewise, to compare.
                options: AscendOptions {
                    graph_capture: !enforce_eager,
                    full_graph: std::env::var("QWEN3_SERVE_DECODE_GRAPHS")
                        .map_or(true, |v| v != "piecewise"),
                    ..Default::default()
                },
            })
        }
    }
}

pub fn load(args: &ModelArgs, limits: &Limits) -> anyhow::Result<Loaded> {
    if let Some(n) = args.cpu_threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting --cpu-threads")?;
    }
    let requested = args.model.as_deref().or(args.model_flag.as_deref());
    let use_modelscope = args.use_modelscope
        || std::env::var("VLLM_USE_MODELSCOPE")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let hub = qwen3_hub::HubOptions {
        download_dir: args.download_dir.clone(),
        use_modelscope,
        ..Default::default()
    };
    let (dir, bundled) = model_dir::resolve(requested, &hub)?;
    if bundled {
        info!(
            "no MODEL given: serving the bundled tiny fixture model at {} — its weights are RANDOM, so its text is gibberish",
            dir.display()
        );
    }
    let config = model_config(&dir, args)?;
    let world = args.tensor_parallel_size;
    check_tp_split(&config, world)?;
    check_quantization(&config, &dir, args.quantization.as_deref())?;
    let mut placement = pick_device(args.device, world, args.enforce_eager)?;
    if let Placement::Npu { options, .. } = &mut placement {
        options.attention_backend = match args.attention_backend {
            AttentionBackendArg::Fia => AttentionBackend::Fia,
            AttentionBackendArg::Custom => AttentionBackend::Custom,
        };
        options.fused_qk_norm_rope_cache = !args.no_fused_qk_norm_rope_cache;
        if args.nnodes > 1 && options.graph_capture {
            // Pipeline ranks run eagerly (`multinode::executor`): capturing here, or warming
            // graphs up again after the KV resize, would only run steps no graph keeps.
            info!("--nnodes > 1: decode graphs off (pipeline stages run eagerly)");
            options.graph_capture = false;
        }
        if options.graph_capture {
            options.capture_batch_sizes =
                capture_sizes(&options.capture_batch_sizes, &config, limits.max_num_seqs);
        }
    }
    let role = if args.nnodes > 1 {
        Some(crate::multinode::start(
            args,
            &dir,
            &placement,
            config.num_hidden_layers,
        )?)
    } else {
        None
    };
    let max_model_len = max_model_len(&config, args.max_model_len)?;
    let on_npu = matches!(placement, Placement::Npu { .. });
    let dtype = weight_dtype(args.dtype, on_npu, config.head_dim);
    if let Placement::Cpu { precision } = &mut placement {
        *precision = cpu_precision(args.dtype, args.kv_cache_dtype);
        info!(
            "cpu precision: matmul inputs {}, KV cache {}",
            precision.activations.name(),
            precision.kv_cache.name()
        );
    }
    let block_size = block_size(limits.block_size, &placement, dtype)?;
    let chunked = limits.enable_chunked_prefill;
    let max_num_batched_tokens = limits
        .max_num_batched_tokens
        .unwrap_or_else(|| default_max_num_batched_tokens(chunked, max_model_len));
    // Load with a KV cache just big enough for the profiling pass; resize it after.
    let profile_tokens = max_num_batched_tokens.min(match placement {
        Placement::Cpu { .. } => CPU_PROFILE_TOKENS,
        Placement::Npu { .. } => PROFILE_TOKENS,
    });
    let opts = LoadOptions {
        dir: dir.clone(),
        config: config.clone(),
        dtype,
        tensor_parallel_size: world,
        block_size,
        num_blocks: profile_tokens.div_ceil(block_size) + 1,
    };
    let profile = Profile {
        max_num_batched_tokens,
        profile_tokens,
    };
    let (mut executor, num_blocks) =
        load_and_profile(&opts, &placement, args, limits, &profile, role)?;
    let fits = num_blocks.saturating_sub(1) * block_size;
    if fits < max_model_len {
        let more = match placement {
            Placement::Cpu { .. } => "--cpu-kv-cache-space GiB",
            Placement::Npu { .. } => "a higher --gpu-memory-utilization or more NPUs",
        };
        bail!(
            "the KV cache holds {fits} tokens ({num_blocks} blocks of {block_size}), less than one --max-model-len {max_model_len} sequence; lower --max-model-len to at most {fits} or give it more memory ({more})"
        );
    }
    executor.resize_kv(num_blocks, block_size)?;
    if let Placement::Npu { options, .. } = &placement {
        if options.graph_capture {
            // Full decode graphs hold the KV cache's address, so the resize dropped them:
            // capture them again now, not in the first requests (piecewise ones replay).
            decode_warmup(executor.as_mut(), &options.capture_batch_sizes, block_size)?;
        }
    }
    let block_bytes = executor.kv_block_bytes(block_size)?;
    info!(
        "KV cache: {num_blocks} blocks of {block_size} tokens ({:.2} GiB over {world} rank(s)); maximum concurrency for {max_model_len} tokens per request: {:.2}x",
        (num_blocks as u64 * block_bytes) as f64 / GIB,
        fits as f64 / max_model_len as f64
    );
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir::tokenizer_path(&dir)?)
        .map_err(|e| anyhow::anyhow!("loading the tokenizer: {e}"))?;
    let engine_config = EngineConfig {
        block_size,
        num_blocks,
        max_num_seqs: limits.max_num_seqs,
        max_num_batched_tokens,
        max_model_len,
        enable_prefix_caching: limits.enable_prefix_caching,
        enable_chunked_prefill: chunked,
        max_waiting_requests: limits.max_waiting_requests,
        eos_token_ids: eos_ids(&dir, &config),
        // On the CPU the step thread would compete with the compute pool for the same cores,
        // and the host's share of a CPU step is small: off unless asked for.
        async_scheduling: limits.async_scheduling.unwrap_or(on_npu),
    };
    info!(
        "scheduling: {}",
        if engine_config.async_scheduling {
            "async (the host one step ahead of the device)"
        } else {
            "synchronous"
        }
    );
    Ok(Loaded {
        dir,
        tokenizer: Arc::new(tokenizer),
        engine_config,
        executor,
        vocab_size: config.vocab_size,
        npus: match &placement {
            Placement::Cpu { .. } => Vec::new(),
            Placement::Npu { devices, .. } => devices.clone(),
        },
    })
}

/// --max-model-len, or the model's own context; more than the model's positions needs rope
/// scaling.
fn max_model_len(config: &ModelConfig, asked: Option<usize>) -> anyhow::Result<usize> {
    let supported = config.max_context_len();
    let max_model_len = asked.unwrap_or(supported);
    if max_model_len > supported {
        bail!(
            "--max-model-len {max_model_len} exceeds the model's {supported} positions; add rope scaling to extend it, e.g. --rope-scaling '{{\"rope_type\":\"yarn\",\"factor\":{:.1},\"original_max_position_embeddings\":{}}}'",
            (max_model_len as f64 / config.max_position_embeddings as f64).ceil(),
            config.max_position_embeddings
        );
    }
    Ok(max_model_len)
}

/// `--dtype`. `auto` is BF16, except on the NPU for a head_dim its fused attention refuses
/// (the bundled tiny model's 32, say): F32 there, whose matmul + softmax attention takes any,
/// so the model still serves; an explicit `bfloat16` is refused at load with the reason.
fn weight_dtype(asked: DTypeArg, on_npu: bool, head_dim: usize) -> WeightDType {
    match asked {
        DTypeArg::Float32 => WeightDType::F32,
        DTypeArg::Auto if on_npu => {
            match qwen3_backend_ascend::attn_rules::tnd_refusal(head_dim, 128) {
                Some(why) => {
                    info!("--dtype auto: float32 on the NPU, since {why}");
                    WeightDType::F32
                }
                None => WeightDType::BF16,
            }
        }
        DTypeArg::Auto | DTypeArg::Bfloat16 | DTypeArg::Float16 => WeightDType::BF16,
    }
}

/// The CPU's precision policy (`crates/backend/src/cpu/precision.rs`): BF16 matmul inputs and
/// KV cache unless `--dtype float32`, as vLLM's CPU backend computes BF16 checkpoints;
/// `--kv-cache-dtype` overrides the cache's.
fn cpu_precision(dtype: DTypeArg, kv: KvCacheDTypeArg) -> CpuPrecision {
    let activations = match dtype {
        DTypeArg::Float32 => CpuDType::F32,
        DTypeArg::Auto | DTypeArg::Bfloat16 | DTypeArg::Float16 => CpuDType::BF16,
    };
    let kv_cache = match kv {
        KvCacheDTypeArg::Auto => activations,
        KvCacheDTypeArg::Bfloat16 => CpuDType::BF16,
        KvCacheDTypeArg::Float32 => CpuDType::F32,
    };
    CpuPrecision {
        activations,
        kv_cache,
    }
}

/// --block-size, or the device's default; checked against what the NPU's attention takes.
fn block_size(
    asked: Option<usize>,
    placement: &Placement,
    dtype: WeightDType,
) -> anyhow::Result<usize> {
    let block_size = asked.unwrap_or(placement.default_block_size());
    if matches!(placement, Placement::Npu { .. })
        && dtype != WeightDType::F32
        && !matches!(block_size, 128 | 512)
    {
        // Fused infer attention with paged KV in TND layout takes BF16 blocks of 128 or 512
        // only (aclnnFusedInferAttentionScoreV4 docs); the device would fail the first step.
        bail!("--block-size {block_size}: the NPU's fused attention takes KV blocks of 128 or 512 tokens");
    }
    Ok(block_size)
}

/// Tokens one step may compute when --max-num-batched-tokens is not given, as vLLM V1: a
/// chunk of 8192 with chunked prefill, else a whole sequence.
fn default_max_num_batched_tokens(chunked_prefill: bool, max_model_len: usize) -> usize {
    if chunked_prefill {
        CHUNKED_PREFILL_TOKENS.min(max_model_len)
    } else {
        max_model_len
    }
}

/// The profiling pass: one step of `profile_tokens`, its activations scaled linearly to
/// `max_num_batched_tokens` (activations grow linearly with tokens; the full length is not
/// run, as a long causal prefill would slow start-up).
struct Profile {
    max_num_batched_tokens: usize,
    profile_tokens: usize,
}

impl Profile {
    /// What a step of max_num_batched_tokens takes, from what the profiling step took.
    fn scale(&self, measured: u64) -> u64 {
        measured * self.max_num_batched_tokens.div_ceil(self.profile_tokens) as u64
    }

    /// How the activations figure was found, for the profiling log lines.
    fn describe(&self) -> String {
        format!(
            "at {} batched tokens (measured at {})",
            self.max_num_batched_tokens, self.profile_tokens
        )
    }
}

/// Loads the model where `placement` says, runs the profiling pass, and returns the executor
/// with the number of KV blocks the memory left allows.
fn load_and_profile(
    opts: &LoadOptions,
    placement: &Placement,
    args: &ModelArgs,
    limits: &Limits,
    profile: &Profile,
    role: Option<crate::multinode::Role>,
) -> anyhow::Result<(Box<dyn ResizableExecutor>, usize)> {
    let (dir, world) = (opts.dir.display(), opts.tensor_parallel_size);
    let t0 = std::time::Instant::now();
    let heap_before = crate::alloc::current();
    let mut executor = match role {
        Some(role) => crate::multinode::executor(role, opts)?,
        None => load_executor(opts, placement)?,
    };
    let secs = t0.elapsed().as_secs_f64();
    let num_blocks = match placement {
        Placement::Cpu { .. } => {
            let loaded_bytes = crate::alloc::current().saturating_sub(heap_before) as u64;
            info!(
                "loaded {dir} on the CPU (tensor parallel {world}) in {secs:.2}s: {:.2} GiB",
                loaded_bytes as f64 / GIB
            );
            size_cpu_kv(executor.as_mut(), opts, args, limits, loaded_bytes, profile)?
        }
        Placement::Npu {
            cann,
            devices,
            options,
        } => {
            info!("loaded {dir} on NPU {devices:?} (tensor parallel {world}) in {secs:.2}s");
            let graphs: &[usize] = if options.graph_capture {
                &options.capture_batch_sizes
            } else {
                &[]
            };
            size_npu_kv(
                executor.as_mut(),
                opts,
                cann,
                devices,
                limits,
                profile,
                graphs,
            )?
        }
    };
    Ok((executor, num_blocks))
}

/// The decode graph sizes to capture: those up to the first that holds `max_num_seqs`
/// sequences, within the device's stream budget (piecewise: layers + 1 graphs per size).
fn capture_sizes(sizes: &[usize], config: &ModelConfig, max_num_seqs: usize) -> Vec<usize> {
    let mut wanted: Vec<usize> = sizes.to_vec();
    wanted.sort_unstable();
    if let Some(cap) = wanted.iter().copied().find(|&s| s >= max_num_seqs) {
        wanted.retain(|&s| s <= cap);
    }
    let per_size = config.num_hidden_layers + 1;
    let kept = qwen3_backend_ascend::capture_sizes_within_budget(&wanted, per_size);
    if kept.len() < wanted.len() {
        info!(
            "decode graphs: {} sizes × {per_size} graphs exceed the {} a device's streams allow; capturing sizes {kept:?}",
            wanted.len(),
            qwen3_backend_ascend::MAX_CAPTURED_GRAPHS
        );
    }
    kept
}

/// NPU: captures the decode graphs of `sizes` now, before the KV cache is sized, and returns
/// the device bytes they took on the rank that took the most (the KV budget leaves it out).
fn capture_decode_graphs(
    executor: &mut dyn ResizableExecutor,
    cann: &Cann,
    devices: &[i32],
    sizes: &[usize],
    block_size: usize,
) -> anyhow::Result<u64> {
    if sizes.is_empty() {
        return Ok(0);
    }
    let t0 = std::time::Instant::now();
    let calls0 = qwen3_backend_ascend::host_calls::snapshot();
    let before = device_query::device_memory(cann, devices)?;
    decode_warmup(executor, sizes, block_size)?;
    let after = device_query::device_memory(cann, devices)?;
    let took = before
        .iter()
        .zip(&after)
        .map(|(a, b)| a.free_bytes.saturating_sub(b.free_bytes))
        .max()
        .unwrap_or(0);
    let c = qwen3_backend_ascend::host_calls::snapshot().since(&calls0);
    info!(
        "decode graphs: captured {} graphs ({} segments, over {} rank(s)) for sizes {sizes:?} in {:.2}s, {:.1} MiB per rank",
        c.all.graphs_captured,
        c.all.graph_segments,
        devices.len(),
        t0.elapsed().as_secs_f64(),
        took as f64 / (1u64 << 20) as f64
    );
    if c.all.graphs_captured == 0 {
        info!("decode graphs: none captured (tensor parallel steps and CANN builds without aclmdlRI capture run eagerly)");
    }
    Ok(took)
}

/// CPU: peak heap above the loaded weights while the profiling step runs, scaled to
/// max_num_batched_tokens; the KV cache gets what is left (or --cpu-kv-cache-space).
fn size_cpu_kv(
    executor: &mut dyn ResizableExecutor,
    opts: &LoadOptions,
    args: &ModelArgs,
    limits: &Limits,
    loaded_bytes: u64,
    profile: &Profile,
) -> anyhow::Result<usize> {
    let base = crate::alloc::reset_peak();
    profile_step(executor, profile.profile_tokens, opts.block_size)?;
    let measured = crate::alloc::peak().saturating_sub(base) as u64;
    let peak = profile.scale(measured);
    let block_bytes = executor.kv_block_bytes(opts.block_size)?;
    let (avail, total) = qwen3_backend::cpu::CpuBackend::new().memory_info()?;
    let budget = match args.cpu_kv_cache_space {
        Some(gib) => (gib * GIB) as u64,
        None => {
            let usable = (total as f64 * limits.memory_utilization) as u64;
            usable
                .saturating_sub(loaded_bytes)
                .saturating_sub(peak)
                .min(avail.saturating_sub(peak))
                .min(DEFAULT_CPU_KV_SPACE)
        }
    };
    info!(
        "memory profiling: weights {:.2} GiB, peak activations {:.1} MiB {}, KV budget {:.2} GiB",
        loaded_bytes as f64 / GIB,
        peak as f64 / (1u64 << 20) as f64,
        profile.describe(),
        budget as f64 / GIB
    );
    Ok((budget / block_bytes.max(1)) as usize)
}

/// NPU, as vLLM does: the KV cache of each rank gets `total · utilisation − used`, where used
/// is what the weights and runtime hold plus the profiling step's activations (scaled to
/// max_num_batched_tokens, as on the CPU); the tightest rank decides.
fn size_npu_kv(
    executor: &mut dyn ResizableExecutor,
    opts: &LoadOptions,
    cann: &Cann,
    devices: &[i32],
    limits: &Limits,
    profile: &Profile,
    graph_sizes: &[usize],
) -> anyhow::Result<usize> {
    let before = device_query::device_memory(cann, devices)?;
    profile_step(executor, profile.profile_tokens, opts.block_size)?;
    let after = device_query::device_memory(cann, devices)?;
    // Graphs before the KV cache, which takes what is left: their memory is counted.
    let graph_bytes = capture_decode_graphs(executor, cann, devices, graph_sizes, opts.block_size)?;
    // Per rank; every rank holds the same KV geometry.
    let block_bytes = executor.kv_block_bytes(opts.block_size)? / devices.len().max(1) as u64;
    let mut budget = u64::MAX;
    for (m0, m1) in before.iter().zip(after) {
        let (d, free0, free1, total) = (m0.device, m0.free_bytes, m1.free_bytes, m1.total_bytes);
        // The pool keeps the step's buffers cached: what the step took is still "used".
        let activations = profile.scale(free0.saturating_sub(free1));
        let used = total.saturating_sub(free0) + activations + graph_bytes;
        let rank_budget = ((total as f64 * limits.memory_utilization) as u64).saturating_sub(used);
        info!(
            "memory profiling on NPU {d}: weights and runtime {:.2} GiB, peak activations {:.1} MiB {}, {:.2} GiB total, KV budget {:.2} GiB",
            total.saturating_sub(free0) as f64 / GIB,
            activations as f64 / (1u64 << 20) as f64,
            profile.describe(),
            total as f64 / GIB,
            rank_budget as f64 / GIB
        );
        budget = budget.min(rank_budget);
    }
    Ok((budget / block_bytes.max(1)) as usize)
}

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    args.model.validate()?;
    let limits = Limits {
        max_num_seqs: 1,
        max_num_batched_tokens: None,
        block_size: None,
        memory_utilization: 0.9,
        enable_prefix_caching: false,
        enable_chunked_prefill: true,
        max_waiting_requests: 1,
        async_scheduling: None,
    };
    let loaded = load(&args.model, &limits)?;
    let prompt_ids = loaded
        .tokenizer
        .encode(args.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
        .get_ids()
        .to_vec();
    let engine = EngineHandle::start(
        loaded.engine_config,
        loaded.executor,
        loaded.tokenizer.clone(),
    )?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        seed: args.model.seed,
        ..SamplingParams::default()
    };
    let req = EngineRequest {
        request_id: "generate-0".into(),
        prompt_token_ids: prompt_ids,
        sampling,
        max_tokens: Some(args.max_tokens),
        min_tokens: 0,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: args.ignore_eos,
        include_stop_str_in_output: false,
        skip_special_tokens: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut stream = engine.submit(req)?;
        use std::io::Write;
        let mut out = std::io::stdout();
        while let Some(o) = stream.next().await {
            write!(out, "{}", o.text)?;
            out.flush()?;
            if let Some(reason) = o.finish_reason {
                writeln!(out)?;
                info!("finished: {reason:?}, {} tokens", o.num_output_tokens);
            }
        }
        anyhow::Ok(())
    })?;
    engine.shutdown(std::time::Duration::from_secs(1));
    Ok(())
}

/// Sampling defaults from generation_config.json, as vLLM's `--generation-config auto`.
fn generation_defaults(dir: &std::path::Path, mode: &str) -> qwen3_api::SamplingDefaults {
    let mut d = qwen3_api::SamplingDefaults::default();
    if mode != "auto" {
        return d;
    }
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return d;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return d;
    };
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    d.temperature = f("temperature");
    d.top_p = f("top_p");
    d.min_p = f("min_p");
    d.repetition_penalty = f("repetition_penalty");
    d.top_k = v.get("top_k").and_then(|x| x.as_i64());
    if d.temperature.is_some() || d.top_p.is_some() || d.top_k.is_some() {
        info!("sampling defaults from generation_config.json: {d:?} (override with --generation-config vllm)");
    }
    d
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let limits = Limits {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        block_size: args.block_size,
        memory_utilization: args.gpu_memory_utilization,
        // Both on by default, as in vLLM V1; the --no- flags turn them off.
        enable_prefix_caching: !args.no_enable_prefix_caching,
        enable_chunked_prefill: !args.no_enable_chunked_prefill,
        max_waiting_requests: args.max_waiting_requests,
        async_scheduling: args.async_scheduling(),
    };
    args.validate()?;
    let conn_limits = args.conn_limits()?;
    match args.reasoning_parser.as_deref() {
        None | Some("qwen3") | Some("deepseek_r1") => {}
        Some(other) => bail!("unknown --reasoning-parser {other:?}; supported: qwen3"),
    }
    match args.tool_call_parser.as_deref() {
        None | Some("hermes") => {}
        Some(other) => bail!("unknown --tool-call-parser {other:?}; supported: hermes"),
    }
    if args.enable_auto_tool_choice && args.tool_call_parser.is_none() {
        bail!("--enable-auto-tool-choice needs --tool-call-parser hermes");
    }
    let structured_limits = crate::structured::check_flags(
        args.structured_outputs_config.as_deref(),
        args.guided_decoding_backend.as_deref(),
    )?;
    let loaded = load(&args.model, &limits)?;
    let names = if args.served_model_name.is_empty() {
        vec![args
            .model
            .model
            .clone()
            .or(args.model.model_flag.clone())
            .unwrap_or_else(|| "tiny-qwen3".into())]
    } else {
        args.served_model_name.clone()
    };
    let template = match qwen3_api::ChatTemplate::from_model_dir(&loaded.dir) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("no chat template: {e}; /v1/chat/completions will refuse requests");
            None
        }
    };
    let max_model_len = loaded.engine_config.max_model_len;
    let structured = Some(crate::structured::compiler(&loaded, structured_limits));
    let mut core = qwen3_engine::EngineCore::new(
        loaded.engine_config,
        loaded.executor,
        loaded.tokenizer.clone(),
    )?;
    if let Some(c) = &structured {
        core = core.with_structured(Arc::clone(c));
    }
    let engine = EngineHandle::start_core(core)?;
    let state = std::sync::Arc::new(qwen3_api::AppState {
        config: qwen3_api::ApiConfig {
            served_model_names: names.clone(),
            model_root: loaded.dir.display().to_string(),
            max_model_len,
            api_key: args
                .api_key
                .clone()
                .or_else(|| std::env::var("QWEN3_SERVE_API_KEY").ok()),
            reasoning_parser: args.reasoning_parser.is_some(),
            tool_parser: args.tool_call_parser.is_some(),
            enable_auto_tool_choice: args.enable_auto_tool_choice,
            defaults: generation_defaults(&loaded.dir, &args.generation_config),
            max_body_bytes: 32 << 20,
            default_seed: args.model.seed,
            max_logprobs: args.max_logprobs,
        },
        engine: engine.clone(),
        tokenizer: loaded.tokenizer.clone(),
        template,
        npu: crate::npu_metrics::start(
            &loaded.npus,
            std::time::Duration::from_secs(args.npu_metrics_interval_seconds),
        ),
        health: Default::default(),
        structured,
    });
    let grace = std::time::Duration::from_secs(args.shutdown_grace_seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        info!("serving model(s) {names:?} with max_model_len {max_model_len}");
        info!("listening on http://{addr} (Press CTRL+C to quit)");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let eng = engine.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!(
                "shutting down: no new requests; in-flight requests get {}s",
                grace.as_secs()
            );
            let _ = stop_tx.send(());
            let _ = tokio::task::spawn_blocking(move || eng.shutdown(grace)).await;
        });
        qwen3_api::serve_with(
            listener,
            qwen3_api::router(state),
            conn_limits,
            async move {
                let _ = stop_rx.await;
            },
        )
        .await?;
        info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
    }

    fn fixture_config(name: &str) -> ModelConfig {
        let path = fixture_dir(name).join("config.json");
        ModelConfig::from_json_str(&std::fs::read_to_string(path).expect("config")).expect("parses")
    }

    #[test]
    fn quantized_models_are_accepted_and_the_flag_checked() {
        let check =
            |name: &str, flag| check_quantization(&fixture_config(name), &fixture_dir(name), flag);
        assert!(check("tiny-qwen3-awq", None).is_ok());
        assert!(check("tiny-qwen3-awq", Some("awq")).is_ok());
        let e = check("tiny-qwen3-awq", Some("gptq")).expect_err("mismatch");
        assert!(e.to_string().contains("quantized with awq"), "{e}");
        let e = check("tiny-qwen3", Some("gptq")).expect_err("not quantized");
        assert!(e.to_string().contains("no quantization_config"), "{e}");
        // msModelSlim W8A8: detected without a flag, `ascend` agrees, others do not.
        assert!(check("tiny-qwen3-w8a8", None).is_ok());
        assert!(check("tiny-qwen3-w8a8", Some("ascend")).is_ok());
        let e = check("tiny-qwen3-w8a8", Some("awq")).expect_err("mismatch");
        assert!(e.to_string().contains("msModelSlim"), "{e}");
        let e = check("tiny-qwen3", Some("ascend")).expect_err("not modelslim");
        assert!(
            e.to_string().contains("quant_model_description.json"),
            "{e}"
        );
    }

    #[test]
    fn dtype_auto_is_f32_on_the_npu_only_for_head_dims_fused_attention_refuses() {
        use WeightDType::{BF16, F32};
        assert_eq!(weight_dtype(DTypeArg::Auto, true, 32), F32);
        assert_eq!(weight_dtype(DTypeArg::Auto, true, 128), BF16);
        assert_eq!(weight_dtype(DTypeArg::Auto, false, 32), BF16);
        assert_eq!(weight_dtype(DTypeArg::Bfloat16, true, 32), BF16);
        assert_eq!(weight_dtype(DTypeArg::Float32, true, 128), F32);
    }

    #[test]
    fn cpu_precision_follows_dtype_unless_the_kv_flag_says() {
        use CpuDType::{BF16, F32};
        let p = |d, kv| {
            let p = cpu_precision(d, kv);
            (p.activations, p.kv_cache)
        };
        assert_eq!(p(DTypeArg::Auto, KvCacheDTypeArg::Auto), (BF16, BF16));
        assert_eq!(p(DTypeArg::Bfloat16, KvCacheDTypeArg::Auto), (BF16, BF16));
        assert_eq!(p(DTypeArg::Float32, KvCacheDTypeArg::Auto), (F32, F32));
        assert_eq!(p(DTypeArg::Float32, KvCacheDTypeArg::Bfloat16), (F32, BF16));
        assert_eq!(p(DTypeArg::Auto, KvCacheDTypeArg::Float32), (BF16, F32));
    }
}
