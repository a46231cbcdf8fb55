//! The exporter's HTTP server as the daemon runs it (`daemon::serve_on` on 127.0.0.1:0, no
//! targets, no GPU): the lifecycle gate of `POST /-/reload`, connection limits and timeouts, and
//! `/metrics` through the shutdown grace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vllm_sentinel::config::Config;
use vllm_sentinel::daemon::{self, Reloader};

struct Daemon {
    addr: SocketAddr,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(cfg_text: &str, reloader: Option<Reloader>) -> Daemon {
    let mut cfg: Config = vllm_sentinel::config::from_toml(cfg_text).unwrap();
    cfg.gpu.enabled = false;
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
    let cfg = vllm_sentinel::config::load(&global, &args).unwrap();
    let reloader: Reloader = Arc::new(move || vllm_sentinel::config::load(&global, &args));
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
