//! Async scheduling's overlap, on the host clock: 64 streaming requests decode for 64 steps
//! through the engine, with the fake executor standing in for a device whose step takes a
//! fixed time (it sleeps, as a host waiting on a stream does). Synchronous steps pay device
//! time + the host's own work (schedule, detokenize, stop checks, stream); async ones should
//! pay about the larger of the two. Prints per-step times and how much of the host's work
//! ran while a step was executing (from `EngineCore::record_timeline`).
//!
//! `cargo bench -p qwen3-engine --bench async_overlap` (no criterion: one timed run each).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwen3_engine::fake_executor::{byte_level_test_tokenizer, FakeExecutor};
use qwen3_engine::{EngineConfig, EngineCore, EngineRequest, Phase, PhaseSpan};
use tokio::sync::mpsc::unbounded_channel;

const SEQS: usize = 64;
const STEPS: u32 = 64;

fn config(async_scheduling: bool) -> EngineConfig {
    EngineConfig {
        block_size: 16,
        num_blocks: 2048,
        max_num_seqs: SEQS,
        max_num_batched_tokens: 8192,
        max_model_len: 1024,
        enable_prefix_caching: true,
        enable_chunked_prefill: true,
        max_waiting_requests: SEQS,
        eos_token_ids: vec![256],
        async_scheduling,
    }
}

/// Microseconds of `spans` of `phase`, and how many of them fall inside an Execute span.
fn overlap(spans: &[PhaseSpan], phase: Phase) -> (f64, f64) {
    let exec: Vec<&PhaseSpan> = spans.iter().filter(|s| s.phase == Phase::Execute).collect();
    let (mut total, mut hidden) = (0.0, 0.0);
    for s in spans.iter().filter(|s| s.phase == phase) {
        total += (s.end - s.start).as_secs_f64();
        for e in &exec {
            let (a, b) = (s.start.max(e.start), s.end.min(e.end));
            if b > a {
                hidden += (b - a).as_secs_f64();
            }
        }
    }
    (total * 1e6, hidden * 1e6)
}

/// Mean gap, in microseconds, between one Execute span's end and the next one's start: the
/// time the device would sit idle waiting for the host.
fn device_idle(spans: &[PhaseSpan]) -> f64 {
    let mut exec: Vec<&PhaseSpan> = spans.iter().filter(|s| s.phase == Phase::Execute).collect();
    exec.sort_by_key(|s| s.start);
    let gaps: Vec<f64> = exec
        .windows(2)
        .map(|w| w[1].start.saturating_duration_since(w[0].end).as_secs_f64() * 1e6)
        .collect();
    gaps.iter().sum::<f64>() / gaps.len().max(1) as f64
}

fn run(async_scheduling: bool, device: Duration) -> (f64, Vec<PhaseSpan>) {
    let cfg = config(async_scheduling);
    let fake = FakeExecutor::new(cfg.block_size, cfg.num_blocks, 257).without_kv_check();
    let control = fake.control();
    let tok = Arc::new(byte_level_test_tokenizer().expect("tokenizer"));
    let mut core = EngineCore::new(cfg, Box::new(fake), tok).expect("engine");
    let mut rxs = Vec::new();
    for i in 0..SEQS {
        let mut r = EngineRequest::new(
            format!("r{i}"),
            (0..200).map(|t| (t * 7 + i as u32) % 256).collect(),
        );
        r.max_tokens = Some(STEPS);
        r.ignore_eos = true;
        r.stop = vec!["never seen".into()];
        let (tx, rx) = unbounded_channel();
        core.add_request(r, tx).expect("add");
        rxs.push(rx);
    }
    // The prefill step first, untimed.
    core.step();
    control
        .step_delay_us
        .store(device.as_micros() as u64, Ordering::Relaxed);
    core.record_timeline();
    let t0 = Instant::now();
    let mut steps = 0u32;
    while core.has_work() {
        core.step();
        steps += 1;
        for rx in &mut rxs {
            while rx.try_recv().is_ok() {}
        }
    }
    let per_step = t0.elapsed().as_secs_f64() * 1e6 / f64::from(steps.max(1));
    (per_step, core.take_timeline())
}

fn main() {
    // A filter argument from `cargo bench` is ignored: there is one benchmark.
    println!("engine step loop, {SEQS} sequences decoding {STEPS} tokens each, fake device");
    for device_us in [500u64, 2000] {
        let device = Duration::from_micros(device_us);
        let (sync_us, sync_spans) = run(false, device);
        let (async_us, async_spans) = run(true, device);
        let (sched, _) = overlap(&sync_spans, Phase::Schedule);
        let (proc_, _) = overlap(&sync_spans, Phase::Process);
        let steps = sync_spans
            .iter()
            .filter(|s| s.phase == Phase::Schedule)
            .count()
            .max(1) as f64;
        let (a_sched, a_sched_hidden) = overlap(&async_spans, Phase::Schedule);
        let (a_proc, a_proc_hidden) = overlap(&async_spans, Phase::Process);
        println!(
            "device step {device_us} us | host work per step: schedule {:.0} us + process {:.0} us",
            sched / steps,
            proc_ / steps
        );
        println!(
            "  sync : {sync_us:.0} us per step; device idle between steps {:.0} us",
            device_idle(&sync_spans)
        );
        println!(
            "  async: {async_us:.0} us per step; device idle between steps {:.0} us; host work \
             hidden under a running step: schedule {:.0}%, process {:.0}%",
            device_idle(&async_spans),
            100.0 * a_sched_hidden / a_sched.max(1e-9),
            100.0 * a_proc_hidden / a_proc.max(1e-9)
        );
    }
}
