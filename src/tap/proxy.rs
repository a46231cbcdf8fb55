//! Forwarding: one user request to the upstream and its response back, frame by frame.
//!
//! The request is re-targeted (origin-form path under the upstream's base path, HTTP/1.1
//! upstream, `Host` kept, or set to the upstream when the client sent none, as over h2c) with its
//! method, path, query, headers and body unchanged except for the hop-by-hop headers (RFC 9110
//! §7.6.1), and sent on a pooled upstream connection ([`super::upstream`]). The response's head is
//! copied (hop-by-hop headers removed) and its body is a [`TapBody`], which drives the upstream
//! connection itself: the upstream chunks already read are handed to the client together, as
//! soon as they are read — hyper's server writes and flushes them before polling for more — and
//! each is measured on the way. Dropping a [`TapBody`] (the client went away) drops the upstream
//! connection at once: vLLM sees the disconnect and aborts.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::measure::{End, Measure, RequestInfo, endpoint_of, scan_request, without_response};
use super::metrics::{TargetLabels, TrafficMetrics, TrafficOutcome};
use super::models::ModelSet;
use super::upstream::{Pool, SendError, UpConn};
use crate::clock::monotonic_ns;
use crate::config::Endpoint;

/// The body of a request sent upstream: a user's body (streamed as it arrives), or empty (the
/// tap's own `/v1/models` reads).
pub type UpstreamBody = Either<RequestBody, Empty<Bytes>>;
/// The body of a response to a user: the upstream's, or the tap's own JSON error.
pub type ClientBody = Either<TapBody, Full<Bytes>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every request of one tap shares.
pub struct Shared {
    /// For the tap's own small reads (`/v1/models`).
    pub client: Client<HttpConnector, UpstreamBody>,
    /// Upstream base URL without a trailing slash (`http://host:port`, maybe a path prefix).
    pub base: String,
    /// The base URL's path prefix (no trailing slash; empty for none).
    pub base_path: String,
    /// Users' requests go upstream on these connections.
    pub pool: Pool,
    /// The `target` label value.
    pub target: String,
    pub metrics: TrafficMetrics,
    pub models: ModelSet,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
}

/// Handles one user request. Never fails: every failure is an HTTP answer.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    let start_ns = monotonic_ns();
    let endpoint = endpoint_of(req.method(), req.uri().path());
    let mut tracker = Tracker::new(shared.clone(), start_ns, endpoint);

    if is_upgrade(&req) {
        tracker.refused();
        return Ok(json_error(
            StatusCode::NOT_IMPLEMENTED,
            "vllm-sentinel tap: protocol upgrades (WebSocket, Upgrade: h2c) and CONNECT are not proxied; send them to the server directly",
            "NotImplementedError",
        ));
    }

    let (mut parts, body) = req.into_parts();
    let trailers = wants_trailers(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if trailers {
        // TE is hop-by-hop; the tap itself accepts trailers and passes them on.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !parts.headers.contains_key(header::HOST)
        && let Ok(h) = HeaderValue::from_str(shared.pool.authority())
    {
        parts.headers.insert(header::HOST, h);
    }
    let uri: Uri = match format!("{}{pq}", shared.base_path).parse() {
        Ok(u) => u,
        Err(_) => {
            tracker.no_response(
                TrafficOutcome::Classified(crate::prober::request::Outcome::ClientError),
                "4xx",
            );
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                "vllm-sentinel tap: the request target cannot be forwarded",
                "BadRequestError",
            ));
        }
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let mut body = RequestBody::new(body);
    if endpoint.is_some() {
        // The body goes upstream as it arrives; its start is copied aside on the way, and
        // `model` and `stream` are read from the copy when the request ends.
        tracker.seen = Some(body.tee(shared.max_body_bytes));
    }
    let body_error = body.error.clone();
    let upstream_req = Request::from_parts(parts, Either::Left(body));

    let sent = tokio::time::timeout(shared.header_timeout, shared.pool.send(upstream_req)).await;
    let (resp, conn) = match sent {
        Err(_) => return Ok(header_timeout(&shared, &mut tracker)),
        Ok(Err((e, unsent))) => {
            // Not sent at all (no connection): read the body's start anyway, for the labels.
            if let Some(req) = unsent
                && let Either::Left(mut b) = req.into_body()
            {
                b.read_seen().await;
            }
            let body_failed = body_error.load(Ordering::Relaxed);
            return Ok(send_failed(&shared, &mut tracker, &e, body_failed));
        }
        Ok(Ok(r)) => r,
    };
    let headers_ns = monotonic_ns();
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status.as_u16();
    tracker.status = Some(status);
    if let Some(ep) = endpoint {
        let sse = is_event_stream(&parts.headers);
        tracker.measure = Some(Measure::new(
            start_ns,
            headers_ns,
            ep,
            status,
            sse,
            shared.max_body_bytes,
        ));
    }
    let body = TapBody::new(body, Some(conn), tracker, shared.idle_timeout);
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// True for a request that asks to switch protocols (WebSocket, `Upgrade: h2c`) or a CONNECT.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::CONNECT || req.headers().contains_key(header::UPGRADE)
}

