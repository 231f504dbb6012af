//! Building an executor on Ascend NPUs: one rank per device, tensor parallelism over HCCL
//! with one thread per rank (each binds its device's context).

use std::sync::Arc;

use ascend_sys::Cann;
use qwen3_backend::comm::Communicator;
use qwen3_backend::Backend;
use qwen3_backend_ascend::comm::{root_info, HcclCommunicator};
use qwen3_backend_ascend::{AscendBackend, AscendOptions};
use qwen3_step::Executor;

use crate::build::{rank_kv_shape, LoadOptions};
use crate::executor::{SingleExecutor, Worker};
use crate::qwen3::{ModelError, Qwen3, Shard, WeightDType};
use crate::tp::{RankInit, TpExecutor};

/// An NPU executor before it is boxed for the engine: its KV cache can still be resized
/// (after the profiling pass has measured what activations need).
pub enum AscendExecutor {
    Single(Box<SingleExecutor<AscendBackend>>),
    Tp(TpExecutor),
}

impl AscendExecutor {
    pub fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError> {
        match self {
            AscendExecutor::Single(e) => e.resize_kv(num_blocks, block_size),
            AscendExecutor::Tp(e) => e
                .resize_kv(num_blocks, block_size)
                .map_err(|e| ModelError::Invalid(e.0)),
        }
    }

    pub fn as_executor(&mut self) -> &mut dyn Executor {
        match self {
            AscendExecutor::Single(e) => e.as_mut(),
            AscendExecutor::Tp(e) => e,
        }
    }

    pub fn into_boxed(self) -> Box<dyn Executor> {
        match self {
            AscendExecutor::Single(e) => e,
            AscendExecutor::Tp(e) => Box::new(e),
        }
    }
}

/// Loads the model on the NPUs `devices` (one per rank; `opts.tensor_parallel_size` of them).
pub fn ascend_executor(
    opts: &LoadOptions,
    cann: Arc<Cann>,
    devices: &[i32],
) -> Result<Box<dyn Executor>, ModelError> {
    Ok(ascend_executor_resizable(opts, cann, devices, AscendOptions::default())?.into_boxed())
}

/// Like [`ascend_executor`], unboxed so the KV cache can be resized after profiling, with
/// backend options.
pub fn ascend_executor_resizable(
    opts: &LoadOptions,
    cann: Arc<Cann>,
    devices: &[i32],
    backend_opts: AscendOptions,
) -> Result<AscendExecutor, ModelError> {
    let world = opts.tensor_parallel_size;
    if devices.len() != world || world == 0 {
        return Err(ModelError::Invalid(format!(
            "tensor parallel size {world} needs as many devices, got {devices:?}"
        )));
    }
    let kv_shape = rank_kv_shape(opts)?;
    // An F32 model asks for precision: keep K/V in F32 too.
    let backend_opts = AscendOptions {
        kv_cache_f32: backend_opts.kv_cache_f32 || opts.dtype == WeightDType::F32,
        ..backend_opts
    };
    if world == 1 {
        let backend = AscendBackend::with_options(cann, devices[0], backend_opts)?;
        let model = Qwen3::load(
            &backend,
            &opts.dir,
            opts.config.clone(),
            opts.dtype,
            Shard::WHOLE,
        )?;
        let kv = backend.alloc_kv_cache(kv_shape)?;
        return Ok(AscendExecutor::Single(Box::new(SingleExecutor::new(
            Worker { backend, model, kv },
        ))));
    }
    let hccl_root = root_info(&cann)?;
    let inits: Vec<RankInit<AscendBackend>> = devices
        .iter()
        .enumerate()
        .map(|(rank, &device)| {
            let opts = opts.clone();
            let cann = Arc::clone(&cann);
            let backend_opts = backend_opts.clone();
            let init: RankInit<AscendBackend> = Box::new(move || {
                let backend = AscendBackend::with_options(cann, device, backend_opts)?;
                // Collective: every rank thread joins here at the same time.
                let comm = HcclCommunicator::init(&backend, &hccl_root, rank, world)?;
                let shard = Shard { rank, world };
                let model = Qwen3::load(&backend, &opts.dir, opts.config, opts.dtype, shard)?;
                let kv = backend.alloc_kv_cache(kv_shape)?;
                let comm: Box<dyn Communicator<AscendBackend>> = Box::new(comm);
                Ok((Worker { backend, model, kv }, comm))
            });
            init
        })
        .collect();
    // HCCL has no abort from another thread: a rank that fails makes its peers' collectives
    // fail with HCCL's own timeout.
    let ex = TpExecutor::start(inits, Arc::new(|| {}))?;
    Ok(AscendExecutor::Tp(ex))
}
