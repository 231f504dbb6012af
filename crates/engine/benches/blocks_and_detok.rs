//! The KV block manager (allocate a 1,024-token sequence block by block, then free it) and
//! the incremental detokenizer (256 tokens of real Qwen3 text, token by token).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use qwen3_engine::detokenizer::{IncrementalDetokenizer, StopStrings};
use qwen3_engine::kv_cache_manager::SeqBlocks;
use qwen3_engine::KvCacheManager;

const BLOCK: usize = 16;
const TOKENS: usize = 1024;

fn blocks(c: &mut Criterion) {
    let tokens: Vec<u32> = (0..TOKENS as u32).map(|i| i * 7 % 5000).collect();
    for caching in [false, true] {
        let mut kv = KvCacheManager::new(4096, BLOCK, caching);
        let mut seq = SeqBlocks::with_capacity(TOKENS, BLOCK, caching);
        let name = format!("kv_blocks/alloc_1024_tokens_then_free/caching={caching}");
        c.bench_function(&name, |b| {
            b.iter(|| {
                // One token at a time, as decode grows a sequence.
                for n in 0..TOKENS {
                    black_box(kv.allocate_slots(&mut seq, &tokens[..n + 1], n, 0, 1));
                }
                kv.free(&mut seq);
            })
        });
    }
}

fn detok(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-qwen3/tokenizer.json");
    let tok = Arc::new(tokenizers::Tokenizer::from_file(path).expect("fixture tokenizer"));
    let text = "Qwen3 是一个大型语言模型。It answers questions, writes code, and reasons step by step. 😀 ".repeat(12);
    let ids = tok.encode(text.as_str(), false).expect("encode").get_ids()[..256].to_vec();
    c.bench_function("detokenizer/256_tokens_incremental", |b| {
        b.iter(|| {
            let stop = StopStrings {
                stop: vec!["<|stop|>".into()],
                include_stop_str_in_output: false,
                min_tokens: 0,
            };
            let mut d = IncrementalDetokenizer::new(tok.clone(), &ids[..8], true, stop);
            for &t in &ids {
                black_box(d.push(t, false).expect("push"));
                black_box(d.take_delta(false));
            }
        })
    });
}

criterion_group!(benches, blocks, detok);
criterion_main!(benches);
