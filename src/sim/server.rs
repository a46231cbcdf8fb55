//! The simulator's HTTP side: routes, shared state, the engine driver task.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SimConfig;
use super::api::{self, ApiError, Kind, Reply};
use super::engine::{Engine, EngineRequest, Output};
use super::faults::{Faults, MetricsFault};
use super::metrics;
use super::stream::{self, Source, StreamState};
use super::tokenizer::{self, mix64};

/// The engine and the channels of the requests it runs.
pub(super) struct Core {
    pub engine: Engine,
    pub senders: HashMap<u64, mpsc::UnboundedSender<Output>>,
}

/// What every handler shares.
pub(super) struct Shared {
    pub cfg: SimConfig,
    pub core: Mutex<Core>,
    pub notify: Notify,
    pub faults: RwLock<Faults>,
    pub fault_seq: AtomicU64,
    pub next_id: AtomicU64,
    pub inflight: AtomicI64,
    pub http: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    pub created_unix: f64,
    pub created_secs: u64,
    pub fingerprint: String,
    pub send_log: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    pub token: CancellationToken,
}

impl Shared {
    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The context length in force: the fault override (never above the configured one).
    fn max_model_len(&self) -> u32 {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .max_model_len
            .map_or(self.cfg.max_model_len, |m| m.min(self.cfg.max_model_len))
    }

    /// Appends a line to the send log.
    pub fn log_send(&self, id: &str, index: u32, ns: u64) {
        if let Some(log) = &self.send_log {
            let mut w = log.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(w, "{id} {index} {ns}");
        }
    }
}

/// Counts an in-flight generation request for `/load` while alive.
pub(super) struct LoadGuard(Arc<Shared>);

impl LoadGuard {
    fn new(s: &Arc<Shared>) -> Self {
        s.inflight.fetch_add(1, Ordering::Relaxed);
        Self(s.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request inside the engine; dropping it aborts the request there (client gone).
pub(super) struct EngineHandle {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let mut core = self.shared.core();
        if core.senders.remove(&self.id).is_some() {
            core.engine.abort(self.id);
        }
    }
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let send_log = match &cfg.send_log {
        Some(p) => Some(Mutex::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p)
                .with_context(|| format!("cannot create send log {}", p.display()))?,
        ))),
        None => None,
    };
    let mut ecfg = cfg.engine.clone();
    ecfg.max_model_len = cfg.max_model_len;
    let created_unix = crate::clock::unix_seconds();
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            engine: Engine::new(ecfg),
            senders: HashMap::new(),
        }),
        notify: Notify::new(),
        faults: RwLock::new(cfg.faults.clone()),
        fault_seq: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        inflight: AtomicI64::new(0),
        http: Mutex::new(BTreeMap::new()),
        created_unix,
        created_secs: created_unix as u64,
        fingerprint: format!(
            "vllm-{}-{:08x}",
            cfg.version,
            mix64(cfg.seed ^ 0x5151) as u32
        ),
        send_log,
        token: token.clone(),
        cfg,
    });
    tracing::info!(%addr, "simulator listening");
    let driver = tokio::spawn(drive(shared.clone()));
    let app = router(shared.clone());
    // Small SSE writes must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(token.clone().cancelled_owned())
        .await
        .context("simulator server failed");
    token.cancel();
    let _ = driver.await;
    if let Some(log) = &shared.send_log {
        let mut w = log.lock().unwrap_or_else(|e| e.into_inner());
        w.flush().context("writing the send log")?;
    }
    res
}

/// The engine loop: plan a step, wait its duration, deliver its tokens.
async fn drive(shared: Arc<Shared>) {
    let mut out: Vec<Output> = Vec::new();
    // Steps follow an ideal timeline (each starts where the last one was due to end), so the
    // timer's millisecond granularity does not slow the engine down on average.
    let mut due = Instant::now();
    loop {
        let now = Instant::now();
        let start = if due + Duration::from_millis(5) < now {
            now
        } else {
            due.min(now)
        };
        let plan = shared.core().engine.schedule(crate::clock::monotonic_ns());
        if plan.is_empty() {
            tokio::select! {
                _ = shared.notify.notified() => {}
                _ = shared.token.cancelled() => return,
            }
            due = Instant::now();
            continue;
        }
        due = start + plan.duration;
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shared.token.cancelled() => return,
        }
        let mut core = shared.core();
        let Core { engine, senders } = &mut *core;
        engine.finish_step(&plan, crate::clock::monotonic_ns(), &mut out);
        for o in out.drain(..) {
            let gone = match senders.get(&o.id) {
                Some(tx) => tx.send(o).is_err(),
                None => true,
            };
            if o.finished.is_some() {
                senders.remove(&o.id);
            } else if gone {
                senders.remove(&o.id);
                engine.abort(o.id);
            }
        }
    }
}

