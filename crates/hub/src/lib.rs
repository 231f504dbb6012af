//! Hub downloads: resolve a hub id such as `Qwen/Qwen3-8B` to a local model directory. This
//! file holds the entry points; each module below does one part of the job.
//!
//! The Hugging Face hub is the default; ModelScope is used with `VLLM_USE_MODELSCOPE=True` (or
//! [`HubOptions::use_modelscope`]). Only what the server reads is fetched: `config.json`,
//! `generation_config.json` (if the repository has one), `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja` (if present) and the safetensors weights —
//! `model.safetensors`, or `model.safetensors.index.json` and every shard it names.
//!
//! Cache layouts are the ones the Python tools use, so caches are shared with them:
//! - Hugging Face: `<cache>/models--Qwen--Qwen3-8B/{blobs/<etag>, snapshots/<commit>/<file> ->
//!   ../../blobs/<etag>, refs/<revision>}` where `<cache>` is `--download-dir`, `HF_HUB_CACHE`,
//!   `HF_HOME/hub` or `~/.cache/huggingface/hub`;
//! - ModelScope: `<cache>/models/Qwen--Qwen3-8B/snapshots/<revision>/<file>` where `<cache>` is
//!   `--download-dir`, `MODELSCOPE_CACHE` or `~/.cache/modelscope`; a directory left by an older
//!   modelscope SDK (`<cache>/[hub/]models/Qwen/Qwen3-8B`, dots spelled `___`) is reused.
//!
//! Resuming: each file is written to `<target>.incomplete` (the name huggingface_hub and
//! modelscope use too) and renamed once its size matches what the hub announced. An
//! interrupted transfer goes on with `Range: bytes=<received>-`: in the same run after a short
//! back-off (`QWEN3_SERVE_DOWNLOAD_RETRIES`, default 5), or on the next start. A server that
//! ignores the range (200 instead of 206), answers a different range or refuses it (416) makes
//! the file start over rather than be corrupted. A per-file lock (the same lock file
//! huggingface_hub uses) keeps two processes from writing one partial file.
//!
//! Everything here blocks: call it before starting an async runtime, or from a blocking task.

#![forbid(unsafe_code)]

mod download;
mod env;
mod error;
mod files;
mod hf;
mod http;
mod modelscope;

use std::path::PathBuf;

pub use env::{
    download_retries_from_env, hf_cache_dir_from_env, hf_endpoint_from_env, hf_offline_from_env,
    hf_token_from_env, hf_token_path_from_env, modelscope_cache_dir_from_env,
    modelscope_endpoint_from_env, modelscope_token_from_env, no_proxy_matches, proxy_from_env,
    use_modelscope_from_env, DEFAULT_HF_ENDPOINT, DEFAULT_MODELSCOPE_ENDPOINT, RETRIES_ENV,
};
pub use error::HubError;
pub use http::HttpError;

/// Where and how [`download_model`] fetches a model.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache directory (vLLM's `--download-dir`); default: the hub's usual cache.
    pub download_dir: Option<PathBuf>,
    /// Fetch from ModelScope instead of Hugging Face (also `VLLM_USE_MODELSCOPE=True`).
    pub use_modelscope: bool,
    /// Branch, tag or commit; default `main` (Hugging Face) or `master` (ModelScope).
    pub revision: Option<String>,
    /// The hub's base URL, overriding `HF_ENDPOINT` / `MODELSCOPE_ENDPOINT` (tests, mirrors).
    pub endpoint_override: Option<String>,
}

/// Resolves a hub id like `"Qwen/Qwen3-8B"` to a local directory with config.json, the
/// tokenizer files, generation_config.json and the safetensors (single or sharded per
/// model.safetensors.index.json) — downloading what's missing. Reads the environment
/// (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`, `VLLM_USE_MODELSCOPE`, ...); blocks.
pub fn download_model(repo_id: &str, opts: &HubOptions) -> Result<PathBuf, HubError> {
    download_model_with_env(repo_id, opts, &|key: &str| std::env::var(key).ok())
}

/// [`download_model`] with the environment given as a lookup function, so callers (and tests)
/// decide what `HF_TOKEN`, `HF_HOME`, proxies and the rest are.
pub fn download_model_with_env(
    repo_id: &str,
    opts: &HubOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, HubError> {
    files::check_repo_id(repo_id)?;
    if opts.use_modelscope || use_modelscope_from_env(env) {
        modelscope::modelscope_download(repo_id, opts, env)
    } else {
        hf::hf_download(repo_id, opts, env)
    }
}
