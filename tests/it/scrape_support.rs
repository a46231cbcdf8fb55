//! Helpers shared by the `scrape_*` integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use vllm_sentinel::scrape::expfmt::Format;
use vllm_sentinel::scrape::export::{Board, PassthroughCollector, ScrapeCollector, TargetView};
use vllm_sentinel::scrape::scraper::{TargetRun, TargetScraper};

/// The real vLLM 0.32.0 captures: `$VLLM_SENTINEL_FIXTURES`, else the repository's copy in
/// `tests/data/vllm-0.32.0-cpu/` (checked equal to `shared/fixtures/` by `fixtures_copy.rs`).
pub fn fixture_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VLLM_SENTINEL_FIXTURES") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vllm-0.32.0-cpu")
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
        basic_auth: None,
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

// ---------------------------------------------------------------------------------------------
// A scripted /metrics server on 127.0.0.1:0.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

/// One scripted answer.
#[derive(Clone)]
pub enum Answer {
    /// Status, content type (None: no header), body.
    Body(u16, Option<&'static str>, Vec<u8>),
    /// A gzip-encoded text/plain body.
    Gzip(Vec<u8>),
    /// Never answers.
    Hang,
    /// `n` bytes of sample lines, streamed in 1 MiB chunks, no Content-Length.
    Stream(usize),
    /// Declares a Content-Length of `n` bytes (and would stream them).
    Declared(usize),
    /// Sends `prefix`, then breaks the connection.
    Break(Vec<u8>),
}

#[derive(Default)]
pub struct Script {
    pub answers: Mutex<VecDeque<Answer>>,
    pub version: Mutex<Option<String>>,
    pub auth_seen: Mutex<Vec<Option<String>>>,
    pub hits: Mutex<u64>,
}

pub struct FixtureServer {
    pub url: String,
    pub script: Arc<Script>,
}

impl FixtureServer {
    pub async fn start() -> FixtureServer {
        let script = Arc::new(Script::default());
        let s1 = script.clone();
        let s2 = script.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move |h: HeaderMap| {
                    let s = s1.clone();
                    async move { metrics(s, h).await }
                }),
            )
            .route(
                "/version",
                axum::routing::get(move || {
                    let s = s2.clone();
                    async move {
                        match s.version.lock().unwrap().clone() {
                            Some(v) => Response::builder()
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Body::from(format!("{{\"version\":\"{v}\"}}")))
                                .unwrap(),
                            None => Response::builder()
                                .status(404)
                                .body(Body::from("not found"))
                                .unwrap(),
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FixtureServer {
            url: format!("http://{addr}"),
            script,
        }
    }

    /// Queues answers; the last one queued repeats.
    pub fn push(&self, a: Answer) {
        self.script.answers.lock().unwrap().push_back(a);
    }

    pub fn set_version(&self, v: Option<&str>) {
        *self.script.version.lock().unwrap() = v.map(str::to_string);
    }
}

fn sample_chunk(len: usize) -> bytes::Bytes {
    let line = b"filler_metric{a=\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"} 1\n";
    let mut v = Vec::with_capacity(len);
    while v.len() + line.len() <= len {
        v.extend_from_slice(line);
    }
    v.resize(len, b'\n');
    bytes::Bytes::from(v)
}

async fn metrics(s: Arc<Script>, h: HeaderMap) -> Response {
    *s.hits.lock().unwrap() += 1;
    s.auth_seen.lock().unwrap().push(
        h.get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    );
    let a = {
        let mut q = s.answers.lock().unwrap();
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front()
                .cloned()
                .unwrap_or(Answer::Body(404, None, vec![]))
        }
    };
    match a {
        Answer::Body(status, ct, body) => {
            let mut r = Response::builder().status(StatusCode::from_u16(status).unwrap());
            if let Some(ct) = ct {
                r = r.header(header::CONTENT_TYPE, ct);
            }
            r.body(Body::from(body)).unwrap()
        }
        Answer::Gzip(body) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(gzip_stored(&body)))
            .unwrap(),
        Answer::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Answer::Stream(n) => {
            let chunks = (0..n.div_ceil(1 << 20)).map(move |i| {
                let len = (n - i * (1 << 20)).min(1 << 20);
                Ok::<_, std::io::Error>(sample_chunk(len))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap()
        }
        Answer::Declared(n) => {
            let chunks = (0..n.div_ceil(1 << 20)).map(move |i| {
                let len = (n - i * (1 << 20)).min(1 << 20);
                Ok::<_, std::io::Error>(sample_chunk(len))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::CONTENT_LENGTH, n.to_string())
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap()
        }
        Answer::Break(prefix) => {
            let items: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                Ok(bytes::Bytes::from(prefix)),
                Err(std::io::Error::other("server went away")),
            ];
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from_stream(futures_util::stream::iter(items)))
                .unwrap()
        }
    }
}

/// gzip with stored (uncompressed) deflate blocks: enough to exercise decoding without a
/// compression crate.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
