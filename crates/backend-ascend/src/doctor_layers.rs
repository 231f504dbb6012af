//! `doctor`'s checks at real layer shapes: one Qwen3-8B decoder layer and one Qwen3-30B-A3B
//! MoE layer with random BF16 weights, each op and the whole layer run on the NPU and on the
//! CPU backend (exact F32 math on the same BF16 values), compared under a bound that BF16
//! rounding explains, and timed on the device with events.
//!
//! Bounds are counted in BF16 roundings of the reference's largest magnitude
//! (`units × 2⁻⁸ × max|cpu|`): BF16 keeps 8 significant bits, so rounding a value moves it by
//! at most 2⁻⁸ of itself. An op the NPU runs in BF16 rounds its output once (a matmul
//! accumulates in F32 first) and, where it keeps a BF16 intermediate (RoPE's cos/sin, the
//! MLP's activation, attention's probabilities), once more per intermediate; each bound
//! allows about twice the roundings the op makes. A wrong op misses by the size of its
//! output (hundreds of units).

use half::bf16;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::{
    AttnGeometry, Backend, BackendError, HostData, KvCacheShape, MoeWeights, Result, RopeSpec,
    StepMeta,
};
use serde::Serialize;

use crate::device_timer::DeviceTimer;
use crate::doctor::{data, verdict, OpCheck};
use crate::AscendBackend;

/// A layer's MLP: dense, or routed experts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum MlpDims {
    Dense {
        intermediate: usize,
    },
    Moe {
        experts: usize,
        top_k: usize,
        intermediate: usize,
    },
}

/// One decoder layer's dimensions, as the model's `config.json` gives them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerDims {
    pub model: &'static str,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub mlp: MlpDims,
}

impl LayerDims {
    pub fn qwen3_8b() -> Self {
        Self {
            model: "Qwen3-8B",
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            mlp: MlpDims::Dense {
                intermediate: 12288,
            },
        }
    }

    pub fn qwen3_30b_a3b() -> Self {
        Self {
            model: "Qwen3-30B-A3B",
            hidden: 2048,
            heads: 32,
            kv_heads: 4,
            head_dim: 128,
            mlp: MlpDims::Moe {
                experts: 128,
                top_k: 8,
                intermediate: 768,
            },
        }
    }
}

/// The layers to check and the batch they run: one prefill chunk and decodes over longer
/// contexts in one step, as serving mixes them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RealShapes {
    pub layers: Vec<LayerDims>,
    /// Tokens of the prefill sequence (positions `0..prefill`).
    pub prefill: usize,
    /// Context lengths of the decode sequences (one new token each; at least 2).
    pub decode_contexts: Vec<usize>,
}

impl Default for RealShapes {
    fn default() -> Self {
        Self {
            layers: vec![LayerDims::qwen3_8b(), LayerDims::qwen3_30b_a3b()],
            prefill: 16,
            decode_contexts: vec![300, 1000],
        }
    }
}

/// Fused attention's TND layout takes paged blocks of 128, 512 or 1024 tokens.
pub(crate) const BLOCK: usize = 128;
/// BF16's unit roundoff: rounding moves a value by at most this fraction of itself.
const BF16_ROUNDOFF: f32 = 1.0 / 256.0;
/// Qwen3's `rope_theta`.
const ROPE_THETA: f32 = 1_000_000.0;
const EPS: f32 = 1e-6;

/// Where the device time of a check's ops goes.
trait Stopwatch {
    fn start(&mut self) -> Result<()>;
    fn stop(&mut self) -> Result<()>;
}

/// The CPU reference is not timed.
struct Untimed;

