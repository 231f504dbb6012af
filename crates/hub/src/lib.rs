//! Hub downloads: resolve a hub id such as `Qwen/Qwen3-8B` to a local model directory.
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

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

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

/// The Hugging Face hub, when `HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// ModelScope, when neither `MODELSCOPE_ENDPOINT` nor `MODELSCOPE_DOMAIN` is set.
pub const DEFAULT_MODELSCOPE_ENDPOINT: &str = "https://www.modelscope.cn";
/// How many times a failed transfer is resumed within one run (default 5).
pub const RETRIES_ENV: &str = "QWEN3_SERVE_DOWNLOAD_RETRIES";
const DEFAULT_RETRIES: u32 = 5;

const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The non-weight files, in download order, and whether the model needs them.
const MODEL_FILES: [(&str, bool); 5] = [
    ("config.json", true),
    ("generation_config.json", false),
    ("tokenizer.json", true),
    ("tokenizer_config.json", true),
    ("chat_template.jinja", false),
];
const MAX_REDIRECTS: usize = 10;

/// Resolves a hub id like `"Qwen/Qwen3-8B"` to a local directory with config.json, the
/// tokenizer files, generation_config.json and the safetensors (single or sharded per
/// model.safetensors.index.json) — downloading what's missing. Reads the environment
/// (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`, `VLLM_USE_MODELSCOPE`, ...); blocks.
pub fn download_model(repo_id: &str, opts: &HubOptions) -> Result<PathBuf> {
    download_model_with_env(repo_id, opts, &|key: &str| std::env::var(key).ok())
}

/// [`download_model`] with the environment given as a lookup function, so callers (and tests)
/// decide what `HF_TOKEN`, `HF_HOME`, proxies and the rest are.
pub fn download_model_with_env(
    repo_id: &str,
    opts: &HubOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    check_repo_id(repo_id)?;
    if opts.use_modelscope || use_modelscope_from_env(env) {
        modelscope_download(repo_id, opts, env)
    } else {
        hf_download(repo_id, opts, env)
    }
}

// ---------------------------------------------------------------------------------------------
// The environment, read through pure functions.

fn var(get: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
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

fn normalize_endpoint(endpoint: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Names that become paths: hub ids, revisions, file names from the hub.

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_repo_id(repo_id: &str) -> Result<()> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let valid = (1..=2).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".." && p.chars().all(is_name_char));
    if !valid {
        bail!(
            "{repo_id:?} is not a local model directory and not a hub model id \
             (owner/name, for example Qwen/Qwen3-8B)"
        );
    }
    Ok(())
}

/// A revision may hold `/` (`refs/pr/1`) but no `..`, nothing absolute, nothing odd.
fn check_revision(revision: &str) -> Result<()> {
    let valid = !revision.is_empty()
        && revision
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && p.chars().all(is_name_char));
    if !valid {
        bail!("{revision:?} is not a valid revision (a branch, tag or commit)");
    }
    Ok(())
}

/// A file name from the hub (or a weight index) must stay inside the model directory.
fn check_relative(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && !name.contains('\\')
        && !name.contains('\0')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !valid {
        bail!("refusing the file name {name:?}: it is not a plain path inside the repository");
    }
    Ok(())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// The shard files a `model.safetensors.index.json` names, each once, sorted.
fn shard_names(index: &Path) -> Result<BTreeSet<String>> {
    let text = fs::read_to_string(index)
        .with_context(|| format!("reading the weight index {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no \"weight_map\" object", index.display()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            anyhow!(
                "{}: the weight_map entry for {tensor} is not a file name",
                index.display()
            )
        })?;
        check_relative(file).with_context(|| format!("in {}", index.display()))?;
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        bail!("{} names no weight files", index.display());
    }
    Ok(shards)
}