/// Whether the client said it accepts trailers (`TE: trailers`).
fn wants_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        })
    })
}

/// The hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy `Proxy-Connection` and the
/// proxy-authentication pair, as Go's httputil does). `Trailer` is kept, unlike Go: it declares
/// end-to-end trailer fields, and hyper only sends the trailers a `Trailer` header announces.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop fields and every field `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// An error answer in OpenAI's shape.
pub fn json_error(status: StatusCode, message: &str, kind: &str) -> Response<ClientBody> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": status.as_u16() }
    });
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// No response headers from the upstream within `tap.header_timeout`: 504.
fn header_timeout(shared: &Shared, tracker: &mut Tracker) -> Response<ClientBody> {
    shared.metrics.upstream_error(&shared.target, "timeout");
    tracker.no_response(TrafficOutcome::UpstreamTimeout, "upstream_timeout");
    json_error(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "vllm-sentinel tap: no response headers from the upstream within {}",
            humantime::format_duration(shared.header_timeout)
        ),
        "GatewayTimeout",
    )
}

/// Forwarding failed before a response head: the client's body broke (400), the upstream
/// connect timed out (504) or the upstream is unreachable (502).
fn send_failed(
    shared: &Shared,
    tracker: &mut Tracker,
    e: &SendError,
    body_failed: bool,
) -> Response<ClientBody> {
    if body_failed {
        tracker.no_response(TrafficOutcome::ClientDisconnected, "client_disconnected");
        return json_error(
            StatusCode::BAD_REQUEST,
            "vllm-sentinel tap: the request body could not be read",
            "BadRequestError",
        );
    }
    let detail = crate::prober::event::short(&e.to_string());
    if is_timeout(e) {
        shared.metrics.upstream_error(&shared.target, "timeout");
        tracker.no_response(TrafficOutcome::UpstreamTimeout, "upstream_timeout");
        return json_error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("vllm-sentinel tap: upstream connect timed out ({detail})"),
            "GatewayTimeout",
        );
    }
    shared.metrics.upstream_error(&shared.target, "unreachable");
    tracker.no_response(TrafficOutcome::UpstreamUnreachable, "upstream_unreachable");
    json_error(
        StatusCode::BAD_GATEWAY,
        &format!("vllm-sentinel tap: upstream unreachable ({detail})"),
        "BadGateway",
    )
}

/// Whether a response is an SSE stream (`Content-Type: text/event-stream`, any case).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

fn is_timeout(e: &SendError) -> bool {
    match e {
        SendError::ConnectTimeout => true,
        SendError::Connect(io) => io.kind() == std::io::ErrorKind::TimedOut,
        SendError::Http(_) => false,
    }
}

/// The first bytes of a request body, copied as they pass upstream (at most `cap`): the
/// request's `model` and `stream` are read from them when the request ends. They hold prompt
/// text: never logged, dropped with the request.
pub struct Seen {
    buf: Vec<u8>,
    cap: usize,
}

impl Seen {
    fn new(cap: usize) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            buf: Vec::new(),
            cap,
        }))
    }

    fn add(&mut self, d: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&d[..d.len().min(room)]);
    }

    fn full(&self) -> bool {
        self.buf.len() >= self.cap
    }
}

