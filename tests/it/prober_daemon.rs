//! The prober as the daemon runs it: discovery, workloads, canary, failure classes, reload and
//! shutdown, against raw fakes replaying real vLLM captures.

use crate::prober_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prober_support::harness::{parse_config, start_prober};
use prober_support::{Step, fixed, fixture, metric, sse_head, sse_script, start, vllm_like};
use tokio_util::sync::CancellationToken;
use vllm_sentinel::config::Config;

fn config(url: &str, extra: &str) -> Config {
    parse_config(&format!(
        "[prober]\ndiscovery_retry_min = \"20ms\"\ndiscovery_retry_max = \"100ms\"\nerror_backoff = \"20ms\"\nsaturation_window = \"1s\"\nfirst_token_timeout = \"2s\"\nrequest_timeout = \"5s\"\n\n[[targets]]\nname = \"t\"\nurl = \"{url}\"\n{extra}"
    ))
}

const REQ: &str = "vllm_sentinel_probe_requests_total";

#[tokio::test]
async fn probes_canary_readiness_and_status() {
    let fake = start(vllm_like).await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nname = \"w\"\nconcurrency = 2\nprompt_tokens = 16\nmax_tokens = 8\n[targets.canary]\ninterval = \"1s\"\n",
    ));
    let t = h
        .wait_for("ok requests and a canary verdict", |t| {
            metric(t, REQ, &["outcome=\"ok\""]) >= 4.0
                && metric(t, "vllm_sentinel_canary_limit_honoured", &[]) == 1.0
        })
        .await;
    let l = [
        "target=\"t\"",
        "model=\"tiny\"",
        "workload=\"w\"",
        "endpoint=\"completions\"",
    ];
    assert!(metric(&t, "vllm_sentinel_probe_ttft_seconds_count", &l) >= 4.0);
    assert!(metric(&t, "vllm_sentinel_probe_itl_seconds_count", &l) >= 24.0);
    assert!(metric(&t, "vllm_sentinel_probe_tpot_seconds_count", &l) >= 4.0);
    assert!(metric(&t, "vllm_sentinel_probe_output_tokens_total", &l) >= 32.0);
    assert!(
        metric(
            &t,
            "vllm_sentinel_probe_finish_reasons_total",
            &["reason=\"length\""]
        ) >= 4.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_probe_target_concurrency", &l),
        2.0
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_canary_max_model_len_tokens",
            &["target=\"t\""]
        ),
        2048.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_canary_max_prompt_served_tokens", &[]),
        6.0
    ); // the fixture's usage
    assert!(
        metric(
            &t,
            "vllm_sentinel_canary_probes_total",
            &["probe=\"over\"", "result=\"rejected\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &t,
            "vllm_sentinel_canary_probes_total",
            &["probe=\"inside\"", "result=\"served\""]
        ) >= 1.0
    );
    // Every outcome series exists from the start (zero), so alerts on rate() work.
    assert!(t.contains("outcome=\"timeout_first_token\""));
    assert!(h.ctx.readiness.is_ready());
    let st = h.ctx.status.snapshot();
    assert_eq!(st[0].1.model.as_deref(), Some("tiny"));
    // Canary probes do not count as workload requests.
    assert_eq!(metric(&t, REQ, &["outcome=\"context_length\""]), 0.0);
    h.shutdown().await;
}