/// The largest request body the simulator accepts. vLLM (FastAPI) sets no limit of its own, so a
/// long prompt as text or token ids (a 128k-token prompt is ~1 MiB of ids) must not meet axum's
/// 2 MiB default; 64 MiB bounds memory all the same.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/ping",
            get(|| async { StatusCode::OK }).post(|| async { StatusCode::OK }),
        )
        .route("/version", get(version))
        .route("/load", get(load))
        .route("/tokenize", post(tokenize))
        .route("/metrics", get(metrics_handler))
        .route("/sim/faults", get(get_faults).post(set_faults))
        .route_layer(middleware::from_fn_with_state(shared.clone(), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .with_state(shared)
}

/// FastAPI's 404 body.
async fn not_found() -> Response {
    let mut r = json_response(StatusCode::NOT_FOUND, "{\"detail\":\"Not Found\"}".into());
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

/// FastAPI's 405 body (axum adds the `allow` header).
async fn method_not_allowed() -> Response {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "{\"detail\":\"Method Not Allowed\"}".into(),
    );
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

/// Adds `vary: Origin` (as vLLM's CORS middleware does) and counts `http_requests_total`.
async fn track(State(st): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    // route_layer runs only for matched routes, all of them static paths.
    let handler = Some(req.uri().path().to_owned());
    let method = if req.method() == axum::http::Method::POST {
        "POST"
    } else {
        "GET"
    };
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(h) = handler
        && !matches!(
            h.as_str(),
            "/metrics" | "/health" | "/load" | "/ping" | "/version" | "/sim/faults"
        )
    {
        let class = match resp.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let mut m = st.http.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((h, method, class)).or_insert(0) += 1;
    }
    resp
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, self.body)
    }
}

async fn models(State(st): State<Arc<Shared>>) -> Response {
    let name = serde_json::to_string(&st.cfg.model).unwrap_or_default();
    let c = st.created_secs;
    let card = |id: &str, root: &str, parent: &str, max_len: &str, perm: u64| {
        format!(
            "{{\"id\":{id},\"object\":\"model\",\"created\":{c},\"owned_by\":\"vllm\",\"root\":{root},\"parent\":{parent},\"max_model_len\":{max_len},\"permission\":[{{\"id\":\"modelperm-{perm:016x}\",\"object\":\"model_permission\",\"created\":{c},\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,\"is_blocking\":false}}]}}"
        )
    };
    let mut cards = vec![card(
        &name,
        &name,
        "null",
        &st.max_model_len().to_string(),
        mix64(st.cfg.seed ^ 0x77),
    )];
    // vLLM lists a LoRA adapter with its path as root, the base model as parent and no
    // max_model_len of its own.
    for (i, a) in st.cfg.lora_modules.iter().enumerate() {
        let id = serde_json::to_string(a).unwrap_or_default();
        let root = serde_json::to_string(&format!("/adapters/{a}")).unwrap_or_default();
        cards.push(card(
            &id,
            &root,
            &name,
            "null",
            mix64(st.cfg.seed ^ 0x78 ^ i as u64),
        ));
    }
    let body = format!("{{\"object\":\"list\",\"data\":[{}]}}", cards.join(","));
    json_response(StatusCode::OK, body)
}

/// The LoRA adapter a request body names, if it names one of `adapters` (then it is served as
/// the model is). Reads the body only when adapters are configured.
fn requested_adapter<'a>(adapters: &'a [String], body: &[u8]) -> Option<&'a str> {
    if adapters.is_empty() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    let m = named.model?;
    adapters.iter().find(|a| **a == m).map(String::as_str)
}

async fn version(State(st): State<Arc<Shared>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::json!({ "version": st.cfg.version }).to_string(),
    )
}

async fn load(State(st): State<Arc<Shared>>) -> Response {
    let n = st.inflight.load(Ordering::Relaxed).max(0);
    json_response(StatusCode::OK, format!("{{\"server_load\":{n}}}"))
}

