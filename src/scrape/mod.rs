//! Scraping the server's own `/metrics`: KV-cache usage, queue depth, token counters and the
//! server's latency histograms, normalised across vLLM versions and serving engines.
//!
//! | submodule | concern |
//! |---|---|
//! | [`expfmt`] | our parser for the Prometheus text format 0.0.4 and OpenMetrics 1.0 |
//! | [`normalize`] | the alias table (concept → upstream names per engine/version) and aggregation |
//! | [`passthrough`] | re-export of every upstream family under its own name (opt-in) |
//! | [`scraper`] | one target's fetch → parse → normalise → view |
//! | [`once`] | one fetch → parse → normalise outside the loops (the one-shot experiments) |
//! | [`export`] | immutable per-target views and the `Collector`s that encode them |
//!
//! Each target runs its own loop; each scrape builds a complete [`export::TargetView`] and
//! swaps it in, so `/metrics` never shows half of one scrape and half of another. A failed
//! scrape publishes a view with `up` 0 and no server series. Targets never share state, so one
//! misbehaving server disturbs nothing else.

pub mod expfmt;
pub mod export;
pub mod normalize;
pub mod once;
pub mod passthrough;
pub mod scraper;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub use crate::config::scrape::{ScrapeConfig, TargetScrapeConfig};
use export::{Board, PassthroughCollector, ScrapeCollector, TargetView};
use scraper::{TargetRun, TargetScraper};

/// The scrape loops' settings for every enabled target of a configuration.
pub fn target_runs(cfg: &Config) -> Vec<TargetRun> {
    cfg.targets
        .iter()
        .filter(|t| t.scrape.enabled)
        .map(|t| {
            let base = t.base_url();
            TargetRun {
                label: t.label(),
                metrics_url: t
                    .scrape
                    .metrics_url
                    .clone()
                    .unwrap_or_else(|| format!("{base}/metrics")),
                version_url: Some(
                    t.scrape
                        .version_url
                        .clone()
                        .unwrap_or_else(|| format!("{base}/version")),
                ),
                auth_header_env: t.scrape.auth_header_env.clone(),
                // `user:password@` in the target URL: HTTP Basic (auth_header_env wins).
                basic_auth: t.url_credentials().map(|(u, p)| {
                    crate::config::Secret::new(crate::config::basic_authorization(&u, &p))
                }),
                model: t.model.clone(),
                interval: cfg.scrape.interval,
                timeout: cfg.scrape.effective_timeout(),
                max_body_bytes: cfg.scrape.max_body_bytes,
                passthrough: cfg.scrape.passthrough,
                passthrough_max_series: cfg.scrape.passthrough_max_series,
            }
        })
        .collect()
}

/// Builds the HTTP client the scrape loops share (gzip accepted; reqwest decodes it).
///
/// No proxy: `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` in the environment are ignored (a sidecar
/// talks to its server directly; a proxy would also see the `Authorization` header). Redirects
/// are followed only within the same origin (scheme, host, port), at most 5; a redirect to
/// another origin is not followed and the scrape fails with `http_status`, so credentials are
/// never sent elsewhere.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("vllm-sentinel/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(2)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::custom(same_origin_redirects))
        .build()
        .map_err(|e| anyhow::anyhow!("building the scrape HTTP client: {e}"))
}

fn same_origin_redirects(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let from = attempt.previous().last();
    let same = from.is_some_and(|f| f.origin() == attempt.url().origin());
    if !same {
        attempt.stop()
    } else if attempt.previous().len() > 5 {
        attempt.error("more than 5 redirects")
    } else {
        attempt.follow()
    }
}

/// One finished scrape, announced to [`Scraper::subscribe`]rs (tests, diagnostics).
#[derive(Debug, Clone)]
pub struct ScrapeEvent {
    pub target: String,
    pub view: Arc<TargetView>,
    pub error: Option<String>,
}

/// The scraper's registered families and configuration, before its tasks start.
#[derive(Debug)]
pub struct Scraper {
    board: Arc<Board>,
    events: broadcast::Sender<ScrapeEvent>,
    initial: Vec<TargetRun>,
}

