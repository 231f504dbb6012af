//! The primitive ops: casts, copies, element-wise maths, index-select, matmul, the norms,
//! embedding, linear layers and SwiGLU, each one aclnn call (or a few).

use qwen3_backend::Result;

use crate::desc::{Dt, ScalarDesc, TensorDesc, View};
use crate::{shape_err, AscendBackend, AscendStep, AscendTensor};

impl AscendBackend {
    pub(crate) fn td(&self, v: &View) -> Result<TensorDesc<'_>> {
        TensorDesc::new(self.cann_ref(), v)
    }

    /// `x` converted to `dt` (a new tensor; `None` when already `dt`).
    pub(crate) fn cast(&self, x: &AscendTensor, dt: Dt) -> Result<Option<AscendTensor>> {
        if x.dt == dt {
            return Ok(None);
        }
        let out = self.empty(dt, &x.shape)?;
        let c = self.cann_ref();
        let (a, o) = (self.td(&x.view())?, self.td(&out.view())?);
        aclnn!(&self.dev, "aclnnCast", c.ops.aclnnCastGetWorkspaceSize, c.ops.aclnnCast;
            a.raw, dt.acl(), o.raw)?;
        Ok(Some(out))
    }

    /// Copies `src` into `dst` (views of equal shape; dtype converted if they differ).
    pub(crate) fn copy_view(&self, dst: &View, src: &View) -> Result<()> {
        let c = self.cann_ref();
        let (d, s) = (self.td(dst)?, self.td(src)?);
        aclnn!(&self.dev, "aclnnInplaceCopy", c.ops.aclnnInplaceCopyGetWorkspaceSize,
            c.ops.aclnnInplaceCopy; d.raw, s.raw)
    }

    pub(crate) fn mul(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (x, y, o) = (self.td(a)?, self.td(b)?, self.td(out)?);
        aclnn!(&self.dev, "aclnnMul", c.ops.aclnnMulGetWorkspaceSize, c.ops.aclnnMul;
            x.raw, y.raw, o.raw)
    }

    pub(crate) fn add(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (x, y, o) = (self.td(a)?, self.td(b)?, self.td(out)?);
        let one = ScalarDesc::f32(c, 1.0)?;
        aclnn!(&self.dev, "aclnnAdd", c.ops.aclnnAddGetWorkspaceSize, c.ops.aclnnAdd;
            x.raw, y.raw, one.raw, o.raw)
    }

    pub(crate) fn index_select(&self, x: &View, idx: &AscendTensor, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (a, i, o) = (self.td(x)?, self.td(&idx.view())?, self.td(out)?);
        aclnn!(&self.dev, "aclnnIndexSelect", c.ops.aclnnIndexSelectGetWorkspaceSize,
            c.ops.aclnnIndexSelect; a.raw, 0i64, i.raw, o.raw)
    }

    /// RMSNorm of the rows of `x` (seen as `[rows, dim]`) into a new tensor of `shape`.
    pub(crate) fn rms_norm_rows(
        &self,
        x: &View,
        gamma: &AscendTensor,
        eps: f32,
        rows: usize,
        dim: usize,
        shape: &[usize],
    ) -> Result<AscendTensor> {
        if gamma.numel() != dim {
            return Err(shape_err(
                "rms_norm",
                format!("weight {:?} for dim {dim}", gamma.shape),
            ));
        }
        let g_cast = self.cast(gamma, x.dt)?;
        let g = g_cast.as_ref().unwrap_or(gamma);
        let y = self.empty(x.dt, shape)?;
        let rstd = self.empty(Dt::F32, &[rows, 1])?;
        let c = self.cann_ref();
        let xv = x.reshape(&[rows, dim])?;
        let (a, gd) = (self.td(&xv)?, self.td(&g.view().reshape(&[dim])?)?);
        let (yd, rd) = (
            self.td(&y.view().reshape(&[rows, dim])?)?,
            self.td(&rstd.view())?,
        );
        aclnn!(&self.dev, "aclnnRmsNorm", c.ops.aclnnRmsNormGetWorkspaceSize, c.ops.aclnnRmsNorm;
            a.raw, gd.raw, eps as f64, yd.raw, rd.raw)?;
        Ok(y)
    }

    pub(crate) fn matmul(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (x, y, o) = (self.td(a)?, self.td(b)?, self.td(out)?);
        aclnn!(&self.dev, "aclnnMatmul", c.ops.aclnnMatmulGetWorkspaceSize, c.ops.aclnnMatmul;
            x.raw, y.raw, o.raw, 0i8)
    }

    pub(crate) fn embedding_impl(
        &self,
        table: &AscendTensor,
        step: &AscendStep,
        vocab_start: usize,
    ) -> Result<AscendTensor> {
        let (rows, dim) = table.matrix();
        let n = step.token_ids.len();
        let mut idx = Vec::with_capacity(n);
        let mut mask = Vec::with_capacity(n);
        for &id in &step.token_ids {
            let id = id as usize;
            let inside = id >= vocab_start && id < vocab_start + rows;
            idx.push(if inside { (id - vocab_start) as i64 } else { 0 });
            mask.push(if inside { 1.0f32 } else { 0.0 });
        }
        let out = self.empty(table.dt, &[n, dim])?;
        if n == 0 {
            return Ok(out);
        }
        let idx_t = self.upload_i64(&idx, &[n])?;
        let c = self.cann_ref();
        {
            let (w, i, o) = (
                self.td(&table.view().reshape(&[rows, dim])?)?,
                self.td(&idx_t.view())?,
                self.td(&out.view())?,
            );
            aclnn!(&self.dev, "aclnnEmbedding", c.ops.aclnnEmbeddingGetWorkspaceSize,
                c.ops.aclnnEmbedding; w.raw, i.raw, o.raw)?;
        }
        // Graph steps always mask, so that every replay runs the same ops.
        if mask.iter().all(|&m| m == 1.0) && !self.in_graph_mode() {
            return Ok(out);
        }
        // Ids of other ranks' vocabulary slices: zero rows (the all-reduce sums the slices).
        let m = self.upload_float(&mask, table.dt, &[n, 1])?;
        let masked = self.empty(table.dt, &[n, dim])?;
        self.mul(&out.view(), &m.view(), &masked.view())?;
        Ok(masked)
    }

    pub(crate) fn add_rms_norm_impl(
        &self,
        x: &AscendTensor,
        residual: &mut AscendTensor,
        w: &AscendTensor,
        eps: f32,
    ) -> Result<AscendTensor> {
        if x.shape != residual.shape || x.dt != residual.dt {
            return Err(shape_err(
                "add_rms_norm",
                format!(
                    "{:?} {:?} + {:?} {:?}",
                    x.shape, x.dt, residual.shape, residual.dt
                ),
            ));
        }
        let (rows, dim) = x.matrix();
        if w.numel() != dim {
            return Err(shape_err(
                "add_rms_norm",
                format!("weight {:?} for dim {dim}", w.shape),
            ));
        }
        let g_cast = self.cast(w, x.dt)?;
        let g = g_cast.as_ref().unwrap_or(w);
        let y = self.empty(x.dt, &x.shape)?;
        let sum = self.empty(x.dt, &x.shape)?;
        let rstd = self.empty(Dt::F32, &[rows, 1])?;
        let c = self.cann_ref();
        {
            let m = [rows, dim];
            let (a, b) = (
                self.td(&residual.view().reshape(&m)?)?,
                self.td(&x.view().reshape(&m)?)?,
            );
            let gd = self.td(&g.view().reshape(&[dim])?)?;
            let (yd, rd, sd) = (
                self.td(&y.view().reshape(&m)?)?,
                self.td(&rstd.view())?,
                self.td(&sum.view().reshape(&m)?)?,
            );
            aclnn!(&self.dev, "aclnnAddRmsNorm", c.ops.aclnnAddRmsNormGetWorkspaceSize,
                c.ops.aclnnAddRmsNorm; a.raw, b.raw, gd.raw, eps as f64, yd.raw, rd.raw, sd.raw)?;
        }
        *residual = sum;
        Ok(y)
    }

    pub(crate) fn head_rms_norm_impl(
        &self,
        x: &mut AscendTensor,
        w: &AscendTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let (rows, width) = x.matrix();
        if head_dim == 0 || !width.is_multiple_of(head_dim) || w.numel() != head_dim {
            return Err(shape_err(
                "head_rms_norm",
                format!("x {:?}, weight {:?}, head_dim {head_dim}", x.shape, w.shape),
            ));
        }
        let heads = rows * (width / head_dim);
        let shape = x.shape.clone();
        let y = self.rms_norm_rows(&x.view(), w, eps, heads, head_dim, &shape)?;
        *x = y;
        Ok(())
    }

    pub(crate) fn linear_impl(&self, x: &AscendTensor, w: &AscendTensor) -> Result<AscendTensor> {
        if let Some(q) = &w.quant {
            return self.quant_linear(x, w, q);
        }
        let (m, k) = x.matrix();
        if w.shape.len() != 2 || w.shape[1] != k {
            return Err(shape_err(
                "linear",
                format!("x {:?} @ w {:?}^T", x.shape, w.shape),
            ));
        }
        let n = w.shape[0];
        let x_cast = self.cast(x, w.dt)?;
        let xs = x_cast.as_ref().unwrap_or(x);
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        let out = self.empty(w.dt, &shape)?;
        if m == 0 {
            return Ok(out);
        }
        // The weight `[n, k]` as its transpose `[k, n]`: a strided view, no copy.
        let wt = View {
            shape: vec![k as i64, n as i64],
            strides: vec![1, k as i64],
            ..w.view()
        };
        let c = self.cann_ref();
        let (a, b, o) = (
            self.td(&xs.view().reshape(&[m, k])?)?,
            self.td(&wt)?,
            self.td(&out.view().reshape(&[m, n])?)?,
        );
        // KEEP_DTYPE: F32 stays F32 (no HF32), BF16 accumulates in F32 either way.
        aclnn!(&self.dev, "aclnnMatmul", c.ops.aclnnMatmulGetWorkspaceSize, c.ops.aclnnMatmul;
            a.raw, b.raw, o.raw, 0i8)?;
        Ok(out)
    }

    pub(crate) fn silu_mul_impl(
        &self,
        gate: &AscendTensor,
        up: &AscendTensor,
    ) -> Result<AscendTensor> {
        if gate.shape != up.shape || gate.dt != up.dt {
            return Err(shape_err(
                "silu_mul",
                format!("{:?} vs {:?}", gate.shape, up.shape),
            ));
        }
        let (m, i) = gate.matrix();
        if m == 0 {
            return self.empty(gate.dt, &gate.shape);
        }
        // SwiGlu splits one [m, 2i] input in halves: silu(first) * second.
        let both = self.empty(gate.dt, &[m, 2 * i])?;
        let half = |off: usize| View {
            shape: vec![m as i64, i as i64],
            strides: vec![2 * i as i64, 1],
            offset: off as i64,
            ..both.view()
        };
        self.copy_view(&half(0), &gate.view().reshape(&[m, i])?)?;
        self.copy_view(&half(i), &up.view().reshape(&[m, i])?)?;
        let mut out = self.silu_mul_merged_impl(&both)?;
        out.shape = gate.shape.clone();
        Ok(out)
    }

    /// SwiGlu of `[m, 2i]` (gate columns first): `[m, i]`, one launch.
    pub(crate) fn silu_mul_merged_impl(&self, both: &AscendTensor) -> Result<AscendTensor> {
        let (m, two_i) = both.matrix();
        if !two_i.is_multiple_of(2) {
            return Err(shape_err("silu_mul_merged", format!("{:?}", both.shape)));
        }
        let i = two_i / 2;
        let out = self.empty(both.dt, &[m, i])?;
        if m == 0 {
            return Ok(out);
        }
        let c = self.cann_ref();
        let (a, o) = (
            self.td(&both.view())?,
            self.td(&out.view().reshape(&[m, i])?)?,
        );
        aclnn!(&self.dev, "aclnnSwiGlu", c.ops.aclnnSwiGluGetWorkspaceSize, c.ops.aclnnSwiGlu;
            a.raw, -1i64, o.raw)?;
        Ok(out)
    }

    pub(crate) fn add_inplace_impl(&self, x: &mut AscendTensor, y: &AscendTensor) -> Result<()> {
        if x.shape != y.shape {
            return Err(shape_err("add", format!("{:?} + {:?}", x.shape, y.shape)));
        }
        if x.numel() == 0 {
            return Ok(());
        }
        let c = self.cann_ref();
        let (a, b) = (self.td(&x.view())?, self.td(&y.view())?);
        let one = ScalarDesc::f32(c, 1.0)?;
        aclnn!(&self.dev, "aclnnInplaceAdd", c.ops.aclnnInplaceAddGetWorkspaceSize,
            c.ops.aclnnInplaceAdd; a.raw, b.raw, one.raw)
    }

    pub(crate) fn select_rows_impl(&self, x: &AscendTensor, rows: &[u32]) -> Result<AscendTensor> {
        let padded = self.padded_rows(rows);
        let rows = padded.as_deref().unwrap_or(rows);
        let (n, dim) = x.matrix();
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(shape_err("select_rows", format!("row {r} of {n}")));
        }
        let out = self.empty(x.dt, &[rows.len(), dim])?;
        if rows.is_empty() {
            return Ok(out);
        }
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx_t = self.upload_i64(&idx, &[rows.len()])?;
        self.index_select(&x.view().reshape(&[n, dim])?, &idx_t, &out.view())?;
        Ok(out)
    }
}
