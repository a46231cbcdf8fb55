//! The exporter's HTTP server as the daemon runs it (`daemon::serve_on` on 127.0.0.1:0, no
//! targets, no GPU): the lifecycle gate of `POST /-/reload`, connection limits and timeouts, and
//! `/metrics` through the shutdown grace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vllm_sentinel::config::Config;
use vllm_sentinel::daemon;
use vllm_sentinel::runtime::Reloader;

struct Daemon {
    addr: SocketAddr,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(cfg_text: &str, reloader: Option<Reloader>) -> Daemon {
    let mut cfg: Config = vllm_sentinel::config::from_toml(cfg_text).unwrap();
    cfg.gpu.enabled = false;
    // No final scrape window: these tests do not scrape after stopping.
    cfg.server.shutdown_linger = Duration::ZERO;
    vllm_sentinel::config::validate(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon::serve_on(listener, cfg, token.clone(), reloader));
    Daemon { addr, token, task }
}

impl Daemon {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("daemon did not stop")
            .unwrap()
            .unwrap();
    }
}

fn counting_reloader() -> (Reloader, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let r: Reloader = Arc::new(move || {
        n2.fetch_add(1, Ordering::SeqCst);
        let mut c = Config::default();
        c.gpu.enabled = false;
        Ok(c)
    });
    (r, n)
}

#[tokio::test]
async fn reload_over_http_is_refused_unless_lifecycle_is_enabled() {
    let (r, calls) = counting_reloader();
    let d = start("", Some(r)).await;
    let resp = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body = resp.text().await.unwrap();
    assert!(body.contains("--web.enable-lifecycle"), "{body}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a refused POST must not reload"
    );
    d.stop().await;

    let (r, calls) = counting_reloader();
    let d = start("[server]\nenable_lifecycle = true\n", Some(r)).await;
    let resp = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The reloaded configuration (the default) turns the lifecycle endpoint off again.
    let resp = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    d.stop().await;
}

/// A reload whose file now holds an out-of-bounds token count answers 400 with the reason, and
/// the running configuration is kept (the reloader is never asked to apply it).
#[tokio::test]
async fn a_reload_with_a_huge_prompt_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nenable_lifecycle = true\n[gpu]\nenabled = false\n",
    )
    .unwrap();
    let args = vllm_sentinel::cli::ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let global = vllm_sentinel::cli::GlobalArgs {
        log_level: None,
        log_format: vllm_sentinel::cli::LogFormat::Text,
    };
    let cfg = vllm_sentinel::cli::load_config(&global, &args).unwrap();
    let reloader: Reloader = Arc::new(move || vllm_sentinel::cli::load_config(&global, &args));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon::serve_on(
        listener,
        cfg,
        token.clone(),
        Some(reloader),
    ));
    let d = Daemon { addr, token, task };
    std::fs::write(
        &path,
        "[server]\nenable_lifecycle = true\n[gpu]\nenabled = false\n[[targets]]\nurl = \"http://127.0.0.1:9\"\n[[targets.workloads]]\nprompt_tokens = 4294967295\n",
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("prompt_tokens") && body.contains("at most 10000000"),
        "{body}"
    );
    // Still the old configuration: no target on the landing page.
    let page = reqwest::get(d.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("no targets configured"), "{page}");
    d.stop().await;
}

/// Reads until the server closes the connection; true on EOF or a reset (the server hung up),
/// false if the server sent bytes instead. The 30 s bound only stops a broken server from
/// hanging the test; the close is the event waited for.
async fn closed_by_server(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
        Err(_) => panic!("the server kept the connection open for 30 s"),
        Ok(Ok(0)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(Ok(_)) => false,
    }
}

/// One `GET path` on `s` (kept alive); returns the status line and whether a body followed.
async fn get_on(s: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("no response in 30 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if got.len() >= end + 4 + len {
                return head.lines().next().unwrap_or("").to_string();
            }
        }
    }
}

