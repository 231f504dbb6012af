//! Piecewise graph capture of decode steps.
//!
//! Fused attention takes its sequence lengths as host arrays, which a captured graph would
//! freeze; so a decode step is captured in segments, the ops between attention calls, and
//! the K/V write and attention always run eagerly with the step's own lengths (so no graph
//! holds the KV cache's address, and graphs can be captured before the cache is sized).
//! Graphs are keyed by padded token count only. The first pure-decode step of a captured
//! size runs while recording (start-up runs one per configured size, see
//! [`capture_sizes_within_budget`]); later ones replay: the model still calls every op, but
//! the backend only hands back the buffers the capture used (in allocation order) and
//! refills the graph's input buffers, launching nothing until a segment ends.
//! Where CANN has the task-update API, a step is instead captured whole, attention and
//! collectives included (`graph_full.rs`); segment boundaries then do nothing.

use std::sync::Arc;

use qwen3_backend::{BackendError, Result, StepMeta};

use crate::mem::{GraphMode, Recording};
use crate::AscendBackend;

/// A decode step padded up to a captured size with one-token dummy sequences: token 0 at
/// position 0, writing its K/V to its own slot of block 0 (the engine's null block, which
/// no sequence reads) and attending to one slot there. Rows are independent, so the real
/// sequences' results do not change; the model only ever selects their rows.
pub(crate) struct Padded {
    token_ids: Vec<u32>,
    positions: Vec<u32>,
    slot_mapping: Vec<u32>,
    query_start: Vec<u32>,
    query_len: Vec<u32>,
    context_len: Vec<u32>,
    block_tables: Vec<u32>,
}

impl Padded {
    pub(crate) fn meta<'a>(&'a self, m: &StepMeta<'a>) -> StepMeta<'a> {
        StepMeta {
            token_ids: &self.token_ids,
            positions: &self.positions,
            slot_mapping: &self.slot_mapping,
            query_start: &self.query_start,
            query_len: &self.query_len,
            context_len: &self.context_len,
            block_tables: &self.block_tables,
            ..*m
        }
    }
}

/// Captured graphs a device may hold. Each captured graph holds a stream, and a 910B has
/// 2,048; vllm-ascend captures at most 1,800 graphs, keeping 248 streams for the rest
/// (`vllm_ascend/utils.py`, `update_aclgraph_sizes`: "we can only capture 1800 graphs at
/// most ... bounded by the number of streams, which is 2048").
pub const MAX_CAPTURED_GRAPHS: usize = 1800;

/// The capture sizes that fit the stream budget when each size takes `graphs_per_size`
/// graphs (piecewise: layers + 1 segments): all of them when they fit, else evenly spaced
/// ones, always keeping the smallest and the largest (as vllm-ascend's
/// `update_aclgraph_sizes` samples them).
pub fn capture_sizes_within_budget(sizes: &[usize], graphs_per_size: usize) -> Vec<usize> {
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    let fit = MAX_CAPTURED_GRAPHS / graphs_per_size.max(1);
    if sizes.len() <= fit {
        return sizes;
    }
    match fit {
        0 => Vec::new(),
        1 => vec![sizes[0]],
        _ => {
            let step = (sizes.len() - 1) as f64 / (fit - 1) as f64;
            let mut out: Vec<usize> = (0..fit)
                .map(|i| sizes[((i as f64 * step).round() as usize).min(sizes.len() - 1)])
                .collect();
            out.dedup();
            out
        }
    }
}

use crate::graph_full::diverged;

impl AscendBackend {
    /// Captured decode steps (one per padded token count).
    pub fn captured_graphs(&self) -> usize {
        self.graphs.lock().map_or(0, |g| g.len())
    }

    /// Captured graph segments (each holds one of the device's streams).
    pub fn captured_segments(&self) -> usize {
        self.graphs
            .lock()
            .map_or(0, |g| g.values().map(|s| s.segments.len()).sum())
    }

