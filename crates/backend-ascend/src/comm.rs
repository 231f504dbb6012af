//! Tensor-parallel collectives over HCCL: one communicator per rank thread, collectives
//! queued on the rank's stream.

use std::sync::Arc;

pub use ascend_sys::types::HcclRootInfo;
use ascend_sys::types::*;
use ascend_sys::Cann;
use qwen3_backend::comm::Communicator;
use qwen3_backend::{Backend, BackendError, HostData, Result};

use crate::desc::View;
use crate::mem::DevPtr;
use crate::{AscendBackend, AscendTensor};

fn coll_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Collective(e.to_string())
}

/// The root info every rank of one group joins with, made on the root rank's backend with
/// its device current: the root info carries that device (CANN HCCL API reference,
/// HcclGetRootInfo; vllm-ascend's pyhccl makes it under `torch.npu.device` of rank 0).
/// Hand it to every rank's [`HcclCommunicator::init`].
pub fn root_info(root_rank: &AscendBackend) -> Result<HcclRootInfo> {
    let dev = root_rank.device();
    dev.bind()?;
    let h = dev.cann.hccl().map_err(coll_err)?;
    let mut root = HcclRootInfo::default();
    // SAFETY: valid out-pointer of the documented size; the root rank's device is bound.
    let rc = unsafe { (h.HcclGetRootInfo)(&mut root) };
    dev.cann
        .check_hccl(rc, "HcclGetRootInfo")
        .map_err(coll_err)?;
    Ok(root)
}

/// A root info as the bytes another process receives it in (the rendezvous carries it).
pub fn root_info_bytes(r: &HcclRootInfo) -> Vec<u8> {
    r.internal.iter().map(|&c| c as u8).collect()
}

/// A root info from another process's [`root_info_bytes`].
pub fn root_info_from_bytes(b: &[u8]) -> Result<HcclRootInfo> {
    let mut r = HcclRootInfo::default();
    if b.len() != r.internal.len() {
        return Err(coll_err(format!(
            "a root info of {} bytes (HCCL's has {})",
            b.len(),
            r.internal.len()
        )));
    }
    for (d, s) in r.internal.iter_mut().zip(b) {
        *d = *s as std::ffi::c_char;
    }
    Ok(r)
}

/// One rank's HCCL communicator.
pub struct HcclCommunicator {
    cann: Arc<Cann>,
    comm: DevPtr,
    rank: usize,
    world: usize,
}

impl HcclCommunicator {
    /// Joins the group: every rank calls this at the same time, each on its own thread with
    /// its backend's device bound (HcclCommInitRootInfo blocks until all have joined).
    pub fn init(
        backend: &AscendBackend,
        root: &HcclRootInfo,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        let dev = backend.device();
        dev.bind()?;
        // Collectives are captured in full graphs only: piecewise graphs stay off.
        backend.disable_graphs();
        let cann = Arc::clone(&dev.cann);
        let h = cann.hccl().map_err(coll_err)?;
        if rank >= world {
            return Err(coll_err(format!("rank {rank} of {world}")));
        }
        let mut comm = std::ptr::null_mut();
        // SAFETY: `root` came from HcclGetRootInfo; valid out-pointer; the device is bound.
        let rc = unsafe { (h.HcclCommInitRootInfo)(world as u32, root, rank as u32, &mut comm) };
        cann.check_hccl(rc, "HcclCommInitRootInfo")
            .map_err(coll_err)?;
        let comm = Self {
            cann,
            comm: DevPtr(comm),
            rank,
            world,
        };
        comm.warm_up(backend)?;
        Ok(comm)
    }

    /// One small all-reduce right after init, as vllm-ascend's pyhccl does: links are set up
    /// now rather than inside the first request, and a group that cannot sum `1` over its
    /// ranks to `world` fails at start-up with HCCL's error instead of serving garbage.
    fn warm_up(&self, backend: &AscendBackend) -> Result<()> {
        let mut one = backend.upload(HostData::F32(&[1.0]), &[1])?;
        self.all_reduce_sum(backend, &mut one)?;
        let sum = backend.to_host_f32(&one)?;
        if sum != [self.world as f32] {
            return Err(coll_err(format!(
                "warm-up all-reduce on rank {} gave {sum:?}, expected [{}]",
                self.rank, self.world
            )));
        }
        Ok(())
    }

    fn dtype(t: &AscendTensor) -> Result<HcclDataType> {
        HcclDataType::from_acl(t.dtype().acl())
            .ok_or_else(|| coll_err(format!("HCCL has no type for {:?}", t.dtype())))
    }
}

/// Point to point, for pipeline stages: a stage hands the next its hidden states.
impl HcclCommunicator {
    /// Queues sending `t` to rank `dst` on this rank's stream; HCCL completes the send once
    /// `dst` has received it (HcclSend and HcclRecv are paired and synchronous, HCCL API
    /// reference), so the stream holds `t` until then.
    pub fn send(&self, backend: &AscendBackend, t: &AscendTensor, dst: usize) -> Result<()> {
        self.p2p(backend, t, dst, true)
    }

    /// Queues receiving into `t` from rank `src`: the sender's tensor must have `t`'s
    /// element count and type.
    pub fn recv_into(
        &self,
        backend: &AscendBackend,
        t: &mut AscendTensor,
        src: usize,
    ) -> Result<()> {
        self.p2p(backend, t, src, false)
    }