impl Stopwatch for Untimed {
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    fn stop(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Stopwatch for DeviceTimer {
    fn start(&mut self) -> Result<()> {
        DeviceTimer::start(self)
    }
    fn stop(&mut self) -> Result<()> {
        DeviceTimer::stop(self)
    }
}

/// One step's metadata, owned.
pub(crate) struct StepHost {
    pub ids: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<u32>,
    query_start: Vec<u32>,
    query_len: Vec<u32>,
    context_len: Vec<u32>,
    block_tables: Vec<u32>,
    max_blocks: usize,
    pub rope: RopeSpec,
}

impl StepHost {
    /// Sequences as (context length, new tokens at its end, block table); tables are padded
    /// with block 0 to `max_blocks`.
    pub fn new(seqs: &[(usize, usize, &[u32])], max_blocks: usize, rope: &RopeSpec) -> Self {
        let mut s = Self {
            ids: Vec::new(),
            positions: Vec::new(),
            slots: Vec::new(),
            query_start: Vec::new(),
            query_len: Vec::new(),
            context_len: Vec::new(),
            block_tables: Vec::new(),
            max_blocks,
            rope: rope.clone(),
        };
        for &(ctx, new, table) in seqs {
            s.query_start.push(s.positions.len() as u32);
            s.query_len.push(new as u32);
            s.context_len.push(ctx as u32);
            for p in ctx - new..ctx {
                s.ids.push((p % 1000) as u32);
                s.positions.push(p as u32);
                s.slots
                    .push(table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32);
            }
            s.block_tables.extend(table);
            s.block_tables
                .extend(std::iter::repeat_n(0, max_blocks - table.len()));
        }
        s
    }

    pub fn meta(&self) -> StepMeta<'_> {
        StepMeta {
            token_ids: &self.ids,
            positions: &self.positions,
            slot_mapping: &self.slots,
            query_start: &self.query_start,
            query_len: &self.query_len,
            context_len: &self.context_len,
            block_tables: &self.block_tables,
            max_blocks_per_seq: self.max_blocks,
            block_size: BLOCK,
            rope: &self.rope,
        }
    }

    fn tokens(&self) -> usize {
        self.positions.len()
    }
}

/// The checked step and the earlier one that filled the decodes' contexts.
struct Batch {
    step: StepHost,
    /// The decode sequences' earlier tokens (`None`: no decodes).
    early: Option<StepHost>,
    blocks: usize,
}

impl Batch {
    fn new(shapes: &RealShapes, head_dim: usize) -> Self {
        let rope = RopeSpec {
            inv_freq: (0..head_dim / 2)
                .map(|i| 1.0 / ROPE_THETA.powf(2.0 * i as f32 / head_dim as f32))
                .collect(),
            mscale: 1.0,
        };
        let decodes: Vec<usize> = shapes.decode_contexts.iter().map(|&c| c.max(2)).collect();
        let contexts: Vec<usize> = std::iter::once(shapes.prefill.max(1))
            .chain(decodes.iter().copied())
            .collect();
        // Block 0 pads the tables; each sequence's blocks follow the previous one's.
        let mut next = 1u32;
        let tables: Vec<Vec<u32>> = contexts
            .iter()
            .map(|&c| {
                let n = c.div_ceil(BLOCK) as u32;
                next += n;
                (next - n..next).collect()
            })
            .collect();
        let max_blocks = tables.iter().map(Vec::len).max().unwrap_or(1);
        let seqs: Vec<(usize, usize, &[u32])> = contexts
            .iter()
            .zip(&tables)
            .enumerate()
            .map(|(i, (&c, t))| (c, if i == 0 { c } else { 1 }, t.as_slice()))
            .collect();
        let early: Vec<(usize, usize, &[u32])> = seqs[1..]
            .iter()
            .map(|&(c, _, t)| (c - 1, c - 1, t))
            .collect();
        Self {
            step: StepHost::new(&seqs, max_blocks, &rope),
            early: (!early.is_empty()).then(|| StepHost::new(&early, max_blocks, &rope)),
            blocks: next as usize,
        }
    }

