//! The executor on a thread of its own, for async scheduling: the engine hands it step N+1
//! while it still runs step N, and takes step N's output afterwards, so the host's work for
//! N+1 (scheduling, laying out the batch) and for N-1's tokens (detokenizing, stop checks,
//! streaming) overlaps the device running N. Steps run in submission order; batches travel
//! by value and come back with their output, so their capacity is reused.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::batch::{Batch, Executor, ExecutorError, StepOutput};
use crate::error::EngineError;

/// When the step thread ran one step (host clock), for the overlap timeline.
#[derive(Clone, Copy, Debug)]
pub struct StepSpan {
    pub start: Instant,
    pub end: Instant,
}

/// A step's batch back from the thread, with what running it gave.
pub(crate) struct Ran {
    pub batch: Batch,
    pub output: Result<StepOutput, ExecutorError>,
    pub span: StepSpan,
}

pub(crate) struct StepThread {
    jobs: Option<Sender<Batch>>,
    done: Receiver<Ran>,
    broken: Arc<AtomicBool>,
    /// Steps submitted and not yet collected.
    pending: usize,
    thread: Option<JoinHandle<()>>,
}

/// Runs one step, turning a panic into the step's error (as the synchronous path does).
pub(crate) fn execute_caught(
    executor: &mut dyn Executor,
    batch: &Batch,
) -> Result<StepOutput, ExecutorError> {
    catch_unwind(AssertUnwindSafe(|| executor.execute(batch))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(ExecutorError(format!("executor panicked: {msg}")))
    })
}

impl StepThread {
    pub(crate) fn start(mut executor: Box<dyn Executor>) -> Result<Self, EngineError> {
        let (job_tx, job_rx) = channel::<Batch>();
        let (done_tx, done_rx) = channel();
        let broken = Arc::new(AtomicBool::new(executor.is_broken()));
        let flag = Arc::clone(&broken);
        let thread = std::thread::Builder::new()
            .name("qwen3-step".into())
            .spawn(move || {
                while let Ok(batch) = job_rx.recv() {
                    let start = Instant::now();
                    let output = execute_caught(executor.as_mut(), &batch);
                    let span = StepSpan {
                        start,
                        end: Instant::now(),
                    };
                    flag.store(executor.is_broken(), Ordering::Release);
                    let ran = Ran {
                        batch,
                        output,
                        span,
                    };
                    if done_tx.send(ran).is_err() {
                        return;
                    }
                }
            })
            .map_err(EngineError::Spawn)?;
        Ok(Self {
            jobs: Some(job_tx),
            done: done_rx,
            broken,
            pending: 0,
            thread: Some(thread),
        })
    }

    /// Queues a step behind the ones already submitted.
    pub(crate) fn submit(&mut self, batch: Batch) -> Result<(), ExecutorError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(batch).ok())
            .ok_or_else(|| ExecutorError("the step thread has stopped".into()))?;
        self.pending += 1;
        Ok(())
    }

    /// Waits for the oldest submitted step not yet collected.
    pub(crate) fn collect(&mut self) -> Result<Ran, ExecutorError> {
        let ran = self
            .done
            .recv()
            .map_err(|_| ExecutorError("the step thread has stopped".into()))?;
        self.pending -= 1;
        Ok(ran)
    }

    /// Steps submitted and not yet collected.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

impl Drop for StepThread {
    fn drop(&mut self) {
        // Closing the job channel ends the loop once the queued steps have run.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