/// Whether `dir` holds everything the server needs; the error lists what is missing.
fn check_complete(dir: &Path) -> Result<()> {
    let mut missing: Vec<String> = MODEL_FILES
        .iter()
        .filter(|(file, required)| *required && !dir.join(file).is_file())
        .map(|(file, _)| file.to_string())
        .collect();
    let index = dir.join(WEIGHTS_INDEX);
    if index.is_file() {
        for shard in shard_names(&index)? {
            if !dir.join(&shard).is_file() {
                missing.push(shard);
            }
        }
    } else if !dir.join(SINGLE_WEIGHTS).is_file() {
        missing.push(format!("{SINGLE_WEIGHTS} (or {WEIGHTS_INDEX})"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("{} lacks {}", dir.display(), missing.join(", "))
    }
}

/// Where a hub keeps files, one call per file.
trait FileSource {
    /// The local path of `file`, fetched if needed; `None` when the repository has no such file.
    fn fetch(&self, file: &str) -> Result<Option<PathBuf>>;
    /// "Qwen/Qwen3-8B (revision main) on https://huggingface.co", for messages.
    fn describe(&self) -> String;
}

fn fetch_model_files(src: &dyn FileSource) -> Result<()> {
    for (file, required) in MODEL_FILES {
        if src.fetch(file)?.is_none() && required {
            bail!(
                "{} has no {file}; qwen3-serve needs config.json, tokenizer.json, \
                 tokenizer_config.json and safetensors weights (a Hugging Face-format model)",
                src.describe()
            );
        }
    }
    if let Some(index) = src.fetch(WEIGHTS_INDEX)? {
        for shard in shard_names(&index)? {
            if src.fetch(&shard)?.is_none() {
                bail!(
                    "{} is missing the weight shard {shard}, which {WEIGHTS_INDEX} names",
                    src.describe()
                );
            }
        }
    } else if src.fetch(SINGLE_WEIGHTS)?.is_none() {
        bail!(
            "{} has neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX}; only safetensors weights \
             are supported",
            src.describe()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP: ureq agents, redirects followed by hand so credentials stay with the hub's own host.

#[derive(Debug)]
enum HttpError {
    /// The server answered with an error status.
    Status {
        status: u16,
        url: String,
        /// Hugging Face's `X-Error-Code` (RepoNotFound, EntryNotFound, GatedRepo, ...).
        error_code: Option<String>,
        message: String,
    },
    /// No usable answer: DNS, connect, TLS, a broken connection, bad headers.
    Transport {
        url: String,
        connect: bool,
        message: String,
    },
}

impl HttpError {
    fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport { .. } => None,
        }
    }

    fn error_code(&self) -> Option<&str> {
        match self {
            HttpError::Status { error_code, .. } => error_code.as_deref(),
            HttpError::Transport { .. } => None,
        }
    }

    fn is_connect(&self) -> bool {
        matches!(self, HttpError::Transport { connect: true, .. })
    }

    /// Worth trying again later: the network, or the server's own trouble.
    fn is_transient(&self) -> bool {
        match self {
            HttpError::Transport { .. } => true,
            HttpError::Status { status, .. } => *status >= 500 || matches!(*status, 408 | 429),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Status {
                status,
                url,
                message,
                ..
            } => {
                write!(f, "{url} answered HTTP {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            // ureq's own messages usually name the URL already.
            HttpError::Transport { url, message, .. } if message.contains(url.as_str()) => {
                write!(f, "{message}")
            }
            HttpError::Transport { url, message, .. } => write!(f, "{url}: {message}"),
        }
    }
}

impl std::error::Error for HttpError {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Every redirect (downloads, API calls).
    All,
    /// Only redirects without a host, as huggingface_hub does for file metadata: a redirect to
    /// the CDN is returned as is, with the hub's headers on it.
    Relative,
}

fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// `host[:port]`, without user info, lower-cased.
fn authority_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    authority.to_ascii_lowercase()
}

fn host_of(url: &str) -> String {
    let authority = authority_of(url);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    authority.split(':').next().unwrap_or_default().to_string()
}

fn resolve_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = scheme_of(base);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let origin = format!("{scheme}://{}", authority_of(base));
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = rest[..path_end]
        .find('/')
        .map_or("/", |start| &rest[start..path_end]);
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{location}")
}

fn is_relative_location(location: &str) -> bool {
    !location.contains("://") && !location.starts_with("//")
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

struct Http {
    direct: ureq::Agent,
    https_proxy: Option<ureq::Agent>,
    http_proxy: Option<ureq::Agent>,
    no_proxy: Option<String>,
    /// `host[:port]` of the hub; only requests there carry `auth`.
    hub_authority: String,
    auth: Vec<(&'static str, String)>,
    /// Whether the hub has answered anything yet (an unreachable hub then fails fast).
    reached: AtomicBool,
}

impl Http {
    fn new(
        endpoint: &str,
        auth: Vec<(&'static str, String)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let builder = || {
            ureq::AgentBuilder::new()
                .redirects(0)
                .timeout_connect(Duration::from_secs(20))
                .timeout_read(Duration::from_secs(60))
                .timeout_write(Duration::from_secs(60))
                .user_agent(concat!("qwen3-serve/", env!("CARGO_PKG_VERSION")))
        };
        let proxied = |scheme: &str| -> Result<Option<ureq::Agent>> {
            let Some(url) = proxy_from_env(env, scheme) else {
                return Ok(None);
            };
            let proxy = ureq::Proxy::new(&url).map_err(|e| {
                anyhow!("the {scheme} proxy {url:?} from the environment is not usable: {e}")
            })?;
            Ok(Some(builder().proxy(proxy).build()))
        };
        Ok(Self {
            direct: builder().build(),
            https_proxy: proxied("https")?,
            http_proxy: proxied("http")?,
            no_proxy: var(&env, "no_proxy").or_else(|| var(&env, "NO_PROXY")),
            hub_authority: authority_of(endpoint),
            auth,
            reached: AtomicBool::new(false),
        })
    }

    fn agent_for(&self, url: &str) -> &ureq::Agent {
        let no_proxy = |key: &str| {
            (key == "NO_PROXY" || key == "no_proxy")
                .then(|| self.no_proxy.clone())
                .flatten()
        };
        if no_proxy_matches(no_proxy, &host_of(url)) {
            return &self.direct;
        }
        let proxy = if scheme_of(url).eq_ignore_ascii_case("https") {
            self.https_proxy.as_ref()
        } else {
            self.http_proxy.as_ref()
        };
        proxy.unwrap_or(&self.direct)
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        follow: Follow,
    ) -> Result<ureq::Response, HttpError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .agent_for(&url)
                .request(method, &url)
                .set("Accept-Encoding", "identity");
            for (name, value) in headers {
                request = request.set(name, value);
            }
            if authority_of(&url) == self.hub_authority {
                for (name, value) in &self.auth {
                    request = request.set(name, value);
                }
            }
            match request.call() {
                Ok(response) => {
                    self.reached.store(true, Ordering::Relaxed);
                    let location = response.header("location").map(str::to_string);
                    match location {
                        Some(location)
                            if (300..400).contains(&response.status())
                                && (follow == Follow::All || is_relative_location(&location)) =>
                        {
                            url = resolve_location(&url, &location);
                        }
                        _ => return Ok(response),
                    }
                }
                Err(ureq::Error::Status(status, response)) => {
                    self.reached.store(true, Ordering::Relaxed);
                    return Err(status_error(status, &url, response));
                }
                Err(ureq::Error::Transport(transport)) => {
                    let connect = matches!(
                        transport.kind(),
                        ureq::ErrorKind::Dns
                            | ureq::ErrorKind::ConnectionFailed
                            | ureq::ErrorKind::ProxyConnect
                    );
                    return Err(HttpError::Transport {
                        url,
                        connect,
                        message: transport.to_string(),
                    });
                }
            }
        }
        Err(HttpError::Transport {
            url,
            connect: false,
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn get_json(&self, url: &str) -> Result<serde_json::Value, HttpError> {
        let response = self.send("GET", url, &[], Follow::All)?;
        let mut text = String::new();
        response
            .into_reader()
            .take(64 << 20)
            .read_to_string(&mut text)
            .map_err(|e| HttpError::Transport {
                url: url.to_string(),
                connect: false,
                message: format!("reading the answer: {e}"),
            })?;
        serde_json::from_str(&text).map_err(|e| HttpError::Transport {
            url: url.to_string(),
            connect: false,
            message: format!("the answer is not JSON ({e}); is the endpoint a model hub?"),
        })
    }
}

fn status_error(status: u16, url: &str, response: ureq::Response) -> HttpError {
    let error_code = response.header("x-error-code").map(str::to_string);
    let mut body = Vec::new();
    // The body only adds detail to the message; failing to read it is not an error itself.
    let _ = response.into_reader().take(4096).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|json| {
            ["error", "Message", "message"]
                .iter()
                .find_map(|key| json.get(key).and_then(|v| v.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| text.trim().chars().take(200).collect());
    HttpError::Status {
        status,
        url: url.to_string(),
        error_code,
        message,
    }
}

fn header_u64(response: &ureq::Response, name: &str) -> Option<u64> {
    response.header(name).and_then(|v| v.trim().parse().ok())
}

/// `bytes <first>-<last>/<total>` → (first, total); total `*` is unknown.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, total))
}

// ---------------------------------------------------------------------------------------------
// One resumable file download.

fn incomplete_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_os_string();
    name.push(".incomplete");
    PathBuf::from(name)
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Logs a transfer's progress: every 10 %, at most every 30 s when the size is unknown.
struct Progress<'a> {
    label: &'a str,
    started: Instant,
    last_log: Instant,
    first_byte: u64,
    next_percent: u64,
}

impl<'a> Progress<'a> {
    fn new(label: &'a str) -> Self {
        let now = Instant::now();
        Self {
            label,
            started: now,
            last_log: now,
            first_byte: 0,
            next_percent: 10,
        }
    }

    fn rate(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{}/s",
            human_bytes((done.saturating_sub(self.first_byte) as f64 / secs) as u64)
        )
    }

    fn update(&mut self, done: u64, total: Option<u64>) {
        match total {
            Some(total) if total > 0 => {
                let percent = done.saturating_mul(100) / total;
                if percent >= self.next_percent && done < total {
                    tracing::info!(
                        "{}: {} of {} ({percent}%, {})",
                        self.label,
                        human_bytes(done),
                        human_bytes(total),
                        self.rate(done)
                    );
                    self.next_percent = (percent / 10 + 1) * 10;
                    self.last_log = Instant::now();
                }
            }
            _ => {
                if self.last_log.elapsed() >= Duration::from_secs(30) {
                    tracing::info!(
                        "{}: {} so far ({})",
                        self.label,
                        human_bytes(done),
                        self.rate(done)
                    );
                    self.last_log = Instant::now();
                }
            }
        }
    }
}

struct Download<'a> {
    http: &'a Http,
    url: &'a str,
    dest: &'a Path,
    /// The size the hub's metadata announced, when it did.
    expected: Option<u64>,
    /// "Qwen/Qwen3-8B/model.safetensors", for messages.
    label: &'a str,
    retries: u32,
}

enum Attempt {
    /// Transient: try again, resuming from what is on disk.
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(5)))
}

/// Downloads `d.url` to `d.dest` through `<dest>.incomplete`, resuming what an earlier
/// attempt or run left there.
fn download_file(d: &Download) -> Result<()> {
    let partial = incomplete_path(d.dest);
    if let Some(parent) = d.dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let mut progress = Progress::new(d.label);
    let mut attempt = 0;
    loop {
        match download_attempt(d, &partial, &mut progress) {
            Ok(size) => {
                fs::rename(&partial, d.dest).with_context(|| {
                    format!("moving {} to {}", partial.display(), d.dest.display())
                })?;
                tracing::info!(
                    "{}: done, {} in {:.1} s",
                    d.label,
                    human_bytes(size),
                    progress.started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(Attempt::Retry(error)) if attempt < d.retries => {
                let wait = backoff(attempt);
                attempt += 1;
                tracing::warn!(
                    "{}: {error:#}; retrying in {:.1} s (attempt {attempt} of {})",
                    d.label,
                    wait.as_secs_f64(),
                    d.retries
                );
                std::thread::sleep(wait);
            }
            Err(Attempt::Retry(error)) => {
                let kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
                return Err(error.context(format!(
                    "downloading {} failed after {} attempt(s); {} received so far are kept in \
                     {} and the next start resumes from there",
                    d.label,
                    attempt + 1,
                    human_bytes(kept),
                    partial.display()
                )));
            }
            Err(Attempt::Fatal(error)) => return Err(error),
        }
    }
}

fn remove_partial(partial: &Path) {
    if let Err(e) = fs::remove_file(partial) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("could not remove {}: {e}", partial.display());
        }
    }
}

/// One request; `Ok(size)` when `partial` holds the whole file.
fn download_attempt(d: &Download, partial: &Path, progress: &mut Progress) -> Result<u64, Attempt> {
    let fatal = |e: anyhow::Error| Attempt::Fatal(e);
    let mut start = match fs::metadata(partial) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(fatal(
                anyhow!(e).context(format!("reading {}", partial.display())),
            ))
        }
    };
    if let Some(size) = d.expected {
        if start > size {
            tracing::warn!(
                "{}: the partial file is longer than the file ({start} > {size} bytes); starting over",
                d.label
            );
            remove_partial(partial);
            start = 0;
        }
        if start == size {
            if size == 0 {
                File::create(partial)
                    .with_context(|| format!("creating {}", partial.display()))
                    .map_err(fatal)?;
            }
            return Ok(size);
        }
    }

    let mut headers = Vec::new();
    if start > 0 {
        tracing::info!("{}: resuming from byte {start}", d.label);
        headers.push(("Range", format!("bytes={start}-")));
    }
    let response = match d.http.send("GET", d.url, &headers, Follow::All) {
        Ok(response) => response,
        Err(e) if start > 0 && e.status() == Some(416) => {
            remove_partial(partial);
            return Err(Attempt::Retry(anyhow!(
                "the server refused to resume from byte {start} (HTTP 416); starting over"
            )));
        }
        // Connection failures are retried only once the hub has answered in this run: an
        // unreachable hub fails at once, with its own message.
        Err(e)
            if e.is_transient() && (!e.is_connect() || d.http.reached.load(Ordering::Relaxed)) =>
        {
            return Err(Attempt::Retry(e.into()))
        }
        Err(e) => return Err(fatal(e.into())),
    };

    let status = response.status();
    let length = header_u64(&response, "content-length");
    let (offset, total) = match status {
        206 => match response
            .header("content-range")
            .and_then(parse_content_range)
        {
            Some((first, total)) if first == start => (start, total.or(length.map(|l| start + l))),
            other => {
                remove_partial(partial);
                return Err(Attempt::Retry(anyhow!(
                    "asked for bytes from {start}, the server sent a range starting at {:?}; \
                     starting over",
                    other.map(|(first, _)| first)
                )));
            }
        },
        200 => {
            if start > 0 {
                tracing::warn!(
                    "{}: the server ignored the range request; downloading from the start",
                    d.label
                );
            }
            (0, length)
        }
        _ => {
            return Err(fatal(anyhow!(
                "{} answered HTTP {status} for {} (expected 200 or 206)",
                d.url,
                d.label
            )))
        }
    };
    if let (Some(expected), Some(total)) = (d.expected, total) {
        if expected != total {
            remove_partial(partial);
            return Err(fatal(anyhow!(
                "the hub announced {expected} bytes for {} but the download server sends {total}; \
                 the file changed on the hub meanwhile or the mirror is inconsistent — try again",
                d.label
            )));
        }
    }
    let total = total.or(d.expected);

    let file = if offset == 0 {
        File::create(partial)
    } else {
        OpenOptions::new().append(true).open(partial)
    }
    .with_context(|| format!("opening {}", partial.display()))
    .map_err(fatal)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 256 << 10];
    let mut done = offset;
    progress.first_byte = offset;
    let write_error =
        |e: io::Error| fatal(anyhow!(e).context(format!("writing {}", partial.display())));
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.flush().map_err(write_error)?;
                let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                return Err(Attempt::Retry(anyhow!(
                    "the connection broke after {done}{of} bytes: {e}"
                )));
            }
        };
        if total.is_some_and(|t| done + n as u64 > t) {
            drop(out);
            remove_partial(partial);
            return Err(fatal(anyhow!(
                "{} sent more bytes than the {} it announced for {}",
                d.url,
                total.unwrap_or_default(),
                d.label
            )));
        }
        out.write_all(&buf[..n]).map_err(write_error)?;
        done += n as u64;
        progress.update(done, total);
    }
    let file = out.into_inner().map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    match total {
        Some(t) if done < t => Err(Attempt::Retry(anyhow!(
            "the connection closed after {done} of {t} bytes"
        ))),
        _ => Ok(done),
    }
}

