//! `sweep`'s flags and the levels they ask for (checked before any load is sent).

use std::time::Duration;

use anyhow::bail;

use super::super::common::CommonArgs;
use super::super::goodput::SloArgs;
use super::super::knee::KneeParams;
use crate::units::parse_duration;

/// Flags of `sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Closed loop: concurrency levels, e.g. 1,2,4,8,16 [default: 1,2,4,8,16,32,64].
    #[arg(
        long,
        value_delimiter = ',',
        env = "VLLM_SENTINEL_SWEEP_CONCURRENCY",
        conflicts_with = "rate"
    )]
    pub concurrency: Vec<u32>,
    /// Open loop: request rates per second (Poisson arrivals), e.g. 1,2,5.
    #[arg(long, value_delimiter = ',', env = "VLLM_SENTINEL_SWEEP_RATE")]
    pub rate: Vec<f64>,
    /// Measured time per level, after its warm-up.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "VLLM_SENTINEL_SWEEP_DURATION")]
    pub duration: Duration,
    /// Measure this many requests per level instead of a duration.
    #[arg(long, env = "VLLM_SENTINEL_SWEEP_REQUESTS")]
    pub requests: Option<u32>,
    /// Warm-up time per level (requests that start in it are not measured).
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "VLLM_SENTINEL_SWEEP_WARMUP")]
    pub warmup: Duration,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128, env = "VLLM_SENTINEL_PROMPT_TOKENS")]
    pub prompt_tokens: u32,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 128, env = "VLLM_SENTINEL_MAX_TOKENS")]
    pub max_tokens: u32,
    #[command(flatten)]
    pub slo: SloArgs,
    /// Run every level even past saturation.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_NO_EARLY_STOP")]
    pub no_early_stop: bool,
    /// Knee: a step scaling throughput by less than this fraction of its load increase...
    #[arg(long, default_value_t = 0.5, env = "VLLM_SENTINEL_KNEE_EFFICIENCY")]
    pub knee_efficiency: f64,
    /// ...while raising p50 end-to-end latency by more than this fraction.
    #[arg(
        long,
        default_value_t = 0.10,
        env = "VLLM_SENTINEL_KNEE_LATENCY_GROWTH"
    )]
    pub knee_latency_growth: f64,
    /// Stop after this many consecutive non-scaling steps.
    #[arg(long, default_value_t = 2, env = "VLLM_SENTINEL_SATURATION_LEVELS")]
    pub saturation_levels: usize,
    /// Interval between samples of the server's /metrics (and NVML) during a level.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "VLLM_SENTINEL_METRICS_INTERVAL")]
    pub metrics_interval: Duration,
    /// Run without the server's /metrics (no KV usage or queue depth in the report).
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_NO_SERVER_METRICS")]
    pub no_server_metrics: bool,
    /// Rate mode: most requests in flight at once; arrivals beyond it are dropped and counted.
    #[arg(long, default_value_t = 1024, env = "VLLM_SENTINEL_MAX_IN_FLIGHT")]
    pub max_in_flight: u32,
    /// Search for the highest Poisson rate whose SLO attainment reaches --slo-attainment,
    /// between --rate-min and --rate-max (needs an --slo-*; each probe is one level).
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_RATE_SEARCH", conflicts_with_all = ["rate", "concurrency"])]
    pub rate_search: bool,
    /// --rate-search: lowest rate, requests per second (it must meet the SLOs).
    #[arg(long, env = "VLLM_SENTINEL_RATE_MIN")]
    pub rate_min: Option<f64>,
    /// --rate-search: highest rate, requests per second.
    #[arg(long, env = "VLLM_SENTINEL_RATE_MAX")]
    pub rate_max: Option<f64>,
    /// --rate-search: stop when the lowest failing rate is within this fraction above the
    /// highest passing one.
    #[arg(long, default_value_t = 0.05, env = "VLLM_SENTINEL_SEARCH_PRECISION")]
    pub search_precision: f64,
    /// --rate-search: most probes (levels) to run, the two bracket ends included.
    #[arg(long, default_value_t = 10, env = "VLLM_SENTINEL_SEARCH_MAX_PROBES")]
    pub search_max_probes: usize,
    /// Also write each level as `vllm bench serve --save-result --save-detailed` writes its
    /// result: FILE's stem plus `-rate<R>` or `-concurrency<C>` (see docs/experiments.md).
    #[arg(long, env = "VLLM_SENTINEL_VLLM_BENCH_JSON")]
    pub vllm_bench_json: Option<std::path::PathBuf>,
    /// Rate mode: Poisson arrivals, or constant gaps of 1/R (vLLM's `--burstiness inf`).
    #[arg(long, value_enum, default_value_t = SweepArrival::Poisson, env = "VLLM_SENTINEL_ARRIVAL")]
    pub arrival: SweepArrival,
    /// Rate mode: reach each arrival to the microsecond (sleep to 2 ms before it, then yield
    /// until it) instead of on tokio's 1 ms timer tick; costs CPU while waiting.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_PRECISE_ARRIVALS")]
    pub precise_arrivals: bool,
    /// Rate mode: seed of the arrival process (the same seed gives the same schedule); with a
    /// --dataset other than random, also of the requests.
    #[arg(long, default_value_t = 0, env = "VLLM_SENTINEL_SEED")]
    pub seed: u64,
    /// Where requests come from (--dataset …): see docs/experiments.md, "Workload sources".
    #[command(flatten)]
    pub workload: super::super::workload::WorkloadArgs,
}

