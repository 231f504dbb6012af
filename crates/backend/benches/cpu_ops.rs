//! The CPU backend's hot ops at Qwen3-0.6B shapes (hidden 1024, 16 heads, 8 KV heads,
//! head_dim 128, intermediate 3072, vocab 151,936), and the sampler over the full vocabulary.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use qwen3_backend::cpu::attention::{paged_attention, PagedKv, TokenPlace};
use qwen3_backend::cpu::gemv::{gemv_bf16, gemv_bf16_at};
use qwen3_backend::cpu::matmul::{matmul_t, WeightRows};
use qwen3_backend::cpu::simd::supported_levels;
use qwen3_backend::cpu::vector::kernels;
use qwen3_backend::sampling::{sample_row, SampleRow, SamplingParams};
use qwen3_backend::AttnGeometry;

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_bf16_0.6b");
    // (name, out, in): the projections of one layer, and the tied lm_head.
    let shapes = [
        ("qkv", 4096, 1024),
        ("o_proj", 1024, 2048),
        ("gate_up", 6144, 1024),
        ("down", 1024, 3072),
        ("lm_head", 151_936, 1024),
    ];
    for (name, n, k) in shapes {
        let w: Vec<bf16> = pseudo(n * k, 7).into_iter().map(bf16::from_f32).collect();
        for m in [1usize, 8, 128] {
            if name == "lm_head" && m == 128 {
                continue;
            }
            let x = pseudo(m * k, 3);
            let mut out = vec![0.0; m * n];
            g.throughput(Throughput::Bytes((n * k * 2) as u64));
            g.bench_with_input(BenchmarkId::new(name, m), &m, |b, &m| {
                b.iter(|| matmul_t(&x, m, k, WeightRows::BF16(&w), n, &mut out))
            });
            if m <= 8 {
                g.bench_with_input(BenchmarkId::new(format!("{name}_gemv"), m), &m, |b, &m| {
                    b.iter(|| gemv_bf16(&x, m, k, &w, n, &mut out))
                });
            }
        }
    }
    g.finish();
}

/// The decode GEMV on every kernel level this CPU has, at the biggest matrix (the tied
/// lm_head) and one layer's MLP input, batch 1 and 8.
fn gemv_levels(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_levels_0.6b");
    for (name, n, k) in [("gate_up", 6144, 1024), ("lm_head", 151_936, 1024)] {
        let w: Vec<bf16> = pseudo(n * k, 7).into_iter().map(bf16::from_f32).collect();
        g.throughput(Throughput::Bytes((n * k * 2) as u64));
        for m in [1usize, 8] {
            let x = pseudo(m * k, 3);
            let mut out = vec![0.0; m * n];
            for level in supported_levels() {
                let id = BenchmarkId::new(format!("{name}_m{m}"), level.name());
                g.bench_function(id, |b| {
                    b.iter(|| gemv_bf16_at(level, &x, m, k, &w, n, &mut out))
                });
            }
        }
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("paged_attention_0.6b");
    let (heads, kv_heads, d, block) = (16, 8, 128, 16);
    let geo = AttnGeometry {
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: d,
        scale: 1.0 / (d as f32).sqrt(),
        sliding_window: None,
    };
    for ctx in [512usize, 4096] {
        let blocks = ctx.div_ceil(block);
        let k = pseudo(blocks * block * kv_heads * d, 1);
        let v = pseudo(blocks * block * kv_heads * d, 2);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let kv = PagedKv {
            k: &k,
            v: &v,
            block_size: block,
            block_tables: &table,
            max_blocks_per_seq: blocks,
        };
        // One decode token at the end of the context.
        let q = pseudo(heads * d, 4);
        let places = [TokenPlace {
            seq: 0,
            pos: ctx as u32 - 1,
        }];
        let mut out = vec![0.0; heads * d];
        for level in supported_levels() {
            let kern = kernels(level);
            let id = BenchmarkId::new(format!("decode_{ctx}"), level.name());
            g.bench_function(id, |b| {
                b.iter(|| paged_attention(&q, &places, &kv, &geo, kern, &mut out))
            });
        }
    }
    g.finish();
}

fn sampler(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampler_vocab_151936");
    let logits = pseudo(151_936, 9)
        .into_iter()
        .map(|x| x * 20.0)
        .collect::<Vec<_>>();
    let cases = [
        ("greedy", SamplingParams::greedy()),
        (
            "top_k50_top_p0.9",
            SamplingParams {
                temperature: 0.7,
                top_k: 50,
                top_p: 0.9,
                ..SamplingParams::default()
            },
        ),
        (
            "top_p0.95_full_vocab",
            SamplingParams {
                temperature: 0.7,
                top_p: 0.95,
                ..SamplingParams::default()
            },
        ),
        (
            "greedy_logprobs5",
            SamplingParams {
                logprobs: Some(5),
                ..SamplingParams::greedy()
            },
        ),
    ];
    let mut scratch = Vec::new();
    for (name, p) in cases {
        let row = SampleRow {
            params: &p,
            prompt_tokens: &[],
            output_tokens: &[],
            suppressed: &[],
            allowed: None,
            rng_seed: 1,
        };
        g.bench_function(name, |b| b.iter(|| sample_row(&logits, &row, &mut scratch)));
    }
    g.finish();
}

criterion_group!(benches, matmul, gemv_levels, attention, sampler);
criterion_main!(benches);
