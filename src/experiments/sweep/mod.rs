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

//!
//! | module | concern |
//! |---|---|
//! | [`args`] | flags and levels |
//! | [`run`] | one level: the load, the sampler, the records |
//! | [`gate`] | a closed-loop level's phases and window |
//! | [`summary`] | a level's figures from its records |
//! | [`plots`] | PNG/SVG charts |
//! | [`search`] | `--rate-search`: the highest rate meeting the SLOs |

mod args;
mod gate;
mod plots;
mod run;
pub mod search;
mod summary;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{self, Outputs};
use super::engine::{RequestSpec, Target, choose_model};
use super::knee::{self, KneeParams, LevelPoint};
use super::progress::Progress;
use super::report::{Report, SloSection, SweepLevel, SweepSection, TargetInfo};
use crate::workload::Workload;
pub use args::{Load, SweepArgs, SweepArrival};
pub use plots::plots;
use run::{LevelPlan, run_level};

/// Runs `sweep` from the command line.
pub async fn run_cli(args: SweepArgs, token: CancellationToken) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let outputs = Outputs::prepare(&args.common, "sweep")?;
    if let Some(p) = &args.vllm_bench_json {
        common::check_writable("--vllm-bench-json", p)?;
    }
    let target = Arc::new(super::http::HttpTarget::new(&args.common)?);
    let report = measure(target, &args, &token).await?;
    if let Some(p) = &args.vllm_bench_json {
        for f in super::vllm_bench_json::write_sweep(&report, p, &args.slo.slo())? {
            eprintln!("wrote {}", f.display());
        }
    }
    finish(&report, &outputs)
}

/// Prints and writes a finished sweep report; fails (after writing) when every request failed.
pub fn finish(report: &Report, outputs: &Outputs) -> anyhow::Result<ExitCode> {
    let s = report.sweep.clone().unwrap_or_default();
    let code = common::emit(
        report,
        outputs,
        &super::table::sweep(&s).then(turn_tables(&s)),
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

/// Multi-turn: the TTFT-by-turn table of each level (empty otherwise).
fn turn_tables(s: &SweepSection) -> super::table::Printed {
    s.levels.iter().filter(|l| !l.turns.is_empty()).fold(
        super::table::Printed::default(),
        |acc, l| {
            acc.then(super::table::Printed::text(format!("level {}:", l.load)))
                .then(super::table::turns(&l.turns))
        },
    )
}

/// Measures the sweep against `t`. Stops early (a partial report) when `token` is cancelled.
pub async fn measure<T: Target>(
    t: Arc<T>,
    args: &SweepArgs,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    args.validate()?;
    let bracket = args.search_bracket()?;
    let loads = match bracket {
        Some((lo, hi)) => vec![Load::Rate(lo), Load::Rate(hi)],
        None => args.loads()?,
    };
    // The dataset is read before the target is contacted: a bad file must not cost a run.
    let mut workload = args.workload.load(
        args.prompt_tokens,
        args.max_tokens,
        args.common.endpoint,
        args.seed,
    )?;
    let mut report = start_report(&t, args, &loads).await?;
    if let Some(w) = workload.as_mut() {
        super::workload::bind_adapters(&*t, w).await?;
        report.set("dataset", super::workload::describe(Some(w)));
    }
    let plan = level_plan(args, workload.map(Arc::new));
    let params = args.knee_params();
    let budget = match bracket {
        Some(_) => args.search_max_probes,
        None => loads.len(),
    };
    let progress = Progress::new(!args.common.no_progress, budget as u64, "sweep");
    let started = Instant::now();
    let mut section = SweepSection {
        mode: if matches!(loads.first(), Some(Load::Rate(_))) {
            "rate"
        } else {
            "concurrency"
        }
        .into(),
        knee_params: params,
        ..Default::default()
    };
    match bracket {
        Some((lo, hi)) => {
            let ctx = Ctx {
                t: &t,
                plan: &plan,
                token,
                progress: &progress,
            };
            let search = rate_search(&ctx, args, (lo, hi), &mut section, &mut report).await;
            section.search = Some(search);
        }
        None => {
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
                if !args.no_early_stop
                    && i + 1 < loads.len()
                    && let Some(reason) = over_saturation(&section.levels, &params)
                {
                    section.stopped_early = true;
                    section.stop_reason =
                        Some(format!("over-saturated at {}: {reason}", load.value()));
                    break;
                }
            }
        }
    }
    progress.finish();
    conclude(&mut section, &plan, args);
    if section.levels.iter().any(|l| !l.gpu.available)
        && let Some(r) = section.levels.iter().find_map(|l| l.gpu.reason.clone())
    {
        report.notes.push(format!("GPU metrics: {r}"));
    }
    report.duration_s = started.elapsed().as_secs_f64();
    report.sweep = Some(section);
    Ok(report)
}

/// What the search's probes run with.
struct Ctx<'a, T> {
    t: &'a Arc<T>,
    plan: &'a LevelPlan,
    token: &'a CancellationToken,
    progress: &'a Progress,
}

