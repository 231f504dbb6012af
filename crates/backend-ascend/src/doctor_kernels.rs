//! `doctor`'s check of qwen3-serve's own AscendC kernels (`kernels/`) at a real layer's shape
//! (Qwen3-8B: 32 query / 8 KV heads, head_dim 128, blocks of 128): each kernel against what
//! it replaces (the aclnn head norms + RoPE + cache scatter, fused infer attention) and the
//! CPU backend, both timed on the device with events, so the first Atlas run says whether
//! the custom kernels are right and whether they are faster.

use std::fmt;

use half::bf16;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::RopeSpec;
use qwen3_backend::{AttnGeometry, Backend, BackendError, HostData, KvCacheShape, Result};
use serde::Serialize;

use crate::device_timer::DeviceTimer;
use crate::doctor::{data, max_err};
use crate::doctor_layers::StepHost;
use crate::{AscendBackend, AscendOptions, AttentionBackend};

/// One custom kernel against its CANN counterpart and the CPU backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelCheck {
    pub kernel: &'static str,
    /// The layer's heads, head_dim and block size.
    pub shape: String,
    /// What it replaces on the default path.
    pub baseline: &'static str,
    pub passed: bool,
    /// Largest absolute difference from the CPU backend, of the kernel and of the baseline.
    pub max_error: f32,
    pub baseline_error: f32,
    pub tolerance: f32,
    /// Device time per call (microseconds, between two events on the stream).
    pub kernel_us: Option<f64>,
    pub baseline_us: Option<f64>,
    /// How the kernel was tiled, where that is the point (KV splits).
    pub detail: Option<String>,
    pub error: Option<String>,
}

impl KernelCheck {
    fn new(kernel: &'static str, baseline: &'static str, tolerance: f32) -> Self {
        Self {
            kernel,
            shape: String::new(),
            baseline,
            passed: false,
            max_error: f32::NAN,
            baseline_error: f32::NAN,
            tolerance,
            kernel_us: None,
            baseline_us: None,
            detail: None,
            error: None,
        }
    }
}

/// Query and KV heads of a layer (Qwen3-8B's: 32 and 8, GQA 4:1).
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
}

pub const QWEN3_8B: Heads = Heads { q: 32, kv: 8 };
const D: usize = 128;
/// The block size `StepHost` lays sequences out in.
const BS: usize = crate::doctor_layers::BLOCK;
const EPS: f32 = 1e-6;
/// Timed calls per measurement (after one untimed warm-up call).
const ITERS: u32 = 5;

/// Per sequence: tokens already in the cache, and tokens this step adds.
type Mix = &'static [(usize, usize)];
/// Four decodes, contexts ending mid-block and on a boundary; the longest splits over KV.
const DECODE: Mix = &[(999, 1), (299, 1), (255, 1), (56, 1)];
/// Decodes within one block each (one ending on its boundary): no split.
const DECODE_SHORT: Mix = &[(127, 1), (56, 1)];
/// A 32-token chunk over a cached 160-token prefix, two decodes (one context a block
/// exactly), a fresh 17-token prompt.
const MIXED: Mix = &[(160, 32), (128, 1), (255, 1), (0, 17)];

/// Sequence `i`'s tokens `from..to` of `mix` as one step, each sequence in blocks of its own
/// after the null block 0; sequences with no such tokens are left out.
fn plan(mix: Mix, part: impl Fn(usize, usize) -> (usize, usize)) -> StepHost {
    let mut first = 1u32;
    let tables: Vec<Vec<u32>> = mix
        .iter()
        .map(|&(c, n)| {
            let nb = (c + n).div_ceil(BS) as u32;
            first += nb;
            (first - nb..first).collect()
        })
        .collect();
    let max_blocks = tables.iter().map(Vec::len).max().unwrap_or(1);
    let seqs: Vec<(usize, usize, &[u32])> = mix
        .iter()
        .zip(&tables)
        .map(|(&(c, n), t)| (part(c, n), t))
        .filter(|((from, to), _)| from != to)
        .map(|((from, to), t)| (to, to - from, t.as_slice()))
        .collect();
    let rope = RopeSpec {
        inv_freq: (0..D / 2)
            .map(|i| 1.0 / 1e6f32.powf(2.0 * i as f32 / D as f32))
            .collect(),
        mscale: 1.0,
    };
    StepHost::new(&seqs, max_blocks, &rope)
}

