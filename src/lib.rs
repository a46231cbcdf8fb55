//! vllm-sentinel: a monitoring sidecar for vLLM.
//!
//! The crate is organised one module per concern:
//!
//! | module | concern |
//! |---|---|
//! | [`cli`] | command line (clap), every flag also an environment variable |
//! | [`config`] | the TOML config tree, layering (defaults < file < env < flags) and validation |
//! | [`exporter`] | the HTTP server: `/metrics`, `/healthz`, `/readyz`, the status page |
//! | [`status`] | the live status page: 30-minute in-memory history, `/api/v1/status`, embedded assets |
//! | [`prober`] | continuous synthetic streaming traffic and its measurement |
//! | [`scrape`] | scraping the server's own `/metrics`, our exposition parser, normalisation |
//! | [`gpu`] | NVML sampling on its own thread, behind a trait with a fake source |
//! | [`experiments`] | one-shot `bench`, `sweep` and `kv-scale` |
//! | [`sim`] | the built-in vLLM simulator |
//! | [`daemon`] | wires the subsystems together for `serve` and `demo` |
//! | [`httpcap`] | reading a response body with a size cap |
//! | [`errchain`] | one way to print an error with its causes (and never a URL) |
//! | [`units`] | value parsers (durations, positive numbers) shared by every command line |
//!
//! Measuring tasks produce plain-data records that flow to one aggregator per subsystem,
//! which owns the Prometheus series.

pub mod cli;
pub mod clock;
pub mod config;
pub mod errchain;
#[cfg(test)]
mod contract;
pub mod daemon;
pub mod experiments;
pub mod exporter;
pub mod gpu;
pub mod httpcap;
pub mod prober;
pub mod scrape;
pub mod shutdown;
pub mod sim;
pub mod status;
pub mod tap;
pub mod telemetry;
pub mod units;

use std::process::ExitCode;

use anyhow::Context;

/// Runs one command line to completion. `main` is a thin wrapper around this.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    telemetry::init(&cli.global)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vllm-sentinel")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(cli))
}

/// The async body of [`run`], callable from tests that already have a runtime.
pub async fn run_async(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    use cli::Command;
    match cli.command {
        Command::Serve(args) => {
            let cfg = config::load(&cli.global, &args)?;
            let global = cli.global.clone();
            let reloader: daemon::Reloader =
                std::sync::Arc::new(move || config::load(&global, &args));
            daemon::serve(cfg, shutdown::signal_token(), Some(reloader)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            daemon::demo(&cli.global, args, shutdown::signal_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            sim::run_cli(args, shutdown::signal_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            let cfg = config::load(&cli.global, &args.serve)?;
            println!("{}", config::describe(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => experiments::bench::run_cli(args, shutdown::signal_token()).await,
        Command::Sweep(args) => experiments::sweep::run_cli(args, shutdown::signal_token()).await,
        Command::KvScale(args) => {
            experiments::kvscale::run_cli(args, shutdown::signal_token()).await
        }
    }
}
