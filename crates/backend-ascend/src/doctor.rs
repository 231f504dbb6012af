//! `qwen3-serve doctor`: what CANN and the devices report, and every backend op run on
//! small shapes on the NPU and compared with the CPU backend (plus, unless quick, the
//! real-shape layer checks of `doctor_layers`).

use std::fmt;
use std::sync::Arc;

use ascend_sys::{AttentionApi, Cann};
use half::bf16;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::sampling::{SampleRow, SamplingParams};
use qwen3_backend::{AttnGeometry, Backend, HostData, KvCacheShape, MoeWeights, Result, RopeSpec};
use serde::Serialize;

pub use crate::device_query::DeviceMemory;
use crate::device_query::{device_count, device_memory};
use crate::doctor_layers::{real_shape_checks, StepHost as StepData, BLOCK as BS};
pub use crate::doctor_layers::{LayerDims, MlpDims, RealShapes};
use crate::{AscendBackend, AscendOptions, AttentionBackend, AttentionPath};

/// One op compared with the CPU backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpCheck {
    pub op: String,
    /// The shapes it ran at ("small": the quick checks' few-element tensors).
    pub shape: String,
    pub passed: bool,
    /// Largest absolute difference from the CPU result (NaN when the op failed to run; JSON
    /// has no NaN, so `doctor --json` writes null).
    pub max_error: f32,
    /// The largest `max_error` that passes.
    pub bound: f32,
    /// Device time of the checked ops, from events on the stream (`None`: not timed).
    pub device_us: Option<f64>,
    /// The error, when the op failed to run.
    pub error: Option<String>,
}

/// What `doctor` runs besides its small-shape op checks.
#[derive(Clone, Debug, PartialEq)]
pub struct DoctorOptions {
    /// Real layers' checks (`None`: quick, small shapes only).
    pub real_shapes: Option<RealShapes>,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            real_shapes: Some(RealShapes::default()),
        }
    }
}

/// Everything `doctor` found; `doctor --json` serializes it as is.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DoctorReport {
    pub libraries: Vec<String>,
    pub cann_version: Option<String>,
    pub runtime_version: Option<(i32, i32, i32)>,
    pub soc_name: Option<String>,
    pub device_count: u32,
    pub devices: Vec<DeviceMemory>,
    pub missing_optional: Vec<String>,
    /// Why HCCL cannot be used (`None`: available).
    pub hccl_unavailable: Option<String>,
    pub attention_api: Option<String>,
    /// The shared operator workspace after the op checks (the largest phase-1 request).
    pub workspace: Option<crate::workspace::WorkspaceStats>,
    /// Bytes of the page-locked ring that step inputs and reads go through.
    pub host_staging_bytes: usize,
    /// Op checks on device 0.
    pub checks: Vec<OpCheck>,
    /// One decode step timed eager, piecewise and full graph (`doctor_graph.rs`).
    pub decode_graphs: Vec<crate::doctor_graph::GraphTiming>,
    /// qwen3-serve's own kernels at a real layer's shape, timed (`doctor_kernels.rs`).
    pub kernels: Vec<crate::doctor_kernels::KernelCheck>,
    /// Problems that stopped part of the diagnosis (no device, device open failed...).
    pub errors: Vec<String>,
}

impl Default for OpCheck {
    fn default() -> Self {
        Self {
            op: String::new(),
            shape: String::new(),
            passed: false,
            max_error: f32::NAN,
            bound: 0.0,
            device_us: None,
            error: None,
        }
    }
}

impl DoctorReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.device_count > 0
            && self.checks.iter().all(|c| c.passed)
            && self.kernels.iter().all(|c| c.passed)
    }
}

