//! Best-of-N timings of the decode GEMV, the prefill/batched matmuls (the F32 path's `gemm`
//! against the BF16 policy's `vdpbf16ps` GEMM) and paged attention (F32 and BF16 KV) on every
//! kernel level this CPU has, at Qwen3-0.6B shapes. Best-of-N, unlike criterion's mean, stays readable on a machine
//! other jobs share. `cargo run --release -p qwen3-backend --example kernel_levels [reps]`

use std::time::Instant;

use half::bf16;
use qwen3_backend::cpu::attention::{paged_attention, PagedKv, TokenPlace};
use qwen3_backend::cpu::gemm_bf16::gemm_bf16_at;
use qwen3_backend::cpu::gemv::gemv_bf16_at;
use qwen3_backend::cpu::matmul::{matmul_t, WeightRows};
use qwen3_backend::cpu::simd::supported_levels;
use qwen3_backend::cpu::simd::Level;
use qwen3_backend::cpu::vector::kernels;
use qwen3_backend::AttnGeometry;

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("threads: {}", rayon::current_num_threads());
    let bw = qwen3_backend::cpu::bandwidth::measure(512 << 20, 5);
    println!(
        "bandwidth: read {:.1} GB/s, triad {:.1} GB/s",
        bw.read_gb_s, bw.triad_gb_s
    );
    for (name, n, k) in [
        ("gate_up", 6144, 1024),
        ("down", 1024, 3072),
        ("lm_head", 151_936, 1024),
    ] {
        let w: Vec<bf16> = pseudo(n * k, 7).into_iter().map(bf16::from_f32).collect();
        for m in [1usize, 2, 4, 8] {
            let x = pseudo(m * k, 3);
            let mut out = vec![0.0; m * n];
            for level in supported_levels().into_iter().skip(1) {
                let t = best(reps, || gemv_bf16_at(level, &x, m, k, &w, n, &mut out));
                println!(
                    "gemv {name:8} m={m} {:11} {:8.3} ms  {:5.1} GB/s of weights",
                    level.name(),
                    t * 1e3,
                    (n * k * 2) as f64 / t / 1e9
                );
            }
        }
    }
    for (name, n, k) in [
        ("qkv", 4096, 1024),
        ("o_proj", 1024, 2048),
        ("gate_up", 6144, 1024),
        ("down", 1024, 3072),
    ] {
        let w: Vec<bf16> = pseudo(n * k, 7).into_iter().map(bf16::from_f32).collect();
        for m in [2usize, 8, 128, 512] {
            let x = pseudo(m * k, 3);
            let mut out = vec![0.0; m * n];
            let gflop = |t: f64| (2 * m * n * k) as f64 / t / 1e9;
            let t = best(reps, || {
                matmul_t(&x, m, k, WeightRows::BF16(&w), n, &mut out)
            });
            println!(
                "matmul {name:8} m={m:4} f32 gemm    {:8.3} ms  {:6.1} GFLOP/s",
                t * 1e3,
                gflop(t)
            );
            if Level::Avx512Bf16.supported() {
                let t = best(reps, || {
                    gemm_bf16_at(Level::Avx512Bf16, &x, m, k, &w, n, &mut out)
                });
                println!(
                    "matmul {name:8} m={m:4} bf16 gemm   {:8.3} ms  {:6.1} GFLOP/s",
                    t * 1e3,
                    gflop(t)
                );
            }
        }
    }
    let (heads, kv_heads, d, block) = (16, 8, 128, 16);
    let geo = AttnGeometry {
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: d,
        scale: 1.0 / (d as f32).sqrt(),
        sliding_window: None,
    };
    for ctx in [256usize, 512, 4096] {
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
        let q = pseudo(heads * d, 4);
        let places = [TokenPlace {
            seq: 0,
            pos: ctx as u32 - 1,
        }];
        let (kb, vb): (Vec<bf16>, Vec<bf16>) = (
            k.iter().map(|&x| bf16::from_f32(x)).collect(),
            v.iter().map(|&x| bf16::from_f32(x)).collect(),
        );
        let kv16 = PagedKv {
            k: &kb[..],
            v: &vb[..],
            block_size: block,
            block_tables: &table,
            max_blocks_per_seq: blocks,
        };
        let mut out = vec![0.0; heads * d];
        for level in supported_levels() {
            let kern = kernels(level);
            let t = best(reps, || {
                paged_attention(&q, &places, &kv, &geo, kern, &mut out)
            });
            let t16 = best(reps, || {
                paged_attention(&q, &places, &kv16, &geo, kern, &mut out)
            });
            println!(
                "attention decode ctx={ctx:5} {:11} {:8.3} ms F32 KV, {:8.3} ms BF16 KV",
                level.name(),
                t * 1e3,
                t16 * 1e3
            );
        }
    }

    // A decode step's attention at batch 8 as the engine meets it: 8 sequences of 192 tokens,
    // over 28 layers' caches (352 MB, so K/V come from DRAM, not L3).
    let (seqs, ctx, layers) = (8usize, 192usize, 28usize);
    let per_seq = ctx.div_ceil(block);
    let blocks = seqs * per_seq;
    let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..layers)
        .map(|l| {
            (
                pseudo(blocks * block * kv_heads * d, 10 + l as u32),
                pseudo(blocks * block * kv_heads * d, 100 + l as u32),
            )
        })
        .collect();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let q = pseudo(seqs * heads * d, 5);
    let places: Vec<TokenPlace> = (0..seqs as u32)
        .map(|s| TokenPlace {
            seq: s,
            pos: ctx as u32 - 1,
        })
        .collect();
    let mut out = vec![0.0; seqs * heads * d];
    for level in supported_levels().into_iter().skip(1) {
        let kern = kernels(level);
        let t = best(reps, || {
            for (k, v) in &caches {
                let kv = PagedKv {
                    k,
                    v,
                    block_size: block,
                    block_tables: &table,
                    max_blocks_per_seq: per_seq,
                };
                paged_attention(&q, &places, &kv, &geo, kern, &mut out);
            }
        });
        println!(
            "attention decode batch 8, ctx 192, 28 layers {:11} {:8.3} ms  {:5.1} GB/s of K/V",
            level.name(),
            t * 1e3,
            (layers * 2 * seqs * ctx * kv_heads * d * 4) as f64 / t / 1e9
        );
    }
}