impl Scraper {
    /// Registers the scrape collectors (health, normalised, join, and pass-through on the
    /// unprefixed root registry).
    pub fn new(
        cfg: &crate::config::Config,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        let board = Arc::new(Board::default());
        registry.register_collector(Box::new(ScrapeCollector {
            board: board.clone(),
        }));
        registry.register_collector(Box::new(PassthroughCollector {
            board: board.clone(),
        }));
        let (events, _) = broadcast::channel(256);
        Ok(Self {
            board,
            events,
            initial: target_runs(cfg),
        })
    }

    /// The published views (for tests and the landing page).
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Every finished scrape, in order per target.
    pub fn subscribe(&self) -> broadcast::Receiver<ScrapeEvent> {
        self.events.subscribe()
    }

    /// Starts one loop per target and a supervisor that follows configuration reloads.
    pub fn spawn(self, ctx: &crate::runtime::RunContext) {
        let slot = ctx.readiness.register("scrape");
        let pending: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::new(Mutex::new(
            self.initial.iter().map(|r| r.label.clone()).collect(),
        ));
        if self.initial.is_empty() {
            slot.mark_ready();
        }
        let client = match http_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "scraping disabled");
                slot.mark_ready();
                return;
            }
        };
        let shared = Loops {
            board: self.board.clone(),
            events: self.events.clone(),
            status: ctx.status.clone(),
            tracker: ctx.tracker.clone(),
            client,
            pending,
            slot,
        };
        let mut running: BTreeMap<String, (TargetRun, CancellationToken)> = BTreeMap::new();
        for run in self.initial {
            let tok = ctx.token.child_token();
            shared.start(run.clone(), tok.clone());
            running.insert(run.label.clone(), (run, tok));
        }
        let mut rx = ctx.config.clone();
        let token = ctx.token.clone();
        ctx.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    changed = rx.changed() => {
                        if changed.is_err() { return; }
                        let cfg = rx.borrow_and_update().clone();
                        let want: BTreeMap<String, TargetRun> =
                            target_runs(&cfg).into_iter().map(|r| (r.label.clone(), r)).collect();
                        // Stop loops whose target left or changed.
                        let stale: Vec<String> = running
                            .iter()
                            .filter(|(l, (r, _))| want.get(*l) != Some(r))
                            .map(|(l, _)| l.clone())
                            .collect();
                        for l in stale {
                            if let Some((_, tok)) = running.remove(&l) {
                                tok.cancel();
                            }
                            if !want.contains_key(&l) {
                                shared.board.remove(&l);
                            }
                        }
                        for (l, r) in want {
                            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(l) {
                                let tok = token.child_token();
                                shared.start(r.clone(), tok.clone());
                                slot.insert((r, tok));
                            }
                        }
                    }
                }
            }
        });
    }
}

/// What the scrape loops share.
#[derive(Clone)]
struct Loops {
    board: Arc<Board>,
    events: broadcast::Sender<ScrapeEvent>,
    status: crate::runtime::StatusBoard,
    tracker: tokio_util::task::TaskTracker,
    client: reqwest::Client,
    pending: Arc<Mutex<std::collections::BTreeSet<String>>>,
    slot: crate::runtime::ReadySlot,
}