fn gb(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_unknown = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
        writeln!(f, "CANN version:    {}", or_unknown(&self.cann_version))?;
        match self.runtime_version {
            Some((a, b, c)) => writeln!(f, "ACL runtime:     {a}.{b}.{c}")?,
            None => writeln!(f, "ACL runtime:     unknown")?,
        }
        writeln!(f, "SoC:             {}", or_unknown(&self.soc_name))?;
        writeln!(f, "Libraries:       {}", self.libraries.join(", "))?;
        writeln!(f, "Devices:         {}", self.device_count)?;
        for d in &self.devices {
            writeln!(
                f,
                "  device {}: HBM {:.2} GiB free of {:.2} GiB",
                d.device,
                gb(d.free_bytes),
                gb(d.total_bytes)
            )?;
        }
        writeln!(
            f,
            "Attention:       {}",
            self.attention_api
                .as_deref()
                .unwrap_or("none (attention will fail)")
        )?;
        if let Some(w) = &self.workspace {
            writeln!(
                f,
                "Op workspace:    {:.1} MiB, one buffer shared by every op (grew {} times)",
                w.bytes as f64 / (1u64 << 20) as f64,
                w.grows
            )?;
        }
        writeln!(
            f,
            "Host staging:    page-locked ring of {} MiB for step inputs and reads",
            self.host_staging_bytes >> 20
        )?;
        match &self.hccl_unavailable {
            None => writeln!(f, "HCCL:            available")?,
            Some(e) => writeln!(f, "HCCL:            unavailable ({e})")?,
        }
        if self.missing_optional.is_empty() {
            writeln!(f, "Optional symbols: all present")?;
        } else {
            writeln!(
                f,
                "Missing optional symbols: {}",
                self.missing_optional.join(", ")
            )?;
        }
        if !self.checks.is_empty() {
            writeln!(
                f,
                "Op checks on device 0 (against the CPU backend; max error / bound, device time, shape):"
            )?;
            for c in &self.checks {
                let status = if c.passed { "ok  " } else { "FAIL" };
                let time = match c.device_us {
                    Some(us) => format!("{us:>10.1} us"),
                    None => format!("{:>13}", "-"),
                };
                match &c.error {
                    Some(e) => writeln!(f, "  {status} {:<36} error: {e}", c.op)?,
                    None => writeln!(
                        f,
                        "  {status} {:<36} {:.2e} / {:.2e} {time}  {}",
                        c.op, c.max_error, c.bound, c.shape
                    )?,
                }
            }
        }
        crate::doctor_graph::write_timings(f, &self.decode_graphs)?;
        write!(f, "{}", crate::doctor_kernels::KernelLines(&self.kernels))?;
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        write!(
            f,
            "{}",
            if self.ok() {
                "doctor: OK"
            } else {
                "doctor: PROBLEMS FOUND"
            }
        )
    }
}

/// Diagnoses the installation `cann` was loaded from and device 0's ops, at real shapes too.
pub fn doctor(cann: &Cann) -> DoctorReport {
    doctor_with(cann, &DoctorOptions::default())
}

/// [`doctor`] with the real-shape checks `opts` asks for.
pub fn doctor_with(cann: &Cann, opts: &DoctorOptions) -> DoctorReport {
    let mut r = DoctorReport {
        libraries: cann
            .libraries()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        cann_version: cann.cann_version(),
        runtime_version: cann.runtime_version(),
        missing_optional: cann
            .missing_optional()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        hccl_unavailable: cann.hccl().err().map(|e| e.to_string()),
        host_staging_bytes: crate::staging::RING_BYTES,
        ..Default::default()
    };
    let cann = Arc::new(cann.clone());
    // Opening device 0 runs aclInit; the SoC name is only known after it.
    let backend = match AscendBackend::open(Arc::clone(&cann), 0) {
        Ok(b) => b,
        Err(e) => {
            r.errors.push(format!("cannot open device 0: {e}"));
            return r;
        }
    };
    r.attention_api = Some(match backend.fia_v4_check() {
        Some(c) => format!("{}; {}", backend.attention_path(), c.detail),
        None => backend.attention_path().to_string(),
    });
    r.soc_name = cann.soc_name();
    match device_count(&cann) {
        Ok(n) => r.device_count = n,
        Err(e) => r.errors.push(e.to_string()),
    }
    for d in 0..r.device_count as i32 {
        match memory_of(&cann, d, &backend) {
            Ok(m) => r.devices.push(m),
            Err(e) => r.errors.push(format!("device {d}: {e}")),
        }
    }
    r.checks = op_checks(&backend);
    if let Some(shapes) = &opts.real_shapes {
        r.checks.extend(real_shape_checks(&backend, shapes));
    }
    r.kernels = crate::doctor_kernels::kernel_checks(&backend);
    r.workspace = Some(backend.workspace_stats());
    drop(backend);
    r.decode_graphs = crate::doctor_graph::decode_graph_timings(&cann);
    r
}

fn memory_of(cann: &Cann, d: i32, b0: &AscendBackend) -> std::result::Result<DeviceMemory, String> {
    if d == b0.device_id() {
        let (free, total) = b0.memory_info().map_err(|e| e.to_string())?;
        return Ok(DeviceMemory {
            device: d,
            free_bytes: free,
            total_bytes: total,
        });
    }
    // Queried on a thread of its own: this thread's device must stay device 0's.
    let mut m = device_memory(cann, &[d]).map_err(|e| e.to_string())?;
    m.pop()
        .ok_or_else(|| format!("no memory reported for device {d}"))
}