/// A user's request body on its way upstream: the client's frames, forwarded as they arrive,
/// untouched and unheld; on the measured routes the first `tap.max_body_bytes` are also copied
/// aside ([`Seen`]).
pub struct RequestBody {
    inner: Incoming,
    seen: Option<Arc<Mutex<Seen>>>,
    /// The client's body failed (it went away mid-upload).
    pub error: Arc<AtomicBool>,
}

impl RequestBody {
    fn new(inner: Incoming) -> Self {
        Self {
            inner,
            seen: None,
            error: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Copies the first `cap` bytes aside as they pass; returns the copy.
    fn tee(&mut self, cap: usize) -> Arc<Mutex<Seen>> {
        let seen = Seen::new(cap);
        self.seen = Some(seen.clone());
        seen
    }

    /// Reads (without forwarding) until the body ends or the copy is full: for a request that
    /// could not be sent, so that its `model` is still known.
    async fn read_seen(&mut self) {
        let Some(seen) = self.seen.clone() else {
            return;
        };
        while !self.inner.is_end_stream() && !lock(&seen).full() {
            match self.inner.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => lock(&seen).add(&d),
                    Err(_) => break,
                },
                Some(Err(_)) => {
                    self.error.store(true, Ordering::Relaxed);
                    break;
                }
                None => break,
            }
        }
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Err(_))) => self.error.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(seen), Some(d)) = (&self.seen, f.data_ref()) {
                    let mut g = lock(seen);
                    if !g.full() {
                        g.add(d);
                    }
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request's bookkeeping: the in-flight gauge, and exactly one record when it ends —
/// including when it is dropped unfinished (the client went away), which counts
/// `client_disconnected`.
pub struct Tracker {
    shared: Arc<Shared>,
    start_ns: u64,
    endpoint: Option<Endpoint>,
    /// `model` and `stream` of a measured request, read from `seen` when it ends.
    info: RequestInfo,
    /// The start of a measured request's body, copied as it went upstream.
    seen: Option<Arc<Mutex<Seen>>>,
    measure: Option<Measure>,
    status: Option<u16>,
    finished: bool,
}

impl Tracker {
    fn new(shared: Arc<Shared>, start_ns: u64, endpoint: Option<Endpoint>) -> Self {
        shared
            .metrics
            .in_flight
            .get_or_create(&TargetLabels {
                target: shared.target.clone(),
            })
            .inc();
        Self {
            shared,
            start_ns,
            endpoint,
            info: RequestInfo::default(),
            seen: None,
            measure: None,
            status: None,
            finished: false,
        }
    }

    /// The request's `model` and `stream`, from the copy of its body's start.
    fn take_info(&mut self) -> RequestInfo {
        match self.seen.take() {
            Some(seen) => scan_request(&lock(&seen).buf),
            None => std::mem::take(&mut self.info),
        }
    }

    fn refused(&mut self) {
        self.finished = true;
        self.shared
            .metrics
            .passthrough(&self.shared.target, "upgrade_refused");
    }

    /// Ends a request that got no upstream response.
    fn no_response(&mut self, outcome: TrafficOutcome, result: &str) {
        if self.finished {
            return;
        }
        self.finished = true;
        let sh = self.shared.clone();
        match self.endpoint {
            Some(ep) => {
                let info = self.take_info();
                let model = sh.models.label(info.model.as_deref());
                let rec = without_response(self.start_ns, monotonic_ns(), ep, info, model, outcome);
                sh.metrics.record(&sh.target, &rec);
            }
            None => sh.metrics.passthrough(&sh.target, result),
        }
    }

    /// Ends a request whose response started.
    fn end(&mut self, end: End) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = monotonic_ns();
        let sh = self.shared.clone();
        match (self.endpoint, self.measure.take()) {
            (Some(_), Some(m)) => {
                let info = self.take_info();
                let model = sh.models.label(info.model.as_deref());
                let (models, name) = (sh.models.clone(), model.clone());
                let rec = m.finish(end, now, info, model, move || models.max_model_len(&name));
                sh.metrics.record(&sh.target, &rec);
            }
            _ => {
                let result = match end {
                    End::ClientGone => "client_disconnected",
                    End::IdleTimeout => "upstream_timeout",
                    End::UpstreamError => "truncated",
                    End::Complete => match self.status.unwrap_or(0) {
                        100..=199 => "1xx",
                        200..=299 => "2xx",
                        300..=399 => "3xx",
                        400..=499 => "4xx",
                        _ => "5xx",
                    },
                };
                sh.metrics.passthrough(&sh.target, result);
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.end(End::ClientGone);
        self.shared
            .metrics
            .in_flight
            .get_or_create(&TargetLabels {
                target: self.shared.target.clone(),
            })
            .dec();
    }
}

/// The upstream response body on its way to the client. Drives the upstream connection, passes
/// the frames already read through at once (small data frames read together are handed on as
/// one, up to [`MAX_COALESCE`] bytes, each measured on its own), bounds the wait
/// for the next one (`idle_timeout`), and ends the request's [`Tracker`] when the body ends,
/// fails, times out or is dropped. A connection whose response ended cleanly goes back to the
/// pool.
///
/// The idle timer is lazy: a frame only notes its arrival time, and the timer (armed once, for
/// `idle_timeout` after the response head) is moved to `last frame + idle_timeout` only when it
/// fires. Re-arming a tokio timer takes the timer driver's lock; doing it once per streamed token
/// was a measurable share of the tap's CPU per token (BENCHMARKS.md, "Tap overhead").
pub struct TapBody<B = Incoming> {
    inner: Option<B>,
    /// The upstream connection the body comes on (none in unit tests).
    conn: Option<UpConn>,
    /// What the last poll read after the data it returned: handed on by the next poll.
    next: Option<Next>,
    tracker: Tracker,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    /// When the last upstream frame arrived.
    last_frame: tokio::time::Instant,
    /// The waker the upstream connection and body are polled with (see [`SelfWake`]).
    wake: Arc<SelfWake>,
    own_waker: Waker,
    /// The last [`Self::step`] found the upstream connection and body `Pending`, each with the
    /// body's waker registered. Until a wake-up marks the body dirty, polling them again would
    /// find nothing: hyper's server polls the body once more after each frame it writes, and
    /// that poll is answered without them.
    quiet: bool,
    /// Where small frames are copied and joined on their way through ([`Self::data`]).
    out: BytesMut,
    /// The idle timer has been polled (its wake-up is registered too).
    idle_polled: bool,
}

/// How many times [`TapBody`] polls again at once for a wake-up its own polls caused, before it
/// leaves the wake-up to the scheduler (tokio's cooperative budget also wakes a task that must
/// yield: that one must not be answered by polling on).
const SELF_WAKE_REPOLLS: u32 = 3;

/// The waker the upstream connection and body are polled with. While [`TapBody::poll_frame`]
/// runs, a wake-up is only noted (the body polls again itself, [`TapBody::step`]); at any other
/// time, and for a wake-up noted but not answered when the poll returns, it wakes the task.
/// Every wake-up also marks the body dirty until its next [`TapBody::step`]: a body that is not
/// dirty has nothing new to read ([`TapBody::quiet`]).
#[derive(Default)]
struct SelfWake {
    state: AtomicU8,
    task: AtomicWaker,
}

const POLLING: u8 = 1;
const WOKEN: u8 = 2;
const DIRTY: u8 = 4;

impl SelfWake {
    fn enter(&self, task: &Waker) {
        self.task.register(task);
        // A wake-up from before this poll has reached the task already; only whether the body
        // is dirty is kept.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s & DIRTY | POLLING)
            });
    }
    /// Forgets the wake-ups so far: the upstream connection and body are polled next.
    fn clear(&self) {
        self.state.fetch_and(!(WOKEN | DIRTY), Ordering::AcqRel);
    }
    /// Whether a wake-up came during the poll since the last [`Self::clear`] (and forgets that
    /// it must be answered; the body stays dirty).
    fn take(&self) -> bool {
        self.state.fetch_and(!WOKEN, Ordering::AcqRel) & WOKEN != 0
    }
    /// Whether any wake-up came since the last [`Self::clear`].
    fn dirty(&self) -> bool {
        self.state.load(Ordering::Acquire) & DIRTY != 0
    }
    fn leave(&self) {
        if self.state.fetch_and(DIRTY, Ordering::AcqRel) & WOKEN != 0 {
            self.task.wake();
        }
    }
}