#[tokio::test]
async fn target_down_at_start_then_up() {
    let fails = Arc::new(AtomicUsize::new(0));
    let f2 = fails.clone();
    let fake = start(move |n, path, body| {
        if path == "/v1/models" && f2.fetch_add(1, Ordering::SeqCst) < 5 {
            return fixed(503, "text/plain", b"starting");
        }
        vllm_like(n, path, body)
    })
    .await;
    let h = start_prober(config(&fake.url, "[targets.canary]\nenabled = false\n"));
    // Not ready while discovery fails: the target is not probed. /readyz names it and why.
    let t = h
        .wait_for("a failed discovery", |t| {
            metric(
                t,
                "vllm_sentinel_target_discovery_failures_total",
                &["target=\"t\"", "reason=\"http_status\""],
            ) >= 1.0
        })
        .await;
    assert_eq!(
        metric(&t, "vllm_sentinel_target_discovered", &["target=\"t\""]),
        0.0
    );
    // Discovery can succeed only at the 6th attempt: while fewer than 5 were made, it still fails.
    if fails.load(Ordering::SeqCst) < 5 {
        assert!(!h.ctx.readiness.is_ready());
        let pending = h.ctx.readiness.pending().join(", ");
        assert!(
            pending.contains("target t") && pending.contains("http_status"),
            "{pending}"
        );
    }
    let t = h
        .wait_for("probes after recovery", |t| {
            metric(t, REQ, &["outcome=\"ok\""]) >= 1.0
        })
        .await;
    assert!(fails.load(Ordering::SeqCst) >= 6);
    assert_eq!(
        metric(&t, "vllm_sentinel_target_discovered", &["target=\"t\""]),
        1.0
    );
    assert!(
        h.ctx.readiness.is_ready(),
        "{:?}",
        h.ctx.readiness.pending()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn every_failure_lands_in_its_class_and_stays_out_of_success_histograms() {
    let events = prober_support::split_events(&fixture("sse_completions.raw"));
    let e0 = events[0].clone();
    let fake = start(move |n, path, body| {
        if path != "/v1/completions" {
            return vllm_like(n, path, body);
        }
        match n % 8 {
            0 => sse_script(&fixture("sse_completions.raw")),
            1 => fixed(500, "text/plain", b"boom"),
            2 => fixed(429, "text/plain", b"slow down"),
            3 => fixed(503, "text/plain", b"overloaded"),
            4 => vec![sse_head(), Step::Chunk(e0.clone()), Step::Close],
            5 => vec![
                sse_head(),
                Step::Chunk(b"data: {nope\n\n".to_vec()),
                Step::EndChunks,
            ],
            6 => vec![
                sse_head(),
                Step::Chunk(b"data: {\"error\":{\"message\":\"oom\"}}\n\n".to_vec()),
                Step::EndChunks,
            ],
            _ => fixed(
                400,
                "application/json",
                &fixture("ctx_prompt_too_long.body"),
            ),
        }
    })
    .await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nconcurrency = 1\nprompt_tokens = 8\n[targets.canary]\nenabled = false\n",
    ));
    let classes = [
        "ok",
        "server_error",
        "rate_limited",
        "overloaded",
        "truncated",
        "malformed",
        "stream_error",
        "context_length",
    ];
    let t = h
        .wait_for("every class", |t| {
            classes
                .iter()
                .all(|c| metric(t, REQ, &[&format!("outcome=\"{c}\"")]) >= 1.0)
        })
        .await;
    let ok = metric(&t, REQ, &["outcome=\"ok\""]);
    // Only successful requests are in the success histograms.
    assert_eq!(metric(&t, "vllm_sentinel_probe_e2e_seconds_count", &[]), ok);
    assert_eq!(
        metric(&t, "vllm_sentinel_probe_ttft_seconds_count", &[]),
        ok
    );
    let failed = metric(&t, "vllm_sentinel_probe_failed_duration_seconds_count", &[]);
    let all = metric(&t, REQ, &[]);
    assert_eq!(failed, all - ok);
    for c in &classes[1..] {
        assert!(
            metric(
                &t,
                "vllm_sentinel_probe_failed_duration_seconds_count",
                &[&format!("outcome=\"{c}\"")]
            ) >= 1.0,
            "{c}"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn reload_changes_concurrency_without_resetting_counters() {
    let fake = start(vllm_like).await;
    let cfg = config(
        &fake.url,
        "[[targets.workloads]]\nname = \"w\"\nconcurrency = 1\n[targets.canary]\nenabled = false\n",
    );
    let h = start_prober(cfg.clone());
    let t = h
        .wait_for("some requests", |t| {
            metric(t, REQ, &["outcome=\"ok\""]) >= 3.0
        })
        .await;
    let before = metric(&t, REQ, &["outcome=\"ok\""]);
    let mut new = cfg.clone();
    new.targets[0].workloads[0].concurrency = Some(4);
    h.tx.send_replace(Arc::new(new));
    let t = h
        .wait_for("concurrency 4 and in-flight above 1", |t| {
            metric(
                t,
                "vllm_sentinel_probe_target_concurrency",
                &["workload=\"w\""],
            ) == 4.0
                && fake.conns.load(Ordering::SeqCst) >= 4
        })
        .await;
    assert!(metric(&t, REQ, &["outcome=\"ok\""]) >= before);
    // Switch to an open loop.
    let mut open = cfg.clone();
    open.targets[0].workloads[0].concurrency = None;
    open.targets[0].workloads[0].rate = Some(50.0);
    h.tx.send_replace(Arc::new(open));
    let t = h
        .wait_for("open loop", |t| {
            metric(t, "vllm_sentinel_probe_target_rate", &["workload=\"w\""]) == 50.0
                && metric(
                    t,
                    "vllm_sentinel_probe_schedule_lag_seconds_count",
                    &["workload=\"w\""],
                ) >= 10.0
        })
        .await;
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_probe_target_concurrency",
            &["workload=\"w\""]
        ),
        0.0
    );
    assert!(metric(&t, REQ, &["outcome=\"ok\""]) >= before);
    h.shutdown().await;
}

#[tokio::test]
async fn open_loop_drops_at_the_cap_and_counts_them() {
    // Every completion stalls, so in-flight stays at the cap and later arrivals are dropped.
    let fake = start(|n, path, body| {
        if path == "/v1/completions" {
            return vec![sse_head(), Step::Stall];
        }
        vllm_like(n, path, body)
    })
    .await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nname = \"o\"\nrate = 200.0\narrival = \"constant\"\nmax_in_flight = 3\n[targets.canary]\nenabled = false\n",
    ));
    let t = h
        .wait_for("dropped arrivals", |t| {
            metric(
                t,
                "vllm_sentinel_probe_dropped_arrivals_total",
                &["workload=\"o\""],
            ) >= 10.0
        })
        .await;
    assert_eq!(
        metric(&t, "vllm_sentinel_probe_in_flight", &["workload=\"o\""]),
        3.0
    );
    h.wait_for("saturated", |t| {
        metric(t, "vllm_sentinel_prober_saturated", &[]) == 1.0
    })
    .await;
    // Shutdown cancels the stalled requests and counts them.
    let t = h.shutdown().await;
    assert_eq!(
        metric(&t, REQ, &["outcome=\"cancelled\"", "workload=\"o\""]),
        3.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_probe_in_flight", &["workload=\"o\""]),
        0.0
    );
}

