//! One step's metadata on the CPU ([`CpuStep`]), and what the backend reuses from op to op
//! and step to step ([`Reuse`]: the activation pool, the step arrays, the MoE scratch), so a
//! warmed-up decode step allocates nothing.

use std::sync::Arc;

use super::attention::TokenPlace;
use super::pool::{ActivationPool, Spare};

/// What the backend reuses from op to op, shared by its clones and its tensors.
#[derive(Default)]
pub(super) struct Reuse {
    pub(super) pool: ActivationPool,
    pub(super) steps: Spare<StepBufs>,
    pub(super) moe: Spare<MoeScratch>,
}

/// One step's metadata, copied once and shared by every layer. Its arrays go back to the
/// backend when it drops, so the next step refills them without allocating.
pub struct CpuStep {
    pub(super) token_ids: Vec<u32>,
    pub(super) slot_mapping: Vec<u32>,
    pub(super) places: Vec<TokenPlace>,
    pub(super) block_tables: Vec<u32>,
    pub(super) max_blocks_per_seq: usize,
    /// `[tokens, head_dim / 2]` each, with the rope's mscale folded in.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    pub(super) reuse: Arc<Reuse>,
}

/// The arrays of a [`CpuStep`], kept between steps.
#[derive(Default)]
pub(super) struct StepBufs {
    pub(super) token_ids: Vec<u32>,
    pub(super) slot_mapping: Vec<u32>,
    pub(super) places: Vec<TokenPlace>,
    pub(super) block_tables: Vec<u32>,
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
}

impl Drop for CpuStep {
    fn drop(&mut self) {
        use std::mem::take;
        self.reuse.steps.put(StepBufs {
            token_ids: take(&mut self.token_ids),
            slot_mapping: take(&mut self.slot_mapping),
            places: take(&mut self.places),
            block_tables: take(&mut self.block_tables),
            cos: take(&mut self.cos),
            sin: take(&mut self.sin),
        });
    }
}

/// The MoE op's routing lists and per-expert buffers, kept between calls.
#[derive(Default)]
pub(super) struct MoeScratch {
    /// Per expert: (token, weight) pairs routed to it.
    pub(super) per_expert: Vec<Vec<(usize, f32)>>,
    pub(super) probs: Vec<f32>,
    pub(super) order: Vec<usize>,
    pub(super) xe: Vec<f32>,
    pub(super) g: Vec<f32>,
    pub(super) u: Vec<f32>,
    pub(super) y: Vec<f32>,
}
