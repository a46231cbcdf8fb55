//! The scraper against a scripted server on 127.0.0.1:0: up/down, series removal, timeout,
//! body cap, content types, HTML, truncation, garbage, duplicates, engine switches, gzip, auth,
//! pass-through, and the full loop with readiness, status and reloads.

use crate::scrape_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use scrape_support::*;
use vllm_sentinel::scrape::expfmt::{self, ErrorKind, Format};
use vllm_sentinel::scrape::export::{FailReason, TargetView};
use vllm_sentinel::scrape::scraper::{TargetRun, TargetScraper};

const PT: &str = "text/plain; version=1.0.0; charset=utf-8";

fn busy() -> Vec<u8> {
    fixture("metrics_busy.txt").into_bytes()
}

fn has_server_series(v: &TargetView) -> bool {
    v.server.is_some() && v.info.is_some()
}

async fn scrape_n(ts: &mut TargetScraper, n: usize) -> Vec<TargetView> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(ts.scrape().await);
    }
    out
}

fn errs(v: &TargetView, k: ErrorKind) -> u64 {
    v.health.parse_errors.get(&k).copied().unwrap_or(0)
}

fn fails(v: &TargetView, r: FailReason) -> u64 {
    v.health.failures.get(&r).copied().unwrap_or(0)
}

#[tokio::test]
async fn up_down_up_removes_and_restores_series() {
    let srv = FixtureServer::start().await;
    srv.push(Answer::Body(200, Some(PT), busy()));
    srv.push(Answer::Body(
        500,
        Some("text/html"),
        b"<html><body>Internal Server Error</body></html>".to_vec(),
    ));
    srv.push(Answer::Body(200, Some(PT), busy()));
    srv.set_version(Some("0.32.0"));
    let mut r = run("t", &srv.url);
    r.version_url = Some(format!("{}/version", srv.url));
    let mut ts = TargetScraper::new(r, client());
    let v = scrape_n(&mut ts, 3).await;
    assert!(v[0].health.up && has_server_series(&v[0]));
    assert_eq!(v[0].info, Some(("vllm", "0.32.0".to_string())));
    assert!(!v[1].health.up);
    assert!(
        !has_server_series(&v[1]),
        "a failed scrape leaves no server series"
    );
    assert!(v[1].window.is_empty());
    assert_eq!(fails(&v[1], FailReason::HttpStatus), 1);
    assert_eq!(v[1].health.last_success, v[0].health.last_success);
    assert!(v[2].health.up && has_server_series(&v[2]));
    assert!(
        v[2].window.is_empty(),
        "the window restarts after a failure"
    );
    assert_eq!((v[2].health.scrapes_ok, v[2].health.scrapes_error), (2, 1));
    // Our exposition while down: up 0, no server family at all for the target.
    let text = exposition(std::slice::from_ref(&v[1]));
    assert!(
        text.contains("vllm_sentinel_upstream_up{target=\"t\"} 0"),
        "{text}"
    );
    assert!(!text.contains("vllm_sentinel_server_"), "{text}");
    assert!(text.contains(
        "vllm_sentinel_upstream_scrape_failures_total{target=\"t\",reason=\"http_status\"} 1"
    ));
}

#[tokio::test]
async fn timeout_is_a_failure_within_the_limit() {
    let srv = FixtureServer::start().await;
    srv.push(Answer::Hang);
    let mut r = run("t", &srv.url);
    r.timeout = Duration::from_millis(300);
    let mut ts = TargetScraper::new(r, client());
    let t0 = Instant::now();
    let v = ts.scrape().await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!v.health.up);
    assert_eq!(fails(&v, FailReason::Timeout), 1);
    assert!(
        ts.last_error
            .as_deref()
            .unwrap()
            .contains("no complete answer")
    );
}

#[tokio::test]
async fn a_100_mb_body_is_cut_at_the_cap() {
    let srv = FixtureServer::start().await;
    srv.push(Answer::Stream(100 << 20));
    srv.push(Answer::Declared(100 << 20));
    let mut ts = TargetScraper::new(run("t", &srv.url), client());
    let v = scrape_n(&mut ts, 2).await;
    for x in &v {
        assert!(!x.health.up);
    }
    assert_eq!(fails(&v[1], FailReason::TooLarge), 2);
    // Under the cap the same stream is a fine body.
    srv.script.answers.lock().unwrap().clear();
    srv.push(Answer::Stream(1 << 20));
    let mut r = run("t", &srv.url);
    r.max_body_bytes = 2 << 20;
    let mut ts = TargetScraper::new(r, client());
    let v = ts.scrape().await;
    assert!(v.health.up, "{:?}", ts.last_error);
}

