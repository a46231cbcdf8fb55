//! The single-request engine: sends one probe request, measures it, and classifies how it ended.
//!
//! Shared by the daemon's workloads and the one-shot experiments (`bench`, `sweep`, `kv-scale`),
//! so a one-shot number and a daemon number mean the same thing. [`execute`] never fails: every
//! way a request can end is an [`Outcome`] in the returned [`RequestRecord`].
//!
//! # Timing (all on `CLOCK_MONOTONIC`, [`crate::clock::monotonic_ns`])
//! * Latencies count from `intended_start`: the time the request *should* have been sent. In a
//!   closed loop that is the moment it is sent; in an open loop it is the scheduled arrival, so
//!   a late send (a busy runtime, an in-flight cap) is charged to the latency, not hidden
//!   (no coordinated omission). [`RequestRecord::schedule_lag`] says how late the send was.
//! * TTFB: to the response headers. TTFT: to the first event that carries generated output
//!   (non-empty `text`, `content`, `reasoning_content`/`reasoning`, or a tool call; the chat
//!   role-only prelude and empty events do not count). ITL: every gap between consecutive
//!   output-carrying events. TPOT: (last output time − first output time) / (completion_tokens
//!   − 1), with completion_tokens from the server's `usage` (the request always asks for it with
//!   `stream_options.include_usage`), never from counting chunks. E2E: to the `[DONE]` event (or
//!   the end of the body when a server sends none).
//! * Each event is stamped with the receive time of the network read in which its first
//!   `data:` line completed, taken before any parsing.
//!
//! Transport: plain `http://` targets go through the prober's own HTTP/1.1 client
//! ([`super::http1`]: the request task reads its socket itself, one wake-up per read);
//! `https://` targets (the `tls` feature, on by default) go through reqwest. Both give the same records.
//!
//! Timeouts: `connect` is a property of the client ([`build_client`]); `first_token` bounds the
//! time from the send to the first output event (headers included); `request` bounds the whole
//! request. One timer is armed per request and moved once, not one per chunk.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::event::{self, ErrorInfo};
use super::http1;
use super::sse::{SseError, SseParser};
use crate::clock::monotonic_ns;
pub use crate::config::Endpoint;

/// The prompt of a probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Token ids (completions only): the prompt length is exact.
    TokenIds(Vec<u32>),
    /// Text: a completions `prompt` string, or the user message of a chat request.
    Text(String),
    /// A chat history (`messages`), oldest first; on the completions endpoint the contents are
    /// joined by line breaks into one prompt.
    Messages(Vec<ChatMessage>),
}

/// One message of a [`Prompt::Messages`] history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `user` or `assistant`.
    pub role: &'static str,
    pub content: String,
}

impl Prompt {
    /// Token ids of a token prompt; `None` for text.
    pub fn token_len(&self) -> Option<usize> {
        match self {
            Prompt::TokenIds(v) => Some(v.len()),
            Prompt::Text(_) | Prompt::Messages(_) => None,
        }
    }
}

/// One probe request, as plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: u32,
    /// Ask the server to ignore end-of-sequence tokens (vLLM's `ignore_eos`), so the output
    /// length is `max_tokens`.
    pub ignore_eos: bool,
    pub temperature: Option<f64>,
    pub stream: bool,
    /// Extra body fields, passed through as given (they may override the fields above).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ProbeRequest {
    /// The JSON body. Token-id prompts on the chat endpoint are sent as their decimal ids
    /// joined by spaces (chat has no token-id form); callers should build text prompts for chat.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Msg<'a> {
            role: &'static str,
            content: &'a str,
        }
        #[derive(Serialize)]
        struct StreamOptions {
            include_usage: bool,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            model: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            prompt: Option<PromptRef<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            messages: Option<Vec<Msg<'a>>>,
            max_tokens: u32,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            ignore_eos: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            temperature: Option<f64>,
            stream: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            stream_options: Option<StreamOptions>,
            #[serde(flatten)]
            extra: &'a serde_json::Map<String, serde_json::Value>,
        }
        #[derive(Serialize)]
        #[serde(untagged)]
        enum PromptRef<'a> {
            Ids(&'a [u32]),
            Text(&'a str),
        }
        let joined;
        let (prompt, messages) = match (self.endpoint, &self.prompt) {
            (Endpoint::Completions, Prompt::TokenIds(ids)) => (Some(PromptRef::Ids(ids)), None),
            (Endpoint::Completions, Prompt::Text(t)) => (Some(PromptRef::Text(t)), None),
            (Endpoint::Chat, Prompt::Text(t)) => (
                None,
                Some(vec![Msg {
                    role: "user",
                    content: t,
                }]),
            ),
            (Endpoint::Chat, Prompt::TokenIds(ids)) => {
                joined = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
                (
                    None,
                    Some(vec![Msg {
                        role: "user",
                        content: &joined,
                    }]),
                )
            }
            (Endpoint::Chat, Prompt::Messages(ms)) => (
                None,
                Some(
                    ms.iter()
                        .map(|m| Msg {
                            role: m.role,
                            content: &m.content,
                        })
                        .collect(),
                ),
            ),
            (Endpoint::Completions, Prompt::Messages(ms)) => {
                joined = ms
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                (Some(PromptRef::Text(&joined)), None)
            }
        };
        let body = Body {
            model: &self.model,
            prompt,
            messages,
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            temperature: self.temperature,
            stream: self.stream,
            stream_options: self.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            extra: &self.extra,
        };
        // Serialising plain structs, strings, numbers and a JSON map cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// Per-request time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (applied by [`build_client`]).
    pub connect: Duration,
    /// Send to the first output event (response headers included).
    pub first_token: Duration,
    /// Send to the end of the response.
    pub request: Duration,
}