/// Holds an exclusive `flock` on `path` (released when the file is closed, also by a crash),
/// waiting for another process that holds it. Where the file system has no locks, goes on.
fn lock_file(path: &Path, what: &str) -> Result<Option<File>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(
                "another process is downloading {what}; waiting for it (lock {})",
                path.display()
            );
            file.lock()
                .with_context(|| format!("waiting for the lock {}", path.display()))?;
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                "cannot lock {} ({e}); downloading {what} without a lock",
                path.display()
            );
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face.

fn hf_download(
    repo_id: &str,
    opts: &HubOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    let endpoint = opts
        .endpoint_override
        .as_deref()
        .map(normalize_endpoint)
        .unwrap_or_else(|| hf_endpoint_from_env(env));
    let cache_root = opts
        .download_dir
        .clone()
        .or_else(|| hf_cache_dir_from_env(env))
        .ok_or_else(|| {
            anyhow!(
                "cannot place the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, \
                 XDG_CACHE_HOME or HOME is set; pass --download-dir"
            )
        })?;
    let revision = opts
        .revision
        .clone()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "main".to_string());
    check_revision(&revision)?;
    let repo = hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        revision.clone(),
    );
    let repo_dir = cache_root.join(repo.folder_name());

    if hf_offline_from_env(env) {
        return hf_cached_snapshot(&repo_dir, &revision).with_context(|| {
            format!(
                "HF_HUB_OFFLINE is set and {repo_id} (revision {revision}) is not complete in \
                 the cache {}; unset it to download, or pass a local model directory",
                cache_root.display()
            )
        });
    }
    if is_commit_hash(&revision) {
        // A commit never changes: a complete snapshot needs no network.
        if let Ok(dir) = hf_cached_snapshot(&repo_dir, &revision) {
            return Ok(dir);
        }
    }

    let token = hf_token_from_env(env).or_else(|| {
        let path = hf_token_path_from_env(env)?;
        let token = fs::read_to_string(path).ok()?;
        Some(token.trim().to_string()).filter(|t| !t.is_empty())
    });
    let auth = token
        .iter()
        .map(|t| ("Authorization", format!("Bearer {t}")))
        .collect();
    let http = Http::new(&endpoint, auth, env)?;

    let info_url = format!("{endpoint}/api/{}", repo.api_url());
    let info = match http.get_json(&info_url) {
        Ok(info) => info,
        Err(e) if e.is_transient() => {
            if let Ok(dir) = hf_cached_snapshot(&repo_dir, &revision) {
                tracing::warn!(
                    "the Hugging Face hub at {endpoint} cannot be used ({e}); using the cached \
                     {repo_id} in {}",
                    dir.display()
                );
                return Ok(dir);
            }
            return Err(hf_error(
                e,
                repo_id,
                &revision,
                &endpoint,
                token.is_some(),
                None,
            ));
        }
        Err(e) => {
            return Err(hf_error(
                e,
                repo_id,
                &revision,
                &endpoint,
                token.is_some(),
                None,
            ))
        }
    };
    let commit = info
        .get("sha")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            anyhow!(
                "{info_url} gave no commit (\"sha\") for {repo_id}; is {endpoint} a Hugging \
                 Face-compatible hub?"
            )
        })?
        .to_string();
    let listing = info
        .get("siblings")
        .and_then(|s| s.as_array())
        .map(|files| {
            files
                .iter()
                .filter_map(|f| {
                    f.get("rfilename")
                        .and_then(|n| n.as_str())
                        .map(str::to_string)
                })
                .collect::<HashSet<_>>()
        });
    tracing::info!("fetching {repo_id} (revision {revision}, commit {commit}) from {endpoint}");

    let source = HfSource {
        http: &http,
        endpoint: &endpoint,
        repo_id,
        revision: &revision,
        commit: &commit,
        has_token: token.is_some(),
        locks: cache_root.join(".locks").join(repo.folder_name()),
        snapshot: repo_dir.join("snapshots").join(&commit),
        repo_dir: &repo_dir,
        listing,
        retries: download_retries_from_env(env),
    };
    fetch_model_files(&source)?;
    let ref_path = repo_dir.join("refs").join(&revision);
    let recorded = fs::read_to_string(&ref_path).unwrap_or_default();
    // Written only when it changes, so a complete cache on a read-only disk still works.
    if revision != commit && recorded.trim() != commit {
        hf_hub::Cache::new(cache_root.clone())
            .repo(repo)
            .create_ref(&commit)
            .with_context(|| format!("recording revision {revision} in {}", repo_dir.display()))?;
    }
    check_complete(&source.snapshot)?;
    Ok(source.snapshot)
}

