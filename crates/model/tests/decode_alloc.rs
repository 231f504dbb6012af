//! A CPU decode step allocates nothing once warmed up: activations come from the backend's
//! buffer pool, step metadata and scratch are reused (issue #9).
//!
//! A counting global allocator counts every allocation (and its bytes) of the measuring thread
//! and of rayon's workers (not the test harness's threads); the tests of this binary measure
//! one at a time. Each test loads a fixture model, warms it up with a prefill larger
//! than any decode step (as the engine's start-up profiling step does), then measures decode
//! steps. The forward pass (model + backend) may make only rayon's own allocation: a job
//! handed to the pool from outside it goes through rayon's global injector queue
//! (`crossbeam_deque::Injector`), which allocates one block (about 1.5 KB) per 63 jobs; a
//! decode step hands over about 9 jobs per layer. The test learns that block's size by
//! handing rayon empty jobs, then asserts that no other allocation happens (0 activation
//! bytes), that rayon's stay within one per 63 jobs, and that the activation pool saw no miss.
//! Sampling makes the one allocation it cannot avoid, the `Vec<Sampled>` it returns.
//!
//! `QWEN3_ALLOC_MODEL=DIR cargo test --release -p qwen3-model --test decode_alloc -- --ignored
//! --nocapture` prints the figures for another model (e.g. one made by `qwen3-serve bench
//! make-model --shape qwen3-0.6b`).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::*;
use qwen3_backend::comm::SingleRank;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::sampling::{SampleRow, SamplingParams};
use qwen3_backend::Backend;
use qwen3_engine::Executor;
use qwen3_model::config::ModelConfig;
use qwen3_model::executor::StepArrays;
use qwen3_model::{Qwen3, Shard, SingleExecutor, WeightDType, Worker};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations of exactly rayon's injector block size (0 until calibrated).
static RAYON_BLOCK: AtomicU64 = AtomicU64::new(0);
static RAYON_ALLOCS: AtomicU64 = AtomicU64::new(0);
static LAST_SIZE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations count: the measuring thread's and rayon's workers'.
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn count(bytes: usize) {
    if !TRACKED.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    LAST_SIZE.store(bytes as u64, Ordering::Relaxed);
    if bytes as u64 == RAYON_BLOCK.load(Ordering::Relaxed) {
        RAYON_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counters are process-wide: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a piece of code allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Allocs {
    count: u64,
    bytes: u64,
    /// Of `count`, rayon's injector blocks.
    rayon: u64,
}

impl Allocs {
    /// Bytes that are not rayon's blocks.
    fn other_bytes(&self) -> u64 {
        self.bytes - self.rayon * RAYON_BLOCK.load(Ordering::SeqCst)
    }

    fn add(self, o: Allocs) -> Allocs {
        Allocs {
            count: self.count + o.count,
            bytes: self.bytes + o.bytes,
            rayon: self.rayon + o.rayon,
        }
    }
}

fn snapshot() -> Allocs {
    Allocs {
        count: ALLOCS.load(Ordering::SeqCst),
        bytes: BYTES.load(Ordering::SeqCst),
        rayon: RAYON_ALLOCS.load(Ordering::SeqCst),
    }
}

/// What was allocated while `f` ran.
fn counted<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    let a = snapshot();
    let r = f();
    let b = snapshot();
    (
        r,
        Allocs {
            count: b.count - a.count,
            bytes: b.bytes - a.bytes,
            rayon: b.rayon - a.rayon,
        },
    )
}

/// Learns the size of rayon's injector block: empty jobs handed to the pool from this thread
/// (as the engine's thread hands every op's jobs) allocate nothing else.
fn calibrate_rayon() {
    if RAYON_BLOCK.load(Ordering::SeqCst) != 0 {
        return;
    }
    // The first job starts the pool (threads, their deques); then its threads count.
    rayon::broadcast(|_| TRACKED.with(|t| t.set(true)));
    let mut sizes = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (_, a) = counted(|| rayon::join(|| (), || ()));
        if a.count == 1 {
            sizes.insert(LAST_SIZE.load(Ordering::SeqCst));
        }
        assert!(a.count <= 1, "an empty rayon job allocated {a:?}");
    }
    assert_eq!(sizes.len(), 1, "rayon's injector allocated sizes {sizes:?}");
    let size = sizes.pop_first().unwrap_or(0);
    RAYON_BLOCK.store(size, Ordering::SeqCst);
}

const PROMPT: usize = 64;
const STEPS: usize = 8;
const BLOCKS: usize = 16;

#[derive(Debug, Default)]
struct Figures {
    /// Per measured decode step: the forward pass, sampling, and a whole
    /// `SingleExecutor::execute` (batch bookkeeping and sampling included).
    forward: Vec<Allocs>,
    sample: Vec<Allocs>,
    execute: Vec<Allocs>,
    /// Activation pool misses during the measured forward passes.
    pool_misses: u64,
}

impl Figures {
    fn print(&self, what: &str) {
        for (name, v) in [
            ("forward", &self.forward),
            ("sample", &self.sample),
            ("execute", &self.execute),
        ] {
            let n = v.len().max(1) as f64;
            let total = v.iter().fold(Allocs::default(), |a, &b| a.add(b));
            println!(
                "{what}: {name}: {:.2} allocations ({:.2} of them rayon's injector blocks), {:.0} bytes ({:.0} not rayon's) per decode step",
                total.count as f64 / n,
                total.rayon as f64 / n,
                total.bytes as f64 / n,
                total.other_bytes() as f64 / n,
            );
        }
        println!(
            "{what}: activation pool misses while measuring: {}",
            self.pool_misses
        );
    }
}

