//! `--config FILE`: a TOML preset whose keys are the long flag names (underscores or dashes).
//! Its values become flags placed before the command line's own, so flags given on the
//! command line override the preset (later flags win).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};

/// Flags for the preset named by `--config` in `args`, inserted after the subcommand (if any).
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut path = None;
    let mut it = args.iter().enumerate().skip(1);
    while let Some((_, a)) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = it.next().map(|(_, v)| v.clone());
        } else if let Some(v) = s.strip_prefix("--config=") {
            path = Some(OsString::from(v));
        }
    }
    let Some(path) = path else { return Ok(args) };
    let flags = preset_flags(Path::new(&path))?;
    let at = match args.get(1).map(|a| a.to_string_lossy().to_string()) {
        Some(s) if s == "serve" => 2,
        _ => 1,
    };
    let mut out = args[..at.min(args.len())].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&args[at.min(args.len())..]);
    Ok(out)
}

pub fn preset_flags(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing --config {}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {
                // The "off" spelling of the switches that are on by default.
                if matches!(
                    key.as_str(),
                    "enable_prefix_caching" | "enable_chunked_prefill" | "async_scheduling"
                ) {
                    flags.push(format!("--no-{}", key.replace('_', "-")));
                }
            }
            toml::Value::String(s) => flags.extend([flag, s]),
            toml::Value::Integer(i) => flags.extend([flag, i.to_string()]),
            toml::Value::Float(f) => flags.extend([flag, f.to_string()]),
            toml::Value::Array(a) => {
                flags.push(flag);
                for v in a {
                    match v {
                        toml::Value::String(s) => flags.push(s),
                        other => flags.push(other.to_string()),
                    }
                }
            }
            toml::Value::Table(t) => flags.extend([flag, serde_json::to_string(&t)?]),
            toml::Value::Datetime(_) => {
                bail!("--config {}: {key} cannot be a date", path.display())
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_values_become_flags_before_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p.toml");
        std::fs::write(
            &p,
            "tensor_parallel_size = 4\nenable_prefix_caching = false\ndevice = \"npu\"\nserved_model_name = [\"a\", \"b\"]\ngpu_memory_utilization = 0.9\n",
        )
        .expect("write");
        let args: Vec<OsString> = [
            "qwen3-serve",
            "serve",
            "M",
            "--config",
            p.to_str().unwrap_or(""),
            "--device",
            "cpu",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out: Vec<String> = expand(args)
            .expect("expand")
            .into_iter()
            .map(|s| s.to_string_lossy().to_string())
            .collect();
        assert_eq!(&out[..2], &["qwen3-serve", "serve"]);
        let joined = out.join(" ");
        assert!(joined.contains("--tensor-parallel-size 4"));
        assert!(joined.contains("--no-enable-prefix-caching"));
        assert!(joined.contains("--served-model-name a b"));
        // The command line's --device comes after the preset's, so it wins.
        let pre = joined.find("--device npu").expect("preset device");
        let cli = joined.find("--device cpu").expect("cli device");
        assert!(pre < cli);
    }
}

#[cfg(test)]
mod preset_files {
    use clap::Parser;

    /// Every preset in configs/ expands to flags the CLI accepts.
    #[test]
    fn every_shipped_preset_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("configs/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                let mut args = vec!["qwen3-serve".to_string(), "serve".into()];
                args.extend(super::preset_flags(&p).expect("preset"));
                if let Err(e) = crate::cli::Cli::try_parse_from(&args) {
                    panic!("{}: {e}", p.display());
                }
                n += 1;
            }
        }
        assert!(n >= 10, "{n} presets");
    }
}
