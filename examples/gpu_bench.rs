//! GPU sampling benchmark (stable Rust, run with `--release`):
//!
//! * the cost of one sampling tick against the fake source (1 and 8 GPUs, all fields, processes
//!   and Xid polling on), run on the calling thread so only the sampler's own work is timed;
//! * the `/metrics` render time of a registry holding the common families, the GPU collector
//!   with 8 fake GPUs, and histogram families standing in for 2 targets' prober series;
//! * as a reference measured in the same run, the render time of the same registry without GPUs.
//!
//! `cargo run --release --example gpu_bench` prints a table; `-- --dump` prints the rendered
//! `/metrics` text with 8 fake GPUs instead (used to test the H200 capture scripts).

use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use vllm_sentinel::gpu::sampler::{SampleOptions, Sampling};
use vllm_sentinel::gpu::snapshot::{GpuSnapshot, SnapshotCell};
use vllm_sentinel::gpu::{FakeSource, GpuSource};

type Labels = Vec<(String, String)>;

fn prober_families(reg: &mut Registry) {
    // 2 targets × 2 workloads × 5 latency histograms, 24 buckets each.
    for name in ["ttfb", "ttft", "itl", "tpot", "e2e"] {
        let fam: Family<Labels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 1.5, 24)));
        for t in ["a", "b"] {
            for w in ["short", "long"] {
                let h = fam.get_or_create(&vec![
                    ("target".into(), t.into()),
                    ("model".into(), "m".into()),
                    ("workload".into(), w.into()),
                    ("endpoint".into(), "chat".into()),
                ]);
                for i in 0..100 {
                    h.observe(0.001 * f64::from(i));
                }
            }
        }
        reg.register(
            format!("vllm_sentinel_probe_{name}_seconds"),
            "bench stand-in",
            fam,
        );
    }
}

fn options() -> SampleOptions {
    SampleOptions {
        pcie_throughput: true,
        processes: true,
        xid_events: true,
    }
}

fn snapshot_with(n: u32) -> GpuSnapshot {
    let (mut src, _ctl) = FakeSource::with_gpus(n);
    let mut sampling = Sampling::new(options());
    let Ok(mut session) = src.open() else {
        return GpuSnapshot::default();
    };
    sampling.session_opened(session.as_mut());
    let out = sampling.sample(session.as_mut()).unwrap_or_default();
    GpuSnapshot {
        up: true,
        driver: out.driver,
        devices: out.devices,
        sample_duration_seconds: Some(0.004),
        last_sample_timestamp: Some(1.8e9),
        attempts: 1,
    }
}

fn registry(gpus: Option<u32>) -> Registry {
    let mut reg = Registry::default();
    vllm_sentinel::exporter::register_common(&mut reg);
    prober_families(&mut reg);
    if let Some(n) = gpus {
        let cell = std::sync::Arc::new(SnapshotCell::default());
        cell.store(snapshot_with(n));
        reg.register_collector(Box::new(vllm_sentinel::gpu::collector::GpuCollector::new(
            cell,
        )));
    }
    reg
}

fn time_per_iter(iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

/// "median / min" of the runs, in µs.
fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{:.1} / {:.1}",
        v[v.len() / 2].as_secs_f64() * 1e6,
        v[0].as_secs_f64() * 1e6
    )
}

fn main() {
    if std::env::args().any(|a| a == "--dump") {
        let reg = registry(Some(8));
        match vllm_sentinel::exporter::encode(&reg, None) {
            Ok((body, _)) => print!("{body}"),
            Err(e) => eprintln!("encode failed: {e}"),
        }
        return;
    }
    println!("| measurement | µs, median / min of 7 runs |");
    println!("|---|---|");
    for n in [1u32, 8] {
        let (mut src, _ctl) = FakeSource::with_gpus(n);
        let mut sampling = Sampling::new(options());
        let Ok(mut session) = src.open() else { return };
        sampling.session_opened(session.as_mut());
        let runs: Vec<Duration> = (0..7)
            .map(|_| {
                time_per_iter(2000, || {
                    let _ = std::hint::black_box(sampling.sample(session.as_mut()));
                })
            })
            .collect();
        println!(
            "| sampling tick, fake source, {n} GPU(s), all fields | {} |",
            stats(runs)
        );
    }
    for (label, gpus) in [
        ("common + 2 targets' histograms (reference)", None),
        ("same + 8 fake GPUs", Some(8)),
    ] {
        let reg = registry(gpus);
        for (fmt, accept) in [
            ("Prometheus text", None),
            ("OpenMetrics", Some("application/openmetrics-text")),
        ] {
            let bytes = vllm_sentinel::exporter::encode(&reg, accept)
                .map(|(b, _)| b.len())
                .unwrap_or(0);
            let runs: Vec<Duration> = (0..7)
                .map(|_| {
                    time_per_iter(500, || {
                        let _ = std::hint::black_box(vllm_sentinel::exporter::encode(&reg, accept));
                    })
                })
                .collect();
            println!(
                "| render /metrics ({fmt}): {label}, {bytes} bytes | {} |",
                stats(runs)
            );
        }
    }
}
