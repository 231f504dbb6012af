//! The command line: `qwen3-serve [serve] [MODEL] [flags]`, as `vllm serve`, plus `generate`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "qwen3-serve",
    version,
    about = "Serve Qwen3 models behind an OpenAI-compatible API, on Ascend NPUs or the CPU",
    long_about = "Serve Qwen3 models behind an OpenAI-compatible API, on Ascend NPUs or the CPU.\n\n\
                  `qwen3-serve MODEL [flags]` takes the flags of `vllm serve`. With no MODEL it \
                  serves the tiny random-weight fixture model shipped in the repository.",
    args_conflicts_with_subcommands = true,
    args_override_self = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start-up: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the OpenAI-compatible server (the default command).
    Serve(ServeArgs),
    /// Print the greedy (or sampled) continuation of a prompt, without the server.
    Generate(GenerateArgs),
    /// Check an Ascend machine: driver and CANN versions, devices, HBM, symbols, and every
    /// backend op run on the NPU against the CPU. Attach its output to bug reports.
    Doctor(DoctorArgs),
    /// Benchmarks: offline latency/throughput through the engine.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load-test an OpenAI-compatible server (this one, vLLM, llama.cpp), as `vllm bench serve`.
    Serve(BenchServeArgs),
    /// One batch through the engine (default batch 1): prefill and decode speed.
    Latency(BenchOfflineArgs),
    /// Many requests at once through the engine (default 64): throughput.
    Throughput(BenchOfflineArgs),
    /// Write a random-weight model of a named shape (e.g. qwen3-0.6b) for speed benchmarks.
    MakeModel(MakeModelArgs),
    /// Structured outputs: time each allowed-token mask of random walks through a nested
    /// JSON schema over a model's full vocabulary (median and p99 per token).
    Mask(BenchMaskArgs),
}

#[derive(Clone, Debug, Args)]
pub struct BenchMaskArgs {
    /// A model directory with tokenizer.json and config.json (its vocab_size is the mask's).
    pub model_dir: PathBuf,
    /// Random walks (each up to 400 tokens).
    #[arg(long, default_value_t = 20)]
    pub walks: usize,
    /// A JSON schema file instead of the built-in nested one.
    #[arg(long)]
    pub json_schema: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct MakeModelArgs {
    /// qwen3-0.6b, qwen3-1.7b, qwen3-8b, qwen3-32b or tiny.
    #[arg(long, default_value = "qwen3-0.6b")]
    pub shape: String,
    /// Keep only this many layers (a few layers of a big shape, for per-layer figures).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Use a smaller vocabulary (the embedding and LM head shrink; prompts stay below it).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Directory to write config.json, model.safetensors and the tokenizer into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the linear weights as Ascend msModelSlim W8A8_DYNAMIC (INT8 per channel, with
    /// quant_model_description.json) instead of BF16: the same random model, quantized.
    #[arg(long)]
    pub w8a8: bool,
}

#[derive(Clone, Debug, Args)]
pub struct BenchServeArgs {
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// Model name sent in requests (default: the first of GET /v1/models).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// random | sharegpt | jsonl
    #[arg(long, default_value = "random")]
    pub dataset: String,
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// tokenizer.json for random prompts (their token ids go to /v1/completions as is).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Requests per second (Poisson arrivals); inf sends all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long)]
    pub api_key: Option<String>,
    #[arg(long)]
    pub save_result: bool,
    #[arg(long, default_value = ".")]
    pub result_dir: PathBuf,
    #[arg(long)]
    pub result_filename: Option<String>,
    #[arg(long)]
    pub disable_tqdm: bool,
}

#[derive(Clone, Debug, Args)]
pub struct BenchOfflineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Requests in the batch (latency: 1, throughput: 64).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
    /// Constrain every request's output to this JSON schema (a file), to measure what
    /// structured outputs cost.
    #[arg(long)]
    pub json_schema: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    Auto,
    Bfloat16,
    Float16,
    Float32,
}

