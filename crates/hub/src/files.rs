//! What a model directory must hold, and the names from a hub that become paths in it: the
//! checks on hub ids, revisions and file names, the weight index, and fetching the file set.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{HubError, ResultExt};

type Result<T, E = HubError> = std::result::Result<T, E>;

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

pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

pub(crate) fn check_repo_id(repo_id: &str) -> Result<()> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let valid = (1..=2).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".." && p.chars().all(is_name_char));
    if !valid {
        return Err(HubError::Invalid(format!(
            "{repo_id:?} is not a local model directory and not a hub model id \
             (owner/name, for example Qwen/Qwen3-8B)"
        )));
    }
    Ok(())
}

/// A revision may hold `/` (`refs/pr/1`) but no `..`, nothing absolute, nothing odd.
pub(crate) fn check_revision(revision: &str) -> Result<()> {
    let valid = !revision.is_empty()
        && revision
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && p.chars().all(is_name_char));
    if !valid {
        return Err(HubError::Invalid(format!(
            "{revision:?} is not a valid revision (a branch, tag or commit)"
        )));
    }
    Ok(())
}

/// A file name from the hub (or a weight index) must stay inside the model directory.
pub(crate) fn check_relative(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && !name.contains('\\')
        && !name.contains('\0')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !valid {
        return Err(HubError::Invalid(format!(
            "refusing the file name {name:?}: it is not a plain path inside the repository"
        )));
    }
    Ok(())
}

pub(crate) fn is_commit_hash(revision: &str) -> bool {
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
        .ok_or_else(|| {
            HubError::Invalid(format!("{} has no \"weight_map\" object", index.display()))
        })?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            HubError::Invalid(format!(
                "{}: the weight_map entry for {tensor} is not a file name",
                index.display()
            ))
        })?;
        check_relative(file).with_context(|| format!("in {}", index.display()))?;
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err(HubError::Invalid(format!(
            "{} names no weight files",
            index.display()
        )));
    }
    Ok(shards)
}

/// Whether `dir` holds everything the server needs; the error lists what is missing.
pub(crate) fn check_complete(dir: &Path) -> Result<()> {
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
        Err(HubError::Missing(format!(
            "{} lacks {}",
            dir.display(),
            missing.join(", ")
        )))
    }
}

/// Where a hub keeps files, one call per file.
pub(crate) trait FileSource {
    /// The local path of `file`, fetched if needed; `None` when the repository has no such file.
    fn fetch(&self, file: &str) -> Result<Option<PathBuf>>;
    /// "Qwen/Qwen3-8B (revision main) on https://huggingface.co", for messages.
    fn describe(&self) -> String;
}

pub(crate) fn fetch_model_files(src: &dyn FileSource) -> Result<()> {
    for (file, required) in MODEL_FILES {
        if src.fetch(file)?.is_none() && required {
            return Err(HubError::Missing(format!(
                "{} has no {file}; qwen3-serve needs config.json, tokenizer.json, \
                 tokenizer_config.json and safetensors weights (a Hugging Face-format model)",
                src.describe()
            )));
        }
    }
    if let Some(index) = src.fetch(WEIGHTS_INDEX)? {
        for shard in shard_names(&index)? {
            if src.fetch(&shard)?.is_none() {
                return Err(HubError::Missing(format!(
                    "{} is missing the weight shard {shard}, which {WEIGHTS_INDEX} names",
                    src.describe()
                )));
            }
        }
    } else if src.fetch(SINGLE_WEIGHTS)?.is_none() {
        return Err(HubError::Missing(format!(
            "{} has neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX}; only safetensors weights \
             are supported",
            src.describe()
        )));
    }
    Ok(())
}
