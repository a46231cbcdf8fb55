//! `sweep`: throughput and latency under load.
//!
//! Each level is either a closed loop of N concurrent streams (`--concurrency`) or an open
//! loop of Poisson arrivals at R requests per second (`--rate`, latency counted from each
//! request's intended start, with `--max-in-flight` as a safety cap). A level first warms up
//! (discarded; in the closed loop also until every stream's first request is done), then
//! measures for `--duration` or until `--requests` measured requests have started. The
//! **steady-state window** is `[end of warm-up, end of measurement]`: requests that *start* in
//! it give the latency figures; the share of each request that falls in it gives the
//! throughput. Requests still running at the end are awaited (and counted in latency), never cut.
//!
//! The server's `/metrics` is sampled every `--metrics-interval` during each level (KV usage,
//! queue depth, preemptions), NVML where present. After each level the knee detector
//! ([`super::knee`]) looks at the levels so far and stops the sweep once the server is
//! over-saturated (unless `--no-early-stop`).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{self, CommonArgs, Outputs};
use super::engine::{GpuSnapshot, RequestSpec, Sample, ServerSnapshot, Target, choose_model};
use super::knee::{self, KneeParams, LevelPoint, Slo};
use super::plot::{self, LineChart, Series};
use super::progress::Progress;
use super::report::{
    GpuLevelStats, Report, ServerLevelStats, SloSection, SweepLevel, SweepSection, TargetInfo,
    Window,
};
use super::stats::GaugeStats;
use crate::prober::arrivals::Schedule;
use crate::prober::settings::Arrival;
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
    /// SLO on time to first token (e.g. 500ms).
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SLO_TTFT")]
    pub slo_ttft: Option<Duration>,
    /// SLO on time per output token (e.g. 50ms).
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SLO_TPOT")]
    pub slo_tpot: Option<Duration>,
    /// SLO on end-to-end latency (e.g. 10s).
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SLO_E2E")]
    pub slo_e2e: Option<Duration>,
    /// Share of a level's requests (failures included) that must meet every SLO.
    #[arg(long, default_value_t = 0.9, env = "VLLM_SENTINEL_SLO_ATTAINMENT")]
    pub slo_attainment: f64,
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
    /// Rate mode: seed of the arrival process (the same seed gives the same schedule).
    #[arg(long, default_value_t = 0, env = "VLLM_SENTINEL_SEED")]
    pub seed: u64,
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
    fn value(self) -> f64 {
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

    fn validate(&self) -> anyhow::Result<()> {
        self.loads()?;
        if self.requests == Some(0) {
            bail!("--requests: must be at least 1");
        }
        if self.requests.is_none() && self.duration.is_zero() {
            bail!("--duration: must be more than 0");
        }
        if self.prompt_tokens == 0 || self.max_tokens == 0 {
            bail!("--prompt-tokens and --max-tokens: must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.slo_attainment) {
            bail!("--slo-attainment: must be between 0 and 1");
        }
        if self.metrics_interval.is_zero() {
            bail!("--metrics-interval: must be more than 0");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight: must be at least 1");
        }
        Ok(())
    }

    fn slo(&self) -> Slo {
        Slo {
            ttft_s: self.slo_ttft.map(|d| d.as_secs_f64()),
            tpot_s: self.slo_tpot.map(|d| d.as_secs_f64()),
            e2e_s: self.slo_e2e.map(|d| d.as_secs_f64()),
        }
    }

    fn knee_params(&self) -> KneeParams {
        KneeParams {
            min_efficiency: self.knee_efficiency,
            min_latency_growth: self.knee_latency_growth,
            stop_after: self.saturation_levels,
            ..KneeParams::default()
        }
    }
}

/// Runs `sweep` from the command line.
pub async fn run_cli(args: SweepArgs, token: CancellationToken) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let outputs = Outputs::prepare(&args.common, "sweep")?;
    let target = Arc::new(super::http::HttpTarget::new(&args.common)?);
    let report = measure(target, &args, &token).await?;
    finish(&report, &outputs)
}