impl Loops {
    fn start(&self, run: TargetRun, token: CancellationToken) {
        let me = self.clone();
        self.tracker.spawn(async move {
            let label = run.label.clone();
            let interval = run.interval;
            let mut ts = TargetScraper::new(run, me.client.clone());
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let view = tokio::select! {
                    _ = token.cancelled() => return,
                    v = ts.scrape() => Arc::new(v),
                };
                if !me.board.publish_unless_cancelled(view.clone(), &token) {
                    return;
                }
                let up = view.health.up;
                let err = ts.last_error.clone();
                me.status.update(&label, |s| {
                    s.up = Some(up);
                    s.last_error = err.clone();
                });
                if let Ok(mut p) = me.pending.lock()
                    && p.remove(&label)
                    && p.is_empty()
                {
                    me.slot.mark_ready();
                }
                // Announced last, so a listener sees status and readiness already updated.
                let _ = me.events.send(ScrapeEvent {
                    target: label.clone(),
                    view,
                    error: err,
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::scrape::{validate, validate_target};
    use std::time::Duration;

    #[test]
    fn config_defaults_and_validation() {
        let c = ScrapeConfig::default();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.effective_timeout(), Duration::from_secs(5));
        let mut errors = Vec::new();
        validate(&c, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let bad = ScrapeConfig {
            interval: Duration::from_millis(10),
            timeout: Some(Duration::from_secs(20)),
            max_body_bytes: 10,
            passthrough: true,
            passthrough_max_series: 0,
        };
        validate(&bad, &mut errors);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.iter().all(|e| e.starts_with("scrape.")));
        let cfg = crate::config::from_toml(
            "[scrape]\ninterval = \"2s\"\npassthrough = true\n[[targets]]\nurl = \"http://127.0.0.1:8000\"\n[targets.scrape]\nmetrics_url = \"ftp://x\"\nauth_header_env = \"VLLM_SENTINEL_TEST_SURELY_UNSET\"\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        validate_target("targets[0]", &cfg.targets[0], &mut errors);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("targets[0].scrape.metrics_url:")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("targets[0].scrape.auth_header_env:")
                    && e.contains("not set")),
            "{errors:?}"
        );
        assert!(crate::config::from_toml("[scrape]\nbogus = 1\n").is_err());
        let t = crate::config::from_toml(
            "[scrape]\ninterval = \"3s\"\ntimeout = \"1500ms\"\nmax_body_bytes = 2048\npassthrough_max_series = 5\n",
        )
        .unwrap();
        assert_eq!(t.scrape.effective_timeout(), Duration::from_millis(1500));
        assert_eq!(t.scrape.max_body_bytes, 2048);
        let t = crate::config::from_toml(
            "[[targets]]\nurl = \"http://h:1/\"\n[targets.scrape]\nenabled = false\n",
        )
        .unwrap();
        assert!(target_runs(&t).is_empty());
        let runs = target_runs(&cfg);
        assert_eq!(runs[0].metrics_url, "ftp://x");
        assert_eq!(
            runs[0].version_url.as_deref(),
            Some("http://127.0.0.1:8000/version")
        );
        assert_eq!(runs[0].interval, Duration::from_secs(2));
        assert!(runs[0].passthrough);
    }

    #[test]
    fn url_credentials_become_basic_auth_and_leave_the_urls() {
        let cfg = crate::config::from_toml(
            "[[targets]]\nurl = \"http://admin:S3CRETPASS@127.0.0.1:8000/\"\n",
        )
        .unwrap();
        let runs = target_runs(&cfg);
        assert_eq!(runs[0].label, "127.0.0.1:8000");
        assert_eq!(runs[0].metrics_url, "http://127.0.0.1:8000/metrics");
        assert_eq!(
            runs[0].version_url.as_deref(),
            Some("http://127.0.0.1:8000/version")
        );
        assert_eq!(
            runs[0].basic_auth.as_ref().map(|s| s.expose()),
            Some("Basic YWRtaW46UzNDUkVUUEFTUw==")
        );
        assert!(!format!("{:?}", runs[0]).contains("YWRt"));
    }

    /// A loopback server answering every request on its connection with `reply(path)`;
    /// returns its address and a hit counter.
    async fn serve_raw(
        reply: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, reply) = (hits.clone(), Arc::new(reply));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (h, reply) = (h.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&buf).to_string();
                        let end = head.find("\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if s.write_all(reply(&path).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, hits)
    }

    fn redirect_to(location: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
    }

    #[tokio::test]
    async fn redirects_are_followed_within_the_origin_only() {
        let body = "x 1\n";
        let (other, other_hits) = serve_raw(move |_| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let (addr, _) = serve_raw(move |path| match path {
            "/same" => redirect_to("/metrics-here"),
            "/metrics-here" => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            _ => redirect_to(&format!("http://{other}/metrics")),
        })
        .await;
        let client = http_client().unwrap();
        let t = Duration::from_secs(5);
        let ok = scraper::fetch(
            &client,
            &format!("http://{addr}/same"),
            None,
            t,
            1 << 20,
            true,
        )
        .await
        .unwrap();
        assert_eq!(ok.body, body.as_bytes());
        let err = scraper::fetch(
            &client,
            &format!("http://{addr}/metrics"),
            None,
            t,
            1 << 20,
            true,
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason, export::FailReason::HttpStatus, "{err:?}");
        assert!(err.message.contains("302"), "{}", err.message);
        assert_eq!(
            other_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the cross-origin redirect was followed"
        );
    }
}
