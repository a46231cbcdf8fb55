//! vllm-sentinel: a monitoring sidecar for vLLM.
//!
//! The crate is organised one module per concern, in layers: a module names (`crate::…`) only
//! modules of a lower layer, or of its own layer where the table says so, so the graph of
//! top-level modules has no cycle (`tests/it/architecture.rs` checks it and prints any cycle).
//!
//! | layer | module | concern |
//! |---|---|---|
//! | 0 leaf | [`units`] | value parsers (durations, positive numbers) shared by every command line |
//! | 0 leaf | [`clock`] | `CLOCK_MONOTONIC` shared by simulator stamps and prober receive times |
//! | 0 leaf | [`httpcap`] | reading a response body with a size cap |
//! | 0 leaf | [`errchain`] | one way to print an error with its causes (and never a URL) |
//! | 0 leaf | [`process`] | this process's CPU, memory, fds (`process_*` metrics, prober self-health) |
//! | 0 leaf | [`shutdown`] | the SIGINT/SIGTERM token |
//! | 1 config | [`config`] | the TOML config tree, one plain-data section per submodule, and its validation; names no subsystem and not [`cli`] |
//! | 2 sources | [`workload`] | workload sources: datasets (ShareGPT, JSON Lines), prefix groups, multi-turn sessions, LoRA adapters, as plain request descriptions (names only `config`) |
//! | 2 runtime | [`runtime`] | what every subsystem starts with: `RunContext` (tracker, shutdown tokens, config channel), `Readiness`, `StatusBoard` |
//! | 3 subsystems | [`prober`] | continuous synthetic streaming traffic and its measurement |
//! | 3 subsystems | [`scrape`] | scraping the server's own `/metrics`, our exposition parser, normalisation |
//! | 3 subsystems | [`gpu`] | NVML sampling on its own thread, behind a trait with a fake source |
//! | 3 subsystems | [`tap`] | the measuring reverse proxy (uses the prober's request classification) |
//! | 4 views | [`status`] | the live status page: 30-minute in-memory history, `/api/v1/status`, embedded assets (reads scrape's parser) |
//! | 4 views | [`exporter`] | the HTTP server: `/metrics`, `/healthz`, `/readyz`, the status page |
//! | 4 tools | [`experiments`] | one-shot `bench`, `sweep` and `kv-scale` (reuse prober, scrape, gpu) |
//! | 4 tools | [`sim`] | the built-in vLLM simulator (binds through the exporter) |
//! | 5 entry | [`cli`] | command line (clap), every flag also an environment variable; lays flags over the config file |
//! | 5 entry | [`telemetry`] | logging set-up from the global flags |
//! | 5 entry | [`daemon`] | wires the subsystems together for `serve` and `demo` |
//!
//! Measuring tasks produce plain-data records that flow to one aggregator per subsystem,
//! which owns the Prometheus series.

pub mod cli;
pub mod clock;
pub mod config;
#[cfg(test)]
mod contract;
pub mod daemon;
pub mod errchain;
pub mod experiments;
pub mod exporter;
pub mod gpu;
pub mod httpcap;
pub mod prober;
pub mod process;
pub mod runtime;
pub mod scrape;
pub mod shutdown;
pub mod sim;
pub mod status;
pub mod tap;
pub mod telemetry;
pub mod units;
pub mod workload;

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
    // The command runs as a task on the runtime's workers, not on `block_on`'s own thread. With
    // it there, the open-loop pacer and the requests it spawns share the workers: a request
    // spawned by the pacer starts on the same worker as soon as the pacer waits, instead of
    // waiting for a parked worker to be woken, and a client pinned to one core has one busy
    // thread instead of two that the kernel would alternate in time slices of milliseconds
    // (measured: schedule lag p99 of milliseconds, BENCHMARKS.md, "Generator capacity").
    runtime.block_on(async move {
        match tokio::spawn(run_async(cli)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the command's task ended early: {e}")),
        }
    })
}

/// The async body of [`run`], callable from tests that already have a runtime.
pub async fn run_async(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    use cli::Command;
    match cli.command {
        Command::Serve(args) => {
            let cfg = cli::load_config(&cli.global, &args)?;
            let global = cli.global.clone();
            let reloader: runtime::Reloader =
                std::sync::Arc::new(move || cli::load_config(&global, &args));
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
            let cfg = cli::load_config(&cli.global, &args.serve)?;
            let web = exporter::web_config::WebConfig::load(cfg.server.web_config_file.as_deref())?;
            println!("{}", config::describe(&cfg));
            for d in workload::describe_datasets(&cfg) {
                println!("{d}");
            }
            println!("{}", web.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => experiments::bench::run_cli(args, shutdown::signal_token()).await,
        Command::Sweep(args) => experiments::sweep::run_cli(args, shutdown::signal_token()).await,
        Command::KvScale(args) => {
            experiments::kvscale::run_cli(args, shutdown::signal_token()).await
        }
    }
}