impl Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.fetch_or(WOKEN | DIRTY, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

/// The most bytes of upstream data frames handed on as one frame.
pub const MAX_COALESCE: usize = 64 * 1024;
/// A data frame this large or larger is handed on as it is ([`TapBody::data`]).
const COPY_BELOW: usize = 4 * 1024;
/// The room [`TapBody::data`] makes for small frames (it grows for a longer run of them, and
/// stays for the body's life: 1 MiB over 1,000 streams).
const OUT_ROOM: usize = 1024;

/// A frame or an end read after data that was handed on first.
enum Next {
    Frame(Frame<Bytes>),
    Error(BoxError),
    End,
}

impl<B: Body> TapBody<B> {
    fn new(inner: B, conn: Option<UpConn>, tracker: Tracker, idle_timeout: Duration) -> Self {
        let now = tokio::time::Instant::now();
        let wake = Arc::new(SelfWake::default());
        let mut body = Self {
            inner: Some(inner),
            conn,
            next: None,
            tracker,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            idle_timeout,
            last_frame: now,
            own_waker: Waker::from(wake.clone()),
            wake,
            quiet: false,
            idle_polled: false,
            out: BytesMut::new(),
        };
        if body.inner.as_ref().is_some_and(|i| i.is_end_stream()) {
            // No body at all (HEAD, 204, 304, Content-Length: 0): the response is complete.
            body.stop(End::Complete);
        }
        body
    }
}

impl<B> TapBody<B> {
    fn stop(&mut self, end: End) {
        // Drop the upstream body first; a connection whose response ended cleanly is reused,
        // any other is dropped, which closes it.
        self.inner = None;
        if let Some(c) = self.conn.take()
            && end == End::Complete
        {
            self.tracker.shared.pool.checkin(c);
        }
        self.tracker.end(end);
    }

    /// Lets the upstream connection read and write; forgets it once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = self.conn.as_mut()
            && c.poll_drive(cx).is_ready()
        {
            self.conn = None;
        }
    }
}