impl Timeouts {
    /// The per-request time limits of `[prober]`.
    pub fn from_config(p: &crate::config::prober::ProberConfig) -> Self {
        Self {
            connect: p.connect_timeout,
            first_token: p.first_token_timeout,
            request: p.request_timeout,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(60),
            request: Duration::from_secs(300),
        }
    }
}

/// How a request ended. [`Outcome::as_str`] is the `outcome` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A complete, successful response.
    Ok,
    /// Rejected because the prompt (or prompt + output) exceeds the context length.
    ContextLength,
    /// Another 4xx (or an unexpected non-2xx status below 400).
    ClientError,
    /// 429.
    RateLimited,
    /// 503 (vLLM's "overloaded" / not ready).
    Overloaded,
    /// Another 5xx.
    ServerError,
    /// Connection refused or reset before a response, DNS failure.
    Connect,
    /// TCP connect took longer than `Timeouts::connect`.
    TimeoutConnect,
    /// No output event within `Timeouts::first_token`.
    TimeoutFirstToken,
    /// The response did not finish within `Timeouts::request`.
    TimeoutRequest,
    /// An error event inside a 200 stream.
    StreamError,
    /// The stream ended without `[DONE]` or a finish reason, mid-line, or was reset mid-stream.
    Truncated,
    /// An event that is not the expected JSON, or a response over the byte cap.
    Malformed,
    /// A 200 response that carried no generated output (no token-bearing event and no
    /// `usage.completion_tokens`, e.g. only `data: [DONE]`) although `max_tokens` ≥ 1.
    Empty,
    /// The prober shut down while the request was in flight.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 15] = [
        Outcome::Ok,
        Outcome::ContextLength,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::Overloaded,
        Outcome::ServerError,
        Outcome::Connect,
        Outcome::TimeoutConnect,
        Outcome::TimeoutFirstToken,
        Outcome::TimeoutRequest,
        Outcome::StreamError,
        Outcome::Truncated,
        Outcome::Malformed,
        Outcome::Empty,
        Outcome::Cancelled,
    ];

    /// The `outcome` label value (docs/metrics.md).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ContextLength => "context_length",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overloaded => "overloaded",
            Outcome::ServerError => "server_error",
            Outcome::Connect => "connect",
            Outcome::TimeoutConnect => "timeout_connect",
            Outcome::TimeoutFirstToken => "timeout_first_token",
            Outcome::TimeoutRequest => "timeout_request",
            Outcome::StreamError => "stream_error",
            Outcome::Truncated => "truncated",
            Outcome::Malformed => "malformed",
            Outcome::Empty => "empty",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome of a non-2xx response, from its status and (parsed) error body.
    pub fn from_status(status: u16, error: Option<&ErrorInfo>) -> Outcome {
        match status {
            400 | 413 | 422 if error.is_some_and(ErrorInfo::is_context_length) => {
                Outcome::ContextLength
            }
            429 => Outcome::RateLimited,
            503 => Outcome::Overloaded,
            500..=599 => Outcome::ServerError,
            _ => Outcome::ClientError,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The measurement of one request: plain data, sent to the aggregator.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub outcome: Outcome,
    /// Status of the response, when headers arrived.
    pub http_status: Option<u16>,
    /// Actual send time − intended start (zero in a closed loop).
    pub schedule_lag: Duration,
    /// `CLOCK_MONOTONIC` ns at the actual send (to line up with server-side stamps).
    pub sent_ns: u64,
    /// Intended start to response headers.
    pub ttfb: Option<Duration>,
    /// Intended start to the first output-carrying event (streaming only).
    pub ttft: Option<Duration>,
    /// Gaps between consecutive output-carrying events (at most [`MAX_ITL_SAMPLES`]).
    pub itl: Vec<Duration>,
    /// (last output − first output) / (completion_tokens − 1); needs `usage` and ≥ 2 tokens.
    pub tpot: Option<Duration>,
    /// Intended start to the end of the response (or to the failure).
    pub e2e: Duration,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u32>,
    /// `usage.completion_tokens`.
    pub output_tokens: Option<u32>,
    /// Output-carrying events received (a chunk is not always one token).
    pub output_events: u32,
    /// The last `finish_reason` seen.
    pub finish_reason: Option<String>,
    /// A short description of the failure (never a secret, never more than ~200 characters).
    pub error: Option<String>,
    /// Body bytes read.
    pub response_bytes: u64,
}

impl RequestRecord {
    /// An empty record of a request meant to start at `intended_ns` and sent at `sent_ns`
    /// (also used by the tap, which measures users' requests into the same record).
    pub(crate) fn new(intended_ns: u64, sent_ns: u64) -> Self {
        Self {
            outcome: Outcome::Ok,
            http_status: None,
            schedule_lag: Duration::from_nanos(sent_ns.saturating_sub(intended_ns)),
            sent_ns,
            ttfb: None,
            ttft: None,
            itl: Vec::new(),
            tpot: None,
            e2e: Duration::ZERO,
            prompt_tokens: None,
            output_tokens: None,
            output_events: 0,
            finish_reason: None,
            error: None,
            response_bytes: 0,
        }
    }
}

/// Sees every event of a streamed response as it arrives (for the overhead benchmark, which
/// compares receive times with the server's own send stamps). `()` ignores them.
pub trait ChunkObserver {
    /// `recv_ns`: the event's receive time on `CLOCK_MONOTONIC`; `data`: its raw data.
    fn on_event(&mut self, recv_ns: u64, data: &[u8]);
}

impl ChunkObserver for () {
    #[inline]
    fn on_event(&mut self, _: u64, _: &[u8]) {}
}

/// Where and how to send: the connection-level settings of a target.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    pub client: &'a ProbeClient,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8000`.
    pub base_url: &'a str,
    /// The whole `Authorization` header value (`Bearer <key>`, or `Basic …` from credentials
    /// in the target URL); never logged.
    pub authorization: Option<&'a str>,
    pub timeouts: &'a Timeouts,
    /// Cancelling it ends the request as [`Outcome::Cancelled`].
    pub cancel: Option<&'a CancellationToken>,
    /// The most body bytes read from one response; more is [`Outcome::Malformed`].
    pub max_response_bytes: u64,
}