/// A connection that never sends a byte is closed after `server.idle_timeout`.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let d = start(
        "[server]\nidle_timeout = \"200ms\"\nheader_read_timeout = \"1h\"\n",
        None,
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    assert!(closed_by_server(&mut s).await);
    // A keep-alive connection that served a request and then went quiet is closed too.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/healthz").await, "HTTP/1.1 200 OK");
    assert!(closed_by_server(&mut s).await);
    d.stop().await;
}

/// A client that starts a request head and never finishes it (slowloris) is disconnected after
/// `server.header_read_timeout`, although the idle timeout is an hour.
#[tokio::test]
async fn a_trickled_request_head_is_cut_at_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let d = start(
        "[server]\nidle_timeout = \"1h\"\nheader_read_timeout = \"200ms\"\n",
        None,
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut s).await);
    d.stop().await;
}

/// With `max_connections` idle keep-alive connections open (and timeouts of an hour, so none
/// ends by itself), a new scrape is still served: the longest-idle connection is closed to make
/// room for it, and the others stay open.
#[tokio::test]
async fn a_scrape_is_served_with_every_slot_held_by_idle_connections() {
    const N: usize = 4;
    let d = start(
        "[server]\nmax_connections = 4\nidle_timeout = \"1h\"\nheader_read_timeout = \"1h\"\n",
        None,
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..N {
        let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        // A served request proves the server accepted it and holds a slot for it.
        assert_eq!(get_on(&mut s, "/healthz").await, "HTTP/1.1 200 OK");
        idle.push(s);
    }
    let body = reqwest::Client::new()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status().as_u16(), 200);
    let text = body.text().await.unwrap();
    assert!(text.contains("vllm_sentinel_build_info"), "{text}");
    // The first (longest idle) connection was the one closed.
    assert!(closed_by_server(&mut idle[0]).await);
    // The others still serve requests.
    for s in &mut idle[1..] {
        assert_eq!(get_on(s, "/healthz").await, "HTTP/1.1 200 OK");
    }
    d.stop().await;
}

/// `/api/v1/status` (docs/status-api.md) from a running daemon, and the page and assets it is
/// drawn with.
#[tokio::test]
async fn status_api_and_page() {
    let d = start(
        "[server]\nstatus_interval = \"100ms\"\n[[targets]]\nurl = \"http://127.0.0.1:9\"\nname = \"gone\"\n",
        None,
    )
    .await;
    // Poll until the history holds a few samples (one each 100 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let doc = loop {
        let resp = reqwest::get(d.url("/api/v1/status")).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: serde_json::Value = resp.json().await.unwrap();
        if v["seq"].as_u64().unwrap_or(0) >= 3 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no samples: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["capacity"], 360);
    assert_eq!(doc["interval_seconds"], 0.1);
    let n = doc["timestamps"].as_array().unwrap().len();
    assert!(n >= 3, "{doc}");
    assert_eq!(doc["sample_timestamp"], doc["timestamps"][n - 1]);
    // Every series is aligned with the timestamps.
    let rss = doc["prober"]["series"]["resident_memory_bytes"]
        .as_array()
        .unwrap();
    assert_eq!(rss.len(), n);
    assert!(
        doc["prober"]["latest"]["resident_memory_bytes"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(doc["gpu"]["state"], "disabled");
    assert_eq!(doc["tap"]["enabled"], false);
    // The unreachable target (nothing listens on port 9) is listed with the time it went away.
    let t = &doc["targets"][0];
    assert_eq!(t["name"], "gone");
    assert_eq!(t["latest"]["discovered"], 0.0);
    assert!(t["unreachable_since"].as_f64().unwrap() > 1.0e9, "{t}");

    let page = reqwest::get(d.url("/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    for link in [
        "href=\"metrics\"",
        "href=\"healthz\"",
        "href=\"readyz\"",
        "src=\"status.js\"",
    ] {
        assert!(html.contains(link), "{link} missing: {html}");
    }
    assert!(html.contains("gone"));
    for (path, ct) in [
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
    ] {
        let r = reqwest::get(d.url(path)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ct)
        );
    }
    d.stop().await;
}
