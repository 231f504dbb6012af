//! The environment the Python tools read (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`,
//! `VLLM_USE_MODELSCOPE`, proxies, ...), read through pure functions of a lookup.

use std::path::{Path, PathBuf};

/// The Hugging Face hub, when `HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// ModelScope, when neither `MODELSCOPE_ENDPOINT` nor `MODELSCOPE_DOMAIN` is set.
pub const DEFAULT_MODELSCOPE_ENDPOINT: &str = "https://www.modelscope.cn";
/// How many times a failed transfer is resumed within one run (default 5).
pub const RETRIES_ENV: &str = "QWEN3_SERVE_DOWNLOAD_RETRIES";
const DEFAULT_RETRIES: u32 = 5;

pub(crate) fn var(get: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

pub(crate) fn normalize_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    }
}

/// `HF_ENDPOINT` (a mirror such as `https://hf-mirror.com`), else `https://huggingface.co`.
pub fn hf_endpoint_from_env(get: impl Fn(&str) -> Option<String>) -> String {
    normalize_endpoint(&var(&get, "HF_ENDPOINT").unwrap_or_else(|| DEFAULT_HF_ENDPOINT.into()))
}

/// The hub cache as huggingface_hub finds it: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`,
/// `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub`, `HOME/.cache/huggingface/hub`.
pub fn hf_cache_dir_from_env(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = var(&get, "HF_HUB_CACHE").or_else(|| var(&get, "HUGGINGFACE_HUB_CACHE")) {
        return Some(PathBuf::from(dir));
    }
    hf_home_from_env(&get).map(|home| home.join("hub"))
}

fn hf_home_from_env(get: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(home) = var(get, "HF_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(xdg) = var(get, "XDG_CACHE_HOME") {
        return Some(Path::new(&xdg).join("huggingface"));
    }
    var(get, "HOME").map(|home| Path::new(&home).join(".cache").join("huggingface"))
}

/// `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`); see also [`hf_token_path_from_env`].
pub fn hf_token_from_env(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    var(&get, "HF_TOKEN").or_else(|| var(&get, "HUGGING_FACE_HUB_TOKEN"))
}

/// The token file `huggingface-cli login` writes: `HF_TOKEN_PATH`, else `<HF_HOME>/token`.
pub fn hf_token_path_from_env(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    var(&get, "HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| hf_home_from_env(&get).map(|home| home.join("token")))
}

/// `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` set to 1/true/yes/on: use the cache only.
pub fn hf_offline_from_env(get: impl Fn(&str) -> Option<String>) -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
        .iter()
        .any(|key| var(&get, key).is_some_and(|v| is_truthy(&v)))
}

/// `VLLM_USE_MODELSCOPE=True` (any case, or 1/yes/on).
pub fn use_modelscope_from_env(get: impl Fn(&str) -> Option<String>) -> bool {
    var(&get, "VLLM_USE_MODELSCOPE").is_some_and(|v| is_truthy(&v))
}

/// `MODELSCOPE_ENDPOINT`, else the older `MODELSCOPE_DOMAIN` (https:// added when bare), else
/// `https://www.modelscope.cn` — the modelscope SDK's order.
pub fn modelscope_endpoint_from_env(get: impl Fn(&str) -> Option<String>) -> String {
    let endpoint = var(&get, "MODELSCOPE_ENDPOINT")
        .or_else(|| var(&get, "MODELSCOPE_DOMAIN"))
        .unwrap_or_else(|| DEFAULT_MODELSCOPE_ENDPOINT.into());
    normalize_endpoint(&endpoint)
}

/// `MODELSCOPE_CACHE`, else `HOME/.cache/modelscope` (the modelscope SDK's cache root).
pub fn modelscope_cache_dir_from_env(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    var(&get, "MODELSCOPE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            var(&get, "HOME").map(|home| Path::new(&home).join(".cache").join("modelscope"))
        })
}

/// `MODELSCOPE_API_TOKEN`.
pub fn modelscope_token_from_env(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    var(&get, "MODELSCOPE_API_TOKEN")
}

/// [`RETRIES_ENV`], default 5.
pub fn download_retries_from_env(get: impl Fn(&str) -> Option<String>) -> u32 {
    var(&get, RETRIES_ENV)
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RETRIES)
}

/// The proxy for `scheme` ("http" or "https") as curl and Python requests read it:
/// `<scheme>_proxy`, `<SCHEME>_PROXY`, then `all_proxy`, `ALL_PROXY`.
pub fn proxy_from_env(get: impl Fn(&str) -> Option<String>, scheme: &str) -> Option<String> {
    let lower = format!("{}_proxy", scheme.to_ascii_lowercase());
    let upper = lower.to_ascii_uppercase();
    [lower.as_str(), upper.as_str(), "all_proxy", "ALL_PROXY"]
        .iter()
        .find_map(|key| var(&get, key))
}

/// Whether `host` is exempt from proxies: loopback, or listed in `NO_PROXY` / `no_proxy`
/// (`*`, exact hosts, or domains matching their subdomains).
pub fn no_proxy_matches(get: impl Fn(&str) -> Option<String>, host: &str) -> bool {
    let host = host
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    if host == "localhost" || host == "::1" || host.starts_with("127.") {
        return true;
    }
    let Some(list) = var(&get, "no_proxy").or_else(|| var(&get, "NO_PROXY")) else {
        return false;
    };
    list.split(',').map(str::trim).any(|entry| {
        let entry = entry.trim_start_matches('.').to_ascii_lowercase();
        entry == "*"
            || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
    })
}