    fn contexts(&self) -> String {
        let c: Vec<String> = self.step.context_len.iter().map(u32::to_string).collect();
        c.join("/")
    }
}

/// A layer's weights on one backend.
struct Weights<T> {
    in_norm: T,
    q: T,
    k: T,
    v: T,
    q_norm: T,
    k_norm: T,
    o: T,
    post_norm: T,
    mlp: MlpWeights<T>,
}

enum MlpWeights<T> {
    Dense {
        gate: T,
        up: T,
        down: T,
    },
    /// Gate rows then up rows, for backends that merge them ([`Backend::merges_gate_up`]).
    Merged {
        gate_up: T,
        down: T,
    },
    Moe {
        router: T,
        experts: MoeWeights<T>,
    },
}

/// `n` values uniform in `[-scale, scale)`, rounded to BF16 (so both backends see the same).
fn rand_bf16(n: usize, seed: u32, scale: f32) -> Vec<bf16> {
    data(n, seed)
        .into_iter()
        .map(|x| bf16::from_f32(x * scale))
        .collect()
}

/// A projection's weights `[out, inp]`, scaled so that an input of RMS 1 gives outputs of
/// RMS ~1 (variance 1/inp per weight), as trained layers keep them.
fn proj(out: usize, inp: usize, seed: u32) -> Vec<bf16> {
    rand_bf16(out * inp, seed, (3.0 / inp as f32).sqrt())
}

/// Activations `[rows, cols]` of RMS 1.
fn act(rows: usize, cols: usize, seed: u32) -> Vec<bf16> {
    rand_bf16(rows * cols, seed, 3f32.sqrt())
}

/// A norm's weight: near 1, as trained ones are.
fn norm_weight(n: usize, seed: u32) -> Vec<bf16> {
    data(n, seed)
        .into_iter()
        .map(|x| bf16::from_f32(1.0 + 0.2 * x))
        .collect()
}

fn up<B: Backend>(b: &B, v: &[bf16], shape: &[usize]) -> Result<B::Tensor> {
    b.upload(HostData::BF16(v), shape)
}

/// Activations as each backend serves them: BF16 on the NPU (a BF16 model's embedding gives
/// BF16 rows), F32 on the CPU (its ops take F32 activations; the values are the same).
trait Activations: Backend {
    fn activation(&self, v: &[bf16], shape: &[usize]) -> Result<Self::Tensor>;
}

impl Activations for AscendBackend {
    fn activation(&self, v: &[bf16], shape: &[usize]) -> Result<Self::Tensor> {
        up(self, v, shape)
    }
}

impl Activations for CpuBackend {
    fn activation(&self, v: &[bf16], shape: &[usize]) -> Result<Self::Tensor> {
        let f: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
        self.upload(HostData::F32(&f), shape)
    }
}

/// A layer's weights on the CPU and on the NPU.
type WeightPair = (
    Weights<<CpuBackend as Backend>::Tensor>,
    Weights<<AscendBackend as Backend>::Tensor>,
);

/// The same random weights on the CPU and on the NPU (generated once, one tensor at a time,
/// so the host holds at most one).
fn weights(cpu: &CpuBackend, npu: &AscendBackend, d: &LayerDims) -> Result<WeightPair> {
    let both = |v: Vec<bf16>, shape: &[usize]| -> Result<_> {
        Ok((up(cpu, &v, shape)?, up(npu, &v, shape)?))
    };
    let (h, qd, kd) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let in_norm = both(norm_weight(h, 101), &[h])?;
    let q = both(proj(qd, h, 102), &[qd, h])?;
    let k = both(proj(kd, h, 103), &[kd, h])?;
    let v = both(proj(kd, h, 104), &[kd, h])?;
    let q_norm = both(norm_weight(d.head_dim, 105), &[d.head_dim])?;
    let k_norm = both(norm_weight(d.head_dim, 106), &[d.head_dim])?;
    let o = both(proj(h, qd, 107), &[h, qd])?;
    let post_norm = both(norm_weight(h, 108), &[h])?;
    let (cm, nm) = match d.mlp {
        MlpDims::Dense { intermediate: i } => {
            let gate_up = proj(2 * i, h, 109);
            let down = both(proj(h, i, 110), &[h, i])?;
            let (g, u) = gate_up.split_at(i * h);
            let cpu_mlp = MlpWeights::Dense {
                gate: up(cpu, g, &[i, h])?,
                up: up(cpu, u, &[i, h])?,
                down: down.0,
            };
            let npu_mlp = if npu.merges_gate_up() {
                MlpWeights::Merged {
                    gate_up: up(npu, &gate_up, &[2 * i, h])?,
                    down: down.1,
                }
            } else {
                MlpWeights::Dense {
                    gate: up(npu, g, &[i, h])?,
                    up: up(npu, u, &[i, h])?,
                    down: down.1,
                }
            };
            (cpu_mlp, npu_mlp)
        }
        MlpDims::Moe {
            experts: e,
            top_k,
            intermediate: i,
        } => {
            let router = both(proj(e, h, 111), &[e, h])?;
            let gate = both(proj(e * i, h, 112), &[e, i, h])?;
            let upw = both(proj(e * i, h, 113), &[e, i, h])?;
            let down = both(proj(e * h, i, 114), &[e, h, i])?;
            (
                MlpWeights::Moe {
                    router: router.0,
                    experts: moe_weights(gate.0, upw.0, down.0, e, top_k),
                },
                MlpWeights::Moe {
                    router: router.1,
                    experts: moe_weights(gate.1, upw.1, down.1, e, top_k),
                },
            )
        }
    };
    let ((ci, ni), (cq, nq), (ck, nk), (cv, nv)) = (in_norm, q, k, v);
    let ((cqn, nqn), (ckn, nkn), (co, no), (cp, np)) = (q_norm, k_norm, o, post_norm);
    Ok((
        Weights {
            in_norm: ci,
            q: cq,
            k: ck,
            v: cv,
            q_norm: cqn,
            k_norm: ckn,
            o: co,
            post_norm: cp,
            mlp: cm,
        },
        Weights {
            in_norm: ni,
            q: nq,
            k: nk,
            v: nv,
            q_norm: nqn,
            k_norm: nkn,
            o: no,
            post_norm: np,
            mlp: nm,
        },
    ))
}

fn moe_weights<T>(gate: T, up: T, down: T, experts: usize, top_k: usize) -> MoeWeights<T> {
    MoeWeights {
        gate,
        up,
        down,
        num_experts: experts,
        top_k,
        // Qwen3-30B-A3B's norm_topk_prob.
        renormalize: true,
    }
}

/// The checks of one layer, each one op (or a few that only make sense together).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    InputNorm,
    QkvProj,
    QkNormRope,
    Attention,
    OProj,
    PostNorm,
    Mlp,
    Router,
    Experts,
    Layer,
}

