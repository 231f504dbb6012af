//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use qwen3_engine::fake_executor::{byte_level_test_tokenizer, FakeControl, FakeExecutor, TokenFn};
use qwen3_engine::{
    EngineConfig, EngineCore, EngineRequest, EngineStats, FinishReason, RequestOutput, StopReason,
};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Byte tokens 0..256 plus `<|endoftext|>` (256, the EOS here); `<|im_end|>` is 257.
pub const VOCAB: u32 = 257;
pub const EOS: u32 = 256;
pub const IM_END: u32 = 257;

pub fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(byte_level_test_tokenizer().unwrap())
}

/// The Qwen3 tokenizer fixture, when another engineer's fixture script has produced it.
pub fn qwen_tokenizer() -> Option<Arc<Tokenizer>> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-qwen3/tokenizer.json");
    if !p.exists() {
        eprintln!("skipping: {} not found", p.display());
        return None;
    }
    Some(Arc::new(Tokenizer::from_file(p).unwrap()))
}

pub fn config() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks: 512,
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        max_model_len: 256,
        enable_prefix_caching: false,
        enable_chunked_prefill: false,
        max_waiting_requests: 1000,
        eos_token_ids: vec![EOS],
        async_scheduling: false,
    }
}

pub fn core_with(cfg: &EngineConfig, f: Option<TokenFn>) -> (EngineCore, Arc<FakeControl>) {
    core_with_tok(cfg, f, tokenizer(), VOCAB)
}

pub fn core_with_tok(
    cfg: &EngineConfig,
    f: Option<TokenFn>,
    tok: Arc<Tokenizer>,
    vocab: u32,
) -> (EngineCore, Arc<FakeControl>) {
    let mut fake = FakeExecutor::new(cfg.block_size, cfg.num_blocks, vocab);
    if let Some(f) = f {
        fake = fake.with_token_fn(f);
    }
    let control = fake.control();
    let core = EngineCore::new(cfg.clone(), Box::new(fake), tok).unwrap();
    (core, control)
}

/// Everything one request produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Collected {
    pub tokens: Vec<u32>,
    pub text: String,
    pub deltas: Vec<String>,
    pub finish: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    pub num_cached_tokens: usize,
    pub outputs: Vec<RequestOutput>,
}

impl Collected {
    /// What must not depend on batching: tokens, text, and how it ended.
    pub fn result(&self) -> (Vec<u32>, String, Option<FinishReason>, Option<StopReason>) {
        (
            self.tokens.clone(),
            self.text.clone(),
            self.finish.clone(),
            self.stop_reason.clone(),
        )
    }

    pub fn absorb(&mut self, o: RequestOutput) {
        assert!(self.finish.is_none(), "output after the final one: {o:?}");
        assert!(o.token_ids.len() <= 1, "one token per step");
        self.tokens.extend_from_slice(&o.token_ids);
        self.text.push_str(&o.text);
        self.deltas.push(o.text.clone());
        if !o.token_ids.is_empty() {
            assert_eq!(o.num_output_tokens, self.tokens.len());
        }
        self.num_cached_tokens = o.num_cached_tokens;
        if o.finish_reason.is_some() {
            self.finish = o.finish_reason.clone();
            self.stop_reason = o.stop_reason.clone();
        }
        self.outputs.push(o);
    }
}

pub struct Tracked {
    pub rx: UnboundedReceiver<RequestOutput>,
    pub out: Collected,
}

impl Tracked {
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(o) = self.rx.try_recv() {
            self.out.absorb(o);
            n += 1;
        }
        n
    }
}

pub fn add(core: &mut EngineCore, req: EngineRequest) -> Tracked {
    let (tx, rx) = unbounded_channel();
    core.add_request(req, tx).unwrap();
    Tracked {
        rx,
        out: Collected::default(),
    }
}

/// Runs `reqs` (arrival step, request) through one engine; returns each request's outcome
/// and the final stats. Asserts one output per step per request while it runs.
pub fn run_schedule(
    cfg: &EngineConfig,
    f: Option<TokenFn>,
    reqs: &[(usize, EngineRequest)],
) -> (Vec<Collected>, EngineStats) {
    let (mut core, _c) = core_with(cfg, f);
    let mut tracked: Vec<Option<Tracked>> = (0..reqs.len()).map(|_| None).collect();
    let mut step = 0;
    loop {
        for (i, (at, r)) in reqs.iter().enumerate() {
            if *at == step {
                tracked[i] = Some(add(&mut core, r.clone()));
            }
        }
        let all_arrived = reqs.iter().all(|(at, _)| *at <= step);
        if all_arrived && !core.has_work() {
            break;
        }
        core.step();
        for t in tracked.iter_mut().flatten() {
            assert!(t.drain() <= 1, "more than one output in a step");
        }
        step += 1;
        assert!(step < 100_000, "engine does not make progress");
    }
    let stats = core.stats();
    assert_eq!(core.num_free_blocks(), cfg.num_blocks - 1, "blocks leaked");
    let outs = tracked
        .into_iter()
        .map(|t| t.map(|t| t.out).unwrap_or_default())
        .collect();
    (outs, stats)
}

/// Each request alone on a roomy engine: the reference output.
pub fn run_alone(f: Option<TokenFn>, reqs: &[(usize, EngineRequest)]) -> Vec<Collected> {
    let cfg = EngineConfig {
        num_blocks: 1024,
        max_num_batched_tokens: 4096,
        ..config()
    };
    reqs.iter()
        .map(|(_, r)| {
            let (mut o, _) = run_schedule(&cfg, f.clone(), &[(0, r.clone())]);
            o.remove(0)
        })
        .collect()
}

/// Deterministic pseudo-random numbers (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// 4 requests of up to 40 + 40 tokens, all at once: 24 usable blocks of 4 tokens (a
/// `num_blocks: 25` config) hold barely one, so they preempt each other.
pub fn preemption_workload() -> Vec<(usize, EngineRequest)> {
    let mut rng = Rng(3);
    (0..4)
        .map(|i| {
            let prompt: Vec<u32> = (0..rng.range(20, 40))
                .map(|_| rng.range(0, 256) as u32)
                .collect();
            let mut r = EngineRequest::new(format!("p{i}"), prompt);
            r.max_tokens = Some(40);
            r.ignore_eos = true;
            (0, r)
        })
        .collect()
}

/// A mixed workload: varied lengths, shared prefixes, staggered arrivals.
pub fn workload(
    seed: u64,
    n: usize,
    max_prompt: usize,
    max_out: usize,
) -> Vec<(usize, EngineRequest)> {
    let mut rng = Rng(seed);
    let shared: Vec<u32> = (0..max_prompt).map(|_| rng.range(0, 256) as u32).collect();
    (0..n)
        .map(|i| {
            let len = rng.range(1, max_prompt);
            let prompt: Vec<u32> = if i % 3 == 0 {
                // Shares a prefix with other requests (prefix-cache hits).
                let k = rng.range(1, len + 1);
                shared[..k]
                    .iter()
                    .copied()
                    .chain((k..len).map(|_| rng.range(0, 256) as u32))
                    .collect()
            } else {
                (0..len).map(|_| rng.range(0, 256) as u32).collect()
            };
            let mut r = EngineRequest::new(format!("req-{i}"), prompt);
            r.max_tokens = Some(rng.range(1, max_out) as u32);
            (rng.range(0, 12), r)
        })
        .collect()
}
