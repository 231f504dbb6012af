//! The backend op set on Ascend NPUs: ACL runtime for memory and streams, aclnn operators
//! for the maths, HCCL for tensor parallelism.
//!
//! Activations keep the dtype of the weights (BF16 in serving, F32 when weights are
//! loaded as F32); the KV cache is BF16 and attention runs in BF16 (fused infer attention
//! takes no F32), with casts around it for F32 models. Every op is queued on the backend's
//! one stream; the host waits only when it reads results (logits, sampled ids).

pub mod comm;
pub mod desc;
pub mod device_query;
pub mod doctor;
mod graph;
pub mod mem;
pub mod sample;

use std::sync::{Arc, Mutex};

use ascend_sys::types::aclrtMemcpyKind;
use ascend_sys::{AttentionApi, Cann};
use half::bf16;
use qwen3_backend::sampling::{sample_row, SampleRow, Sampled};
use qwen3_backend::{
    AttnGeometry, Backend, BackendError, HostData, KvCacheShape, MoeWeights, Result, RopeSpec,
    StepMeta,
};

use desc::{c_string, launch, Dt, IntArrayDesc, ScalarDesc, TensorDesc, TensorListDesc, View};
pub use mem::PoolStats;
use mem::{dev_err, Buffer, DevPtr, Device};
use sample::{plan_row, sample_candidates, RowPlan};

/// The KV block size vLLM-Ascend uses and fused attention wants for prefill.
pub const DEFAULT_BLOCK_SIZE: usize = 128;
/// Side of the causal mask fused attention takes in `sparse_mode` 3.
const MASK_SIDE: usize = 2048;

/// Calls an aclnn operator through [`launch`]: `$ws` is the first phase, `$run` the second.
macro_rules! aclnn {
    ($dev:expr, $name:literal, $ws:expr, $run:expr; $($arg:expr),* $(,)?) => {{
        let f = $ws;
        launch(
            $dev,
            $name,
            Box::new(move |w, e| {
                // SAFETY: every descriptor argument is alive for this call (owned by the
                // caller's frame) and the function type is the operator's documented one.
                unsafe { f($($arg),*, w, e) }
            }),
            $run,
        )
    }};
}

// After the macro: the quantized matmul launches through it.
mod quant;

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

fn unsupported(what: &str) -> BackendError {
    BackendError::Unsupported(what.to_string())
}

/// A tensor in device memory: contiguous, row-major.
pub struct AscendTensor {
    pub(crate) buf: Buffer,
    shape: Vec<usize>,
    dt: Dt,
    /// Set on weight-only quantized weights: `buf` then holds the packed codes.
    pub(crate) quant: Option<Box<quant::QuantWeight>>,
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

/// One step's device-side metadata, uploaded once and shared by every layer.
pub struct AscendStep {
    num_tokens: usize,
    token_ids: Vec<u32>,
    slots_i32: AscendTensor,
    slots_i64: AscendTensor,
    block_table: AscendTensor,
    /// Cumulative query ends per sequence (FIA's `actualSeqLengths` in TND).
    cu_q: Vec<i64>,
    /// Context length per sequence (FIA's `actualSeqLengthsKv`).
    kv_lens: Vec<i64>,
    block_size: usize,
    /// F32 `[tokens, head_dim]`: cos, sin, and sin with its first half negated (rotate-half
    /// folded in, for the decomposed RoPE).
    cos: AscendTensor,
    sin: AscendTensor,
    sin_signed: AscendTensor,
    /// The tables cast to the activations' dtype, made on first use.
    cast: Mutex<Option<[AscendTensor; 3]>>,
    /// Positions of the step's tokens and the block tables, for the eager attention path.
    positions: Vec<u32>,
    block_tables: Vec<u32>,
    max_blocks: usize,
    /// Per sequence, for the eager attention path (made on first use): the cache slots of
    /// its context `[ctx]` and its additive causal (and sliding-window) mask `[len, ctx]`.
    #[allow(clippy::type_complexity)]
    eager: Mutex<Option<(Option<usize>, Vec<(AscendTensor, AscendTensor)>)>>,
}

/// Per layer, K and V caches `[num_blocks, block_size, kv_heads, head_dim]` in BF16.
pub struct AscendKvCache {
    shape: KvCacheShape,
    k: Vec<AscendTensor>,
    v: Vec<AscendTensor>,
}

impl AscendKvCache {
    pub fn shape(&self) -> KvCacheShape {
        self.shape
    }
}

struct RopeTable {
    spec: RopeSpec,
    rows: usize,
    head_dim: usize,
    cos: AscendTensor,
    sin: AscendTensor,
    sin_signed: AscendTensor,
}

/// Backend options.
#[derive(Clone, Debug)]
pub struct AscendOptions {
    /// Use `aclnnRotaryPositionEmbedding` when exported (else RoPE is decomposed into
    /// copies, multiplies and an add).
    pub fused_rope: bool,
    /// Use `aclnnScatterPaKvCache` when exported (else `aclnnScatterNdUpdate`).
    pub scatter_pa_kv_cache: bool,
    /// Element type of the KV cache. BF16 (the default) runs attention through fused infer
    /// attention; F32, for F32 models where precision matters more than speed, keeps K/V
    /// exact and runs attention as matmul + softmax per sequence (FIA takes no F32).
    pub kv_cache_f32: bool,
    /// Capture pure-decode steps of these token counts as graphs (segments between
    /// attention calls) and replay them; other steps run eagerly. Needs the aclmdlRI
    /// capture API; not used with tensor parallelism.
    pub graph_capture: bool,
    pub capture_batch_sizes: Vec<usize>,
    /// Forces one fused-attention version (when exported) instead of the newest.
    pub attention_api: Option<AttentionApi>,
}

impl Default for AscendOptions {
    fn default() -> Self {
        Self {
            fused_rope: true,
            scatter_pa_kv_cache: true,
            kv_cache_f32: false,
            graph_capture: false,
            capture_batch_sizes: vec![1, 2, 4, 8, 16, 32, 64],
            attention_api: None,
        }
    }
}

/// The Ascend backend on one device (one rank).
pub struct AscendBackend {
    dev: Arc<Device>,
    pub(crate) opts: AscendOptions,
    attention_api: Option<AttentionApi>,
    pub(crate) rope: Mutex<Option<RopeTable>>,
    pub(crate) mask: Mutex<Option<AscendTensor>>,
    /// Captured decode steps by token count.
    /// Keyed by (token count as run, real sequences): the lm_head runs on the real rows only.
    pub(crate) graphs: Mutex<std::collections::HashMap<(usize, usize), Arc<mem::CapturedStep>>>,
    /// Token count of the step being captured.
    pub(crate) capturing: Mutex<Option<(usize, usize)>>,
    /// Set by the HCCL communicator: collectives are not captured.
    pub(crate) graphs_disabled: std::sync::atomic::AtomicBool,
    /// Decode steps run by replaying a captured graph.
    pub(crate) replays: std::sync::atomic::AtomicU64,
}

impl AscendBackend {
    /// Opens `device` and binds its context to the calling thread.
    pub fn open(cann: Arc<Cann>, device: i32) -> Result<Self> {
        Self::with_options(cann, device, AscendOptions::default())
    }