    /// The padded token counts captured so far, ascending.
    pub fn captured_sizes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graphs
            .lock()
            .map_or(Vec::new(), |g| g.keys().copied().collect());
        v.sort_unstable();
        v
    }

    /// Whether the rows of a padded step's hidden states past the real ones are padding:
    /// `rows` (the real ones) extended with them, so the LM head keeps the captured shape.
    pub(crate) fn padded_rows(&self, rows: &[u32]) -> Option<Vec<u32>> {
        let (real, padded) = (*self.padding.lock().ok()?)?;
        let is_real = rows.len() == real && rows.iter().enumerate().all(|(i, &r)| r as usize == i);
        (is_real && self.in_graph_mode()).then(|| (0..padded as u32).collect())
    }

    /// Whether `n` rows of logits are a padded step's for `rows` real requests.
    pub(crate) fn is_padded_logits(&self, n: usize, rows: usize) -> bool {
        self.padding
            .lock()
            .ok()
            .and_then(|p| *p)
            .is_some_and(|(real, padded)| real == rows && padded == n)
    }

    /// Decode steps that were replays of a captured graph.
    pub fn graph_replays(&self) -> u64 {
        self.replays.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns piecewise graphs off for good (tensor parallelism: collectives are captured
    /// in full graphs only).
    pub fn disable_graphs(&self) {
        self.graphs_disabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn in_graph_mode(&self) -> bool {
        !matches!(&*self.device().graph_state(), GraphMode::Off)
    }

    /// The padded form of a pure-decode step whose size is below a captured size.
    pub(crate) fn graph_padding(&self, m: &StepMeta<'_>) -> Option<Padded> {
        let n = m.token_ids.len();
        if !self.opts.graph_capture
            || n == 0
            || m.max_blocks_per_seq == 0
            || m.query_len.len() != n
            || !m.query_len.iter().all(|&l| l == 1)
            || self.opts.capture_batch_sizes.contains(&n)
        {
            return None;
        }
        let size = self
            .opts
            .capture_batch_sizes
            .iter()
            .copied()
            .filter(|&s| s > n)
            .min()?;
        let extra = size - n;
        if extra > m.block_size {
            return None;
        }
        let mut p = Padded {
            token_ids: m.token_ids.to_vec(),
            positions: m.positions.to_vec(),
            slot_mapping: m.slot_mapping.to_vec(),
            query_start: m.query_start.to_vec(),
            query_len: m.query_len.to_vec(),
            context_len: m.context_len.to_vec(),
            block_tables: m.block_tables.to_vec(),
        };
        for i in 0..extra {
            p.token_ids.push(0);
            p.positions.push(0);
            // Distinct slots: K/V writes may not share one.
            p.slot_mapping.push(i as u32);
            p.query_start.push((n + i) as u32);
            p.query_len.push(1);
            p.context_len.push(1);
            p.block_tables
                .extend(std::iter::repeat_n(0, m.max_blocks_per_seq));
        }
        Some(p)
    }

    fn graph_eligible(&self, m: &StepMeta<'_>, full: bool) -> bool {
        let acl = &self.cann().acl;
        self.opts.graph_capture
            && (full
                || !self
                    .graphs_disabled
                    .load(std::sync::atomic::Ordering::Relaxed))
            && !m.token_ids.is_empty()
            && m.query_len.iter().all(|&l| l == 1)
            && self.opts.capture_batch_sizes.contains(&m.token_ids.len())
            && acl.aclmdlRICaptureBegin.is_some()
            && acl.aclmdlRICaptureEnd.is_some()
            && acl.aclmdlRIExecuteAsync.is_some()
            && acl.aclmdlRIDestroy.is_some()
    }

    /// At the start of a step: replay the captured graph of this step's shape, or start
    /// capturing one, or stay eager.
    pub(crate) fn enter_graph_mode(&self, m: &StepMeta<'_>, real_tokens: usize) -> Result<()> {
        self.abandon_graph_step();
        if let Ok(mut p) = self.padding.lock() {
            *p = None;
        }
        let full = self.opts.graph_capture
            && matches!(self.graph_kind(), crate::graph_full::GraphKind::Full);
        if !self.graph_eligible(m, full) {
            return Ok(());
        }
        self.log_graph_kind();
        // What graphs read but do not own must exist before capturing.
        if self.refresh_rope(m.rope, m.positions)? {
            self.drop_graphs()?;
        }
        if !self.opts.kv_cache_f32 {
            drop(self.causal_mask()?);
        }
        let key = m.token_ids.len();
        if let Ok(mut p) = self.padding.lock() {
            *p = (real_tokens < key).then_some((real_tokens, key));
        }
        let existing = self
            .graphs
            .lock()
            .map_err(|_| BackendError::Device("graph table poisoned".into()))?
            .get(&key)
            .cloned();
        let dev = self.device();
        match existing {
            Some(step) => {
                *dev.graph_state() = GraphMode::Replay {
                    step,
                    cursor: 0,
                    segment: 0,
                    eager: false,
                    group: 0,
                    updating: false,
                };
            }
            None => {
                // Within the stream budget: past it, this size stays eager.
                let segments = self.captured_segments();
                let per_graph = self
                    .graphs
                    .lock()
                    .ok()
                    .and_then(|g| g.values().next().map(|s| s.segments.len()))
                    .unwrap_or(1);
                if segments + per_graph > MAX_CAPTURED_GRAPHS {
                    return Ok(());
                }
                let mut rec = Recording::default();
                rec.full = full;
                *dev.graph_state() = GraphMode::Capture(rec);
                if let Ok(mut c) = self.capturing.lock() {
                    *c = Some(key);
                }
                dev.begin_capture()?;
            }
        }
        Ok(())
    }

    /// Before attention: end (capture) or launch (replay) the segment so far.
    pub(crate) fn graph_segment_end(&self) -> Result<()> {
        if self.full_graph_step() {
            return Ok(());
        }
        let dev = self.device();
        let mut g = dev.graph_state();
        match &mut *g {
            GraphMode::Off => Ok(()),
            GraphMode::Capture(rec) => {
                let active = rec.active;
                drop(g);
                if active {
                    dev.end_capture()?;
                }
                Ok(())
            }
            // The K/V write already opened the eager region attention now enters.
            GraphMode::Replay { eager: true, .. } => Ok(()),
            GraphMode::Replay {
                step,
                segment,
                eager,
                ..
            } => {
                let ri = *step
                    .segments
                    .get(*segment)
                    .ok_or_else(|| diverged("more attention calls"))?;
                *segment += 1;
                *eager = true;
                drop(g);
                dev.launch_segment(ri)
            }
        }
    }

    /// After attention: the next segment starts.
    pub(crate) fn graph_segment_begin(&self) -> Result<()> {
        if self.full_graph_step() {
            return Ok(());
        }
        let dev = self.device();
        let mut g = dev.graph_state();
        match &mut *g {
            GraphMode::Off => Ok(()),
            GraphMode::Capture(_) => {
                drop(g);
                dev.begin_capture()
            }
            GraphMode::Replay { eager, .. } => {
                *eager = false;
                Ok(())
            }
        }
    }

    /// When the host reads results: the last segment ends (and a capture is kept).
    pub(crate) fn finish_graph_step(&self) -> Result<()> {
        let dev = self.device();
        let active = match &*dev.graph_state() {
            GraphMode::Off => return Ok(()),
            GraphMode::Capture(rec) => Some(rec.active),
            GraphMode::Replay { .. } => None,
        };
        if let Some(active) = active {
            let ended = if active { dev.end_capture() } else { Ok(()) };
            let mode = std::mem::take(&mut *dev.graph_state());
            let key = self.capturing.lock().ok().and_then(|mut c| c.take());
            if let GraphMode::Capture(rec) = mode {
                // A failed capture is freed (dropped) rather than kept.
                let step = dev.finish_recording(rec);
                if let (Ok(()), Some(key)) = (&ended, key) {
                    use crate::host_calls::{add, bump, Counter};
                    bump(Counter::GraphCaptured);
                    add(Counter::GraphSegments, step.segments.len() as u64);
                    if let Ok(mut g) = self.graphs.lock() {
                        g.insert(key, Arc::new(step));
                    }
                }
            }
            return ended;
        }
        let mode = std::mem::take(&mut *dev.graph_state());
        let GraphMode::Replay {
            step,
            cursor,
            segment,
            group,
            ..
        } = mode
        else {
            return Ok(());
        };
        if cursor != step.allocs.len()
            || segment + 1 != step.segments.len()
            || group != step.groups.len()
        {
            return Err(diverged(&format!(
                "{cursor} of {} allocations, segment {segment} of {}, task group {group} of {}",
                step.allocs.len(),
                step.segments.len(),
                step.groups.len()
            )));
        }
        dev.launch_segment(step.segments[segment])?;
        self.replays
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Leaves graph mode after a step that failed midway (a capture is discarded).
    pub(crate) fn abandon_graph_step(&self) {
        let dev = self.device();
        let mode = std::mem::take(&mut *dev.graph_state());
        if let GraphMode::Capture(rec) = mode {
            if rec.active {
                dev.abort_capture();
            }
            drop(dev.finish_recording(rec));
            if let Ok(mut c) = self.capturing.lock() {
                *c = None;
            }
        }
    }

    pub(crate) fn drop_graphs(&self) -> Result<()> {
        self.device().synchronize()?;
        if let Ok(mut g) = self.graphs.lock() {
            g.clear();
        }
        Ok(())
    }
}

impl Drop for AscendBackend {
    fn drop(&mut self) {
        // Graphs hold the device; a replay state would keep it alive.
        self.abandon_graph_step();
        let _ = self.drop_graphs();
    }
}

#[cfg(test)]
mod tests {
    use super::{capture_sizes_within_budget, MAX_CAPTURED_GRAPHS};

    #[test]
    fn capture_sizes_keep_within_the_stream_budget() {
        let sizes = [64, 1, 2, 4, 8, 16, 32, 8];
        // Qwen3-8B piecewise (37 graphs a size) and Qwen3-32B (65): all seven fit.
        assert_eq!(
            capture_sizes_within_budget(&sizes, 37),
            vec![1, 2, 4, 8, 16, 32, 64]
        );
        assert_eq!(capture_sizes_within_budget(&sizes, 65).len(), 7);
        // Three fit: the smallest, the largest and one between.
        assert_eq!(
            capture_sizes_within_budget(&sizes, MAX_CAPTURED_GRAPHS / 3),
            vec![1, 8, 64]
        );
        assert_eq!(
            capture_sizes_within_budget(&sizes, MAX_CAPTURED_GRAPHS),
            vec![1]
        );
        assert!(capture_sizes_within_budget(&sizes, MAX_CAPTURED_GRAPHS + 1).is_empty());
        for per in [1, 37, 65, 200, 600] {
            let kept = capture_sizes_within_budget(&sizes, per);
            assert!(kept.len() * per <= MAX_CAPTURED_GRAPHS, "{per}: {kept:?}");
        }
    }
}