#[tokio::test]
async fn context_length_rejections_show_in_the_metrics() {
    let fake = start(vllm_like).await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nname = \"long\"\nprompt_tokens = 3000\n[targets.canary]\nenabled = false\n",
    ));
    h.wait_for("context_length", |t| {
        metric(t, REQ, &["outcome=\"context_length\"", "workload=\"long\""]) >= 2.0
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn runtime_lag_is_measured() {
    let h = start_prober(Config::default());
    assert!(h.ctx.readiness.is_ready(), "no targets: ready at once");
    h.wait_for("ticks", |t| {
        metric(t, "vllm_sentinel_prober_runtime_lag_seconds_count", &[]) >= 10.0
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn daemon_serves_prober_metrics() {
    let fake = start(vllm_like).await;
    let mut cfg = config(&fake.url, "[targets.canary]\nenabled = false\n");
    cfg.gpu.enabled = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let daemon = tokio::spawn(vllm_sentinel::daemon::serve_on(
        listener,
        cfg,
        token.clone(),
        None,
    ));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&body, REQ, &["outcome=\"ok\""]) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("tiny"), "{page}");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn sequential_keep_alive_and_known_prompt_length() {
    // The body the fake sees: token ids of the requested length.
    let lens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l2 = lens.clone();
    let fake = start(move |n, path, body| {
        if path == "/v1/completions" {
            l2.lock().unwrap().push(prober_support::prompt_len(body));
        }
        vllm_like(n, path, body)
    })
    .await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nprompt_tokens = 37\n[targets.canary]\nenabled = false\n",
    ));
    h.wait_for("requests", |t| metric(t, REQ, &["outcome=\"ok\""]) >= 3.0)
        .await;
    h.shutdown().await;
    let lens = lens.lock().unwrap();
    assert!(lens.len() >= 3 && lens.iter().all(|l| *l == 37), "{lens:?}");
    // Connections are kept alive and reused (hyper may open a second one while the first is
    // being handed back to its pool).
    let conns = fake.conns.load(Ordering::SeqCst);
    assert!(
        conns <= 2 && conns < fake.served.load(Ordering::SeqCst),
        "{conns}"
    );
}

#[tokio::test]
async fn target_failing_mid_run_is_counted_and_recovers() {
    // Requests 6..=15 to the completions endpoint get their connection closed before any
    // response (a server that died mid-run), then it serves again.
    let n_comp = Arc::new(AtomicUsize::new(0));
    let n2 = n_comp.clone();
    let fake = start(move |n, path, body| {
        if path == "/v1/completions" {
            let k = n2.fetch_add(1, Ordering::SeqCst);
            if (6..16).contains(&k) {
                return vec![Step::Close];
            }
        }
        vllm_like(n, path, body)
    })
    .await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nconcurrency = 2\nprompt_tokens = 8\n[targets.canary]\nenabled = false\n",
    ));
    let t = h
        .wait_for("failures then recovery", |t| {
            metric(t, REQ, &["outcome=\"connect\""]) >= 10.0
                && metric(t, REQ, &["outcome=\"ok\""]) >= 10.0
        })
        .await;
    assert_eq!(metric(&t, REQ, &["outcome=\"connect\""]), 10.0);
    h.shutdown().await;
}