    pub fn with_options(cann: Arc<Cann>, device: i32, opts: AscendOptions) -> Result<Self> {
        // FIA V4 gained `learnableSink` after the 8.3.RC1 alpha builds: there, the V4
        // symbol has another signature, so V3 is used.
        let pre_release_v4 = cann
            .cann_version()
            .is_some_and(|v| v.to_ascii_lowercase().contains("alpha"));
        let exported = cann.ops.attention_apis();
        let attention_api = match opts.attention_api {
            Some(forced) if forced != AttentionApi::IfaV4PfaV3 => {
                exported.into_iter().find(|a| *a == forced)
            }
            _ => exported.into_iter().find(|a| {
                *a != AttentionApi::IfaV4PfaV3 && !(pre_release_v4 && *a == AttentionApi::FiaV4)
            }),
        };
        let dev = Device::open(cann, device)?;
        Ok(Self {
            dev,
            opts,
            attention_api,
            rope: Mutex::new(None),
            mask: Mutex::new(None),
            graphs: Mutex::new(std::collections::HashMap::new()),
            capturing: Mutex::new(None),
            graphs_disabled: std::sync::atomic::AtomicBool::new(false),
            replays: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn cann(&self) -> &Arc<Cann> {
        &self.dev.cann
    }

    pub fn device_id(&self) -> i32 {
        self.dev.id
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.dev.stats()
    }

    /// Returns the pool's cached buffers to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.dev.empty_cache()
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// The attention operator in use (the newest fused-infer-attention version exported).
    pub fn attention_api(&self) -> Option<AttentionApi> {
        self.attention_api
    }

    pub(crate) fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    fn cann_ref(&self) -> &Cann {
        &self.dev.cann
    }

    pub(crate) fn empty(&self, dt: Dt, shape: &[usize]) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        Ok(AscendTensor {
            buf: self.dev.alloc(n * dt.size())?,
            shape: shape.to_vec(),
            dt,
            quant: None,
        })
    }

    fn upload_bytes(&self, bytes: Vec<u8>, dt: Dt, shape: &[usize]) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        let t = AscendTensor {
            buf: self.dev.alloc_input(n * dt.size())?,
            shape: shape.to_vec(),
            dt,
            quant: None,
        };
        self.dev.upload_async(&t.buf, bytes.into_boxed_slice())?;
        Ok(t)
    }

    fn upload_i64(&self, v: &[i64], shape: &[usize]) -> Result<AscendTensor> {
        self.upload_bytes(
            v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Dt::I64,
            shape,
        )
    }

    fn upload_i32(&self, v: &[i32], shape: &[usize]) -> Result<AscendTensor> {
        self.upload_bytes(
            v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Dt::I32,
            shape,
        )
    }

    fn upload_f32(&self, v: &[f32], shape: &[usize]) -> Result<AscendTensor> {
        self.upload_bytes(
            v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Dt::F32,
            shape,
        )
    }

    /// Values of `v` (as `dt`, BF16 or F32) in a new tensor.
    fn upload_float(&self, v: &[f32], dt: Dt, shape: &[usize]) -> Result<AscendTensor> {
        match dt {
            Dt::BF16 => self.upload_bytes(
                v.iter()
                    .flat_map(|&x| bf16::from_f32(x).to_bits().to_ne_bytes())
                    .collect(),
                Dt::BF16,
                shape,
            ),
            _ => self.upload_f32(v, shape),
        }
    }

    fn td(&self, v: &View) -> Result<TensorDesc<'_>> {
        TensorDesc::new(self.cann_ref(), v)
    }

    /// `x` converted to `dt` (a new tensor; `None` when already `dt`).
    fn cast(&self, x: &AscendTensor, dt: Dt) -> Result<Option<AscendTensor>> {
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

    fn mul(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (x, y, o) = (self.td(a)?, self.td(b)?, self.td(out)?);
        aclnn!(&self.dev, "aclnnMul", c.ops.aclnnMulGetWorkspaceSize, c.ops.aclnnMul;
            x.raw, y.raw, o.raw)
    }

    fn add(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (x, y, o) = (self.td(a)?, self.td(b)?, self.td(out)?);
        let one = ScalarDesc::f32(c, 1.0)?;
        aclnn!(&self.dev, "aclnnAdd", c.ops.aclnnAddGetWorkspaceSize, c.ops.aclnnAdd;
            x.raw, y.raw, one.raw, o.raw)
    }

    fn index_select(&self, x: &View, idx: &AscendTensor, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (a, i, o) = (self.td(x)?, self.td(&idx.view())?, self.td(out)?);
        aclnn!(&self.dev, "aclnnIndexSelect", c.ops.aclnnIndexSelectGetWorkspaceSize,
            c.ops.aclnnIndexSelect; a.raw, 0i64, i.raw, o.raw)
    }

    /// RMSNorm of the rows of `x` (seen as `[rows, dim]`) into a new tensor of `shape`.
    fn rms_norm_rows(
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

    /// cos, sin, signed sin `[rows, head_dim]` for positions `0..rows`, computed on the host
    /// as the CPU path and transformers do (angle in F32).
    fn rope_host_tables(spec: &RopeSpec, rows: usize) -> [Vec<f32>; 3] {
        let half = spec.inv_freq.len();
        let d = 2 * half;
        let mut cos = vec![0.0f32; rows * d];
        let mut sin = vec![0.0f32; rows * d];
        let mut sgn = vec![0.0f32; rows * d];
        for p in 0..rows {
            for (i, &f) in spec.inv_freq.iter().enumerate() {
                let a = p as f32 * f;
                let (c, s) = (a.cos() * spec.mscale, a.sin() * spec.mscale);
                cos[p * d + i] = c;
                cos[p * d + half + i] = c;
                sin[p * d + i] = s;
                sin[p * d + half + i] = s;
                sgn[p * d + i] = -s;
                sgn[p * d + half + i] = s;
            }
        }
        [cos, sin, sgn]
    }

    /// Gathers this step's cos/sin rows from the start-up table (rebuilt, larger, when a
    /// position exceeds it or the RoPE parameters change).
    fn gather_rope(
        &self,
        spec: &RopeSpec,
        positions: &[u32],
    ) -> Result<(AscendTensor, AscendTensor, AscendTensor)> {
        let d = 2 * spec.inv_freq.len();
        let n = positions.len();
        self.refresh_rope(spec, positions)?;
        let g = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        let table = g
            .as_ref()
            .ok_or_else(|| BackendError::Device("rope table missing".into()))?;
        let pos: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let idx = self.upload_i64(&pos, &[n])?;
        let out = |t: &AscendTensor| -> Result<AscendTensor> {
            let o = self.empty(Dt::F32, &[n, d])?;
            if n > 0 {
                self.index_select(&t.view(), &idx, &o.view())?;
            }
            Ok(o)
        };
        Ok((out(&table.cos)?, out(&table.sin)?, out(&table.sin_signed)?))
    }

    /// Builds the cos/sin table (larger) when a position exceeds it or the RoPE parameters
    /// changed; returns whether it did (captured graphs read the old one then).
    pub(crate) fn refresh_rope(&self, spec: &RopeSpec, positions: &[u32]) -> Result<bool> {
        let d = 2 * spec.inv_freq.len();
        let need = positions
            .iter()
            .copied()
            .max()
            .map_or(0, |p| p as usize + 1);
        let mut g = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        let stale = match g.as_ref() {
            Some(t) => t.spec != *spec || t.rows < need || t.head_dim != d,
            None => true,
        };
        if stale {
            let rows = need.max(4096).next_power_of_two();
            let [c, s, sg] = Self::rope_host_tables(spec, rows);
            *g = Some(RopeTable {
                spec: spec.clone(),
                rows,
                head_dim: d,
                cos: self.upload_f32(&c, &[rows, d])?,
                sin: self.upload_f32(&s, &[rows, d])?,
                sin_signed: self.upload_f32(&sg, &[rows, d])?,
            });
        }
        Ok(stale)
    }

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

    fn write_one(
        &self,
        cache: &AscendTensor,
        x: &AscendTensor,
        step: &AscendStep,
        s: &KvCacheShape,
    ) -> Result<()> {
        let c = self.cann_ref();
        let t = step.num_tokens;
        let row = s.num_kv_heads * s.head_dim;
        let cast = self.cast(x, cache.dt)?;
        let x = cast.as_ref().unwrap_or(x);
        let (ws, run) = match (
            c.ops.aclnnScatterNdUpdateGetWorkspaceSize,
            c.ops.aclnnScatterNdUpdate,
        ) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(unsupported(
                    "KV cache writes (neither aclnnScatterPaKvCache nor aclnnScatterNdUpdate is exported)",
                ))
            }
        };
        let var = self.td(&cache.view().reshape(&[s.num_blocks * s.block_size, row])?)?;
        let idx = self.td(&step.slots_i64.view())?;
        let upd = self.td(&x.view().reshape(&[t, row])?)?;
        aclnn!(&self.dev, "aclnnScatterNdUpdate", ws, run; var.raw, idx.raw, upd.raw)
    }