/// `--arrival`: the open loop's arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SweepArrival {
    /// Exponential gaps (vLLM's default `--burstiness 1`).
    Poisson,
    /// Equal gaps of 1/R (vLLM's `--burstiness inf`).
    Constant,
}

impl SweepArrival {
    pub(super) fn process(self) -> crate::config::prober::Arrival {
        match self {
            SweepArrival::Poisson => crate::config::prober::Arrival::Poisson,
            SweepArrival::Constant => crate::config::prober::Arrival::Constant,
        }
    }

    /// Its name in the report's settings.
    pub fn as_str(self) -> &'static str {
        match self {
            SweepArrival::Poisson => "poisson",
            SweepArrival::Constant => "constant",
        }
    }
}

/// The load of one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Closed loop with this many streams.
    Concurrency(u32),
    /// Open loop at this many requests per second.
    Rate(f64),
}

impl Load {
    pub(super) fn value(self) -> f64 {
        match self {
            Load::Concurrency(c) => f64::from(c),
            Load::Rate(r) => r,
        }
    }
}

impl SweepArgs {
    /// The levels to run, in increasing order, or what is wrong with the flags.
    pub fn loads(&self) -> anyhow::Result<Vec<Load>> {
        if !self.rate.is_empty() {
            if let Some(r) = self.rate.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
                bail!("--rate: {r} is not a positive number of requests per second");
            }
            let mut v = self.rate.clone();
            v.sort_by(f64::total_cmp);
            v.dedup();
            return Ok(v.into_iter().map(Load::Rate).collect());
        }
        let mut v = if self.concurrency.is_empty() {
            vec![1, 2, 4, 8, 16, 32, 64]
        } else {
            self.concurrency.clone()
        };
        if v.contains(&0) {
            bail!("--concurrency: levels must be at least 1");
        }
        v.sort_unstable();
        v.dedup();
        Ok(v.into_iter().map(Load::Concurrency).collect())
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        self.loads()?;
        self.validate_search()?;
        if self.requests == Some(0) {
            bail!("--requests: must be at least 1");
        }
        if self.requests.is_none() && self.duration.is_zero() {
            bail!("--duration: must be more than 0");
        }
        if self.prompt_tokens == 0 || self.max_tokens == 0 {
            bail!("--prompt-tokens and --max-tokens: must be at least 1");
        }
        self.slo.validate()?;
        if self.metrics_interval.is_zero() {
            bail!("--metrics-interval: must be more than 0");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight: must be at least 1");
        }
        Ok(())
    }

    /// The search's bracket, when `--rate-search` is given; what is wrong with its flags.
    pub(super) fn search_bracket(&self) -> anyhow::Result<Option<(f64, f64)>> {
        if !self.rate_search {
            if self.rate_min.is_some() || self.rate_max.is_some() {
                bail!("--rate-min and --rate-max: only with --rate-search");
            }
            return Ok(None);
        }
        let (Some(lo), Some(hi)) = (self.rate_min, self.rate_max) else {
            bail!("--rate-search: needs --rate-min and --rate-max");
        };
        if !(lo.is_finite() && lo > 0.0) {
            bail!("--rate-min: {lo} is not a positive number of requests per second");
        }
        if !(hi.is_finite() && hi > lo) {
            bail!("--rate-max: {hi} must be a finite rate above --rate-min {lo}");
        }
        Ok(Some((lo, hi)))
    }

    fn validate_search(&self) -> anyhow::Result<()> {
        if self.search_bracket()?.is_none() {
            return Ok(());
        }
        if !self.slo.slo().is_set() {
            bail!("--rate-search: give at least one of --slo-ttft, --slo-tpot, --slo-e2e");
        }
        if !(self.search_precision.is_finite() && self.search_precision > 0.0) {
            bail!("--search-precision: must be a positive fraction (e.g. 0.05)");
        }
        if self.search_max_probes < 2 {
            bail!("--search-max-probes: must be at least 2 (the two ends of the bracket)");
        }
        Ok(())
    }

    pub(super) fn knee_params(&self) -> KneeParams {
        KneeParams {
            min_efficiency: self.knee_efficiency,
            min_latency_growth: self.knee_latency_growth,
            stop_after: self.saturation_levels,
            ..KneeParams::default()
        }
    }
}