/// Prints and writes a finished sweep report; fails (after writing) when every request failed.
pub fn finish(report: &Report, outputs: &Outputs) -> anyhow::Result<ExitCode> {
    let s = report.sweep.clone().unwrap_or_default();
    let code = common::emit(
        report,
        outputs,
        &super::table::sweep(&s),
        &[(outputs.csv.clone(), super::report::sweep_csv(&s))],
        |dir| plots(dir, &s),
    )?;
    let ok: usize = s.levels.iter().map(|l| l.ok).sum();
    let failed: usize = s.levels.iter().map(|l| l.failed).sum();
    if ok == 0 && failed > 0 {
        let classes: Vec<String> = s
            .levels
            .iter()
            .flat_map(|l| l.errors_by_class.keys().cloned())
            .collect();
        bail!(
            "every request failed ({failed} measured; classes: {})",
            classes.join(", ")
        );
    }
    Ok(code)
}

/// One request with its times, seconds after the level started.
#[derive(Debug, Clone)]
struct Timed {
    /// When it should have been sent (open loop) or was sent (closed loop).
    intended: f64,
    start: f64,
    end: f64,
    sample: Sample,
}

/// One sample of the server and the GPUs, seconds after the level started.
#[derive(Debug, Clone)]
struct Probe {
    at: f64,
    server: Option<ServerSnapshot>,
    gpu: Result<GpuSnapshot, String>,
}

struct LevelPlan {
    spec: RequestSpec,
    warmup: Duration,
    duration: Duration,
    requests: Option<u32>,
    metrics_interval: Duration,
    server_metrics: bool,
    max_in_flight: usize,
    seed: u64,
    slo: Slo,
}

/// Measures the sweep against `t`. Stops early (a partial report) when `token` is cancelled.
pub async fn measure<T: Target>(
    t: Arc<T>,
    args: &SweepArgs,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    args.validate()?;
    let loads = args.loads()?;
    let url = common::check_target_url(&args.common.target)?;
    let models = t
        .models()
        .await
        .with_context(|| format!("cannot reach the target at {url}"))?;
    let model = choose_model(&models, args.common.model.as_deref())?;
    if !args.no_server_metrics {
        t.metrics().await.with_context(|| {
            format!(
                "the server at {url} has no readable /metrics (sweep reads KV-cache usage and queue depth from it; pass --no-server-metrics to run without)"
            )
        })?;
    }
    let mut report = Report::new(
        "sweep",
        TargetInfo {
            url,
            model: model.id.clone(),
            endpoint: args.common.endpoint.as_str().to_string(),
            max_model_len: model.max_model_len,
        },
    );
    report.notes.extend(t.prepare(&model).await);
    let rate_mode = matches!(loads.first(), Some(Load::Rate(_)));
    let loads_v: Vec<f64> = loads.iter().map(|l| l.value()).collect();
    report.set("mode", if rate_mode { "rate" } else { "concurrency" });
    report.set("levels", &loads_v);
    report.set("duration_s", args.duration.as_secs_f64());
    report.set("requests_per_level", args.requests);
    report.set("warmup_s", args.warmup.as_secs_f64());
    report.set("prompt_tokens", args.prompt_tokens);
    report.set("max_tokens", args.max_tokens);
    report.set("stream", true);
    report.set("metrics_interval_s", args.metrics_interval.as_secs_f64());
    report.set("max_in_flight", args.max_in_flight);
    report.set("seed", args.seed);
    report.set(
        "request_timeout_s",
        args.common.request_timeout.as_secs_f64(),
    );
    if args.no_server_metrics {
        report
            .notes
            .push("server /metrics not read (--no-server-metrics)".into());
    }
    let plan = LevelPlan {
        spec: RequestSpec {
            prompt_tokens: args.prompt_tokens,
            max_tokens: args.max_tokens,
            stream: true,
        },
        warmup: args.warmup,
        duration: args.duration,
        requests: args.requests,
        metrics_interval: args.metrics_interval,
        server_metrics: !args.no_server_metrics,
        max_in_flight: args.max_in_flight as usize,
        seed: args.seed,
        slo: args.slo(),
    };
    let params = args.knee_params();
    let progress = Progress::new(!args.common.no_progress, loads.len() as u64, "sweep");
    let started = Instant::now();
    let mut section = SweepSection {
        mode: if rate_mode { "rate" } else { "concurrency" }.into(),
        knee_params: params,
        ..Default::default()
    };
    for (i, load) in loads.iter().enumerate() {
        if token.is_cancelled() {
            report.mark_partial("interrupted");
            break;
        }
        progress.message(format!("level {}", load.value()));
        let level = run_level(t.clone(), *load, &plan, i as u64, token).await;
        let interrupted = level.partial;
        progress.inc(1);
        section.levels.push(level);
        if interrupted {
            report.mark_partial(format!("interrupted during level {}", load.value()));
            break;
        }
        let points = points(&section.levels);
        if !args.no_early_stop && i + 1 < loads.len() && knee::over_saturated(&points, &params) {
            section.stopped_early = true;
            section.stop_reason = Some(format!(
                "over-saturated at {}: {}",
                load.value(),
                if points
                    .last()
                    .is_some_and(|p| p.error_rate >= params.stop_error_rate)
                {
                    "most requests failed".to_string()
                } else {
                    format!(
                        "{} consecutive levels turned less than {:.0}% of the added load into throughput while latency climbed",
                        params.stop_after,
                        params.min_efficiency * 100.0
                    )
                }
            ));
            break;
        }
    }
    progress.finish();
    let pts = points(&section.levels);
    section.knee = knee::find_knee(&pts, &params);
    section.max_throughput_level = section
        .levels
        .iter()
        .enumerate()
        .max_by(|a, b| {
            a.1.output_token_throughput_tps
                .total_cmp(&b.1.output_token_throughput_tps)
        })
        .map(|(i, _)| i);
    if plan.slo.is_set() {
        let att: Vec<f64> = section
            .levels
            .iter()
            .map(|l| l.slo_attainment.unwrap_or(0.0))
            .collect();
        let loads: Vec<f64> = section.levels.iter().map(|l| l.load).collect();
        let best = knee::highest_meeting(&loads, &att, args.slo_attainment);
        section.slo = Some(SloSection {
            objectives: plan.slo,
            min_attainment: args.slo_attainment,
            best_level: best,
            best_load: best.map(|i| loads[i]),
            best_goodput_rps: best.and_then(|i| section.levels[i].goodput_rps),
        });
    }
    if section.levels.iter().any(|l| !l.gpu.available)
        && let Some(r) = section.levels.iter().find_map(|l| l.gpu.reason.clone())
    {
        report.notes.push(format!("GPU metrics: {r}"));
    }
    report.duration_s = started.elapsed().as_secs_f64();
    report.sweep = Some(section);
    Ok(report)
}