/// `--rate-search`: probes rates as [`search::Bisection`] asks, each one open-loop level, and
/// keeps the levels (sorted by rate afterwards, for the knee and the table).
async fn rate_search<T: Target>(
    ctx: &Ctx<'_, T>,
    args: &SweepArgs,
    (lo, hi): (f64, f64),
    section: &mut SweepSection,
    report: &mut Report,
) -> search::RateSearch {
    let mut b = search::Bisection::new(lo, hi, args.search_precision, args.search_max_probes);
    let mut probes = Vec::new();
    while let Some(rate) = b.next_rate() {
        if ctx.token.is_cancelled() {
            report.mark_partial("interrupted");
            b.interrupt();
            break;
        }
        ctx.progress.message(format!("probe {rate:.3} req/s"));
        let index = probes.len() as u64;
        let level = run_level(ctx.t.clone(), Load::Rate(rate), ctx.plan, index, ctx.token).await;
        ctx.progress.inc(1);
        if level.partial {
            report.mark_partial(format!("interrupted during the probe at {rate} req/s"));
            section.levels.push(level);
            b.interrupt();
            break;
        }
        let attainment = level.slo_attainment.unwrap_or(0.0);
        let passed = attainment >= args.slo.slo_attainment;
        probes.push(search::SearchProbe {
            rate_rps: rate,
            slo_attainment: attainment,
            goodput_rps: level.goodput_rps.unwrap_or(0.0),
            passed,
        });
        b.record(rate, passed);
        section.levels.push(level);
    }
    section.levels.sort_by(|a, b| a.load.total_cmp(&b.load));
    let (pass, fail) = b.bracket();
    search::RateSearch {
        rate_min: lo,
        rate_max: hi,
        precision: args.search_precision,
        max_probes: args.search_max_probes,
        probes,
        best_rate_rps: pass,
        lowest_failing_rps: fail,
        stop_reason: b.stop_reason().to_string(),
    }
}

/// Checks the target and starts the report with the run's parameters.
async fn start_report<T: Target>(
    t: &Arc<T>,
    args: &SweepArgs,
    loads: &[Load],
) -> anyhow::Result<Report> {
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
    report.set("arrival", args.arrival.as_str());
    report.set("precise_arrivals", args.precise_arrivals);
    if args.rate_search {
        report.set("rate_search", true);
        report.set("search_precision", args.search_precision);
        report.set("search_max_probes", args.search_max_probes);
    }
    report.set(
        "request_timeout_s",
        args.common.request_timeout.as_secs_f64(),
    );
    if args.no_server_metrics {
        report
            .notes
            .push("server /metrics not read (--no-server-metrics)".into());
    }
    Ok(report)
}

/// How every level sends its requests.
fn level_plan(args: &SweepArgs, workload: Option<Arc<Workload>>) -> LevelPlan {
    LevelPlan {
        workload,
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
        slo: args.slo.slo(),
        arrival: args.arrival.process(),
        precise_arrivals: args.precise_arrivals,
    }
}

/// Why the sweep should stop after its last level, if the levels so far are over-saturated.
fn over_saturation(levels: &[SweepLevel], params: &KneeParams) -> Option<String> {
    let points = points(levels);
    if !knee::over_saturated(&points, params) {
        return None;
    }
    Some(
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
        },
    )
}