/// `--attention-backend`: which kernels attend over the NPU's BF16 KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttentionBackendArg {
    /// CANN's fused infer attention.
    Fia,
    /// qwen3-serve's own AscendC kernels (libqwen3_ascendc_kernels.so, built from kernels/).
    Custom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvCacheDTypeArg {
    Auto,
    Bfloat16,
    Float32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Npu,
}

/// What loading a model takes, shared by every command that runs one.
#[derive(Clone, Debug, Args)]
pub struct ModelArgs {
    /// Model directory (Hugging Face layout) or hub id; default: the bundled tiny fixture.
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// Same as the positional MODEL (vLLM's older spelling).
    #[arg(long = "model", value_name = "MODEL", conflicts_with = "model")]
    pub model_flag: Option<String>,
    /// Weight and activation precision.
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,
    /// Where to run: the NPU when CANN and a device are found (auto), or as named.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Tensor-parallel size: ranks (devices) the model is split over.
    #[arg(
        long = "tensor-parallel-size",
        short = 't',
        visible_alias = "tp",
        default_value_t = 1
    )]
    pub tensor_parallel_size: usize,
    /// Pipeline-parallel size: stages the layers are split over, one node each (vLLM's flag;
    /// see deploy/README.md for the mapping to vLLM and torchrun).
    #[arg(
        long = "pipeline-parallel-size",
        visible_alias = "pp",
        default_value_t = 1
    )]
    pub pipeline_parallel_size: usize,
    /// Nodes (processes, one per machine) serving the model together (torchrun's --nnodes).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index: 0 serves the API and runs the engine, the others run headless
    /// (torchrun's --node-rank).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Node 0's address, where the others join it (torchrun's --master-addr).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// Node 0's rendezvous port (torchrun's --master-port).
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// Seconds node 0 waits at the rendezvous for the other nodes, and they for node 0,
    /// before stopping with an error.
    #[arg(long, default_value_t = 600.0)]
    pub rendezvous_timeout: f64,
    /// With --nnodes > 1: HCCL_CONNECT_TIMEOUT for this process, seconds its ranks wait for
    /// the others to join an HCCL group, 120..=7200 (default: the environment's, else 600).
    #[arg(long)]
    pub hccl_connect_timeout: Option<u64>,
    /// With --nnodes > 1: HCCL_EXEC_TIMEOUT for this process, seconds a collective waits
    /// for its peers, at least 1 (default: the environment's, else 300).
    #[arg(long)]
    pub hccl_exec_timeout: Option<u64>,
    /// Longest context (prompt + output) a request may have; default: the model's.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// JSON rope scaling, e.g. '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}'.
    #[arg(long)]
    pub rope_scaling: Option<String>,
    /// JSON object merged into the model's config.json.
    #[arg(long)]
    pub hf_overrides: Option<String>,
    /// Where hub downloads go (default: the Hugging Face cache).
    #[arg(long)]
    pub download_dir: Option<PathBuf>,
    /// Download from ModelScope instead of the Hugging Face hub (also VLLM_USE_MODELSCOPE=True).
    #[arg(long)]
    pub use_modelscope: bool,
    /// Quantization method (awq, gptq: 4-bit, GPTQ also 8-bit; ascend: msModelSlim W8A8);
    /// detected from the model's quantization_config (or quant_model_description.json) when
    /// absent, and checked against it when given.
    #[arg(long, short = 'q')]
    pub quantization: Option<String>,
    /// Seed for requests that give none.
    #[arg(long)]
    pub seed: Option<u64>,
    /// NPU: run every decode step eagerly instead of replaying captured graphs.
    #[arg(long)]
    pub enforce_eager: bool,
    /// NPU: attention kernels over the BF16 KV cache: CANN's fused infer attention (fia) or
    /// our own AscendC kernels (custom; not yet validated on hardware, see `doctor`).
    #[arg(long, value_enum, default_value_t = AttentionBackendArg::Fia)]
    pub attention_backend: AttentionBackendArg,
    /// NPU: norm, rotate and cache each layer's q/k/v with CANN's ops rather than our fused
    /// AscendC kernel (used by default where libqwen3_ascendc_kernels.so loads).
    #[arg(long)]
    pub no_fused_qk_norm_rope_cache: bool,
    /// CPU threads for the CPU backend (default: all cores).
    #[arg(long)]
    pub cpu_threads: Option<usize>,
    /// GiB of RAM for the KV cache on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE).
    #[arg(long, env = "VLLM_CPU_KVCACHE_SPACE")]
    pub cpu_kv_cache_space: Option<f64>,
    /// KV cache precision on the CPU: auto follows --dtype (BF16 unless float32). On the NPU
    /// the KV cache follows --dtype.
    #[arg(long, value_enum, default_value_t = KvCacheDTypeArg::Auto)]
    pub kv_cache_dtype: KvCacheDTypeArg,
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (logged).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name(s) clients use; default: the MODEL argument.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// Most sequences in one step.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Most tokens in one step (default: 8192 with chunked prefill, else max-model-len).
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Fraction of device memory for weights, activations and KV cache.
    #[arg(long, visible_alias = "npu-memory-utilization", default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Tokens per KV cache block (default 128 on the NPU, 16 on the CPU).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Reuse KV blocks of repeated prompt prefixes (on by default, as vLLM V1).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// Split long prompts into chunks that share steps with decodes (on by default, as vLLM V1).
    #[arg(long, overrides_with = "no_enable_chunked_prefill")]
    pub enable_chunked_prefill: bool,
    #[arg(long, overrides_with = "enable_chunked_prefill")]
    pub no_enable_chunked_prefill: bool,
    /// Schedule step N+1 while the device runs step N, as vLLM's `--async-scheduling`
    /// (default: on for the NPU, off for the CPU, where the host and the "device" share the
    /// same cores). Requests with structured outputs still run synchronous steps.
    #[arg(long, overrides_with = "no_async_scheduling")]
    pub async_scheduling: bool,
    #[arg(long, overrides_with = "async_scheduling")]
    pub no_async_scheduling: bool,
    /// Most requests waiting for a slot before new ones get 429.
    #[arg(long, default_value_t = 4096)]
    pub max_waiting_requests: usize,
    /// Most logprobs a request may ask for (`logprobs`, `top_logprobs`, `prompt_logprobs`),
    /// as vLLM's `--max-logprobs`.
    #[arg(long, default_value_t = qwen3_api::openai::MAX_LOGPROBS)]
    pub max_logprobs: u32,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long, env = "VLLM_API_KEY")]
    pub api_key: Option<String>,
    /// Split `<think>` reasoning into reasoning_content (qwen3).
    #[arg(long)]
    pub reasoning_parser: Option<String>,
    /// Let the model call tools when a request offers them.
    #[arg(long)]
    pub enable_auto_tool_choice: bool,
    /// How tool calls are written in the output (hermes).
    #[arg(long)]
    pub tool_call_parser: Option<String>,
    /// Sampling defaults: `auto` takes the model's generation_config.json, `vllm` uses vLLM's.
    #[arg(long, default_value = "auto")]
    pub generation_config: String,
    /// vLLM's structured-output settings as JSON, e.g. `{"backend": "guidance"}`. One
    /// backend (llguidance) enforces every constraint here; see `structured_flags`.
    #[arg(long)]
    pub structured_outputs_config: Option<String>,
    /// vLLM's older spelling of the structured-output backend.
    #[arg(long)]
    pub guided_decoding_backend: Option<String>,
    /// A TOML preset from configs/; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds in-flight requests get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// Seconds between NPU samples (DCMI: HBM, AI Core/AI CPU utilisation, temperature,
    /// power, health) behind /metrics and /health; 0 turns the sampler off.
    #[arg(long, default_value_t = 5)]
    pub npu_metrics_interval_seconds: u64,
    /// Seconds a client has to send a request's headers; then the connection is closed.
    #[arg(long, default_value_t = 10.0)]
    pub header_read_timeout: f64,
    /// Seconds a client has to send a request's body after its headers; then 408.
    #[arg(long, default_value_t = 30.0)]
    pub body_read_timeout: f64,
    /// Seconds an open connection may wait for its next request (uvicorn's
    /// --timeout-keep-alive, 5 as there).
    #[arg(long, visible_alias = "timeout-keep-alive", default_value_t = 5.0)]
    pub keep_alive_timeout: f64,
    /// Open connections at most; one more is answered 503 and closed. Keep it under the
    /// process's file-descriptor limit (`ulimit -n`).
    #[arg(long, default_value_t = 2048)]
    pub max_connections: usize,
}

