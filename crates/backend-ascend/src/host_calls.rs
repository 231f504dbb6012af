//! Counters of what the host asks of the device (operator launches, graph launches,
//! collectives, copies, waits) and of the host time spent in steps, process-wide over every
//! rank, so that `qwen3-serve bench latency --device npu` and start-up logs can print them
//! per decode step, on hardware and on the emulator alike. Calls made on a rank's thread
//! while it runs a pure decode step are also counted apart.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// What is counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Step,
    Op,
    Graph,
    Hccl,
    H2d,
    H2dBytes,
    D2h,
    D2hBytes,
    Sync,
    StepNs,
    GraphCaptured,
    GraphSegments,
}

const N: usize = Counter::GraphSegments as usize + 1;

/// All calls, and those made during pure decode steps.
static ALL: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static DECODE: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

thread_local! {
    /// This thread runs a pure decode step (set when a step is prepared).
    static IN_DECODE: Cell<bool> = const { Cell::new(false) };
}

pub(crate) fn add(c: Counter, n: u64) {
    ALL[c as usize].fetch_add(n, Ordering::Relaxed);
    if IN_DECODE.with(Cell::get) {
        DECODE[c as usize].fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) fn bump(c: Counter) {
    add(c, 1);
}

/// Marks this thread's calls from now on as (not) part of a pure decode step.
pub(crate) fn set_decode(decode: bool) {
    IN_DECODE.with(|d| d.set(decode));
}

/// A snapshot of one set of counters (or the difference of two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Steps prepared (every rank counts its own).
    pub steps: u64,
    /// aclnn operators (second phases called while not replaying a graph) and custom
    /// AscendC kernels launched.
    pub op_launches: u64,
    /// Captured graphs launched (`aclmdlRIExecuteAsync`).
    pub graph_launches: u64,
    /// HCCL collectives issued.
    pub hccl_launches: u64,
    /// Host-to-device copies and their bytes.
    pub h2d_copies: u64,
    pub h2d_bytes: u64,
    /// Device-to-host copies and their bytes.
    pub d2h_copies: u64,
    pub d2h_bytes: u64,
    /// Waits for the device (stream synchronisations and blocking copies).
    pub syncs: u64,
    /// Host nanoseconds from the start of a step's preparation to its sampled tokens.
    pub step_ns: u64,
    /// Decode graphs captured, and their segments (each holds a device stream).
    pub graphs_captured: u64,
    pub graph_segments: u64,
}

impl Calls {
    fn load(a: &[AtomicU64; N]) -> Self {
        let g = |c: Counter| a[c as usize].load(Ordering::Relaxed);
        Self {
            steps: g(Counter::Step),
            op_launches: g(Counter::Op),
            graph_launches: g(Counter::Graph),
            hccl_launches: g(Counter::Hccl),
            h2d_copies: g(Counter::H2d),
            h2d_bytes: g(Counter::H2dBytes),
            d2h_copies: g(Counter::D2h),
            d2h_bytes: g(Counter::D2hBytes),
            syncs: g(Counter::Sync),
            step_ns: g(Counter::StepNs),
            graphs_captured: g(Counter::GraphCaptured),
            graph_segments: g(Counter::GraphSegments),
        }
    }

    fn since(&self, e: &Calls) -> Calls {
        Calls {
            steps: self.steps.saturating_sub(e.steps),
            op_launches: self.op_launches.saturating_sub(e.op_launches),
            graph_launches: self.graph_launches.saturating_sub(e.graph_launches),
            hccl_launches: self.hccl_launches.saturating_sub(e.hccl_launches),
            h2d_copies: self.h2d_copies.saturating_sub(e.h2d_copies),
            h2d_bytes: self.h2d_bytes.saturating_sub(e.h2d_bytes),
            d2h_copies: self.d2h_copies.saturating_sub(e.d2h_copies),
            d2h_bytes: self.d2h_bytes.saturating_sub(e.d2h_bytes),
            syncs: self.syncs.saturating_sub(e.syncs),
            step_ns: self.step_ns.saturating_sub(e.step_ns),
            graphs_captured: self.graphs_captured.saturating_sub(e.graphs_captured),
            graph_segments: self.graph_segments.saturating_sub(e.graph_segments),
        }
    }
}

/// Every call, and the calls of pure decode steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCalls {
    pub all: Calls,
    pub decode: Calls,
}

/// The counters now.
pub fn snapshot() -> HostCalls {
    HostCalls {
        all: Calls::load(&ALL),
        decode: Calls::load(&DECODE),
    }
}

impl HostCalls {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &HostCalls) -> HostCalls {
        HostCalls {
            all: self.all.since(&earlier.all),
            decode: self.decode.since(&earlier.decode),
        }
    }

    /// Averages per pure decode step of one rank (every rank counts its own steps and
    /// calls), or None without decode steps.
    pub fn per_decode_step(&self) -> Option<PerStep> {
        let d = &self.decode;
        let steps = d.steps as f64;
        if d.steps == 0 {
            return None;
        }
        let per = |v: u64| v as f64 / steps;
        Some(PerStep {
            launches: per(d.op_launches),
            graph_launches: per(d.graph_launches),
            collectives: per(d.hccl_launches),
            h2d_copies: per(d.h2d_copies),
            h2d_bytes: per(d.h2d_bytes),
            d2h_copies: per(d.d2h_copies),
            d2h_bytes: per(d.d2h_bytes),
            syncs: per(d.syncs),
            host_us: d.step_ns as f64 / steps / 1e3,
        })
    }
}

/// Averages per decode step of one rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerStep {
    pub launches: f64,
    pub graph_launches: f64,
    pub collectives: f64,
    pub h2d_copies: f64,
    pub h2d_bytes: f64,
    pub d2h_copies: f64,
    pub d2h_bytes: f64,
    pub syncs: f64,
    pub host_us: f64,
}