/// The cached snapshot for `revision` (a branch, tag or commit), if it is complete.
fn hf_cached_snapshot(repo_dir: &Path, revision: &str) -> Result<PathBuf> {
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        fs::read_to_string(&ref_path)
            .with_context(|| format!("no cached revision {revision} ({})", ref_path.display()))?
            .trim()
            .to_string()
    };
    check_revision(&commit)?;
    let dir = repo_dir.join("snapshots").join(commit);
    check_complete(&dir)?;
    Ok(dir)
}

/// An actionable message for a failed Hugging Face request.
fn hf_error(
    e: HttpError,
    repo_id: &str,
    revision: &str,
    endpoint: &str,
    has_token: bool,
    file: Option<&str>,
) -> anyhow::Error {
    let token_hint = if has_token {
        "check that HF_TOKEN grants access to it"
    } else {
        "if it is private or gated, set HF_TOKEN"
    };
    match (e.status(), e.error_code()) {
        _ if e.is_connect() => anyhow!(
            "cannot reach the Hugging Face hub at {endpoint} to fetch {repo_id} ({e}). Pass a \
             local model directory instead, point HF_ENDPOINT at a reachable mirror (for example \
             https://hf-mirror.com), or use ModelScope with VLLM_USE_MODELSCOPE=True"
        ),
        (_, Some("GatedRepo")) => anyhow!(
            "{repo_id} on {endpoint} is gated: accept its terms on the model page, then set \
             HF_TOKEN to a token of that account ({e})"
        ),
        (_, Some("RevisionNotFound")) => {
            anyhow!("{repo_id} on {endpoint} has no revision {revision:?} ({e})")
        }
        (Some(404), _) | (Some(401), Some("RepoNotFound")) => anyhow!(
            "model {repo_id} was not found on {endpoint} ({e}). Check the id (for example \
             Qwen/Qwen3-8B); {token_hint}; to serve a model on disk, pass its directory"
        ),
        (Some(401 | 403), _) => {
            anyhow!("{endpoint} refused access to {repo_id} ({e}); {token_hint}")
        }
        _ => {
            let what = file.map_or_else(|| repo_id.to_string(), |f| format!("{f} of {repo_id}"));
            anyhow!(e).context(format!(
                "fetching {what} from the Hugging Face hub at {endpoint}"
            ))
        }
    }
}