impl Op {
    fn of(d: &LayerDims) -> Vec<Op> {
        let mlp: &[Op] = match d.mlp {
            MlpDims::Dense { .. } => &[Op::Mlp],
            MlpDims::Moe { .. } => &[Op::Router, Op::Experts],
        };
        [
            Op::InputNorm,
            Op::QkvProj,
            Op::QkNormRope,
            Op::Attention,
            Op::OProj,
            Op::PostNorm,
        ]
        .into_iter()
        .chain(mlp.iter().copied())
        .chain([Op::Layer])
        .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Op::InputNorm => "rms_norm",
            Op::QkvProj => "q/k/v proj",
            Op::QkNormRope => "q/k norm + rope",
            Op::Attention => "write_kv + attention",
            Op::OProj => "o proj",
            Op::PostNorm => "add_rms_norm",
            Op::Mlp => "mlp",
            Op::Router => "router",
            Op::Experts => "moe experts",
            Op::Layer => "whole layer",
        }
    }

    /// BF16 roundings of `max|cpu|` the op may differ by (see the module's header).
    fn bound_units(self) -> f32 {
        match self {
            // One output rounding (the matmuls accumulate in F32).
            Op::InputNorm | Op::QkvProj | Op::OProj | Op::Router => 2.0,
            // The normed output and the updated residual, each rounded once.
            Op::PostNorm => 2.0,
            // Head norm, then RoPE with BF16 cos/sin: three roundings in a row.
            Op::QkNormRope => 6.0,
            // Probabilities and output in BF16.
            Op::Attention => 4.0,
            // Gate/up outputs, the SwiGLU product and the down output; experts add the
            // routing weights.
            Op::Mlp | Op::Experts => 8.0,
            // Every rounding above in a chain, each op's error carried into the next.
            Op::Layer => 16.0,
        }
    }

    fn shape(self, d: &LayerDims, b: &Batch) -> String {
        let t = b.step.tokens();
        let (h, qd, kd) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
        match (self, d.mlp) {
            (Op::InputNorm | Op::PostNorm, _) => format!("[{t},{h}]"),
            (Op::QkvProj, _) => format!("[{t},{h}] x [{qd}+{kd}+{kd},{h}]"),
            (Op::QkNormRope, _) => format!("q [{t},{qd}], k [{t},{kd}], head_dim {}", d.head_dim),
            (Op::Attention, _) => format!(
                "q {}x{}, kv {}x{}, block {BLOCK}, contexts {}",
                d.heads,
                d.head_dim,
                d.kv_heads,
                d.head_dim,
                b.contexts()
            ),
            (Op::OProj, _) => format!("[{t},{qd}] x [{h},{qd}]"),
            (Op::Mlp, MlpDims::Dense { intermediate: i }) => {
                format!("[{t},{h}] x gate/up [2x{i},{h}], down [{h},{i}]")
            }
            (Op::Router, MlpDims::Moe { experts: e, .. }) => format!("[{t},{h}] x [{e},{h}]"),
            (
                Op::Experts,
                MlpDims::Moe {
                    experts: e,
                    top_k: k,
                    intermediate: i,
                },
            ) => format!("[{t},{h}], {e} experts top-{k}, intermediate {i}"),
            (Op::Layer, _) => format!("[{t},{h}], contexts {}", b.contexts()),
            _ => String::new(),
        }
    }
}

