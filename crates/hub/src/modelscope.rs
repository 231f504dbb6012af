//! ModelScope: files straight from its repository API into the modelscope SDK's cache layout
//! (reusing a directory an older SDK left), with an actionable message for each refusal.

use std::fs;
use std::path::PathBuf;

use crate::download::{download_file, lock_file, Download};
use crate::env::{
    download_retries_from_env, modelscope_cache_dir_from_env, modelscope_endpoint_from_env,
    modelscope_token_from_env, normalize_endpoint,
};
use crate::error::HubError;
use crate::files::{
    check_complete, check_relative, check_revision, fetch_model_files, is_name_char, FileSource,
};
use crate::http::{encode_query, Http};
use crate::HubOptions;

type Result<T, E = HubError> = std::result::Result<T, E>;

pub(crate) fn modelscope_download(
    repo_id: &str,
    opts: &HubOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    let Some((owner, name)) = repo_id.split_once('/') else {
        return Err(HubError::Invalid(format!(
            "ModelScope model ids are owner/name (for example Qwen/Qwen3-8B), not {repo_id:?}"
        )));
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
            HubError::Config(
                "cannot place the ModelScope cache: neither MODELSCOPE_CACHE nor HOME is set; \
                 pass --download-dir"
                    .to_string(),
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
        let Some(http) = error.http() else {
            return Err(error);
        };
        let token_hint = if self.has_token {
            "check that MODELSCOPE_API_TOKEN grants access to it"
        } else {
            "if it is private, set MODELSCOPE_API_TOKEN"
        };
        match http.status() {
            _ if http.is_connect() => Err(HubError::Unavailable(format!(
                "cannot reach ModelScope at {} to fetch {} ({http}). Pass a local model \
                 directory instead, or set MODELSCOPE_ENDPOINT to a reachable endpoint",
                self.endpoint, self.repo_id
            ))),
            Some(404) if file == "config.json" => Err(HubError::Missing(format!(
                "model {} (revision {}) was not found on ModelScope at {} ({http}). Check the \
                 id (for example Qwen/Qwen3-8B); {token_hint}; to serve a model on disk, pass \
                 its directory",
                self.repo_id, self.revision, self.endpoint
            ))),
            Some(404) => Ok(None),
            Some(401 | 403) => Err(HubError::Unavailable(format!(
                "ModelScope at {} refused access to {} ({http}); {token_hint}",
                self.endpoint, self.repo_id
            ))),
            _ => Err(error.context(format!(
                "fetching {file} of {} from ModelScope at {}",
                self.repo_id, self.endpoint
            ))),
        }
    }
}