async fn tokenize(State(st): State<Arc<Shared>>, body: Bytes) -> Response {
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return ApiError::validation(
                "json_invalid",
                "body",
                "JSON decode error",
                "'<dict of 0 items>'",
                None,
            )
            .into_response();
        }
    };
    let mut ids = Vec::new();
    if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
        tokenizer::encode_prompt(p, usize::MAX, &mut ids);
    } else if let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) {
        let texts = msgs
            .iter()
            .map(|m| m.get("content").and_then(|c| c.as_str()).unwrap_or(""));
        tokenizer::encode_chat(texts, usize::MAX, &mut ids);
    } else {
        let n = v.as_object().map_or(0, |m| m.len());
        return ApiError::validation(
            "missing",
            "body.prompt",
            "Field required",
            &format!("'<dict of {n} items>'"),
            None,
        )
        .into_response();
    }
    let body = format!(
        "{{\"count\":{},\"max_model_len\":{},\"tokens\":{},\"token_strs\":null}}",
        ids.len(),
        st.max_model_len(),
        serde_json::to_string(&ids).unwrap_or_default()
    );
    json_response(StatusCode::OK, body)
}

async fn metrics_handler(State(st): State<Arc<Shared>>) -> Response {
    match st.faults().metrics {
        MetricsFault::Ok => {}
        MetricsFault::Error500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        MetricsFault::NotFound => {
            return json_response(StatusCode::NOT_FOUND, "{\"detail\":\"Not Found\"}".into());
        }
        MetricsFault::Garbled => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine=\"0\" 0.5\n\u{1}garbage {{{ \"\nvllm:num_requests_running{model_name=\"x\"} not-a-number\n",
            )
                .into_response();
        }
    }
    let http: Vec<_> = st
        .http
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|((h, m, c), v)| (h.clone(), *m, *c, *v))
        .collect();
    let body = {
        let core = st.core();
        let e = &core.engine;
        let ec = e.config();
        metrics::render(&metrics::Snapshot {
            model: &st.cfg.model,
            legacy: st.cfg.legacy_metrics,
            running: e.num_running(),
            waiting: e.num_waiting(),
            kv_usage: e.kv_usage(),
            stats: e.stats(),
            created: st.created_unix,
            cache_info: metrics::CacheInfo {
                block_size: ec.block_size,
                num_gpu_blocks: ec.num_gpu_blocks,
                enable_prefix_caching: ec.enable_prefix_caching,
                max_num_seqs: ec.max_num_seqs,
                max_model_len: st.cfg.max_model_len,
            },
            http,
        })
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn get_faults(State(st): State<Arc<Shared>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_string(&st.faults()).unwrap_or_default(),
    )
}

async fn set_faults(State(st): State<Arc<Shared>>, body: Bytes) -> Response {
    let f: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("invalid faults JSON: {e}") }).to_string(),
            );
        }
    };
    if let Err(e) = f.validate() {
        return json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": e }).to_string(),
        );
    }
    let body = serde_json::to_string(&f).unwrap_or_default();
    *st.faults.write().unwrap_or_else(|e| e.into_inner()) = f;
    st.fault_seq.store(0, Ordering::Relaxed);
    json_response(StatusCode::OK, body)
}

async fn completions(State(st): State<Arc<Shared>>, body: Bytes) -> Response {
    generate(st, Kind::Completion, body).await
}

async fn chat(State(st): State<Arc<Shared>>, body: Bytes) -> Response {
    generate(st, Kind::Chat, body).await
}

/// A uniform draw in [0, 1) from `x`.
fn unit(x: u64) -> f64 {
    (mix64(x) >> 11) as f64 / (1u64 << 53) as f64
}

