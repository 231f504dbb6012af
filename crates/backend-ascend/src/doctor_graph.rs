//! `doctor`'s decode-graph timing: one decode step of a few transformer layers at a real
//! layer shape (Qwen3-8B's by default, random BF16 weights), run eagerly, with piecewise
//! graphs and with a full graph, each timed on the host from `prepare_step` until the
//! step's output is back (device time included), after warm-up steps that capture.

use std::sync::Arc;
use std::time::Instant;

use ascend_sys::Cann;
use half::bf16;
use qwen3_backend::{AttnGeometry, Backend, HostData, KvCacheShape, Result, RopeSpec, StepMeta};
use serde::Serialize;

use crate::{AscendBackend, AscendOptions, GraphKind};

/// The layer shape and batch of the timed step.
#[derive(Clone, Copy, Debug)]
pub struct DecodeShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub batch: usize,
    /// Tokens of context per sequence (the KV cache read by attention).
    pub context: usize,
}

/// Qwen3-8B's layer shape, 2 layers, 8 sequences of 1,024 tokens.
pub const QWEN3_8B: DecodeShape = DecodeShape {
    hidden: 4096,
    heads: 32,
    kv_heads: 8,
    head_dim: 128,
    intermediate: 12288,
    layers: 2,
    batch: 8,
    context: 1024,
};

/// One mode's timing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphTiming {
    /// "eager", "piecewise" or "full" (what ran: a mode CANN cannot run says why).
    pub mode: String,
    /// Median wall time of one decode step, in milliseconds.
    pub step_ms: Option<f64>,
    pub error: Option<String>,
}

const BLOCK: usize = 128;
const STEPS: usize = 5;
/// Rows of the embedding table the step's token ids index.
const VOCAB: usize = 64;

struct Layer {
    norm: crate::AscendTensor,
    qkv: [crate::AscendTensor; 3],
    o: crate::AscendTensor,
    gate_up: crate::AscendTensor,
    down: crate::AscendTensor,
}

fn weight(b: &AscendBackend, rows: usize, cols: usize, seed: usize) -> Result<crate::AscendTensor> {
    // Small deterministic values: what matters here is the shapes, not the numbers.
    let v: Vec<bf16> = (0..rows * cols)
        .map(|i| bf16::from_f32((((i * 31 + seed * 7) % 97) as f32 - 48.0) * 1e-3))
        .collect();
    b.upload(HostData::BF16(&v), &[rows, cols])
}