    fn fia(
        &self,
        q: &AscendTensor,
        k: &AscendTensor,
        v: &AscendTensor,
        step: &AscendStep,
        g: &AttnGeometry,
        s: &KvCacheShape,
    ) -> Result<AscendTensor> {
        let api = self.attention_api.ok_or_else(|| {
            unsupported("attention: no aclnnFusedInferAttentionScore V2/V3/V4 is exported")
        })?;
        let c = self.cann_ref();
        let t = step.num_tokens;
        let out = self.empty(Dt::BF16, &[t, g.num_heads * g.head_dim])?;
        let qd = self.td(&q.view().reshape(&[t, g.num_heads, g.head_dim])?)?;
        let cache_shape = [s.num_blocks, s.block_size, s.num_kv_heads * s.head_dim];
        let kl = TensorListDesc::new(c, vec![self.td(&k.view().reshape(&cache_shape)?)?])?;
        let vl = TensorListDesc::new(c, vec![self.td(&v.view().reshape(&cache_shape)?)?])?;
        let mask_guard = self.causal_mask()?;
        let mask = mask_guard
            .as_ref()
            .ok_or_else(|| BackendError::Device("mask missing".into()))?;
        let md = self.td(&mask.view())?;
        let aq = IntArrayDesc::new(c, &step.cu_q)?;
        let akv = IntArrayDesc::new(c, &step.kv_lens)?;
        let bt = self.td(&step.block_table.view())?;
        let od = self.td(&out.view().reshape(&[t, g.num_heads, g.head_dim])?)?;
        let layout = c_string("TND");
        let lp = layout.as_ptr() as *mut std::ffi::c_char;
        let nul = std::ptr::null();
        let nula = std::ptr::null();
        let (nh, nkv, scale) = (g.num_heads as i64, g.num_kv_heads as i64, g.scale as f64);
        let bs = s.block_size as i64;
        // sparse_mode 3 (right-down causal) ignores pre/next tokens; these are the defaults.
        let (pre, next) = (i64::from(i32::MAX), i64::from(i32::MAX));
        let (sparse, inner) = (3i64, 1i64);
        match api {
            AttentionApi::FiaV4 => {
                let ops = &c.ops;
                let (Some(ws), Some(run)) = (
                    ops.aclnnFusedInferAttentionScoreV4GetWorkspaceSize,
                    ops.aclnnFusedInferAttentionScoreV4,
                ) else {
                    return Err(unsupported("FIA V4"));
                };
                aclnn!(&self.dev, "aclnnFusedInferAttentionScoreV4", ws, run;
                    qd.raw, kl.raw, vl.raw, nul, md.raw, aq.raw, akv.raw,
                    nul, nul, nul, nul, nul, nul, nul, bt.raw, nul, nul, nul, nul, nul, nul,
                    nul, nul, nula, nul, nul, nul, nul, nul,
                    nh, scale, pre, next, lp, nkv, sparse, inner, bs, 0i64, false, 0i64, 0i64,
                    0i64, od.raw, nul)?;
            }
            AttentionApi::FiaV3 => {
                let ops = &c.ops;
                let (Some(ws), Some(run)) = (
                    ops.aclnnFusedInferAttentionScoreV3GetWorkspaceSize,
                    ops.aclnnFusedInferAttentionScoreV3,
                ) else {
                    return Err(unsupported("FIA V3"));
                };
                aclnn!(&self.dev, "aclnnFusedInferAttentionScoreV3", ws, run;
                    qd.raw, kl.raw, vl.raw, nul, md.raw, aq.raw, akv.raw,
                    nul, nul, nul, nul, nul, nul, nul, bt.raw, nul, nul, nul, nul, nul, nul,
                    nul, nul, nula, nul, nul, nul,
                    nh, scale, pre, next, lp, nkv, sparse, inner, bs, 0i64, false, 0i64, 0i64,
                    od.raw, nul)?;
            }
            AttentionApi::FiaV2 | AttentionApi::IfaV4PfaV3 => {
                let ops = &c.ops;
                let (Some(ws), Some(run)) = (
                    ops.aclnnFusedInferAttentionScoreV2GetWorkspaceSize,
                    ops.aclnnFusedInferAttentionScoreV2,
                ) else {
                    return Err(unsupported("FIA V2"));
                };
                aclnn!(&self.dev, "aclnnFusedInferAttentionScoreV2", ws, run;
                    qd.raw, kl.raw, vl.raw, nul, md.raw, aq.raw, akv.raw,
                    nul, nul, nul, nul, nul, nul, nul, bt.raw, nul, nul, nul, nul, nul, nul,
                    nul, nul, nula,
                    nh, scale, pre, next, lp, nkv, sparse, inner, bs, 0i64, false, 0i64, 0i64,
                    od.raw, nul)?;
            }
        }
        Ok(out)
    }
}

impl Backend for AscendBackend {
    type Tensor = AscendTensor;
    type Step = AscendStep;
    type KvCache = AscendKvCache;

