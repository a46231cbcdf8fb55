//! The tap: a streaming reverse proxy in front of the target that measures users' real traffic.
//!
//! # Why a proxy, and why this one
//! The prober measures what a synthetic user would feel; the tap measures what the real users
//! feel, on their own requests, with the same definitions (TTFT, ITL, TPOT, E2E, the same
//! outcome classes, from the same code: [`crate::prober::request::StreamState`],
//! [`crate::prober::request::Outcome::from_status`], [`crate::prober::sse`],
//! [`crate::prober::event`]). Deployed by pointing the Service at the tap's port; the sidecar
//! forwards to vLLM on loopback (docs/tap.md).
//!
//! A measuring proxy must not change what it measures, and proxies commonly do: buffering
//! turns a token stream into clumps (TTFT up, ITL down), idle timeouts cut long prefills, header
//! rewriting breaks clients. So:
//! * **No buffering, no coalescing delay.** Each upstream body frame is returned from
//!   [`proxy::TapBody::poll_frame`] as soon as it is read; hyper's server copies it into its
//!   write buffer and writes that as soon as the upstream has nothing more already read (frames
//!   that came in one read go out in one write; none is held back for a later one). A slow
//!   client stalls the upstream reads once that buffer holds [`MAX_CLIENT_BUF`] (backpressure
//!   down to vLLM's socket), never an unbounded queue in the tap. `TCP_NODELAY` is set on both legs (Nagle plus
//!   delayed ACK would add ~40 ms to small SSE writes).
//! * **Nothing changed on the way through**: method, path, query, headers (minus the hop-by-hop
//!   ones, RFC 9110 §7.6.1, including those `Connection` names; header-name case preserved),
//!   body bytes, status, trailers. No `Via`, no `X-Forwarded-*` (the tap is transparent: a `Via`
//!   would be a change vLLM and clients can see; RFC 9110 §7.6.3's MUST is knowingly not
//!   followed). No `Date` is added. `stream_options` is never injected: a stream without `usage`
//!   is measured by counting content-bearing events and flagged as an estimate.
//! * **Measure while streaming.** The request body is forwarded as it arrives; at most
//!   `tap.max_body_bytes` of it are copied aside on the way, to read `model`/`stream` when the
//!   request ends ([`measure`]). The response is measured frame by frame, in the order it is
//!   forwarded.
//! * **Client disconnect → upstream disconnect.** Dropping the response body (hyper does when the
//!   client goes away) drops the upstream body at once, which closes that upstream connection; no
//!   task keeps reading. vLLM then aborts the request. Counted as `client_disconnected`, which
//!   only a proxy can see (vLLM 0.32 does not count aborts).
//! * **Never retry; fail in OpenAI's error shape**: refused/reset upstream → 502, connect or
//!   response-header timeout → 504. Not even on a pooled connection: one is taken from the pool
//!   only when, polled at that moment, it is still open and ready for a request.
//! * **Upgrades are refused** with a 501 JSON body (WebSocket, `Upgrade: h2c`, CONNECT): vLLM's
//!   only WebSocket route is realtime transcription, which the tap does not measure, and a
//!   tunnel would bypass every rule above.
//!
//! Built directly on hyper 1 and hyper-util rather than a proxy crate (see
//! shared/reference/streaming-proxy.md): the server is hyper-util's auto builder (HTTP/1.1 with
//! keep-alive, and HTTP/2 with prior knowledge, h2c, sniffed from the preface, at no extra cost;
//! `Upgrade: h2c` is refused like any upgrade), with a header-read timeout; upstream, each
//! response drives its own HTTP/1.1 connection (uvicorn's only protocol; hyper's
//! `client::conn::http1` and the tap's pool, [`upstream`]), idle for 4 s at most, under
//! uvicorn's keep-alive (5 s), so a pooled socket is never reused as uvicorn closes it. Plain
//! `http://` upstreams only (the sidecar talks to vLLM on loopback). The tap runs on threads of
//! its own ([`start`]).
//!
//! Submodules: [`proxy`] (forwarding, the body wrappers, bookkeeping), [`measure`] (the
//! per-request measurement), [`metrics`] (the `vllm_sentinel_traffic_*` families), [`models`]
//! (the `model` label's bound: the upstream's `/v1/models`).

