//! The device, its context and stream, and a caching pool over `aclrtMalloc`.
//!
//! Activations come and go every op; allocating each from the driver would cost a
//! synchronous call per op per step. Freed activation buffers go back to a free list keyed by
//! size class and are handed out again. One stream per device executes in order, so a buffer
//! released after its last op was enqueued can be reused by a later op on the same stream
//! without waiting: the later op runs after the earlier one.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

use ascend_sys::types::*;
use ascend_sys::Cann;

use crate::host_calls::{self, Counter};
use qwen3_backend::{BackendError, Result};

pub use crate::mem_kind::{MemByKind, MemKind};

/// A device address (never dereferenced on the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevPtr(pub *mut c_void);

// SAFETY: a device address is an opaque number to the host; every use goes through the
// runtime, which is thread-safe, with the owning context bound on the calling thread.
unsafe impl Send for DevPtr {}
// SAFETY: as above.
unsafe impl Sync for DevPtr {}

/// Rounds a request up to its size class: 512-byte granules up to 1 MiB, then eight classes
/// per power of two (at most 12.5% waste), so that similar shapes share buffers.
pub fn size_class(bytes: usize) -> usize {
    const GRANULE: usize = 512;
    const SMALL: usize = 1 << 20;
    let b = bytes.max(1);
    if b <= SMALL {
        return b.div_ceil(GRANULE) * GRANULE;
    }
    let pow = usize::BITS - 1 - b.leading_zeros(); // floor(log2 b)
    let step = 1usize << (pow - 3);
    b.div_ceil(step) * step
}

/// Counters of the pool, for logs, tests and `doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Calls to `aclrtMalloc` (pooled and direct).
    pub device_mallocs: u64,
    /// Calls to `aclrtFree`.
    pub device_frees: u64,
    /// Pooled requests served from the free lists.
    pub hits: u64,
    /// Pooled requests that needed a new device allocation.
    pub misses: u64,
    /// Bytes handed out and not yet returned (pooled and direct).
    pub bytes_in_use: u64,
    /// Bytes sitting in the free lists.
    pub bytes_cached: u64,
    /// Highest `bytes_in_use + bytes_cached` seen.
    pub peak_bytes: u64,
    /// Bytes held by kind (graph-owned buffers included, which `bytes_in_use` leaves out);
    /// with `bytes_cached`, every byte this device has from the driver.
    pub by_kind: MemByKind,
}

#[derive(Default)]
struct PoolState {
    free: HashMap<usize, Vec<DevPtr>>,
    stats: PoolStats,
}

/// One device: its context, its stream, and the memory pool. Shared by every tensor of the
/// backend (tensors return their buffers here when dropped).
pub struct Device {
    pub cann: Arc<Cann>,
    pub id: i32,
    ctx: DevPtr,
    /// Unique per opened device, for the per-thread binding cache.
    uid: u64,
    pub stream: DevPtr,
    pool: Mutex<PoolState>,
    /// Page-locked host memory that queued copies read or write (`staging.rs`): a slot is
    /// reused only after the stream has been synchronised.
    staging: Mutex<crate::staging::Staging>,
    graph: Mutex<GraphMode>,
    /// The operator workspace every op of the stream shares (`workspace.rs`).
    workspace: Mutex<crate::workspace::SharedWorkspace>,
}

/// What a captured decode step owns: its graph segments (the ops between attention calls)
/// and every device buffer its ops use, in the order the step allocated them.
pub struct CapturedStep {
    dev: Arc<Device>,
    pub segments: Vec<DevPtr>,
    /// Tensor buffers, in allocation order (replays hand them out again in that order).
    pub allocs: Vec<(DevPtr, usize)>,
    /// A full-graph step (`graph_full.rs`): one segment, attention inside, and the task
    /// group of each attention call, updated with the step's lengths before each replay.
    pub full: bool,
    pub groups: Vec<DevPtr>,
    /// Every device allocation the graph owns (tensors) with its bytes, freed with it.
    owned: Vec<(DevPtr, usize)>,
    /// The shared operator workspaces its ops were captured with.
    _workspaces: Vec<Arc<crate::workspace::WorkspaceBuf>>,
}

