//! One engine step: schedule, run, process the sampled tokens — synchronously, or with async
//! scheduling one step ahead (vLLM's `--async-scheduling`).
//!
//! Async: the step thread runs step N while this thread schedules step N+1 and submits it
//! (its decodes' inputs are N's tokens, which the executor fills in: `Batch::deferred_inputs`),
//! and only then takes N's output for detokenization, stop checks and streaming. A sequence
//! that stops at N had a token computed for it at N+1: the scheduler drops it (the sequence
//! is no longer live), and its blocks, freed at N, were written by N+1 before any later
//! step can use them (steps run in order). While a structured-output request is live the
//! engine falls back to synchronous steps: its matcher must see token N before it can make
//! the mask for N+1.

use std::sync::Arc;
use std::time::Instant;

use super::{lock, EngineCore, Final, FinishReason, Runner};
use crate::batch::{ExecutorError, StepOutput};
use crate::scheduler::StepSummary;
use crate::step_thread::execute_caught;

/// A phase of the engine's step loop, for the overlap timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Scheduling and laying out a step (this thread).
    Schedule,
    /// The executor running a step (the step thread under async scheduling).
    Execute,
    /// Turning a step's tokens into outputs: detokenize, stop checks, stream (this thread).
    Process,
}

/// When one phase ran (host clock).
#[derive(Clone, Copy, Debug)]
pub struct PhaseSpan {
    pub phase: Phase,
    pub start: Instant,
    pub end: Instant,
}

impl EngineCore {
    /// Records from now on when each phase of each step runs (host clock), so a benchmark can
    /// show how much of the host's work hides under the executor's.
    pub fn record_timeline(&mut self) {
        self.timeline = Some(Vec::new());
    }

