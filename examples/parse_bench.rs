//! Parse throughput on a real vLLM body, beside Python's `prometheus_client` parser measured in
//! the same run, and allocations per parse counted by a wrapping global allocator.
//!
//! ```text
//! python3 -m venv /tmp/promvenv && /tmp/promvenv/bin/pip install prometheus_client
//! PARSE_BENCH_PYTHON=/tmp/promvenv/bin/python \
//!   taskset -c 0 cargo run --release --example parse_bench [-- BODY_FILE [SECONDS]]
//! ```
//!
//! Default body: `tests/data/vllm-0.32.0-cpu/metrics_busy.txt` (a real vLLM capture); default 3 s per
//! measurement. Method and results: docs/bench-scrape.md.
// Counting allocations needs a `GlobalAlloc` wrapper around the system allocator, which can
// only be written with `unsafe impl`; it forwards every call unchanged.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vllm_sentinel::scrape::expfmt::{self, Format};
use vllm_sentinel::scrape::normalize;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to `System` with the caller's arguments; only adds relaxed counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counts() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// CPU time of this thread: on a shared, loaded machine it leaves out the time the thread
/// waited for a core, which wall time does not.
fn cpu_now() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` repeatedly for `secs` of wall time; returns (iterations, wall, cpu).
fn time(secs: f64, mut f: impl FnMut()) -> (u64, Duration, Duration) {
    for _ in 0..20 {
        f();
    }
    let t0 = Instant::now();
    let c0 = cpu_now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..10 {
            f();
        }
        n += 10;
    }
    (n, t0.elapsed(), cpu_now() - c0)
}

const PY: &str = r#"
import sys, time
from prometheus_client.parser import text_string_to_metric_families
body = open(sys.argv[1]).read()
secs = float(sys.argv[2])
for _ in range(5):
    for f in text_string_to_metric_families(body):
        pass
n = 0
t0 = time.perf_counter()
c0 = time.thread_time()
while time.perf_counter() - t0 < secs:
    fams = list(text_string_to_metric_families(body))
    n += 1
el = time.perf_counter() - t0
cpu = time.thread_time() - c0
print(n, el, cpu, sum(len(f.samples) for f in fams))
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| {
        format!(
            "{}/tests/data/vllm-0.32.0-cpu/metrics_busy.txt",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let body = std::fs::read_to_string(&path).expect("body file");
    let mb = body.len() as f64 / 1e6;

    // Allocations of one parse, and of parse + normalise (what a scrape does).
    let (a0, b0) = counts();
    let e = expfmt::parse(&body, Format::Prometheus);
    let (a1, b1) = counts();
    let samples = e.samples.len();
    let labels = e.labels.len();
    let owned = e
        .labels
        .iter()
        .filter(|l| matches!(l.value, std::borrow::Cow::Owned(_)))
        .count();
    assert_eq!(e.error_total(), 0);
    let (a2, _) = counts();
    let n = normalize::normalize(&e, "m");
    let (a3, _) = counts();
    drop(n);
    drop(e);

    let (iters, el, cpu) = time(secs, || {
        let e = expfmt::parse(std::hint::black_box(&body), Format::Prometheus);
        std::hint::black_box(e.samples.len());
    });
    let parse_mbs = mb * iters as f64 / cpu.as_secs_f64();
    let parse_wall = mb * iters as f64 / el.as_secs_f64();
    let (iters2, el2, cpu2) = time(secs, || {
        let e = expfmt::parse(std::hint::black_box(&body), Format::Prometheus);
        let n = normalize::normalize(&e, "m");
        std::hint::black_box(n.len());
    });
    let scrape_mbs = mb * iters2 as f64 / cpu2.as_secs_f64();
    let scrape_wall = mb * iters2 as f64 / el2.as_secs_f64();

    println!(
        "body: {path} ({} bytes, {samples} samples, {labels} labels)",
        body.len()
    );
    println!(
        "rust parse:               {parse_mbs:8.1} MB/s of CPU time ({:.1} us/body; wall {parse_wall:.1} MB/s; {iters} iterations)",
        cpu.as_secs_f64() * 1e6 / iters as f64
    );
    println!(
        "rust parse+normalise:     {scrape_mbs:8.1} MB/s of CPU time ({:.1} us/body; wall {scrape_wall:.1} MB/s)",
        cpu2.as_secs_f64() * 1e6 / iters2 as f64
    );
    println!(
        "allocations per parse: {} ({} bytes) for {samples} samples; {owned} escaped label values copied",
        a1 - a0,
        b1 - b0
    );
    println!("allocations per normalise: {}", a3 - a2);

    match std::env::var("PARSE_BENCH_PYTHON") {
        Ok(py) => {
            let out = std::process::Command::new(&py)
                .args(["-c", PY, &path, &secs.to_string()])
                .output()
                .expect("running python");
            let s = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if out.status.success() && f.len() == 4 {
                let py_mbs = mb * f[0] / f[2];
                println!(
                    "python prometheus_client: {py_mbs:8.1} MB/s of CPU time ({:.1} us/body; wall {:.1} MB/s; {} samples)",
                    f[2] * 1e6 / f[0],
                    mb * f[0] / f[1],
                    f[3]
                );
                println!(
                    "ratio rust/python (parse, CPU time): {:.1}x; (wall): {:.1}x",
                    parse_mbs / py_mbs,
                    parse_wall / (mb * f[0] / f[1])
                );
            } else {
                println!(
                    "python run failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Err(_) => {
            println!("(set PARSE_BENCH_PYTHON to a python with prometheus_client to compare)")
        }
    }
}