/// Activations as the model runs them: BF16 on the NPU, F32 of the same values on the CPU.
fn act<B: Backend>(b: &B, bf16_acts: bool, v: &[f32], shape: &[usize]) -> Result<B::Tensor> {
    let r: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    if bf16_acts {
        b.upload(HostData::BF16(&r), shape)
    } else {
        let f: Vec<f32> = r.iter().map(|x| x.to_f32()).collect();
        b.upload(HostData::F32(&f), shape)
    }
}

/// A step of `mix` with the earlier tokens' K/V already in the cache, and its q, k, v.
struct Layer<B: Backend> {
    step: B::Step,
    cache: B::KvCache,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
}

fn geometry(h: Heads) -> AttnGeometry {
    AttnGeometry {
        num_heads: h.q,
        num_kv_heads: h.kv,
        head_dim: D,
        scale: 1.0 / (D as f32).sqrt(),
        sliding_window: None,
    }
}

fn layer<B: Backend>(b: &B, bf16_acts: bool, h: Heads, mix: Mix) -> Result<Layer<B>> {
    let blocks: usize = mix.iter().map(|&(c, n)| (c + n).div_ceil(BS)).sum();
    let mut cache = b.alloc_kv_cache(KvCacheShape {
        num_layers: 1,
        num_blocks: blocks + 1,
        block_size: BS,
        num_kv_heads: h.kv,
        head_dim: D,
    })?;
    let kw = h.kv * D;
    let early = plan(mix, |c, _| (0, c));
    if !early.ids.is_empty() {
        let t = early.ids.len();
        let s = b.prepare_step(&early.meta())?;
        let k = act(b, bf16_acts, &data(t * kw, 31), &[t, kw])?;
        let v = act(b, bf16_acts, &data(t * kw, 32), &[t, kw])?;
        b.write_kv(&mut cache, 0, &k, &v, &s)?;
    }
    let now = plan(mix, |c, n| (c, c + n));
    let t = now.ids.len();
    Ok(Layer {
        step: b.prepare_step(&now.meta())?,
        cache,
        q: act(b, bf16_acts, &data(t * h.q * D, 33), &[t, h.q * D])?,
        k: act(b, bf16_acts, &data(t * kw, 34), &[t, kw])?,
        v: act(b, bf16_acts, &data(t * kw, 35), &[t, kw])?,
    })
}

/// Attention of the step's queries once its K/V are written.
fn attention<B: Backend>(b: &B, bf16_acts: bool, h: Heads, mix: Mix) -> Result<Vec<f32>> {
    let mut l = layer(b, bf16_acts, h, mix)?;
    b.write_kv(&mut l.cache, 0, &l.k, &l.v, &l.step)?;
    b.to_host_f32(&b.attention(&l.q, &l.cache, 0, &l.step, &geometry(h))?)
}

fn norm_weights<B: Backend>(b: &B, bf16_acts: bool) -> Result<(B::Tensor, B::Tensor)> {
    let w = |seed| -> Vec<f32> { data(D, seed).iter().map(|x| 1.0 + 0.5 * x).collect() };
    Ok((
        act(b, bf16_acts, &w(36), &[D])?,
        act(b, bf16_acts, &w(37), &[D])?,
    ))
}

/// q after the norm and rotation, then attention over what was written.
fn norm_rope_cache<B: Backend>(b: &B, bf16_acts: bool, h: Heads) -> Result<Vec<f32>> {
    let mut l = layer(b, bf16_acts, h, MIXED)?;
    let (qw, kw) = norm_weights(b, bf16_acts)?;
    let (mut q, k) = (l.q, l.k);
    b.qk_norm_rope_write_kv(
        &mut q,
        k,
        &l.v,
        (&qw, &kw),
        EPS,
        &mut l.cache,
        0,
        &l.step,
        D,
    )?;
    let mut out = b.to_host_f32(&q)?;
    out.extend(b.to_host_f32(&b.attention(&q, &l.cache, 0, &l.step, &geometry(h))?)?);
    Ok(out)
}

