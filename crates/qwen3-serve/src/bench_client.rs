//! `qwen3-serve bench serve`: a load generator for any OpenAI-compatible endpoint, reporting
//! what `vllm bench serve` reports (throughputs; TTFT, TPOT, ITL, E2E mean/median/p90/p99).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::cli::BenchServeArgs;

/// One request's measurements.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    pub ok: bool,
    pub error: String,
    pub input_len: usize,
    pub output_len: usize,
    pub ttft: f64,
    pub itls: Vec<f64>,
    pub latency: f64,
}

struct Target {
    host: String,
    path_prefix: String,
}

fn parse_base(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .context("--base-url must start with http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok(Target {
        host: host.to_string(),
        path_prefix: if path.is_empty() {
            String::new()
        } else {
            format!("/{}", path.trim_end_matches('/'))
        },
    })
}

/// Sends one request and returns (status, body reader positioned at the body, chunked?).
async fn send(
    t: &Target,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> anyhow::Result<(u16, BufReader<TcpStream>, bool)> {
    let mut s = TcpStream::connect(&t.host)
        .await
        .with_context(|| format!("connecting to {}", t.host))?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        t.path_prefix, t.host, body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, r, chunked))
}

/// Reads the de-chunked body incrementally, calling `on_data` with each SSE `data:` payload.
async fn read_sse(
    mut r: BufReader<TcpStream>,
    chunked: bool,
    mut on_data: impl FnMut(&str),
) -> anyhow::Result<()> {
    let mut pending = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if chunked {
            let mut size_line = String::new();
            if r.read_line(&mut size_line).await? == 0 {
                break;
            }
            let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            buf.resize(size + 2, 0);
            r.read_exact(&mut buf).await?;
            buf.truncate(size);
        } else {
            let mut tmp = [0u8; 4096];
            let n = r.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        pending.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = pending.find("\n\n") {
            let event: String = pending.drain(..i + 2).collect();
            for line in event.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    on_data(d);
                }
            }
        }
    }
    Ok(())
}

async fn one(
    t: &Target,
    args: &BenchServeArgs,
    model: &str,
    prompt: &Value,
    input_len: usize,
    output_len: usize,
) -> Measured {
    let chat = args.endpoint.contains("chat");
    let mut body = json!({
        "model": model, "max_tokens": output_len, "stream": true,
        "stream_options": {"include_usage": true}, "temperature": 0.0, "ignore_eos": args.ignore_eos,
    });
    if chat {
        body["messages"] = json!([{"role": "user", "content": prompt}]);
    } else {
        body["prompt"] = prompt.clone();
    }
    let start = Instant::now();
    let mut m = Measured {
        input_len,
        ..Default::default()
    };
    let res = async {
        let (status, r, chunked) = send(
            t,
            "POST",
            &args.endpoint,
            &body.to_string(),
            args.api_key.as_deref(),
        )
        .await?;
        if status != 200 {
            let mut text = String::new();
            let mut r = r;
            let _ = r.read_to_string(&mut text).await;
            bail!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
        }
        let mut last = None::<Instant>;
        let mut chunks = 0usize;
        let mut usage_tokens = None;
        read_sse(r, chunked, |d| {
            if d == "[DONE]" {
                return;
            }
            let Ok(v) = serde_json::from_str::<Value>(d) else {
                return;
            };
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as usize);
            }
            let c = &v["choices"][0];
            let text = if chat {
                c["delta"]["content"].as_str()
            } else {
                c["text"].as_str()
            };
            if text.is_some_and(|t| !t.is_empty()) {
                let now = Instant::now();
                match last {
                    None => m.ttft = (now - start).as_secs_f64(),
                    Some(p) => m.itls.push((now - p).as_secs_f64()),
                }
                last = Some(now);
                chunks += 1;
            }
        })
        .await?;
        m.output_len = usage_tokens.unwrap_or(chunks);
        anyhow::Ok(())
    }
    .await;
    m.latency = start.elapsed().as_secs_f64();
    match res {
        Ok(()) => m.ok = true,
        Err(e) => m.error = e.to_string(),
    }
    m
}

