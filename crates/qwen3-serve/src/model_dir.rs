//! Finding the model: a local directory as is, or the bundled fixture when none is named.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The tiny random-weight model shipped in the repository, served when no MODEL is given: in
/// the source tree, or installed beside the binary (`<prefix>/share/qwen3-serve/tiny-qwen3`, as
/// the Docker images do).
pub fn bundled_model() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3");
    if source.join("config.json").is_file() {
        return source;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .map(|bin| bin.join("../share/qwen3-serve/tiny-qwen3"))
        })
        .filter(|p| p.join("config.json").is_file())
        .unwrap_or(source)
}

/// Resolves MODEL to a directory holding config.json, tokenizer.json and the weights: a local
/// directory as is, else a hub id downloaded (Hugging Face, or ModelScope when asked).
pub fn resolve(
    model: Option<&str>,
    hub: &qwen3_hub::HubOptions,
) -> anyhow::Result<(PathBuf, bool)> {
    let Some(model) = model else {
        let dir = bundled_model();
        if !dir.join("config.json").is_file() {
            bail!(
                "no MODEL given and the bundled fixture model is missing at {}",
                dir.display()
            );
        }
        return Ok((dir, true));
    };
    let path = Path::new(model);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!("{} is a directory but has no config.json", path.display());
        }
        return Ok((path.to_path_buf(), false));
    }
    if path.exists() || model.starts_with('/') || model.starts_with('.') {
        bail!("{model} is not a model directory");
    }
    let dir = qwen3_hub::download_model(model, hub)?;
    Ok((dir, false))
}

/// The tokenizer file of a model directory.
pub fn tokenizer_path(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = dir.join("tokenizer.json");
    if p.is_file() {
        Ok(p)
    } else {
        Err(anyhow::anyhow!("{} has no tokenizer.json", dir.display()))
            .context("loading the tokenizer")
    }
}