impl Drop for CapturedStep {
    fn drop(&mut self) {
        let _ = self.dev.synchronize();
        let cann = &self.dev.cann;
        if let Some(destroy) = cann.acl.aclmdlRIDestroy {
            for ri in &self.segments {
                // SAFETY: made by aclmdlRICaptureEnd, destroyed once, nothing queued uses it.
                unsafe { destroy(ri.0) };
            }
        }
        for &(p, bytes) in &self.owned {
            self.dev.free_now(p);
            self.dev.pool().stats.by_kind.sub(MemKind::Graphs, bytes);
        }
    }
}

/// A capture in progress.
#[derive(Default)]
pub struct Recording {
    pub segments: Vec<DevPtr>,
    pub allocs: Vec<(DevPtr, usize)>,
    pub full: bool,
    pub groups: Vec<DevPtr>,
    owned: Vec<(DevPtr, usize)>,
    /// Shared operator workspaces the captured ops use (kept alive by the graph).
    pub workspaces: Vec<Arc<crate::workspace::WorkspaceBuf>>,
    free: HashMap<usize, Vec<DevPtr>>,
    /// The stream is recording (between aclmdlRICaptureBegin and End).
    pub active: bool,
}

/// How the device's allocations and launches behave this step.
#[derive(Default)]
pub enum GraphMode {
    #[default]
    Off,
    /// Recording a step: allocations become the graph's, ops are captured.
    Capture(Recording),
    /// Replaying a step: allocations come from the graph in order, ops are not launched
    /// (except inside an eager region: attention), segments are launched at boundaries.
    Replay {
        step: Arc<CapturedStep>,
        cursor: usize,
        segment: usize,
        eager: bool,
        /// Full graphs: the next task group to update, and whether an update is being
        /// issued (its launches run; its buffers still come from the capture).
        group: usize,
        updating: bool,
    },
}

thread_local! {
    /// The device (by unique id, not by context address, which the runtime may reuse)
    /// whose context is current on this thread; 0 for none.
    static BOUND: Cell<u64> = const { Cell::new(0) };
}

fn count_copy(n: Counter, bytes: Counter, len: usize) {
    host_calls::bump(n);
    host_calls::add(bytes, len as u64);
}

pub fn dev_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Device(e.to_string())
}

/// `aclInit` once per process; a second initialisation (another backend, or the host
/// application) is not an error.
fn acl_init(cann: &Cann) -> Result<()> {
    // SAFETY: a null config path is allowed.
    let rc = unsafe { (cann.acl.aclInit)(std::ptr::null()) };
    if rc == ACL_SUCCESS || rc == ACL_ERROR_REPEAT_INITIALIZE {
        Ok(())
    } else {
        cann.check(rc, "aclInit").map_err(dev_err)
    }
}

/// Devices this process has open (weak: registering keeps none alive), so that telemetry
/// can read their pools without a handle through the engine.
static OPEN: Mutex<Vec<std::sync::Weak<Device>>> = Mutex::new(Vec::new());

/// (device id, pool counters) of every device this process has open, in opening order
/// (several entries for one id when several backends opened it).
pub fn open_pool_stats() -> Vec<(i32, PoolStats)> {
    let open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    open.iter()
        .filter_map(std::sync::Weak::upgrade)
        .map(|d| (d.id, d.stats()))
        .collect()
}