fn read<B: Backend>(b: &B, ts: &[&B::Tensor]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for t in ts {
        out.extend(b.to_host_f32(t)?);
    }
    Ok(out)
}

fn geometry(d: &LayerDims) -> AttnGeometry {
    AttnGeometry {
        num_heads: d.heads,
        num_kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        scale: 1.0 / (d.head_dim as f32).sqrt(),
        sliding_window: None,
    }
}

/// A one-layer cache holding the decodes' earlier tokens (random K/V), and the checked step.
fn cache_and_step<B: Activations>(
    b: &B,
    d: &LayerDims,
    s: &Batch,
) -> Result<(B::KvCache, B::Step)> {
    let mut cache = b.alloc_kv_cache(KvCacheShape {
        num_layers: 1,
        num_blocks: s.blocks,
        block_size: BLOCK,
        num_kv_heads: d.kv_heads,
        head_dim: d.head_dim,
    })?;
    if let Some(e) = &s.early {
        let kd = d.kv_heads * d.head_dim;
        let n = e.tokens();
        let step = b.prepare_step(&e.meta())?;
        let k = b.activation(&act(n, kd, 201), &[n, kd])?;
        let v = b.activation(&act(n, kd, 202), &[n, kd])?;
        b.write_kv(&mut cache, 0, &k, &v, &step)?;
    }
    let step = b.prepare_step(&s.step.meta())?;
    Ok((cache, step))
}

fn mlp<B: Backend>(b: &B, x: &B::Tensor, w: &MlpWeights<B::Tensor>) -> Result<B::Tensor> {
    match w {
        MlpWeights::Dense { gate, up, down } => {
            let g = b.linear(x, gate)?;
            let u = b.linear(x, up)?;
            b.linear(&b.silu_mul(&g, &u)?, down)
        }
        MlpWeights::Merged { gate_up, down } => {
            b.linear(&b.silu_mul_merged(&b.linear(x, gate_up)?)?, down)
        }
        MlpWeights::Moe { router, experts } => b.moe(x, &b.linear(x, router)?, experts),
    }
}

/// Router logits with a clear order: each token's experts get distinct values 1/8 apart
/// (exact in BF16), so top-k picks the same experts on both backends.
fn router_logits(t: usize, e: usize, seed: u32) -> Vec<bf16> {
    let r = data(t * e, seed);
    let mut out = Vec::with_capacity(t * e);
    for row in r.chunks(e) {
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
        let mut logits = vec![bf16::ZERO; e];
        for (rank, &i) in order.iter().enumerate() {
            logits[i] = bf16::from_f32((rank as f32 - e as f32 / 2.0) / 8.0 / (e as f32 / 16.0));
        }
        out.extend(logits);
    }
    out
}

