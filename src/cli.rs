//! The command line. Every flag can also be set from a `VLLM_SENTINEL_*` environment variable;
//! flags win over the environment, which wins over the config file, which wins over defaults.
//! The layering lives here, above [`crate::config`]: [`ServeArgs::overrides`] turns the flags
//! into plain-data [`config::Overrides`] and [`load_config`] lays them over the file, so the
//! config module never names the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::units::{parse_duration, parse_positive_f64, parse_positive_u32};

pub use crate::config::DEFAULT_LISTEN;
use crate::config::{self, Config};

#[derive(Debug, Parser)]
#[command(
    name = "vllm-sentinel",
    version,
    about = "Monitoring sidecar for vLLM: synthetic streaming probes, server /metrics, NVML GPU sampling, exported to Prometheus",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Log filter (e.g. `info`, `vllm_sentinel=debug`); defaults to RUST_LOG, then `info`.
    #[arg(long, global = true, env = "VLLM_SENTINEL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VLLM_SENTINEL_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar daemon: probe, scrape and sample, and export it all on /metrics.
    Serve(ServeArgs),
    /// Run the built-in vLLM simulator alone (an OpenAI-compatible server).
    Simulate(crate::sim::SimArgs),
    /// Run the simulator and the daemon together on loopback and print the URLs to open.
    Demo(DemoArgs),
    /// Load and validate the configuration, print the effective settings, and exit.
    CheckConfig(CheckConfigArgs),
    /// One-shot baseline: N sequential requests after a warm-up; latency percentiles.
    Bench(crate::experiments::bench::BenchArgs),
    /// One-shot sweep over concurrency levels or request rates: throughput, latency, saturation knee.
    Sweep(crate::experiments::sweep::SweepArgs),
    /// One-shot context-length study: TTFT and KV-cache usage against prompt length, feasibility grid.
    KvScale(crate::experiments::kvscale::KvScaleArgs),
}

/// Flags of `serve` (and of `check-config`, which validates what `serve` would run).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file. Flags and environment variables override what it says.
    #[arg(long, short = 'c', env = "VLLM_SENTINEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Base URL of the vLLM server (e.g. http://127.0.0.1:8000). Replaces the file's targets with this one.
    #[arg(long, env = "VLLM_SENTINEL_TARGET")]
    pub target: Option<String>,
    /// Address the exporter listens on [default: 0.0.0.0:9471].
    #[arg(long, env = "VLLM_SENTINEL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Allow `POST /-/reload` on the exporter port (off by default; SIGHUP always reloads). Sets `server.enable_lifecycle`.
    #[arg(long = "web.enable-lifecycle", action = clap::ArgAction::SetTrue, value_parser = BoolishValueParser::new(), env = "VLLM_SENTINEL_WEB_ENABLE_LIFECYCLE")]
    pub enable_lifecycle: bool,
    /// TLS and HTTP Basic auth for the exporter: a YAML file in the format of Prometheus'
    /// exporter-toolkit (`tls_server_config`, `basic_auth_users` with bcrypt hashes). Re-read on
    /// reload and when it changes. Sets `server.web_config_file`; see docs/config.md.
    #[arg(
        long = "web.config.file",
        value_name = "PATH",
        env = "VLLM_SENTINEL_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<PathBuf>,
    /// Model to request; default: the first model of the target's /v1/models.
    #[arg(long, env = "VLLM_SENTINEL_MODEL")]
    pub model: Option<String>,
    /// Endpoint the probes use.
    #[arg(long, value_enum, env = "VLLM_SENTINEL_ENDPOINT")]
    pub endpoint: Option<config::Endpoint>,
    /// Closed loop: number of concurrent probe streams (a positive integer).
    #[arg(long, env = "VLLM_SENTINEL_CONCURRENCY", conflicts_with = "rate", allow_negative_numbers = true, value_parser = parse_positive_u32)]
    pub concurrency: Option<u32>,
    /// Open loop: probe requests per second (Poisson arrivals; a positive number).
    #[arg(long, env = "VLLM_SENTINEL_RATE", allow_negative_numbers = true, value_parser = parse_positive_f64)]
    pub rate: Option<f64>,
    /// Environment variable holding the target's API key (sent as a Bearer token).
    #[arg(long, env = "VLLM_SENTINEL_API_KEY_ENV")]
    pub api_key_env: Option<String>,
    /// File holding the target's API key (sent as a Bearer token).
    #[arg(long, env = "VLLM_SENTINEL_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Interval between scrapes of the target's /metrics (e.g. 5s).
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SCRAPE_INTERVAL")]
    pub scrape_interval: Option<std::time::Duration>,
    /// Disable NVML GPU sampling.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = BoolishValueParser::new(), env = "VLLM_SENTINEL_NO_GPU")]
    pub no_gpu: bool,
    /// Path to libnvidia-ml.so.1 when it is not on the loader path.
    #[arg(long, env = "VLLM_SENTINEL_NVML_LIBRARY")]
    pub nvml_library: Option<PathBuf>,
    /// Interval between GPU samples (e.g. 1s).
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_GPU_INTERVAL")]
    pub gpu_interval: Option<std::time::Duration>,
    /// Run the tap on this address (e.g. 0.0.0.0:9472): a streaming reverse proxy to the target
    /// (`tap.target`, default the first) that measures users' completions and chat requests.
    /// Sets `tap.listen` and `tap.enabled = true`; see docs/tap.md.
    #[arg(long, env = "VLLM_SENTINEL_TAP_LISTEN")]
    pub tap_listen: Option<SocketAddr>,
}