impl<B> TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// One data frame read: measured, then more data frames already read appended to it.
    ///
    /// A small frame is copied into the body's own buffer [`Self::out`] and dropped before
    /// anything more is read, so that hyper's upstream read buffer is no longer shared when the
    /// connection reads next and is reused, not replaced by a new allocation per streamed
    /// token. The frame handed on is a slice of `out`; hyper's server copies it into its write
    /// buffer (`writev(false)`) and drops it before it polls the body again, so `out` is reused
    /// too. A large frame is handed on as it is, without reading ahead.
    fn data(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let now = monotonic_ns();
        // Frames read ahead below arrive within this poll: one time stands for them all.
        self.last_frame = tokio::time::Instant::now();
        if let Some(m) = self.tracker.measure.as_mut() {
            m.on_data(&first, now);
        }
        if first.len() >= COPY_BELOW {
            return first;
        }
        // Room for a run of events at once, not a reallocation per event.
        self.out.reserve(OUT_ROOM);
        self.out.extend_from_slice(&first);
        drop(first);
        while self.out.len() < MAX_COALESCE {
            if self.inner.is_none() {
                break;
            }
            let next = match self.step(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => Next::End,
                Poll::Ready(Some(Err(e))) => Next::Error(e.into()),
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        if let Some(m) = self.tracker.measure.as_mut() {
                            m.on_data(&d, now);
                        }
                        self.out.extend_from_slice(&d);
                        continue;
                    }
                    Err(f) => Next::Frame(f),
                },
            };
            self.next = Some(next);
            break;
        }
        self.out.split().freeze()
    }

    /// Drives the upstream connection, then polls the upstream body once. A wake-up that came
    /// during these polls from the polls themselves (the connection hands the body a frame over
    /// hyper's channel, which wakes this task) is answered by polling again here, a few times at
    /// most, instead of by a fresh poll of the whole client connection.
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut again = SELF_WAKE_REPOLLS;
        loop {
            self.wake.clear();
            self.drive(cx);
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending if again > 0 && self.wake.take() => again -= 1,
                r => {
                    self.quiet = r.is_pending();
                    return r;
                }
            }
        }
    }

    /// Hands on what was read after the data of the last poll.
    fn next_ready(&mut self, next: Next) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match next {
            Next::Frame(f) => {
                // A non-data frame is the trailers, the last frame of a body.
                self.stop(End::Complete);
                Poll::Ready(Some(Ok(f)))
            }
            Next::Error(e) => {
                self.stop(End::UpstreamError);
                Poll::Ready(Some(Err(e)))
            }
            Next::End => {
                self.stop(End::Complete);
                Poll::Ready(None)
            }
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.wake.enter(cx.waker());
        // Moved out for the poll (the body is borrowed mutably beside it), not cloned: no
        // reference count to touch per poll.
        let own = std::mem::replace(&mut this.own_waker, Waker::noop().clone());
        let r = this.poll_own(&mut Context::from_waker(&own));
        this.own_waker = own;
        this.wake.leave();
        r
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.next) {
            (Some(i), None) => i.size_hint(),
            (Some(_), Some(_)) => SizeHint::default(),
            (None, _) => SizeHint::with_exact(0),
        }
    }
}

