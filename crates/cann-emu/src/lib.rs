//! An emulated CANN for tests: the ACL runtime, nnopbase, the aclnn operators the
//! backend uses and HCCL, exported as C symbols with CANN's signatures from a cdylib and
//! implemented on the CPU with memory checks (out-of-bounds, use-after-free, double free,
//! leaks, wrong copy directions); also DCMI, the device-management library (`libdcmi.so`)
//! `npu-smi` reads, with settable readings (see `dcmi`).
//!
//! Never shipped and never loaded unless pointed at: [`harness`] finds the built
//! `libcann_emu.so`, makes a directory of symlinks named as CANN's libraries and hands it
//! to `ascend_sys::Cann::load_from`. Operator semantics are written from CANN's
//! documentation, independently of the CPU backend's kernels.

#![allow(clippy::missing_safety_doc)] // every export documents CANN's own contract

/// Exports the second phase of aclnn operators (all share one signature) and checks
/// each against ascend-sys.
macro_rules! phase2_exports {
    ($($name:ident),* $(,)?) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            workspace: *mut std::ffi::c_void,
            workspace_size: u64,
            executor: *mut ascend_sys::types::aclOpExecutor,
            stream: ascend_sys::types::aclrtStream,
        ) -> ascend_sys::types::aclnnStatus {
            crate::nnop::phase2(stringify!($name), workspace, workspace_size, executor, stream)
        }
        const _: ascend_sys::fns::$name = $name;
    )*};
}

pub mod harness;

mod copy;
mod dcmi;
mod dtype;
mod hccl;
mod hccl_net;
mod hccl_p2p;
mod kernels;
mod mem;
mod nnop;
mod ops;
mod ops_attn;
mod ops_logprob;
mod ops_mask;
mod ops_moe;
mod ops_quant;
mod ops_quant_gmm;
mod rt;
mod state;
mod task_group;
mod workspace;

/// Counters of the emulator, read by tests through the exported `cannEmuStats`.
///
/// `live_*` are resources created and not yet destroyed (leaks when a test ends with
/// them non-zero); the others count violations the emulator caught.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CannEmuStats {
    pub live_allocs: u64,
    pub live_bytes: u64,
    pub peak_bytes: u64,
    pub total_allocs: u64,
    pub live_host_allocs: u64,
    pub double_frees: u64,
    pub invalid_frees: u64,
    pub oob_accesses: u64,
    pub use_after_free: u64,
    pub bad_memcpy_kinds: u64,
    pub live_tensors: u64,
    pub live_scalars: u64,
    pub live_int_arrays: u64,
    pub live_tensor_lists: u64,
    pub live_executors: u64,
    pub live_streams: u64,
    pub live_events: u64,
    pub live_graphs: u64,
    pub live_comms: u64,
    pub ops_executed: u64,
    pub ops_rejected: u64,
    pub exec_errors: u64,
    pub capture_violations: u64,
    pub bad_handles: u64,
    pub collectives: u64,
    /// Operators launched on a stream of one device with tensors on another.
    pub cross_device: u64,
    /// Workspaces missing, smaller than phase 1 asked, freed or overlapping an operand.
    pub workspace_violations: u64,
    /// Host↔device `aclrtMemcpyAsync` with an address not 64-byte aligned.
    pub misaligned_copies: u64,
    /// `aclrtMemcpyAsync` from or to pageable host memory (allowed, but synchronous).
    pub pageable_async_copies: u64,
    /// aclnn second phases the host issued to a stream that was not capturing.
    pub op_launches: u64,
    /// `aclmdlRIExecuteAsync` calls.
    pub graph_launches: u64,
    /// HCCL collectives the host issued to a stream that was not capturing.
    pub hccl_launches: u64,
    /// Host-to-device copies the host issued (blocking, or async outside a capture), and
    /// their bytes.
    pub h2d_copies: u64,
    pub h2d_bytes: u64,
    /// Device-to-host copies, likewise.
    pub d2h_copies: u64,
    pub d2h_bytes: u64,
    /// Calls in which the host waits for the device: stream, event and device
    /// synchronisations and blocking copies.
    pub host_syncs: u64,
    /// Task-group updates issued (`aclmdlRICaptureTaskUpdateEnd`): fused attention's
    /// per-step arguments refreshed inside a full decode graph.
    pub task_updates: u64,
}

impl CannEmuStats {
    /// Memory-safety violations of any kind.
    pub fn violations(&self) -> u64 {
        self.double_frees
            + self.invalid_frees
            + self.oob_accesses
            + self.use_after_free
            + self.bad_memcpy_kinds
            + self.bad_handles
            + self.cross_device
            + self.workspace_violations
            + self.misaligned_copies
    }

    /// Resources still alive (device and host allocations, descriptors, executors...).
    pub fn leaks(&self) -> u64 {
        self.live_allocs
            + self.live_host_allocs
            + self.live_tensors
            + self.live_scalars
            + self.live_int_arrays
            + self.live_tensor_lists
            + self.live_executors
            + self.live_graphs
    }
}

/// Fills `out` with the emulator's counters (test-only symbol, not CANN's).
///
/// # Safety
/// `out` is null or points to a writable `CannEmuStats`.
#[no_mangle]
pub unsafe extern "C" fn cannEmuStats(out: *mut CannEmuStats) {
    if out.is_null() {
        return;
    }
    let s = state::stats_snapshot();
    // SAFETY: non-null and writable per the contract.
    unsafe { out.write(s) };
}

/// Drops every resource and zeroes every counter (test-only symbol, not CANN's).
#[no_mangle]
pub extern "C" fn cannEmuReset() {
    state::reset_all();
}

/// `cannEmuStats`'s type, for the harness.
pub type CannEmuStatsFn = unsafe extern "C" fn(*mut CannEmuStats);
/// `cannEmuReset`'s type, for the harness.
pub type CannEmuResetFn = extern "C" fn();
