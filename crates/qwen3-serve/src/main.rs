//! `qwen3-serve`: serve Qwen3 behind an OpenAI-compatible API.

mod alloc;
mod bench_client;
mod bench_mask;
mod bench_offline;
mod cli;
mod heap_trim;
mod model_dir;
mod multinode;
mod npu_metrics;
mod preset;
mod runtime;
mod structured;

use clap::Parser;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

use cli::{BenchCommand, Cli, Command};
use qwen3_backend_ascend::device_query::Cann;
use qwen3_backend_ascend::doctor::{DoctorOptions, DoctorReport, RealShapes};

/// Errors reach the user as one line (`Error: outer: cause: cause`), never with anyhow's
/// backtrace, which `RUST_BACKTRACE=1` would otherwise attach to every start-up error.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = preset::expand(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if matches!(cli.command, None | Some(Command::Serve(_))) {
        heap_trim::spawn();
    }
    match cli.command {
        Some(Command::Generate(args)) => runtime::generate(&args),
        Some(Command::Serve(args)) => runtime::serve(args),
        Some(Command::Doctor(args)) => doctor(&args),
        Some(Command::Bench(BenchCommand::Serve(args))) => bench_serve(&args),
        Some(Command::Bench(BenchCommand::Latency(args))) => bench_offline(&args, 1),
        Some(Command::Bench(BenchCommand::Throughput(args))) => bench_offline(&args, 64),
        Some(Command::Bench(BenchCommand::MakeModel(args))) => bench_offline::make_model(&args),
        Some(Command::Bench(BenchCommand::Mask(args))) => bench_mask::run(&args),
        None => runtime::serve(cli.serve),
    }
}

/// Prints what CANN and the NPUs report; fails when CANN is missing or a check fails.
fn doctor(args: &cli::DoctorArgs) -> anyhow::Result<()> {
    let cann = if args.cann_dir.is_empty() {
        Cann::load()
    } else {
        Cann::load_from(&args.cann_dir)
    };
    let (report, failure) = match cann {
        Ok(c) => {
            let opts = DoctorOptions {
                real_shapes: (!args.quick).then(RealShapes::default),
            };
            let report = qwen3_backend_ascend::doctor::doctor_with(&c, &opts);
            let failure = (!report.ok()).then_some("doctor: some checks failed (see the report)");
            (report, failure)
        }
        Err(e) => {
            if !args.json {
                println!("CANN: not usable: {e}");
                anyhow::bail!("doctor: CANN could not be loaded");
            }
            let report = DoctorReport {
                errors: vec![format!("CANN not usable: {e}")],
                ..Default::default()
            };
            (report, Some("doctor: CANN could not be loaded"))
        }
    };
    if args.json {
        /// The report with its verdict, so a reader need not recompute `ok()`.
        #[derive(serde::Serialize)]
        struct DoctorJson<'a> {
            ok: bool,
            #[serde(flatten)]
            report: &'a DoctorReport,
        }
        let json = DoctorJson {
            ok: report.ok(),
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{report}");
    }
    match failure {
        Some(f) => anyhow::bail!(f),
        None => Ok(()),
    }
}

fn bench_serve(args: &cli::BenchServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(bench_client::run(args))?;
    bench_client::print(&r);
    if args.save_result {
        let name = args
            .result_filename
            .clone()
            .unwrap_or_else(|| "bench-serve.json".into());
        let path = args.result_dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
        eprintln!("saved {}", path.display());
    }
    Ok(())
}

fn bench_offline(args: &cli::BenchOfflineArgs, default_batch: usize) -> anyhow::Result<()> {
    let r = bench_offline::run(&args.model, args, args.batch_size.unwrap_or(default_batch))?;
    bench_offline::print(&r);
    if let Some(p) = &args.output_json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}