/// Runs one check on `b`, timing its ops with `sw`, and returns what it compares.
fn run<B: Activations>(
    op: Op,
    b: &B,
    d: &LayerDims,
    w: &Weights<B::Tensor>,
    s: &Batch,
    sw: &mut dyn Stopwatch,
) -> Result<Vec<f32>> {
    let t = s.step.tokens();
    let (h, qd, kd, hd) = (
        d.hidden,
        d.heads * d.head_dim,
        d.kv_heads * d.head_dim,
        d.head_dim,
    );
    let x = b.activation(&act(t, h, 301), &[t, h])?;
    match op {
        Op::InputNorm => {
            sw.start()?;
            let y = b.rms_norm(&x, &w.in_norm, EPS)?;
            sw.stop()?;
            read(b, &[&y])
        }
        Op::QkvProj => {
            sw.start()?;
            let (q, k, v) = (
                b.linear(&x, &w.q)?,
                b.linear(&x, &w.k)?,
                b.linear(&x, &w.v)?,
            );
            sw.stop()?;
            read(b, &[&q, &k, &v])
        }
        Op::QkNormRope => {
            let step = b.prepare_step(&s.step.meta())?;
            let mut q = b.activation(&act(t, qd, 302), &[t, qd])?;
            let mut k = b.activation(&act(t, kd, 303), &[t, kd])?;
            sw.start()?;
            b.head_rms_norm(&mut q, &w.q_norm, hd, EPS)?;
            b.head_rms_norm(&mut k, &w.k_norm, hd, EPS)?;
            b.rope_qk(&mut q, &mut k, &step, hd)?;
            sw.stop()?;
            read(b, &[&q, &k])
        }
        Op::Attention => {
            let (mut cache, step) = cache_and_step(b, d, s)?;
            let q = b.activation(&act(t, qd, 304), &[t, qd])?;
            let k = b.activation(&act(t, kd, 305), &[t, kd])?;
            let v = b.activation(&act(t, kd, 306), &[t, kd])?;
            sw.start()?;
            b.write_kv(&mut cache, 0, &k, &v, &step)?;
            let a = b.attention(&q, &cache, 0, &step, &geometry(d))?;
            sw.stop()?;
            read(b, &[&a])
        }
        Op::OProj => {
            let a = b.activation(&act(t, qd, 307), &[t, qd])?;
            sw.start()?;
            let o = b.linear(&a, &w.o)?;
            sw.stop()?;
            read(b, &[&o])
        }
        Op::PostNorm => {
            let mut residual = b.activation(&act(t, h, 308), &[t, h])?;
            sw.start()?;
            let y = b.add_rms_norm(&x, &mut residual, &w.post_norm, EPS)?;
            sw.stop()?;
            read(b, &[&y, &residual])
        }
        Op::Mlp => {
            sw.start()?;
            let y = mlp(b, &x, &w.mlp)?;
            sw.stop()?;
            read(b, &[&y])
        }
        Op::Router | Op::Experts => {
            let MlpWeights::Moe { router, experts } = &w.mlp else {
                return Err(BackendError::Unsupported(format!(
                    "{} on a dense layer",
                    op.name()
                )));
            };
            let y = if op == Op::Router {
                sw.start()?;
                let y = b.linear(&x, router)?;
                sw.stop()?;
                y
            } else {
                let e = experts.num_experts;
                let logits = b.activation(&router_logits(t, e, 309), &[t, e])?;
                sw.start()?;
                let y = b.moe(&x, &logits, experts)?;
                sw.stop()?;
                y
            };
            read(b, &[&y])
        }
        Op::Layer => Ok(layer(b, d, w, s, None, sw)?.0),
    }
}

