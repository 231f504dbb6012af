//! The command line: `qwen3-serve [serve] [MODEL] [flags]`, as `vllm serve`, plus `generate`.

use std::path::PathBuf;

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
}

#[derive(Clone, Debug, Args)]
pub struct MakeModelArgs {
    /// qwen3-0.6b, qwen3-1.7b or tiny.
    #[arg(long, default_value = "qwen3-0.6b")]
    pub shape: String,
    /// Directory to write config.json, model.safetensors and the tokenizer into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    Auto,
    Bfloat16,
    Float16,
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
    /// Quantization method (awq, gptq: 4-bit, GPTQ also 8-bit); detected from the model's
    /// quantization_config when absent, and checked against it when given.
    #[arg(long, short = 'q')]
    pub quantization: Option<String>,
    /// Seed for requests that give none.
    #[arg(long)]
    pub seed: Option<u64>,
    /// NPU: run every decode step eagerly instead of replaying captured graphs.
    #[arg(long)]
    pub enforce_eager: bool,
    /// CPU threads for the CPU backend (default: all cores).
    #[arg(long)]
    pub cpu_threads: Option<usize>,
    /// GiB of RAM for the KV cache on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE).
    #[arg(long, env = "VLLM_CPU_KVCACHE_SPACE")]
    pub cpu_kv_cache_space: Option<f64>,
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
    /// A TOML preset from configs/; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds in-flight requests get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
}

#[derive(Clone, Debug, Args)]
pub struct DoctorArgs {
    /// Load CANN's libraries from these directories only (default: ASCEND_TOOLKIT_HOME,
    /// ASCEND_HOME_PATH, LD_LIBRARY_PATH, /usr/local/Ascend).
    #[arg(long, value_name = "DIR")]
    pub cann_dir: Vec<PathBuf>,
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