#[derive(Clone, Debug, Args)]
pub struct DoctorArgs {
    /// Load CANN's libraries from these directories only (default: ASCEND_TOOLKIT_HOME,
    /// ASCEND_HOME_PATH, LD_LIBRARY_PATH, /usr/local/Ascend).
    #[arg(long, value_name = "DIR")]
    pub cann_dir: Vec<PathBuf>,
    /// Print the whole report as one JSON object on stdout (for bug reports) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Small shapes only: skip the checks of a real Qwen3-8B layer and Qwen3-30B-A3B MoE
    /// layer (which need ~2 GiB of device memory for their random weights).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Clone, Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in the chat template as one user message.
    #[arg(long)]
    pub chat: bool,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep generating past EOS.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Seconds from a timeout flag: finite, positive, at most a day.
fn seconds(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        bail!("--{flag} must be a number of seconds in (0, 86400], not {v}");
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

/// A count flag that must be at least 1 when given.
fn positive(flag: &str, v: Option<usize>) -> anyhow::Result<()> {
    if v == Some(0) {
        bail!("--{flag} must be at least 1");
    }
    Ok(())
}

impl ModelArgs {
    /// The numeric flags, checked before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        positive("tensor-parallel-size", Some(self.tensor_parallel_size))?;
        positive("pipeline-parallel-size", Some(self.pipeline_parallel_size))?;
        positive("nnodes", Some(self.nnodes))?;
        if self.node_rank >= self.nnodes {
            bail!(
                "--node-rank {} is not below --nnodes {}",
                self.node_rank,
                self.nnodes
            );
        }
        if self.pipeline_parallel_size != self.nnodes {
            bail!(
                "--pipeline-parallel-size {} with --nnodes {}: each node runs one pipeline stage, so they must be equal",
                self.pipeline_parallel_size,
                self.nnodes
            );
        }
        seconds("rendezvous-timeout", self.rendezvous_timeout)?;
        if self.nnodes > 1 && self.master_addr.is_none() {
            bail!(
                "--nnodes {} needs --master-addr (node 0's address)",
                self.nnodes
            );
        }
        positive("max-model-len", self.max_model_len)?;
        positive("cpu-threads", self.cpu_threads)?;
        if let Some(g) = self.cpu_kv_cache_space {
            if !(g.is_finite() && g > 0.0) {
                bail!("--cpu-kv-cache-space (VLLM_CPU_KVCACHE_SPACE) must be a positive number of GiB, not {g}");
            }
        }
        Ok(())
    }
}

impl ServeArgs {
    /// Every numeric flag, checked before anything is loaded (a zero block size would
    /// otherwise divide by zero deep in the KV sizing).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.model.validate()?;
        positive("max-num-seqs", Some(self.max_num_seqs))?;
        positive("max-num-batched-tokens", self.max_num_batched_tokens)?;
        positive("block-size", self.block_size)?;
        if self.block_size.is_some_and(|b| b > 4096) {
            bail!("--block-size must be at most 4096");
        }
        positive("max-waiting-requests", Some(self.max_waiting_requests))?;
        positive("max-connections", Some(self.max_connections))?;
        if self.max_connections > u32::MAX as usize {
            bail!("--max-connections must be at most {}", u32::MAX);
        }
        let u = self.gpu_memory_utilization;
        if !(u.is_finite() && u > 0.0 && u <= 1.0) {
            bail!("--gpu-memory-utilization must be in (0, 1], not {u}");
        }
        self.conn_limits().map(drop)
    }