impl std::fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("base_url", &self.base_url)
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("timeouts", &self.timeouts)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

pub use crate::config::prober::DEFAULT_MAX_RESPONSE_BYTES;
/// Cap on the bytes of one SSE event (vLLM's are well under 1 KiB, a few KiB with logprobs).
const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Cap on the ITL gaps kept for one request (1 MiB), however many events a server sends; the
/// events beyond it are still counted in `output_events`.
pub const MAX_ITL_SAMPLES: usize = 65_536;
/// Cap on the bytes kept of a non-2xx body.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// The HTTP clients of one target's probes: the prober's own HTTP/1.1 client for plain
/// `http://` base URLs (one idle pool per base URL), and reqwest for `https://` and for the
/// small JSON calls around the probes (`/v1/models`, `/tokenize`, `/health`). Cheap to clone.
#[derive(Clone)]
pub struct ProbeClient {
    http: reqwest::Client,
    own: bool,
    connect_timeout: Duration,
    max_idle: usize,
    pools: Arc<std::sync::Mutex<Vec<PoolEntry>>>,
}

/// A base URL and its pool of the own HTTP/1.1 client.
type PoolEntry = (String, Arc<http1::Pool>);

impl std::fmt::Debug for ProbeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeClient")
            .field("own_http1", &self.own)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl ProbeClient {
    /// reqwest, for the calls that are not probes.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same client sending probes through reqwest (hyper) even to `http://` targets: the
    /// reference the overhead benchmark compares the own client with.
    pub fn with_reqwest_probes(mut self) -> Self {
        self.own = false;
        self
    }

    /// Whether probes to `http://` targets use the own HTTP/1.1 client.
    pub fn own_http1(&self) -> bool {
        self.own
    }

    /// The own client's pool for `base_url`, or `None` to use reqwest.
    fn pool(&self, base_url: &str) -> Option<Arc<http1::Pool>> {
        if !self.own {
            return None;
        }
        let mut pools = self.pools.lock().ok()?;
        if let Some((_, p)) = pools.iter().find(|(u, _)| u == base_url) {
            return Some(p.clone());
        }
        let origin = http1::Origin::parse(base_url)?;
        let pool = Arc::new(http1::Pool::new(
            origin,
            self.connect_timeout,
            IDLE_TIMEOUT,
            self.max_idle,
            USER_AGENT,
        ));
        pools.push((base_url.to_string(), pool.clone()));
        Some(pool)
    }
}

