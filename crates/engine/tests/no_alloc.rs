//! The steady-state decode step does not allocate per token: scheduling, batch layout, token
//! append and stop checks reuse their Vecs (a counting global allocator checks it). The one
//! exception is amortized: `Batch::block_tables` doubles its capacity when the longest block
//! table grows past it (twice at most in this run, where tables widen from 9 to 22 blocks).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use qwen3_engine::batch::{Sampled, SamplingParams};
use qwen3_engine::{Batch, Scheduler, SchedulerConfig, SeqOutput, SeqParams, StepOutput};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn step(s: &mut Scheduler<()>, batch: &mut Batch, out: &mut StepOutput) {
    s.schedule(batch);
    out.outputs.clear();
    for q in batch.seqs.iter().filter(|q| q.sample) {
        out.outputs.push(SeqOutput {
            seq_id: q.seq_id,
            sampled: Sampled {
                token: (q.context_len % 200) + 1,
                logprob: None,
                top_logprobs: Vec::new(),
            },
        });
    }
    s.update_from_output(out).unwrap();
    assert!(s.events().iter().all(|e| e.stop.is_none()));
}

#[test]
fn decode_steps_do_not_allocate() {
    for caching in [false, true] {
        let cfg = SchedulerConfig {
            block_size: 16,
            num_blocks: 64 * 40 + 1,
            max_num_seqs: 64,
            max_num_batched_tokens: 8192,
            max_model_len: 4096,
            enable_prefix_caching: caching,
            enable_chunked_prefill: true,
            eos_token_ids: vec![0],
        };
        let mut s: Scheduler<()> = Scheduler::new(cfg);
        let sampling = Arc::new(SamplingParams::greedy());
        for i in 0..64u64 {
            s.add(
                SeqParams {
                    seq_id: i,
                    prompt: (0..100).map(|t| (t * 7 + i as u32) % 200 + 1).collect(),
                    sampling: Arc::clone(&sampling),
                    max_tokens: 500,
                    // Half of them keep EOS suppressed: the suppressed lists are reused too.
                    min_tokens: if i % 2 == 0 { 400 } else { 0 },
                    stop_token_ids: vec![201, 202],
                    ignore_eos: false,
                },
                (),
            )
            .unwrap();
        }
        // Waiting requests that cannot be admitted (max_num_seqs is reached).
        for i in 0..1000u64 {
            s.add(
                SeqParams {
                    seq_id: 1000 + i,
                    prompt: vec![5; 50],
                    sampling: Arc::clone(&sampling),
                    max_tokens: 100,
                    min_tokens: 0,
                    stop_token_ids: vec![],
                    ignore_eos: false,
                },
                (),
            )
            .unwrap();
        }
        let mut batch = Batch::default();
        let mut out = StepOutput::default();
        for _ in 0..40 {
            step(&mut s, &mut batch, &mut out);
        }
        ALLOCS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        for _ in 0..200 {
            step(&mut s, &mut batch, &mut out);
        }
        COUNTING.with(|c| c.set(false));
        assert_eq!(batch.seqs.len(), 64);
        let n = ALLOCS.load(Ordering::Relaxed);
        assert!(
            n <= 2,
            "{n} allocations in 200 decode steps of 64 sequences (prefix caching {caching})"
        );
        // With the block-table capacity in place, a step allocates nothing at all.
        batch.block_tables.reserve(64 * 64);
        ALLOCS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        for _ in 0..100 {
            step(&mut s, &mut batch, &mut out);
        }
        COUNTING.with(|c| c.set(false));
        assert_eq!(
            ALLOCS.load(Ordering::Relaxed),
            0,
            "prefix caching {caching}"
        );
    }
}