    /// The spans recorded so far (emptied).
    pub fn take_timeline(&mut self) -> Vec<PhaseSpan> {
        self.timeline
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn mark(&mut self, phase: Phase, start: Instant) {
        if let Some(t) = self.timeline.as_mut() {
            t.push(PhaseSpan {
                phase,
                start,
                end: Instant::now(),
            });
        }
    }

    /// Runs one step: schedule, execute, process the sampled tokens (with async scheduling,
    /// those of the step before). Returns what was scheduled (nothing when idle).
    pub fn step(&mut self) -> StepSummary {
        // Structured outputs need each token on the host before the next mask: synchronous.
        let pipelined = self.is_async() && !self.constraints.any();
        if !pipelined {
            self.collect_launched(0);
        }
        let t0 = Instant::now();
        let summary = self.schedule_step();
        self.mark(Phase::Schedule, t0);
        if summary.num_seqs > 0 {
            if pipelined {
                self.submit_step();
            } else {
                let out = self.run_now();
                self.process_step(out);
            }
        }
        // One step may stay in flight while the next is prepared; older ones are done now.
        self.collect_launched(usize::from(pipelined && summary.num_seqs > 0));
        self.publish_gauges(&mut lock(&self.stats));
        summary
    }

    /// Schedules into `self.batch`; records queue times and fails a request that can never
    /// be scheduled on an idle engine.
    fn schedule_step(&mut self) -> StepSummary {
        let summary = self.scheduler.schedule(&mut self.batch);
        let now = Instant::now();
        {
            let stats_arc = Arc::clone(&self.stats);
            let mut stats = lock(&stats_arc);
            for i in 0..self.scheduler.admitted().len() {
                let slot = self.scheduler.admitted()[i];
                if let Some(seq) = self.scheduler.seq_mut(slot) {
                    let st = &mut seq.payload;
                    stats
                        .request_queue_time
                        .observe(now.duration_since(st.arrival).as_secs_f64());
                    if st.counted {
                        st.counted = false;
                        self.queued
                            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                }
            }
        }
        if summary.num_seqs == 0
            && summary.num_preempted == 0
            && self.scheduler.num_launched() == 0
            && self.scheduler.num_running() == 0
            && self.scheduler.num_waiting() > 0
        {
            // Nothing runs and the head of the queue cannot start: validation should make
            // this impossible; fail the request rather than spin.
            let head = self.scheduler.waiting().next();
            if let Some(slot) = head {
                tracing::error!("request cannot be scheduled on an idle engine; failing it");
                self.finish_slot(
                    slot,
                    FinishReason::Error("the request cannot be scheduled".into()),
                    None,
                    Final::Empty,
                );
            }
        }
        summary
    }

    /// Runs the scheduled batch and waits for it (structured-output masks are computed
    /// beside it).
    fn run_now(&mut self) -> Result<StepOutput, ExecutorError> {
        let t0 = Instant::now();
        let out = match &mut self.runner {
            Runner::Inline(executor) => self
                .constraints
                .run_step(&mut self.batch, |b| execute_caught(executor.as_mut(), b)),
            // The synchronous fallback of an async engine: the batch is shared with the step
            // thread by copy, as masks are filled into it while the step runs.
            Runner::Thread(thread) => self.constraints.run_step(&mut self.batch, |b| {
                thread.submit(b.clone())?;
                thread.collect().and_then(|ran| ran.output)
            }),
        };
        self.mark(Phase::Execute, t0);
        out
    }

    /// Hands the scheduled batch to the step thread without waiting.
    fn submit_step(&mut self) {
        let Runner::Thread(thread) = &mut self.runner else {
            return;
        };
        let next = self.spare_batches.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut self.batch, next);
        if let Err(e) = thread.submit(batch) {
            self.fail_step(&e.to_string());
        }
    }

    /// Takes launched steps' outputs, oldest first, until `keep` remain in flight.
    fn collect_launched(&mut self, keep: usize) {
        while self.scheduler.num_launched() > keep {
            let Runner::Thread(thread) = &mut self.runner else {
                // Inline steps are processed as they run; a plan left over is a failed one's.
                self.scheduler.forget_launched();
                return;
            };
            match thread.collect() {
                Ok(ran) => {
                    if let Some(t) = self.timeline.as_mut() {
                        t.push(PhaseSpan {
                            phase: Phase::Execute,
                            start: ran.span.start,
                            end: ran.span.end,
                        });
                    }
                    self.spare_batches.push(ran.batch);
                    self.process_step(ran.output);
                }
                Err(e) => self.fail_step(&e.to_string()),
            }
        }
    }

    /// Applies one step's output (the oldest launched): tokens, stops, streaming.
    fn process_step(&mut self, result: Result<StepOutput, ExecutorError>) {
        let t0 = Instant::now();
        match result {
            Ok(mut out) => match self.scheduler.update_from_output(&out) {
                Ok(()) => {
                    self.gather_prompt_logprobs(&mut out);
                    self.process_outputs(&mut out)
                }
                Err(e) => self.fail_step(&e.to_string()),
            },
            Err(e) => self.fail_step(&e.to_string()),
        }
        self.mark(Phase::Process, t0);
    }

    /// A step failed: steps launched after it are waited for and their tokens dropped, then
    /// the running requests fail.
    fn fail_step(&mut self, msg: &str) {
        if let Runner::Thread(thread) = &mut self.runner {
            while thread.pending() > 0 {
                match thread.collect() {
                    Ok(ran) => self.spare_batches.push(ran.batch),
                    Err(_) => break,
                }
            }
        }
        self.scheduler.forget_launched();
        self.fail_running(msg);
    }

    /// Whether the executor can never run another step (see `Executor::is_broken`).
    pub(crate) fn executor_broken(&self) -> bool {
        match &self.runner {
            Runner::Inline(e) => e.is_broken(),
            Runner::Thread(t) => t.is_broken(),
        }
    }

    /// An executor fault: every running request fails; waiting ones stay queued. The
    /// blocks written by the failed step cannot be trusted, so the prefix cache is reset.
    fn fail_running(&mut self, msg: &str) {
        tracing::error!(error = msg, "step failed; failing the running requests");
        while let Some(&slot) = self.scheduler.running().last() {
            self.finish_slot(
                slot,
                FinishReason::Error(msg.to_string()),
                None,
                Final::Empty,
            );
        }
        self.scheduler.reset_prefix_cache();
    }
}
