//! Full-graph decode: the whole decode step, K/V write, fused attention and collectives
//! included, captured as one graph per padded size (vllm-ascend's FULL_DECODE_ONLY).
//!
//! Fused attention takes its sequence lengths as host arrays, which the capture freezes. So
//! each attention call is captured alone inside a task group
//! (`aclmdlRICaptureTaskGrpBegin/End`), and every replay first re-issues it with the step's
//! own lengths between `aclmdlRICaptureTaskUpdateBegin/End`, on the device's stream, before
//! the graph's launch: the stream runs the updates first (the update is asynchronous, so
//! the order matters; vllm-ascend uses a second stream and an event for the same order).
//! The update re-runs the op's first phase with the same buffers (the capture's, handed out
//! again in allocation order), so only the host arguments change.
//!
//! The graph holds the KV cache's address: full graphs are captured once the cache exists
//! and dropped when a new cache is allocated ([`AscendBackend::kv_cache_changed`]).
//! Where the installed CANN lacks the task API, or attention does not go through fused
//! attention on a BF16 cache, decode graphs stay piecewise ([`AscendBackend::graph_kind`]).

use qwen3_backend::{AttnGeometry, BackendError, Result};

use crate::desc::Dt;
use crate::mem::{dev_err, DevPtr, Device, GraphMode};
use crate::{AscendBackend, AscendKvCache, AscendStep, AscendTensor, AttentionBackend};

/// How decode steps are captured, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphKind {
    /// The whole step as one graph, attention updated per replay.
    Full,
    /// Segments between attention calls (attention eager); the reason full graphs are off.
    Piecewise(&'static str),
}

impl Device {
    fn task_fn<T>(&self, f: Option<T>, name: &str) -> Result<T> {
        f.ok_or_else(|| BackendError::Unsupported(name.into()))
    }

    /// Calls one of the task API's functions that take only the device's stream.
    fn on_stream(
        &self,
        f: Option<
            unsafe extern "C" fn(ascend_sys::types::aclrtStream) -> ascend_sys::types::aclError,
        >,
        name: &'static str,
    ) -> Result<()> {
        let f = self.task_fn(f, name)?;
        self.bind()?;
        // SAFETY: the device's stream, in the state the caller's step put it in (capturing
        // for a group's Begin, updating for an update's End).
        let rc = unsafe { f(self.stream.0) };
        self.cann.check(rc, name).map_err(dev_err)
    }

    /// Opens a task group on the capturing stream.
    pub(crate) fn task_group_begin(&self) -> Result<()> {
        let acl = &self.cann.acl;
        self.on_stream(
            acl.aclmdlRICaptureTaskGrpBegin,
            "aclmdlRICaptureTaskGrpBegin",
        )
    }

    /// Closes the task group and keeps its handle with the recording.
    pub(crate) fn task_group_end(&self) -> Result<()> {
        let f = self.task_fn(
            self.cann.acl.aclmdlRICaptureTaskGrpEnd,
            "aclmdlRICaptureTaskGrpEnd",
        )?;
        self.bind()?;
        let mut h = std::ptr::null_mut();
        // SAFETY: the stream the group was begun on; valid out-pointer.
        let rc = unsafe { f(self.stream.0, &mut h) };
        self.cann
            .check(rc, "aclmdlRICaptureTaskGrpEnd")
            .map_err(dev_err)?;
        if let GraphMode::Capture(rec) = &mut *self.graph_state() {
            rec.groups.push(DevPtr(h));
        }
        Ok(())
    }

    /// Starts re-recording the group `h` (the stream is not capturing).
    pub(crate) fn task_update_begin(&self, h: DevPtr) -> Result<()> {
        let f = self.task_fn(
            self.cann.acl.aclmdlRICaptureTaskUpdateBegin,
            "aclmdlRICaptureTaskUpdateBegin",
        )?;
        self.bind()?;
        // SAFETY: a group of a live graph of this device; the device's stream.
        let rc = unsafe { f(self.stream.0, h.0) };
        self.cann
            .check(rc, "aclmdlRICaptureTaskUpdateBegin")
            .map_err(dev_err)
    }

    pub(crate) fn task_update_end(&self) -> Result<()> {
        let acl = &self.cann.acl;
        self.on_stream(
            acl.aclmdlRICaptureTaskUpdateEnd,
            "aclmdlRICaptureTaskUpdateEnd",
        )
    }
}

