//! Engine metrics: gauges, counters and latency histograms with vLLM's names and buckets, so
//! the API layer can expose them as Prometheus `vllm:*` metrics unchanged.

use serde::Serialize;

/// vLLM's `time_to_first_token_seconds` buckets.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `inter_token_latency_seconds` (formerly `time_per_output_token_seconds`) buckets.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request latency buckets (`e2e_request_latency_seconds`,
/// `request_queue_time_seconds`).
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// A histogram in seconds. `counts[i]` counts observations in `(bounds[i-1], bounds[i]]`
/// (not cumulative); `counts[bounds.len()]` counts those above the last bound (+Inf).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Prometheus-style cumulative counts per bound (`le`), +Inf last.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0;
        self.counts
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect()
    }
}

/// Finished requests by finish reason (vLLM's `request_success_total{finished_reason}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FinishCounts {
    pub stop: u64,
    pub length: u64,
    pub abort: u64,
    pub error: u64,
}

/// A snapshot of the engine's metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Fraction of usable KV blocks held by live sequences (cached free blocks count as free).
    pub kv_cache_usage: f64,
    pub num_kv_blocks: usize,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub request_success_total: FinishCounts,
    pub num_preemptions_total: u64,
    /// Prompt tokens looked up in the prefix cache at admission.
    pub prefix_cache_queries_total: u64,
    /// Of those, tokens found cached.
    pub prefix_cache_hits_total: u64,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_request_latency: Histogram,
    pub request_queue_time: Histogram,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            num_running: 0,
            num_waiting: 0,
            kv_cache_usage: 0.0,
            num_kv_blocks: 0,
            prompt_tokens_total: 0,
            generation_tokens_total: 0,
            request_success_total: FinishCounts::default(),
            num_preemptions_total: 0,
            prefix_cache_queries_total: 0,
            prefix_cache_hits_total: 0,
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            inter_token_latency: Histogram::new(ITL_BUCKETS),
            e2e_request_latency: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_queue_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.cumulative(), vec![2, 3, 4]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 6.0).abs() < 1e-9);
    }
}
