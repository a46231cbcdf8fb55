//! Helpers shared by the `scrape_*` integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use vllm_sentinel::scrape::expfmt::Format;
use vllm_sentinel::scrape::export::{Board, PassthroughCollector, ScrapeCollector, TargetView};
use vllm_sentinel::scrape::scraper::{TargetRun, TargetScraper};

/// The real vLLM 0.32.0 captures: `$VLLM_SENTINEL_FIXTURES`, else `../shared/fixtures/...`
/// beside the checkout (where CI puts shared/).
pub fn fixture_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VLLM_SENTINEL_FIXTURES") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/vllm-0.32.0-cpu")
}

pub fn fixture(name: &str) -> String {
    let p = fixture_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Hand-written bodies under tests/data/scrape/.
pub fn data(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/scrape")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The value on the first line starting with `prefix` (counted independently of the parser:
/// plain string search).
pub fn raw_value(body: &str, prefix: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(prefix)).map(|l| {
        l[prefix.len()..]
            .trim()
            .split(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    })
}

/// Sample lines: neither blank nor comments.
pub fn count_samples(body: &str) -> usize {
    body.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

/// `# TYPE` lines.
pub fn count_types(body: &str) -> usize {
    body.lines().filter(|l| l.starts_with("# TYPE ")).count()
}

pub fn run(label: &str, url: &str) -> TargetRun {
    TargetRun {
        label: label.to_string(),
        metrics_url: format!("{url}/metrics"),
        version_url: None,
        auth_header_env: None,
        model: None,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        max_body_bytes: 16 << 20,
        passthrough: false,
        passthrough_max_series: 10_000,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Processes bodies in order through one target's state; returns the views.
pub fn process_all(run: TargetRun, bodies: &[&str]) -> Vec<TargetView> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut ts = TargetScraper::new(run, client());
    bodies
        .iter()
        .map(|b| rt.block_on(ts.process(b.as_bytes(), Format::Prometheus, Instant::now())))
        .collect()
}

/// A registry holding just the scrape collectors over `board`.
pub fn registry(board: &Arc<Board>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(ScrapeCollector {
        board: board.clone(),
    }));
    r.register_collector(Box::new(PassthroughCollector {
        board: board.clone(),
    }));
    r
}

/// Our `/metrics` for `views`, in 0.0.4 text.
pub fn exposition(views: &[TargetView]) -> String {
    let board = Arc::new(Board::default());
    for v in views {
        board.publish(Arc::new(v.clone()));
    }
    let r = registry(&board);
    vllm_sentinel::exporter::encode(&r, None).unwrap().0
}