const USER_AGENT: &str = concat!("vllm-sentinel/", env!("CARGO_PKG_VERSION"));
/// An idle kept-alive connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A client for one target: HTTP/1.1, `TCP_NODELAY`, no proxy, no redirects, no retries, no
/// response decompression (probes ask for none), an idle pool of `pool_size` connections, and
/// `timeouts.connect` on connect.
pub fn build_client(timeouts: &Timeouts, pool_size: usize) -> reqwest::Result<ProbeClient> {
    let http = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .no_gzip()
        .pool_max_idle_per_host(pool_size.max(1))
        .pool_idle_timeout(IDLE_TIMEOUT)
        .connect_timeout(timeouts.connect)
        .user_agent(USER_AGENT)
        .build()?;
    Ok(ProbeClient {
        http,
        own: true,
        connect_timeout: timeouts.connect,
        max_idle: pool_size.max(1),
        pools: Arc::default(),
    })
}

/// A response from either transport.
enum Response<'p> {
    Own(http1::Response<'p>),
    Reqwest {
        resp: reqwest::Response,
        held: bytes::Bytes,
    },
}

impl Response<'_> {
    fn status(&self) -> u16 {
        match self {
            Response::Own(r) => r.status(),
            Response::Reqwest { resp, .. } => resp.status().as_u16(),
        }
    }

    fn is_event_stream(&self) -> bool {
        let ct = match self {
            Response::Own(r) => r.content_type(),
            Response::Reqwest { resp, .. } => resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        };
        ct.is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
    }

    /// The next body bytes and the time of the read that brought them. A body cut short is
    /// [`Outcome::Truncated`]; broken chunked framing is [`Outcome::Malformed`].
    async fn chunk(&mut self) -> Result<Option<(&[u8], u64)>, (Outcome, String)> {
        match self {
            Response::Own(r) => r.chunk().await.map_err(|e| {
                let o = match e {
                    http1::BodyError::BadChunk(_) => Outcome::Malformed,
                    _ => Outcome::Truncated,
                };
                (o, e.to_string())
            }),
            Response::Reqwest { resp, held } => match resp.chunk().await {
                Ok(Some(b)) => {
                    let ns = monotonic_ns();
                    *held = b;
                    Ok(Some((&held[..], ns)))
                }
                Ok(None) => Ok(None),
                Err(e) => Err((Outcome::Truncated, error_chain(&e))),
            },
        }
    }
}

/// Sends `req` and measures it. See the module doc for what each figure means.
pub async fn execute(
    client: &ProbeClient,
    base_url: &str,
    api_key: Option<&str>,
    req: &ProbeRequest,
    timeouts: &Timeouts,
    intended_start: Instant,
) -> RequestRecord {
    let authorization = api_key.map(|k| format!("Bearer {k}"));
    let conn = Conn {
        client,
        base_url,
        authorization: authorization.as_deref(),
        timeouts,
        cancel: None,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
    };
    execute_with(&conn, req, intended_start, &mut ()).await
}

/// [`execute`] with cancellation, a byte cap and an event observer.
///
/// Phases: [`send_request`] (to the response headers), then one of [`read_error_body`] (a
/// non-2xx status), [`read_json_body`] (a whole JSON answer) or [`read_stream`] (SSE). Every
/// wait in every phase goes through [`Limits::race`], the one deadline and cancel path.
pub async fn execute_with<O: ChunkObserver>(
    conn: &Conn<'_>,
    req: &ProbeRequest,
    intended_start: Instant,
    observer: &mut O,
) -> RequestRecord {
    // Shared, not copied, when the reqwest path takes it.
    let body = bytes::Bytes::from(req.body());
    let sent_instant = Instant::now();
    let sent_ns = monotonic_ns();
    let behind = sent_instant.saturating_duration_since(intended_start);
    let intended_ns = sent_ns.saturating_sub(behind.as_nanos() as u64);
    let mut rec = RequestRecord::new(intended_ns, sent_ns);

    let Ok(bearer) = bearer_header(conn.authorization) else {
        rec.outcome = Outcome::ClientError;
        rec.error = Some("the API key is not a valid header value".into());
        return rec;
    };
    let pool = conn.client.pool(conn.base_url);

    let t = conn.timeouts;
    let first_limit = t.first_token.min(t.request);
    let sleep =
        tokio::time::sleep_until(tokio::time::Instant::from_std(sent_instant + first_limit));
    tokio::pin!(sleep);
    let never = CancellationToken::new();
    let cancelled = conn.cancel.unwrap_or(&never).cancelled();
    tokio::pin!(cancelled);
    let mut limits = Limits {
        sleep,
        cancelled,
        in_request: t.request <= t.first_token,
        request_deadline: tokio::time::Instant::from_std(sent_instant + t.request),
    };

    let sending = send_request(conn, pool.as_deref(), req, &body, bearer, limits.in_request);
    let mut resp = match limits.race(sending).await {
        Ok(Ok(r)) => r,
        Ok(Err((outcome, msg))) => {
            return finish(rec, outcome, Some(&msg), since(intended_ns, monotonic_ns()));
        }
        Err(stop) => {
            let (outcome, msg) = stop.failure(Waiting::Headers);
            return finish(rec, outcome, Some(msg), since(intended_ns, monotonic_ns()));
        }
    };
    let headers_ns = match &resp {
        Response::Own(r) => r.head_ns(),
        Response::Reqwest { .. } => monotonic_ns(),
    };
    rec.ttfb = Some(since(intended_ns, headers_ns));
    let status = resp.status();
    rec.http_status = Some(status);

    if !(200..300).contains(&status) {
        return read_error_body(rec, &mut resp, &mut limits, status, intended_ns).await;
    }
    if !resp.is_event_stream() {
        let probe = Probe {
            conn,
            req,
            intended_ns,
        };
        return read_json_body(rec, &mut resp, &mut limits, &probe).await;
    }
    let probe = Probe {
        conn,
        req,
        intended_ns,
    };
    read_stream(rec, &mut resp, &mut limits, &probe, observer).await
}

