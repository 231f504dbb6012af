//! CPU tensors: data as loaded or computed (F32, BF16 or packed quantized), with an inline
//! shape, and the way an op's F32 buffer goes back to the backend's pool when it drops.

use std::sync::Arc;

use half::bf16;

use super::matmul::{matmul_t, WeightRows};
use super::step::Reuse;
use super::{gemv, int8, quant, shape_err};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub enum CpuData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    /// Weight-only quantized, packed (see [`quant`]).
    Quant(Box<quant::QuantMatrix>),
    /// W8A8: int8 weights, activations quantized per call (see [`int8`]).
    Int8(Box<int8::Int8Matrix>),
}

/// Most dimensions a CPU tensor has (stacked expert weights have 3).
pub const MAX_RANK: usize = 4;

/// A shape held inline, so making a tensor allocates nothing besides (at most) its data.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dims {
    /// Unused dimensions stay 0, so the derived equality is the shapes' equality.
    pub(super) d: [usize; MAX_RANK],
    pub(super) rank: u8,
}

impl Dims {
    pub(super) fn new(op: &'static str, s: &[usize]) -> Result<Self> {
        if s.len() > MAX_RANK {
            return Err(shape_err(
                op,
                format!("shape {s:?} has more than {MAX_RANK} dimensions"),
            ));
        }
        let mut d = [0; MAX_RANK];
        d[..s.len()].copy_from_slice(s);
        Ok(Self {
            d,
            rank: s.len() as u8,
        })
    }

    /// The shape, checked to hold `len` elements.
    pub(super) fn checked(op: &'static str, s: &[usize], len: usize) -> Result<Self> {
        if s.iter().product::<usize>() != len {
            return Err(shape_err(op, format!("{len} elements for shape {s:?}")));
        }
        Self::new(op, s)
    }

    pub(super) fn matrix(rows: usize, cols: usize) -> Self {
        Self {
            d: [rows, cols, 0, 0],
            rank: 2,
        }
    }

    /// The same shape with its last dimension replaced.
    pub(super) fn with_last(mut self, n: usize) -> Self {
        if self.rank > 0 {
            self.d[self.rank as usize - 1] = n;
        }
        self
    }
}

impl std::ops::Deref for Dims {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        &self.d[..self.rank as usize]
    }
}

impl std::fmt::Debug for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[derive(Clone)]
pub struct CpuTensor {
    pub(super) shape: Dims,
    pub(super) data: CpuData,
    /// Where an op's F32 buffer goes back when the tensor drops (None: uploaded or built by
    /// hand, freed as usual).
    pub(super) reuse: Option<Arc<Reuse>>,
}

impl PartialEq for CpuTensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data == other.data
    }
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuTensor")
            .field("shape", &self.shape)
            .field("data", &self.data)
            .finish()
    }
}

impl Drop for CpuTensor {
    fn drop(&mut self) {
        if let (Some(r), CpuData::F32(v)) = (self.reuse.take(), &mut self.data) {
            r.pool.give(std::mem::take(v));
        }
    }
}

impl CpuTensor {
    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(shape_err(
                "from_f32",
                format!("{} elements for shape {shape:?}", data.len()),
            ));
        }
        Ok(Self {
            shape: Dims::new("from_f32", shape)?,
            data: CpuData::F32(data),
            reuse: None,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &CpuData {
        &self.data
    }

    /// The F32 payload of an activation.
    pub fn f32(&self, op: &'static str) -> Result<&[f32]> {
        match &self.data {
            CpuData::F32(v) => Ok(v),
            _ => Err(shape_err(op, "expected an F32 activation".into())),
        }
    }

    pub(super) fn f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match &mut self.data {
            CpuData::F32(v) => Ok(v),
            _ => Err(shape_err(op, "expected an F32 activation".into())),
        }
    }

    pub(super) fn weight_rows(&self) -> WeightRows<'_> {
        match &self.data {
            CpuData::F32(v) => WeightRows::F32(v),
            CpuData::BF16(v) => WeightRows::BF16(v),
            // Quantized weights are dispatched before any caller asks for rows.
            CpuData::Quant(_) | CpuData::Int8(_) => WeightRows::F32(&[]),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Matrix `i` of a stacked `[count, rows, cols]` weight.
    pub(super) fn stacked(&self, i: usize, rows: usize, cols: usize) -> WeightRows<'_> {
        let n = rows * cols;
        match &self.data {
            CpuData::F32(v) => WeightRows::F32(&v[i * n..(i + 1) * n]),
            CpuData::BF16(v) => WeightRows::BF16(&v[i * n..(i + 1) * n]),
            CpuData::Quant(_) | CpuData::Int8(_) => WeightRows::F32(&[]),
        }
    }

    /// `out[m, rows] = x[m, cols] @ W_i^T` for matrix `i` of a stacked `[count, rows, cols]`
    /// weight, dense or quantized.
    pub(super) fn stacked_matmul(
        &self,
        i: usize,
        x: &[f32],
        m: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let cols = x.len() / m.max(1);
        match (&self.data, self.stacked(i, rows, cols)) {
            (CpuData::Quant(q), _) => q.matmul(i, x, m, out),
            (CpuData::Int8(q), _) => q.matmul(i, x, m, out),
            // A few tokens routed to an expert: the GEMV, as `linear` does for decode batches.
            (_, WeightRows::BF16(w)) if m <= gemv::MAX_ROWS => {
                gemv::gemv_bf16(x, m, cols, w, rows, out)
            }
            (_, w) => matmul_t(x, m, cols, w, rows, out),
        }
    }

    /// `(rows, cols)` of a tensor seen as a matrix over its last dimension.
    pub(super) fn matrix(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        (self.len() / cols.max(1), cols)
    }
}