    /// Receives a new tensor of `dt` and `shape` from rank `src` (as [`Self::recv_into`]).
    pub fn recv_new(
        &self,
        backend: &AscendBackend,
        dt: crate::desc::Dt,
        shape: &[usize],
        src: usize,
    ) -> Result<AscendTensor> {
        let mut t = backend.empty(dt, shape)?;
        self.recv_into(backend, &mut t, src)?;
        Ok(t)
    }

    fn p2p(
        &self,
        backend: &AscendBackend,
        t: &AscendTensor,
        peer: usize,
        send: bool,
    ) -> Result<()> {
        if peer >= self.world || peer == self.rank {
            return Err(coll_err(format!(
                "rank {} of {} cannot {} rank {peer}",
                self.rank,
                self.world,
                if send { "send to" } else { "receive from" }
            )));
        }
        if backend.in_graph_mode() {
            // A captured send/recv would replay with the message numbers of its capture
            // (the emulator numbers them when issued) and is skipped by no replay: pipeline
            // stages run their steps eagerly until that is handled.
            return Err(coll_err(
                "point-to-point transfers inside a decode graph are not supported: run pipeline stages with --enforce-eager",
            ));
        }
        let dev = backend.device();
        dev.bind()?;
        let h = self.cann.hccl().map_err(coll_err)?;
        let (n, dt) = (t.numel() as u64, Self::dtype(t)?);
        // SAFETY: `t` holds `n` elements of `dt` on this rank's device; queued on its stream,
        // which keeps it alive in order.
        let (rc, what) = unsafe {
            if send {
                let rc = (h.HcclSend)(t.buf.ptr.0, n, dt, peer as u32, self.comm.0, dev.stream.0);
                (rc, "HcclSend")
            } else {
                let rc = (h.HcclRecv)(t.buf.ptr.0, n, dt, peer as u32, self.comm.0, dev.stream.0);
                (rc, "HcclRecv")
            }
        };
        self.cann.check_hccl(rc, what).map_err(coll_err)
    }
}

impl Drop for HcclCommunicator {
    fn drop(&mut self) {
        if let Ok(h) = self.cann.hccl() {
            // SAFETY: created by HcclCommInitRootInfo, destroyed once.
            unsafe { (h.HcclCommDestroy)(self.comm.0) };
        }
    }
}

impl Communicator<AscendBackend> for HcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, backend: &AscendBackend, t: &mut AscendTensor) -> Result<()> {
        let n = t.numel();
        if n == 0 || self.world == 1 {
            return Ok(());
        }
        let dev = backend.device();
        dev.bind()?;
        let out = backend.empty(t.dtype(), t.shape())?;
        if dev.skip_launch() {
            // Replaying a full graph: the collective is in it.
            *t = out;
            return Ok(());
        }
        let h = self.cann.hccl().map_err(coll_err)?;
        // SAFETY: both buffers hold `n` elements of the type on this rank's device; queued
        // on its stream, which keeps them alive in order.
        let rc = unsafe {
            (h.HcclAllReduce)(
                t.buf.ptr.0,
                out.buf.ptr.0,
                n as u64,
                Self::dtype(t)?,
                HcclReduceOp::HCCL_REDUCE_SUM,
                self.comm.0,
                dev.stream.0,
            )
        };
        crate::host_calls::bump(crate::host_calls::Counter::Hccl);
        self.cann
            .check_hccl(rc, "HcclAllReduce")
            .map_err(coll_err)?;
        *t = out;
        Ok(())
    }

    fn all_gather_cols(&self, backend: &AscendBackend, t: AscendTensor) -> Result<AscendTensor> {
        if self.world == 1 {
            return Ok(t);
        }
        let (rows, cols) = t.matrix();
        let w = self.world;
        let dev = backend.device();
        dev.bind()?;
        // HcclAllGather concatenates along the first dimension: [world, rows, cols].
        let gathered = backend.empty(t.dtype(), &[w, rows, cols])?;
        let h = self.cann.hccl().map_err(coll_err)?;
        if rows * cols > 0 && !dev.skip_launch() {
            // SAFETY: send holds rows*cols elements, recv world times that; on this rank's
            // device and stream.
            let rc = unsafe {
                (h.HcclAllGather)(
                    t.buf.ptr.0,
                    gathered.buf.ptr.0,
                    (rows * cols) as u64,
                    Self::dtype(&t)?,
                    self.comm.0,
                    dev.stream.0,
                )
            };
            crate::host_calls::bump(crate::host_calls::Counter::Hccl);
            self.cann
                .check_hccl(rc, "HcclAllGather")
                .map_err(coll_err)?;
        }
        let mut shape = t.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = cols * w;
        }
        let out = backend.empty(t.dtype(), &shape)?;
        if rows * cols > 0 {
            // out[r, k*cols + c] = gathered[k, r, c]: write through a permuted view of out.
            let dst = View {
                shape: vec![w as i64, rows as i64, cols as i64],
                strides: vec![cols as i64, (w * cols) as i64, 1],
                ..out.view()
            };
            backend.copy_view(&dst, &gathered.view())?;
        }
        // The gather ends the forward pass: wait here so that ranks which never read a
        // result (all but rank 0) do not queue steps without bound, and so that their
        // queued collectives have run before the next step's uploads are staged. A graph
        // step ends here (those ranks never read a result, which is where it ends on rank 0).
        backend.finish_graph_step()?;
        dev.synchronize()?;
        Ok(out)
    }
}