/// The most a client connection's write buffer holds before the tap stops reading the
/// upstream for it (a client that reads slowly), and the largest request head the tap reads
/// (a larger one is answered 431). 64 KiB: Envoy's default head limit is 60 KiB, nginx's 32 KiB.
pub const MAX_CLIENT_BUF: usize = 64 * 1024;

pub mod measure;
pub mod metrics;
pub mod models;
pub mod proxy;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::tap::{DEFAULT_TAP_LISTEN, TapConfig};
use crate::config::{Config, TargetConfig};
pub use metrics::{TrafficMetrics, TrafficOutcome};
pub use models::ModelSet;
use proxy::Shared;

use upstream::POOL_IDLE;
/// Idle upstream connections kept for users' requests.
const MAX_IDLE_UPSTREAM: usize = 1024;

/// `host:port` of an upstream base URL (port 80 when it names none).
fn authority(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap_or_default();
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The path prefix of an upstream base URL, without a trailing slash (`""` for none).
fn base_path(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap_or_default();
    uri.path().trim_end_matches('/').to_string()
}

/// The tap's registered families, before it starts.
#[derive(Debug, Clone)]
pub struct Tap {
    metrics: TrafficMetrics,
}

impl Tap {
    /// Registers the families (always, so the exported set does not depend on the config).
    pub fn new(cfg: &Config, registry: &mut prometheus_client::registry::Registry) -> Self {
        Self {
            metrics: TrafficMetrics::register(registry, &cfg.prober.buckets),
        }
    }

    /// The registered families (tests and embedding).
    pub fn metrics(&self) -> &TrafficMetrics {
        &self.metrics
    }

    /// Starts the tap on `listener` when `[tap]` is enabled (settings are read once: a reload
    /// does not change a running tap).
    pub fn spawn(self, listener: Option<TcpListener>, ctx: &crate::runtime::RunContext) {
        let cfg = ctx.config.borrow().clone();
        let (Some(listener), Some(up)) = (listener, cfg.tap.upstream(&cfg)) else {
            return;
        };
        let api_key = match up.api_key() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "tap: no API key for /v1/models; the model label stays `other` if the server needs one");
                None
            }
        };
        let settings = Settings::from_config(&cfg.tap, up, api_key);
        let token = ctx.token.clone();
        match start(listener, settings, self.metrics, ModelSet::default(), token) {
            Ok(ended) => {
                ctx.tracker.spawn(async move {
                    if let Err(e) = ended.await {
                        tracing::error!(error = %format!("{e:#}"), "tap stopped");
                    }
                });
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "tap not started"),
        }
    }
}

/// Binds the tap's listener when the tap is enabled.
pub async fn bind(cfg: &Config) -> anyhow::Result<Option<TcpListener>> {
    if !cfg.tap.enabled {
        return Ok(None);
    }
    let l = TcpListener::bind(cfg.tap.listen)
        .await
        .with_context(|| format!("tap: cannot listen on {}", cfg.tap.listen))?;
    Ok(Some(l))
}

/// Everything [`serve`] needs, as plain values.
#[derive(Clone)]
pub struct Settings {
    /// Upstream base URL (`http://host:port`), no trailing slash.
    pub upstream: String,
    /// The `target` label value.
    pub target: String,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub client_header_timeout: Duration,
    pub max_body_bytes: usize,
    /// Threads of the tap's own ([`start`]).
    pub threads: usize,
    /// How often to re-read the upstream's `/v1/models`; `None`: never (the [`ModelSet`] given
    /// to [`serve`] stays as it is — tests with a fixed list).
    pub models_refresh: Option<Duration>,
    /// Bearer token for the tap's own `/v1/models` reads; never logged.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("upstream", &self.upstream)
            .field("target", &self.target)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn from_config(t: &TapConfig, up: &TargetConfig, api_key: Option<String>) -> Self {
        Self {
            upstream: up.url.trim_end_matches('/').to_string(),
            target: up.label(),
            connect_timeout: t.connect_timeout,
            header_timeout: t.header_timeout,
            idle_timeout: t.idle_timeout,
            client_header_timeout: t.client_header_timeout,
            max_body_bytes: usize::try_from(t.max_body_bytes).unwrap_or(usize::MAX),
            threads: t.threads.max(1),
            models_refresh: Some(t.models_refresh),
            api_key,
        }
    }

