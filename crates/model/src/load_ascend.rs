//! Loading a model on Ascend NPUs: one rank per device, tensor parallelism over HCCL with one
//! thread per rank (each binds its device's context).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use qwen3_backend::comm::Communicator;
use qwen3_backend_ascend::comm::{root_info, HcclCommunicator, HcclRootInfo};
use qwen3_backend_ascend::device_query::Cann;
use qwen3_backend_ascend::{AscendBackend, AscendOptions};

use crate::error::ModelError;
use crate::executor::{ResizableExecutor, SingleExecutor};
use crate::load::{load_worker, rank_kv_shape, LoadOptions};
use crate::qwen3::{Shard, WeightDType};
use crate::tp::{RankInit, TpExecutor};

/// Loads the model on the NPUs `devices` (one per rank; `opts.tensor_parallel_size` of them)
/// with backend options; the KV cache can still be resized after profiling.
pub fn ascend_executor_resizable(
    opts: &LoadOptions,
    cann: Arc<Cann>,
    devices: &[i32],
    backend_opts: AscendOptions,
) -> Result<Box<dyn ResizableExecutor>, ModelError> {
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
        let worker = load_worker(backend, opts, Shard::WHOLE, kv_shape)?;
        return Ok(Box::new(SingleExecutor::new(worker)));
    }
    let root_sources = RootSource::group(world);
    let inits: Vec<RankInit<AscendBackend>> = devices
        .iter()
        .zip(root_sources)
        .enumerate()
        .map(|(rank, (&device, root_src))| {
            let opts = opts.clone();
            let cann = Arc::clone(&cann);
            let backend_opts = backend_opts.clone();
            let init: RankInit<AscendBackend> = Box::new(move || {
                let backend = AscendBackend::with_options(cann, device, backend_opts)?;
                let hccl_root = root_src.get(&backend)?;
                // Collective: every rank thread joins here at the same time.
                let comm = HcclCommunicator::init(&backend, &hccl_root, rank, world)?;
                let worker = load_worker(backend, &opts, Shard { rank, world }, kv_shape)?;
                let comm: Box<dyn Communicator<AscendBackend>> = Box::new(comm);
                Ok((worker, comm))
            });
            init
        })
        .collect();
    // HCCL has no abort from another thread: a rank that fails makes its peers' collectives
    // fail with HCCL's own timeout.
    let ex = TpExecutor::start(inits, Arc::new(|| {}))?;
    Ok(Box::new(ex))
}

/// Where a rank thread gets its group's HCCL root info.
pub(crate) enum RootSource {
    /// Rank 0: make it with this rank's device current and send it to the others.
    Make(Vec<Sender<HcclRootInfo>>),
    /// The others: wait for rank 0's.
    Receive(Receiver<HcclRootInfo>),
}

impl RootSource {
    /// One per rank of a group of `world`, in rank order: rank 0 makes the root info on its
    /// own thread, with its device current, and hands it to the other ranks' threads; a
    /// rank 0 that fails first drops the senders.
    pub(crate) fn group(world: usize) -> Vec<RootSource> {
        let (txs, rxs): (Vec<Sender<HcclRootInfo>>, Vec<Receiver<HcclRootInfo>>) =
            (1..world).map(|_| channel()).unzip();
        std::iter::once(RootSource::Make(txs))
            .chain(rxs.into_iter().map(RootSource::Receive))
            .collect()
    }

    pub(crate) fn get(self, backend: &AscendBackend) -> Result<HcclRootInfo, ModelError> {
        match self {
            RootSource::Make(peers) => {
                let root = root_info(backend)?;
                for p in peers {
                    // A peer that already failed has dropped its receiver: its own error wins.
                    let _ = p.send(root);
                }
                Ok(root)
            }
            RootSource::Receive(rx) => rx.recv().map_err(|_| {
                ModelError::Invalid("rank 0 failed before making the HCCL root info".into())
            }),
        }
    }
}
