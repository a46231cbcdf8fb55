//! The exporter's HTTP server (axum): `/metrics`, `/healthz`, `/readyz`, `/-/reload`, and the
//! live status page at `/` with its JSON at `/api/v1/status` (both from [`crate::status`]).
//!
//! `/metrics` answers in the Prometheus text format 0.0.4, or in OpenMetrics 1.0 when the
//! `Accept` header asks for `application/openmetrics-text`, always with the exact
//! `Content-Type` of the format written.

pub mod server;
pub mod web_config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::runtime::{Readiness, StatusBoard, TargetStatus};

/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics 1.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Asks the daemon to reload its config; returns a message for the caller.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct ExporterState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub status: StatusBoard,
    pub reload: Option<ReloadFn>,
    /// Whether `POST /-/reload` is allowed (`server.enable_lifecycle`); followed on reload.
    pub lifecycle: Arc<std::sync::atomic::AtomicBool>,
    /// The status page's history (`/`, `/api/v1/status`).
    pub history: crate::status::StatusHistory,
    /// What encoding `/metrics` costs ([`register_common`]).
    pub render_cost: RenderCost,
}

/// Binds the listen address, with a one-line error naming it when that fails.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow::anyhow!("cannot listen on {addr}: address already in use")
        }
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })
}

/// What encoding `/metrics` has cost this process: responses encoded and the CPU time of the
/// thread that encoded them (the encoding is one synchronous call, so the thread's CPU clock
/// around it measures it alone, on a busy machine as on a quiet one). Exported as
/// `vllm_sentinel_exporter_renders_total` and `vllm_sentinel_exporter_render_cpu_seconds_total`:
/// their ratio is the CPU per scrape, which the soak benchmark follows over an hour.
#[derive(Clone, Default, Debug)]
pub struct RenderCost {
    renders: prometheus_client::metrics::counter::Counter,
    cpu_seconds: prometheus_client::metrics::counter::Counter<f64>,
}

impl RenderCost {
    fn record(&self, cpu_ns: u64) {
        self.renders.inc();
        self.cpu_seconds.inc_by(cpu_ns as f64 / 1e9);
    }
}

/// Registers `vllm_sentinel_build_info`, the process collector and the render cost of
/// `/metrics`; returns the latter for the handler ([`ExporterState::render_cost`]).
pub fn register_common(registry: &mut Registry) -> RenderCost {
    let info = prometheus_client::metrics::info::Info::new(vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "revision",
            option_env!("VLLM_SENTINEL_GIT_REVISION")
                .unwrap_or("unknown")
                .to_string(),
        ),
    ]);
    registry.register(
        "vllm_sentinel_build",
        "vllm-sentinel build information",
        info,
    );
    registry.register_collector(Box::new(crate::process::ProcessCollector));
    let cost = RenderCost::default();
    registry.register(
        "vllm_sentinel_exporter_renders",
        "/metrics responses encoded",
        cost.renders.clone(),
    );
    registry.register(
        "vllm_sentinel_exporter_render_cpu_seconds",
        "CPU time spent encoding /metrics responses (the encoding thread's CPU clock)",
        cost.cpu_seconds.clone(),
    );
    cost
}

/// The router, separate from [`serve`] so tests can drive it without a socket.
pub fn router(state: ExporterState) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/status.js", get(status_js))
        .route("/status.css", get(status_css))
        .route("/api/v1/status", get(status_api))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .with_state(state)
}

/// Serves until `token` is cancelled, then stops accepting, closes idle connections and lets
/// open responses finish. Connection limits and timeouts: [`server`].
pub async fn serve(
    listener: TcpListener,
    state: ExporterState,
    limits: server::Limits,
    web: web_config::WebHandle,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let scheme = if web.get().tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, "exporter listening");
    server::serve_router(listener, router(state), limits, web, token)
        .await
        .context("exporter server failed")
}

/// Encodes the registry in the format `accept` asks for; returns the body and its content type.
pub fn encode(
    registry: &Registry,
    accept: Option<&str>,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut body = String::with_capacity(16 * 1024);
    if wants_openmetrics(accept) {
        prometheus_client::encoding::text::encode(&mut body, registry)?;
        Ok((body, OPENMETRICS_CONTENT_TYPE))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
        Ok((body, PROMETHEUS_CONTENT_TYPE))
    }
}