/// Device microseconds per call of `f` (which queues work on `b`'s stream), over `ITERS`
/// calls after a warm-up call.
fn device_us(b: &AscendBackend, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    b.synchronize()?;
    let mut timer = DeviceTimer::new(b);
    timer.start()?;
    for _ in 0..ITERS {
        f()?;
    }
    timer.stop()?;
    let total = timer
        .total_us()?
        .ok_or_else(|| BackendError::Device("no span was timed".into()))?;
    Ok(total / f64::from(ITERS))
}

fn time_attention(b: &AscendBackend, h: Heads, mix: Mix) -> Result<f64> {
    let mut l = layer(b, true, h, mix)?;
    b.write_kv(&mut l.cache, 0, &l.k, &l.v, &l.step)?;
    device_us(b, || {
        b.attention(&l.q, &l.cache, 0, &l.step, &geometry(h))
            .map(drop)
    })
}

fn time_norm_rope_cache(b: &AscendBackend, h: Heads) -> Result<f64> {
    let mut l = layer(b, true, h, MIXED)?;
    let (qw, kw) = norm_weights(b, true)?;
    let t = l.step.num_tokens;
    // Each call consumes its k.
    let mut ks = (0..=ITERS)
        .map(|i| act(b, true, &data(t * h.kv * D, 40 + i), &[t, h.kv * D]))
        .collect::<Result<Vec<_>>>()?;
    let mut q = l.q;
    device_us(b, || {
        let k = ks
            .pop()
            .ok_or_else(|| BackendError::Device("timing ran out of inputs".into()))?;
        b.qk_norm_rope_write_kv(
            &mut q,
            k,
            &l.v,
            (&qw, &kw),
            EPS,
            &mut l.cache,
            0,
            &l.step,
            D,
        )
    })
}

/// [`kernel_checks_at`] Qwen3-8B's layer shape.
pub fn kernel_checks(backend: &AscendBackend) -> Vec<KernelCheck> {
    kernel_checks_at(backend, QWEN3_8B)
}

/// Runs each kernel on a backend of `backend`'s device, against the default path's ops on
/// another and the CPU backend, with `h` heads of head_dim 128 in blocks of 128. Empty when
/// the kernels library did not load or the KV cache is F32 (CANN < 8.3), which they do not
/// read.
pub fn kernel_checks_at(backend: &AscendBackend, h: Heads) -> Vec<KernelCheck> {
    if backend.cann().kernels.is_none() || backend.opts.kv_cache_f32 {
        return Vec::new();
    }
    let open = |attention_backend, fused| {
        let opts = AscendOptions {
            attention_backend,
            fused_qk_norm_rope_cache: fused,
            ..AscendOptions::default()
        };
        AscendBackend::with_options(
            std::sync::Arc::clone(backend.cann()),
            backend.device_id(),
            opts,
        )
    };
    let (custom, base) = match (
        open(AttentionBackend::Custom, true),
        open(AttentionBackend::Fia, false),
    ) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) | (_, Err(e)) => {
            return vec![KernelCheck {
                error: Some(e.to_string()),
                ..KernelCheck::new("custom kernels", "", 0.0)
            }]
        }
    };
    let cpu = CpuBackend::new();
    let mut out = Vec::new();
    // BF16 outputs of values up to a few units (q after norm and rotation): half a BF16 ulp
    // at 4 is 2^-7; attention outputs are averages of values in [-1, 1) (the doctor's
    // attention tolerance).
    out.push(compare(
        "qk_norm_rope_cache",
        "aclnn head RMSNorms + RoPE + ScatterPaKvCache",
        3e-2,
        norm_rope_cache(&cpu, false, h),
        (
            norm_rope_cache(&custom, true, h),
            norm_rope_cache(&base, true, h),
        ),
        (
            time_norm_rope_cache(&custom, h),
            time_norm_rope_cache(&base, h),
        ),
    ));
    let shape = format!(
        "{} q / {} KV heads, head_dim {D}, blocks of {BS}",
        h.q, h.kv
    );
    for (kernel, mix) in [
        ("paged decode attention, split-KV", DECODE),
        ("paged decode attention, one split", DECODE_SHORT),
        ("chunked prefill attention", MIXED),
    ] {
        let decode = mix.iter().all(|&(_, n)| n == 1);
        let detail = decode.then(|| decode_splits(&custom, h, mix));
        out.push(KernelCheck {
            detail,
            shape: shape.clone(),
            ..compare(
                kernel,
                "fused infer attention",
                2e-2,
                attention(&cpu, false, h, mix),
                (
                    attention(&custom, true, h, mix),
                    attention(&base, true, h, mix),
                ),
                (
                    time_attention(&custom, h, mix),
                    time_attention(&base, h, mix),
                ),
            )
        });
    }
    out[0].shape = shape;
    out
}