/// The sweep's conclusions from its levels: the knee, the level of highest throughput, and
/// the highest level meeting the SLO.
fn conclude(section: &mut SweepSection, plan: &LevelPlan, args: &SweepArgs) {
    let params = section.knee_params;
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
        let best = knee::highest_meeting(&loads, &att, args.slo.slo_attainment);
        section.slo = Some(SloSection {
            objectives: plan.slo,
            min_attainment: args.slo.slo_attainment,
            best_level: best,
            best_load: best.map(|i| loads[i]),
            best_goodput_rps: best.and_then(|i| section.levels[i].goodput_rps),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::fake::{FakeServer, common_args};
    use crate::experiments::goodput::SloArgs;
    use std::time::Duration;

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
            slo: SloArgs {
                slo_attainment: 0.9,
                ..SloArgs::default()
            },
            no_early_stop: false,
            knee_efficiency: 0.5,
            knee_latency_growth: 0.1,
            saturation_levels: 2,
            metrics_interval: Duration::from_millis(200),
            no_server_metrics: false,
            max_in_flight: 1024,
            seed: 1,
            workload: Default::default(),
            arrival: SweepArrival::Poisson,
            precise_arrivals: false,
            rate_search: false,
            rate_min: None,
            rate_max: None,
            search_precision: 0.05,
            search_max_probes: 10,
            vllm_bench_json: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn multi_turn_levels_report_ttft_by_turn() {
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[2]);
        a.requests = Some(12);
        a.common.endpoint = crate::config::Endpoint::Chat;
        a.workload.dataset = crate::config::workload::SourceKind::MultiTurn;
        a.workload.multi_turn_turns = 3;
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let l = &r.sweep.unwrap().levels[0];
        let turns: Vec<&str> = l.turns.iter().map(|t| t.turn.as_str()).collect();
        assert_eq!(turns, vec!["1", "2", "3"], "{:?}", l.turns);
        let counted: usize = l.turns.iter().map(|t| t.requests).sum();
        assert_eq!(
            counted,
            l.ok + l.failed,
            "every measured request has its turn"
        );
        // later turns carry the history: their prompts are longer
        let p = |i: usize| l.turns[i].prompt_tokens.p50.unwrap();
        assert!(p(0) < p(1) && p(1) < p(2), "{:?}", l.turns);
        assert!(
            r.settings["dataset"]
                .as_str()
                .unwrap()
                .contains("multi-turn")
        );
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
        a.slo.slo_e2e = Some(Duration::from_millis(120));
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
    async fn constant_arrivals_fill_the_window_exactly() {
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[]);
        a.rate = vec![10.0];
        a.requests = Some(20);
        a.warmup = Duration::ZERO;
        a.arrival = SweepArrival::Constant;
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        assert_eq!(r.settings["arrival"], "constant");
        let l = &r.sweep.unwrap().levels[0];
        // arrivals at 0.1, 0.2, …, 2.0 s: the 20th closes the window at 20 / 10 req/s
        assert_eq!(l.ok, 20);
        assert!((l.window.duration_s - 2.0).abs() < 1e-6, "{:?}", l.window);
        let starts: Vec<f64> = l.records.iter().map(|(s, _)| *s).collect();
        assert!(
            starts
                .windows(2)
                .all(|w| ((w[1] - w[0]) - 0.1).abs() < 1e-3),
            "{starts:?}"
        );
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

    #[tokio::test(start_paused = true)]
    async fn rate_search_finds_the_fake_servers_slo_capacity() {
        // 4 sequences at once, each 50 ms alone: 80 req/s at most. With an e2e SLO of 150 ms
        // met by 90 % of requests, a Poisson load passes well below 80 req/s and fails above.
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[]);
        a.rate_search = true;
        a.rate_min = Some(5.0);
        a.rate_max = Some(320.0);
        a.requests = Some(200);
        a.warmup = Duration::from_millis(500);
        a.slo.slo_e2e = Some(Duration::from_millis(150));
        a.search_precision = 0.05;
        a.search_max_probes = 12;
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let s = r.sweep.unwrap();
        let g = s.search.clone().unwrap();
        assert_eq!(g.stop_reason, "precision", "{g:#?}");
        assert_eq!(&g.probes[0].rate_rps, &5.0);
        assert!(g.probes[0].passed);
        assert_eq!(&g.probes[1].rate_rps, &320.0);
        assert!(!g.probes[1].passed);
        let best = g.best_rate_rps.unwrap();
        let fail = g.lowest_failing_rps.unwrap();
        // 4 × 50 ms service: 80 req/s of capacity. Far below it (≤ 40 req/s) 90 % of requests
        // wait less than 100 ms; a finite probe (200 requests) can pass a little above it, as
        // the queue has no time to build, but not at 1.5× (it grows by 40 requests a second).
        assert!(best > 40.0 && best < 120.0, "{best}");
        assert!(fail / best - 1.0 <= 0.05);
        // every probe's verdict is its level's attainment against the minimum
        for p in &g.probes {
            assert_eq!(p.passed, p.slo_attainment >= 0.9, "{p:?}");
            assert!(
                p.rate_rps <= best || p.rate_rps >= fail,
                "{p:?} inside the final bracket"
            );
        }
        assert_eq!(s.levels.len(), g.probes.len());
        assert!(s.levels.windows(2).all(|w| w[0].load <= w[1].load));
        // the same seed gives the same probes
        let f2 = Arc::new(FakeServer::new(4));
        let r2 = measure(f2, &a, &CancellationToken::new()).await.unwrap();
        assert_eq!(r2.sweep.unwrap().search.unwrap(), g);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_search_says_when_the_bracket_decides() {
        let f = Arc::new(FakeServer::new(4));
        let mut a = args(&[]);
        a.rate_search = true;
        a.rate_min = Some(500.0);
        a.rate_max = Some(1000.0);
        a.requests = Some(100);
        a.slo.slo_e2e = Some(Duration::from_millis(60));
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let g = r.sweep.unwrap().search.unwrap();
        assert_eq!(g.stop_reason, "rate_min_fails");
        assert_eq!(g.best_rate_rps, None);
        assert_eq!(g.probes.len(), 1);
    }

    #[test]
    fn bad_search_flags_are_rejected() {
        let mut a = args(&[]);
        a.rate_min = Some(1.0);
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("only with --rate-search"), "{e}");
        a.rate_search = true;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("needs --rate-min and --rate-max"), "{e}");
        a.rate_max = Some(0.5);
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("--rate-max"), "{e}");
        a.rate_max = Some(10.0);
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("--slo-ttft"), "{e}");
        a.slo.slo_ttft = Some(Duration::from_millis(100));
        a.validate().unwrap();
        a.search_max_probes = 1;
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("--search-max-probes")
        );
        a.search_max_probes = 5;
        a.search_precision = 0.0;
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("--search-precision")
        );
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
        a.slo.slo_attainment = 2.0;
        assert!(a.validate().is_err());
    }
}
