//! Host staging for per-step copies: a ring of page-locked (`aclrtMallocHost`) memory.
//!
//! `aclrtMemcpyAsync` is asynchronous only from page-locked memory; from pageable memory it
//! returns when the copy is done (CANN 8.3 aclrtMemcpyAsync, function description), which
//! stalls the host on every step's inputs. Its addresses must also be 64-byte aligned (same
//! page, constraints). So uploads are copied into the ring at 64-byte-aligned offsets and
//! copied from there; a slot is free again once the stream has been synchronised (every
//! queued copy that read it has run), which [`Device::synchronize`] records by rewinding the
//! ring. A copy larger than the ring gets a page-locked buffer of its own until that sync.

use std::ffi::c_void;

use ascend_sys::Cann;
use qwen3_backend::{BackendError, Result};

/// Bytes of the ring: a step's inputs (ids, positions, slots, block tables) are far smaller.
pub const RING_BYTES: usize = 4 << 20;

/// The alignment aclrtMemcpyAsync asks of its addresses.
pub const ALIGN: usize = 64;

/// One `aclrtMallocHost` allocation.
struct Pinned {
    ptr: *mut u8,
    bytes: usize,
}

/// The ring and the oversized buffers waiting for the next synchronisation.
#[derive(Default)]
pub struct Staging {
    ring: Option<Pinned>,
    head: usize,
    oversized: Vec<Pinned>,
}

// SAFETY: the host memory is owned by the Staging (behind the device's mutex) and only
// touched under that mutex or by the runtime's copies.
unsafe impl Send for Staging {}

fn malloc_host(cann: &Cann, bytes: usize) -> Result<Pinned> {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    let rc = unsafe { (cann.acl.aclrtMallocHost)(&mut p, bytes) };
    cann.check(rc, "aclrtMallocHost")
        .map_err(|e| BackendError::Device(e.to_string()))?;
    if !(p as usize).is_multiple_of(ALIGN) {
        // SAFETY: just allocated, unused.
        unsafe { (cann.acl.aclrtFreeHost)(p) };
        return Err(BackendError::Device(format!(
            "aclrtMallocHost returned {p:p}, not {ALIGN}-byte aligned"
        )));
    }
    Ok(Pinned {
        ptr: p.cast(),
        bytes,
    })
}

/// Where `take` put the bytes: page-locked, aligned, valid until the next rewind.
pub struct Slot {
    pub ptr: *mut u8,
    pub bytes: usize,
}

/// What the caller must do before a slot of `len` bytes can be had.
pub enum Take {
    Slot(Slot),
    /// The ring is full: synchronise the stream (which rewinds it) and ask again.
    NeedSync,
}

impl Staging {
    /// A slot of `len` bytes (`len > 0`), or `NeedSync` when the ring is full.
    pub fn take(&mut self, cann: &Cann, len: usize) -> Result<Take> {
        if len > RING_BYTES {
            let p = malloc_host(cann, len)?;
            let slot = Slot {
                ptr: p.ptr,
                bytes: len,
            };
            self.oversized.push(p);
            return Ok(Take::Slot(slot));
        }
        if self.ring.is_none() {
            self.ring = Some(malloc_host(cann, RING_BYTES)?);
        }
        let ring = self.ring.as_ref().map_or(std::ptr::null_mut(), |r| r.ptr);
        if self.head + len > RING_BYTES {
            return Ok(Take::NeedSync);
        }
        // SAFETY: head + len <= RING_BYTES, inside the ring's allocation.
        let ptr = unsafe { ring.add(self.head) };
        self.head += len.div_ceil(ALIGN) * ALIGN;
        Ok(Take::Slot(Slot { ptr, bytes: len }))
    }

    /// After a stream synchronisation: every slot is free.
    pub fn rewind(&mut self, cann: &Cann) {
        self.head = 0;
        for p in self.oversized.drain(..) {
            // SAFETY: from aclrtMallocHost; the copies that read it have run.
            unsafe { (cann.acl.aclrtFreeHost)(p.ptr.cast()) };
        }
    }

    /// Frees everything (the device is going; its stream was synchronised).
    pub fn free(&mut self, cann: &Cann) {
        self.rewind(cann);
        if let Some(r) = self.ring.take() {
            debug_assert_eq!(r.bytes, RING_BYTES);
            // SAFETY: from aclrtMallocHost, no queued copy left.
            unsafe { (cann.acl.aclrtFreeHost)(r.ptr.cast()) };
        }
    }
}
