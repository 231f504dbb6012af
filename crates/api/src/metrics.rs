//! Prometheus text exposition of the engine's metrics under vLLM's names, so existing
//! dashboards work unchanged.

use std::fmt::Write;

use qwen3_engine::{EngineStats, Histogram};

fn gauge(out: &mut String, name: &str, help: &str, kind: &str, label: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {v}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, label: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let cum = h.cumulative();
    for (b, c) in h.bounds.iter().zip(&cum) {
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b:?}\"}} {c}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{label},le=\"+Inf\"}} {}",
        cum.last().copied().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "{name}_sum{{{label}}} {}\n{name}_count{{{label}}} {}",
        h.sum, h.count
    );
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `model_name="..."` label every series carries: the first served name.
pub(crate) fn model_label(names: &[String]) -> String {
    let model = escape_label(names.first().map_or("", String::as_str));
    format!("model_name=\"{model}\"")
}

pub fn render(s: &EngineStats, names: &[String]) -> String {
    let l = model_label(names);
    let mut o = String::new();
    gauge(
        &mut o,
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        "gauge",
        &l,
        s.num_running as f64,
    );
    gauge(
        &mut o,
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        "gauge",
        &l,
        s.num_waiting as f64,
    );
    gauge(
        &mut o,
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        "gauge",
        &l,
        s.kv_cache_usage,
    );
    gauge(
        &mut o,
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        "counter",
        &l,
        s.prompt_tokens_total as f64,
    );
    gauge(
        &mut o,
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        "counter",
        &l,
        s.generation_tokens_total as f64,
    );
    let _ = writeln!(o, "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter");
    let f = &s.request_success_total;
    for (reason, v) in [
        ("stop", f.stop),
        ("length", f.length),
        ("abort", f.abort),
        ("error", f.error),
    ] {
        let _ = writeln!(
            o,
            "vllm:request_success_total{{{l},finished_reason=\"{reason}\"}} {v}"
        );
    }
    gauge(
        &mut o,
        "vllm:num_preemptions_total",
        "Cumulative number of preemptions from the engine.",
        "counter",
        &l,
        s.num_preemptions_total as f64,
    );
    gauge(
        &mut o,
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        "counter",
        &l,
        s.prefix_cache_queries_total as f64,
    );
    gauge(
        &mut o,
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        "counter",
        &l,
        s.prefix_cache_hits_total as f64,
    );
    histogram(
        &mut o,
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &l,
        &s.time_to_first_token,
    );
    histogram(
        &mut o,
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &l,
        &s.inter_token_latency,
    );
    histogram(
        &mut o,
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &l,
        &s.e2e_request_latency,
    );
    histogram(
        &mut o,
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &l,
        &s.request_queue_time,
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut stats = EngineStats {
            num_running: 2,
            ..EngineStats::default()
        };
        stats.request_success_total.length = 5;
        stats.time_to_first_token.observe(0.003);
        let text = render(&stats, &["Qwen\"3".to_string()]);
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"Qwen\\\"3\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "vllm:request_success_total{model_name=\"Qwen\\\"3\",finished_reason=\"length\"} 5\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"Qwen\\\"3\",le=\"0.001\"} 0\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"Qwen\\\"3\",le=\"0.005\"} 1\n"
        ));
        assert!(
            text.contains("vllm:time_to_first_token_seconds_count{model_name=\"Qwen\\\"3\"} 1\n")
        );
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap_or_default();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