/// Deterministic values in [-1, 1).
pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub(crate) fn max_err(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}

/// Real Qwen3's head dim: fused attention in layout TND takes 64, 128 or 192 only, so a
/// smaller one would fail here on hardware where real models run.
const HEAD_DIM: usize = 128;

fn small_rope() -> RopeSpec {
    RopeSpec {
        inv_freq: (0..HEAD_DIM / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / HEAD_DIM as f32))
            .collect(),
        mscale: 1.0,
    }
}

/// A two-sequence step: a 3-token prefill (positions 0..3, block 1) and one decode token at
/// position 4 of a 5-token context (block 2), blocks of 128.
fn step_data() -> StepData {
    let mut s = StepData::new(&[(3, 3, &[1]), (5, 1, &[2])], 1, &small_rope());
    // The embedding check's vocabulary slice is [10, 30): ids 3 and 9 are another rank's.
    s.ids = vec![3, 17, 40, 9];
    s
}

/// Runs one scenario on a backend and returns the host results to compare.
type Scenario<B> = fn(&B, &StepData) -> Result<Vec<f32>>;

struct Case {
    op: &'static str,
    bound: f32,
    cpu: Scenario<CpuBackend>,
    npu: Scenario<AscendBackend>,
}

macro_rules! case {
    ($op:literal, $tol:expr, $f:ident) => {
        Case {
            op: $op,
            bound: $tol,
            cpu: $f::<CpuBackend>,
            npu: $f::<AscendBackend>,
        }
    };
}

fn up<B: Backend>(b: &B, v: &[f32], shape: &[usize]) -> Result<B::Tensor> {
    b.upload(HostData::F32(v), shape)
}

fn upload_roundtrip<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let w = b.upload(HostData::BF16(&bf(&data(24, 1))), &[4, 6])?;
    b.to_host_f32(&w)
}

fn linear_f32<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let x = up(b, &data(4 * 32, 2), &[4, 32])?;
    let w = up(b, &data(24 * 32, 3), &[24, 32])?;
    b.to_host_f32(&b.linear(&x, &w)?)
}

fn linear_bf16<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let x = up(
        b,
        &bf(&data(4 * 32, 2))
            .iter()
            .map(|v| v.to_f32())
            .collect::<Vec<_>>(),
        &[4, 32],
    )?;
    let w = b.upload(HostData::BF16(&bf(&data(24 * 32, 3))), &[24, 32])?;
    b.to_host_f32(&b.linear(&x, &w)?)
}

fn norms<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let x = up(b, &data(4 * 32, 4), &[4, 32])?;
    let y = up(b, &data(4 * 32, 5), &[4, 32])?;
    let w = up(b, &data(32, 6), &[32])?;
    let mut res = up(b, &data(4 * 32, 7), &[4, 32])?;
    let a = b.rms_norm(&x, &w, 1e-6)?;
    let c = b.add_rms_norm(&y, &mut res, &w, 1e-6)?;
    let mut h = up(b, &data(4 * 2 * HEAD_DIM, 8), &[4, 2 * HEAD_DIM])?;
    let hw = up(b, &data(HEAD_DIM, 9), &[HEAD_DIM])?;
    b.head_rms_norm(&mut h, &hw, HEAD_DIM, 1e-6)?;
    let mut out = b.to_host_f32(&a)?;
    out.extend(b.to_host_f32(&c)?);
    out.extend(b.to_host_f32(&res)?);
    out.extend(b.to_host_f32(&h)?);
    Ok(out)
}

fn rope<B: Backend>(b: &B, s: &StepData) -> Result<Vec<f32>> {
    let step = b.prepare_step(&s.meta())?;
    let mut x = up(b, &data(4 * 2 * HEAD_DIM, 10), &[4, 2 * HEAD_DIM])?;
    b.rope(&mut x, &step, HEAD_DIM)?;
    b.to_host_f32(&x)
}

fn elementwise<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let g = up(b, &data(3 * 20, 11), &[3, 20])?;
    let u = up(b, &data(3 * 20, 12), &[3, 20])?;
    let mut a = b.silu_mul(&g, &u)?;
    b.add_inplace(&mut a, &g)?;
    let sel = b.select_rows(&a, &[2, 0])?;
    let mut out = b.to_host_f32(&a)?;
    out.extend(b.to_host_f32(&sel)?);
    Ok(out)
}

