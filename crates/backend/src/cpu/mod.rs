//! The CPU backend: BF16 (or F32) weights kept as loaded, F32 activations and KV cache,
//! work spread over rayon's pool (sized once by `--cpu-threads`). Decode batches (≤ 8 rows)
//! use the SIMD BF16 GEMV, larger ones `gemm`; attention and the element-wise ops use the
//! vector kernels of the SIMD level picked at run time ([`simd::level`]).

pub mod attention;
pub mod bandwidth;
pub mod comm;
pub mod gemv;
pub mod matmul;
pub mod quant;
pub mod simd;
pub mod vector;

use half::bf16;
use rayon::prelude::*;

use crate::sampling::{sample_row, SampleRow, Sampled};
use crate::{
    AttnGeometry, Backend, BackendError, HostData, KvCacheShape, MoeWeights, QuantizedHost, Result,
    StepMeta,
};
use attention::{PagedKv, TokenPlace};
use matmul::{matmul_t, WeightRows};
use vector::{kernels, Kernels};

#[derive(Clone, Debug, PartialEq)]
pub enum CpuData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    /// Weight-only quantized, packed (see [`quant`]).
    Quant(Box<quant::QuantMatrix>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    shape: Vec<usize>,
    data: CpuData,
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
            shape: shape.to_vec(),
            data: CpuData::F32(data),
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

    fn f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match &mut self.data {
            CpuData::F32(v) => Ok(v),
            _ => Err(shape_err(op, "expected an F32 activation".into())),
        }
    }

    fn weight_rows(&self) -> WeightRows<'_> {
        match &self.data {
            CpuData::F32(v) => WeightRows::F32(v),
            CpuData::BF16(v) => WeightRows::BF16(v),
            // Quantized weights are dispatched before any caller asks for rows.
            CpuData::Quant(_) => WeightRows::F32(&[]),
        }
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Matrix `i` of a stacked `[count, rows, cols]` weight.
    fn stacked(&self, i: usize, rows: usize, cols: usize) -> WeightRows<'_> {
        let n = rows * cols;
        match &self.data {
            CpuData::F32(v) => WeightRows::F32(&v[i * n..(i + 1) * n]),
            CpuData::BF16(v) => WeightRows::BF16(&v[i * n..(i + 1) * n]),
            CpuData::Quant(_) => WeightRows::F32(&[]),
        }
    }

    /// `out[m, rows] = x[m, cols] @ W_i^T` for matrix `i` of a stacked `[count, rows, cols]`
    /// weight, dense or quantized.
    fn stacked_matmul(&self, i: usize, x: &[f32], m: usize, rows: usize, out: &mut [f32]) {
        let cols = x.len() / m.max(1);
        match &self.data {
            CpuData::Quant(q) => q.matmul(i, x, m, out),
            _ => matmul_t(x, m, cols, self.stacked(i, rows, cols), rows, out),
        }
    }

    /// `(rows, cols)` of a tensor seen as a matrix over its last dimension.
    fn matrix(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        (self.len() / cols.max(1), cols)
    }
}

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

/// One step's metadata, copied once and shared by every layer.
pub struct CpuStep {
    token_ids: Vec<u32>,
    slot_mapping: Vec<u32>,
    places: Vec<TokenPlace>,
    block_tables: Vec<u32>,
    max_blocks_per_seq: usize,
    /// `[tokens, head_dim / 2]` each, with the rope's mscale folded in.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

pub struct CpuKvCache {
    shape: KvCacheShape,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    pub fn shape(&self) -> KvCacheShape {
        self.shape
    }
}

#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    /// Bytes the KV cache may use, as vLLM's `--cpu-kv-cache-space`; None: size from RAM.
    pub kv_cache_space: Option<u64>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

fn rms_norm_row(k: &Kernels, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = (k.sum_sq)(x) / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    (k.mul_scale)(x, r, w, out);
}

/// A norm weight as F32 (norm weights are a few KiB: widening per call is cheap).
fn weight_f32s(w: &CpuTensor) -> std::borrow::Cow<'_, [f32]> {
    match &w.data {
        CpuData::F32(v) => std::borrow::Cow::Borrowed(v),
        CpuData::BF16(v) => std::borrow::Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        // Norm weights are never quantized; dequantizing keeps the op total anyway.
        CpuData::Quant(q) => std::borrow::Cow::Owned((0..w.len()).map(|i| q.get(i)).collect()),
    }
}

/// The vector kernels of the level in force.
fn kern() -> &'static Kernels {
    kernels(simd::level())
}

