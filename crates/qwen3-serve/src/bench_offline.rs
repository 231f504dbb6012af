//! `qwen3-serve bench latency` and `bench throughput`: one batch of requests of given input and
//! output lengths straight through the engine (no HTTP), reporting prefill and decode speed.

use std::time::Instant;

use qwen3_backend_ascend::host_calls::{self, PerStep};
use qwen3_engine::{EngineHandle, EngineRequest};

use anyhow::Context;
use qwen3_model::synthetic::{write_model_as, Shape, Storage};

use crate::cli::{BenchOfflineArgs, MakeModelArgs, ModelArgs};
use crate::runtime::{load, Limits};

/// Summary of one offline run.
#[derive(Debug, serde::Serialize)]
pub struct OfflineResult {
    pub batch_size: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Time from submission until every request has its first token.
    pub prefill_seconds: f64,
    pub prefill_tokens_per_second: f64,
    /// Output tokens after the first, over the time after the last first token.
    pub decode_tokens_per_second: f64,
    pub total_seconds: f64,
    pub output_tokens_per_second: f64,
    pub requests_per_second: f64,
    /// BF16 weight bytes one decode step reads (linear weights and the LM head), when dense.
    pub weight_bytes_per_token: Option<u64>,
    /// Memory bandwidth measured on this machine with the same threads, after the run.
    pub memory_read_gb_s: f64,
    pub memory_triad_gb_s: f64,
    pub cpu_threads: usize,
    /// On the NPU: what the host asked of the device per decode step of one rank.
    #[serde(skip)]
    pub npu_per_step: Option<PerStep>,
}

/// `bench make-model`: a random-weight model of a named shape, with the bundled tokenizer
/// (its vocabulary is Qwen3's), so speed benchmarks need no download.
pub fn make_model(args: &MakeModelArgs) -> anyhow::Result<()> {
    let mut shape = Shape::by_name(&args.shape)?;
    shape.layers = args.layers.unwrap_or(shape.layers).max(1);
    shape.vocab = args.vocab.unwrap_or(shape.vocab).max(1);
    let storage = if args.w8a8 {
        Storage::W8A8Dynamic
    } else {
        Storage::Bf16
    };
    write_model_as(&args.out, &shape, args.seed, storage)?;
    let fixture = crate::model_dir::bundled_model();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(f), args.out.join(f))
            .with_context(|| format!("copying {f} from {}", fixture.display()))?;
    }
    println!(
        "wrote {} ({}{}, {:.2} GB of BF16 weights read per decode token before quantization)",
        args.out.display(),
        shape.name,
        if args.w8a8 { ", W8A8_DYNAMIC" } else { "" },
        shape.weight_bytes_per_token() as f64 / 1e9
    );
    Ok(())
}

fn prompt(i: usize, len: usize, vocab: u32) -> Vec<u32> {
    // Deterministic "random" ids from the regular vocabulary, distinct per request so the
    // prefix cache does not turn the benchmark into a cache test.
    (0..len)
        .map(|j| {
            let x = (i as u64 * 1_000_003 + j as u64 * 7919 + 12345)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((x >> 33) % u64::from(vocab.max(1))) as u32
        })
        .collect()
}