    /// Defaults of `[tap]` for an upstream URL (tests).
    pub fn for_upstream(url: &str) -> Self {
        Self::from_config(&TapConfig::default(), &TargetConfig::from_url(url), None)
    }
}

/// Runs the tap on `settings.threads` threads of its own, each with a single-threaded runtime,
/// off the daemon's runtime; returns a future that ends with [`serve`] (when `token` is
/// cancelled and the in-flight requests have finished).
///
/// Why threads of its own, and single-threaded runtimes (measured, BENCHMARKS.md, "Tap
/// overhead"): a busy tap wakes up to ~1,000 connection tasks per poll of the I/O driver. On
/// the daemon's work-stealing runtime a worker's local queue holds 256 of them; the rest go to
/// the global queue and run after tasks woken later, which stretched the added delay's tail at
/// 1,000 streams to several times nginx's. A single-threaded runtime runs woken tasks in the
/// order they were woken, as nginx's event loop does, with no cross-thread synchronisation; its
/// own threads also keep a busy tap from delaying the prober's timers, and the prober's work
/// from delaying users' streams. Like nginx's `worker_processes`, one thread is the default;
/// with more, the first accepts and hands each connection to the next thread in turn, and each
/// thread keeps its own upstream connection pool.
pub fn start(
    listener: TcpListener,
    settings: Settings,
    metrics: TrafficMetrics,
    models: ModelSet,
    token: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    let listener = listener
        .into_std()
        .context("tap: taking the listener off the daemon's runtime")?;
    // The other threads run until `done` is cancelled: by the first thread once its `serve` has
    // returned, or by the guard's drop here when a thread fails to start.
    let done = CancellationToken::new();
    let done_guard = done.clone().drop_guard();
    let mut others = Vec::new();
    for i in 1..settings.threads.max(1) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let done = done.clone();
        std::thread::Builder::new()
            .name(format!("tap-{i}"))
            .spawn(move || match tap_runtime() {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(done.cancelled());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .context("tap: starting a thread")?;
        let handle = rx
            .recv()
            .context("tap: a thread ended before its runtime started")??;
        others.push(handle);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tap-0".into())
        .spawn(move || {
            let ended = tap_runtime().and_then(|rt| {
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).context("tap: registering the listener")?;
                    serve_on(listener, settings, metrics, models, token, others).await
                })
            });
            drop(done_guard);
            let _ = tx.send(ended);
        })
        .context("tap: starting a thread")?;
    Ok(async move {
        rx.await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the tap's thread ended without a result")))
    })
}

fn tap_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tap: starting a runtime")
}

/// Serves the tap on `listener` until `token` is cancelled, then stops accepting, lets
/// in-flight requests finish (idle keep-alive connections are closed at once) and returns.
/// `models` is kept current from the upstream's `/v1/models` every `models_refresh`. Runs on
/// the caller's runtime ([`start`] gives it threads of its own).
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    metrics: TrafficMetrics,
    models: ModelSet,
    token: CancellationToken,
) -> anyhow::Result<()> {
    serve_on(listener, settings, metrics, models, token, Vec::new()).await
}