/// `user:password@` in the target URL: sent as HTTP Basic on discovery, `/tokenize` and every
/// probe, and never part of a label, the status board or the exposition.
#[tokio::test]
async fn url_credentials_are_basic_auth_and_never_shown() {
    let mut fake = start(vllm_like).await;
    let with_creds = fake.url.replace("http://", "http://admin:S3CRETPASS@");
    let h = start_prober(parse_config(&format!(
        "[prober]\ndiscovery_retry_min = \"20ms\"\n[[targets]]\nurl = \"{with_creds}/\"\n[targets.canary]\nenabled = false\n"
    )));
    let t = h
        .wait_for("an ok probe", |t| {
            metric(t, REQ, &["outcome=\"ok\""]) >= 1.0
        })
        .await;
    // base64("admin:S3CRETPASS")
    let want = "authorization: Basic YWRtaW46UzNDUkVUUEFTUw==";
    let mut paths = std::collections::BTreeSet::new();
    while let Ok((head, _)) = fake.requests.try_recv() {
        let path = head.lines().next().unwrap_or("").to_string();
        assert!(
            head.to_ascii_lowercase()
                .contains(&want.to_ascii_lowercase()),
            "{path}: no Basic auth in\n{head}"
        );
        paths.insert(path);
    }
    for p in ["/v1/models", "/tokenize", "/v1/completions"] {
        assert!(paths.contains(p), "{p} not requested: {paths:?}");
    }
    let host = fake.url.trim_start_matches("http://");
    assert!(t.contains(&format!("target=\"{host}\"")), "{t}");
    assert!(!t.contains("S3CRETPASS") && !t.contains("admin"), "{t}");
    let st = h.ctx.status.snapshot();
    assert_eq!(st[0].0, host);
    assert!(!format!("{st:?}").contains("S3CRETPASS"));
    h.shutdown().await;
}

