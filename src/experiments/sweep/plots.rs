//! The sweep's plots: latency, throughput and the server's state against load.

use super::super::plot::{self, LineChart, Series};
use super::super::report::{SweepLevel, SweepSection};

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
