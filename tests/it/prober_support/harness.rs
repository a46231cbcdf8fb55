//! A prober as the daemon runs it, on its own registry, with the configuration channel kept so a
//! test can reload it; shared by the daemon and simulator tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vllm_sentinel::config::Config;
use vllm_sentinel::exporter::{Readiness, StatusBoard, encode};
use vllm_sentinel::prober::Prober;
use vllm_sentinel::runtime::RunContext;

pub struct Harness {
    pub reg: Registry,
    /// Sends a new configuration (a reload).
    pub tx: watch::Sender<Arc<Config>>,
    pub ctx: RunContext,
}

/// Parses and validates `text`, naming it in the panic when it is wrong.
pub fn parse_config(text: &str) -> Config {
    let cfg = vllm_sentinel::config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    vllm_sentinel::config::validate(&cfg).unwrap();
    cfg
}

/// Starts a prober on `cfg`.
pub fn start_prober(cfg: Config) -> Harness {
    let mut reg = Registry::default();
    let prober = Prober::new(&cfg, &mut reg).unwrap();
    let (tx, rx) = watch::channel(Arc::new(cfg));
    let ctx = RunContext {
        tracker: TaskTracker::new(),
        token: CancellationToken::new(),
        abort: CancellationToken::new(),
        config: rx,
        readiness: Readiness::default(),
        status: StatusBoard::default(),
    };
    prober.spawn(&ctx);
    Harness { reg, tx, ctx }
}

impl Harness {
    pub fn text(&self) -> String {
        encode(&self.reg, None).unwrap().0
    }

    /// Waits (up to 30 s) until `cond` holds on the exposition; returns it.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text();
            if cond(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{t}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts the prober down with no grace (in-flight requests are cancelled at once) and returns
    /// the last exposition.
    pub async fn shutdown(self) -> String {
        self.ctx.token.cancel();
        self.ctx.abort.cancel();
        self.ctx.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.ctx.tracker.wait())
            .await
            .expect("prober tasks did not stop");
        encode(&self.reg, None).unwrap().0
    }
}