/// What the body phases need of the request being measured.
#[derive(Clone, Copy)]
struct Probe<'c, 'a> {
    conn: &'c Conn<'a>,
    req: &'c ProbeRequest,
    /// The intended start, on [`monotonic_ns`]'s clock: latencies are measured from it.
    intended_ns: u64,
}

/// The time from the intended start (`intended_ns`) to `ns`.
fn since(intended_ns: u64, ns: u64) -> Duration {
    Duration::from_nanos(ns.saturating_sub(intended_ns))
}

/// The `Authorization` value, as given (for our HTTP/1.1 client) and as a sensitive header (for
/// reqwest); `Err` when it is not a valid header value.
fn bearer_header(authorization: Option<&str>) -> Result<Option<(&str, HeaderValue)>, ()> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let mut v = HeaderValue::from_str(value).map_err(|_| ())?;
    v.set_sensitive(true);
    Ok(Some((value, v)))
}

/// Why a phase stopped waiting before its own work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The request's cancel token (shutdown grace over).
    Cancelled,
    /// The deadline in force passed: the first-token one, or (`in_request`) the whole request's.
    Timeout { in_request: bool },
}

/// What a phase was waiting for, for the message of a [`Stop`].
#[derive(Debug, Clone, Copy)]
enum Waiting {
    Headers,
    Body,
    Stream,
}

impl Stop {
    /// The outcome and message of a request that stopped while `waiting`.
    fn failure(self, waiting: Waiting) -> (Outcome, &'static str) {
        let outcome = match self {
            Stop::Cancelled => Outcome::Cancelled,
            Stop::Timeout { in_request: true } => Outcome::TimeoutRequest,
            Stop::Timeout { in_request: false } => Outcome::TimeoutFirstToken,
        };
        let message = match (self, waiting) {
            (Stop::Cancelled, Waiting::Headers) => "shutdown before response headers",
            (Stop::Cancelled, Waiting::Body) => "shutdown mid-response",
            (Stop::Cancelled, Waiting::Stream) => "shutdown mid-stream",
            (Stop::Timeout { .. }, Waiting::Headers) => "no response headers in time",
            (Stop::Timeout { .. }, Waiting::Body) => "response not complete in time",
            (Stop::Timeout { in_request: true }, Waiting::Stream) => "stream not complete in time",
            (Stop::Timeout { in_request: false }, Waiting::Stream) => "no output event in time",
        };
        (outcome, message)
    }
}

/// One request's deadline and cancellation: until the first output event the first-token
/// deadline is in force (or the request deadline, when it is the earlier), then the whole
/// request's.
struct Limits<'a, 'c> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    cancelled: Pin<&'a mut WaitForCancellationFuture<'c>>,
    /// Whether the request deadline (not the first-token one) is in force.
    in_request: bool,
    request_deadline: tokio::time::Instant,
}

impl Limits<'_, '_> {
    /// Runs `fut` until it ends, the request is cancelled, or the deadline in force passes,
    /// whichever is first (cancellation checked first, then the deadline).
    async fn race<F: Future>(&mut self, fut: F) -> Result<F::Output, Stop> {
        let in_request = self.in_request;
        tokio::select! {
            biased;
            _ = self.cancelled.as_mut() => Err(Stop::Cancelled),
            _ = self.sleep.as_mut() => Err(Stop::Timeout { in_request }),
            v = fut => Ok(v),
        }
    }

    /// The first output has come: from now on only the request deadline applies.
    fn enter_request_phase(&mut self) {
        if !self.in_request {
            self.in_request = true;
            self.sleep.as_mut().reset(self.request_deadline);
        }
    }
}