struct HfSource<'a> {
    http: &'a Http,
    endpoint: &'a str,
    repo_id: &'a str,
    revision: &'a str,
    commit: &'a str,
    has_token: bool,
    locks: PathBuf,
    repo_dir: &'a Path,
    snapshot: PathBuf,
    /// The repository's files, when the hub listed them.
    listing: Option<HashSet<String>>,
    retries: u32,
}

impl HfSource<'_> {
    fn error(&self, e: HttpError, file: &str) -> anyhow::Error {
        hf_error(
            e,
            self.repo_id,
            self.revision,
            self.endpoint,
            self.has_token,
            Some(file),
        )
    }
}

impl FileSource for HfSource<'_> {
    fn describe(&self) -> String {
        format!(
            "{} (revision {}) on {}",
            self.repo_id, self.revision, self.endpoint
        )
    }

    fn fetch(&self, file: &str) -> Result<Option<PathBuf>> {
        check_relative(file)?;
        let pointer = self.snapshot.join(file);
        if pointer.is_file() {
            return Ok(Some(pointer));
        }
        if self.listing.as_ref().is_some_and(|l| !l.contains(file)) {
            return Ok(None);
        }
        let url = format!(
            "{}/{}/resolve/{}/{file}",
            self.endpoint, self.repo_id, self.commit
        );
        let meta = match self.http.send("HEAD", &url, &[], Follow::Relative) {
            Ok(meta) => meta,
            Err(e) if e.status() == Some(404) && e.error_code() != Some("RepoNotFound") => {
                return Ok(None)
            }
            Err(e) => return Err(self.error(e, file)),
        };
        let etag = meta
            .header("x-linked-etag")
            .or_else(|| meta.header("etag"))
            .map(|t| {
                t.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_string()
            })
            .filter(|t| !t.is_empty() && t.chars().all(is_name_char) && t != "." && t != "..")
            .ok_or_else(|| {
                anyhow!(
                    "{url} (HTTP {}) sent no usable ETag; is {} a Hugging Face-compatible hub?",
                    meta.status(),
                    self.endpoint
                )
            })?;
        let size = header_u64(&meta, "x-linked-size").or_else(|| {
            (200..300)
                .contains(&meta.status())
                .then(|| header_u64(&meta, "content-length"))
                .flatten()
        });
        let blob = self.repo_dir.join("blobs").join(&etag);
        let blob_ok = |blob: &Path| {
            fs::metadata(blob).is_ok_and(|m| m.is_file() && size.is_none_or(|s| m.len() == s))
        };
        let label = format!("{}/{file}", self.repo_id);
        if !blob_ok(&blob) {
            let _lock = lock_file(&self.locks.join(format!("{etag}.lock")), &label)?;
            if !blob_ok(&blob) {
                if blob.exists() {
                    fs::remove_file(&blob).with_context(|| {
                        format!("removing the damaged cached file {}", blob.display())
                    })?;
                }
                tracing::info!(
                    "downloading {label} ({})",
                    size.map_or_else(|| "size unknown".to_string(), human_bytes)
                );
                download_file(&Download {
                    http: self.http,
                    url: &url,
                    dest: &blob,
                    expected: size,
                    label: &label,
                    retries: self.retries,
                })
                .map_err(|e| match e.downcast::<HttpError>() {
                    Ok(http) => self.error(http, file),
                    Err(e) => e,
                })?;
            }
        }
        link_pointer(&blob, &pointer, file, &etag)?;
        Ok(Some(pointer))
    }
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>` (a relative symlink, as huggingface_hub
/// makes); a hard link or a copy where symlinks are not possible. The link is made under a
/// temporary name and renamed into place, so concurrent downloads never write through a link
/// another one just made (which would truncate the blob).
fn link_pointer(blob: &Path, pointer: &Path, file: &str, etag: &str) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(parent) = pointer.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let mut target = PathBuf::new();
    for _ in 0..=Path::new(file).components().count() {
        target.push("..");
    }
    target.push("blobs");
    target.push(etag);
    if fs::read_link(pointer).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let mut tmp = pointer.as_os_str().to_os_string();
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, &tmp).is_ok();
    #[cfg(not(unix))]
    let linked = false;
    if !linked {
        fs::hard_link(blob, &tmp)
            .or_else(|_| fs::copy(blob, &tmp).map(|_| ()))
            .with_context(|| format!("linking {} to {}", tmp.display(), blob.display()))?;
    }
    fs::rename(&tmp, pointer).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow!(e).context(format!("moving the link {} into place", pointer.display()))
    })
}

// ---------------------------------------------------------------------------------------------
// ModelScope.

fn modelscope_download(
    repo_id: &str,
    opts: &HubOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    let Some((owner, name)) = repo_id.split_once('/') else {
        bail!("ModelScope model ids are owner/name (for example Qwen/Qwen3-8B), not {repo_id:?}");
    };
    let endpoint = opts
        .endpoint_override
        .as_deref()
        .map(normalize_endpoint)
        .unwrap_or_else(|| modelscope_endpoint_from_env(env));
    let root = opts
        .download_dir
        .clone()
        .or_else(|| modelscope_cache_dir_from_env(env))
        .ok_or_else(|| {
            anyhow!(
                "cannot place the ModelScope cache: neither MODELSCOPE_CACHE nor HOME is set; \
                 pass --download-dir"
            )
        })?;
    let revision = opts
        .revision
        .clone()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "master".to_string());
    check_revision(&revision)?;

    // The modelscope SDK's layout, or the directory an older SDK left (which has no revisions).
    let legacy_name = name.replace('.', "___");
    let legacy = [
        root.join("models").join(owner).join(&legacy_name),
        root.join("hub")
            .join("models")
            .join(owner)
            .join(&legacy_name),
    ]
    .into_iter()
    .find(|dir| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()));
    let dir = match legacy {
        Some(dir) if revision == "master" => dir,
        _ => root
            .join("models")
            .join(format!("{owner}--{name}"))
            .join("snapshots")
            .join(&revision),
    };
    if check_complete(&dir).is_ok() {
        tracing::info!("using the cached {repo_id} in {}", dir.display());
        return Ok(dir);
    }

    let token = modelscope_token_from_env(env);
    let auth = token
        .iter()
        .flat_map(|t| {
            [
                ("Authorization", format!("Bearer {t}")),
                ("Cookie", format!("m_session_id={t}")),
            ]
        })
        .collect();
    let http = Http::new(&endpoint, auth, env)?;
    tracing::info!("fetching {repo_id} (revision {revision}) from ModelScope at {endpoint}");
    let source = ModelScopeSource {
        http: &http,
        endpoint: &endpoint,
        repo_id,
        revision: &revision,
        has_token: token.is_some(),
        locks: root.join(".lock"),
        dir: dir.clone(),
        retries: download_retries_from_env(env),
    };
    fetch_model_files(&source)?;
    check_complete(&dir)?;
    Ok(dir)
}

struct ModelScopeSource<'a> {
    http: &'a Http,
    endpoint: &'a str,
    repo_id: &'a str,
    revision: &'a str,
    has_token: bool,
    locks: PathBuf,
    dir: PathBuf,
    retries: u32,
}

impl FileSource for ModelScopeSource<'_> {
    fn describe(&self) -> String {
        format!(
            "{} (revision {}) on ModelScope at {}",
            self.repo_id, self.revision, self.endpoint
        )
    }

    fn fetch(&self, file: &str) -> Result<Option<PathBuf>> {
        check_relative(file)?;
        let target = self.dir.join(file);
        if target.is_file() {
            return Ok(Some(target));
        }
        let lock_name: String = format!("{}--{}--{file}", self.repo_id, self.revision)
            .chars()
            .map(|c| if is_name_char(c) { c } else { '_' })
            .collect();
        let label = format!("{}/{file}", self.repo_id);
        let _lock = lock_file(&self.locks.join(format!("{lock_name}.lock")), &label)?;
        if target.is_file() {
            return Ok(Some(target));
        }
        let url = format!(
            "{}/api/v1/models/{}/repo?Revision={}&FilePath={}",
            self.endpoint,
            self.repo_id,
            encode_query(self.revision),
            encode_query(file)
        );
        let result = download_file(&Download {
            http: self.http,
            url: &url,
            dest: &target,
            expected: None,
            label: &label,
            retries: self.retries,
        });
        let Err(error) = result else {
            return Ok(Some(target));
        };
        let Some(http) = error.downcast_ref::<HttpError>() else {
            return Err(error);
        };
        let token_hint = if self.has_token {
            "check that MODELSCOPE_API_TOKEN grants access to it"
        } else {
            "if it is private, set MODELSCOPE_API_TOKEN"
        };
        match http.status() {
            _ if http.is_connect() => bail!(
                "cannot reach ModelScope at {} to fetch {} ({http}). Pass a local model \
                 directory instead, or set MODELSCOPE_ENDPOINT to a reachable endpoint",
                self.endpoint,
                self.repo_id
            ),
            Some(404) if file == "config.json" => bail!(
                "model {} (revision {}) was not found on ModelScope at {} ({http}). Check the \
                 id (for example Qwen/Qwen3-8B); {token_hint}; to serve a model on disk, pass \
                 its directory",
                self.repo_id,
                self.revision,
                self.endpoint
            ),
            Some(404) => Ok(None),
            Some(401 | 403) => bail!(
                "ModelScope at {} refused access to {} ({http}); {token_hint}",
                self.endpoint,
                self.repo_id
            ),
            _ => Err(error.context(format!(
                "fetching {file} of {} from ModelScope at {}",
                self.repo_id, self.endpoint
            ))),
        }
    }
}
