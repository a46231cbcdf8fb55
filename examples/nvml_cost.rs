//! The cost of each NVML query and of one whole sampling tick on a real GPU: wall time and this
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), through the same `NvmlSource` and `Sampling`
//! code the daemon runs. Needs a GPU; prints a Markdown table.
//!
//! `cargo build --release --example nvml_cost`, then `nvml_cost [path/to/libnvidia-ml.so.1]`.

use std::time::{Duration, Instant};

use vllm_sentinel::gpu::NvmlSource;
use vllm_sentinel::gpu::sampler::{SampleOptions, Sampling};
use vllm_sentinel::gpu::source::{Field, GpuSource};

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.max(0) as u32)
}

/// Runs `f` repeatedly for about `budget` (at most `max` times); returns (median wall, mean CPU,
/// calls).
fn measure(budget: Duration, max: usize, mut f: impl FnMut()) -> (Duration, Duration, usize) {
    f();
    let mut walls = Vec::new();
    let start = Instant::now();
    let cpu0 = thread_cpu();
    while walls.len() < max && start.elapsed() < budget {
        let t = Instant::now();
        f();
        walls.push(t.elapsed());
    }
    let cpu = thread_cpu().saturating_sub(cpu0);
    let n = walls.len().max(1);
    walls.sort();
    (walls[walls.len() / 2], cpu / n as u32, n)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let lib = std::env::args().nth(1).map(std::path::PathBuf::from);
    let mut src = NvmlSource::new(lib);
    let mut session = match src.open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("| query | median wall ms | CPU ms per call | calls | answer |");
    println!("|---|---|---|---|---|");
    {
        let Ok(mut dev) = session.device(0) else {
            eprintln!("no GPU 0");
            std::process::exit(1);
        };
        let (w, c, n) = measure(Duration::from_millis(300), 200, || {
            let _ = dev.uuid();
        });
        println!("| uuid | {} | {} | {n} | |", ms(w), ms(c));
        for field in Field::ALL {
            let answer = match dev.read(field) {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            let (w, c, n) = measure(Duration::from_millis(400), 200, || {
                let _ = std::hint::black_box(dev.read(field));
            });
            println!("| {field} | {} | {} | {n} | {answer} |", ms(w), ms(c));
        }
    }
    for (label, pcie) in [
        ("one tick (defaults)", false),
        ("one tick + pcie_throughput", true),
    ] {
        let mut s = Sampling::new(SampleOptions {
            pcie_throughput: pcie,
            processes: true,
            xid_events: true,
        });
        s.session_opened(session.as_mut());
        let (w, c, n) = measure(Duration::from_secs(3), 100, || {
            let _ = std::hint::black_box(s.sample(session.as_mut()));
        });
        println!("| **{label}** | {} | {} | {n} | |", ms(w), ms(c));
    }
    let t = Instant::now();
    let c0 = thread_cpu();
    drop(session);
    let mut src2 = NvmlSource::new(std::env::args().nth(1).map(std::path::PathBuf::from));
    let opened = src2.open().is_ok();
    println!(
        "| NVML open (init) | {} | {} | 1 | {} |",
        ms(t.elapsed()),
        ms(thread_cpu().saturating_sub(c0)),
        if opened { "ok" } else { "failed" }
    );
}
