//! `bench`, `sweep` and `kv-scale` end to end against the built-in simulator on 127.0.0.1:0:
//! the knee where the simulator's `max_num_seqs` puts it, the exact `max_model_len` boundary, a
//! KV capacity equal to the simulator's, errors, and an interrupted run's partial report.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vllm_sentinel::cli::{Cli, Command};
use vllm_sentinel::experiments::{bench, kvscale, sweep};
use vllm_sentinel::sim::{self, SimConfig};

struct Sim {
    url: String,
    token: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn start(cfg: SimConfig) -> Sim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    tokio::spawn(sim::serve(listener, cfg, token.clone()));
    Sim { url, token }
}

/// Every step takes `step` whatever the batch: throughput grows with running sequences up to
/// `max_num_seqs`, then stays flat.
fn flat_step_sim(max_num_seqs: u32, step: Duration) -> SimConfig {
    let mut c = SimConfig::default();
    c.engine.max_num_seqs = max_num_seqs;
    c.engine.step_base = step;
    c.engine.prefill_per_token = Duration::ZERO;
    c.engine.decode_per_seq = Duration::ZERO;
    c.eos_probability = 0.0;
    c
}

fn cli(args: &[&str]) -> Command {
    let mut v = vec!["vllm-sentinel"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap().command
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_finds_the_knee_at_max_num_seqs() {
    let s = start(flat_step_sim(4, Duration::from_millis(10))).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let Command::Sweep(a) = cli(&[
        "sweep",
        "--target",
        &s.url,
        "--concurrency",
        "1,2,4,8,16,32",
        "--duration",
        "1200ms",
        "--warmup",
        "300ms",
        "--prompt-tokens",
        "16",
        "--max-tokens",
        "6",
        "--metrics-interval",
        "100ms",
        "--out-dir",
        out,
        "--no-progress",
    ]) else {
        unreachable!()
    };
    let code = sweep::run_cli(a, CancellationToken::new()).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v = read_json(&dir.path().join("sweep.json"));
    let sw = &v["sweep"];
    assert_eq!(sw["knee"]["load"], 4.0, "{:#}", sw);
    assert_eq!(
        sw["stopped_early"], true,
        "stops two flat levels past the knee"
    );
    let levels = sw["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 5);
    // the server's own gauges: the excess of 16 streams over 4 slots waits (at 4 streams a
    // request may wait for the next step only)
    let waiting_mean = |i: usize| {
        levels[i]["server"]["requests_waiting"]["mean"]
            .as_f64()
            .unwrap()
    };
    assert!(
        waiting_mean(4) > 5.0 * waiting_mean(2).max(0.1),
        "{} vs {}",
        waiting_mean(4),
        waiting_mean(2)
    );
    assert!(
        levels[4]["server"]["requests_waiting"]["max"]
            .as_f64()
            .unwrap()
            >= 8.0
    );
    assert!(
        levels[4]["server"]["requests_running"]["max"]
            .as_f64()
            .unwrap()
            <= 4.0
    );
    // Why throughput grows up to the knee and not past it, from the server's own state rather
    // than wall-clock throughput ratios (which flaked on a loaded machine): one stream never
    // has more than one request in the batch; four streams keep the batch well above two (the
    // growth); sixteen keep it full at max_num_seqs while the rest wait (the flat part).
    let running = |i: usize, stat: &str| {
        levels[i]["server"]["requests_running"][stat]
            .as_f64()
            .unwrap()
    };
    assert!(running(0, "max") <= 1.0, "{}", running(0, "max"));
    assert!(running(2, "mean") > 2.0, "{}", running(2, "mean"));
    assert!(running(4, "mean") > 3.0, "{}", running(4, "mean"));
    for f in [
        "sweep.csv",
        "sweep-latency.png",
        "sweep-latency.svg",
        "sweep-throughput.png",
    ] {
        let p = dir.path().join(f);
        assert!(p.metadata().unwrap().len() > 100, "{f}");
    }
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_scale_finds_the_boundary_and_the_capacity() {
    let mut c = flat_step_sim(64, Duration::from_millis(4));
    c.max_model_len = 256;
    c.engine.max_model_len = 256;
    c.engine.block_size = 16;
    c.engine.num_gpu_blocks = 33; // 32 usable
    let s = start(c).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("kv.json");
    let Command::KvScale(a) = cli(&[
        "kv-scale",
        "--target",
        &s.url,
        "--max-tokens",
        "16",
        "--sample-interval",
        "4ms",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        dir.path().join("kv.csv").to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    let code = kvscale::run_cli(a, CancellationToken::new()).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v = read_json(&json);
    let k = &v["kv_scale"];
    assert_eq!(k["max_model_len"], 256);
    assert_eq!(k["cache"]["usable_blocks"], 32);
    let rung = |p: u64| {
        k["ladder"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prompt_tokens_requested"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(rung(240)["feasibility"], "accepted");
    // each rung's budget is the whole context left, so nothing is clamped
    assert_eq!(rung(248)["feasibility"], "accepted");
    assert_eq!(rung(248)["max_tokens"], 8);
    assert_eq!(rung(248)["output_tokens"], 8);
    assert_eq!(rung(255)["output_tokens"], 1);
    let r256 = rung(256);
    assert_eq!(r256["feasibility"], "rejected");
    assert!(
        r256["reason"]
            .as_str()
            .unwrap()
            .contains("max_tokens must be at least 1")
    );
    assert_eq!(r256["kv_usage_delta"], 0.0, "rejected before any GPU work");
    assert_eq!(r256["running_peak"], 0.0);
    assert!(
        rung(257)["reason"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 256")
    );
    // Held rungs: read twice while resident; the tokens then held (prompt + generated − 1,
    // generated from the simulator's own counter in the same body) give the expected blocks,
    // and the measured usage is exactly that; closing the stream freed them.
    for p in [64u64, 128] {
        let r = rung(p);
        assert_eq!(r["max_tokens"], 256 - p);
        assert_eq!(r["resident_samples"], 2, "{r:#}");
        let tokens = r["kv_tokens_at_sample"].as_u64().unwrap();
        assert!(tokens >= p, "{r:#}");
        let blocks = tokens.div_ceil(16);
        assert_eq!(r["kv_blocks_expected"], blocks, "{r:#}");
        let measured = r["kv_usage_delta"].as_f64().unwrap();
        assert!((measured - blocks as f64 / 32.0).abs() < 1e-9, "{r:#}");
        assert_eq!(r["kv_within_one_block"], true);
        assert_eq!(r["released_after_close"], true, "{r:#}");
        assert!(r["ttft_s"].as_f64().unwrap() > 0.0);
    }
    // Too close to the limit to hold: said so, not reported as 0.
    assert_eq!(rung(248)["kv_usage_delta"], Value::Null);
    assert!(rung(248)["kv_note"].as_str().unwrap().contains("too few"));
    let b = &k["boundary"];
    assert_eq!(b["max_accepted_prompt_tokens"], 255);
    assert_eq!(b["min_rejected_prompt_tokens"], 256);
    assert_eq!(b["consistent_with_max_model_len"], true);
    let grid = k["grid"].as_array().unwrap();
    assert!(grid.len() >= 3);
    for row in grid {
        let ctx = row["context_tokens"].as_u64().unwrap();
        let want = 32 / (ctx - 1).div_ceil(16);
        assert_eq!(row["capacity_computed"], want, "{row:#}");
        assert_eq!(row["max_fitting_observed"], want, "{row:#}");
        let over = row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["concurrency"] == want + 1)
            .unwrap();
        assert_eq!(over["fits"], false);
        assert_eq!(over["verdict"], "queues", "{row:#}");
        for c in row["cells"].as_array().unwrap() {
            assert_ne!(c["verdict"], "undecided", "{row:#}");
        }
    }
    assert!(dir.path().join("kv-grid.csv").exists());
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("before any GPU work"))
    );
}

/// `bench --slo-* --vllm-bench-json`: goodput as vLLM defines it, and a result file with
/// vLLM's fields, types and units (checked against the field list taken from vLLM's own file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_goodput_and_vllm_bench_json() {
    use vllm_sentinel::experiments::vllm_bench_json::{FIELDS, has_kind};
    let s = start(flat_step_sim(8, Duration::from_millis(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let vb = dir.path().join("vllm.json");
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &s.url,
        "--requests",
        "6",
        "--warmup",
        "1",
        "--max-tokens",
        "8",
        "--stream",
        "stream",
        // every request takes ≥ 8 steps of 2 ms: an e2e SLO of 1 ms fails them all, a TTFT
        // SLO of 10 s passes them all
        "--slo-ttft",
        "10s",
        "--json",
        dir.path().join("b.json").to_str().unwrap(),
        "--vllm-bench-json",
        vb.to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    assert_eq!(
        bench::run_cli(a, CancellationToken::new()).await.unwrap(),
        ExitCode::SUCCESS
    );
    let b = read_json(&dir.path().join("b.json"));
    let m = &b["bench"]["modes"][0];
    assert_eq!(m["slo_attainment"], 1.0);
    assert_eq!(m["slo_met"], true);
    let d = m["duration_s"].as_f64().unwrap();
    let g = m["goodput_rps"].as_f64().unwrap();
    assert!((g - 6.0 / d).abs() < 1e-9, "{g} vs 6 / {d}");
    let v = read_json(&vb);
    let o = v.as_object().unwrap();
    for (k, kind) in FIELDS {
        assert!(has_kind(&o[*k], *kind), "{k}: {}", o[*k]);
    }
    assert_eq!(o.len(), FIELDS.len());
    assert_eq!(v["num_prompts"], 6);
    assert_eq!(v["completed"], 6);
    assert_eq!(v["request_rate"], "inf");
    assert_eq!(v["max_concurrency"], 1);
    assert_eq!(v["total_output_tokens"], 48);
    assert_eq!(v["duration"].as_f64().unwrap(), d);
    assert!((v["request_goodput"].as_f64().unwrap() - g).abs() < 1e-9);
    // units: per-request seconds, statistics in milliseconds
    let ttfts: Vec<f64> = v["ttfts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let mean = ttfts.iter().sum::<f64>() / 6.0;
    assert!((v["mean_ttft_ms"].as_f64().unwrap() - mean * 1000.0).abs() < 1e-6);
    let mean_ttft_report = b["bench"]["modes"][0]["latency"]["ttft_s"]["mean"]
        .as_f64()
        .unwrap();
    assert!((mean - mean_ttft_report).abs() < 1e-9, "the same requests");
    assert_eq!(v["itls"][0].as_array().unwrap().len(), 7);

    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &s.url,
        "--requests",
        "3",
        "--max-tokens",
        "8",
        "--slo-e2e",
        "1ms",
        "--slo-attainment",
        "0.5",
        "--stream",
        "stream",
        "--json",
        dir.path().join("b2.json").to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    bench::run_cli(a, CancellationToken::new()).await.unwrap();
    let m = &read_json(&dir.path().join("b2.json"))["bench"]["modes"][0];
    assert_eq!(
        (m["slo_attainment"].as_f64(), m["slo_met"].as_bool()),
        (Some(0.0), Some(false))
    );
    assert_eq!(m["goodput_rps"], 0.0);
    for bad in [
        vec!["--slo-attainment", "1.5"],
        vec!["--stream", "non-stream", "--vllm-bench-json", "x.json"],
        vec!["--vllm-bench-json", "/no/such/dir/x.json"],
    ] {
        let mut args = vec!["bench", "--target", &s.url, "--no-progress"];
        args.extend(bad.iter().copied());
        let Command::Bench(a) = cli(&args) else {
            unreachable!()
        };
        let e = format!(
            "{:#}",
            bench::run_cli(a, CancellationToken::new())
                .await
                .unwrap_err()
        );
        assert!(
            e.contains("--slo-attainment") || e.contains("--vllm-bench-json"),
            "{bad:?}: {e}"
        );
    }
}

/// `sweep --rate-search` against a simulator whose capacity is set: 4 sequences, 10 steps of
/// 5 ms per request (about 50 ms alone), so at most 80 req/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_rate_search_brackets_the_simulators_capacity() {
    let s = start(flat_step_sim(4, Duration::from_millis(5))).await;
    let dir = tempfile::tempdir().unwrap();
    let vb = dir.path().join("v.json");
    let Command::Sweep(a) = cli(&[
        "sweep",
        "--target",
        &s.url,
        "--rate-search",
        "--rate-min",
        "4",
        "--rate-max",
        "400",
        "--requests",
        "60",
        "--warmup",
        "200ms",
        "--max-tokens",
        "9",
        "--slo-e2e",
        "200ms",
        "--search-precision",
        "0.25",
        "--search-max-probes",
        "8",
        "--metrics-interval",
        "100ms",
        "--json",
        dir.path().join("s.json").to_str().unwrap(),
        "--vllm-bench-json",
        vb.to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    assert_eq!(
        sweep::run_cli(a, CancellationToken::new()).await.unwrap(),
        ExitCode::SUCCESS
    );
    let v = read_json(&dir.path().join("s.json"));
    let g = &v["sweep"]["search"];
    let probes = g["probes"].as_array().unwrap();
    assert_eq!(probes[0]["rate_rps"], 4.0);
    assert_eq!(probes[0]["passed"], true, "{g}");
    assert_eq!(probes[1]["rate_rps"], 400.0);
    assert_eq!(probes[1]["passed"], false, "5× the capacity: {g}");
    let best = g["best_rate_rps"].as_f64().unwrap();
    assert!(best < 400.0, "{g}");
    // one vLLM-format file per probe, named by its rate
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("v-rate"))
        .collect();
    files.sort();
    assert_eq!(files.len(), probes.len(), "{files:?}");
    for f in &files {
        let d = read_json(&dir.path().join(f));
        let r = d["request_rate"].as_f64().unwrap();
        assert!(
            probes
                .iter()
                .any(|p| (p["rate_rps"].as_f64().unwrap() - r).abs() < 1e-6),
            "{f}: {r}"
        );
        assert!(d["completed"].as_u64().unwrap() > 0);
    }
    let Command::Sweep(a) = cli(&[
        "sweep",
        "--target",
        &s.url,
        "--rate-search",
        "--rate-min",
        "1",
        "--rate-max",
        "2",
    ]) else {
        unreachable!()
    };
    let e = format!(
        "{:#}",
        sweep::run_cli(a, CancellationToken::new())
            .await
            .unwrap_err()
    );
    assert!(e.contains("--slo-ttft"), "{e}");
}

/// `--precise-arrivals --arrival constant`: every request of the level is sent, none before its
/// scheduled arrival, and the level reports its schedule (how precise it is, is measured in
/// bench/generator-capacity.sh, not asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precise_constant_arrivals_report_their_schedule() {
    let s = start(flat_step_sim(8, Duration::from_millis(1))).await;
    let dir = tempfile::tempdir().unwrap();
    let Command::Sweep(a) = cli(&[
        "sweep",
        "--target",
        &s.url,
        "--rate",
        "50",
        "--arrival",
        "constant",
        "--precise-arrivals",
        "--requests",
        "25",
        "--warmup",
        "0s",
        "--max-tokens",
        "2",
        "--no-server-metrics",
        "--json",
        dir.path().join("s.json").to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    sweep::run_cli(a, CancellationToken::new()).await.unwrap();
    let v = read_json(&dir.path().join("s.json"));
    assert_eq!(v["settings"]["precise_arrivals"], true);
    let l = &v["sweep"]["levels"][0];
    assert_eq!(l["ok"], 25);
    let sch = &l["schedule"];
    assert_eq!(sch["lag_s"]["count"], 25);
    assert!(sch["lag_s"]["min"].as_f64().unwrap() >= 0.0, "{sch}");
    assert!(
        sch["achieved_send_rate_rps"].as_f64().unwrap() > 0.0,
        "{sch}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_both_modes() {
    let s = start(flat_step_sim(8, Duration::from_millis(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &s.url,
        "--requests",
        "5",
        "--warmup",
        "1",
        "--max-tokens",
        "8",
        "--endpoint",
        "chat",
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    assert_eq!(
        bench::run_cli(a, CancellationToken::new()).await.unwrap(),
        ExitCode::SUCCESS
    );
    let v = read_json(&dir.path().join("bench.json"));
    let modes = v["bench"]["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 2);
    let st = &modes[0]["latency"];
    assert_eq!(modes[0]["ok"], 5);
    assert_eq!(st["output_tokens"]["p50"], 8.0);
    let ttft = st["ttft_s"]["p50"].as_f64().unwrap();
    let e2e = st["e2e_s"]["p50"].as_f64().unwrap();
    assert!(ttft > 0.0 && ttft < e2e, "{ttft} {e2e}");
    assert_eq!(st["itl_s"]["count"], 35, "7 gaps × 5 requests");
    assert_eq!(modes[1]["latency"]["ttft_s"]["count"], 0);
    let csv = std::fs::read_to_string(dir.path().join("bench.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors() {
    // unreachable
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let Command::Bench(a) = cli(&["bench", "--target", &url, "--no-progress"]) else {
        unreachable!()
    };
    let e = bench::run_cli(a, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot reach the target"),
        "{e:#}"
    );

    // every request failing: the report is still written
    let mut c = flat_step_sim(8, Duration::from_millis(1));
    c.faults.error_status = 500;
    c.faults.error_every = 1;
    let s = start(c).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &s.url,
        "--requests",
        "3",
        "--json",
        json.to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    let e = bench::run_cli(a, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("every request failed"), "{e}");
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(
        read_json(&json)["bench"]["modes"][0]["errors_by_class"]["server_error"],
        3
    );

    // no /metrics
    let mut c = flat_step_sim(8, Duration::from_millis(1));
    c.faults.metrics = sim::MetricsFault::NotFound;
    let s = start(c).await;
    let Command::Sweep(a) = cli(&["sweep", "--target", &s.url, "--no-progress"]) else {
        unreachable!()
    };
    let e = sweep::run_cli(a, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no readable /metrics"), "{e:#}");
    let Command::KvScale(a) = cli(&["kv-scale", "--target", &s.url, "--no-progress"]) else {
        unreachable!()
    };
    let e = kvscale::run_cli(a, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("/metrics"), "{e:#}");

    // bad arguments
    let Command::Sweep(a) = cli(&["sweep", "--target", &s.url, "--concurrency", "0,2"]) else {
        unreachable!()
    };
    let e = sweep::run_cli(a, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--concurrency"), "{e}");
    assert!(
        Cli::try_parse_from([
            "vllm-sentinel",
            "sweep",
            "--target",
            "x",
            "--duration",
            "soon"
        ])
        .is_err()
    );
    assert!(
        Cli::try_parse_from([
            "vllm-sentinel",
            "sweep",
            "--target",
            "x",
            "--concurrency",
            "1",
            "--rate",
            "2"
        ])
        .is_err()
    );
}

/// Polls the simulator's /metrics until requests are running, with a deadline.
async fn wait_for_running(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        assert!(Instant::now() < deadline, "no request ever ran");
        if let Ok(r) = client.get(format!("{url}/metrics")).send().await
            && let Ok(body) = r.text().await
            && body.lines().any(|l| {
                l.starts_with("vllm:num_requests_running")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
            })
        {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_sweep_writes_a_partial_report() {
    let s = start(flat_step_sim(4, Duration::from_millis(5))).await;
    let dir = tempfile::tempdir().unwrap();
    let Command::Sweep(a) = cli(&[
        "sweep",
        "--target",
        &s.url,
        "--concurrency",
        "1,2",
        "--duration",
        "60s",
        "--warmup",
        "0s",
        "--max-tokens",
        "4",
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--no-progress",
    ]) else {
        unreachable!()
    };
    let token = CancellationToken::new();
    let t2 = token.clone();
    let url = s.url.clone();
    tokio::spawn(async move {
        wait_for_running(&url).await;
        t2.cancel();
    });
    let started = Instant::now();
    let code = sweep::run_cli(a, token).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped promptly"
    );
    assert_eq!(code, ExitCode::from(130));
    let v = read_json(&dir.path().join("sweep.json"));
    assert_eq!(v["partial"], true);
    assert!(
        v["partial_reason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert_eq!(v["sweep"]["levels"][0]["partial"], true);
    assert!(dir.path().join("sweep.csv").exists());
}