impl<B> TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// [`Body::poll_frame`], polled with the body's own waker.
    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if let Some(next) = this.next.take() {
            return this.next_ready(next);
        }
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        if this.quiet && this.idle_polled && !this.wake.dirty() {
            // Nothing came since everything was found `Pending`.
            return Poll::Pending;
        }
        match this.step(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => {
                    let d = this.data(d, cx);
                    // The end, when it is known already, is handled now: hyper's server does not
                    // poll again once a body with a known length has been written in full.
                    let ended = match this.next {
                        Some(Next::End) => true,
                        Some(_) => false,
                        None => this.inner.as_ref().is_none_or(|i| i.is_end_stream()),
                    };
                    if ended {
                        this.next = None;
                        this.stop(End::Complete);
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Err(f) => this.next_ready(Next::Frame(f)),
            },
            Poll::Ready(Some(Err(e))) => this.next_ready(Next::Error(e.into())),
            Poll::Ready(None) => this.next_ready(Next::End),
            Poll::Pending => {
                while this.idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_frame + this.idle_timeout;
                    if deadline <= this.idle.deadline() {
                        // No frame since the timer was armed: idle for the whole timeout.
                        this.stop(End::IdleTimeout);
                        return Poll::Ready(Some(Err(
                            "vllm-sentinel tap: upstream idle timeout".into()
                        )));
                    }
                    // Frames came since: wait on from the last one (polled again by the loop, so
                    // the new deadline is registered with this waker).
                    this.idle.as_mut().reset(deadline);
                }
                this.idle_polled = true;
                Poll::Pending
            }
        }
    }
}

impl<B> Drop for TapBody<B> {
    fn drop(&mut self) {
        // Unfinished: the client (or the server on its side) dropped the response.
        self.stop(End::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use tokio::sync::mpsc;
    use tokio::time::{Instant, sleep};

    /// A response body fed by the test: one data frame per message, the end when the sender
    /// is dropped.
    struct ChanBody(mpsc::Receiver<Bytes>);

    impl Body for ChanBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
        }
    }

    fn tracker(registry: &mut Registry) -> Tracker {
        let shared = Arc::new(Shared {
            client: Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(HttpConnector::new()),
            base: "http://127.0.0.1:9".into(),
            base_path: String::new(),
            pool: Pool::new("127.0.0.1:9".into(), Duration::from_secs(1), 4),
            target: "t".into(),
            metrics: TrafficMetrics::register(registry, &Default::default()),
            models: ModelSet::with(Vec::new()),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
        });
        let mut t = Tracker::new(shared, monotonic_ns(), None);
        t.status = Some(200);
        t
    }

    fn exposition(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap_or_default();
        s
    }