fn embedding<B: Backend>(b: &B, s: &StepData) -> Result<Vec<f32>> {
    let step = b.prepare_step(&s.meta())?;
    // A vocabulary slice [10, 30): ids 3 and 9 are another rank's and give zero rows.
    let table = b.upload(HostData::BF16(&bf(&data(20 * 8, 13))), &[20, 8])?;
    b.to_host_f32(&b.embedding(&table, &step, 10)?)
}

fn attention<B: Backend>(b: &B, s: &StepData) -> Result<Vec<f32>> {
    attention_with(b, s, None)
}

fn attention_window<B: Backend>(b: &B, s: &StepData) -> Result<Vec<f32>> {
    attention_with(b, s, Some(3))
}

fn attention_with<B: Backend>(b: &B, s: &StepData, window: Option<usize>) -> Result<Vec<f32>> {
    let (heads, kv_heads) = (4, 2);
    let step = b.prepare_step(&s.meta())?;
    let shape = KvCacheShape {
        num_layers: 1,
        num_blocks: 3,
        block_size: BS,
        num_kv_heads: kv_heads,
        head_dim: HEAD_DIM,
    };
    let mut cache = b.alloc_kv_cache(shape)?;
    // The decode sequence's first 4 tokens come from an earlier step.
    let early = StepData::new(&[(4, 4, &[2])], 1, &s.rope);
    let early_step = b.prepare_step(&early.meta())?;
    let kw = kv_heads * HEAD_DIM;
    let k0 = up(b, &data(4 * kw, 14), &[4, kw])?;
    let v0 = up(b, &data(4 * kw, 15), &[4, kw])?;
    b.write_kv(&mut cache, 0, &k0, &v0, &early_step)?;
    let k = up(b, &data(4 * kw, 16), &[4, kw])?;
    let v = up(b, &data(4 * kw, 17), &[4, kw])?;
    b.write_kv(&mut cache, 0, &k, &v, &step)?;
    let q = up(b, &data(4 * heads * HEAD_DIM, 18), &[4, heads * HEAD_DIM])?;
    let g = AttnGeometry {
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: HEAD_DIM,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        sliding_window: window,
    };
    b.to_host_f32(&b.attention(&q, &cache, 0, &step, &g)?)
}

fn moe<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let (t, h, inter, ne) = (5, 16, 8, 4);
    let x = up(b, &data(t * h, 19), &[t, h])?;
    let logits = up(b, &data(t * ne, 20), &[t, ne])?;
    let mut out = Vec::new();
    for renormalize in [true, false] {
        let e = MoeWeights {
            gate: up(b, &data(ne * inter * h, 21), &[ne, inter, h])?,
            up: up(b, &data(ne * inter * h, 22), &[ne, inter, h])?,
            down: up(b, &data(ne * h * inter, 23), &[ne, h, inter])?,
            num_experts: ne,
            top_k: 2,
            renormalize,
        };
        out.extend(b.to_host_f32(&b.moe(&x, &logits, &e)?)?);
    }
    Ok(out)
}

fn sample<B: Backend>(b: &B, _: &StepData) -> Result<Vec<f32>> {
    let logits = up(b, &data(4 * 50, 24), &[4, 50])?;
    let full = SamplingParams {
        top_k: 0,
        top_p: 0.9,
        temperature: 0.7,
        frequency_penalty: 0.3,
        repetition_penalty: 1.1,
        logprobs: Some(3),
        ..SamplingParams::default()
    };
    let greedy = SamplingParams::greedy();
    let topk = SamplingParams {
        top_k: 5,
        temperature: 0.8,
        ..SamplingParams::default()
    };
    let rows = [
        SampleRow {
            params: &greedy,
            prompt_tokens: &[],
            output_tokens: &[],
            suppressed: &[],
            allowed: None,
            rng_seed: 1,
        },
        SampleRow {
            params: &greedy,
            prompt_tokens: &[],
            output_tokens: &[],
            suppressed: &[7, 8],
            allowed: None,
            rng_seed: 2,
        },
        SampleRow {
            params: &topk,
            prompt_tokens: &[],
            output_tokens: &[],
            suppressed: &[],
            allowed: None,
            rng_seed: 3,
        },
        // Penalties and logprobs: the full row goes to the host.
        SampleRow {
            params: &full,
            prompt_tokens: &[4, 9],
            output_tokens: &[9, 9, 30],
            suppressed: &[],
            allowed: None,
            rng_seed: 4,
        },
    ];
    let mut out = Vec::new();
    for s in b.sample(&logits, &rows)? {
        out.push(s.token as f32);
        out.extend(s.logprob);
        for (t, l) in s.top_logprobs {
            out.extend([t as f32, l]);
        }
    }
    Ok(out)
}

