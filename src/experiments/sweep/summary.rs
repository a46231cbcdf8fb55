//! A level's figures from its records: the steady-state window's latencies and the share of
//! each request that fell in it for throughput, SLO attainment and goodput, and the server's
//! and GPUs' gauges sampled during it.

use super::super::common;
use super::super::engine::{GpuSnapshot, Sample, ServerSnapshot};
use super::super::goodput;
use super::super::knee::Slo;
use super::super::report::{GpuLevelStats, ScheduleStats, ServerLevelStats, SweepLevel, Window};
use super::super::stats::{GaugeStats, Summary};
use super::Load;
use super::run::{Probe, Timed};

pub(super) fn summarize_level(
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
    let f = window_figures(records, &samples, (ws, we), slo);
    let (server, gpu) = gauges(probes, (ws, we));
    SweepLevel {
        turns: Vec::new(),
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
        request_throughput_rps: f.request_rps,
        output_token_throughput_tps: f.output_tps,
        total_token_throughput_tps: f.total_tps,
        mean_in_flight: f.mean_in_flight,
        latency: common::summarize(samples.iter().copied()),
        server,
        gpu,
        slo_attainment: f.slo_attainment,
        goodput_rps: f.goodput_rps,
        schedule: match load {
            Load::Rate(_) => Some(schedule_figures(&in_window, ws)),
            Load::Concurrency(_) => None,
        },
        records: in_window
            .iter()
            .map(|r| (r.intended, r.sample.clone()))
            .collect(),
    }
}

/// The open loop's own accuracy: how fast it really sent, and how late each send was.
fn schedule_figures(in_window: &[&Timed], ws: f64) -> ScheduleStats {
    let last_start = in_window.iter().map(|r| r.start).fold(ws, f64::max);
    let n = in_window.len();
    ScheduleStats {
        // n sends in [ws, last send]: with constant gaps the schedule puts the last one at
        // ws + n / R, so this is R exactly when every send is on time
        achieved_send_rate_rps: if last_start > ws {
            n as f64 / (last_start - ws)
        } else {
            0.0
        },
        lag_s: Summary::of(in_window.iter().map(|r| r.start - r.intended)),
    }
}

/// A level's rates in its window, and its SLO figures when an SLO is set.
struct WindowFigures {
    request_rps: f64,
    output_tps: f64,
    total_tps: f64,
    mean_in_flight: f64,
    slo_attainment: Option<f64>,
    goodput_rps: Option<f64>,
}

/// Throughput, concurrency and SLO figures of the window `(ws, we)`; `samples` are those of
/// the requests sent in it.
fn window_figures(
    records: &[Timed],
    samples: &[&Sample],
    (ws, we): (f64, f64),
    slo: &Slo,
) -> WindowFigures {
    let span = (we - ws).max(0.0);
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
        let meets = |s: &Sample| goodput::is_good(slo, s);
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
    WindowFigures {
        request_rps: per_s(completed_share),
        output_tps: per_s(out_tokens),
        total_tps: per_s(out_tokens + prompt_tokens),
        mean_in_flight: per_s(busy),
        slo_attainment,
        goodput_rps,
    }
}

/// The server's and the GPUs' gauges sampled in the window `(ws, we)` (all the level's
/// samples when none fell in it).
fn gauges(probes: &[Probe], (ws, we): (f64, f64)) -> (ServerLevelStats, GpuLevelStats) {
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
    (server, gpu)
}