    /// Sends `gaps.len()` frames, each after its gap, then ends the body.
    fn feed(gaps: &'static [u64]) -> ChanBody {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for g in gaps {
                sleep(Duration::from_millis(*g)).await;
                if tx.send(Bytes::from_static(b"data: x\n\n")).await.is_err() {
                    return;
                }
            }
        });
        ChanBody(rx)
    }

    /// Frames every 600 ms for 1.8 s with a 1 s idle timeout: the lazily re-armed timer fires
    /// twice (at 1.0 s and 1.6 s), finds a frame since, and waits on; the body completes.
    #[tokio::test(start_paused = true)]
    async fn idle_timer_is_moved_on_by_frames_that_came_since() {
        let mut registry = Registry::default();
        let mut body = TapBody::new(
            feed(&[600, 600, 600]),
            None,
            tracker(&mut registry),
            Duration::from_secs(1),
        );
        let t0 = Instant::now();
        let mut frames = 0;
        while let Some(f) = body.frame().await {
            assert!(f.is_ok(), "frame {frames} at {:?}", t0.elapsed());
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert_eq!(t0.elapsed(), Duration::from_millis(1800));
        let text = exposition(&registry);
        assert!(text.contains(r#"result="2xx""#), "{text}");
        assert!(!text.contains(r#"result="upstream_timeout""#), "{text}");
    }

    /// A frame at 0.6 s, then nothing for 5 s: the body fails exactly one idle timeout after
    /// the last frame (1.6 s), counted as an upstream timeout.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_frame() {
        let mut registry = Registry::default();
        let mut body = TapBody::new(
            feed(&[600, 5000]),
            None,
            tracker(&mut registry),
            Duration::from_secs(1),
        );
        let t0 = Instant::now();
        assert!(matches!(body.frame().await, Some(Ok(_))));
        let err = body.frame().await;
        assert!(matches!(err, Some(Err(_))), "expected the idle timeout");
        assert_eq!(t0.elapsed(), Duration::from_millis(1600));
        assert!(
            body.frame().await.is_none(),
            "the body ends after the timeout"
        );
        let text = exposition(&registry);
        assert!(text.contains(r#"result="upstream_timeout""#), "{text}");
    }

    /// Small frames are copied into the body's own buffer, which is reused once the frame
    /// handed on has been dropped (no allocation per streamed token); a frame still held is
    /// never written over; a large frame is handed on as it is, not copied.
    #[tokio::test]
    async fn small_frames_reuse_the_bodys_buffer_and_large_ones_pass_as_they_are() {
        let mut registry = Registry::default();
        let (tx, rx) = mpsc::channel(4);
        let mut body = TapBody::new(
            ChanBody(rx),
            None,
            tracker(&mut registry),
            Duration::from_secs(60),
        );
        let data = |f: Option<Result<Frame<Bytes>, BoxError>>| match f {
            Some(Ok(f)) => f.into_data().unwrap_or_default(),
            _ => panic!("expected a data frame"),
        };
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(b).await.unwrap_or_default() }
        };

        send(Bytes::from_static(b"data: 1\n\n")).await;
        let first = data(body.frame().await);
        assert_eq!(first, Bytes::from_static(b"data: 1\n\n"));
        let at = first.as_ptr();
        drop(first);
        send(Bytes::from_static(b"data: 2\n\n")).await;
        let second = data(body.frame().await);
        assert_eq!(second, Bytes::from_static(b"data: 2\n\n"));
        assert_eq!(
            second.as_ptr(),
            at,
            "the buffer is reused once the frame is dropped"
        );

        // Held while the next frame comes: that one goes elsewhere, and this one is intact.
        send(Bytes::from_static(b"data: 3\n\n")).await;
        let third = data(body.frame().await);
        assert_eq!(third, Bytes::from_static(b"data: 3\n\n"));
        assert_eq!(second, Bytes::from_static(b"data: 2\n\n"));
        assert_ne!(third.as_ptr(), second.as_ptr());

        // Two small frames read together are handed on as one.
        send(Bytes::from_static(b"data: 4\n\n")).await;
        send(Bytes::from_static(b"data: 5\n\n")).await;
        assert_eq!(
            data(body.frame().await),
            Bytes::from_static(b"data: 4\n\ndata: 5\n\n")
        );

        let large = Bytes::from(vec![b'x'; COPY_BELOW]);
        send(large.clone()).await;
        let passed = data(body.frame().await);
        assert_eq!(
            passed.as_ptr(),
            large.as_ptr(),
            "a large frame is not copied"
        );
        assert_eq!(passed.len(), COPY_BELOW);
    }

    /// Counts the wake-ups of the task that polls a [`TapBody`].
    #[derive(Default)]
    struct TaskWakes(std::sync::atomic::AtomicU32);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What a [`SelfWaking`] body did.
    #[derive(Default)]
    struct Script {
        /// Polls that wake the polling waker and return `Pending` (hyper's connection handing
        /// the body a frame over its channel does this), before each frame.
        self_wakes: u32,
        /// Frames left to hand over.
        frames: u32,
        polls: u32,
        /// The waker of the last `Pending` without a wake-up (the I/O driver would hold it).
        parked: Option<Waker>,
    }

    struct SelfWaking(Arc<Mutex<Script>>, u32);

    impl Body for SelfWaking {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let wakes_before_frame = self.1;
            let mut s = lock_script(&self.0);
            s.polls += 1;
            if s.frames == 0 {
                s.parked = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if s.self_wakes > 0 {
                s.self_wakes -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            s.frames -= 1;
            s.self_wakes = wakes_before_frame;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: x\n\n")))))
        }
    }

    fn lock_script(m: &Mutex<Script>) -> std::sync::MutexGuard<'_, Script> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the waker the body left with the upstream (as new data would), after `more`
    /// frames are queued.
    fn wake_parked(script: &Mutex<Script>, more: u32) {
        let parked = {
            let mut s = lock_script(script);
            s.frames += more;
            s.parked.take()
        };
        let Some(parked) = parked else {
            panic!("the body registered no waker")
        };
        parked.wake();
    }

    fn self_waking(
        registry: &mut Registry,
        self_wakes: u32,
        frames: u32,
    ) -> (TapBody<SelfWaking>, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script {
            self_wakes,
            frames,
            ..Script::default()
        }));
        let body = TapBody::new(
            SelfWaking(script.clone(), self_wakes),
            None,
            tracker(registry),
            Duration::from_secs(60),
        );
        (body, script)
    }

    /// The wake-up a body's own poll causes (the upstream connection handing it a frame) is
    /// answered within the same poll: the frame comes out of that poll, and the task that polls
    /// the body is not woken to poll the whole client connection again. A wake-up from outside
    /// a poll (the I/O driver) still reaches the task.
    #[tokio::test]
    async fn a_wake_up_the_body_causes_itself_is_answered_within_the_poll() {
        let mut registry = Registry::default();
        let (mut body, script) = self_waking(&mut registry, 1, 2);
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        // Both frames, each after a wake-up of the body's own, come out of the first poll
        // together.
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                assert_eq!(
                    f.into_data().ok(),
                    Some(Bytes::from_static(b"data: x\n\ndata: x\n\n"))
                );
            }
            _ => panic!("no frame from the first poll"),
        }
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            0,
            "no task wake-up for its own polls"
        );
        wake_parked(&script, 0);
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "an outside wake-up reaches the task"
        );
    }

    /// After a frame, hyper's server polls the body again at once; when nothing has woken the
    /// body since the upstream connection and body were found `Pending`, that poll is answered
    /// without polling them. A wake-up (more data, the idle timer) makes the next poll read.
    #[tokio::test]
    async fn a_poll_with_nothing_new_since_everything_was_pending_polls_nothing() {
        let mut registry = Registry::default();
        let (mut body, script) = self_waking(&mut registry, 0, 1);
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let polls = || lock_script(&script).polls;
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(polls(), 2, "the frame, then Pending while coalescing");
        // The idle timer has not been polled yet: this poll polls everything once.
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(polls(), 3);
        for _ in 0..3 {
            assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        }
        assert_eq!(polls(), 3, "nothing woke the body: nothing polled");
        // More data: the upstream wakes the body, and the next poll reads it.
        wake_parked(&script, 1);
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the wake-up reaches the task"
        );
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(polls(), 5);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(polls(), 5, "quiet again after the frame");
        // A wake-up with nothing to read is answered by one poll of everything.
        wake_parked(&script, 0);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(polls(), 6);
    }

    /// A body that wakes itself at every poll (tokio's cooperative budget does this to make a
    /// task yield) is polled again a bounded number of times, then the task is woken and the
    /// poll returns `Pending`: no spinning inside one poll.
    #[tokio::test]
    async fn a_body_that_keeps_waking_itself_is_left_to_the_scheduler() {
        let mut registry = Registry::default();
        let (mut body, script) = self_waking(&mut registry, u32::MAX, 1);
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(task.clone());
        assert!(
            Pin::new(&mut body)
                .poll_frame(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(lock_script(&script).polls, SELF_WAKE_REPOLLS + 1);
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the task is woken to poll again"
        );
    }
}
