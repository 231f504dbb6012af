//! The causal mask fused attention takes in `sparse_mode` 3, built once per backend.

use qwen3_backend::Result;

use crate::desc::Dt;
use crate::{AscendBackend, AscendTensor};

/// Side of the causal mask fused attention takes in `sparse_mode` 3.
const MASK_SIDE: usize = 2048;

impl AscendBackend {
    /// The causal mask for `sparse_mode` 3: `[2048, 2048]` bool, true above the diagonal
    /// (masked out), built once.
    pub(crate) fn causal_mask(&self) -> Result<std::sync::MutexGuard<'_, Option<AscendTensor>>> {
        let mut g = self.mask.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let mut m = vec![0u8; MASK_SIDE * MASK_SIDE];
            for i in 0..MASK_SIDE {
                for j in i + 1..MASK_SIDE {
                    m[i * MASK_SIDE + j] = 1;
                }
            }
            *g = Some(self.upload_bytes(m, Dt::Bool, &[MASK_SIDE, MASK_SIDE])?);
        }
        Ok(g)
    }
}