/// The decode kernel's KV splits for `mix`, as the custom backend tiles it.
fn decode_splits(b: &AscendBackend, h: Heads, mix: Mix) -> String {
    let blocks = mix
        .iter()
        .map(|&(c, n)| (c + n).div_ceil(BS))
        .max()
        .unwrap_or(1);
    let shape = qwen3_kernels::AttnShape {
        num_q_heads: h.q as u32,
        num_kv_heads: h.kv as u32,
        head_dim: D as u32,
        block_size: BS as u32,
        max_blocks_per_seq: blocks as u32,
        num_cache_blocks: (blocks * mix.len() + 1) as u32,
        scale: 1.0,
    };
    let longest = mix.iter().map(|&(c, n)| c + n).max().unwrap_or(1) as u32;
    let split = qwen3_kernels::SplitKv::Auto;
    match qwen3_kernels::paged_decode_tiling(
        &shape,
        mix.len() as u32,
        longest,
        split,
        &b.kernel_cores(),
    ) {
        Ok(t) => format!(
            "KV splits: {} of {} blocks, {} tasks",
            t.num_splits, t.split_blocks, t.num_tasks
        ),
        Err(e) => e.to_string(),
    }
}

fn compare(
    kernel: &'static str,
    baseline: &'static str,
    tolerance: f32,
    cpu: Result<Vec<f32>>,
    (got, base): (Result<Vec<f32>>, Result<Vec<f32>>),
    (kernel_us, baseline_us): (Result<f64>, Result<f64>),
) -> KernelCheck {
    let mut c = KernelCheck::new(kernel, baseline, tolerance);
    let cpu = match cpu {
        Ok(v) => v,
        Err(e) => {
            c.error = Some(format!("CPU reference failed: {e}"));
            return c;
        }
    };
    if let Ok(b) = &base {
        c.baseline_error = max_err(&cpu, b);
    }
    c.baseline_us = baseline_us.ok();
    match (got, kernel_us) {
        (Ok(g), Ok(us)) => {
            c.max_error = max_err(&cpu, &g);
            c.kernel_us = Some(us);
            c.passed = c.max_error <= tolerance;
        }
        (Err(e), _) | (_, Err(e)) => c.error = Some(e.to_string()),
    }
    c
}

/// The checks as `doctor` prints them.
pub struct KernelLines<'a>(pub &'a [KernelCheck]);

impl fmt::Display for KernelLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "Custom kernels at a real layer's shape ({}) vs the CPU; device time per call:",
            self.0[0].shape
        )?;
        let us = |t: Option<f64>| t.map_or("n/a".to_string(), |t| format!("{t:.1} us"));
        for c in self.0 {
            let status = if c.passed { "ok  " } else { "FAIL" };
            match &c.error {
                Some(e) => writeln!(f, "  {status} {:<34} error: {e}", c.kernel)?,
                None => writeln!(
                    f,
                    "  {status} {:<34} max error {:.2e} (tolerance {:.0e}), {}; {} {:.2e}, {}",
                    c.kernel,
                    c.max_error,
                    c.tolerance,
                    us(c.kernel_us),
                    c.baseline,
                    c.baseline_error,
                    us(c.baseline_us)
                )?,
            }
            if let Some(d) = &c.detail {
                writeln!(f, "       {d}")?;
            }
        }
        Ok(())
    }
}