#[tokio::test]
async fn wrong_content_types_html_garbage_and_truncation() {
    let srv = FixtureServer::start().await;
    let cases: Vec<(Answer, ErrorKind, FailReason)> = vec![
        (
            Answer::Body(
                200,
                Some("application/json"),
                b"{\"error\":\"no\"}".to_vec(),
            ),
            ErrorKind::ContentType,
            FailReason::Parse,
        ),
        (
            Answer::Body(
                200,
                Some("text/html; charset=utf-8"),
                b"<!doctype html><title>login</title>\n".to_vec(),
            ),
            ErrorKind::ContentType,
            FailReason::Parse,
        ),
        (
            // An HTML page sent as text/plain: sniffed.
            Answer::Body(
                200,
                Some("text/plain"),
                b"<html>proxy error</html>\n".to_vec(),
            ),
            ErrorKind::ContentType,
            FailReason::Parse,
        ),
        (
            Answer::Body(200, Some(PT), busy()[..30_000].to_vec()),
            ErrorKind::Truncated,
            FailReason::Parse,
        ),
        (
            Answer::Body(200, Some(PT), vec![0xff, 0xfe, 0x00, 0x41, b'\n']),
            ErrorKind::Encoding,
            FailReason::Parse,
        ),
        (
            Answer::Body(200, None, b"hello world\nthis is not metrics\n".to_vec()),
            ErrorKind::Empty,
            FailReason::Parse,
        ),
        (
            Answer::Body(
                200,
                Some("application/openmetrics-text; version=1.0.0"),
                b"a 1\n".to_vec(),
            ),
            ErrorKind::Truncated,
            FailReason::Parse,
        ),
    ];
    for (i, (answer, kind, reason)) in cases.into_iter().enumerate() {
        srv.push(answer);
        srv.push(Answer::Body(200, Some(PT), busy()));
        let mut ts = TargetScraper::new(run("t", &srv.url), client());
        let bad = ts.scrape().await;
        assert!(!bad.health.up, "case {i}");
        assert!(!has_server_series(&bad), "case {i}");
        assert!(
            errs(&bad, kind) >= 1,
            "case {i}: {:?}",
            bad.health.parse_errors
        );
        assert_eq!(
            fails(&bad, reason),
            1,
            "case {i}: {:?}",
            bad.health.failures
        );
        let good = ts.scrape().await;
        assert!(good.health.up, "case {i}: recovers: {:?}", ts.last_error);
        // Drain the repeating good answer before the next case.
        srv.script.answers.lock().unwrap().clear();
    }
}

/// A connection that closes before the declared Content-Length arrives.
#[tokio::test]
async fn a_connection_cut_mid_body_is_a_truncated_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let body = &busy()[..20_000];
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len() + 5_000
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(body).await.unwrap();
        sock.shutdown().await.unwrap();
    });
    let mut ts = TargetScraper::new(run("t", &url), client());
    let v = ts.scrape().await;
    server.await.unwrap();
    assert!(!v.health.up);
    assert_eq!(fails(&v, FailReason::Body), 1, "{:?}", ts.last_error);
    assert_eq!(errs(&v, ErrorKind::Truncated), 1);
}

#[tokio::test]
async fn duplicate_series_drop_that_family_only() {
    let srv = FixtureServer::start().await;
    let mut body = fixture("metrics_busy.txt");
    body = body.replacen(
        "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"tiny\"} 0.5039370078740157\n",
        "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"tiny\"} 0.5039370078740157\nvllm:kv_cache_usage_perc{model_name=\"tiny\",engine=\"0\"} 0.9\n",
        1,
    );
    srv.push(Answer::Body(200, Some(PT), body.into_bytes()));
    let mut ts = TargetScraper::new(run("t", &srv.url), client());
    let v = ts.scrape().await;
    assert!(v.health.up);
    assert_eq!(errs(&v, ErrorKind::DuplicateSeries), 1);
    let s = v.server.as_ref().unwrap();
    use vllm_sentinel::scrape::normalize::Concept;
    assert_eq!(
        s.value(Concept::KvCacheUsage, "tiny", "0"),
        None,
        "which value is right is unknown"
    );
    assert_eq!(s.value(Concept::KvCacheHeadroom, "tiny", "0"), None);
    assert_eq!(s.value(Concept::RequestsRunning, "tiny", "0"), Some(16.0));
    assert!(
        ts.last_error
            .as_deref()
            .unwrap()
            .contains("duplicate_series")
    );
}