/// A server that answers every completion with only `data: [DONE]`, instantly: every request is
/// `empty`, and the closed loop backs off (10 ms, doubling, capped at `error_backoff`) instead
/// of spinning. The bounds follow from the schedule: from the 1st to the 7th request there are
/// at least 10+20+40+80+160+320 ms of pauses, however fast or slow the machine (the test sees
/// the 1st up to one 20 ms poll late, hence 500 ms).
#[tokio::test]
async fn an_instant_empty_server_is_not_hammered() {
    let fake = start(|_, path, body| match path {
        "/v1/completions" => vec![
            sse_head(),
            Step::Chunk(b"data: [DONE]\n\n".to_vec()),
            Step::EndChunks,
        ],
        _ => vllm_like(0, path, body),
    })
    .await;
    let h = start_prober(parse_config(&format!(
        "[prober]\nerror_backoff = \"1s\"\n[[targets]]\nname = \"t\"\nurl = \"{}\"\n[targets.canary]\nenabled = false\n",
        fake.url
    )));
    h.wait_for("a first empty answer", |t| {
        metric(t, REQ, &["outcome=\"empty\""]) >= 1.0
    })
    .await;
    let first = Instant::now();
    let t = h
        .wait_for("seven empty answers", |t| {
            metric(t, REQ, &["outcome=\"empty\""]) >= 7.0
        })
        .await;
    assert!(
        first.elapsed() >= Duration::from_millis(500),
        "7 requests within {:?}: no backoff",
        first.elapsed()
    );
    assert_eq!(metric(&t, REQ, &["outcome=\"ok\""]), 0.0);
    // Within those >= 300 ms an unthrottled loop would have sent hundreds of requests.
    let sent = fake.served.load(Ordering::SeqCst);
    assert!(sent < 20, "{sent} requests reached the server");
    h.shutdown().await;
}

/// A daemon on 127.0.0.1:0 probing `url` with `workload` (one closed-loop workload), canary and
/// GPU off, the given grace and final scrape window.
async fn shutdown_daemon(
    url: &str,
    grace: &str,
    linger: &str,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut cfg = parse_config(&format!(
        "[server]\nshutdown_grace = \"{grace}\"\nshutdown_linger = \"{linger}\"\n[prober]\nfirst_token_timeout = \"120s\"\nrequest_timeout = \"120s\"\n[[targets]]\nname = \"t\"\nurl = \"{url}\"\n[[targets.workloads]]\nname = \"w\"\nconcurrency = 2\nprompt_tokens = 8\n[targets.canary]\nenabled = false\n"
    ));
    cfg.gpu.enabled = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let daemon = tokio::spawn(vllm_sentinel::daemon::serve_on(
        listener,
        cfg,
        token.clone(),
        None,
    ));
    (addr, token, daemon)
}

/// Waits until the fake has received `n` completion requests.
async fn completions_received(fake: &mut prober_support::Fake, n: usize) {
    let mut seen = 0;
    while seen < n {
        let (head, _) = tokio::time::timeout(Duration::from_secs(30), fake.requests.recv())
            .await
            .expect("the server never received the probes")
            .unwrap();
        if head.starts_with("/v1/completions") {
            seen += 1;
        }
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("/metrics must be served during shutdown");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

/// SIGTERM with requests stuck in flight: no new request is sent, `/metrics` keeps serving, and
/// once `shutdown_grace` has passed the stuck requests are counted as `cancelled` — visible in a
/// scrape before the exporter stops.
#[tokio::test]
async fn cancelled_probes_are_scrapeable_after_the_grace() {
    let mut fake = start(|n, path, body| {
        if path == "/v1/completions" {
            return vec![sse_head(), Step::Stall];
        }
        vllm_like(n, path, body)
    })
    .await;
    let (addr, token, daemon) = shutdown_daemon(&fake.url, "200ms", "10s").await;
    completions_received(&mut fake, 2).await;
    token.cancel();
    let t = loop {
        let t = scrape(addr).await;
        if metric(&t, REQ, &["outcome=\"cancelled\""]) >= 2.0 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric(&t, REQ, &["outcome=\"cancelled\"", "workload=\"w\""]),
        2.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_probe_in_flight", &["workload=\"w\""]),
        0.0
    );
    // Nothing new was sent after shutdown started.
    while let Ok((head, _)) = fake.requests.try_recv() {
        assert!(
            !head.starts_with("/v1/completions"),
            "a probe sent during shutdown"
        );
    }
    tokio::time::timeout(Duration::from_secs(60), daemon)
        .await
        .expect("the daemon did not stop after its final scrape window")
        .unwrap()
        .unwrap();
}

