//! Structured-output state beside the scheduler: one llguidance matcher per constrained
//! sequence. Each step's masks are computed on a scoped thread while the executor runs the
//! forward pass, and published into the batch for the sampler; accepted tokens advance the
//! matchers afterwards. A matcher failure is that sequence's error, never the step's.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use qwen3_guided::{Compiler, SeqMatcher};

use crate::batch::{Batch, SeqId, StepMasks, StructuredSpec};
use crate::error::EngineError;

#[derive(Default)]
pub(crate) struct Constraints {
    compiler: Option<Arc<Compiler>>,
    matchers: HashMap<SeqId, SeqMatcher>,
    /// Sequences whose mask could not be computed this step, with why.
    failed: HashMap<SeqId, String>,
}

impl Constraints {
    pub(crate) fn new(compiler: Option<Arc<Compiler>>) -> Self {
        Self {
            compiler,
            ..Self::default()
        }
    }

    /// Makes `seq_id`'s matcher (the grammar is normally cached: the API compiled it).
    pub(crate) fn add(&mut self, seq_id: SeqId, spec: &StructuredSpec) -> Result<(), EngineError> {
        let compiler = self.compiler.as_ref().ok_or_else(|| {
            EngineError::InvalidRequest("structured output is not enabled on this server".into())
        })?;
        let m = compiler
            .matcher(spec)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        self.matchers.insert(seq_id, m);
        Ok(())
    }

    /// Whether any live sequence is constrained.
    pub(crate) fn any(&self) -> bool {
        !self.matchers.is_empty()
    }

    pub(crate) fn remove(&mut self, seq_id: SeqId) {
        self.matchers.remove(&seq_id);
        self.failed.remove(&seq_id);
    }

    /// Runs `execute` on `batch` while the masks of its constrained sampling rows are
    /// computed on another thread (the sampler waits for them).
    pub(crate) fn run_step<R>(
        &mut self,
        batch: &mut Batch,
        execute: impl FnOnce(&Batch) -> R,
    ) -> R {
        self.failed.clear();
        let rows: Vec<(usize, SeqId)> = batch
            .seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sample)
            .filter(|(_, s)| {
                self.matchers
                    .get(&s.seq_id)
                    .is_some_and(SeqMatcher::is_active)
            })
            .map(|(i, s)| (i, s.seq_id))
            .collect();
        if rows.is_empty() {
            batch.masks = None;
            return execute(&*batch);
        }
        let masks = Arc::new(StepMasks::default());
        batch.masks = Some(Arc::clone(&masks));
        let n = batch.seqs.len();
        let (matchers, failed) = (&mut self.matchers, &mut self.failed);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut out = vec![None; n];
                for &(i, id) in &rows {
                    let Some(m) = matchers.get_mut(&id) else {
                        continue;
                    };
                    match catch_unwind(AssertUnwindSafe(|| m.mask())) {
                        Ok(Ok(mask)) => out[i] = mask,
                        Ok(Err(e)) => {
                            failed.insert(id, e.to_string());
                        }
                        Err(_) => {
                            failed.insert(id, "structured output: the matcher panicked".into());
                        }
                    }
                }
                // Always published, so the sampler never waits forever; a failed row samples
                // unconstrained and its request ends with the error.
                masks.publish(out);
            });
            execute(&*batch)
        })
    }

    /// Why `seq_id`'s mask failed this step, if it did.
    pub(crate) fn failure(&mut self, seq_id: SeqId) -> Option<String> {
        self.failed.remove(&seq_id)
    }

    /// Advances `seq_id`'s matcher (if it has one) over an accepted token.
    pub(crate) fn advance(&mut self, seq_id: SeqId, token: u32) -> Result<(), String> {
        match self.matchers.get_mut(&seq_id) {
            Some(m) => m.advance(token).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}