fn load(dir: &Path, config: &ModelConfig, dtype: WeightDType) -> Worker<CpuBackend> {
    let backend = CpuBackend::new();
    let model =
        Qwen3::load(&backend, dir, config.clone(), dtype, Shard::WHOLE).expect("model loads");
    let kv = backend
        .alloc_kv_cache(model.kv_shape(BLOCKS, BLOCK_SIZE))
        .expect("kv cache");
    Worker { backend, model, kv }
}

fn measure(dir: &Path, dtype: WeightDType) -> Figures {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    TRACKED.with(|t| t.set(true));
    calibrate_rayon();
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let config = ModelConfig::from_json_str(&text).expect("config parses");
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 1000 + 37 * i).collect();
    let params = SamplingParams::greedy();
    let row = |output: &'static [u32]| SampleRow {
        params: &params,
        prompt_tokens: &[],
        output_tokens: output,
        suppressed: &[],
        allowed: None,
        rng_seed: 7,
    };
    // Batches are built before measuring: they are the engine's, not the step's.
    let decodes: Vec<_> = (0..STEPS + 2)
        .map(|i| single_seq_batch(&[500 + i as u32], PROMPT + i, false))
        .collect();
    let mut figures = Figures::default();

    // The forward pass and sampling, driven as the executor drives them.
    let mut w = load(dir, &config, dtype);
    let mut arrays = StepArrays::default();
    let prefill = single_seq_batch(&prompt, 0, true);
    arrays.refill(&prefill);
    let logits = w
        .forward_rows(&prefill, &arrays, &[PROMPT as u32 - 1], &SingleRank)
        .expect("prefill");
    drop(w.backend.sample(&logits, &[row(&[])]).expect("sample"));
    drop(logits);
    let mut misses = 0;
    for (i, b) in decodes.iter().enumerate() {
        let before = w.backend.pool_stats().misses;
        let (logits, fa) = counted(|| {
            arrays.refill(b);
            w.forward_rows(b, &arrays, &[0], &SingleRank)
                .expect("decode")
        });
        let (sampled, sa) = counted(|| w.backend.sample(&logits, &[row(&[])]).expect("sample"));
        // The logits go back to the pool here: count it with the forward pass.
        let ((), da) = counted(|| drop(logits));
        drop(sampled);
        // The first two decode steps are warm-up (a step of one token after a long prefill).
        if i >= 2 {
            figures.forward.push(fa.add(da));
            figures.sample.push(sa);
            misses += w.backend.pool_stats().misses - before;
        }
    }
    figures.pool_misses = misses;
    drop(w);

    // A whole executor step: the engine's view.
    let mut ex = SingleExecutor::new(load(dir, &config, dtype));
    ex.execute(&single_seq_batch(&prompt, 0, true))
        .expect("prefill");
    for (i, b) in decodes.iter().enumerate() {
        let (out, a) = counted(|| ex.execute(b).expect("decode"));
        drop(out);
        if i >= 2 {
            figures.execute.push(a);
        }
    }
    TRACKED.with(|t| t.set(false));
    figures
}

fn assert_alloc_free(model: &str, dtype: WeightDType) {
    let f = measure(&fixtures().join(model), dtype);
    f.print(&format!("{model} {dtype:?}"));
    let mut rayon = 0;
    for (step, a) in f.forward.iter().enumerate() {
        assert_eq!(
            (a.count - a.rayon, a.other_bytes()),
            (0, 0),
            "{model} {dtype:?}: decode step {step}'s forward pass allocated {a:?} besides rayon's blocks"
        );
        rayon += a.rayon;
    }
    // A fixture step hands rayon fewer than 63 jobs: at most one block per step.
    assert!(
        rayon <= f.forward.len() as u64,
        "{model} {dtype:?}: {rayon} rayon blocks in {} steps",
        f.forward.len()
    );
    assert_eq!(
        f.pool_misses, 0,
        "{model} {dtype:?}: activation pool misses"
    );
    for (step, a) in f.sample.iter().enumerate() {
        // The Vec<Sampled> sampling returns to the engine, and maybe a rayon block.
        assert!(
            a.count - a.rayon <= 1,
            "{model} {dtype:?}: decode step {step}'s sampling allocated {a:?}"
        );
    }
}

#[test]
fn dense_bf16_decode_steps_do_not_allocate() {
    assert_alloc_free("tiny-qwen3", WeightDType::BF16);
}

#[test]
fn dense_f32_decode_steps_do_not_allocate() {
    assert_alloc_free("tiny-qwen3", WeightDType::F32);
}

#[test]
fn moe_decode_steps_do_not_allocate() {
    assert_alloc_free("tiny-qwen3-moe", WeightDType::BF16);
}

#[test]
fn quantized_decode_steps_do_not_allocate() {
    // GPTQ with act-order: the permuted input and the packed GEMV's scratch.
    assert_alloc_free("tiny-qwen3-gptq-actorder", WeightDType::BF16);
    assert_alloc_free("tiny-qwen3-awq", WeightDType::BF16);
}

/// Figures for the model in `QWEN3_ALLOC_MODEL` (BF16), printed, not asserted.
#[test]
#[ignore]
fn figures_for_another_model() {
    let Some(dir) = std::env::var_os("QWEN3_ALLOC_MODEL") else {
        println!("QWEN3_ALLOC_MODEL is not set");
        return;
    };
    measure(Path::new(&dir), WeightDType::BF16).print(&dir.to_string_lossy());
}