/// [`serve`], handing connections in turn to this runtime and to `others`.
async fn serve_on(
    listener: TcpListener,
    settings: Settings,
    metrics: TrafficMetrics,
    models: ModelSet,
    token: CancellationToken,
    others: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .http1_preserve_header_case(true)
        .build(connector);
    // One `Shared` per runtime: an upstream connection is registered with the I/O driver of the
    // runtime that opened it, so each runtime keeps its own pool.
    let new_shared = || {
        Arc::new(Shared {
            client: client.clone(),
            base: settings.upstream.clone(),
            base_path: base_path(&settings.upstream),
            pool: upstream::Pool::new(
                authority(&settings.upstream),
                settings.connect_timeout,
                MAX_IDLE_UPSTREAM,
            ),
            target: settings.target.clone(),
            metrics: metrics.clone(),
            models: models.clone(),
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            max_body_bytes: settings.max_body_bytes,
        })
    };
    let shared = new_shared();
    let others: Vec<_> = others.into_iter().map(|h| (h, new_shared())).collect();
    let mut turn = 0usize;
    let refresher = settings.models_refresh.map(|every| {
        tokio::spawn(refresh_models(
            shared.clone(),
            settings.api_key.clone(),
            every,
            token.clone(),
        ))
    });

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.client_header_timeout)
        .keep_alive(true)
        .preserve_header_case(true)
        // Each frame is copied into one write buffer rather than queued as a slice of the
        // upstream's read buffer, which frees that buffer before the next read: no 8 KiB
        // allocation per streamed token (BENCHMARKS.md, "Tap overhead", sixth pass).
        .writev(false)
        // That buffer holds at most this much for a client that reads slowly before the tap
        // stops reading the upstream; it is also the largest request head (431 above it).
        .max_buf_size(MAX_CLIENT_BUF)
        .auto_date_header(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .auto_date_header(false);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    if let Ok(a) = listener.local_addr() {
        tracing::info!(listen = %a, upstream = %settings.upstream, "tap listening");
    }
    loop {
        let (stream, _peer) = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "tap: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        turn = (turn + 1) % (others.len() + 1);
        match turn.checked_sub(1).and_then(|i| others.get(i)) {
            None => {
                tokio::spawn(serve_connection(
                    stream,
                    shared.clone(),
                    builder.clone(),
                    watcher,
                ));
            }
            Some((rt, sh)) => {
                // Moved to the other runtime's I/O driver there.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "tap: cannot hand a connection on");
                        continue;
                    }
                };
                let (sh, b) = (sh.clone(), builder.clone());
                rt.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(s) => serve_connection(s, sh, b, watcher).await,
                        Err(e) => tracing::debug!(error = %e, "tap: cannot take a connection"),
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    if let Some(r) = refresher {
        r.abort();
    }
    Ok(())
}

type ServerBuilder = hyper_util::server::conn::auto::Builder<TokioExecutor>;

/// Serves one client connection until it closes (or, on shutdown, until its in-flight requests
/// are done).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    sh: Arc<Shared>,
    builder: Arc<ServerBuilder>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let svc = hyper::service::service_fn(move |req| proxy::handle(sh.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "tap: connection ended with an error");
    }
}

/// Keeps `shared.models` current.
async fn refresh_models(
    shared: Arc<Shared>,
    api_key: Option<String>,
    every: Duration,
    token: CancellationToken,
) {
    let labels = metrics::TargetLabels {
        target: shared.target.clone(),
    };
    loop {
        match fetch_models(&shared, api_key.as_deref()).await {
            Ok(list) => {
                shared.models.replace(list);
                shared
                    .metrics
                    .models_known
                    .get_or_create(&labels)
                    .set(shared.models.len() as i64);
            }
            Err(e) => tracing::debug!(error = %e, "tap: cannot read the upstream's /v1/models"),
        }
        let wait = models::next_delay(every, !shared.models.is_empty());
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn fetch_models(
    shared: &Shared,
    api_key: Option<&str>,
) -> anyhow::Result<Vec<models::ModelInfo>> {
    let mut req = http::Request::get(format!("{}/v1/models", shared.base))
        .body(Either::Right(Empty::<Bytes>::new()))?;
    if let Some(k) = api_key {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {k}"))?,
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), shared.client.request(req))
        .await
        .context("timed out")??;
    if !resp.status().is_success() {
        anyhow::bail!("HTTP {}", resp.status());
    }
    let limited = http_body_util::Limited::new(resp.into_body(), 4 * 1024 * 1024);
    let body = tokio::time::timeout(Duration::from_secs(10), limited.collect())
        .await
        .context("timed out")?
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
    models::parse_models(&body).context("not a /v1/models list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_authority_and_path_prefix() {
        assert_eq!(authority("http://127.0.0.1:8000"), "127.0.0.1:8000");
        assert_eq!(authority("http://vllm"), "vllm:80");
        assert_eq!(authority("http://[::1]:8000/x"), "[::1]:8000");
        assert_eq!(base_path("http://127.0.0.1:8000"), "");
        assert_eq!(base_path("http://127.0.0.1:8000/"), "");
        assert_eq!(base_path("http://h:1/prefix/"), "/prefix");
    }
}