/// The whole layer as the model runs it (`qwen3.rs`), from the embedding output to the
/// residual stream after the MLP. `route`: router logits to route by instead of the layer's
/// own. Returns the output and, for MoE, the router logits it routed by.
fn layer<B: Activations>(
    b: &B,
    d: &LayerDims,
    w: &Weights<B::Tensor>,
    s: &Batch,
    route: Option<&[f32]>,
    sw: &mut dyn Stopwatch,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let (t, h, hd) = (s.step.tokens(), d.hidden, d.head_dim);
    let (mut cache, step) = cache_and_step(b, d, s)?;
    let mut residual = b.activation(&act(t, h, 310), &[t, h])?;
    let route = match route {
        Some(r) => Some(b.upload(HostData::F32(r), &[t, r.len() / t.max(1)])?),
        None => None,
    };
    sw.start()?;
    let x = b.rms_norm(&residual, &w.in_norm, EPS)?;
    let mut q = b.linear(&x, &w.q)?;
    let mut k = b.linear(&x, &w.k)?;
    let v = b.linear(&x, &w.v)?;
    b.head_rms_norm(&mut q, &w.q_norm, hd, EPS)?;
    b.head_rms_norm(&mut k, &w.k_norm, hd, EPS)?;
    b.rope_qk(&mut q, &mut k, &step, hd)?;
    b.write_kv(&mut cache, 0, &k, &v, &step)?;
    let a = b.attention(&q, &cache, 0, &step, &geometry(d))?;
    let o = b.linear(&a, &w.o)?;
    let x = b.add_rms_norm(&o, &mut residual, &w.post_norm, EPS)?;
    let (y, logits) = match &w.mlp {
        MlpWeights::Moe { router, experts } => {
            let logits = match route {
                Some(r) => r,
                None => b.linear(&x, router)?,
            };
            (b.moe(&x, &logits, experts)?, Some(logits))
        }
        m => (mlp(b, &x, m)?, None),
    };
    b.add_inplace(&mut residual, &y)?;
    sw.stop()?;
    let logits = match logits {
        Some(l) => Some(b.to_host_f32(&l)?),
        None => None,
    };
    Ok((b.to_host_f32(&residual)?, logits))
}

/// Every real-shape check of `shapes` on `npu` against the CPU backend.
pub fn real_shape_checks(npu: &AscendBackend, shapes: &RealShapes) -> Vec<OpCheck> {
    let mut out = Vec::new();
    for d in &shapes.layers {
        let cpu = CpuBackend::new();
        let s = Batch::new(shapes, d.head_dim);
        let (wc, wn) = match weights(&cpu, npu, d) {
            Ok(w) => w,
            Err(e) => {
                out.push(OpCheck {
                    op: format!("{} weights", d.model),
                    error: Some(e.to_string()),
                    ..OpCheck::default()
                });
                continue;
            }
        };
        for op in Op::of(d) {
            let mut timer = DeviceTimer::new(npu);
            let (got, want) = if op == Op::Layer {
                // The CPU routes by the NPU's router logits: BF16 rounding of a logit may
                // swap a token's k-th and (k+1)-th expert, a real difference no bound covers
                // (the router's own output is the "router" check).
                let got = layer(npu, d, &wn, &s, None, &mut timer);
                let route = got.as_ref().ok().and_then(|(_, r)| r.clone());
                let want = layer(&cpu, d, &wc, &s, route.as_deref(), &mut Untimed);
                (got.map(|g| g.0), want.map(|w| w.0))
            } else {
                let got = run(op, npu, d, &wn, &s, &mut timer);
                (got, run(op, &cpu, d, &wc, &s, &mut Untimed))
            };
            let device_us = timer.total_us();
            let mut c = verdict(
                format!("{} {}", d.model, op.name()),
                op.shape(d, &s),
                want,
                got,
                |want| op.bound_units() * BF16_ROUNDOFF * max_abs(want),
            );
            match device_us {
                Ok(us) => c.device_us = us,
                Err(e) if c.error.is_none() => {
                    c.passed = false;
                    c.error = Some(format!("device timing: {e}"));
                }
                Err(_) => {}
            }
            out.push(c);
        }
    }
    out
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}