impl AscendBackend {
    /// How this backend captures decode steps (with `graph_capture` on).
    pub fn graph_kind(&self) -> GraphKind {
        let acl = &self.cann().acl;
        let why = if !self.opts.full_graph {
            Some("full graphs turned off")
        } else if acl.aclmdlRICaptureTaskGrpBegin.is_none()
            || acl.aclmdlRICaptureTaskGrpEnd.is_none()
            || acl.aclmdlRICaptureTaskUpdateBegin.is_none()
            || acl.aclmdlRICaptureTaskUpdateEnd.is_none()
        {
            Some("this CANN does not export the aclmdlRICaptureTask* update API")
        } else if self.opts.kv_cache_f32 {
            Some("F32 KV cache: attention runs as per-sequence ops shaped by each context")
        } else if self.opts.attention_backend != AttentionBackend::Fia {
            Some("custom attention kernels take no task update")
        } else if self.attention_api.is_none() {
            Some("no fused infer attention exported")
        } else {
            None
        };
        why.map_or(GraphKind::Full, GraphKind::Piecewise)
    }

    /// Logs the decode graph mode once per backend.
    pub(crate) fn log_graph_kind(&self) {
        if self
            .graph_kind_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        match self.graph_kind() {
            GraphKind::Full => tracing::info!(
                "decode graphs: full (attention inside, its lengths updated per replay through aclmdlRICaptureTaskUpdate)"
            ),
            GraphKind::Piecewise(why) => {
                tracing::info!("decode graphs: piecewise, because {why}")
            }
        }
    }

    /// Whether the step being captured or replayed is a full graph.
    pub(crate) fn full_graph_step(&self) -> bool {
        match &*self.device().graph_state() {
            GraphMode::Capture(rec) => rec.full,
            GraphMode::Replay { step, .. } => step.full,
            GraphMode::Off => false,
        }
    }

    /// A new KV cache: full graphs hold the old one's address, so they go (and are
    /// captured again at their next decode step).
    pub(crate) fn kv_cache_changed(&self) -> Result<()> {
        let full = self.graphs.lock().is_ok_and(|g| g.values().any(|s| s.full));
        if full {
            self.drop_graphs()?;
        }
        Ok(())
    }

    /// Attention inside a full graph: captured in its own task group, or (replaying)
    /// re-issued as that group's update with this step's lengths.
    pub(crate) fn attention_full(
        &self,
        q: &AscendTensor,
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        g: &AttnGeometry,
    ) -> Result<AscendTensor> {
        let s = cache.shape;
        let out_dt = q.dt;
        // Casts stay outside the group: it may hold single operator calls only.
        let qc = self.cast(q, Dt::BF16)?;
        let qb = qc.as_ref().unwrap_or(q);
        let (k, v) = (&cache.k[layer], &cache.v[layer]);
        let dev = self.device();
        let replay_group = match &mut *dev.graph_state() {
            GraphMode::Replay {
                step: captured,
                group,
                updating,
                ..
            } => {
                let h = *captured
                    .groups
                    .get(*group)
                    .ok_or_else(|| diverged("more attention calls than task groups"))?;
                *group += 1;
                *updating = true;
                Some(h)
            }
            _ => None,
        };
        let out = match replay_group {
            Some(h) => {
                let r = dev
                    .task_update_begin(h)
                    .and_then(|()| self.fia(qb, k, v, step, g, &s));
                // The update is closed even when the op failed, so the stream is usable.
                let end = dev.task_update_end();
                if let GraphMode::Replay { updating, .. } = &mut *dev.graph_state() {
                    *updating = false;
                }
                let out = r?;
                end?;
                out
            }
            None => {
                dev.task_group_begin()?;
                let r = self.fia(qb, k, v, step, g, &s);
                let end = dev.task_group_end();
                let out = r?;
                end?;
                out
            }
        };
        let mut out = match self.cast(&out, out_dt)? {
            Some(o) => o,
            None => out,
        };
        out.shape = q.shape.clone();
        Ok(out)
    }
}

pub(crate) fn diverged(what: &str) -> BackendError {
    BackendError::Device(format!("graph replay diverged from its capture: {what}"))
}