    fn name(&self) -> String {
        format!("ascend:{}", self.dev.id)
    }

    fn memory_info(&self) -> Result<(u64, u64)> {
        self.dev.mem_info()
    }

    fn upload(&self, data: HostData<'_>, shape: &[usize]) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(shape_err(
                "upload",
                format!("{} elements for shape {shape:?}", data.len()),
            ));
        }
        let (dt, bytes): (Dt, &[u8]) = match data {
            HostData::F32(v) => (Dt::F32, bytemuck::cast_slice(v)),
            HostData::BF16(v) => (Dt::BF16, bytemuck::cast_slice(v)),
        };
        // Weights live for the model's lifetime: exact-size driver allocations.
        let buf = self.dev.alloc_direct(bytes.len())?;
        self.dev.upload_blocking(&buf, bytes)?;
        Ok(AscendTensor {
            buf,
            shape: shape.to_vec(),
            dt,
            quant: None,
        })
    }

    fn shape<'t>(&self, t: &'t AscendTensor) -> &'t [usize] {
        &t.shape
    }

    fn to_host_f32(&self, t: &AscendTensor) -> Result<Vec<f32>> {
        self.finish_graph_step()?;
        match t.dt {
            Dt::F32 => {
                let mut bytes = vec![0u8; t.numel() * 4];
                self.dev.download(t.buf.ptr, t.buf.bytes, &mut bytes)?;
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
            Dt::BF16 => {
                let f = self
                    .cast(t, Dt::F32)?
                    .ok_or_else(|| BackendError::Device("cast".into()))?;
                self.to_host_f32(&f)
            }
            other => Err(unsupported(&format!("to_host_f32 of {other:?}"))),
        }
    }

    fn size_bytes(&self, t: &AscendTensor) -> u64 {
        match &t.quant {
            Some(q) => t.buf.bytes as u64 + q.param_bytes(),
            None => (t.numel() * t.dt.size()) as u64,
        }
    }

    fn upload_quantized(&self, w: &qwen3_backend::QuantizedHost<'_>) -> Result<AscendTensor> {
        self.upload_quantized_weight(w)
    }

    fn prepare_step(&self, m: &StepMeta<'_>) -> Result<AscendStep> {
        // A decode batch smaller than a captured size runs as that size, padded.
        let real_tokens = m.token_ids.len();
        let padded = self.graph_padding(m);
        let padded_meta = padded.as_ref().map(|p| p.meta(m));
        let m = padded_meta.as_ref().unwrap_or(m);
        let n = m.token_ids.len();
        let seqs = m.query_len.len();
        if m.positions.len() != n
            || m.slot_mapping.len() != n
            || m.query_start.len() != seqs
            || m.context_len.len() != seqs
            || m.block_tables.len() != seqs * m.max_blocks_per_seq
            || m.block_size == 0
        {
            return Err(shape_err(
                "prepare_step",
                format!(
                    "{n} tokens, {} positions, {} slots, {seqs} sequences, {} block table entries",
                    m.positions.len(),
                    m.slot_mapping.len(),
                    m.block_tables.len()
                ),
            ));
        }
        let mut cu_q = Vec::with_capacity(seqs);
        let mut kv_lens = Vec::with_capacity(seqs);
        let mut acc = 0u32;
        for s in 0..seqs {
            let (start, len, ctx) = (m.query_start[s], m.query_len[s], m.context_len[s]);
            // TND packs each sequence's tokens contiguously, in sequence order.
            if start != acc || len == 0 || len > ctx {
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
            acc += len;
            cu_q.push(acc as i64);
            kv_lens.push(ctx as i64);
        }
        if acc as usize != n {
            return Err(shape_err(
                "prepare_step",
                "query lengths do not cover the tokens".into(),
            ));
        }
        let slots32: Vec<i32> = m.slot_mapping.iter().map(|&s| s as i32).collect();
        let slots64: Vec<i64> = m.slot_mapping.iter().map(|&s| s as i64).collect();
        let bt: Vec<i32> = m.block_tables.iter().map(|&b| b as i32).collect();
        self.enter_graph_mode(m, real_tokens)?;
        let (cos, sin, sin_signed) = self.gather_rope(m.rope, m.positions)?;
        Ok(AscendStep {
            num_tokens: n,
            token_ids: m.token_ids.to_vec(),
            slots_i32: self.upload_i32(&slots32, &[n])?,
            slots_i64: self.upload_i64(&slots64, &[n, 1])?,
            block_table: self.upload_i32(&bt, &[seqs, m.max_blocks_per_seq])?,
            cu_q,
            kv_lens,
            block_size: m.block_size,
            cos,
            sin,
            sin_signed,
            cast: Mutex::new(None),
            positions: m.positions.to_vec(),
            block_tables: m.block_tables.to_vec(),
            max_blocks: m.max_blocks_per_seq,
            eager: Mutex::new(None),
        })
    }

    fn embedding(
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

    fn rms_norm(&self, x: &AscendTensor, w: &AscendTensor, eps: f32) -> Result<AscendTensor> {
        let (rows, dim) = x.matrix();
        self.rms_norm_rows(&x.view(), w, eps, rows, dim, &x.shape)
    }

    fn add_rms_norm(
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

    fn head_rms_norm(
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

    fn linear(&self, x: &AscendTensor, w: &AscendTensor) -> Result<AscendTensor> {
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

    fn rope(&self, x: &mut AscendTensor, step: &AscendStep, head_dim: usize) -> Result<()> {
        let (t, width) = x.matrix();
        if t != step.num_tokens
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
            || !width.is_multiple_of(head_dim)
            || step.cos.shape != [t, head_dim]
        {
            return Err(shape_err(
                "rope",
                format!(
                    "x {:?} with head_dim {head_dim} for {} tokens",
                    x.shape, step.num_tokens
                ),
            ));
        }
        if t == 0 {
            return Ok(());
        }
        let heads = width / head_dim;
        let mut cast = step.cast.lock().unwrap_or_else(|p| p.into_inner());
        let (cos, sin, sgn) = if x.dt == Dt::F32 {
            (&step.cos, &step.sin, &step.sin_signed)
        } else {
            if cast.as_ref().is_none_or(|c| c[0].dt != x.dt) {
                let one = |a: &AscendTensor| -> Result<AscendTensor> {
                    self.cast(a, x.dt)?
                        .ok_or_else(|| BackendError::Device("cast".into()))
                };
                *cast = Some([one(&step.cos)?, one(&step.sin)?, one(&step.sin_signed)?]);
            }
            let c = cast
                .as_ref()
                .ok_or_else(|| BackendError::Device("rope tables".into()))?;
            (&c[0], &c[1], &c[2])
        };
        let out = self.empty(x.dt, &x.shape)?;
        let c = self.cann_ref();
        let fused = if self.opts.fused_rope {
            c.ops
                .aclnnRotaryPositionEmbeddingGetWorkspaceSize
                .zip(c.ops.aclnnRotaryPositionEmbedding)
        } else {
            None
        };
        if let Some((ws, run)) = fused {
            // BSND with B = 1: x [1, T, N, D], cos/sin [1, T, 1, D]; mode 0 rotates halves.
            let xd = self.td(&x.view().reshape(&[1, t, heads, head_dim])?)?;
            let cd = self.td(&cos.view().reshape(&[1, t, 1, head_dim])?)?;
            let sd = self.td(&sin.view().reshape(&[1, t, 1, head_dim])?)?;
            let od = self.td(&out.view().reshape(&[1, t, heads, head_dim])?)?;
            aclnn!(&self.dev, "aclnnRotaryPositionEmbedding", ws, run;
                xd.raw, cd.raw, sd.raw, 0i64, od.raw)?;
        } else {
            // out = x * cos + swap_halves(x) * [-sin, sin].
            let half = head_dim / 2;
            let rot = self.empty(x.dt, &x.shape)?;
            let halves = |base: &AscendTensor, off: usize| View {
                shape: vec![t as i64, heads as i64, half as i64],
                strides: vec![width as i64, head_dim as i64, 1],
                offset: off as i64,
                ..base.view()
            };
            self.copy_view(&halves(&rot, 0), &halves(x, half))?;
            self.copy_view(&halves(&rot, half), &halves(x, 0))?;
            let x3 = x.view().reshape(&[t, heads, head_dim])?;
            let tmp = self.empty(x.dt, &x.shape)?;
            let tmp3 = tmp.view().reshape(&[t, heads, head_dim])?;
            let o3 = out.view().reshape(&[t, heads, head_dim])?;
            self.mul(&x3, &cos.view().reshape(&[t, 1, head_dim])?, &o3)?;
            self.mul(
                &rot.view().reshape(&[t, heads, head_dim])?,
                &sgn.view().reshape(&[t, 1, head_dim])?,
                &tmp3,
            )?;
            let sum = self.empty(x.dt, &x.shape)?;
            self.add(&o3, &tmp3, &sum.view().reshape(&[t, heads, head_dim])?)?;
            *x = sum;
            return Ok(());
        }
        *x = out;
        Ok(())
    }

    fn silu_mul(&self, gate: &AscendTensor, up: &AscendTensor) -> Result<AscendTensor> {
        if gate.shape != up.shape || gate.dt != up.dt {
            return Err(shape_err(
                "silu_mul",
                format!("{:?} vs {:?}", gate.shape, up.shape),
            ));
        }
        let (m, i) = gate.matrix();
        let out = self.empty(gate.dt, &gate.shape)?;
        if m == 0 {
            return Ok(out);
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
        let c = self.cann_ref();
        let (a, o) = (
            self.td(&both.view())?,
            self.td(&out.view().reshape(&[m, i])?)?,
        );
        aclnn!(&self.dev, "aclnnSwiGlu", c.ops.aclnnSwiGluGetWorkspaceSize, c.ops.aclnnSwiGlu;
            a.raw, -1i64, o.raw)?;
        Ok(out)
    }

    fn add_inplace(&self, x: &mut AscendTensor, y: &AscendTensor) -> Result<()> {
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

    fn select_rows(&self, x: &AscendTensor, rows: &[u32]) -> Result<AscendTensor> {
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

    fn alloc_kv_cache(&self, s: KvCacheShape) -> Result<AscendKvCache> {
        // Captured steps write into the old cache's addresses.
        self.drop_graphs()?;
        let shape = [s.num_blocks, s.block_size, s.num_kv_heads, s.head_dim];
        let dt = self.kv_dt();
        let bytes = shape.iter().product::<usize>() * dt.size();
        let alloc = || -> Result<AscendTensor> {
            let buf = self.dev.alloc_direct(bytes)?;
            // Zeroed, so that never-written slots hold finite values.
            self.dev.bind()?;
            // SAFETY: `buf` holds `bytes` (at least 1) bytes on this device; queued on the
            // device's stream.
            let rc = unsafe {
                (self.dev.cann.acl.aclrtMemsetAsync)(
                    buf.ptr.0,
                    buf.bytes,
                    0,
                    bytes,
                    self.dev.stream.0,
                )
            };
            self.dev
                .cann
                .check(rc, "aclrtMemsetAsync")
                .map_err(dev_err)?;
            Ok(AscendTensor {
                buf,
                shape: shape.to_vec(),
                dt,
                quant: None,
            })
        };
        let mut k = Vec::with_capacity(s.num_layers);
        let mut v = Vec::with_capacity(s.num_layers);
        for _ in 0..s.num_layers {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(AscendKvCache { shape: s, k, v })
    }

    fn kv_block_bytes(&self, s: KvCacheShape) -> u64 {
        (2 * s.num_layers * s.block_size * s.num_kv_heads * s.head_dim * self.kv_dt().size()) as u64
    }

    fn write_kv(
        &self,
        cache: &mut AscendKvCache,
        layer: usize,
        k: &AscendTensor,
        v: &AscendTensor,
        step: &AscendStep,
    ) -> Result<()> {
        let s = cache.shape;
        let row = s.num_kv_heads * s.head_dim;
        if layer >= s.num_layers
            || k.shape != v.shape
            || k.matrix() != (step.num_tokens, row)
            || step.block_size != s.block_size
        {
            return Err(shape_err(
                "write_kv",
                format!("layer {layer}, k {:?}, v {:?}, row {row}", k.shape, v.shape),
            ));
        }
        if step.num_tokens == 0 {
            return Ok(());
        }
        let c = self.cann_ref();
        let pa = (self.opts.scatter_pa_kv_cache && !self.opts.kv_cache_f32)
            .then_some(())
            .and(
                c.ops
                    .aclnnScatterPaKvCacheGetWorkspaceSize
                    .zip(c.ops.aclnnScatterPaKvCache),
            );
        if let Some((ws, run)) = pa {
            let kc = self.cast(k, Dt::BF16)?;
            let vc = self.cast(v, Dt::BF16)?;
            let (k, v) = (kc.as_ref().unwrap_or(k), vc.as_ref().unwrap_or(v));
            let tok = [step.num_tokens, s.num_kv_heads, s.head_dim];
            let cache_shape = [s.num_blocks, s.block_size, s.num_kv_heads, s.head_dim];
            let kd = self.td(&k.view().reshape(&tok)?)?;
            let vd = self.td(&v.view().reshape(&tok)?)?;
            let kcd = self.td(&cache.k[layer].view().reshape(&cache_shape)?)?;
            let vcd = self.td(&cache.v[layer].view().reshape(&cache_shape)?)?;
            let sd = self.td(&step.slots_i32.view())?;
            let mode = c_string("Norm");
            let mp = mode.as_ptr() as *mut std::ffi::c_char;
            let nul = std::ptr::null();
            aclnn!(&self.dev, "aclnnScatterPaKvCache", ws, run;
                kd.raw, kcd.raw, sd.raw, vd.raw, vcd.raw, nul, nul, nul, mp,
                std::ptr::null_mut(), std::ptr::null(), std::ptr::null())?;
            return Ok(());
        }
        self.write_one(&cache.k[layer], k, step, &s)?;
        self.write_one(&cache.v[layer], v, step, &s)
    }

    fn attention(
        &self,
        q: &AscendTensor,
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        g: &AttnGeometry,
    ) -> Result<AscendTensor> {
        let s = cache.shape;
        let width = g.num_heads * g.head_dim;
        if layer >= s.num_layers
            || q.matrix() != (step.num_tokens, width)
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
        if !self.in_graph_mode() {
            return self.attention_now(q, cache, layer, step, g);
        }
        // The next segment reads attention's output from a buffer of the graph; attention
        // itself runs eagerly with this step's lengths and pool buffers, then lands there.
        let dst = self.empty(q.dt, &q.shape)?;
        self.graph_segment_end()?;
        let out = self
            .attention_now(q, cache, layer, step, g)
            .and_then(|out| self.copy_view(&dst.view(), &out.view()));
        self.graph_segment_begin()?;
        out.map(|()| dst)
    }

    fn moe(
        &self,
        x: &AscendTensor,
        router_logits: &AscendTensor,
        e: &MoeWeights<AscendTensor>,
    ) -> Result<AscendTensor> {
        self.moe_impl(x, router_logits, e)
    }

    fn sample(&self, logits: &AscendTensor, rows: &[SampleRow<'_>]) -> Result<Vec<Sampled>> {
        self.finish_graph_step()?;
        self.sample_impl(logits, rows)
    }
}

impl AscendBackend {
    fn attention_now(
        &self,
        q: &AscendTensor,
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        g: &AttnGeometry,
    ) -> Result<AscendTensor> {
        let s = cache.shape;
        if self.opts.kv_cache_f32 {
            return self.eager_attention(q, &cache.k[layer], &cache.v[layer], step, g, &s);
        }
        if g.sliding_window.is_some() {
            return Err(unsupported(
                "sliding-window attention with a BF16 KV cache (use the F32 cache)",
            ));
        }
        let out_dt = q.dt;
        let qc = self.cast(q, Dt::BF16)?;
        let qb = qc.as_ref().unwrap_or(q);
        let out = self.fia(qb, &cache.k[layer], &cache.v[layer], step, g, &s)?;
        let mut out = match self.cast(&out, out_dt)? {
            Some(o) => o,
            None => out,
        };
        out.shape = q.shape.clone();
        Ok(out)
    }

    fn moe_impl(
        &self,
        x: &AscendTensor,
        router_logits: &AscendTensor,
        e: &MoeWeights<AscendTensor>,
    ) -> Result<AscendTensor> {
        let (t, h) = x.matrix();
        let ne = e.num_experts;
        let inter = e.gate.shape.get(1).copied().unwrap_or(0);
        let k = e.top_k;
        if router_logits.matrix() != (t, ne)
            || e.gate.shape != [ne, inter, h]
            || e.up.shape != [ne, inter, h]
            || e.down.shape != [ne, h, inter]
            || k == 0
            || k > ne
            // Float experts in the activations' dtype, or weight-quantized ones.
            || [&e.gate, &e.up, &e.down]
                .iter()
                .any(|w| w.quant.is_none() && w.dt != x.dt)
        {
            return Err(shape_err(
                "moe",
                format!(
                    "x {:?}, router {:?}, gate {:?}, up {:?}, down {:?}, top_k {k}",
                    x.shape, router_logits.shape, e.gate.shape, e.up.shape, e.down.shape
                ),
            ));
        }
        if t == 0 {
            return self.empty(x.dt, &x.shape);
        }
        let c = self.cann_ref();
        let ops = &c.ops;
        let (Some(init_ws), Some(init_run), Some(_), Some(_), Some(fin_ws), Some(fin_run)) = (
            ops.aclnnMoeInitRoutingV2GetWorkspaceSize,
            ops.aclnnMoeInitRoutingV2,
            ops.aclnnGroupedMatmulV4GetWorkspaceSize,
            ops.aclnnGroupedMatmulV4,
            ops.aclnnMoeFinalizeRoutingV2GetWorkspaceSize,
            ops.aclnnMoeFinalizeRoutingV2,
        ) else {
            return Err(unsupported(
                "MoE: aclnnMoeInitRoutingV2, aclnnGroupedMatmulV4 and aclnnMoeFinalizeRoutingV2 are needed",
            ));
        };
        // Routing as transformers' Qwen3Moe, in F32: softmax, top-k, optional renormalisation.
        // Renormalised top-k softmax weights are the softmax of the top-k logits.
        let rl_cast = self.cast(router_logits, Dt::F32)?;
        let rl = rl_cast.as_ref().unwrap_or(router_logits);
        let rl2 = rl.view().reshape(&[t, ne])?;
        let weights = self.empty(Dt::F32, &[t, k])?;
        let idx = self.empty(Dt::I64, &[t, k])?;
        let topk = |src: &View, vals: &View| -> Result<()> {
            let (a, v, i) = (self.td(src)?, self.td(vals)?, self.td(&idx.view())?);
            aclnn!(&self.dev, "aclnnTopk", ops.aclnnTopkGetWorkspaceSize, ops.aclnnTopk;
                a.raw, k as i64, 1i64, true, true, v.raw, i.raw)
        };
        let softmax = |src: &View, out: &View| -> Result<()> {
            let (a, o) = (self.td(src)?, self.td(out)?);
            aclnn!(&self.dev, "aclnnSoftmax", ops.aclnnSoftmaxGetWorkspaceSize, ops.aclnnSoftmax;
                a.raw, 1i64, o.raw)
        };
        if e.renormalize {
            let top = self.empty(Dt::F32, &[t, k])?;
            topk(&rl2, &top.view())?;
            softmax(&top.view(), &weights.view())?;
        } else {
            let probs = self.empty(Dt::F32, &[t, ne])?;
            softmax(&rl2, &probs.view())?;
            topk(&probs.view(), &weights.view())?;
        }
        let idx32 = self
            .cast(&idx, Dt::I32)?
            .ok_or_else(|| BackendError::Device("cast".into()))?;
        let scales_cast = self.cast(&weights, x.dt)?;
        let scales = scales_cast.as_ref().unwrap_or(&weights);

        // Tokens sorted by expert: expanded rows, their mapping, and per-expert cumulative counts.
        let rows = t * k;
        let expanded = self.empty(x.dt, &[rows, h])?;
        let row_idx = self.empty(Dt::I32, &[rows])?;
        let cumsum = self.empty(Dt::I32, &[ne])?;
        {
            let (xd, id) = (
                self.td(&x.view().reshape(&[t, h])?)?,
                self.td(&idx32.view())?,
            );
            let (ed, rd, cd) = (
                self.td(&expanded.view())?,
                self.td(&row_idx.view())?,
                self.td(&cumsum.view())?,
            );
            // activeNum 0 and dropPadMode 0: dropless; flag 1: cumulative counts.
            aclnn!(&self.dev, "aclnnMoeInitRoutingV2", init_ws, init_run;
                xd.raw, id.raw, 0i64, 0i64, ne as i64, 0i64, 1i64, false,
                ed.raw, rd.raw, cd.raw, std::ptr::null())?;
        }
        let group_list = self
            .cast(&cumsum, Dt::I64)?
            .ok_or_else(|| BackendError::Device("cast".into()))?;
        // One grouped matmul per projection: x [rows, kin] by expert weights seen as
        // [E, kin, n] (transposed views of the stored [E, n, kin]).
        let gmm = |input: &AscendTensor,
                   w: &AscendTensor,
                   kin: usize,
                   n: usize|
         -> Result<AscendTensor> {
            if let Some(q) = &w.quant {
                return self.quant_grouped_matmul(input, w, q, &group_list);
            }
            let out = self.empty(x.dt, &[rows, n])?;
            let wt = View {
                shape: vec![ne as i64, kin as i64, n as i64],
                strides: vec![(n * kin) as i64, 1, kin as i64],
                ..w.view()
            };
            let xv = input.view().reshape(&[rows, kin])?;
            self.grouped_matmul(&xv, &wt, None, &group_list, &out.view())?;
            Ok(out)
        };
        let g = gmm(&expanded, &e.gate, h, inter)?;
        let u = gmm(&expanded, &e.up, h, inter)?;
        let act = self.silu_mul(&g, &u)?;
        let y = gmm(&act, &e.down, inter, h)?;
        let out = self.empty(x.dt, &x.shape)?;
        {
            let (yd, rd) = (self.td(&y.view())?, self.td(&row_idx.view())?);
            let (sd, id) = (self.td(&scales.view())?, self.td(&idx32.view())?);
            let od = self.td(&out.view().reshape(&[t, h])?)?;
            let nl = std::ptr::null();
            // dropPadMode 2: dropless, row indices as MoeInitRoutingV2 lays them out.
            aclnn!(&self.dev, "aclnnMoeFinalizeRoutingV2", fin_ws, fin_run;
                yd.raw, rd.raw, nl, nl, nl, sd.raw, id.raw, 2i64, od.raw)?;
        }
        Ok(out)
    }

    /// `out = x @ w[e]` for the rows of each expert `e`, through `aclnnGroupedMatmulV4` as
    /// every MoE projection calls it: splitItem 3 / groupType 0 (one x, one stacked weight
    /// `[E, K, N]`, one y, grouped along m), groupListType 0 (`group_list` INT64 cumulative
    /// ends), no activation; `antiquant` (scale, offset) for weight-quantized experts.
    pub(crate) fn grouped_matmul(
        &self,
        x: &View,
        w: &View,
        antiquant: Option<(&View, &View)>,
        group_list: &AscendTensor,
        out: &View,
    ) -> Result<()> {
        let c = self.cann_ref();
        let (Some(ws), Some(run)) = (
            c.ops.aclnnGroupedMatmulV4GetWorkspaceSize,
            c.ops.aclnnGroupedMatmulV4,
        ) else {
            return Err(unsupported("MoE: aclnnGroupedMatmulV4 is needed"));
        };
        let list =
            |v: &View| -> Result<TensorListDesc<'_>> { TensorListDesc::new(c, vec![self.td(v)?]) };
        let (xl, wl, yl) = (list(x)?, list(w)?, list(out)?);
        let (sl, ol) = match antiquant {
            Some((s, o)) => (Some(list(s)?), Some(list(o)?)),
            None => (None, None),
        };
        let nl = std::ptr::null();
        let nm = std::ptr::null_mut();
        let raw = |l: &Option<TensorListDesc<'_>>| l.as_ref().map_or(nl, |l| l.raw.cast_const());
        let (sr, or) = (raw(&sl), raw(&ol));
        let gl = self.td(&group_list.view())?;
        aclnn!(&self.dev, "aclnnGroupedMatmulV4", ws, run;
            xl.raw, wl.raw, nl, nl, nl, sr, or, nl, gl.raw, nl, nl, nl,
            3i64, 0i64, 0i64, 0i64, yl.raw, nm, nm)
    }

    fn sample_impl(&self, logits: &AscendTensor, rows: &[SampleRow<'_>]) -> Result<Vec<Sampled>> {
        let (n, vocab) = logits.matrix();
        if n != rows.len() {
            return Err(shape_err(
                "sample",
                format!("{n} rows of logits for {} requests", rows.len()),
            ));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let lc = self.cast(logits, Dt::F32)?;
        let l = lc.as_ref().unwrap_or(logits);
        let plans: Vec<RowPlan> = rows.iter().map(|r| plan_row(r, vocab)).collect();
        let c = self.cann_ref();
        let mut argmax: Option<Vec<i64>> = None;
        if plans.contains(&RowPlan::Argmax) {
            let out = self.empty(Dt::I64, &[n])?;
            {
                let (a, o) = (self.td(&l.view())?, self.td(&out.view())?);
                aclnn!(&self.dev, "aclnnArgMax", c.ops.aclnnArgMaxGetWorkspaceSize,
                    c.ops.aclnnArgMax; a.raw, 1i64, false, o.raw)?;
            }
            argmax = Some(self.download_i64(&out)?);
        }
        let k_max = plans
            .iter()
            .filter_map(|p| match p {
                RowPlan::TopK { k, .. } => Some(*k),
                _ => None,
            })
            .max();
        let mut topk: Option<(Vec<f32>, Vec<i64>, usize)> = None;
        if let Some(k) = k_max {
            let vals = self.empty(Dt::F32, &[n, k])?;
            let ids = self.empty(Dt::I64, &[n, k])?;
            {
                let (a, vd, id) = (
                    self.td(&l.view())?,
                    self.td(&vals.view())?,
                    self.td(&ids.view())?,
                );
                aclnn!(&self.dev, "aclnnTopk", c.ops.aclnnTopkGetWorkspaceSize, c.ops.aclnnTopk;
                    a.raw, k as i64, 1i64, true, true, vd.raw, id.raw)?;
            }
            topk = Some((self.to_host_f32(&vals)?, self.download_i64(&ids)?, k));
        }
        let mut out = Vec::with_capacity(n);
        let mut scratch = Vec::new();
        for (r, (row, plan)) in rows.iter().zip(&plans).enumerate() {
            let s = match *plan {
                RowPlan::Argmax => {
                    let id = argmax.as_ref().and_then(|a| a.get(r)).copied().unwrap_or(0);
                    Sampled {
                        token: u32::try_from(id).unwrap_or(0),
                        logprob: None,
                        top_logprobs: Vec::new(),
                    }
                }
                RowPlan::TopK { keep, .. } => {
                    let (v, i, k) = topk
                        .as_ref()
                        .ok_or_else(|| BackendError::Device("top-k missing".into()))?;
                    let (v, i) = (&v[r * k..(r + 1) * k], &i[r * k..(r + 1) * k]);
                    sample_candidates(v, i, keep, row)
                }
                RowPlan::Full => {
                    // Penalties, bias, logprobs or an unbounded top-k: this row's logits
                    // go to the host whole.
                    let mut bytes = vec![0u8; vocab * 4];
                    let off = r * vocab * 4;
                    let p = DevPtr(l.buf.ptr.0.cast::<u8>().wrapping_add(off).cast());
                    self.dev.download(p, l.buf.bytes - off, &mut bytes)?;
                    let row_l: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    sample_row(&row_l, row, &mut scratch)
                }
            };
            out.push(s);
        }
        Ok(out)
    }
}

impl AscendBackend {
    fn kv_dt(&self) -> Dt {
        if self.opts.kv_cache_f32 {
            Dt::F32
        } else {
            Dt::BF16
        }
    }

    fn matmul(&self, a: &View, b: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (x, y, o) = (self.td(a)?, self.td(b)?, self.td(out)?);
        aclnn!(&self.dev, "aclnnMatmul", c.ops.aclnnMatmulGetWorkspaceSize, c.ops.aclnnMatmul;
            x.raw, y.raw, o.raw, 0i8)
    }

    /// Attention as matmul, mask and softmax per sequence over its gathered context, in
    /// F32: the F32-cache path (fused infer attention takes no F32).
    fn eager_attention(
        &self,
        q: &AscendTensor,
        kc: &AscendTensor,
        vc: &AscendTensor,
        step: &AscendStep,
        g: &AttnGeometry,
        s: &KvCacheShape,
    ) -> Result<AscendTensor> {
        let (t, nh, hd, kvh) = (step.num_tokens, g.num_heads, g.head_dim, g.num_kv_heads);
        let grp = nh / kvh;
        let row = kvh * hd;
        let qc = self.cast(q, Dt::F32)?;
        let qf = qc.as_ref().unwrap_or(q);
        let scale = self.upload_f32(&[g.scale], &[1])?;
        let qs = self.empty(Dt::F32, &[t, nh * hd])?;
        self.mul(&qf.view(), &scale.view(), &qs.view())?;
        let out = self.empty(Dt::F32, &[t, nh * hd])?;
        let mut eager = step.eager.lock().unwrap_or_else(|p| p.into_inner());
        if eager.as_ref().is_none_or(|e| e.0 != g.sliding_window) {
            *eager = Some((g.sliding_window, self.eager_tables(step, g.sliding_window)?));
        }
        let tables = &eager
            .as_ref()
            .ok_or_else(|| BackendError::Device("attention tables".into()))?
            .1;
        let cache2 = |c: &AscendTensor| c.view().reshape(&[s.num_blocks * s.block_size, row]);
        // Query heads grouped by their KV head, `[kvh, group, len, hd]`, of the rows of a
        // `[t, nh * hd]` tensor from `start`.
        let grouped = |base: &AscendTensor, start: usize, len: usize| View {
            shape: vec![kvh as i64, grp as i64, len as i64, hd as i64],
            strides: vec![(grp * hd) as i64, hd as i64, (nh * hd) as i64, 1],
            offset: (start * nh * hd) as i64,
            ..base.view()
        };
        let mut start = 0usize;
        for (i, (slots, mask)) in tables.iter().enumerate() {
            let end = step.cu_q[i] as usize;
            let (len, ctx) = (end - start, step.kv_lens[i] as usize);
            let kg = self.empty(Dt::F32, &[ctx, row])?;
            let vg = self.empty(Dt::F32, &[ctx, row])?;
            self.index_select(&cache2(kc)?, slots, &kg.view())?;
            self.index_select(&cache2(vc)?, slots, &vg.view())?;
            let kt = View {
                shape: vec![kvh as i64, 1, hd as i64, ctx as i64],
                strides: vec![hd as i64, hd as i64, 1, row as i64],
                ..kg.view()
            };
            let scores = self.empty(Dt::F32, &[kvh, grp, len, ctx])?;
            self.matmul(&grouped(&qs, start, len), &kt, &scores.view())?;
            let masked = self.empty(Dt::F32, &[kvh, grp, len, ctx])?;
            self.add(&scores.view(), &mask.view(), &masked.view())?;
            let probs = self.empty(Dt::F32, &[kvh, grp, len, ctx])?;
            {
                let c = self.cann_ref();
                let (a, o) = (self.td(&masked.view())?, self.td(&probs.view())?);
                aclnn!(&self.dev, "aclnnSoftmax", c.ops.aclnnSoftmaxGetWorkspaceSize,
                    c.ops.aclnnSoftmax; a.raw, 3i64, o.raw)?;
            }
            let v4 = View {
                shape: vec![kvh as i64, 1, ctx as i64, hd as i64],
                strides: vec![hd as i64, hd as i64, row as i64, 1],
                ..vg.view()
            };
            let o = self.empty(Dt::F32, &[kvh, grp, len, hd])?;
            self.matmul(&probs.view(), &v4, &o.view())?;
            self.copy_view(&grouped(&out, start, len), &o.view())?;
            start = end;
        }
        drop(eager);
        let mut out = match self.cast(&out, q.dt)? {
            Some(o) => o,
            None => out,
        };
        out.shape = q.shape.clone();
        Ok(out)
    }

    /// Per sequence: its context's cache slots and its additive mask (0 where a query may
    /// look, a large negative number where it may not).
    fn eager_tables(
        &self,
        step: &AscendStep,
        window: Option<usize>,
    ) -> Result<Vec<(AscendTensor, AscendTensor)>> {
        let bs = step.block_size;
        let mut out = Vec::with_capacity(step.kv_lens.len());
        let mut start = 0usize;
        for (i, &ctx) in step.kv_lens.iter().enumerate() {
            let ctx = ctx as usize;
            let end = step.cu_q[i] as usize;
            let len = end - start;
            let table = &step.block_tables[i * step.max_blocks..(i + 1) * step.max_blocks];
            let slots: Vec<i64> = (0..ctx)
                .map(|j| (table[j / bs] as usize * bs + j % bs) as i64)
                .collect();
            let mut mask = vec![0.0f32; len * ctx];
            for r in 0..len {
                let pos = step.positions[start + r] as usize;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for (j, m) in mask[r * ctx..(r + 1) * ctx].iter_mut().enumerate() {
                    if j > pos || j < lo {
                        *m = -1e30;
                    }
                }
            }
            out.push((
                self.upload_i64(&slots, &[ctx])?,
                self.upload_f32(&mask, &[len, ctx])?,
            ));
            start = end;
        }
        Ok(out)
    }

    fn download_i64(&self, t: &AscendTensor) -> Result<Vec<i64>> {
        let mut bytes = vec![0u8; t.numel() * 8];
        self.dev.download(t.buf.ptr, t.buf.bytes, &mut bytes)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// Queues a device-to-device copy of a whole tensor into a new one.
    pub fn clone_tensor(&self, t: &AscendTensor) -> Result<AscendTensor> {
        let out = self.empty(t.dt, &t.shape)?;
        let bytes = t.numel() * t.dt.size();
        if bytes > 0 {
            self.dev.bind()?;
            // SAFETY: both buffers hold at least `bytes` bytes on this device.
            let rc = unsafe {
                (self.dev.cann.acl.aclrtMemcpyAsync)(
                    out.buf.ptr.0,
                    out.buf.bytes,
                    t.buf.ptr.0,
                    bytes,
                    aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE,
                    self.dev.stream.0,
                )
            };
            self.dev
                .cann
                .check(rc, "aclrtMemcpyAsync")
                .map_err(dev_err)?;
        }
        Ok(out)
    }
}