/// True when the `Accept` header prefers OpenMetrics (any `application/openmetrics-text` entry
/// whose `q` is not 0).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|part| {
        let mut it = part.split(';').map(str::trim);
        let media = it.next().unwrap_or("");
        let q_zero = it.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
        media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
    })
}

async fn metrics(State(state): State<ExporterState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let cpu0 = crate::clock::thread_cpu_ns();
    let encoded = encode(&state.registry, accept);
    state
        .render_cost
        .record(crate::clock::thread_cpu_ns().saturating_sub(cpu0));
    match encoded {
        Ok((body, ct)) => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static(ct))], body).into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<ExporterState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let pending = state.readiness.pending().join(", ");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {pending}\n"),
        )
            .into_response()
    }
}

async fn reload(State(state): State<ExporterState>) -> Response {
    if !state.lifecycle.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::FORBIDDEN,
            "POST /-/reload is disabled: start with --web.enable-lifecycle (or set server.enable_lifecycle = true) to allow it; SIGHUP reloads either way\n",
        )
            .into_response();
    }
    match &state.reload {
        None => (
            StatusCode::NOT_FOUND,
            "reload is not available in this mode\n",
        )
            .into_response(),
        Some(f) => match f() {
            Ok(msg) => (StatusCode::OK, format!("{msg}\n")).into_response(),
            Err(msg) => (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response(),
        },
    }
}

async fn landing(State(state): State<ExporterState>) -> Response {
    let poll_ms = crate::status::page::poll_ms(state.history.interval());
    let html = crate::status::page::render(&state.status, &state.readiness, poll_ms);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(crate::status::page::CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        html,
    )
        .into_response()
}

async fn status_js() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        crate::status::page::JS,
    )
        .into_response()
}

async fn status_css() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        )],
        crate::status::page::CSS,
    )
        .into_response()
}

async fn status_api(
    State(state): State<ExporterState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    match crate::status::api::StatusQuery::parse(query.as_deref()) {
        Ok(q) => (no_store, axum::Json(state.history.to_json_with(&q))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, no_store, axum::Json(e.to_json())).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0,text/plain"
        )));
        // What Prometheus 2.x/3.x sends by default.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
    }

    #[test]
    fn encode_both_formats_with_build_info() {
        let mut reg = Registry::default();
        register_common(&mut reg);
        let (text, ct) = encode(&reg, None).unwrap();
        assert_eq!(ct, PROMETHEUS_CONTENT_TYPE);
        assert!(text.contains("vllm_sentinel_build_info{"), "{text}");
        assert!(!text.contains("# EOF"));
        let (om, ct) = encode(&reg, Some("application/openmetrics-text")).unwrap();
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(om.trim_end().ends_with("# EOF"), "{om}");
    }

    /// Every `/metrics` response is counted, with the CPU time its encoding took; the counts
    /// show up in the next response.
    #[tokio::test]
    async fn metrics_handler_records_its_render_cost() {
        let mut reg = Registry::default();
        let render_cost = register_common(&mut reg);
        let status = StatusBoard::default();
        let state = ExporterState {
            registry: Arc::new(reg),
            readiness: Readiness::default(),
            status: status.clone(),
            reload: None,
            lifecycle: Arc::default(),
            history: crate::status::StatusHistory::new(
                status,
                std::time::Duration::from_secs(1),
                false,
                false,
            ),
            render_cost,
        };
        let body_of = |r: Response| async move {
            let b = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8(b.to_vec()).unwrap()
        };
        let first = body_of(metrics(State(state.clone()), HeaderMap::new()).await).await;
        assert!(
            first.contains("vllm_sentinel_exporter_renders_total 0\n"),
            "{first}"
        );
        let _ = metrics(State(state.clone()), HeaderMap::new()).await;
        let third = body_of(metrics(State(state.clone()), HeaderMap::new()).await).await;
        assert!(
            third.contains("vllm_sentinel_exporter_renders_total 2\n"),
            "{third}"
        );
        let cpu: f64 = third
            .lines()
            .find_map(|l| l.strip_prefix("vllm_sentinel_exporter_render_cpu_seconds_total "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        // Two encodings of a registry with the process collector (it reads /proc/self) cost
        // some CPU time, and far less than a second.
        assert!(cpu > 0.0 && cpu < 1.0, "{cpu}");
    }
}
