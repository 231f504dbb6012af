//! The operator workspace: one device buffer shared by every aclnn call of a device.
//!
//! CANN's ops ask for workspace in phase 1 (AscendC kernels reserve a 16 MiB system part
//! plus their own scratch) and use it only while they run. The device has one stream, which
//! runs ops one after another, so one buffer serves them all, eager or captured. It grows
//! (outside capture) to the largest request seen; captured graphs keep the buffer they were
//! recorded with alive, so every graph of a size shares one buffer instead of owning one per
//! op. Growing while capturing would need an `aclrtMalloc` inside the capture (and the
//! captured graph would pin a new buffer each time): [`Device::reserve_workspace`] grows it
//! ahead, and a capture that still needs more is counted in [`WorkspaceStats`].

use std::sync::{Arc, Weak};

use qwen3_backend::{BackendError, Result};

use crate::mem::{size_class, DevPtr, Device, GraphMode, MemKind};
use crate::AscendBackend;

/// One workspace buffer, straight from the driver (the pool would hand a released one to a
/// tensor while a graph still uses it). Freed when its last holder (the device, graphs
/// captured with it) lets go; it holds the device weakly, since the device holds it.
pub struct WorkspaceBuf {
    pub ptr: DevPtr,
    pub bytes: usize,
    dev: Weak<Device>,
}

impl Drop for WorkspaceBuf {
    fn drop(&mut self) {
        // Without the device (it is being dropped) the device frees it itself.
        if let Some(dev) = self.dev.upgrade() {
            // Queued ops may still use it.
            let _ = dev.synchronize();
            dev.free_now(self.ptr);
            dev.count_outside_pool(MemKind::Activations, self.bytes, false);
        }
    }
}

/// Counters of the shared workspace, for tests, logs and `doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkspaceStats {
    /// Bytes of the current buffer.
    pub bytes: u64,
    /// Times the buffer was replaced by a larger one.
    pub grows: u64,
    /// Of those, the ones that happened while a graph was being captured.
    pub grows_while_capturing: u64,
}

/// The device's shared workspace (behind the device's mutex).
#[derive(Default)]
pub struct SharedWorkspace {
    current: Option<Arc<WorkspaceBuf>>,
    stats: WorkspaceStats,
}

impl SharedWorkspace {
    /// The current buffer's address when nothing else holds it (the device frees it as it
    /// is dropped: the buffer cannot, its device being gone).
    pub(crate) fn take_last(&mut self) -> Option<DevPtr> {
        let w = Arc::try_unwrap(self.current.take()?).ok()?;
        let p = w.ptr;
        std::mem::forget(w);
        Some(p)
    }
}

impl Device {
    /// A workspace of at least `bytes` for one op on this device's stream. While capturing,
    /// the graph keeps the buffer alive.
    pub fn workspace(self: &Arc<Self>, bytes: usize) -> Result<Arc<WorkspaceBuf>> {
        let capturing = matches!(&*self.graph_state(), GraphMode::Capture(r) if r.active);
        let (buf, old) = self.grow_workspace(bytes, capturing)?;
        if capturing {
            // The graph keeps what it uses; a replaced buffer may still be read by ops queued
            // before the capture, and freeing it would need a stream sync, not allowed now.
            if let GraphMode::Capture(rec) = &mut *self.graph_state() {
                for w in std::iter::once(Arc::clone(&buf)).chain(old) {
                    if !rec.workspaces.iter().any(|r| Arc::ptr_eq(r, &w)) {
                        rec.workspaces.push(w);
                    }
                }
            }
        }
        Ok(buf)
    }

    /// Grows the shared workspace to at least `bytes` now (before capturing graphs whose
    /// ops are known to ask for that much).
    pub fn reserve_workspace(self: &Arc<Self>, bytes: usize) -> Result<()> {
        self.grow_workspace(bytes, false).map(drop)
    }

    /// The buffer to use, and the one it replaced (if it grew).
    fn grow_workspace(
        self: &Arc<Self>,
        bytes: usize,
        capturing: bool,
    ) -> Result<(Arc<WorkspaceBuf>, Option<Arc<WorkspaceBuf>>)> {
        let mut ws = self.shared_workspace();
        if let Some(cur) = &ws.current {
            if cur.bytes >= bytes {
                return Ok((Arc::clone(cur), None));
            }
        }
        if capturing {
            tracing::warn!(
                "operator workspace grows to {bytes} bytes while capturing a graph: reserve it before capture"
            );
            ws.stats.grows_while_capturing += 1;
        }
        // The old buffer is freed when the last graph holding it goes (its drop waits for
        // the stream, so no queued op still uses it).
        let size = size_class(bytes);
        let ptr = match self.malloc(size) {
            Ok(p) => p,
            Err(BackendError::OutOfMemory(_)) if !capturing => {
                self.empty_cache()?;
                self.malloc(size)?
            }
            Err(e) => return Err(e),
        };
        // Counted with the pool's activations: `MemKind` files operator workspaces there.
        self.count_outside_pool(MemKind::Activations, size, true);
        let buf = Arc::new(WorkspaceBuf {
            ptr,
            bytes: size,
            dev: Arc::downgrade(self),
        });
        ws.stats.grows += 1;
        ws.stats.bytes = buf.bytes as u64;
        let old = ws.current.replace(Arc::clone(&buf));
        Ok((buf, old))
    }

    pub fn workspace_stats(&self) -> WorkspaceStats {
        self.shared_workspace().stats
    }
}

impl AscendBackend {
    /// Counters of the device's shared operator workspace.
    pub fn workspace_stats(&self) -> WorkspaceStats {
        self.device().workspace_stats()
    }
}
