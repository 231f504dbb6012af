//! The CPU backend: BF16 (or F32) weights kept as loaded, work spread over rayon's pool (sized
//! once by `--cpu-threads`), activations at matmul inputs and the KV cache at the precision
//! asked ([`precision`]: exact F32, or BF16 inputs with F32 accumulation and a BF16 cache).
//! Decode batches (≤ 8 rows) use the SIMD BF16 GEMV, larger ones `gemm` on the F32 path and
//! the `vdpbf16ps` GEMM ([`gemm_bf16`]) on the BF16 one; attention and the element-wise ops
//! use the vector kernels of the SIMD level picked at run time ([`simd::level`]).
//!
//! No allocation in a decode step: ops write into buffers of the backend's
//! [`pool::ActivationPool`], which a tensor hands back when it drops; shapes are inline; step
//! metadata, MoE routing lists and per-thread kernel scratch keep their capacity from step to
//! step. Once the start-up profiling step (the largest batch) has run, a decode step allocates
//! nothing on the heap (`crates/model/tests/decode_alloc.rs` counts).

pub mod attention;
pub mod bandwidth;
pub mod comm;
pub mod gemm_amx;
pub mod gemm_bf16;
pub mod gemv;
pub mod int8;
mod kv_cache;
pub mod matmul;
pub mod pool;
pub mod precision;
pub mod quant;
pub mod simd;
mod step;
mod tensor;
pub mod vector;

use std::cell::RefCell;
use std::sync::Arc;

use half::bf16;
use rayon::prelude::*;

use crate::logprobs::{row_prompt_logprob, PromptLogprob};
use crate::sampling::{sample_row, SampleRow, Sampled};
use crate::{
    AttnGeometry, Backend, BackendError, HostData, HostVec, KvCacheShape, MoeWeights,
    QuantizedHost, Result, StepMeta, W8A8Host,
};
use attention::{PagedKv, TokenPlace};
use matmul::matmul_t;
use pool::{ActivationPool, PoolLimits, PoolStats};
use vector::{kernels, Kernels};

pub use kv_cache::CpuKvCache;
use kv_cache::KvRows;
pub use precision::{CpuDType, CpuPrecision};
pub use step::CpuStep;
use step::{MoeScratch, Reuse};
use tensor::Dims;
pub use tensor::{CpuData, CpuTensor, MAX_RANK};

/// The KV block size when none is asked for: small blocks waste little of each sequence's
/// last block and keep prefix caching fine-grained.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

