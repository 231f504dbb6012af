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
        check_complete(path)?;
        return Ok((path.to_path_buf(), false));
    }
    if path.exists() || model.starts_with('/') || model.starts_with('.') {
        bail!("{model} is not a model directory");
    }
    let dir = qwen3_hub::download_model(model, hub)?;
    check_complete(&dir)?;
    Ok((dir, false))
}

/// Fails, naming every missing file, unless `dir` holds config.json, tokenizer.json and
/// safetensors weights: found here rather than after the weights are loaded and the KV
/// cache allocated.
pub fn check_complete(dir: &Path) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    let has_weights = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"));
    if !has_weights {
        missing.push("*.safetensors weights");
    }
    if !missing.is_empty() {
        bail!(
            "{} is not a complete model directory: no {}",
            dir.display(),
            missing.join(", no ")
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_directory_is_refused_naming_what_is_missing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = bundled_model();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap_or_else(|e| panic!("{e}"));
        }
        let e = check_complete(dir.path()).expect_err("no tokenizer");
        assert!(e.to_string().contains("no tokenizer.json"), "{e}");
        std::fs::remove_file(dir.path().join("model.safetensors"))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = check_complete(dir.path()).expect_err("no weights");
        assert!(e.to_string().contains("weights"), "{e}");
        assert!(check_complete(&src).is_ok());
    }
}
