//! Loading a model directory onto its devices: the layout options, each rank's KV cache
//! geometry, where the model runs, and the executor start-up gets back (its KV cache still
//! resizable, see [`ResizableExecutor`]). The device-specific halves are `load_cpu` and
//! `load_ascend`.

use std::path::PathBuf;
use std::sync::Arc;

use qwen3_backend::cpu::CpuPrecision;
use qwen3_backend::{Backend, KvCacheShape};
use qwen3_backend_ascend::device_query::Cann;
use qwen3_backend_ascend::AscendOptions;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::executor::{ResizableExecutor, Worker};
use crate::qwen3::{HeadPlan, Qwen3, Shard, WeightDType};

pub use crate::load_ascend::ascend_executor_resizable;
pub use crate::load_cpu::{cpu_executor, cpu_executor_resizable};

/// Everything that decides how a model is laid out on its devices.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub dtype: WeightDType,
    pub tensor_parallel_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// Where the model runs.
pub enum Placement {
    /// The CPU, computing at `precision` (matmul inputs, KV cache).
    Cpu { precision: CpuPrecision },
    /// One NPU per tensor-parallel rank (logical ids, after ASCEND_RT_VISIBLE_DEVICES).
    Npu {
        cann: Arc<Cann>,
        devices: Vec<i32>,
        options: AscendOptions,
    },
}

impl Placement {
    /// The KV block size when none is asked for: Ascend's fused attention wants blocks of
    /// 128; the CPU keeps its blocks small.
    pub fn default_block_size(&self) -> usize {
        match self {
            Placement::Cpu { .. } => qwen3_backend::cpu::DEFAULT_BLOCK_SIZE,
            Placement::Npu { .. } => qwen3_backend_ascend::DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Loads the model where `placement` says, with the KV cache `opts` asks for.
pub fn load_executor(
    opts: &LoadOptions,
    placement: &Placement,
) -> Result<Box<dyn ResizableExecutor>, ModelError> {
    match placement {
        Placement::Cpu { precision } => cpu_executor_resizable(opts, *precision),
        Placement::Npu {
            cann,
            devices,
            options,
        } => ascend_executor_resizable(opts, Arc::clone(cann), devices, options.clone()),
    }
}

/// The KV cache geometry of one rank for `opts` (heads this rank holds).
pub fn rank_kv_shape(opts: &LoadOptions) -> Result<KvCacheShape, ModelError> {
    let heads = HeadPlan::new(
        &opts.config,
        Shard {
            rank: 0,
            world: opts.tensor_parallel_size,
        },
    )?;
    Ok(KvCacheShape {
        num_layers: opts.config.num_hidden_layers,
        num_blocks: opts.num_blocks,
        block_size: opts.block_size,
        num_kv_heads: heads.kv_heads,
        head_dim: opts.config.head_dim,
    })
}

/// Rank `shard` of the model on `backend`, with a KV cache of `kv_shape`.
pub(crate) fn load_worker<B: Backend>(
    backend: B,
    opts: &LoadOptions,
    shard: Shard,
    kv_shape: KvCacheShape,
) -> Result<Worker<B>, ModelError> {
    let model = Qwen3::load(&backend, &opts.dir, opts.config.clone(), opts.dtype, shard)?;
    let kv = backend.alloc_kv_cache(kv_shape)?;
    Ok(Worker { backend, model, kv })
}