/// A zero-filled buffer from the allocator's zeroed pages, so a large KV cache costs no
/// start-up time and no resident memory until used; an allocation failure is an error.
fn zeroed_f32(n: usize) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n)
        .map_err(|e| BackendError::OutOfMemory(format!("KV cache layer of {n} floats: {e}")))?;
    // SAFETY: `layout` has non-zero size; the pointer is checked for null; all-zero bytes are
    // a valid f32 (0.0); the Vec takes ownership with the same layout (capacity n, align of f32).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut f32;
        if p.is_null() {
            return Err(BackendError::OutOfMemory(format!(
                "KV cache layer of {} bytes",
                layout.size()
            )));
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
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
        if shape.iter().product::<usize>() != data.len() {
            return Err(shape_err(
                "upload",
                format!("{} elements for shape {shape:?}", data.len()),
            ));
        }
        let data = match data {
            HostData::F32(d) => CpuData::F32(d.to_vec()),
            HostData::BF16(d) => CpuData::BF16(d.to_vec()),
        };
        Ok(CpuTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    fn upload_quantized(&self, w: &QuantizedHost<'_>) -> Result<CpuTensor> {
        let q = quant::QuantMatrix::from_host(w)?;
        Ok(CpuTensor {
            shape: q.shape(),
            data: CpuData::Quant(Box::new(q)),
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
        })
    }

    fn size_bytes(&self, t: &CpuTensor) -> u64 {
        let elem = match &t.data {
            CpuData::F32(_) => 4,
            CpuData::BF16(_) => 2,
            CpuData::Quant(q) => return q.size_bytes(),
        };
        (t.len() * elem) as u64
    }

    fn prepare_step(&self, m: &StepMeta<'_>) -> Result<CpuStep> {
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
        let mut places = Vec::with_capacity(n);
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
        let mut cos = vec![0.0; n * half];
        let mut sin = vec![0.0; n * half];
        for (t, &p) in m.positions.iter().enumerate() {
            for (i, &f) in m.rope.inv_freq.iter().enumerate() {
                // The angle in F32, as transformers computes it, so positions match bit for bit.
                let a = p as f32 * f;
                cos[t * half + i] = a.cos() * m.rope.mscale;
                sin[t * half + i] = a.sin() * m.rope.mscale;
            }
        }
        Ok(CpuStep {
            token_ids: m.token_ids.to_vec(),
            slot_mapping: m.slot_mapping.to_vec(),
            places,
            block_tables: m.block_tables.to_vec(),
            max_blocks_per_seq: m.max_blocks_per_seq,
            cos,
            sin,
        })
    }

    fn embedding(
        &self,
        table: &CpuTensor,
        step: &CpuStep,
        vocab_start: usize,
    ) -> Result<CpuTensor> {
        let (rows, dim) = table.matrix();
        let mut out = vec![0.0f32; step.token_ids.len() * dim];
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
                    CpuData::Quant(_) => {
                        return Err(shape_err("embedding", "a quantized table".into()))
                    }
                }
            }
        }
        CpuTensor::from_f32(out, &[step.token_ids.len(), dim])
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
        let (k, w) = (kern(), weight_f32s(w));
        let mut out = vec![0.0; rows * dim];
        if rows == 1 {
            // A decode row: too small to be worth a rayon hand-off.
            rms_norm_row(k, xs, &w, eps, &mut out);
        } else {
            out.par_chunks_mut(dim)
                .zip(xs.par_chunks(dim))
                .for_each(|(o, r)| rms_norm_row(k, r, &w, eps, o));
        }
        CpuTensor::from_f32(out, &x.shape)
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
        let xs = x.f32_mut("head_rms_norm")?;
        let (k, w) = (kern(), weight_f32s(w));
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
        let mut out = vec![0.0; m * n];
        match &w.data {
            // Decode-sized batches: memory-bound GEMV that reads each weight once.
            CpuData::BF16(wb) if m <= gemv::MAX_ROWS => {
                gemv::gemv_bf16(x.f32("linear")?, m, k, wb, n, &mut out)
            }
            CpuData::Quant(q) => q.matmul(0, x.f32("linear")?, m, &mut out),
            _ => matmul_t(x.f32("linear")?, m, k, w.weight_rows(), n, &mut out),
        }
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        CpuTensor::from_f32(out, &shape)
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
        let mut out = vec![0.0; g.len()];
        // Chunks of whole cache lines; a decode row is a single chunk.
        const CHUNK: usize = 4096;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| (k.silu_mul)(g, u, o));
        CpuTensor::from_f32(out, &gate.shape)
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
        let mut out = Vec::with_capacity(rows.len() * dim);
        for &r in rows {
            let r = r as usize;
            if r >= n {
                return Err(shape_err("select_rows", format!("row {r} of {n}")));
            }
            out.extend_from_slice(&xs[r * dim..(r + 1) * dim]);
        }
        CpuTensor::from_f32(out, &[rows.len(), dim])
    }

    fn alloc_kv_cache(&self, s: KvCacheShape) -> Result<CpuKvCache> {
        let per_layer = s.num_blocks * s.block_size * s.num_kv_heads * s.head_dim;
        let alloc = || zeroed_f32(per_layer);
        let mut k = Vec::with_capacity(s.num_layers);
        let mut v = Vec::with_capacity(s.num_layers);
        for _ in 0..s.num_layers {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(CpuKvCache { shape: s, k, v })
    }

    fn kv_block_bytes(&self, s: KvCacheShape) -> u64 {
        (2 * s.num_layers * s.block_size * s.num_kv_heads * s.head_dim * 4) as u64
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
        let slots = s.num_blocks * s.block_size;
        if layer >= s.num_layers
            || k.shape != v.shape
            || k.matrix() != (step.slot_mapping.len(), row)
        {
            return Err(shape_err(
                "write_kv",
                format!("layer {layer}, k {:?}, v {:?}, row {row}", k.shape, v.shape),
            ));
        }
        let (ks, vs) = (k.f32("write_kv")?, v.f32("write_kv")?);
        let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
        for (t, &slot) in step.slot_mapping.iter().enumerate() {
            let slot = slot as usize;
            if slot >= slots {
                return Err(shape_err("write_kv", format!("slot {slot} of {slots}")));
            }
            kc[slot * row..(slot + 1) * row].copy_from_slice(&ks[t * row..(t + 1) * row]);
            vc[slot * row..(slot + 1) * row].copy_from_slice(&vs[t * row..(t + 1) * row]);
        }
        Ok(())
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
        let kv = PagedKv {
            k: &cache.k[layer],
            v: &cache.v[layer],
            block_size: s.block_size,
            block_tables: &step.block_tables,
            max_blocks_per_seq: step.max_blocks_per_seq,
        };
        let mut out = vec![0.0; step.places.len() * width];
        attention::paged_attention(q.f32("attention")?, &step.places, &kv, g, kern(), &mut out);
        CpuTensor::from_f32(out, &q.shape)
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
            || e.gate.shape != [ne, inter, hidden]
            || e.up.shape != [ne, inter, hidden]
            || e.down.shape != [ne, hidden, inter]
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
        let logits = router_logits.f32("moe")?;
        let mut per_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for t in 0..tokens {
            let row = &logits[t * ne..(t + 1) * ne];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let probs: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
            let sum: f32 = probs.iter().sum();
            let mut order: Vec<usize> = (0..ne).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
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
        let xs = x.f32("moe")?;
        let mut out = vec![0.0f32; tokens * hidden];
        for (i, routed) in per_expert.iter().enumerate() {
            if routed.is_empty() {
                continue;
            }
            let m = routed.len();
            let mut xe = Vec::with_capacity(m * hidden);
            for &(t, _) in routed {
                xe.extend_from_slice(&xs[t * hidden..(t + 1) * hidden]);
            }
            let mut g = vec![0.0; m * inter];
            let mut u = vec![0.0; m * inter];
            e.gate.stacked_matmul(i, &xe, m, inter, &mut g);
            e.up.stacked_matmul(i, &xe, m, inter, &mut u);
            for (a, b) in g.iter_mut().zip(&u) {
                *a = silu(*a) * b;
            }
            let mut y = vec![0.0; m * hidden];
            e.down.stacked_matmul(i, &g, m, hidden, &mut y);
            for (r, &(t, w)) in routed.iter().enumerate() {
                for (o, v) in out[t * hidden..(t + 1) * hidden]
                    .iter_mut()
                    .zip(&y[r * hidden..(r + 1) * hidden])
                {
                    *o += w * v;
                }
            }
        }
        CpuTensor::from_f32(out, &x.shape)
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
        Ok(ls
            .par_chunks(vocab)
            .zip(rows.par_iter())
            .map_init(Vec::new, |scratch, (l, r)| sample_row(l, r, scratch))
            .collect())
    }
}