/// In-flight probes that finish within `shutdown_grace` are counted by their real outcome, not
/// cancelled, and `/metrics` serves while they finish.
#[tokio::test]
async fn in_flight_probes_finish_within_the_grace() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g2 = gate.clone();
    let mut fake = start(move |n, path, body| {
        if path == "/v1/completions" {
            let mut steps = vec![Step::Gate(g2.clone())];
            steps.extend(sse_script(&fixture("sse_completions.raw")));
            return steps;
        }
        vllm_like(n, path, body)
    })
    .await;
    let (addr, token, daemon) = shutdown_daemon(&fake.url, "120s", "30s").await;
    completions_received(&mut fake, 2).await;
    token.cancel();
    // Shutting down, the two requests still in flight, /metrics still served.
    let t = scrape(addr).await;
    assert_eq!(metric(&t, REQ, &["outcome=\"cancelled\""]), 0.0, "{t}");
    gate.add_permits(2);
    let t = loop {
        let t = scrape(addr).await;
        if metric(&t, REQ, &["outcome=\"ok\""]) >= 2.0 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric(&t, REQ, &["outcome=\"ok\""]), 2.0);
    assert_eq!(metric(&t, REQ, &["outcome=\"cancelled\""]), 0.0);
    drop(daemon);
}

/// A target whose `/v1/models` answers garbage is never discovered: it is visible as
/// `vllm_sentinel_target_discovered 0` and `…_discovery_failures_total{reason="malformed"}`
/// (every reason exists from the start), and `/readyz` answers 503 naming the target and why.
#[tokio::test]
async fn an_undiscovered_target_is_visible_and_not_ready() {
    let fake = start(|n, path, body| {
        if path == "/v1/models" {
            return fixed(200, "application/json", b"<html>not a model list</html>");
        }
        vllm_like(n, path, body)
    })
    .await;
    let mut cfg = config(&fake.url, "[targets.canary]\nenabled = false\n");
    cfg.gpu.enabled = false;
    cfg.server.shutdown_linger = Duration::ZERO;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let daemon = tokio::spawn(vllm_sentinel::daemon::serve_on(
        listener,
        cfg,
        token.clone(),
        None,
    ));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(
            &body,
            "vllm_sentinel_target_discovery_failures_total",
            &["target=\"t\"", "reason=\"malformed\""],
        ) >= 2.0
        {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        body.contains("vllm_sentinel_target_discovered{target=\"t\"} 0"),
        "{body}"
    );
    for reason in [
        "connect",
        "timeout",
        "http_status",
        "no_models",
        "model_not_found",
    ] {
        assert!(
            body.contains(&format!(
                "vllm_sentinel_target_discovery_failures_total{{target=\"t\",reason=\"{reason}\"}} 0"
            )),
            "{reason}: {body}"
        );
    }
    assert_eq!(metric(&body, REQ, &[]), 0.0, "no probe series: {body}");
    let resp = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let why = resp.text().await.unwrap();
    assert!(
        why.contains("target t") && why.contains("malformed"),
        "{why}"
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A `lora` workload takes its adapters from the same `/v1/models` read that discovered the
/// model: the daemon reads the list once, not a second time for the adapters.
#[tokio::test]
async fn a_lora_workload_reads_the_model_list_once() {
    let mut fake = start(prober_support::vllm_with_adapter).await;
    let h = start_prober(config(
        &fake.url,
        "[[targets.workloads]]\nname = \"l\"\nsource = \"lora\"\nprompt_tokens = 8\nmax_tokens = 2\n[targets.canary]\nenabled = false\n",
    ));
    h.wait_for("a request to the adapter", |t| {
        metric(t, REQ, &["model=\"sql\"", "outcome=\"ok\""]) >= 1.0
    })
    .await;
    assert_eq!(fake.count("/v1/models"), 1, "reads of /v1/models");
    h.shutdown().await;
}
