//! The device tensor: a contiguous row-major buffer with its shape and element type.

use crate::desc::{Dt, View};
use crate::mem::Buffer;
use crate::quant;

/// A tensor in device memory: contiguous, row-major.
pub struct AscendTensor {
    pub(crate) buf: Buffer,
    pub(crate) shape: Vec<usize>,
    pub(crate) dt: Dt,
    /// Set on quantized weights (weight-only or W8A8): `buf` then holds the codes.
    pub(crate) quant: Option<Box<quant::Quantized>>,
}

impl AscendTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> Dt {
        self.dt
    }

    pub fn view(&self) -> View {
        View::contiguous(self.buf.ptr, self.dt, &self.shape)
    }

    /// `(rows, cols)` seen as a matrix over the last dimension.
    pub(crate) fn matrix(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        (self.numel() / cols.max(1), cols)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

impl std::fmt::Debug for AscendTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AscendTensor")
            .field("shape", &self.shape)
            .field("dt", &self.dt)
            .finish()
    }
}
