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
use qwen3_backend::{BackendError, Result};

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
    pub stream: DevPtr,
    pool: Mutex<PoolState>,
    /// Host memory read by queued host-to-device copies: kept alive until the stream is
    /// synchronised (the copy reads it when it executes).
    staging: Mutex<Vec<Box<[u8]>>>,
}

thread_local! {
    static BOUND_CTX: Cell<*mut c_void> = const { Cell::new(std::ptr::null_mut()) };
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
        BOUND_CTX.with(|c| c.set(ctx));
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer, context current on this thread.
        let rc = unsafe { (cann.acl.aclrtCreateStream)(&mut stream) };
        if let Err(e) = cann.check(rc, "aclrtCreateStream") {
            // SAFETY: the context was created above and nothing uses it yet.
            unsafe { (cann.acl.aclrtDestroyContext)(ctx) };
            BOUND_CTX.with(|c| c.set(std::ptr::null_mut()));
            return Err(dev_err(e));
        }
        Ok(Arc::new(Self {
            cann,
            id,
            ctx: DevPtr(ctx),
            stream: DevPtr(stream),
            pool: Mutex::new(PoolState::default()),
            staging: Mutex::new(Vec::new()),
        }))
    }

    /// Makes this device's context current on the calling thread (a no-op when it already
    /// is): the engine may step a single-rank executor on another thread than the one that
    /// built it.
    pub fn bind(&self) -> Result<()> {
        if BOUND_CTX.with(|c| c.get()) == self.ctx.0 {
            return Ok(());
        }
        // SAFETY: the context lives as long as `self`.
        let rc = unsafe { (self.cann.acl.aclrtSetCurrentContext)(self.ctx.0) };
        self.cann
            .check(rc, "aclrtSetCurrentContext")
            .map_err(dev_err)?;
        BOUND_CTX.with(|c| c.set(self.ctx.0));
        Ok(())
    }

    fn pool(&self) -> MutexGuard<'_, PoolState> {
        // A poisoned pool only means another thread panicked mid-update of counters.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn malloc(&self, bytes: usize) -> Result<DevPtr> {
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

    fn free_now(&self, p: DevPtr) {
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
        let class = size_class(bytes);
        let reused = {
            let mut g = self.pool();
            let hit = g.free.get_mut(&class).and_then(Vec::pop);
            if hit.is_some() {
                g.stats.hits += 1;
                g.stats.bytes_cached -= class as u64;
                g.stats.bytes_in_use += class as u64;
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
                let total = g.stats.bytes_in_use + g.stats.bytes_cached;
                g.stats.peak_bytes = g.stats.peak_bytes.max(total);
                p
            }
        };
        Ok(Buffer {
            dev: Arc::clone(self),
            ptr,
            bytes: class,
            pooled: true,
        })
    }

    /// A buffer of exactly `bytes` straight from the driver, freed to the driver on drop:
    /// weights and KV caches, which live long and would only fragment the pool.
    pub fn alloc_direct(self: &Arc<Self>, bytes: usize) -> Result<Buffer> {
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
        let total = g.stats.bytes_in_use + g.stats.bytes_cached;
        g.stats.peak_bytes = g.stats.peak_bytes.max(total);
        Ok(Buffer {
            dev: Arc::clone(self),
            ptr,
            bytes,
            pooled: false,
        })
    }

    fn release(&self, b: &Buffer) {
        if b.pooled {
            let mut g = self.pool();
            g.stats.bytes_in_use -= b.bytes as u64;
            g.stats.bytes_cached += b.bytes as u64;
            g.free.entry(b.bytes).or_default().push(b.ptr);
        } else {
            // Queued ops may still read it: wait for them before the driver reuses it.
            let _ = self.synchronize();
            self.pool().stats.bytes_in_use -= b.bytes as u64;
            self.free_now(b.ptr);
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

    /// Waits for the stream; host staging buffers of queued copies can then go.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the stream lives as long as `self`.
        let rc = unsafe { (self.cann.acl.aclrtSynchronizeStream)(self.stream.0) };
        self.cann
            .check(rc, "aclrtSynchronizeStream")
            .map_err(dev_err)?;
        self.staging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Queues a host-to-device copy of `data` into `dst` (at byte offset 0); the bytes are
    /// kept until the next synchronisation.
    pub fn upload_async(&self, dst: &Buffer, data: Box<[u8]>) -> Result<()> {
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
        // SAFETY: `dst` holds at least `data.len()` bytes; `data` is moved into `staging`
        // below and lives until the stream has been synchronised.
        let rc = unsafe {
            (self.cann.acl.aclrtMemcpyAsync)(
                dst.ptr.0,
                dst.bytes,
                data.as_ptr().cast(),
                data.len(),
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                self.stream.0,
            )
        };
        self.cann.check(rc, "aclrtMemcpyAsync").map_err(dev_err)?;
        self.staging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(data);
        Ok(())
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
        // SAFETY: `out` is writable for its length; `src` holds at least that many bytes.
        let rc = unsafe {
            (self.cann.acl.aclrtMemcpyAsync)(
                out.as_mut_ptr().cast(),
                out.len(),
                src.0,
                out.len(),
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                self.stream.0,
            )
        };
        self.cann.check(rc, "aclrtMemcpyAsync").map_err(dev_err)?;
        // The host may only read `out` once the copy has executed.
        self.synchronize()
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
        // Every buffer holds an Arc to the device, so none is alive here: free the cache,
        // then the stream and the context.
        let _ = self.empty_cache();
        if self.bind().is_ok() {
            // SAFETY: created in `open`, destroyed once; nothing is queued after the sync.
            unsafe {
                (self.cann.acl.aclrtDestroyStream)(self.stream.0);
                (self.cann.acl.aclrtDestroyContext)(self.ctx.0);
            }
        }
        BOUND_CTX.with(|c| {
            if c.get() == self.ctx.0 {
                c.set(std::ptr::null_mut());
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
    pooled: bool,
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
            .field("pooled", &self.pooled)
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
