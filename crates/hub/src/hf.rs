//! The Hugging Face hub: revision to commit, files to `blobs/<etag>` behind `snapshots/`
//! links in the cache layout huggingface_hub uses, the offline and cached-snapshot paths,
//! and an actionable message for each way the hub can refuse.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::download::{download_file, human_bytes, lock_file, Download};
use crate::env::{
    download_retries_from_env, hf_cache_dir_from_env, hf_endpoint_from_env, hf_offline_from_env,
    hf_token_from_env, hf_token_path_from_env, normalize_endpoint,
};
use crate::error::{HubError, ResultExt};
use crate::files::{
    check_complete, check_relative, check_revision, fetch_model_files, is_commit_hash,
    is_name_char, FileSource,
};
use crate::http::{header_u64, Follow, Http, HttpError};
use crate::HubOptions;

type Result<T, E = HubError> = std::result::Result<T, E>;

pub(crate) fn hf_download(
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
            HubError::Config(
                "cannot place the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, \
                 XDG_CACHE_HOME or HOME is set; pass --download-dir"
                    .to_string(),
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
        Err(e) => {
            // A hub that cannot be used now: a complete cached snapshot still serves.
            if e.is_transient() {
                if let Ok(dir) = hf_cached_snapshot(&repo_dir, &revision) {
                    tracing::warn!(
                        "the Hugging Face hub at {endpoint} cannot be used ({e}); using the \
                         cached {repo_id} in {}",
                        dir.display()
                    );
                    return Ok(dir);
                }
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
    };
    let commit = info
        .get("sha")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            HubError::Invalid(format!(
                "{info_url} gave no commit (\"sha\") for {repo_id}; is {endpoint} a Hugging \
                 Face-compatible hub?"
            ))
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
) -> HubError {
    let token_hint = if has_token {
        "check that HF_TOKEN grants access to it"
    } else {
        "if it is private or gated, set HF_TOKEN"
    };
    match (e.status(), e.error_code()) {
        _ if e.is_connect() => HubError::Unavailable(format!(
            "cannot reach the Hugging Face hub at {endpoint} to fetch {repo_id} ({e}). Pass a \
             local model directory instead, point HF_ENDPOINT at a reachable mirror (for example \
             https://hf-mirror.com), or use ModelScope with VLLM_USE_MODELSCOPE=True"
        )),
        (_, Some("GatedRepo")) => HubError::Unavailable(format!(
            "{repo_id} on {endpoint} is gated: accept its terms on the model page, then set \
             HF_TOKEN to a token of that account ({e})"
        )),
        (_, Some("RevisionNotFound")) => HubError::Missing(format!(
            "{repo_id} on {endpoint} has no revision {revision:?} ({e})"
        )),
        (Some(404), _) | (Some(401), Some("RepoNotFound")) => HubError::Missing(format!(
            "model {repo_id} was not found on {endpoint} ({e}). Check the id (for example \
             Qwen/Qwen3-8B); {token_hint}; to serve a model on disk, pass its directory"
        )),
        (Some(401 | 403), _) => HubError::Unavailable(format!(
            "{endpoint} refused access to {repo_id} ({e}); {token_hint}"
        )),
        _ => {
            let what = file.map_or_else(|| repo_id.to_string(), |f| format!("{f} of {repo_id}"));
            HubError::from(e).context(format!(
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
    fn error(&self, e: HttpError, file: &str) -> HubError {
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
                HubError::Invalid(format!(
                    "{url} (HTTP {}) sent no usable ETag; is {} a Hugging Face-compatible hub?",
                    meta.status(),
                    self.endpoint
                ))
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
                .map_err(|e| match e.into_http() {
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
        HubError::Io {
            context: format!("moving the link {} into place", pointer.display()),
            source: e,
        }
    })
}
