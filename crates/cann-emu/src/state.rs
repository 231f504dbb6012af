//! Global emulator state: counters, the thread-local "recent error" message, handle
//! tables and configuration.

use crate::CannEmuStats;
use ascend_sys::types::ACL_ERROR_INTERNAL_ERROR;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: a panic in one test must not wedge the others.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

macro_rules! counters {
    ($($f:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Counters { $(pub $f: AtomicU64,)* }
        impl Counters {
            fn snapshot(&self) -> CannEmuStats {
                CannEmuStats { $($f: self.$f.load(Ordering::Relaxed),)* }
            }
            fn zero(&self) { $(self.$f.store(0, Ordering::Relaxed);)* }
        }
    };
}

counters!(
    live_allocs,
    live_bytes,
    peak_bytes,
    total_allocs,
    live_host_allocs,
    double_frees,
    invalid_frees,
    oob_accesses,
    use_after_free,
    bad_memcpy_kinds,
    live_tensors,
    live_scalars,
    live_int_arrays,
    live_tensor_lists,
    live_executors,
    live_streams,
    live_events,
    live_graphs,
    live_comms,
    ops_executed,
    ops_rejected,
    exec_errors,
    capture_violations,
    bad_handles,
    collectives,
    cross_device,
    workspace_violations,
    misaligned_copies,
    pageable_async_copies,
    op_launches,
    graph_launches,
    hccl_launches,
    h2d_copies,
    h2d_bytes,
    d2h_copies,
    d2h_bytes,
    host_syncs,
    task_updates,
);

pub static STATS: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(Counters::default);

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn drop1(c: &AtomicU64) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

pub fn stats_snapshot() -> CannEmuStats {
    STATS.snapshot()
}

type OpTimes = HashMap<&'static str, (u64, std::time::Duration)>;

static PROFILE: std::sync::LazyLock<Option<Mutex<OpTimes>>> = std::sync::LazyLock::new(|| {
    std::env::var_os("CANN_EMU_PROFILE").map(|_| Mutex::new(HashMap::new()))
});

/// With `CANN_EMU_PROFILE` set, accumulates time per operator (printed at reset).
pub fn profile(name: &'static str, d: std::time::Duration) {
    if let Some(p) = PROFILE.as_ref() {
        let mut p = lock(p);
        let e = p.entry(name).or_default();
        e.0 += 1;
        e.1 += d;
    }
}

fn print_profile() {
    if let Some(p) = PROFILE.as_ref() {
        let mut v: Vec<_> = lock(p).drain().collect();
        v.sort_by_key(|e| std::cmp::Reverse((e.1).1));
        for (name, (n, d)) in v {
            eprintln!(
                "cann-emu profile: {name:40} {n:8} calls {:10.3} s",
                d.as_secs_f64()
            );
        }
    }
}

pub fn reset_all() {
    print_profile();
    crate::rt::reset();
    crate::nnop::reset();
    crate::hccl::reset();
    crate::mem::reset();
    STATS.zero();
    ERR.with(|e| *e.borrow_mut() = CString::default());
}

thread_local! {
    static ERR: RefCell<CString> = RefCell::new(CString::default());
}

/// Sets this thread's recent error message (what `aclGetRecentErrMsg` returns).
pub fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    ERR.with(|e| *e.borrow_mut() = c);
}

/// This thread's recent error message; valid until the next error on this thread.
pub fn recent_error_ptr() -> *const c_char {
    ERR.with(|e| e.borrow().as_ptr())
}

/// An error with an ACL / aclnn / HCCL status code and a message.
#[derive(Debug, Clone)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }
}

pub type Res<T> = Result<T, Fail>;

/// Runs `f`, turning a panic (an emulator bug) into an error: a panic must not unwind
/// out of an `extern "C"` function (that aborts the test process).
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Fail::new(
                ACL_ERROR_INTERNAL_ERROR,
                format!("{what}: emulator bug (panic): {msg}"),
            ))
        }
    }
}

/// Turns a result into a status code, recording the message.
pub fn code_of(r: Res<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(f) => {
            set_error(&f.msg);
            f.code
        }
    }
}

/// A table of handles: opaque ids handed out as pointer values, never dereferenced, so
/// that a stale or foreign handle is caught instead of being undefined behaviour.
pub struct Handles<T> {
    tag: u64,
    next: u64,
    map: HashMap<u64, T>,
}

impl<T> Handles<T> {
    pub fn new(tag: u64) -> Self {
        Self {
            tag,
            next: 1,
            map: HashMap::new(),
        }
    }
    pub fn insert(&mut self, v: T) -> u64 {
        let h = self.tag | (self.next << 4);
        self.next += 1;
        self.map.insert(h, v);
        h
    }
    pub fn get(&self, h: u64) -> Option<&T> {
        self.map.get(&h)
    }
    pub fn get_mut(&mut self, h: u64) -> Option<&mut T> {
        self.map.get_mut(&h)
    }
    pub fn remove(&mut self, h: u64) -> Option<T> {
        self.map.remove(&h)
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values()
    }
    pub fn map_iter(&self) -> impl Iterator<Item = (&u64, &T)> {
        self.map.iter()
    }
}

/// Number of emulated devices (`CANN_EMU_DEVICES`, default 2).
pub fn device_count() -> u32 {
    std::env::var("CANN_EMU_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u32| (1..=16).contains(&n))
        .unwrap_or(2)
}

/// `CANN_EMU_SKIP_MATH=1`: operators are validated at both phases and their tensors'
/// memory checked when they execute, but their arithmetic is skipped, so that a benchmark
/// times the host's own cost (outputs then hold whatever the buffers held).
pub fn skip_math() -> bool {
    std::env::var_os("CANN_EMU_SKIP_MATH").is_some_and(|v| v == "1")
}

/// `CANN_EMU_FAULT_OP=<aclnn operator>` (e.g. `aclnnRmsNorm`): a fault injected for tests, not
/// a CANN rule. That operator passes both phases' checks and its memory is checked when it
/// runs, but its arithmetic is skipped, so its outputs keep what their buffers held: a wrong
/// op that only a comparison of results (`doctor`'s op checks) can catch.
pub fn faulty_op(name: &str) -> bool {
    std::env::var_os("CANN_EMU_FAULT_OP").is_some_and(|v| v == name)
}

/// Streams a device has for streams the host creates plus captured graphs
/// (`CANN_EMU_STREAM_BUDGET`, default 2,048): see `rt::stream_budget_check`.
pub fn stream_budget() -> u64 {
    std::env::var("CANN_EMU_STREAM_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(2048)
}

/// Device memory per device (`CANN_EMU_HBM_BYTES`, default 4 GiB).
pub fn hbm_bytes() -> u64 {
    std::env::var("CANN_EMU_HBM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 30)
}