/// Prompts of exact token lengths drawn from the tokenizer's regular vocabulary.
fn random_prompts(args: &BenchServeArgs) -> anyhow::Result<Vec<(Value, usize, usize)>> {
    let tok = match &args.tokenizer {
        Some(p) => Some(
            tokenizers::Tokenizer::from_file(p).map_err(|e| anyhow::anyhow!("--tokenizer: {e}"))?,
        ),
        None => None,
    };
    let vocab = tok
        .as_ref()
        .map_or(151_643, |t| t.get_vocab_size(false).min(151_643)) as u64;
    let mut state = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let range = |len: usize, r: f64, x: u64| -> usize {
        let lo = (len as f64 * (1.0 - r)).floor().max(1.0) as usize;
        let hi = (len as f64 * (1.0 + r)).ceil().max(lo as f64) as usize;
        lo + (x as usize) % (hi - lo + 1)
    };
    let mut out = Vec::with_capacity(args.num_prompts);
    for _ in 0..args.num_prompts {
        let in_len = range(args.random_input_len, args.random_range_ratio, next());
        let out_len = range(args.random_output_len, args.random_range_ratio, next());
        let ids: Vec<u32> = (0..in_len).map(|_| (next() % vocab) as u32).collect();
        // Token ids go to /v1/completions as they are, so the length is exact; chat gets text.
        let prompt = match (&tok, args.endpoint.contains("chat")) {
            (Some(t), true) => json!(t.decode(&ids, true).unwrap_or_default()),
            _ => json!(ids),
        };
        out.push((prompt, in_len, out_len));
    }
    Ok(out)
}

fn jsonl_prompts(args: &BenchServeArgs) -> anyhow::Result<Vec<(Value, usize, usize)>> {
    let path = args
        .dataset_path
        .as_ref()
        .context("--dataset jsonl/sharegpt needs --dataset-path")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    if args.dataset == "sharegpt" {
        let v: Value = serde_json::from_str(&text).context("ShareGPT file is not JSON")?;
        for conv in v.as_array().into_iter().flatten() {
            let turns = conv["conversations"].as_array();
            let human = turns
                .and_then(|t| t.iter().find(|x| x["from"] == "human"))
                .and_then(|x| x["value"].as_str());
            let gpt = turns
                .and_then(|t| t.iter().find(|x| x["from"] == "gpt"))
                .and_then(|x| x["value"].as_str());
            if let (Some(h), Some(g)) = (human, gpt) {
                // Without a tokenizer, ~4 characters a token.
                out.push((json!(h), h.len() / 4, (g.len() / 4).max(1)));
            }
            if out.len() == args.num_prompts {
                break;
            }
        }
    } else {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).context("a JSONL line is not JSON")?;
            let p = v["prompt"]
                .as_str()
                .context("a JSONL line has no \"prompt\"")?;
            let n = v["max_tokens"]
                .as_u64()
                .map_or(args.random_output_len, |n| n as usize);
            out.push((json!(p), p.len() / 4, n));
            if out.len() == args.num_prompts {
                break;
            }
        }
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Linear interpolation, as numpy.percentile.
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    (
        mean,
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        std,
    )
}

pub async fn run(args: &BenchServeArgs) -> anyhow::Result<Value> {
    let t = parse_base(&args.base_url)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let (status, mut r, chunked) =
                send(&t, "GET", "/v1/models", "", args.api_key.as_deref()).await?;
            let mut raw = Vec::new();
            r.read_to_end(&mut raw).await?;
            let body = if chunked { dechunk(&raw) } else { raw };
            let v: Value = serde_json::from_slice(&body)
                .with_context(|| format!("GET /v1/models answered {status}"))?;
            v["data"][0]["id"]
                .as_str()
                .context("no model in /v1/models")?
                .to_string()
        }
    };
    let prompts = match args.dataset.as_str() {
        "random" => random_prompts(args)?,
        "sharegpt" | "jsonl" => jsonl_prompts(args)?,
        other => bail!("unknown --dataset {other}: random, sharegpt or jsonl"),
    };
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(
        args.max_concurrency.unwrap_or(usize::MAX >> 4),
    ));
    let start = Instant::now();
    let total = prompts.len();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(total);
    let mut rng = args.seed | 1;
    let args_c = std::sync::Arc::new(args.clone());
    let target = std::sync::Arc::new(t);
    for (prompt, in_len, out_len) in prompts {
        if args.request_rate.is_finite() && args.request_rate > 0.0 {
            // Poisson arrivals: exponential gaps.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let u = ((rng >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
            tokio::time::sleep(Duration::from_secs_f64(-u.ln() / args.request_rate)).await;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (a, tg, m, d) = (args_c.clone(), target.clone(), model.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(&tg, &a, &m, &prompt, in_len, out_len).await;
            drop(permit);
            let n = d.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if !a.disable_tqdm {
                eprint!("\r{n}/{total} requests done");
            }
            r
        }));
    }
    let mut results = Vec::with_capacity(total);
    for t in tasks {
        results.push(t.await?);
    }
    if !args.disable_tqdm {
        eprintln!();
    }
    let duration = start.elapsed().as_secs_f64();
    Ok(summarize(args, &model, duration, &results))
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let s = pos + 2;
        out.extend_from_slice(&rest[s..(s + size).min(rest.len())]);
        rest = &rest[(s + size + 2).min(rest.len())..];
    }
    out
}