/// `v` cleared and resized to `n` zeros, its capacity kept.
fn zeros(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

/// The CPU backend. Clones share one activation pool.
#[derive(Clone, Default)]
pub struct CpuBackend {
    /// Bytes the KV cache may use, as vLLM's `--cpu-kv-cache-space`; None: size from RAM.
    pub kv_cache_space: Option<u64>,
    /// Matmul inputs and KV cache precision; the default is the exact F32 path.
    pub precision: CpuPrecision,
    reuse: Arc<Reuse>,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("kv_cache_space", &self.kv_cache_space)
            .field("precision", &self.precision)
            .field("pool", &self.reuse.pool)
            .finish()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose activation pool keeps at most `limits` while idle.
    pub fn with_pool_limits(limits: PoolLimits) -> Self {
        Self {
            kv_cache_space: None,
            precision: CpuPrecision::default(),
            reuse: Arc::new(Reuse {
                pool: ActivationPool::new(limits),
                ..Reuse::default()
            }),
        }
    }

    /// The same backend computing at `precision`.
    pub fn with_precision(mut self, precision: CpuPrecision) -> Self {
        self.precision = precision;
        self
    }

    /// `out[m, n] = x[m, k] · w[n, k]ᵀ` under the BF16 policy: `x` rounded to BF16, F32
    /// accumulation. The `vdpbf16ps` GEMM from two rows up where the CPU has it; else `x` is
    /// rounded into a pooled buffer for the kernels of the exact path.
    fn matmul_bf16_inputs(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[bf16],
        n: usize,
        out: &mut [f32],
    ) {
        let level = simd::level();
        if m >= 2 && gemm_bf16::has_kernel(level) {
            return gemm_bf16::gemm_bf16_at(level, x, m, k, w, n, out);
        }
        let mut xr = self.take(m * k);
        for (d, &v) in xr.iter_mut().zip(x) {
            *d = gemm_bf16::round_bf16(v);
        }
        if m <= gemv::MAX_ROWS {
            gemv::gemv_bf16(&xr, m, k, w, n, out);
        } else {
            matmul_t(&xr, m, k, matmul::WeightRows::BF16(w), n, out);
        }
        self.reuse.pool.give(xr);
    }

    /// Expert `i`'s matmul of a stacked weight, at the backend's precision.
    fn expert_matmul(
        &self,
        t: &CpuTensor,
        i: usize,
        x: &[f32],
        m: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let cols = x.len() / m.max(1);
        match t.stacked(i, rows, cols) {
            matmul::WeightRows::BF16(w)
                if self.precision.activations == CpuDType::BF16
                    && !matches!(t.data, CpuData::Quant(_)) =>
            {
                self.matmul_bf16_inputs(x, m, cols, w, rows, out)
            }
            _ => t.stacked_matmul(i, x, m, rows, out),
        }
    }

    /// The activation pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.reuse.pool.stats()
    }

    /// `n` zeros from the pool.
    fn take(&self, n: usize) -> Vec<f32> {
        self.reuse.pool.take(n)
    }

    /// An op's output: `data` (from [`Self::take`]) of `shape`, handed back when dropped.
    fn tensor(&self, data: Vec<f32>, shape: Dims) -> Result<CpuTensor> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(shape_err(
                "output",
                format!("{} elements for shape {shape:?}", data.len()),
            ));
        }
        Ok(CpuTensor {
            shape,
            data: CpuData::F32(data),
            reuse: Some(self.reuse.clone()),
        })
    }

    /// A norm weight as F32: borrowed when F32 already, else widened into a pooled buffer
    /// (norm weights are a few KiB: widening per call is cheap, allocating per call is not).
    fn weight_f32s<'a>(&'a self, w: &'a CpuTensor) -> PooledF32s<'a> {
        let owned = |f: &dyn Fn(usize) -> f32| {
            let mut v = self.take(w.len());
            v.iter_mut().enumerate().for_each(|(i, x)| *x = f(i));
            PooledF32s::Pooled(v, &self.reuse.pool)
        };
        match &w.data {
            CpuData::F32(v) => PooledF32s::Borrowed(v),
            CpuData::BF16(v) => owned(&|i| v[i].to_f32()),
            // Norm weights are never quantized; dequantizing keeps the op total anyway.
            CpuData::Quant(q) => owned(&|i| q.get(i)),
            CpuData::Int8(q) => owned(&|i| q.get(i)),
        }
    }
}

/// F32 values borrowed, or in a pool buffer that goes back when dropped.
enum PooledF32s<'a> {
    Borrowed(&'a [f32]),
    Pooled(Vec<f32>, &'a ActivationPool),
}

impl std::ops::Deref for PooledF32s<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            PooledF32s::Borrowed(v) => v,
            PooledF32s::Pooled(v, _) => v,
        }
    }
}

impl Drop for PooledF32s<'_> {
    fn drop(&mut self) {
        if let PooledF32s::Pooled(v, pool) = self {
            pool.give(std::mem::take(v));
        }
    }
}

/// Gives every thread of rayon's pool its attention and quantized-GEMV scratch once per
/// process, so a decode step whose task lands on a thread that has not run those ops yet does
/// not allocate. Only from outside the pool: a worker in `broadcast` waits for every other
/// worker, and one of them may be blocked on this `Once` (a deadlock seen with two engines'
/// steps on the pool at once). `run_step` warms before it hands the step to a worker.
fn warm_pool_threads() {
    static WARM: std::sync::Once = std::sync::Once::new();
    if rayon::current_thread_index().is_some() {
        return;
    }
    WARM.call_once(|| {
        rayon::broadcast(|_| {
            attention::reserve_scratch();
            quant::reserve_scratch();
        });
    });
}

/// Runs `f` on this thread's scratch vector `key`, or on a fresh one if it is in use (an op
/// nested in another on the same thread, e.g. by rayon's work stealing).
pub(crate) fn with_scratch<T, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    key.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut Vec::new()),
    })
}