    /// `--async-scheduling` / `--no-async-scheduling` (the last given wins); None: the
    /// device's default.
    pub fn async_scheduling(&self) -> Option<bool> {
        match (self.async_scheduling, self.no_async_scheduling) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// The connection timeouts and bound from their flags.
    pub fn conn_limits(&self) -> anyhow::Result<qwen3_api::ConnLimits> {
        Ok(qwen3_api::ConnLimits {
            header_read_timeout: seconds("header-read-timeout", self.header_read_timeout)?,
            body_read_timeout: seconds("body-read-timeout", self.body_read_timeout)?,
            keep_alive_timeout: seconds("keep-alive-timeout", self.keep_alive_timeout)?,
            max_connections: self.max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["qwen3-serve"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .serve
    }

    #[test]
    fn numeric_flags_are_checked_up_front() {
        assert!(serve_args(&[]).validate().is_ok());
        for (flags, names) in [
            (&["--block-size", "0"][..], "--block-size"),
            (&["--max-model-len", "0"], "--max-model-len"),
            (&["--max-num-seqs", "0"], "--max-num-seqs"),
            (
                &["--max-num-batched-tokens", "0"],
                "--max-num-batched-tokens",
            ),
            (&["--max-waiting-requests", "0"], "--max-waiting-requests"),
            (&["--tensor-parallel-size", "0"], "--tensor-parallel-size"),
            (&["--cpu-threads", "0"], "--cpu-threads"),
            (&["--cpu-kv-cache-space=-1"], "--cpu-kv-cache-space"),
            (
                &["--gpu-memory-utilization", "0"],
                "--gpu-memory-utilization",
            ),
            (
                &["--gpu-memory-utilization", "NaN"],
                "--gpu-memory-utilization",
            ),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--keep-alive-timeout", "0"], "--keep-alive-timeout"),
            (&["--header-read-timeout", "inf"], "--header-read-timeout"),
            (&["--body-read-timeout=-3"], "--body-read-timeout"),
        ] {
            let e = serve_args(flags).validate().expect_err(names);
            assert!(e.to_string().contains(names), "{flags:?}: {e}");
        }
    }

    #[test]
    fn async_scheduling_flags_last_one_wins() {
        assert_eq!(serve_args(&[]).async_scheduling(), None);
        assert_eq!(
            serve_args(&["--async-scheduling"]).async_scheduling(),
            Some(true)
        );
        assert_eq!(
            serve_args(&["--no-async-scheduling"]).async_scheduling(),
            Some(false)
        );
        let both = ["--async-scheduling", "--no-async-scheduling"];
        assert_eq!(serve_args(&both).async_scheduling(), Some(false));
        let both = ["--no-async-scheduling", "--async-scheduling"];
        assert_eq!(serve_args(&both).async_scheduling(), Some(true));
    }

    #[test]
    fn connection_flags_reach_the_limits() {
        let l = serve_args(&["--timeout-keep-alive", "2.5", "--max-connections", "7"])
            .conn_limits()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.keep_alive_timeout, std::time::Duration::from_millis(2500));
        assert_eq!(l.max_connections, 7);
        let d = serve_args(&[])
            .conn_limits()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(d.header_read_timeout.as_secs() <= 30 && d.body_read_timeout.as_secs() <= 30);
    }
}