/// Phase 1: sends the request on our HTTP/1.1 client (`pool`) or reqwest, up to the response
/// headers. `in_request` classifies a reqwest timeout.
async fn send_request<'p>(
    conn: &Conn<'_>,
    pool: Option<&'p http1::Pool>,
    req: &ProbeRequest,
    body: &bytes::Bytes,
    bearer: Option<(&str, HeaderValue)>,
    in_request: bool,
) -> Result<Response<'p>, (Outcome, String)> {
    if let Some(pool) = pool {
        let head = http1::RequestHead {
            path: req.endpoint.path(),
            authorization: bearer.as_ref().map(|(k, _)| *k),
        };
        return pool.send(head, body).await.map(Response::Own).map_err(|e| {
            let outcome = match e {
                http1::SendError::ConnectTimeout(_) => Outcome::TimeoutConnect,
                http1::SendError::BadHead(_) => Outcome::Malformed,
                _ => Outcome::Connect,
            };
            (outcome, event::short(&e.to_string()))
        });
    }
    let url = format!("{}{}", conn.base_url, req.endpoint.path());
    let mut builder = conn
        .client
        .http
        .post(&url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body.clone());
    if let Some((_, v)) = bearer {
        builder = builder.header(AUTHORIZATION, v);
    }
    match builder.send().await {
        Ok(resp) => Ok(Response::Reqwest {
            resp,
            held: bytes::Bytes::new(),
        }),
        Err(e) => {
            let outcome = if e.is_connect() && e.is_timeout() {
                Outcome::TimeoutConnect
            } else if e.is_timeout() && in_request {
                Outcome::TimeoutRequest
            } else if e.is_timeout() {
                Outcome::TimeoutFirstToken
            } else {
                Outcome::Connect
            };
            Err((outcome, error_chain(&e)))
        }
    }
}

/// Phase 2a: a non-2xx status. Reads (a capped part of) the error body, until it ends, the
/// cap, cancellation or the deadline, and classifies the answer.
async fn read_error_body(
    mut rec: RequestRecord,
    resp: &mut Response<'_>,
    limits: &mut Limits<'_, '_>,
    status: u16,
    intended_ns: u64,
) -> RequestRecord {
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Ok(Some((b, _)))) = limits.race(resp.chunk()).await {
        rec.response_bytes += b.len() as u64;
        let room = (MAX_ERROR_BODY as usize).saturating_sub(buf.len());
        buf.extend_from_slice(&b[..b.len().min(room)]);
        if rec.response_bytes >= MAX_ERROR_BODY {
            break;
        }
    }
    let info = event::parse_error_body(&buf);
    let outcome = Outcome::from_status(status, info.as_ref());
    let msg = match &info {
        Some(i) => format!("HTTP {status}: {}", event::short(&i.message)),
        None => format!(
            "HTTP {status}: {}",
            event::short(String::from_utf8_lossy(&buf).trim())
        ),
    };
    finish(rec, outcome, Some(&msg), since(intended_ns, monotonic_ns()))
}