fn rms_norm_row(k: &Kernels, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = (k.sum_sq)(x) / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    (k.mul_scale)(x, r, w, out);
}

/// The vector kernels of the level in force.
fn kern() -> &'static Kernels {
    kernels(simd::level())
}

thread_local! {
    /// A processed copy of one row of logits (vocabulary-sized), kept per thread.
    static SAMPLE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn read_meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Step = CpuStep;
    type KvCache = CpuKvCache;

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {} kernels)",
            rayon::current_num_threads(),
            simd::level().name()
        )
    }

    fn memory_info(&self) -> Result<(u64, u64)> {
        match self.kv_cache_space {
            Some(space) => Ok((space, space)),
            None => read_meminfo()
                .ok_or_else(|| BackendError::Device("cannot read /proc/meminfo".into())),
        }
    }

    fn upload(&self, data: HostData<'_>, shape: &[usize]) -> Result<CpuTensor> {
        // Checked before copying, so a wrong shape costs no copy.
        Dims::checked("upload", shape, data.len())?;
        self.upload_owned(
            match data {
                HostData::F32(d) => HostVec::F32(d.to_vec()),
                HostData::BF16(d) => HostVec::BF16(d.to_vec()),
            },
            shape,
        )
    }

    fn upload_owned(&self, data: HostVec, shape: &[usize]) -> Result<CpuTensor> {
        let shape = Dims::checked("upload", shape, data.as_data().len())?;
        let data = match data {
            HostVec::F32(d) => CpuData::F32(d),
            HostVec::BF16(d) => CpuData::BF16(d),
        };
        Ok(CpuTensor {
            shape,
            data,
            reuse: None,
        })
    }

    fn upload_quantized(&self, w: &QuantizedHost<'_>) -> Result<CpuTensor> {
        let q = quant::QuantMatrix::from_host(w)?;
        Ok(CpuTensor {
            shape: Dims::new("upload_quantized", &q.shape())?,
            data: CpuData::Quant(Box::new(q)),
            reuse: None,
        })
    }

    fn upload_w8a8(&self, w: &W8A8Host<'_>) -> Result<CpuTensor> {
        let q = int8::Int8Matrix::from_host(w)?;
        Ok(CpuTensor {
            shape: Dims::new("upload_w8a8", &q.shape())?,
            data: CpuData::Int8(Box::new(q)),
            reuse: None,
        })
    }

    fn shape<'t>(&self, t: &'t CpuTensor) -> &'t [usize] {
        &t.shape
    }

    fn to_host_f32(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(match &t.data {
            CpuData::F32(v) => v.clone(),
            CpuData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuData::Quant(q) => q.to_f32(),
            CpuData::Int8(q) => (0..t.len()).map(|i| q.get(i)).collect(),
        })
    }

    fn size_bytes(&self, t: &CpuTensor) -> u64 {
        let elem = match &t.data {
            CpuData::F32(_) => 4,
            CpuData::BF16(_) => 2,
            CpuData::Quant(q) => return q.size_bytes(),
            CpuData::Int8(q) => return q.size_bytes(),
        };
        (t.len() * elem) as u64
    }

    fn run_step<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        // From outside the pool, `join` hands its first closure to a worker and waits; on
        // 2 threads this measured +5 % decode (23.0 → 24.1 tokens/s at batch 1, 71 → 74.5 at
        // batch 8, 7 and 2 interleaved pairs).
        warm_pool_threads();
        rayon::join(f, || ()).0
    }

    fn prepare_step(&self, m: &StepMeta<'_>) -> Result<CpuStep> {
        warm_pool_threads();
        let n = m.token_ids.len();
        let seqs = m.query_start.len();
        if m.positions.len() != n
            || m.slot_mapping.len() != n
            || m.query_len.len() != seqs
            || m.context_len.len() != seqs
            || m.block_tables.len() != seqs * m.max_blocks_per_seq
            || m.block_size == 0
        {
            return Err(shape_err(
                "prepare_step",
                "inconsistent step metadata".into(),
            ));
        }
        // The previous step's arrays, refilled: after warm-up their capacity suffices.
        let b = self.reuse.steps.take();
        let mut step = CpuStep {
            token_ids: b.token_ids,
            slot_mapping: b.slot_mapping,
            places: b.places,
            block_tables: b.block_tables,
            max_blocks_per_seq: m.max_blocks_per_seq,
            cos: b.cos,
            sin: b.sin,
            reuse: self.reuse.clone(),
        };
        let places = &mut step.places;
        places.clear();
        for s in 0..seqs {
            let (start, len, ctx) = (m.query_start[s], m.query_len[s], m.context_len[s]);
            if start as usize != places.len() || len > ctx {
                return Err(shape_err(
                    "prepare_step",
                    format!("sequence {s}: query {start}+{len}, context {ctx}"),
                ));
            }
            if (ctx as usize).div_ceil(m.block_size) > m.max_blocks_per_seq {
                return Err(shape_err(
                    "prepare_step",
                    format!("sequence {s}: context {ctx} exceeds its block table"),
                ));
            }
            for i in 0..len {
                places.push(TokenPlace {
                    seq: s as u32,
                    pos: ctx - len + i,
                });
            }
        }
        if places.len() != n {
            return Err(shape_err(
                "prepare_step",
                "query lengths do not cover the tokens".into(),
            ));
        }
        let half = m.rope.inv_freq.len();
        let (cos, sin) = (&mut step.cos, &mut step.sin);
        zeros(cos, n * half);
        zeros(sin, n * half);
        for (t, &p) in m.positions.iter().enumerate() {
            for (i, &f) in m.rope.inv_freq.iter().enumerate() {
                // The angle in F32, as transformers computes it, so positions match bit for bit.
                let a = p as f32 * f;
                cos[t * half + i] = a.cos() * m.rope.mscale;
                sin[t * half + i] = a.sin() * m.rope.mscale;
            }
        }
        for (v, from) in [
            (&mut step.token_ids, m.token_ids),
            (&mut step.slot_mapping, m.slot_mapping),
            (&mut step.block_tables, m.block_tables),
        ] {
            v.clear();
            v.extend_from_slice(from);
        }
        Ok(step)
    }

    fn embedding(
        &self,
        table: &CpuTensor,
        step: &CpuStep,
        vocab_start: usize,
    ) -> Result<CpuTensor> {
        let (rows, dim) = table.matrix();
        // Zeros: ids outside this rank's vocabulary slice give zero rows.
        let mut out = self.take(step.token_ids.len() * dim);
        for (o, &id) in out.chunks_mut(dim).zip(&step.token_ids) {
            let id = id as usize;
            if id >= vocab_start && id < vocab_start + rows {
                let r = id - vocab_start;
                match &table.data {
                    CpuData::F32(v) => o.copy_from_slice(&v[r * dim..(r + 1) * dim]),
                    CpuData::BF16(v) => {
                        for (a, b) in o.iter_mut().zip(&v[r * dim..(r + 1) * dim]) {
                            *a = b.to_f32();
                        }
                    }
                    CpuData::Quant(_) | CpuData::Int8(_) => {
                        return Err(shape_err("embedding", "a quantized table".into()))
                    }
                }
            }
        }
        self.tensor(out, Dims::matrix(step.token_ids.len(), dim))
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        let (rows, dim) = x.matrix();
        if w.len() != dim {
            return Err(shape_err(
                "rms_norm",
                format!("weight {:?} for dim {dim}", w.shape),
            ));
        }
        let xs = x.f32("rms_norm")?;
        let (k, w) = (kern(), self.weight_f32s(w));
        let mut out = self.take(rows * dim);
        if rows == 1 {
            // A decode row: too small to be worth a rayon hand-off.
            rms_norm_row(k, xs, &w, eps, &mut out);
        } else {
            out.par_chunks_mut(dim)
                .zip(xs.par_chunks(dim))
                .for_each(|(o, r)| rms_norm_row(k, r, &w, eps, o));
        }
        drop(w);
        self.tensor(out, x.shape)
    }

    fn add_rms_norm(
        &self,
        x: &CpuTensor,
        residual: &mut CpuTensor,
        w: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor> {
        if x.shape != residual.shape {
            return Err(shape_err(
                "add_rms_norm",
                format!("{:?} + {:?}", x.shape, residual.shape),
            ));
        }
        self.add_inplace(residual, x)?;
        self.rms_norm(residual, w, eps)
    }

    fn head_rms_norm(
        &self,
        x: &mut CpuTensor,
        w: &CpuTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        if w.len() != head_dim || head_dim == 0 || !x.matrix().1.is_multiple_of(head_dim) {
            return Err(shape_err(
                "head_rms_norm",
                format!("x {:?}, weight {:?}, head_dim {head_dim}", x.shape, w.shape),
            ));
        }
        let (k, w) = (kern(), self.weight_f32s(w));
        let xs = x.f32_mut("head_rms_norm")?;
        let norm = |h: &mut [f32]| {
            let ms = (k.sum_sq)(h) / head_dim as f32;
            let r = 1.0 / (ms + eps).sqrt();
            let mut tmp = [0.0f32; 256];
            if head_dim <= tmp.len() {
                tmp[..head_dim].copy_from_slice(h);
                (k.mul_scale)(&tmp[..head_dim], r, &w, h);
            } else {
                for (v, w) in h.iter_mut().zip(w.iter()) {
                    *v = *v * r * w;
                }
            }
        };
        if xs.len() <= 4096 {
            xs.chunks_mut(head_dim).for_each(norm);
        } else {
            xs.par_chunks_mut(head_dim).for_each(norm);
        }
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor> {
        let (m, k) = x.matrix();
        if w.shape.len() != 2 || w.shape[1] != k {
            return Err(shape_err(
                "linear",
                format!("x {:?} @ w {:?}^T", x.shape, w.shape),
            ));
        }
        let n = w.shape[0];
        let mut out = self.take(m * n);
        match &w.data {
            CpuData::BF16(wb) if self.precision.activations == CpuDType::BF16 => {
                self.matmul_bf16_inputs(x.f32("linear")?, m, k, wb, n, &mut out)
            }
            // Decode-sized batches: memory-bound GEMV that reads each weight once.
            CpuData::BF16(wb) if m <= gemv::MAX_ROWS => {
                gemv::gemv_bf16(x.f32("linear")?, m, k, wb, n, &mut out)
            }
            CpuData::Quant(q) => q.matmul(0, x.f32("linear")?, m, &mut out),
            CpuData::Int8(q) => q.matmul(0, x.f32("linear")?, m, &mut out),
            _ => matmul_t(x.f32("linear")?, m, k, w.weight_rows(), n, &mut out),
        }
        self.tensor(out, x.shape.with_last(n))
    }

    fn rope(&self, x: &mut CpuTensor, step: &CpuStep, head_dim: usize) -> Result<()> {
        let (tokens, width) = x.matrix();
        let half = head_dim / 2;
        if tokens != step.places.len()
            || !head_dim.is_multiple_of(2)
            || !width.is_multiple_of(head_dim)
            || step.cos.len() != tokens * half
        {
            return Err(shape_err(
                "rope",
                format!(
                    "x {:?} with head_dim {head_dim} for {} tokens",
                    x.shape,
                    step.places.len()
                ),
            ));
        }
        let xs = x.f32_mut("rope")?;
        let k = kern();
        let rotate = |(t, row): (usize, &mut [f32])| {
            let cos = &step.cos[t * half..(t + 1) * half];
            let sin = &step.sin[t * half..(t + 1) * half];
            for h in row.chunks_mut(head_dim) {
                let (a, b) = h.split_at_mut(half);
                (k.rope)(a, b, cos, sin);
            }
        };
        if tokens == 1 {
            rotate((0, xs));
        } else {
            xs.par_chunks_mut(width).enumerate().for_each(rotate);
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        if gate.shape != up.shape {
            return Err(shape_err(
                "silu_mul",
                format!("{:?} vs {:?}", gate.shape, up.shape),
            ));
        }
        let (g, u) = (gate.f32("silu_mul")?, up.f32("silu_mul")?);
        let k = kern();
        let mut out = self.take(g.len());
        // Chunks of whole cache lines; a decode row is a single chunk.
        const CHUNK: usize = 4096;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| (k.silu_mul)(g, u, o));
        self.tensor(out, gate.shape)
    }

    fn add_inplace(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        if x.shape != y.shape {
            return Err(shape_err("add", format!("{:?} + {:?}", x.shape, y.shape)));
        }
        let ys = y.f32("add")?;
        (kern().axpy)(1.0, ys, x.f32_mut("add")?);
        Ok(())
    }

    fn select_rows(&self, x: &CpuTensor, rows: &[u32]) -> Result<CpuTensor> {
        let (n, dim) = x.matrix();
        let xs = x.f32("select_rows")?;
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(shape_err("select_rows", format!("row {r} of {n}")));
        }
        let mut out = self.take(rows.len() * dim);
        for (o, &r) in out.chunks_exact_mut(dim.max(1)).zip(rows) {
            let r = r as usize;
            o.copy_from_slice(&xs[r * dim..(r + 1) * dim]);
        }
        self.tensor(out, Dims::matrix(rows.len(), dim))
    }

    fn alloc_kv_cache(&self, s: KvCacheShape) -> Result<CpuKvCache> {
        CpuKvCache::zeroed(s, self.precision.kv_cache)
    }

    fn kv_block_bytes(&self, s: KvCacheShape) -> u64 {
        CpuKvCache::block_bytes(s, self.precision.kv_cache)
    }

    fn write_kv(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        k: &CpuTensor,
        v: &CpuTensor,
        step: &CpuStep,
    ) -> Result<()> {
        let s = cache.shape;
        let row = s.num_kv_heads * s.head_dim;
        if layer >= s.num_layers
            || k.shape != v.shape
            || k.matrix() != (step.slot_mapping.len(), row)
        {
            return Err(shape_err(
                "write_kv",
                format!("layer {layer}, k {:?}, v {:?}, row {row}", k.shape, v.shape),
            ));
        }
        cache.write(
            layer,
            k.f32("write_kv")?,
            v.f32("write_kv")?,
            &step.slot_mapping,
        )
    }

    fn attention(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        step: &CpuStep,
        g: &AttnGeometry,
    ) -> Result<CpuTensor> {
        let s = cache.shape;
        let width = g.num_heads * g.head_dim;
        if layer >= s.num_layers
            || q.matrix() != (step.places.len(), width)
            || g.num_kv_heads != s.num_kv_heads
            || g.head_dim != s.head_dim
            || g.num_kv_heads == 0
            || !g.num_heads.is_multiple_of(g.num_kv_heads)
        {
            return Err(shape_err(
                "attention",
                format!("q {:?}, geometry {g:?}, cache {s:?}", q.shape),
            ));
        }
        if let Some(&b) = step
            .block_tables
            .iter()
            .find(|&&b| b as usize >= s.num_blocks)
        {
            return Err(shape_err(
                "attention",
                format!("block {b} of {}", s.num_blocks),
            ));
        }
        let mut out = self.take(step.places.len() * width);
        let (shape, q) = (q.shape, q.f32("attention")?);
        fn run<E: vector::KvElem>(
            l: &kv_cache::Layers<E>,
            layer: usize,
            block_size: usize,
            step: &CpuStep,
            q: &[f32],
            g: &AttnGeometry,
            out: &mut [f32],
        ) {
            let kv = PagedKv {
                k: &l.k[layer],
                v: &l.v[layer],
                block_size,
                block_tables: &step.block_tables,
                max_blocks_per_seq: step.max_blocks_per_seq,
            };
            attention::paged_attention(q, &step.places, &kv, g, kern(), out)
        }
        match &cache.rows {
            KvRows::F32(l) => run(l, layer, s.block_size, step, q, g, &mut out),
            KvRows::BF16(l) => run(l, layer, s.block_size, step, q, g, &mut out),
        }
        self.tensor(out, shape)
    }

    fn moe(
        &self,
        x: &CpuTensor,
        router_logits: &CpuTensor,
        e: &MoeWeights<CpuTensor>,
    ) -> Result<CpuTensor> {
        let (tokens, hidden) = x.matrix();
        let ne = e.num_experts;
        let inter = e.gate.shape.get(1).copied().unwrap_or(0);
        if router_logits.matrix() != (tokens, ne)
            || *e.gate.shape != [ne, inter, hidden]
            || *e.up.shape != [ne, inter, hidden]
            || *e.down.shape != [ne, hidden, inter]
            || e.top_k == 0
            || e.top_k > ne
        {
            return Err(shape_err(
                "moe",
                format!(
                    "x {:?}, router {:?}, gate {:?}, up {:?}, down {:?}, top_k {}",
                    x.shape, router_logits.shape, e.gate.shape, e.up.shape, e.down.shape, e.top_k
                ),
            ));
        }
        // Routing as transformers' Qwen3Moe: softmax in F32, top-k, optional renormalisation.
        // The lists and buffers are the previous call's, refilled.
        let logits = router_logits.f32("moe")?;
        let xs = x.f32("moe")?;
        let mut sc = self.reuse.moe.take();
        let MoeScratch {
            per_expert,
            probs,
            order,
            xe,
            g,
            u,
            y,
        } = &mut sc;
        per_expert.resize_with(ne, Vec::new);
        per_expert.iter_mut().for_each(Vec::clear);
        for t in 0..tokens {
            let row = &logits[t * ne..(t + 1) * ne];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            probs.clear();
            probs.extend(row.iter().map(|&l| (l - max).exp()));
            let sum: f32 = probs.iter().sum();
            order.clear();
            order.extend(0..ne);
            // Unstable is fine: ties are broken by index, so the order is total.
            order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let chosen = &order[..e.top_k];
            let norm = if e.renormalize {
                chosen.iter().map(|&i| probs[i] / sum).sum::<f32>()
            } else {
                1.0
            };
            for &i in chosen {
                per_expert[i].push((t, probs[i] / sum / norm));
            }
        }
        let mut out = self.take(tokens * hidden);
        for (i, routed) in per_expert.iter().enumerate().take(ne) {
            if routed.is_empty() {
                continue;
            }
            let m = routed.len();
            xe.clear();
            for &(t, _) in routed {
                xe.extend_from_slice(&xs[t * hidden..(t + 1) * hidden]);
            }
            zeros(g, m * inter);
            zeros(u, m * inter);
            self.expert_matmul(&e.gate, i, xe, m, inter, g);
            self.expert_matmul(&e.up, i, xe, m, inter, u);
            for (a, b) in g.iter_mut().zip(u.iter()) {
                *a = silu(*a) * b;
            }
            zeros(y, m * hidden);
            self.expert_matmul(&e.down, i, g, m, hidden, y);
            for (r, &(t, w)) in routed.iter().enumerate() {
                for (o, v) in out[t * hidden..(t + 1) * hidden]
                    .iter_mut()
                    .zip(&y[r * hidden..(r + 1) * hidden])
                {
                    *o += w * v;
                }
            }
        }
        self.reuse.moe.put(sc);
        self.tensor(out, x.shape)
    }

    fn sample(&self, logits: &CpuTensor, rows: &[SampleRow<'_>]) -> Result<Vec<Sampled>> {
        let (n, vocab) = logits.matrix();
        if n != rows.len() {
            return Err(shape_err(
                "sample",
                format!("{n} rows of logits for {} requests", rows.len()),
            ));
        }
        let ls = logits.f32("sample")?;
        // The result is the one allocation: it goes to the engine.
        Ok(ls
            .par_chunks(vocab)
            .zip(rows.par_iter())
            .map(|(l, r)| with_scratch(&SAMPLE_SCRATCH, |s| sample_row(l, r, s)))
            .collect())
    }

    fn prompt_logprobs(
        &self,
        logits: &CpuTensor,
        targets: &[u32],
        top_n: usize,
    ) -> Result<Vec<PromptLogprob>> {
        let (n, vocab) = logits.matrix();
        if n != targets.len() {
            return Err(shape_err(
                "prompt_logprobs",
                format!("{n} rows of logits for {} targets", targets.len()),
            ));
        }
        // Read in place, one row per task: no host copy of the rows.
        let ls = logits.f32("prompt_logprobs")?;
        Ok(ls
            .par_chunks(vocab.max(1))
            .zip(targets.par_iter())
            .map(|(l, &t)| row_prompt_logprob(l, t, top_n))
            .collect())
    }
}