fn layers(b: &AscendBackend, s: &DecodeShape) -> Result<Vec<Layer>> {
    let (h, q, kv) = (s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    (0..s.layers)
        .map(|l| {
            Ok(Layer {
                norm: b.upload(HostData::BF16(&vec![bf16::ONE; h]), &[h])?,
                qkv: [
                    weight(b, q, h, l)?,
                    weight(b, kv, h, l + 1)?,
                    weight(b, kv, h, l + 2)?,
                ],
                o: weight(b, h, q, l + 3)?,
                gate_up: weight(b, 2 * s.intermediate, h, l + 4)?,
                down: weight(b, h, s.intermediate, l + 5)?,
            })
        })
        .collect()
}

/// One decode step over `layers` (pre-norm attention and MLP blocks): the step's output.
fn step(
    b: &AscendBackend,
    s: &DecodeShape,
    ws: &[Layer],
    embed: &crate::AscendTensor,
    cache: &mut crate::AscendKvCache,
    meta: &StepMeta<'_>,
) -> Result<Vec<f32>> {
    let st = b.prepare_step(meta)?;
    // From the step's token ids, as the model does: a graph reads its inputs from buffers
    // it owns (an upload outside it would be a new buffer at every replay).
    let mut x = b.embedding(embed, &st, 0)?;
    let g = AttnGeometry {
        num_heads: s.heads,
        num_kv_heads: s.kv_heads,
        head_dim: s.head_dim,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        sliding_window: None,
    };
    for (l, w) in ws.iter().enumerate() {
        let a = b.rms_norm(&x, &w.norm, 1e-6)?;
        let mut q = b.linear(&a, &w.qkv[0])?;
        let mut k = b.linear(&a, &w.qkv[1])?;
        let v = b.linear(&a, &w.qkv[2])?;
        b.rope_qk(&mut q, &mut k, &st, s.head_dim)?;
        b.write_kv(cache, l, &k, &v, &st)?;
        let o = b.attention(&q, cache, l, &st, &g)?;
        let o = b.linear(&o, &w.o)?;
        b.add_inplace(&mut x, &o)?;
        let m = b.rms_norm(&x, &w.norm, 1e-6)?;
        let gu = b.linear(&m, &w.gate_up)?;
        let act = b.silu_mul_merged(&gu)?;
        let d = b.linear(&act, &w.down)?;
        b.add_inplace(&mut x, &d)?;
    }
    b.to_host_f32(&x)
}

/// Times one mode: `None` options mean eager.
fn time_mode(cann: &Arc<Cann>, s: &DecodeShape, graph: Option<bool>) -> Result<(String, f64)> {
    let opts = AscendOptions {
        graph_capture: graph.is_some(),
        full_graph: graph.unwrap_or(false),
        capture_batch_sizes: vec![s.batch],
        ..AscendOptions::default()
    };
    let b = AscendBackend::with_options(Arc::clone(cann), 0, opts)?;
    let mode = match (graph, b.graph_kind()) {
        (None, _) => "eager".to_string(),
        (Some(false), _) => "piecewise".to_string(),
        (Some(true), GraphKind::Full) => "full".to_string(),
        (Some(true), GraphKind::Piecewise(why)) => format!("piecewise (not full: {why})"),
    };
    let ws = layers(&b, s)?;
    let embed = weight(&b, VOCAB, s.hidden, 9)?;
    let blocks_per_seq = s.context.div_ceil(BLOCK) + 1;
    let mut cache = b.alloc_kv_cache(KvCacheShape {
        num_layers: s.layers,
        num_blocks: 1 + s.batch * blocks_per_seq,
        block_size: BLOCK,
        num_kv_heads: s.kv_heads,
        head_dim: s.head_dim,
    })?;
    let rope = RopeSpec {
        inv_freq: (0..s.head_dim / 2)
            .map(|i| 1.0 / 1e6f32.powf(2.0 * i as f32 / s.head_dim as f32))
            .collect(),
        mscale: 1.0,
    };
    let mut times = Vec::new();
    // The first steps capture; the rest replay (or stay eager).
    for t in 0..STEPS + 2 {
        let ctx = s.context + t;
        let tables: Vec<u32> = (0..s.batch * blocks_per_seq)
            .map(|i| 1 + i as u32)
            .collect();
        // Each sequence's new token: its block (ctx - 1) / BLOCK, at offset (ctx - 1) % BLOCK.
        let slots: Vec<u32> = (0..s.batch)
            .map(|i| {
                let p = ctx - 1;
                tables[i * blocks_per_seq + p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32
            })
            .collect();
        let (ids, pos) = (vec![7u32; s.batch], vec![ctx as u32 - 1; s.batch]);
        let starts: Vec<u32> = (0..s.batch as u32).collect();
        let (ql, cl) = (vec![1u32; s.batch], vec![ctx as u32; s.batch]);
        let meta = StepMeta {
            token_ids: &ids,
            positions: &pos,
            slot_mapping: &slots,
            query_start: &starts,
            query_len: &ql,
            context_len: &cl,
            block_tables: &tables,
            max_blocks_per_seq: blocks_per_seq,
            block_size: BLOCK,
            rope: &rope,
        };
        let t0 = Instant::now();
        step(&b, s, &ws, &embed, &mut cache, &meta)?;
        if t >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((mode, times[times.len() / 2]))
}

/// A small shape for the emulated CANN, where timing says nothing and real shapes take
/// minutes: the modes still run, so the path is exercised.
const EMULATED: DecodeShape = DecodeShape {
    hidden: 256,
    heads: 2,
    kv_heads: 1,
    head_dim: 128,
    intermediate: 512,
    layers: 2,
    batch: 2,
    context: 130,
};

/// One decode step, eager, piecewise and full, on device 0: at Qwen3-8B's layer shape on
/// hardware, at a small one on the emulator.
pub fn decode_graph_timings(cann: &Arc<Cann>) -> Vec<GraphTiming> {
    let emulated = cann.soc_name().is_some_and(|s| s.ends_with("-emu"));
    timings_at(cann, if emulated { &EMULATED } else { &QWEN3_8B })
}

/// The doctor's lines for the timings.
pub fn write_timings(f: &mut std::fmt::Formatter<'_>, t: &[GraphTiming]) -> std::fmt::Result {
    if !t.is_empty() {
        writeln!(f, "Decode step (device 0, median of {STEPS}):")?;
    }
    for g in t {
        match (&g.step_ms, &g.error) {
            (Some(ms), _) => writeln!(f, "  {:<10} {ms:.3} ms", g.mode)?,
            (None, e) => writeln!(
                f,
                "  {:<10} failed: {}",
                g.mode,
                e.as_deref().unwrap_or("?")
            )?,
        }
    }
    Ok(())
}

/// One decode step at `s`, eager, piecewise and full, on device 0.
pub fn timings_at(cann: &Arc<Cann>, s: &DecodeShape) -> Vec<GraphTiming> {
    [None, Some(false), Some(true)]
        .into_iter()
        .map(|g| match time_mode(cann, s, g) {
            Ok((mode, ms)) => GraphTiming {
                mode,
                step_ms: Some(ms),
                error: None,
            },
            Err(e) => GraphTiming {
                mode: match g {
                    None => "eager",
                    Some(false) => "piecewise",
                    Some(true) => "full",
                }
                .into(),
                step_ms: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}