fn cases() -> Vec<Case> {
    vec![
        case!("upload", 0.0, upload_roundtrip),
        case!("linear f32", 1e-4, linear_f32),
        case!("linear bf16", 5e-2, linear_bf16),
        case!("rms norms", 1e-4, norms),
        case!("rope", 1e-4, rope),
        case!("silu/add/select", 1e-5, elementwise),
        case!("embedding", 0.0, embedding),
        // The NPU keeps K/V and runs attention in BF16.
        case!("attention", 2e-2, attention),
        case!("moe", 1e-4, moe),
        case!("sample", 1e-6, sample),
    ]
}

/// Checks of the F32 KV cache path (matmul + softmax attention), on its own backend.
fn f32_cache_cases() -> Vec<Case> {
    vec![
        case!("attention f32", 1e-4, attention),
        case!("sliding window", 1e-4, attention_window),
    ]
}

/// Runs every op check on `backend` against the CPU backend (and the F32 KV cache path on
/// a second backend of the same device).
pub fn op_checks(backend: &AscendBackend) -> Vec<OpCheck> {
    let mut out = run_cases(backend, cases());
    let opts = AscendOptions {
        kv_cache_f32: true,
        ..AscendOptions::default()
    };
    match AscendBackend::with_options(Arc::clone(backend.cann()), backend.device_id(), opts) {
        Ok(b) => out.extend(run_cases(&b, f32_cache_cases())),
        Err(e) => out.push(OpCheck {
            op: "attention f32".into(),
            error: Some(e.to_string()),
            ..OpCheck::default()
        }),
    }
    // qwen3-serve's own attention kernels, when their library is there and the KV cache is
    // BF16 (what they read): the same case, so the first run on an Atlas box says whether
    // `--attention-backend custom` is right.
    let bf16_cache = matches!(
        backend.attention_path(),
        AttentionPath::Fused { .. } | AttentionPath::Custom
    );
    if backend.cann().kernels.is_some() && bf16_cache {
        let opts = AscendOptions {
            attention_backend: AttentionBackend::Custom,
            ..AscendOptions::default()
        };
        out.push(attention_variant(backend, "attention custom kernels", opts));
    }
    // Every other exported fused-attention version, in case the newest one misbehaves.
    for (api, op) in [
        (AttentionApi::FiaV3, "attention fia v3"),
        (AttentionApi::FiaV2, "attention fia v2"),
    ] {
        if backend.attention_api() == Some(api)
            || !backend.cann().ops.attention_apis().contains(&api)
        {
            continue;
        }
        let opts = AscendOptions {
            attention_api: Some(api),
            ..AscendOptions::default()
        };
        out.push(attention_variant(backend, op, opts));
    }
    out
}

/// The attention case on another backend of the same device with `opts`.
fn attention_variant(backend: &AscendBackend, op: &'static str, opts: AscendOptions) -> OpCheck {
    match AscendBackend::with_options(Arc::clone(backend.cann()), backend.device_id(), opts) {
        Ok(b) => {
            let mut r = run_cases(
                &b,
                vec![Case {
                    op,
                    ..case!("attention", 2e-2, attention)
                }],
            );
            r.pop().unwrap_or_default()
        }
        Err(e) => OpCheck {
            op: op.into(),
            error: Some(e.to_string()),
            ..OpCheck::default()
        },
    }
}

fn run_cases(backend: &AscendBackend, cases: Vec<Case>) -> Vec<OpCheck> {
    let cpu = CpuBackend::new();
    let s = step_data();
    cases
        .into_iter()
        .map(|c| {
            let want = (c.cpu)(&cpu, &s);
            let got = (c.npu)(backend, &s);
            verdict(c.op.into(), "small".into(), want, got, |_| c.bound)
        })
        .collect()
}

/// The check of `got` (the NPU's) against `want` (the CPU's) under `bound(want)`.
pub(crate) fn verdict(
    op: String,
    shape: String,
    want: Result<Vec<f32>>,
    got: Result<Vec<f32>>,
    bound: impl Fn(&[f32]) -> f32,
) -> OpCheck {
    match (want, got) {
        (Ok(w), Ok(g)) => {
            let (e, bound) = (max_err(&w, &g), bound(&w));
            OpCheck {
                op,
                shape,
                passed: e <= bound,
                max_error: e,
                bound,
                ..OpCheck::default()
            }
        }
        (_, Err(e)) => OpCheck {
            op,
            shape,
            error: Some(e.to_string()),
            ..OpCheck::default()
        },
        (Err(e), _) => OpCheck {
            op,
            shape,
            error: Some(format!("CPU reference failed: {e}")),
            ..OpCheck::default()
        },
    }
}
