//! Collectives between tensor-parallel ranks.

use crate::{Backend, Result};

/// What a rank's forward pass needs from its peers. Every rank calls each method in the same
/// order; implementations block until all ranks arrive.
pub trait Communicator<B: Backend>: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum across ranks, in place.
    fn all_reduce_sum(&self, backend: &B, t: &mut B::Tensor) -> Result<()>;
    /// Concatenates every rank's `[rows, cols_r]` along the last dimension, in rank order.
    fn all_gather_cols(&self, backend: &B, t: B::Tensor) -> Result<B::Tensor>;
}

/// One rank alone: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleRank;

impl<B: Backend> Communicator<B> for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _backend: &B, _t: &mut B::Tensor) -> Result<()> {
        Ok(())
    }

    fn all_gather_cols(&self, _backend: &B, t: B::Tensor) -> Result<B::Tensor> {
        Ok(t)
    }
}