impl Device {
    /// Opens device `id`: sets it, creates a context (bound to this thread) and a stream.
    pub fn open(cann: Arc<Cann>, id: i32) -> Result<Arc<Self>> {
        acl_init(&cann)?;
        let mut count = 0u32;
        // SAFETY: valid out-pointer.
        cann.check(
            unsafe { (cann.acl.aclrtGetDeviceCount)(&mut count) },
            "aclrtGetDeviceCount",
        )
        .map_err(dev_err)?;
        if id < 0 || id as u32 >= count {
            return Err(BackendError::Device(format!(
                "device {id} does not exist ({count} devices visible)"
            )));
        }
        // SAFETY: plain call with a checked device id.
        cann.check(unsafe { (cann.acl.aclrtSetDevice)(id) }, "aclrtSetDevice")
            .map_err(dev_err)?;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the device was set above.
        cann.check(
            unsafe { (cann.acl.aclrtCreateContext)(&mut ctx, id) },
            "aclrtCreateContext",
        )
        .map_err(dev_err)?;
        static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let uid = NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        BOUND.with(|c| c.set(uid));
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer, context current on this thread.
        let rc = unsafe { (cann.acl.aclrtCreateStream)(&mut stream) };
        if let Err(e) = cann.check(rc, "aclrtCreateStream") {
            // SAFETY: the context was created above and nothing uses it yet.
            unsafe { (cann.acl.aclrtDestroyContext)(ctx) };
            BOUND.with(|c| c.set(0));
            return Err(dev_err(e));
        }
        let dev = Arc::new(Self {
            cann,
            id,
            ctx: DevPtr(ctx),
            uid,
            stream: DevPtr(stream),
            pool: Mutex::new(PoolState::default()),
            staging: Mutex::new(Default::default()),
            graph: Mutex::new(GraphMode::Off),
            workspace: Mutex::new(Default::default()),
        });
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&dev));
        Ok(dev)
    }

    /// Makes this device's context current on the calling thread (a no-op when it already
    /// is): the engine may step a single-rank executor on another thread than the one that
    /// built it.
    pub fn bind(&self) -> Result<()> {
        if BOUND.with(|c| c.get()) == self.uid {
            return Ok(());
        }
        // SAFETY: the context lives as long as `self`.
        let rc = unsafe { (self.cann.acl.aclrtSetCurrentContext)(self.ctx.0) };
        self.cann
            .check(rc, "aclrtSetCurrentContext")
            .map_err(dev_err)?;
        BOUND.with(|c| c.set(self.uid));
        Ok(())
    }

    /// Counts a driver allocation made outside the pool (the shared workspace) under `kind`:
    /// `held` on allocation, not on free; in use like a direct allocation (`alloc_direct`).
    pub(crate) fn count_outside_pool(&self, kind: MemKind, bytes: usize, held: bool) {
        let mut g = self.pool();
        if held {
            g.stats.bytes_in_use += bytes as u64;
            g.stats.by_kind.add(kind, bytes);
            let total = g.stats.bytes_in_use + g.stats.bytes_cached;
            g.stats.peak_bytes = g.stats.peak_bytes.max(total);
        } else {
            g.stats.bytes_in_use = g.stats.bytes_in_use.saturating_sub(bytes as u64);
            g.stats.by_kind.sub(kind, bytes);
        }
    }

    fn pool(&self) -> MutexGuard<'_, PoolState> {
        // A poisoned pool only means another thread panicked mid-update of counters.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn malloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer; context bound.
        let rc = unsafe {
            (self.cann.acl.aclrtMalloc)(
                &mut p,
                bytes,
                aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST,
            )
        };
        if rc != ACL_SUCCESS {
            let msg = self.cann.acl.recent_error_message();
            let oom = rc == ACL_ERROR_RT_MEMORY_ALLOCATION
                || rc == ACL_ERROR_BAD_ALLOC
                || rc == ACL_ERROR_RT_DEVICE_OOM;
            let text = format!("aclrtMalloc({bytes}) failed with aclError {rc}: {msg}");
            return Err(if oom {
                BackendError::OutOfMemory(text)
            } else {
                BackendError::Device(text)
            });
        }
        let mut g = self.pool();
        g.stats.device_mallocs += 1;
        Ok(DevPtr(p))
    }

    pub(crate) fn free_now(&self, p: DevPtr) {
        if self.bind().is_err() {
            return;
        }
        // SAFETY: `p` came from aclrtMalloc on this device and is freed once.
        let rc = unsafe { (self.cann.acl.aclrtFree)(p.0) };
        if rc != ACL_SUCCESS {
            tracing::warn!(
                "aclrtFree failed with {rc}: {}",
                self.cann.acl.recent_error_message()
            );
        }
        self.pool().stats.device_frees += 1;
    }

    /// A buffer of at least `bytes` from the pool (activations, workspaces, step data).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
        self.alloc_kind(bytes, GraphUse::Step)
    }

    /// A buffer the host fills (step inputs): like [`Device::alloc`], but in graph mode one
    /// that no other tensor of the step shares.
    pub fn alloc_input(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
        self.alloc_kind(bytes, GraphUse::Input)
    }

    /// A buffer an eager region (attention) writes and the next graph segment reads: in
    /// graph mode, the graph's even inside the eager region.
    pub fn alloc_region_output(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
        self.alloc_kind(bytes, GraphUse::RegionOutput)
    }

    fn alloc_kind(self: &Arc<Self>, bytes: usize, usage: GraphUse) -> Result<Buffer> {
        let class = size_class(bytes);
        if let Some(b) = self.graph_alloc(class, usage)? {
            return Ok(b);
        }
        let reused = {
            let mut g = self.pool();
            let hit = g.free.get_mut(&class).and_then(Vec::pop);
            if hit.is_some() {
                g.stats.hits += 1;
                g.stats.bytes_cached -= class as u64;
                g.stats.bytes_in_use += class as u64;
                g.stats.by_kind.add(MemKind::Activations, class);
            }
            hit
        };
        let ptr = match reused {
            Some(p) => p,
            None => {
                let p = match self.malloc(class) {
                    Ok(p) => p,
                    Err(BackendError::OutOfMemory(_)) => {
                        // Cached buffers of other classes may be what is missing.
                        self.empty_cache()?;
                        self.malloc(class)?
                    }
                    Err(e) => return Err(e),
                };
                let mut g = self.pool();
                g.stats.misses += 1;
                g.stats.bytes_in_use += class as u64;
                g.stats.by_kind.add(MemKind::Activations, class);
                let total = g.stats.bytes_in_use + g.stats.bytes_cached;
                g.stats.peak_bytes = g.stats.peak_bytes.max(total);
                p
            }
        };
        Ok(Buffer {
            dev: Arc::clone(self),
            ptr,
            bytes: class,
            kind: BufKind::Pooled,
        })
    }

    /// A buffer of exactly `bytes` straight from the driver, freed to the driver on drop:
    /// weights and KV caches (`kind`), which live long and would only fragment the pool.
    pub fn alloc_direct(self: &Arc<Self>, bytes: usize, kind: MemKind) -> Result<Buffer> {
        let bytes = bytes.max(1);
        let ptr = match self.malloc(bytes) {
            Ok(p) => p,
            Err(BackendError::OutOfMemory(_)) => {
                self.empty_cache()?;
                self.malloc(bytes)?
            }
            Err(e) => return Err(e),
        };
        let mut g = self.pool();
        g.stats.bytes_in_use += bytes as u64;
        g.stats.by_kind.add(kind, bytes);
        let total = g.stats.bytes_in_use + g.stats.bytes_cached;
        g.stats.peak_bytes = g.stats.peak_bytes.max(total);
        Ok(Buffer {
            dev: Arc::clone(self),
            ptr,
            bytes,
            kind: BufKind::Direct(kind),
        })
    }

    fn release(&self, b: &Buffer) {
        if b.kind == BufKind::GraphInput {
            return;
        }
        if b.kind == BufKind::Graph {
            // Reused by later allocations of the same capture (replays repeat the pattern).
            if let GraphMode::Capture(rec) = &mut *self.graph_state() {
                rec.free.entry(b.bytes).or_default().push(b.ptr);
            }
            return;
        }
        if let BufKind::Direct(kind) = b.kind {
            // Queued ops may still read it: wait for them before the driver reuses it.
            let _ = self.synchronize();
            let mut g = self.pool();
            g.stats.bytes_in_use -= b.bytes as u64;
            g.stats.by_kind.sub(kind, b.bytes);
            drop(g);
            self.free_now(b.ptr);
        } else {
            let mut g = self.pool();
            g.stats.bytes_in_use -= b.bytes as u64;
            g.stats.bytes_cached += b.bytes as u64;
            g.stats.by_kind.sub(MemKind::Activations, b.bytes);
            g.free.entry(b.bytes).or_default().push(b.ptr);
        }
    }

    pub fn graph_state(&self) -> MutexGuard<'_, GraphMode> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of the graph being captured or replayed, or `None` outside graph mode.
    fn graph_alloc(self: &Arc<Self>, class: usize, usage: GraphUse) -> Result<Option<Buffer>> {
        let input = usage == GraphUse::Input;
        let mut g = self.graph_state();
        let ptr = match &mut *g {
            // Outside graph mode, and inside eager regions (attention, whose shapes change
            // with the context every step): the pool.
            GraphMode::Off => return Ok(None),
            GraphMode::Capture(Recording { active: false, .. })
            | GraphMode::Replay { eager: true, .. }
                if usage != GraphUse::RegionOutput =>
            {
                return Ok(None)
            }
            GraphMode::Capture(rec) => {
                let reuse = if input {
                    None
                } else {
                    rec.free.get_mut(&class).and_then(Vec::pop)
                };
                let p = match reuse {
                    Some(p) => p,
                    None => {
                        drop(g);
                        let p = self.malloc(class)?;
                        self.pool().stats.by_kind.add(MemKind::Graphs, class);
                        g = self.graph_state();
                        match &mut *g {
                            GraphMode::Capture(rec) => rec.owned.push((p, class)),
                            _ => {
                                return Err(BackendError::Device(
                                    "graph capture ended during an allocation".into(),
                                ))
                            }
                        }
                        p
                    }
                };
                if let GraphMode::Capture(rec) = &mut *g {
                    rec.allocs.push((p, class));
                }
                p
            }
            GraphMode::Replay { step, cursor, .. } => {
                let Some(&(p, size)) = step.allocs.get(*cursor) else {
                    return Err(BackendError::Device(
                        "graph replay diverged from its capture (more allocations)".into(),
                    ));
                };
                if size != class {
                    return Err(BackendError::Device(format!(
                        "graph replay diverged from its capture (allocation {cursor}: {class} bytes, captured {size})"
                    )));
                }
                *cursor += 1;
                p
            }
        };
        Ok(Some(Buffer {
            dev: Arc::clone(self),
            ptr,
            bytes: class,
            kind: if input {
                BufKind::GraphInput
            } else {
                BufKind::Graph
            },
        }))
    }

    pub(crate) fn shared_workspace(&self) -> MutexGuard<'_, crate::workspace::SharedWorkspace> {
        self.workspace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether aclnn launches are skipped (replaying outside an eager region).
    pub fn skip_launch(&self) -> bool {
        matches!(
            &*self.graph_state(),
            GraphMode::Replay {
                eager: false,
                updating: false,
                ..
            }
        )
    }

    /// Starts recording the stream (relaxed mode: the blocking copies that fill the graph's
    /// input buffers stay allowed).
    pub fn begin_capture(&self) -> Result<()> {
        let begin = self
            .cann
            .acl
            .aclmdlRICaptureBegin
            .ok_or_else(|| BackendError::Unsupported("aclmdlRICaptureBegin".into()))?;
        self.bind()?;
        // SAFETY: the device's stream; mode is one of CANN's values.
        let rc = unsafe {
            begin(
                self.stream.0,
                aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_RELAXED,
            )
        };
        self.cann
            .check(rc, "aclmdlRICaptureBegin")
            .map_err(dev_err)?;
        if let GraphMode::Capture(rec) = &mut *self.graph_state() {
            rec.active = true;
        }
        Ok(())
    }

    /// Ends the recording, keeps the segment and launches it (the capturing step needs
    /// its results too).
    pub fn end_capture(&self) -> Result<()> {
        let (end, exec) = match (
            self.cann.acl.aclmdlRICaptureEnd,
            self.cann.acl.aclmdlRIExecuteAsync,
        ) {
            (Some(e), Some(x)) => (e, x),
            _ => return Err(BackendError::Unsupported("aclmdlRICaptureEnd".into())),
        };
        self.bind()?;
        let mut ri = std::ptr::null_mut();
        // SAFETY: the stream is capturing (begun by `begin_capture`); valid out-pointer.
        let rc = unsafe { end(self.stream.0, &mut ri) };
        if let GraphMode::Capture(rec) = &mut *self.graph_state() {
            rec.active = false;
            if rc == ACL_SUCCESS {
                rec.segments.push(DevPtr(ri));
            }
        }
        self.cann.check(rc, "aclmdlRICaptureEnd").map_err(dev_err)?;
        host_calls::bump(Counter::Graph);
        // SAFETY: a graph just captured on this device, launched on its stream.
        let rc = unsafe { exec(ri, self.stream.0) };
        self.cann.check(rc, "aclmdlRIExecuteAsync").map_err(dev_err)
    }

    /// Ends a recording that will not be used (a step failed while capturing).
    pub fn abort_capture(&self) {
        if let GraphMode::Capture(rec) = &mut *self.graph_state() {
            rec.active = false;
        }
        let (Some(end), Some(destroy)) = (
            self.cann.acl.aclmdlRICaptureEnd,
            self.cann.acl.aclmdlRIDestroy,
        ) else {
            return;
        };
        if self.bind().is_err() {
            return;
        }
        let mut ri = std::ptr::null_mut();
        // SAFETY: the stream is capturing; valid out-pointer; the graph is never launched.
        unsafe {
            if end(self.stream.0, &mut ri) == ACL_SUCCESS && !ri.is_null() {
                destroy(ri);
            }
        }
    }

    /// Launches a captured segment.
    pub fn launch_segment(&self, ri: DevPtr) -> Result<()> {
        let exec = self
            .cann
            .acl
            .aclmdlRIExecuteAsync
            .ok_or_else(|| BackendError::Unsupported("aclmdlRIExecuteAsync".into()))?;
        self.bind()?;
        host_calls::bump(Counter::Graph);
        // SAFETY: a live graph of this device, launched on its stream.
        let rc = unsafe { exec(ri.0, self.stream.0) };
        self.cann.check(rc, "aclmdlRIExecuteAsync").map_err(dev_err)
    }

    /// Turns a finished recording into a step graph.
    pub fn finish_recording(self: &Arc<Self>, rec: Recording) -> CapturedStep {
        let mut owned = rec.owned;
        // Buffers still on the capture's free list are owned too (already in `owned`).
        owned.sort_by_key(|p| p.0 .0 as usize);
        owned.dedup_by_key(|p| p.0);
        CapturedStep {
            dev: Arc::clone(self),
            segments: rec.segments,
            allocs: rec.allocs,
            full: rec.full,
            groups: rec.groups,
            owned,
            _workspaces: rec.workspaces,
        }
    }

    /// Returns every cached buffer to the driver (after the stream drains).
    pub fn empty_cache(&self) -> Result<()> {
        self.synchronize()?;
        let ptrs: Vec<DevPtr> = {
            let mut g = self.pool();
            g.stats.bytes_cached = 0;
            g.free.drain().flat_map(|(_, v)| v).collect()
        };
        for p in ptrs {
            self.free_now(p);
        }
        Ok(())
    }

    pub fn stats(&self) -> PoolStats {
        self.pool().stats
    }

    /// Waits for the stream; the staging ring's slots are then free again.
    pub fn synchronize(&self) -> Result<()> {
        self.sync_stream()?;
        self.staging().rewind(&self.cann);
        Ok(())
    }

    fn sync_stream(&self) -> Result<()> {
        self.bind()?;
        host_calls::bump(Counter::Sync);
        // SAFETY: the stream lives as long as `self`.
        let rc = unsafe { (self.cann.acl.aclrtSynchronizeStream)(self.stream.0) };
        self.cann
            .check(rc, "aclrtSynchronizeStream")
            .map_err(dev_err)
    }

    fn staging(&self) -> MutexGuard<'_, crate::staging::Staging> {
        self.staging.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A page-locked slot of `len` bytes, synchronising the stream first when the ring is
    /// full.
    fn staging_slot(&self, len: usize) -> Result<crate::staging::Slot> {
        loop {
            // Bound first: the guard must be gone before `synchronize` takes it again.
            let took = self.staging().take(&self.cann, len)?;
            match took {
                crate::staging::Take::Slot(s) => return Ok(s),
                crate::staging::Take::NeedSync => self.synchronize()?,
            }
        }
    }

    /// Queues a host-to-device copy of `data` into `dst` (at byte offset 0) through the
    /// page-locked staging ring, so the call does not wait for the copy.
    pub fn upload_async(&self, dst: &Buffer, data: &[u8]) -> Result<()> {
        if data.len() > dst.bytes {
            return Err(BackendError::Device(format!(
                "upload of {} bytes into a buffer of {}",
                data.len(),
                dst.bytes
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.bind()?;
        count_copy(Counter::H2d, Counter::H2dBytes, data.len());
        if matches!(&*self.graph_state(), GraphMode::Capture(r) if r.active) {
            host_calls::bump(Counter::Sync);
            // Not recorded: a graph input, refilled by every replay before its segment runs.
            // SAFETY: `dst` holds at least `data.len()` bytes; `data` is readable.
            let rc = unsafe {
                (self.cann.acl.aclrtMemcpy)(
                    dst.ptr.0,
                    dst.bytes,
                    data.as_ptr().cast(),
                    data.len(),
                    aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                )
            };
            return self.cann.check(rc, "aclrtMemcpy").map_err(dev_err);
        }
        let slot = self.staging_slot(data.len())?;
        // SAFETY: the slot holds `data.len()` writable bytes no queued copy uses (it was
        // handed out after the last synchronisation and not since).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), slot.ptr, slot.bytes) };
        // SAFETY: `dst` holds at least `slot.bytes` bytes; the slot stays untouched until
        // the stream has been synchronised.
        let rc = unsafe {
            (self.cann.acl.aclrtMemcpyAsync)(
                dst.ptr.0,
                dst.bytes,
                slot.ptr.cast(),
                slot.bytes,
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                self.stream.0,
            )
        };
        self.cann.check(rc, "aclrtMemcpyAsync").map_err(dev_err)
    }

    /// Copies `data` into `dst` now (weights: a fresh allocation no queued op touches, and
    /// no host copy of the whole model kept around while loading).
    pub fn upload_blocking(&self, dst: &Buffer, data: &[u8]) -> Result<()> {
        if data.len() > dst.bytes {
            return Err(BackendError::Device(format!(
                "upload of {} bytes into a buffer of {}",
                data.len(),
                dst.bytes
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.bind()?;
        count_copy(Counter::H2d, Counter::H2dBytes, data.len());
        host_calls::bump(Counter::Sync);
        // SAFETY: `dst` holds at least `data.len()` bytes; `data` is readable for the call.
        let rc = unsafe {
            (self.cann.acl.aclrtMemcpy)(
                dst.ptr.0,
                dst.bytes,
                data.as_ptr().cast(),
                data.len(),
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
            )
        };
        self.cann.check(rc, "aclrtMemcpy").map_err(dev_err)
    }

    /// Copies `out.len()` bytes from `src` to the host after everything queued has run.
    pub fn download(&self, src: DevPtr, src_bytes: usize, out: &mut [u8]) -> Result<()> {
        if out.len() > src_bytes {
            return Err(BackendError::Device(format!(
                "download of {} bytes from a buffer of {src_bytes}",
                out.len()
            )));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.bind()?;
        count_copy(Counter::D2h, Counter::D2hBytes, out.len());
        // aclrtMemcpyAsync wants 64-byte-aligned addresses: a row inside a buffer is read
        // from the aligned address before it (allocations are aligned, so still inside).
        let lead = src.0 as usize % crate::staging::ALIGN;
        let from = src.0.cast::<u8>().wrapping_sub(lead).cast::<c_void>();
        let len = out.len() + lead;
        let slot = self.staging_slot(len)?;
        // SAFETY: the slot holds `len` writable page-locked bytes; `[from, src + out.len())`
        // lies in the allocation `src` points into.
        let rc = unsafe {
            (self.cann.acl.aclrtMemcpyAsync)(
                slot.ptr.cast(),
                len,
                from,
                len,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                self.stream.0,
            )
        };
        self.cann.check(rc, "aclrtMemcpyAsync").map_err(dev_err)?;
        // The slot holds the bytes once the copy has run; no rewind until they are read.
        self.sync_stream()?;
        // SAFETY: the copy into the slot has run; it holds `lead + out.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(slot.ptr.add(lead), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Device memory as (free, total) bytes, counting the pool's cached buffers as free.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        let rc = unsafe {
            (self.cann.acl.aclrtGetMemInfo)(aclrtMemAttr::ACL_HBM_MEM, &mut free, &mut total)
        };
        self.cann.check(rc, "aclrtGetMemInfo").map_err(dev_err)?;
        Ok((free as u64 + self.stats().bytes_cached, total as u64))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Every buffer holds an Arc to the device, so none is alive here: free the cache and
        // the shared workspace, then the stream and the context.
        let _ = self.empty_cache();
        if let Some(p) = self.shared_workspace().take_last() {
            self.free_now(p);
        }
        self.staging().free(&self.cann);
        if self.bind().is_ok() {
            // SAFETY: created in `open`, destroyed once; nothing is queued after the sync.
            unsafe {
                (self.cann.acl.aclrtDestroyStream)(self.stream.0);
                (self.cann.acl.aclrtDestroyContext)(self.ctx.0);
            }
        }
        BOUND.with(|c| {
            if c.get() == self.uid {
                c.set(0);
            }
        });
    }
}

/// Device memory owned by a tensor; goes back to the pool (or the driver) on drop.
pub struct Buffer {
    dev: Arc<Device>,
    pub ptr: DevPtr,
    /// Usable bytes (the size class for pooled buffers).
    pub bytes: usize,
    kind: BufKind,
}

/// What a buffer asked for in graph mode is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GraphUse {
    /// Step work: the graph's inside a segment, the pool's in an eager region.
    Step,
    /// Filled from the host.
    Input,
    /// Written in an eager region, read by the next segment.
    RegionOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufKind {
    Pooled,
    /// Straight from the driver, holding `MemKind`.
    Direct(MemKind),
    /// Owned by a captured graph (freed with it), handed out while capturing or replaying.
    Graph,
    /// A graph's input, filled from the host: never reused within the capture, since the
    /// host writes it outside the stream's order.
    GraphInput,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.dev.release(self);
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("ptr", &self.ptr.0)
            .field("bytes", &self.bytes)
            .field("kind", &self.kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        // Just above 1 MiB: steps of 128 KiB.
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 17));
        for b in [3_000_000usize, 77_777_777, 1 << 30, (1 << 30) + 5] {
            let c = size_class(b);
            assert!(c >= b);
            assert!((c - b) as f64 <= b as f64 / 8.0, "{b} -> {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
        }
    }
}
