//! `qwen3-serve`: serve Qwen3 behind an OpenAI-compatible API.

mod cli;
mod model_dir;
mod preset;
mod runtime;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let args = preset::expand(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Generate(args)) => runtime::generate(&args),
        Some(Command::Serve(args)) => runtime::serve(args),
        None => runtime::serve(cli.serve),
    }
}