#[tokio::test]
async fn engine_and_version_switches_between_scrapes() {
    let srv = FixtureServer::start().await;
    srv.set_version(Some("0.32.0"));
    srv.push(Answer::Body(200, Some(PT), busy()));
    srv.push(Answer::Body(200, Some(PT), busy()));
    srv.push(Answer::Body(200, Some(PT), data("sglang.txt").into_bytes()));
    srv.push(Answer::Body(
        200,
        Some(PT),
        data("vllm_0_10_multiprocess.txt").into_bytes(),
    ));
    let mut r = run("t", &srv.url);
    r.version_url = Some(format!("{}/version", srv.url));
    let mut ts = TargetScraper::new(r, client());
    let a = ts.scrape().await;
    let b = ts.scrape().await;
    srv.set_version(Some("0.5.23"));
    let c = ts.scrape().await;
    srv.set_version(Some("0.10.1"));
    let d = ts.scrape().await;
    assert_eq!(a.info, Some(("vllm", "0.32.0".into())));
    assert_eq!(b.info, Some(("vllm", "0.32.0".into())));
    assert_eq!(c.info, Some(("sglang", "0.5.23".into())));
    assert_eq!(d.info, Some(("vllm", "0.10.1".into())));
    assert!(
        c.window.is_empty() && d.window.is_empty(),
        "no window across an engine switch"
    );
    use vllm_sentinel::scrape::normalize::Concept;
    assert_eq!(
        c.server
            .as_ref()
            .unwrap()
            .value(Concept::RequestsRunning, "qwen", "0"),
        Some(12.0)
    );
    assert_eq!(
        c.server
            .as_ref()
            .unwrap()
            .value(Concept::RequestsRunning, "tiny", "0"),
        None
    );
    assert_eq!(
        d.server
            .as_ref()
            .unwrap()
            .value(Concept::KvCacheUsage, "llama", "0"),
        Some(0.5)
    );
    for v in [&a, &b, &c, &d] {
        assert!(v.health.up);
    }
}

#[tokio::test]
async fn gzip_bodies_and_the_auth_header() {
    let srv = FixtureServer::start().await;
    srv.push(Answer::Gzip(busy()));
    let mut r = run("t", &srv.url);
    // A variable that is always set; its value becomes the whole Authorization header.
    r.auth_header_env = Some("PATH".into());
    let mut ts = TargetScraper::new(r, client());
    let v = ts.scrape().await;
    assert!(v.health.up, "{:?}", ts.last_error);
    assert_eq!(
        v.health.samples,
        Some(count_samples(&fixture("metrics_busy.txt")) as u64)
    );
    let seen = srv.script.auth_seen.lock().unwrap().clone();
    assert_eq!(seen, vec![Some(std::env::var("PATH").unwrap())]);
    // An unset variable fails the scrape with a config reason, naming the variable only.
    let mut r = run("t", &srv.url);
    r.auth_header_env = Some("VLLM_SENTINEL_TEST_SURELY_UNSET_VAR".into());
    let mut ts = TargetScraper::new(r, client());
    let v = ts.scrape().await;
    assert_eq!(fails(&v, FailReason::Config), 1);
    assert!(
        ts.last_error
            .unwrap()
            .contains("VLLM_SENTINEL_TEST_SURELY_UNSET_VAR")
    );
}

