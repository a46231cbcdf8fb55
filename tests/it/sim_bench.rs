//! Benchmark (ignored by default): the simulator's fixed-timing mode under many concurrent
//! streams, run as a separate `vllm-sentinel simulate` process so its CPU time can be read from
//! /proc. Run with
//! `cargo test --release --test sim_bench -- --ignored --nocapture`
//! (`SIM_BENCH_STREAMS`, default 1000; a reference at a tenth of the streams is measured in the
//! same run; `SIM_BENCH_BIN` overrides the simulator binary).
//! Results and method: docs/bench-sim.md.

use std::time::{Duration, Instant};

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // fields 14 and 15 of stat (utime, stime) are 12 and 13 after the comm field
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap_or(0)
}

fn stamp(ev: &str) -> Option<u64> {
    let i = ev.find("\"sim_sent_ns\":")? + 14;
    let digits: String = ev[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

struct Run {
    streams: usize,
    chunks: u64,
    wall: f64,
    cpu_s: f64,
    rss_kib: u64,
    jitter_us: Vec<u64>,
}

async fn run(addr: &str, pid: u32, streams: usize, tokens: u32, every_ns: u64) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(streams)
        .build()
        .unwrap();
    let url = format!("http://{addr}/v1/completions");
    let body = format!(r#"{{"prompt":"x","max_tokens":{tokens},"ignore_eos":true,"stream":true}}"#);
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = client.post(url).body(body).send().await.unwrap();
            let mut buf = String::new();
            let mut stamps = Vec::with_capacity(tokens as usize);
            while let Some(b) = r.chunk().await.unwrap() {
                buf.push_str(std::str::from_utf8(&b).unwrap());
                while let Some(i) = buf.find("\n\n") {
                    if let Some(s) = stamp(&buf[..i]) {
                        stamps.push(s);
                    }
                    buf.drain(..i + 2);
                }
            }
            stamps
        }));
    }
    let mut chunks = 0;
    let mut jitter_us = Vec::new();
    let mut peak_rss = 0;
    for t in tasks {
        let st = t.await.unwrap();
        peak_rss = peak_rss.max(rss_kib(pid));
        chunks += st.len() as u64;
        for w in st.windows(2) {
            jitter_us.push((w[1] - w[0]).abs_diff(every_ns) / 1000);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu_s = (cpu_ticks(pid) - c0) as f64 / 100.0; // USER_HZ = 100 on Linux
    jitter_us.sort_unstable();
    Run {
        streams,
        chunks,
        wall,
        cpu_s,
        rss_kib: peak_rss,
        jitter_us,
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run explicitly"]
async fn fixed_timing_many_streams() {
    let streams: usize = std::env::var("SIM_BENCH_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    // SIM_BENCH_BIN: the binary to run when this test binary was copied to another machine.
    let bin = std::env::var("SIM_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_vllm-sentinel").to_string());
    let mut child = std::process::Command::new(bin)
        .args(["simulate", "--listen", &addr, "--fixed-timing", "50ms,10ms"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "simulator did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle_rss = rss_kib(pid);
    let mut results = Vec::new();
    for n in [streams / 10, streams] {
        results.push(run(&addr, pid, n, 200, 10_000_000).await);
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("idle RSS {idle_rss} KiB");
    println!(
        "| streams | chunks | wall s | sim CPU s | sim CPU % of a core | CPU µs/chunk | peak RSS KiB | gap−10ms p50/p99/max µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.2} | {} | {}/{}/{} |",
            r.streams,
            r.chunks,
            r.wall,
            r.cpu_s,
            100.0 * r.cpu_s / r.wall,
            1e6 * r.cpu_s / r.chunks as f64,
            r.rss_kib,
            pct(&r.jitter_us, 0.5),
            pct(&r.jitter_us, 0.99),
            r.jitter_us.last().copied().unwrap_or(0)
        );
    }
    let per_chunk = |r: &Run| r.cpu_s / r.chunks as f64;
    println!(
        "CPU per chunk, {} streams / {} streams: {:.2}",
        results[1].streams,
        results[0].streams,
        per_chunk(&results[1]) / per_chunk(&results[0]).max(1e-12)
    );
    for r in &results {
        assert_eq!(r.chunks, r.streams as u64 * 200);
    }
}
