//! `qwen3-serve`: serve Qwen3 behind an OpenAI-compatible API.

mod alloc;
mod bench_offline;
mod cli;
mod hub;
mod model_dir;
mod preset;
mod runtime;

use clap::Parser;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

use cli::{BenchCommand, Cli, Command};

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
        Some(Command::Bench(b)) => {
            let (args, default_batch) = match &b {
                BenchCommand::Latency(a) => (a, 1),
                BenchCommand::Throughput(a) => (a, 64),
            };
            let r =
                bench_offline::run(&args.model, args, args.batch_size.unwrap_or(default_batch))?;
            bench_offline::print(&r);
            if let Some(p) = &args.output_json {
                std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
            }
            Ok(())
        }
        None => runtime::serve(cli.serve),
    }
}