#[tokio::test]
async fn passthrough_keeps_names_renames_clashes_and_caps() {
    let srv = FixtureServer::start().await;
    let extra = "# TYPE clash gauge\nclash{target=\"inner\",exported_target=\"x\"} 1\n";
    let body = format!("{}{extra}", fixture("metrics_busy.txt"));
    srv.push(Answer::Body(200, Some(PT), body.into_bytes()));
    let mut r: TargetRun = run("t", &srv.url);
    r.passthrough = true;
    let mut ts = TargetScraper::new(r.clone(), client());
    let v = ts.scrape().await;
    let text = exposition(std::slice::from_ref(&v));
    let e = expfmt::parse(&text, Format::Prometheus);
    assert_eq!(e.error_total(), 0, "{:?}", e.errors);
    assert!(
        text.contains(
            "vllm:num_requests_running{target=\"t\",engine=\"0\",model_name=\"tiny\"} 16"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE vllm:prompt_tokens_total counter\n"));
    assert!(
        text.contains(
            "vllm:prompt_tokens_total{target=\"t\",engine=\"0\",model_name=\"tiny\"} 11815"
        )
    );
    assert!(text.contains("vllm:iteration_tokens_total_bucket{target=\"t\",engine=\"0\",model_name=\"tiny\",le=\"+Inf\"}"));
    assert!(text.contains("http_request_size_bytes_sum{target=\"t\",handler=\"/v1/models\"} 0"));
    assert!(
        text.contains(
            "clash{target=\"t\",exported_exported_target=\"inner\",exported_target=\"x\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("_created"), "created series are dropped");
    assert!(
        !text.contains("process_cpu_seconds_total{target"),
        "our own names are not re-exported"
    );
    // The OpenMetrics encoding of the same views is valid too.
    let board = Arc::new(vllm_sentinel::scrape::export::Board::default());
    board.publish(Arc::new(v.clone()));
    let reg = registry(&board);
    let (om, _) =
        vllm_sentinel::exporter::encode(&reg, Some("application/openmetrics-text")).unwrap();
    let e = expfmt::parse(&om, Format::OpenMetrics);
    assert_eq!(e.error_total(), 0, "{:?}", e.errors);
    assert!(
        om.contains(
            "vllm:prompt_tokens_total{target=\"t\",engine=\"0\",model_name=\"tiny\"} 11815"
        )
    );
    // The cap.
    r.passthrough_max_series = 10;
    let mut ts = TargetScraper::new(r, client());
    let v = ts.scrape().await;
    let p = v.passthrough.as_ref().unwrap();
    let kept: usize = p.families.iter().map(|f| f.series.len()).sum();
    assert!(kept <= 10);
    assert!(p.dropped_series > 50, "{}", p.dropped_series);
    let text = exposition(std::slice::from_ref(&v));
    assert!(text.contains(&format!(
        "vllm_sentinel_upstream_passthrough_dropped_series{{target=\"t\"}} {}",
        p.dropped_series
    )));
}

/// The whole loop: readiness after the first attempt on every target, status board, one
/// target down while the other is up, and a reload that adds and removes targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_loop_readiness_status_isolation_and_reload() {
    use vllm_sentinel::config::{Config, TargetConfig};
    use vllm_sentinel::runtime::RunContext;
    let good = FixtureServer::start().await;
    good.push(Answer::Body(200, Some(PT), busy()));
    let bad = FixtureServer::start().await;
    bad.push(Answer::Body(
        503,
        Some("text/plain"),
        b"overloaded\n".to_vec(),
    ));
    let mut cfg = Config::default();
    cfg.scrape.interval = Duration::from_millis(100);
    for (name, s) in [("good", &good), ("bad", &bad)] {
        let mut t = TargetConfig::from_url(&s.url);
        t.name = Some(name.into());
        cfg.targets.push(t);
    }
    let mut reg = prometheus_client::registry::Registry::default();
    let scraper = vllm_sentinel::scrape::Scraper::new(&cfg, &mut reg).unwrap();
    let board = scraper.board();
    let mut events = scraper.subscribe();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(cfg.clone()));
    let ctx = RunContext {
        tracker: tokio_util::task::TaskTracker::new(),
        token: tokio_util::sync::CancellationToken::new(),
        abort: tokio_util::sync::CancellationToken::new(),
        config: rx,
        readiness: Default::default(),
        status: Default::default(),
    };
    scraper.spawn(&ctx);
    assert_eq!(ctx.readiness.pending(), vec!["scrape".to_string()]);
    let deadline = Duration::from_secs(20);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(deadline, events.recv())
            .await
            .unwrap()
            .unwrap();
        seen.insert(ev.target.clone());
    }
    assert!(ctx.readiness.is_ready());
    let status = ctx.status.snapshot();
    let st = |n: &str| status.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(st("good").up, Some(true));
    assert_eq!(st("bad").up, Some(false));
    assert!(st("bad").last_error.unwrap().contains("503"));
    assert!(board.get("good").unwrap().health.up);
    let text = vllm_sentinel::exporter::encode(&reg, None).unwrap().0;
    assert!(
        text.contains("vllm_sentinel_upstream_up{target=\"good\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vllm_sentinel_upstream_up{target=\"bad\"} 0"),
        "{text}"
    );
    assert!(text.contains("vllm_sentinel_server_requests_running{target=\"good\""));
    assert!(!text.contains("vllm_sentinel_server_requests_running{target=\"bad\""));
    // Reload: drop "bad", add "third".
    let third = FixtureServer::start().await;
    third.push(Answer::Body(200, Some(PT), data("sglang.txt").into_bytes()));
    let mut cfg2 = cfg.clone();
    cfg2.targets.retain(|t| t.name.as_deref() != Some("bad"));
    let mut t = TargetConfig::from_url(&third.url);
    t.name = Some("third".into());
    cfg2.targets.push(t);
    tx.send_replace(Arc::new(cfg2));
    loop {
        let ev = tokio::time::timeout(deadline, events.recv()).await.unwrap();
        if let Ok(ev) = ev
            && ev.target == "third"
        {
            assert!(ev.view.health.up);
            break;
        }
    }
    assert!(board.get("bad").is_none(), "a removed target's series go");
    let text = vllm_sentinel::exporter::encode(&reg, None).unwrap().0;
    assert!(!text.contains("target=\"bad\""));
    assert!(text.contains("vllm_sentinel_server_info{target=\"third\",engine=\"sglang\""));
    ctx.token.cancel();
    ctx.tracker.close();
    tokio::time::timeout(deadline, ctx.tracker.wait())
        .await
        .unwrap();
}

/// Two targets whose families would encode under one name: one family, the first type.
#[test]
fn passthrough_name_clash_across_targets_stays_valid() {
    let mut ra = run("a", "http://127.0.0.1:1");
    ra.passthrough = true;
    let mut rb = run("b", "http://127.0.0.1:1");
    rb.passthrough = true;
    let a = process_all(ra, &["# TYPE foo counter\nfoo_total 1\n"]).remove(0);
    let b = process_all(rb, &["# TYPE foo_total gauge\nfoo_total 2\n"]).remove(0);
    let text = exposition(&[a, b]);
    let e = expfmt::parse(&text, Format::Prometheus);
    assert_eq!(e.error_total(), 0, "{:?}\n{text}", e.errors);
    assert_eq!(text.matches("# TYPE foo_total ").count(), 1, "{text}");
    assert!(text.contains("foo_total{target=\"a\"} 1"), "{text}");
}

/// The built-in simulator's /metrics (current and pre-0.12 names) scrapes cleanly, with its
/// version from /version.
#[tokio::test]
async fn the_builtin_simulator_scrapes_cleanly() {
    use vllm_sentinel::scrape::normalize::Concept;
    for legacy in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = tokio_util::sync::CancellationToken::new();
        let cfg = vllm_sentinel::sim::SimConfig {
            legacy_metrics: legacy,
            ..Default::default()
        };
        let (model, version) = (cfg.model.clone(), cfg.version.clone());
        let sim = tokio::spawn(vllm_sentinel::sim::serve(listener, cfg, token.clone()));
        let mut r = run("sim", &url);
        r.version_url = Some(format!("{url}/version"));
        let mut ts = TargetScraper::new(r, client());
        let v = ts.scrape().await;
        assert!(v.health.up, "{:?}", ts.last_error);
        assert!(
            v.health.parse_errors.values().all(|n| *n == 0),
            "{:?}",
            v.health.parse_errors
        );
        assert_eq!(v.info, Some(("vllm", version)));
        let s = v.server.as_ref().unwrap();
        let usage = s.value(Concept::KvCacheUsage, &model, "0");
        assert!(usage.is_some(), "legacy={legacy}: {:?}", s.sources);
        let want = if legacy {
            "vllm:gpu_cache_usage_perc"
        } else {
            "vllm:kv_cache_usage_perc"
        };
        assert_eq!(s.sources[&Concept::KvCacheUsage], want);
        assert!(
            s.value(Concept::KvCacheCapacity, &model, "0")
                .unwrap_or(0.0)
                > 0.0
        );
        token.cancel();
        let _ = sim.await;
    }
}