pub fn summarize(args: &BenchServeArgs, model: &str, duration: f64, rs: &[Measured]) -> Value {
    let ok: Vec<&Measured> = rs.iter().filter(|m| m.ok).collect();
    let input: usize = ok.iter().map(|m| m.input_len).sum();
    let output: usize = ok.iter().map(|m| m.output_len).sum();
    let ms = |v: Vec<f64>| v.into_iter().map(|x| x * 1000.0).collect::<Vec<_>>();
    let ttfts: Vec<f64> = ok.iter().map(|m| m.ttft).collect();
    let tpots: Vec<f64> = ok
        .iter()
        .filter(|m| m.output_len > 1)
        .map(|m| (m.latency - m.ttft) / (m.output_len - 1) as f64)
        .collect();
    let itls: Vec<f64> = ok.iter().flat_map(|m| m.itls.iter().copied()).collect();
    let e2el: Vec<f64> = ok.iter().map(|m| m.latency).collect();
    let mut out = json!({
        "date": format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())),
        "backend": "openai", "model_id": model, "endpoint": args.endpoint,
        "num_prompts": rs.len(), "request_rate": if args.request_rate.is_finite() { json!(args.request_rate) } else { json!("inf") },
        "max_concurrency": args.max_concurrency, "duration": duration,
        "completed": ok.len(), "failed": rs.len() - ok.len(),
        "total_input_tokens": input, "total_output_tokens": output,
        "request_throughput": ok.len() as f64 / duration,
        "output_throughput": output as f64 / duration,
        "total_token_throughput": (input + output) as f64 / duration,
        "input_lens": ok.iter().map(|m| m.input_len).collect::<Vec<_>>(),
        "output_lens": ok.iter().map(|m| m.output_len).collect::<Vec<_>>(),
        "ttfts": ttfts, "itls": ok.iter().map(|m| m.itls.clone()).collect::<Vec<_>>(),
        "errors": rs.iter().map(|m| m.error.clone()).collect::<Vec<_>>(),
    });
    for (name, v) in [
        ("ttft", ms(ttfts)),
        ("tpot", ms(tpots)),
        ("itl", ms(itls)),
        ("e2el", ms(e2el)),
    ] {
        let (mean, median, p90, p99, std) = stats(v);
        out[format!("mean_{name}_ms")] = json!(mean);
        out[format!("median_{name}_ms")] = json!(median);
        out[format!("p90_{name}_ms")] = json!(p90);
        out[format!("p99_{name}_ms")] = json!(p99);
        out[format!("std_{name}_ms")] = json!(std);
    }
    out
}

pub fn print(r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let line = |label: &str, v: String| println!("{label:<40} {v}");
    println!("{:=^50}", " Serving Benchmark Result ");
    line("Successful requests:", r["completed"].to_string());
    line("Failed requests:", r["failed"].to_string());
    line("Benchmark duration (s):", format!("{:.2}", f("duration")));
    line("Total input tokens:", r["total_input_tokens"].to_string());
    line(
        "Total generated tokens:",
        r["total_output_tokens"].to_string(),
    );
    line(
        "Request throughput (req/s):",
        format!("{:.2}", f("request_throughput")),
    );
    line(
        "Output token throughput (tok/s):",
        format!("{:.2}", f("output_throughput")),
    );
    line(
        "Total Token throughput (tok/s):",
        format!("{:.2}", f("total_token_throughput")),
    );
    for (key, title, label) in [
        ("ttft", "Time to First Token", "TTFT"),
        ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
        ("itl", "Inter-token Latency", "ITL"),
        ("e2el", "End-to-end Latency", "E2EL"),
    ] {
        println!("{:-^50}", title);
        line(
            &format!("Mean {label} (ms):"),
            format!("{:.2}", f(&format!("mean_{key}_ms"))),
        );
        line(
            &format!("Median {label} (ms):"),
            format!("{:.2}", f(&format!("median_{key}_ms"))),
        );
        line(
            &format!("P90 {label} (ms):"),
            format!("{:.2}", f(&format!("p90_{key}_ms"))),
        );
        line(
            &format!("P99 {label} (ms):"),
            format!("{:.2}", f(&format!("p99_{key}_ms"))),
        );
    }
    println!("{}", "=".repeat(50));
}