pub fn run(
    model: &ModelArgs,
    args: &BenchOfflineArgs,
    batch_size: usize,
) -> anyhow::Result<OfflineResult> {
    let limits = Limits {
        max_num_seqs: batch_size.max(1),
        max_num_batched_tokens: Some(args.max_num_batched_tokens),
        block_size: None,
        memory_utilization: 0.9,
        enable_prefix_caching: false,
        enable_chunked_prefill: true,
        max_waiting_requests: batch_size.max(1),
        async_scheduling: None,
    };
    let loaded = load(model, &limits)?;
    let shape = std::fs::read_to_string(loaded.dir.join("config.json"))
        .ok()
        .and_then(|t| qwen3_model::config::ModelConfig::from_json_str(&t).ok())
        .and_then(|c| Shape::from_config(&c));
    // Ids below 151,643 are ordinary tokens in Qwen3's vocabulary (and below the model's,
    // for a benchmark model of a smaller vocabulary).
    let vocab = (loaded.tokenizer.get_vocab_size(false) as u32)
        .min(151_643)
        .min(shape.map_or(u32::MAX, |s| s.vocab as u32));
    let structured = match &args.json_schema {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let compiler = crate::structured::compiler(&loaded, Default::default());
            let kind = qwen3_engine::batch::ConstraintKind::JsonSchema(text);
            compiler.compile(&kind)?;
            Some((compiler, kind))
        }
    };
    let mut core =
        qwen3_engine::EngineCore::new(loaded.engine_config, loaded.executor, loaded.tokenizer)?;
    if let Some((c, _)) = &structured {
        core = core.with_structured(std::sync::Arc::clone(c));
    }
    let engine = EngineHandle::start_core(core)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The host's calls during pure decode steps (the backend tells them apart).
    let calls0 = host_calls::snapshot();
    let (first_tokens, done, total_out) = rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..batch_size {
            let mut r = EngineRequest::new(format!("bench-{i}"), prompt(i, args.input_len, vocab));
            r.max_tokens = Some(args.output_len as u32);
            r.ignore_eos = true;
            r.sampling.structured =
                structured
                    .as_ref()
                    .map(|(_, kind)| qwen3_engine::batch::StructuredSpec {
                        kind: kind.clone(),
                        after_token: None,
                    });
            let mut s = engine.submit(r)?;
            tasks.push(tokio::spawn(async move {
                let mut first = None;
                let mut n = 0;
                while let Some(o) = s.next().await {
                    if first.is_none() && !o.token_ids.is_empty() {
                        first = Some(start.elapsed().as_secs_f64());
                    }
                    n = o.num_output_tokens;
                }
                (first.unwrap_or(0.0), n)
            }));
        }
        let mut firsts = Vec::new();
        let mut outs = 0;
        for t in tasks {
            let (f, n) = t.await?;
            firsts.push(f);
            outs += n;
        }
        anyhow::Ok((firsts, start.elapsed().as_secs_f64(), outs))
    })?;
    let npu_per_step = host_calls::snapshot().since(&calls0).per_decode_step();
    engine.shutdown(std::time::Duration::from_secs(1));
    // 1 GiB buffers: far past any cache, like the weights.
    let bw = qwen3_backend::cpu::bandwidth::measure(1 << 30, 3);
    let prefill = first_tokens.iter().copied().fold(0.0, f64::max);
    let decode_time = (done - prefill).max(1e-9);
    let r = OfflineResult {
        batch_size,
        input_len: args.input_len,
        output_len: args.output_len,
        prefill_seconds: prefill,
        prefill_tokens_per_second: (batch_size * args.input_len) as f64 / prefill.max(1e-9),
        decode_tokens_per_second: total_out.saturating_sub(batch_size) as f64 / decode_time,
        total_seconds: done,
        output_tokens_per_second: total_out as f64 / done.max(1e-9),
        requests_per_second: batch_size as f64 / done.max(1e-9),
        weight_bytes_per_token: shape.map(|s| s.weight_bytes_per_token()),
        memory_read_gb_s: bw.read_gb_s,
        memory_triad_gb_s: bw.triad_gb_s,
        cpu_threads: rayon::current_num_threads(),
        npu_per_step,
    };
    Ok(r)
}

pub fn print(r: &OfflineResult) {
    println!(
        "batch {} × ({} in, {} out)",
        r.batch_size, r.input_len, r.output_len
    );
    println!(
        "prefill: {:.3} s, {:.1} tokens/s",
        r.prefill_seconds, r.prefill_tokens_per_second
    );
    println!(
        "decode:  {:.1} tokens/s (all sequences together)",
        r.decode_tokens_per_second
    );
    println!(
        "total:   {:.3} s, {:.1} output tokens/s, {:.2} requests/s",
        r.total_seconds, r.output_tokens_per_second, r.requests_per_second
    );
    println!(
        "memory:  {:.1} GB/s read, {:.1} GB/s triad ({} threads)",
        r.memory_read_gb_s, r.memory_triad_gb_s, r.cpu_threads
    );
    if let Some(p) = &r.npu_per_step {
        // Per pure decode step of one rank (the bench's own measure of how host-bound the
        // NPU path is).
        println!("launches per decode step: {:.1}", p.launches);
        println!("graph launches per decode step: {:.1}", p.graph_launches);
        println!("collectives per decode step: {:.1}", p.collectives);
        println!(
            "host-to-device copies per decode step: {:.1} ({:.0} bytes)",
            p.h2d_copies, p.h2d_bytes
        );
        println!(
            "device-to-host copies per decode step: {:.1} ({:.0} bytes)",
            p.d2h_copies, p.d2h_bytes
        );
        println!("syncs per decode step: {:.1}", p.syncs);
        println!("host us per decode step: {:.0}", p.host_us);
    }
    if let Some(b) = r.weight_bytes_per_token {
        // One decode step reads every weight once, whatever the batch: steps/s × bytes.
        let steps = r.decode_tokens_per_second / r.batch_size.max(1) as f64;
        println!(
            "weights: {:.3} GB read per decode step → {:.1} GB/s effective; the read bandwidth allows {:.1} steps/s",
            b as f64 / 1e9,
            steps * b as f64 / 1e9,
            r.memory_read_gb_s * 1e9 / b as f64
        );
    }
}