impl ServeArgs {
    /// What these flags (and environment variables) set over the config file.
    pub fn overrides(&self) -> config::Overrides {
        config::Overrides {
            target: self.target.clone(),
            listen: self.listen,
            enable_lifecycle: self.enable_lifecycle,
            web_config_file: self.web_config_file.clone(),
            model: self.model.clone(),
            endpoint: self.endpoint,
            concurrency: self.concurrency,
            rate: self.rate,
            api_key_env: self.api_key_env.clone(),
            api_key_file: self.api_key_file.clone(),
            scrape_interval: self.scrape_interval,
            no_gpu: self.no_gpu,
            nvml_library: self.nvml_library.clone(),
            gpu_interval: self.gpu_interval,
            tap_listen: self.tap_listen,
        }
    }
}

/// The configuration `serve` runs: defaults < the file (`--config`) < environment < flags,
/// validated. Called again on every reload (re-reading the file).
pub fn load_config(_global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<Config> {
    let cfg = config::load(args.config.as_deref(), &args.overrides())?;
    // Dataset files are read here, once per load, so a bad one stops start-up, a reload and
    // check-config alike.
    crate::workload::check_config(&cfg)?;
    Ok(cfg)
}

#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address of the daemon's exporter.
    #[arg(long, default_value = "127.0.0.1:9471", env = "VLLM_SENTINEL_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the simulator.
    #[arg(
        long,
        default_value = "127.0.0.1:8000",
        env = "VLLM_SENTINEL_SIM_LISTEN"
    )]
    pub sim_listen: SocketAddr,
    /// Concurrent probe streams against the simulator (a positive integer).
    #[arg(long, default_value_t = 4, env = "VLLM_SENTINEL_CONCURRENCY", allow_negative_numbers = true, value_parser = parse_positive_u32)]
    pub concurrency: u32,
    /// Stop after this long (e.g. 30s); default: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_DURATION")]
    pub duration: Option<std::time::Duration>,
    /// Disable NVML GPU sampling.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = BoolishValueParser::new(), env = "VLLM_SENTINEL_NO_GPU")]
    pub no_gpu: bool,
    /// Show this many simulated GPUs (constant H200 values) instead of sampling NVML; for
    /// trying the status page on a machine without a GPU.
    #[arg(long, default_value_t = 0, env = "VLLM_SENTINEL_FAKE_GPUS", value_parser = clap::value_parser!(u32).range(0..=16))]
    pub fake_gpus: u32,
    /// Resolution of the status page's history (`server.status_interval`).
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "VLLM_SENTINEL_STATUS_INTERVAL")]
    pub status_interval: std::time::Duration,
    /// Also run the tap on this address (e.g. 127.0.0.1:9472): a measuring reverse proxy to the
    /// simulator, so that the `vllm_sentinel_traffic_*` series have data (as `serve --tap-listen`).
    #[arg(long, env = "VLLM_SENTINEL_TAP_LISTEN")]
    pub tap_listen: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vllm-sentinel").chain(args.iter().copied()))
    }

    #[test]
    fn negative_rate_and_concurrency_say_must_be_positive() {
        for args in [
            &["serve", "--rate", "-1"][..],
            &["serve", "--rate", "0"],
            &["serve", "--concurrency", "-1"],
            &["serve", "--concurrency", "0"],
            &["check-config", "--rate", "-2.5"],
        ] {
            let err = parse(args).expect_err("must be refused").to_string();
            assert!(err.contains("must be positive"), "{args:?}: {err}");
            assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
        }
        let Command::Serve(a) = parse(&["serve", "--rate", "2.5"]).expect("valid").command else {
            panic!("not serve");
        };
        assert_eq!(a.rate, Some(2.5));
    }
}