/// Phase 2b: a whole JSON body (stream off, or a server that ignored `stream`). The
/// first-token deadline passing while it arrives only puts the request deadline in force.
async fn read_json_body(
    mut rec: RequestRecord,
    resp: &mut Response<'_>,
    limits: &mut Limits<'_, '_>,
    probe: &Probe<'_, '_>,
) -> RequestRecord {
    let Probe { conn, req, .. } = *probe;
    let mut buf: Vec<u8> = Vec::new();
    let mut failure = None;
    loop {
        match limits.race(resp.chunk()).await {
            Err(Stop::Timeout { in_request: false }) => limits.enter_request_phase(),
            Err(stop) => {
                let (o, m) = stop.failure(Waiting::Body);
                failure = Some((o, m.to_string()));
                break;
            }
            Ok(Ok(Some((b, _)))) => {
                rec.response_bytes += b.len() as u64;
                if rec.response_bytes > conn.max_response_bytes {
                    failure = Some((Outcome::Malformed, too_large(conn)));
                    break;
                }
                buf.extend_from_slice(b);
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
        }
    }
    let end = since(probe.intended_ns, monotonic_ns());
    if let Some((o, m)) = failure {
        return finish(rec, o, Some(&m), end);
    }
    match event::parse(&buf) {
        Err(e) => finish(rec, Outcome::Malformed, Some(&e.0), end),
        Ok(ev) => {
            rec.prompt_tokens = ev.prompt_tokens;
            rec.output_tokens = ev.completion_tokens;
            rec.finish_reason = ev.finish_reason;
            if let Some(err) = ev.error {
                let m = format!("error in a 200 response: {}", event::short(&err.message));
                return finish(rec, Outcome::StreamError, Some(&m), end);
            }
            rec.output_events = u32::from(ev.content);
            if is_empty(req, &rec) {
                return finish(rec, Outcome::Empty, Some(EMPTY_MESSAGE), end);
            }
            finish(rec, Outcome::Ok, None, end)
        }
    }
}

fn too_large(conn: &Conn<'_>) -> String {
    format!("response larger than {} bytes", conn.max_response_bytes)
}

/// Phase 2c: the SSE stream, event by event, to its end or its first failure; then the
/// stream's verdict ([`stream_verdict`]).
async fn read_stream<O: ChunkObserver>(
    mut rec: RequestRecord,
    resp: &mut Response<'_>,
    limits: &mut Limits<'_, '_>,
    probe: &Probe<'_, '_>,
    observer: &mut O,
) -> RequestRecord {
    let conn = probe.conn;
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut st = StreamState::default();
    let mut failure: Option<(Outcome, String)> = None;
    let mut end_ns = 0u64;
    loop {
        let (bytes, recv_ns) = match limits.race(resp.chunk()).await {
            Err(stop) => {
                let (o, m) = stop.failure(Waiting::Stream);
                failure = Some((o, m.to_string()));
                break;
            }
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Ok(Ok(None)) => {
                end_ns = monotonic_ns();
                let cut = parser.finish(&mut |data, ns| st.on_event(data, ns, observer, &mut rec));
                if let Some(f) = st.failure.take() {
                    failure = Some(f);
                } else if cut && !st.done {
                    failure = Some((
                        Outcome::Truncated,
                        "stream ended in the middle of a line".into(),
                    ));
                }
                break;
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        rec.response_bytes += bytes.len() as u64;
        if rec.response_bytes > conn.max_response_bytes {
            failure = Some((Outcome::Malformed, too_large(conn)));
            break;
        }
        let had_first = st.first_ns.is_some();
        let fed = parser.feed(bytes, recv_ns, &mut |data, ns| {
            st.on_event(data, ns, observer, &mut rec)
        });
        match fed {
            Err(SseError::TooLong) => {
                failure = Some((
                    Outcome::Malformed,
                    format!("an SSE event longer than {MAX_EVENT_BYTES} bytes"),
                ));
                break;
            }
            Ok(false) => {
                if let Some(f) = st.failure.take() {
                    failure = Some(f);
                    break;
                }
            }
            Ok(true) => {}
        }
        if !had_first && st.first_ns.is_some() {
            limits.enter_request_phase();
        }
    }
    if end_ns == 0 {
        end_ns = monotonic_ns();
    }
    stream_verdict(rec, &st, probe, failure, end_ns)
}

/// The outcome of a read stream: its failure if any, else `truncated` without a finish reason
/// or `[DONE]`, `empty` without output, else `ok`. E2E ends at `[DONE]` when there is one (the
/// close of the body follows it), else at `end_ns`.
fn stream_verdict(
    rec: RequestRecord,
    st: &StreamState,
    probe: &Probe<'_, '_>,
    failure: Option<(Outcome, String)>,
    end_ns: u64,
) -> RequestRecord {
    let Probe {
        req, intended_ns, ..
    } = *probe;
    let e2e = since(intended_ns, st.done_ns.unwrap_or(end_ns));
    if let Some((o, m)) = failure {
        return finish_stream(rec, st, o, Some(&m), e2e, intended_ns);
    }
    if !st.done && rec.finish_reason.is_none() {
        return finish_stream(
            rec,
            st,
            Outcome::Truncated,
            Some("stream ended without a finish reason or [DONE]"),
            e2e,
            intended_ns,
        );
    }
    if is_empty(req, &rec) {
        return finish_stream(
            rec,
            st,
            Outcome::Empty,
            Some(EMPTY_MESSAGE),
            e2e,
            intended_ns,
        );
    }
    finish_stream(rec, st, Outcome::Ok, None, e2e, intended_ns)
}

const EMPTY_MESSAGE: &str = "a 200 response with no generated output (no token-bearing event)";

/// A complete 200 answer is `empty` when output was asked for but none came: no event with
/// text, content, reasoning or a tool call, and no `usage.completion_tokens` above 0 (a model
/// whose first token is end-of-sequence reports one completion token with empty text).
fn is_empty(req: &ProbeRequest, rec: &RequestRecord) -> bool {
    req.max_tokens >= 1 && rec.output_events == 0 && rec.output_tokens.unwrap_or(0) == 0
}

/// The per-event classification of an SSE stream, shared with the tap ([`crate::tap`]) so a
/// user's stream and a probe's stream are judged by the same rules.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) first_ns: Option<u64>,
    pub(crate) last_ns: u64,
    pub(crate) done: bool,
    pub(crate) done_ns: Option<u64>,
    pub(crate) failure: Option<(Outcome, String)>,
}

impl StreamState {
    /// Handles one event; returns `false` to stop reading.
    #[inline]
    pub(crate) fn on_event<O: ChunkObserver>(
        &mut self,
        data: &[u8],
        ns: u64,
        observer: &mut O,
        rec: &mut RequestRecord,
    ) -> bool {
        observer.on_event(ns, data);
        if self.done {
            return true; // anything after [DONE] is ignored
        }
        if data == b"[DONE]" {
            self.done = true;
            self.done_ns = Some(ns);
            return true;
        }
        let ev = match event::parse(data) {
            Ok(ev) => ev,
            Err(e) => {
                self.failure = Some((Outcome::Malformed, format!("malformed event: {}", e.0)));
                return false;
            }
        };
        if let Some(err) = ev.error {
            self.failure = Some((
                Outcome::StreamError,
                format!("error event in the stream: {}", event::short(&err.message)),
            ));
            return false;
        }
        if ev.content {
            match self.first_ns {
                None => self.first_ns = Some(ns),
                Some(_) if rec.itl.len() < MAX_ITL_SAMPLES => rec
                    .itl
                    .push(Duration::from_nanos(ns.saturating_sub(self.last_ns))),
                Some(_) => {}
            }
            self.last_ns = ns;
            rec.output_events += 1;
        }
        if ev.finish_reason.is_some() {
            rec.finish_reason = ev.finish_reason;
        }
        if ev.prompt_tokens.is_some() {
            rec.prompt_tokens = ev.prompt_tokens;
        }
        if ev.completion_tokens.is_some() {
            rec.output_tokens = ev.completion_tokens;
        }
        true
    }
}

fn finish_stream(
    mut rec: RequestRecord,
    st: &StreamState,
    outcome: Outcome,
    error: Option<&str>,
    e2e: Duration,
    intended_ns: u64,
) -> RequestRecord {
    if let Some(first) = st.first_ns {
        rec.ttft = Some(Duration::from_nanos(first.saturating_sub(intended_ns)));
        if let Some(n) = rec.output_tokens
            && n >= 2
        {
            let span = st.last_ns.saturating_sub(first);
            rec.tpot = Some(Duration::from_nanos(span / u64::from(n - 1)));
        }
    }
    finish(rec, outcome, error, e2e)
}

fn finish(
    mut rec: RequestRecord,
    outcome: Outcome,
    error: Option<&str>,
    e2e: Duration,
) -> RequestRecord {
    rec.outcome = outcome;
    rec.error = error.map(event::short);
    rec.e2e = e2e;
    rec
}

/// The error and its causes, without the URL (which could hold credentials), shortened for a
/// record.
fn error_chain(e: &reqwest::Error) -> String {
    event::short(&crate::errchain::reqwest(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(endpoint: Endpoint, prompt: Prompt) -> ProbeRequest {
        ProbeRequest {
            endpoint,
            model: "tiny".into(),
            prompt,
            max_tokens: 8,
            ignore_eos: true,
            temperature: Some(0.0),
            stream: true,
            extra: Default::default(),
        }
    }

    #[test]
    fn completions_body_with_token_ids() {
        let r = req(Endpoint::Completions, Prompt::TokenIds(vec![1, 2, 3]));
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["prompt"], serde_json::json!([1, 2, 3]));
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["max_tokens"], 8);
        assert!(v.get("messages").is_none());
    }

    #[test]
    fn message_histories_on_both_endpoints() {
        let ms = vec![
            ChatMessage {
                role: "user",
                content: "a b".into(),
            },
            ChatMessage {
                role: "assistant",
                content: "c".into(),
            },
            ChatMessage {
                role: "user",
                content: "d".into(),
            },
        ];
        let r = req(Endpoint::Chat, Prompt::Messages(ms.clone()));
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(
            v["messages"],
            serde_json::json!([
                {"role": "user", "content": "a b"},
                {"role": "assistant", "content": "c"},
                {"role": "user", "content": "d"}
            ])
        );
        let r = req(Endpoint::Completions, Prompt::Messages(ms));
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["prompt"], "a b\nc\nd");
        assert!(v.get("messages").is_none());
    }

    #[test]
    fn chat_body_and_extra_passthrough() {
        let mut r = req(Endpoint::Chat, Prompt::Text("hi".into()));
        r.stream = false;
        r.ignore_eos = false;
        r.extra.insert("top_k".into(), serde_json::json!(5));
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["top_k"], 5);
        assert!(v.get("stream_options").is_none());
        assert!(v.get("ignore_eos").is_none());
        assert!(v.get("prompt").is_none());
    }

    #[test]
    fn outcome_from_status() {
        let ctx = ErrorInfo {
            message: "This model's maximum context length is 2048 tokens.".into(),
            param: Some("input_tokens".into()),
            kind: None,
        };
        let other = ErrorInfo {
            message: "max_tokens must be at least 1".into(),
            param: Some("max_tokens".into()),
            kind: None,
        };
        assert_eq!(
            Outcome::from_status(400, Some(&ctx)),
            Outcome::ContextLength
        );
        assert_eq!(
            Outcome::from_status(400, Some(&other)),
            Outcome::ClientError
        );
        assert_eq!(Outcome::from_status(400, None), Outcome::ClientError);
        assert_eq!(Outcome::from_status(404, None), Outcome::ClientError);
        assert_eq!(Outcome::from_status(429, None), Outcome::RateLimited);
        assert_eq!(Outcome::from_status(503, None), Outcome::Overloaded);
        assert_eq!(Outcome::from_status(500, None), Outcome::ServerError);
        assert_eq!(Outcome::from_status(302, None), Outcome::ClientError);
    }

    #[test]
    fn labels_are_unique() {
        let mut s: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), Outcome::ALL.len());
    }
}
