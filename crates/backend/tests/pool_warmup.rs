//! A test binary of its own: the CPU backend warms rayon's pool once per process, and this
//! checks that first warm-up when steps reach it from pool workers (as `run_step` puts them
//! there) on several workers at once, as two engines in one process do.

use std::sync::mpsc;
use std::time::Duration;

use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::{Backend, RopeSpec, StepMeta};

#[test]
fn steps_prepared_on_every_pool_worker_at_once_do_not_deadlock() {
    // Two workers at least, so one can wait on the other.
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()
        .expect("the global pool is built here first");
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let backend = CpuBackend::new();
        let rope = RopeSpec {
            inv_freq: vec![1.0, 0.5],
            mscale: 1.0,
        };
        let meta = StepMeta {
            token_ids: &[1],
            positions: &[0],
            slot_mapping: &[0],
            query_start: &[0],
            query_len: &[1],
            context_len: &[1],
            block_tables: &[0],
            max_blocks_per_seq: 1,
            block_size: 16,
            rope: &rope,
        };
        let prepared = rayon::broadcast(|_| backend.prepare_step(&meta).is_ok());
        // Then as the engine does it, from outside the pool.
        let run = CpuBackend::run_step(|| backend.prepare_step(&meta).is_ok());
        let _ = done.send(prepared.into_iter().all(|ok| ok) && run);
    });
    let ok = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("preparing steps on pool workers deadlocked");
    assert!(ok, "prepare_step failed on a valid single-token step");
}