/// The knee detector's view of the levels.
fn points(levels: &[SweepLevel]) -> Vec<LevelPoint> {
    levels
        .iter()
        .map(|l| {
            let total = (l.ok + l.failed).max(1) as f64;
            LevelPoint {
                load: l.load,
                throughput: if l.output_token_throughput_tps > 0.0 {
                    l.output_token_throughput_tps
                } else {
                    l.request_throughput_rps
                },
                latency: l.latency.e2e_s.p50,
                error_rate: l.failed as f64 / total,
            }
        })
        .collect()
}

async fn sampler<T: Target>(
    t: Arc<T>,
    epoch: Instant,
    every: Duration,
    server: bool,
    stop: CancellationToken,
) -> Vec<Probe> {
    let mut out = Vec::new();
    loop {
        let snap = if server { t.metrics().await.ok() } else { None };
        out.push(Probe {
            at: epoch.elapsed().as_secs_f64(),
            server: snap,
            gpu: t.gpu(),
        });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
    }
    out
}

async fn run_level<T: Target>(
    t: Arc<T>,
    load: Load,
    plan: &LevelPlan,
    index: u64,
    token: &CancellationToken,
) -> SweepLevel {
    let epoch = Instant::now();
    let warm_end = epoch + plan.warmup;
    let timed_stop = plan.requests.is_none().then(|| warm_end + plan.duration);
    // requests mode: the intended start of the last measured request, once known
    let count_stop = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let measured = Arc::new(AtomicUsize::new(0));
    let want = plan.requests.map(|n| n as usize);
    let level_token = token.child_token();
    let stop_sampler = CancellationToken::new();
    let sampler_task = tokio::spawn(sampler(
        t.clone(),
        epoch,
        plan.metrics_interval,
        plan.server_metrics,
        stop_sampler.clone(),
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<Timed>();
    let rel = move |i: Instant| i.saturating_duration_since(epoch).as_secs_f64();
    // Claims a measured slot for a request intended at `at`; false once the level is done.
    let admit = {
        let measured = measured.clone();
        let count_stop = count_stop.clone();
        move |at: Instant| -> bool {
            if let Some(s) = timed_stop {
                return at < s;
            }
            if at < warm_end {
                return true;
            }
            let Some(n) = want else { return true };
            let k = measured.fetch_add(1, Ordering::SeqCst);
            if k + 1 == n
                && let Ok(mut g) = count_stop.lock()
            {
                *g = Some(at);
            }
            k < n
        }
    };
    let gate = Arc::new(Gate::new(
        match load {
            Load::Concurrency(c) => c as usize,
            Load::Rate(_) => 0,
        },
        warm_end,
        plan.duration,
        want,
    ));
    let mut tasks = JoinSet::new();
    let mut dropped = 0usize;
    match load {
        Load::Concurrency(c) => {
            for _ in 0..c {
                let (t, tx, lt, gate) = (t.clone(), tx.clone(), level_token.clone(), gate.clone());
                let spec = plan.spec;
                tasks.spawn(async move {
                    let mut first = true;
                    let mut measured_started = false;
                    loop {
                        let start = Instant::now();
                        match gate.admit(start, measured_started) {
                            Admit::Stop => break,
                            Admit::Measured => measured_started = true,
                            Admit::Warmup => {}
                        }
                        let s = tokio::select! {
                            s = t.execute(spec, start) => s,
                            _ = lt.cancelled() => break,
                        };
                        let end = Instant::now();
                        if first {
                            first = false;
                            gate.first_done(end);
                        }
                        let st = rel(start);
                        let _ = tx.send(Timed {
                            intended: st,
                            start: st,
                            end: rel(end),
                            sample: s,
                        });
                    }
                });
            }
        }
        Load::Rate(r) => {
            let mut arrivals = Schedule::new(
                Arrival::Poisson,
                r,
                rand::rngs::SmallRng::seed_from_u64(
                    plan.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
            );
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut next = epoch;
            loop {
                next = arrivals.next_after(next);
                if !admit(next) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = level_token.cancelled() => break,
                }
                if in_flight.load(Ordering::SeqCst) >= plan.max_in_flight {
                    dropped += 1;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (t, tx, lt, inf) = (
                    t.clone(),
                    tx.clone(),
                    level_token.clone(),
                    in_flight.clone(),
                );
                let spec = plan.spec;
                let intended = next;
                tasks.spawn(async move {
                    let start = Instant::now();
                    let s = tokio::select! {
                        s = t.execute(spec, intended) => Some(s),
                        _ = lt.cancelled() => None,
                    };
                    inf.fetch_sub(1, Ordering::SeqCst);
                    if let Some(s) = s {
                        let _ = tx.send(Timed {
                            intended: rel(intended),
                            start: rel(start),
                            end: rel(Instant::now()),
                            sample: s,
                        });
                    }
                });
            }
        }
    }
    drop(tx);
    // Wait for the streams (or in-flight requests) to finish; an interrupt cancels them.
    let interrupted = loop {
        tokio::select! {
            j = tasks.join_next() => if j.is_none() { break false },
            _ = token.cancelled() => {
                level_token.cancel();
                while tasks.join_next().await.is_some() {}
                break true;
            }
        }
    };
    // the streams also stop on their own when the (child) token is cancelled
    let interrupted = interrupted || token.is_cancelled();
    let interrupted_at = rel(Instant::now());
    stop_sampler.cancel();
    let probes = sampler_task.await.unwrap_or_default();
    let mut records = Vec::new();
    while let Some(r) = rx.recv().await {
        records.push(r);
    }
    let (ws, mut we) = match load {
        Load::Concurrency(_) => gate.window(&records, rel, interrupted_at),
        Load::Rate(_) => {
            let ws = plan.warmup.as_secs_f64();
            let we = match (timed_stop, count_stop.lock().ok().and_then(|g| *g)) {
                (Some(s), _) => rel(s),
                (None, Some(s)) => rel(s),
                (None, None) => records.iter().map(|r| r.intended).fold(ws, f64::max),
            };
            (ws, we)
        }
    };
    if interrupted {
        we = we.min(interrupted_at);
    }
    let mut level = summarize_level(load, &records, ws, we, &probes, &plan.slo);
    level.partial = interrupted;
    if dropped > 0 {
        *level
            .errors_by_class
            .entry("dropped_max_in_flight".into())
            .or_insert(0) += dropped;
    }
    level
}

/// What a closed-loop stream may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Send a warm-up request (not measured).
    Warmup,
    /// Send a measured request.
    Measured,
    /// The level is over for this stream.
    Stop,
}

/// The phases of a closed-loop level. Warm-up lasts `--warmup` *and* until every stream has
/// completed its first request, so a level whose requests outlast the warm-up still starts
/// measuring from a full pipeline. Measurement then lasts `--duration` (or `--requests`), and a
/// stream stops only once it has sent at least one measured request, so every level has
/// latency samples however long its requests take.
#[derive(Debug)]
struct Gate {
    streams: usize,
    min_warm_end: Instant,
    duration: Duration,
    want: Option<usize>,
    firsts: AtomicUsize,
    measured: AtomicUsize,
    /// (end of warm-up, start of the last measured request in requests mode)
    phase: std::sync::Mutex<(Option<Instant>, Option<Instant>)>,
}

impl Gate {
    fn new(streams: usize, min_warm_end: Instant, duration: Duration, want: Option<usize>) -> Self {
        Self {
            streams,
            min_warm_end,
            duration,
            want,
            firsts: AtomicUsize::new(0),
            measured: AtomicUsize::new(0),
            phase: std::sync::Mutex::new((None, None)),
        }
    }

    fn warm_end(&self) -> Option<Instant> {
        self.phase.lock().ok().and_then(|p| p.0)
    }

    fn first_done(&self, at: Instant) {
        if self.firsts.fetch_add(1, Ordering::SeqCst) + 1 == self.streams
            && let Ok(mut p) = self.phase.lock()
        {
            p.0 = Some(at.max(self.min_warm_end));
        }
    }

    fn admit(&self, at: Instant, measured_started: bool) -> Admit {
        let Some(we) = self.warm_end() else {
            return Admit::Warmup;
        };
        if at < we {
            return Admit::Warmup;
        }
        match self.want {
            None => {
                if at < we + self.duration || !measured_started {
                    Admit::Measured
                } else {
                    Admit::Stop
                }
            }
            Some(n) => {
                let k = self.measured.fetch_add(1, Ordering::SeqCst);
                if k + 1 == n
                    && let Ok(mut p) = self.phase.lock()
                {
                    p.1 = Some(at);
                }
                if k < n { Admit::Measured } else { Admit::Stop }
            }
        }
    }

    /// The measurement window `(start, end)`, seconds after the level started.
    fn window(
        &self,
        records: &[Timed],
        rel: impl Fn(Instant) -> f64,
        interrupted_at: f64,
    ) -> (f64, f64) {
        let Some(we) = self.warm_end() else {
            return (interrupted_at, interrupted_at);
        };
        let ws = rel(we);
        let end = match self.want {
            None => {
                let last_measured = records
                    .iter()
                    .map(|r| r.start)
                    .filter(|s| *s >= ws)
                    .fold(ws, f64::max);
                (ws + self.duration.as_secs_f64()).max(last_measured)
            }
            Some(_) => self
                .phase
                .lock()
                .ok()
                .and_then(|p| p.1)
                .map(&rel)
                .unwrap_or_else(|| records.iter().map(|r| r.start).fold(ws, f64::max)),
        };
        (ws, end)
    }
}

fn summarize_level(
    load: Load,
    records: &[Timed],
    ws: f64,
    we: f64,
    probes: &[Probe],
    slo: &Slo,
) -> SweepLevel {
    let span = (we - ws).max(0.0);
    let in_window: Vec<&Timed> = records
        .iter()
        .filter(|r| r.intended >= ws && r.intended <= we)
        .collect();
    let samples: Vec<&Sample> = in_window.iter().map(|r| &r.sample).collect();
    let ok = samples.iter().filter(|s| s.ok()).count();
    let failed = samples.len() - ok;
    // The share of each successful request that fell in the window: its lifetime for request
    // throughput, its decode span (first token to end, tokens spread evenly) for output tokens,
    // its first token (end of prefill) for prompt tokens. This measures a level correctly even
    // when its requests outlast the window.
    let overlap = |a: f64, b: f64| -> f64 {
        if b > a {
            ((b.min(we) - a.max(ws)).max(0.0)) / (b - a)
        } else if b >= ws && b <= we {
            1.0
        } else {
            0.0
        }
    };
    let oks: Vec<&Timed> = records.iter().filter(|r| r.sample.ok()).collect();
    let first_token = |r: &Timed| r.intended + r.sample.ttft_s.or(r.sample.ttfb_s).unwrap_or(0.0);
    let req_share = |r: &Timed| overlap(r.start, r.end);
    // `+ 0.0` turns the -0.0 of an empty float sum into 0.0
    let per_s = |x: f64| if span > 0.0 { x / span + 0.0 } else { 0.0 };
    let completed_share: f64 = oks.iter().map(|r| req_share(r)).sum();
    let out_tokens: f64 = oks
        .iter()
        .map(|r| {
            let f = first_token(r).min(r.end);
            f64::from(r.sample.output_tokens.unwrap_or(0)) * overlap(f, r.end)
        })
        .sum();
    let prompt_tokens: f64 = oks
        .iter()
        .filter(|r| {
            let f = first_token(r).min(r.end);
            f >= ws && f <= we
        })
        .map(|r| f64::from(r.sample.prompt_tokens.unwrap_or(0)))
        .sum();
    let busy: f64 = records
        .iter()
        .map(|r| (r.end.min(we) - r.start.max(ws)).max(0.0))
        .sum();
    let (slo_attainment, goodput_rps) = if slo.is_set() {
        let meets = |s: &Sample| s.ok() && slo.met_by(s.ttft_s, s.tpot_s, Some(s.e2e_s));
        let met = samples.iter().filter(|s| meets(s)).count();
        let good: f64 = oks
            .iter()
            .filter(|r| meets(&r.sample))
            .map(|r| req_share(r))
            .sum();
        (
            Some(if samples.is_empty() {
                0.0
            } else {
                met as f64 / samples.len() as f64
            }),
            Some(per_s(good)),
        )
    } else {
        (None, None)
    };
    let window_probes: Vec<&Probe> = {
        let w: Vec<&Probe> = probes.iter().filter(|p| p.at >= ws && p.at <= we).collect();
        if w.is_empty() {
            probes.iter().collect()
        } else {
            w
        }
    };
    let servers: Vec<&ServerSnapshot> = window_probes
        .iter()
        .filter_map(|p| p.server.as_ref())
        .collect();
    let all_servers: Vec<&ServerSnapshot> =
        probes.iter().filter_map(|p| p.server.as_ref()).collect();
    let preemptions = match (
        all_servers.first().and_then(|s| s.preemptions_total),
        all_servers.last().and_then(|s| s.preemptions_total),
    ) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    let server = ServerLevelStats {
        available: !servers.is_empty(),
        kv_cache_usage: GaugeStats::of(servers.iter().filter_map(|s| s.kv_usage)),
        requests_waiting: GaugeStats::of(servers.iter().filter_map(|s| s.waiting)),
        requests_running: GaugeStats::of(servers.iter().filter_map(|s| s.running)),
        preemptions,
    };
    let gpus: Vec<GpuSnapshot> = window_probes
        .iter()
        .filter_map(|p| p.gpu.clone().ok())
        .collect();
    let gpu = GpuLevelStats {
        available: !gpus.is_empty(),
        reason: if gpus.is_empty() {
            probes
                .iter()
                .find_map(|p| p.gpu.clone().err())
                .or_else(|| Some("not sampled".into()))
        } else {
            None
        },
        utilization: GaugeStats::of(gpus.iter().map(|g| g.utilization)),
        memory_used_bytes: GaugeStats::of(gpus.iter().map(|g| g.memory_used_bytes)),
    };
    SweepLevel {
        load: load.value(),
        concurrency: match load {
            Load::Concurrency(c) => Some(c),
            Load::Rate(_) => None,
        },
        rate_rps: match load {
            Load::Rate(r) => Some(r),
            Load::Concurrency(_) => None,
        },
        partial: false,
        warmup_requests: records.iter().filter(|r| r.intended < ws).count(),
        window: Window {
            start_s: ws,
            end_s: we,
            duration_s: span,
        },
        ok,
        failed,
        errors_by_class: common::errors_by_class(samples.iter().copied()),
        request_throughput_rps: per_s(completed_share),
        output_token_throughput_tps: per_s(out_tokens),
        total_token_throughput_tps: per_s(out_tokens + prompt_tokens),
        mean_in_flight: per_s(busy),
        latency: common::summarize(samples.iter().copied()),
        server,
        gpu,
        slo_attainment,
        goodput_rps,
    }
}

/// Writes the sweep's plots into `dir`.
pub fn plots(dir: &std::path::Path, s: &SweepSection) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let rate = s.mode == "rate";
    let x_label = if rate {
        "offered rate (requests/s)"
    } else {
        "concurrency"
    };
    let loads: Vec<f64> = s.levels.iter().map(|l| l.load).collect();
    let x_log = loads
        .first()
        .zip(loads.last())
        .is_some_and(|(a, b)| *a > 0.0 && b / a >= 8.0);
    let series = |name: &str, color: usize, f: &dyn Fn(&SweepLevel) -> Option<f64>| Series {
        name: name.to_string(),
        points: s
            .levels
            .iter()
            .filter_map(|l| f(l).map(|y| (l.load, y)))
            .collect(),
        color,
        width: 3,
    };
    let marker = s
        .knee
        .as_ref()
        .map(|k| (k.load, format!("knee ({})", k.load)));
    let ms = |v: Option<f64>| v.map(|x| x * 1000.0);
    let mut files = plot::line_chart(
        dir,
        "sweep-latency",
        &LineChart {
            title: "Latency against load".into(),
            x_label: x_label.into(),
            y_label: "milliseconds".into(),
            x_log,
            series: vec![
                series("TTFT p50", 0, &|l| ms(l.latency.ttft_s.p50)),
                series("TTFT p99", 5, &|l| ms(l.latency.ttft_s.p99)),
                series("E2E p50", 1, &|l| ms(l.latency.e2e_s.p50)),
                series("E2E p90", 4, &|l| ms(l.latency.e2e_s.p90)),
                series("E2E p99", 3, &|l| ms(l.latency.e2e_s.p99)),
            ],
            marker: marker.clone(),
        },
    )?;
    let mut tp = vec![series("output tokens/s", 2, &|l| {
        Some(l.output_token_throughput_tps)
    })];
    if s.slo.is_some() {
        // goodput in tokens/s would mix units; scale it to the output token rate of the level
        tp.push(series("output tokens/s within SLO", 4, &|l| {
            let g = l.goodput_rps?;
            (l.request_throughput_rps > 0.0)
                .then(|| l.output_token_throughput_tps * g / l.request_throughput_rps)
        }));
    }
    files.extend(plot::line_chart(
        dir,
        "sweep-throughput",
        &LineChart {
            title: "Throughput against load".into(),
            x_label: x_label.into(),
            y_label: "output tokens per second".into(),
            x_log,
            series: tp,
            marker: marker.clone(),
        },
    )?);
    if s.levels.iter().any(|l| l.server.available) {
        files.extend(plot::line_chart(
            dir,
            "sweep-server",
            &LineChart {
                title: "Server state against load (from its /metrics)".into(),
                x_label: x_label.into(),
                y_label: "KV-cache usage % / requests".into(),
                x_log,
                series: vec![
                    series("KV-cache usage max (%)", 0, &|l| {
                        l.server.kv_cache_usage.max.map(|x| x * 100.0)
                    }),
                    series("requests waiting (max)", 1, &|l| {
                        l.server.requests_waiting.max
                    }),
                    series("requests running (max)", 2, &|l| {
                        l.server.requests_running.max
                    }),
                ],
                marker,
            },
        )?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::fake::{FakeServer, common_args};

    fn args(levels: &[u32]) -> SweepArgs {
        SweepArgs {
            common: common_args(),
            concurrency: levels.to_vec(),
            rate: vec![],
            duration: Duration::from_secs(5),
            requests: None,
            warmup: Duration::from_secs(1),
            prompt_tokens: 16,
            max_tokens: 9,
            slo_ttft: None,
            slo_tpot: None,
            slo_e2e: None,
            slo_attainment: 0.9,
            no_early_stop: false,
            knee_efficiency: 0.5,
            knee_latency_growth: 0.1,
            saturation_levels: 2,
            metrics_interval: Duration::from_millis(200),
            no_server_metrics: false,
            max_in_flight: 1024,
            seed: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn knee_at_the_fake_servers_max_seqs() {
        // 4 sequences at once, each 10 ms + 8 × 5 ms = 50 ms: 80 req/s at most
        let f = Arc::new(FakeServer::new(4));
        let a = args(&[1, 2, 4, 8, 16, 32, 64]);
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let s = r.sweep.unwrap();
        let k = s.knee.clone().expect("a knee");
        assert_eq!(k.load, 4.0, "{s:#?}");
        // stopped after two flat steps past the knee: 4 → 8 → 16
        assert!(s.stopped_early);
        assert_eq!(s.levels.len(), 5);
        let l1 = &s.levels[0];
        assert!(
            (l1.request_throughput_rps - 20.0).abs() < 1.0,
            "{}",
            l1.request_throughput_rps
        );
        assert!(
            (l1.mean_in_flight - 1.0).abs() < 0.05,
            "{}",
            l1.mean_in_flight
        );
        let l4 = &s.levels[2];
        assert!((l4.request_throughput_rps - 80.0).abs() < 2.0);
        assert!((l4.output_token_throughput_tps - 720.0).abs() < 20.0);
        assert!(l4.server.available);
        assert_eq!(l4.server.requests_waiting.max, Some(0.0));
        let l16 = &s.levels[4];
        assert!(l16.server.requests_waiting.max.unwrap() >= 11.0);
        assert!(l16.latency.e2e_s.p50.unwrap() > 0.15);
        assert!(!l16.gpu.available);
        assert_eq!(l16.window.duration_s, 5.0);
        assert!(r.notes.iter().any(|n| n.contains("GPU")));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_longer_than_the_window_are_still_measured() {
        // 10 ms + 399 × 5 ms ≈ 2 s per request, against a 100 ms warm-up and a 500 ms window
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[2]);
        a.max_tokens = 400;
        a.warmup = Duration::from_millis(100);
        a.duration = Duration::from_millis(500);
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let l = &r.sweep.unwrap().levels[0];
        // warm-up ends when both first requests are done; each stream then sends at least one
        // measured request, which stretches the window past the 500 ms asked for
        assert!(
            l.ok >= 2,
            "at least one measured request per stream: {l:#?}"
        );
        assert!((l.window.start_s - 2.005).abs() < 0.01, "{:?}", l.window);
        assert!(l.window.duration_s >= 0.5);
        // two streams of 2.005 s requests: 0.9975 req/s, 399 decode tokens per 1.995 s each
        assert!(
            (l.request_throughput_rps - 2.0 / 2.005).abs() < 0.01,
            "{}",
            l.request_throughput_rps
        );
        assert!(
            (l.output_token_throughput_tps - 400.0).abs() < 5.0,
            "{}",
            l.output_token_throughput_tps
        );
        assert!((l.mean_in_flight - 2.0).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn goodput_finds_highest_level_within_slo() {
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[1, 2, 4, 8, 16]);
        a.no_early_stop = true;
        a.slo_e2e = Some(Duration::from_millis(120));
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let s = r.sweep.unwrap();
        assert_eq!(s.levels.len(), 5);
        let g = s.slo.unwrap();
        // e2e: 50 ms up to 4 streams, 100 ms at 8, 200 ms at 16
        assert_eq!(g.best_load, Some(8.0));
        assert!((g.best_goodput_rps.unwrap() - 80.0).abs() < 2.0);
        assert_eq!(s.levels[4].slo_attainment, Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn request_count_levels_and_rate_mode() {
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[]);
        a.rate = vec![10.0, 40.0];
        a.requests = Some(50);
        let r = measure(f.clone(), &a, &CancellationToken::new())
            .await
            .unwrap();
        let s = r.sweep.unwrap();
        assert_eq!(s.mode, "rate");
        assert_eq!(s.levels.len(), 2);
        for l in &s.levels {
            assert_eq!(l.ok, 50, "{l:#?}");
            let achieved = l.request_throughput_rps;
            let offered = l.rate_rps.unwrap();
            assert!(
                (achieved / offered - 1.0).abs() < 0.35,
                "{achieved} vs {offered}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn interrupt_gives_partial_level() {
        let f = Arc::new(FakeServer::new(4));
        let a = args(&[1, 2]);
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            t2.cancel();
        });
        let r = measure(f, &a, &token).await.unwrap();
        assert!(r.partial);
        let s = r.sweep.unwrap();
        assert_eq!(s.levels.len(), 1);
        assert!(s.levels[0].partial);
        assert!(s.levels[0].ok > 0);
        assert!(s.levels[0].window.end_s <= 3.01);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_metrics_is_an_error_unless_waived() {
        let f = Arc::new(FakeServer::new(4));
        f.without_metrics();
        let mut a = args(&[1]);
        let e = measure(f.clone(), &a, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("no readable /metrics"), "{e:#}");
        a.no_server_metrics = true;
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        assert!(!r.sweep.unwrap().levels[0].server.available);
    }

    #[test]
    fn bad_levels_are_rejected() {
        let mut a = args(&[0, 2]);
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("--concurrency")
        );
        a.concurrency = vec![4, 1, 4];
        assert_eq!(
            a.loads().unwrap(),
            vec![Load::Concurrency(1), Load::Concurrency(4)]
        );
        a.rate = vec![-1.0];
        assert!(a.validate().unwrap_err().to_string().contains("--rate"));
        a.rate = vec![];
        a.slo_attainment = 2.0;
        assert!(a.validate().is_err());
    }
}