async fn generate(st: Arc<Shared>, kind: Kind, body: Bytes) -> Response {
    let arrival = Instant::now();
    let arrival_ns = crate::clock::monotonic_ns();
    let load = LoadGuard::new(&st);
    let faults = st.faults();
    let n = st.fault_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(d) = faults.slow_headers {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = st.token.cancelled() => {}
        }
    }
    if let Some(status) = faults.error_for(n, unit(st.cfg.seed ^ n.wrapping_mul(0x9e37)))
        && let Ok(status) = StatusCode::from_u16(status)
    {
        return ApiError::injected(status).into_response();
    }
    let served = requested_adapter(&st.cfg.lora_modules, &body).unwrap_or(&st.cfg.model);
    let req = match api::parse(kind, &body, served, st.max_model_len()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let text_seed = mix64(st.cfg.seed ^ id.wrapping_mul(0x1000_0001));
    let stop_after = stop_after(&st, &req, text_seed);
    let reply = Reply {
        kind,
        id: format!(
            "{}-{:016x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            text_seed
        ),
        created: crate::clock::unix_seconds() as u64,
        model: served.to_string(),
        fingerprint: st.fingerprint.clone(),
        prompt_tokens: req.prompt.len() as u32,
        include_usage: req.include_usage,
        continuous_usage: req.continuous_usage && req.include_usage,
        text_seed,
    };
    let total = stop_after.unwrap_or(req.max_tokens);
    let finish = if stop_after.is_some() {
        "stop"
    } else {
        "length"
    };

    let source = match st.cfg.fixed_timing {
        Some(ft) => {
            let extra = faults.slow_first_token.unwrap_or_default();
            Source::Fixed {
                next: arrival + ft.first + extra,
                every: ft.every,
                total,
                finish,
                emitted: 0,
            }
        }
        None => {
            let engine_req = EngineRequest {
                id,
                prompt: req.prompt,
                max_tokens: req.max_tokens,
                stop_after,
                arrival_ns,
            };
            match enqueue(&st, engine_req, faults.slow_first_token) {
                Ok(source) => source,
                Err(QueueFull(limit)) => return ApiError::queue_full(limit).into_response(),
            }
        }
    };

    if !req.stream {
        return unary(st, reply, source).await;
    }
    let stream_faults =
        (faults.has_stream_faults() && faults.stream_faults_for(n)).then_some(faults.clone());
    let state = StreamState::new(st.clone(), reply, source, stream_faults, load);
    let body = Body::from_stream(stream::into_stream(state));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Where an EOS-enabled request stops early (geometric in `eos_probability`, seeded by the
/// request); `None`: it runs to `max_tokens`.
fn stop_after(st: &Shared, req: &api::GenRequest, text_seed: u64) -> Option<u32> {
    if req.ignore_eos || st.cfg.eos_probability <= 0.0 {
        None
    } else {
        let u = unit(text_seed ^ 0xe05);
        let p = st.cfg.eos_probability.min(1.0);
        let k = if p >= 1.0 {
            1.0
        } else {
            ((1.0 - u).ln() / (1.0 - p).ln()).ceil().max(1.0)
        };
        (k < f64::from(req.max_tokens)).then_some(k as u32)
    }
}

/// The engine's waiting queue is full (at this many requests).
struct QueueFull(u32);

/// Hands a request to the engine (after `slow_first_token`, when set); its outputs arrive on
/// the returned source. Refused when the queue holds `max_queued_requests` already.
fn enqueue(
    st: &Arc<Shared>,
    engine_req: EngineRequest,
    slow_first_token: Option<Duration>,
) -> Result<Source, QueueFull> {
    let id = engine_req.id;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut core = st.core();
    if let Some(limit) = st.cfg.max_queued_requests
        && core.engine.num_waiting() >= limit as usize
    {
        core.engine.count_rejection();
        return Err(QueueFull(limit));
    }
    core.senders.insert(id, tx);
    match slow_first_token {
        None => {
            core.engine.add(engine_req);
            drop(core);
            st.notify.notify_one();
        }
        Some(d) => {
            // Slow first token: the request reaches the engine late, so the engine's
            // own TTFT and queue-time histograms show the delay too, while the
            // response headers go out at once as vLLM's do.
            drop(core);
            let st2 = st.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = st2.token.cancelled() => return,
                }
                let mut core = st2.core();
                if core.senders.contains_key(&id) {
                    core.engine.add(engine_req);
                }
                drop(core);
                st2.notify.notify_one();
            });
        }
    }
    Ok(Source::Engine {
        rx,
        handle: EngineHandle {
            shared: st.clone(),
            id,
        },
    })
}

async fn unary(st: Arc<Shared>, reply: Reply, mut source: Source) -> Response {
    loop {
        let next = tokio::select! {
            t = source.next() => t,
            _ = st.token.cancelled() => None,
        };
        let Some((index, f)) = next else {
            return ApiError::injected(StatusCode::INTERNAL_SERVER_ERROR).into_response();
        };
        if let Some(f) = f {
            return json_response(StatusCode::OK, reply.full_body(index + 1, f));
        }
    }
}
