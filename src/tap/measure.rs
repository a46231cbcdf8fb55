//! Measurement of one user request as its bytes go through the tap: never alters them.
//!
//! * Request side: the proxy forwards the request body as it arrives and copies its first
//!   `tap.max_body_bytes` aside on the way; when the request ends, [`scan_request`] reads
//!   `model` and `stream` from that copy, even when it is cut (a huge prompt after `"model"` is
//!   fine; a `model` key only past the cut gives `other`). The copy holds prompt text: it is
//!   never logged, and is dropped with the request.
//! * Response side: [`Measure`] is fed every upstream body frame with its receive time, in the
//!   order it is forwarded. A `text/event-stream` 2xx goes through the prober's own SSE splitter
//!   and per-event classifier ([`crate::prober::request::StreamState`]); a JSON 2xx is held (up
//!   to the same cap) and read for `usage`; a non-2xx is held (64 KiB) and classified by
//!   [`Outcome::from_status`] on [`event::parse_error_body`], as a probe would be.
//!
//! Latencies count from the request's arrival at the tap: TTFT to the first content-bearing
//! event, ITL every gap between content-bearing events, E2E to `[DONE]` (or the end of the body),
//! TPOT = (E2E − TTFT) / (output tokens − 1). Output tokens come from `usage` when the response
//! has it; a stream without `usage` is counted by content-bearing events and flagged estimated.

use std::time::Duration;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::metrics::{TrafficOutcome, TrafficRecord, tpot};
use crate::config::Endpoint;
use crate::prober::event;
use crate::prober::request::{Outcome, RequestRecord, StreamState};
use crate::prober::sse::{SseError, SseParser};

/// The label of a model that is not in the upstream's list (or not known yet, or not found).
pub const OTHER_MODEL: &str = "other";
/// Cap on the bytes of one SSE event the measurement will assemble (as the prober's).
const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Cap on the bytes of a non-2xx body held to classify it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The measured endpoints.
pub fn endpoint_of(method: &http::Method, path: &str) -> Option<Endpoint> {
    if method != http::Method::POST {
        return None;
    }
    match path {
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/chat/completions" => Some(Endpoint::Chat),
        _ => None,
    }
}

/// What the tap reads from a request body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub stream: Option<bool>,
}

/// Reads the top-level `model` (a string) and `stream` (a bool) of a JSON object from a prefix
/// of it: keys are visited in order and the scan stops at the first error (the cut, or bad
/// JSON), keeping what it found before. Other values are skipped without being copied.
pub fn scan_request(prefix: &[u8]) -> RequestInfo {
    let mut found = RequestInfo::default();
    let mut de = serde_json::Deserializer::from_slice(prefix);
    let _ = Scan(&mut found).deserialize(&mut de);
    found
}

struct Scan<'a>(&'a mut RequestInfo);

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "model" => {
                    self.0.model = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::String(s) => Some(s),
                        _ => None,
                    }
                }
                "stream" => {
                    self.0.stream = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Bool(b) => Some(b),
                        _ => None,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Requested tokens / max_model_len of a context-length rejection, from vLLM's message:
/// "maximum context length is N tokens. However, your prompt contains at least M input tokens
/// … (parameter=input_tokens, value=M)" (0.32), or "… However, you requested M tokens …"
/// (older vLLM). `fallback_max` (the model's `max_model_len` from `/v1/models`) is used when the
/// message does not name the limit. A rejection for too many *characters*
/// (`parameter=input_text`) gives none: its value is not a token count.
pub fn context_ratio(message: &str, fallback_max: Option<u32>) -> Option<f64> {
    if message.contains("parameter=input_text") {
        return None;
    }
    let max = number_after(message, "maximum context length is ")
        .or(fallback_max.map(u64::from))
        .filter(|m| *m > 0)?;
    let requested = number_after(message, "parameter=input_tokens, value=")
        .or_else(|| number_after(message, "contains at least "))
        .or_else(|| number_after(message, "you requested "))?;
    Some(requested as f64 / max as f64)
}

fn number_after(s: &str, needle: &str) -> Option<u64> {
    let rest = &s[s.find(needle)? + needle.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

enum Mode {
    Sse {
        parser: SseParser,
        st: StreamState,
        /// The first failure; later events are forwarded but not looked at.
        failure: Option<Outcome>,
    },
    Json {
        buf: Vec<u8>,
        over: bool,
    },
    Error {
        buf: Vec<u8>,
    },
}

/// How a response ended, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The upstream body ended and all of it was handed to the client.
    Complete,
    /// The client went away first (the upstream connection was dropped).
    ClientGone,
    /// The upstream connection failed mid-body.
    UpstreamError,
    /// No upstream body bytes within the idle timeout.
    IdleTimeout,
}

/// The measurement of one response, fed frame by frame.
pub struct Measure {
    start_ns: u64,
    endpoint: Endpoint,
    status: u16,
    mode: Mode,
    rec: RequestRecord,
    max_hold: usize,
}

impl Measure {
    /// Starts measuring a response with `status` to a request that arrived at `start_ns`.
    pub fn new(
        start_ns: u64,
        headers_ns: u64,
        endpoint: Endpoint,
        status: u16,
        event_stream: bool,
        max_hold: usize,
    ) -> Self {
        let mut rec = RequestRecord::new(start_ns, start_ns);
        rec.http_status = Some(status);
        rec.ttfb = Some(Duration::from_nanos(headers_ns.saturating_sub(start_ns)));
        let mode = if !(200..300).contains(&status) {
            Mode::Error { buf: Vec::new() }
        } else if event_stream {
            Mode::Sse {
                parser: SseParser::new(MAX_EVENT_BYTES),
                st: StreamState::default(),
                failure: None,
            }
        } else {
            Mode::Json {
                buf: Vec::new(),
                over: false,
            }
        };
        Self {
            start_ns,
            endpoint,
            status,
            mode,
            rec,
            max_hold,
        }
    }

    /// One upstream body frame, received at `recv_ns` (forwarded as is by the caller).
    pub fn on_data(&mut self, data: &[u8], recv_ns: u64) {
        self.rec.response_bytes += data.len() as u64;
        match &mut self.mode {
            Mode::Error { buf } => {
                let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
            Mode::Json { buf, over } => {
                if *over {
                    return;
                }
                if buf.len() + data.len() > self.max_hold {
                    *over = true;
                    *buf = Vec::new();
                } else {
                    buf.extend_from_slice(data);
                }
            }
            Mode::Sse {
                parser,
                st,
                failure,
            } => {
                if failure.is_some() {
                    return;
                }
                let rec = &mut self.rec;
                let fed = parser.feed(data, recv_ns, &mut |d, ns| st.on_event(d, ns, &mut (), rec));
                match fed {
                    Err(SseError::TooLong) => *failure = Some(Outcome::Malformed),
                    Ok(false) => *failure = st.failure.take().map(|f| f.0),
                    Ok(true) => {}
                }
            }
        }
    }

    /// The measurement of the finished response. `model` is the label value already bounded.
    pub fn finish(
        mut self,
        end: End,
        end_ns: u64,
        info: RequestInfo,
        model: String,
        max_model_len: impl FnOnce() -> Option<u32>,
    ) -> TrafficRecord {
        let mut tokens_estimated = false;
        let mut context_ratio = None;
        let since = |ns: u64| Duration::from_nanos(ns.saturating_sub(self.start_ns));
        let mut e2e = since(end_ns);
        let event_stream = matches!(self.mode, Mode::Sse { .. });
        let mut outcome = match end {
            End::ClientGone => TrafficOutcome::ClientDisconnected,
            End::IdleTimeout => TrafficOutcome::UpstreamTimeout,
            End::UpstreamError => TrafficOutcome::Classified(Outcome::Truncated),
            End::Complete => TrafficOutcome::Classified(Outcome::Ok),
        };
        match &mut self.mode {
            Mode::Error { buf } => {
                let info = event::parse_error_body(buf);
                let o = Outcome::from_status(self.status, info.as_ref());
                if o == Outcome::ContextLength
                    && let Some(i) = &info
                {
                    context_ratio = context_ratio_of(&i.message, max_model_len);
                }
                if end == End::Complete {
                    outcome = TrafficOutcome::Classified(o);
                }
            }
            Mode::Json { buf, over } => {
                if end == End::Complete && !*over {
                    match event::parse(buf) {
                        Err(_) => outcome = TrafficOutcome::Classified(Outcome::Malformed),
                        Ok(ev) => {
                            self.rec.prompt_tokens = ev.prompt_tokens;
                            self.rec.output_tokens = ev.completion_tokens;
                            self.rec.finish_reason = ev.finish_reason;
                            self.rec.output_events = u32::from(ev.content);
                            if ev.error.is_some() {
                                outcome = TrafficOutcome::Classified(Outcome::StreamError);
                            }
                        }
                    }
                }
            }
            Mode::Sse {
                parser,
                st,
                failure,
            } => {
                if end == End::Complete && failure.is_none() {
                    let rec = &mut self.rec;
                    let cut = parser.finish(&mut |d, ns| st.on_event(d, ns, &mut (), rec));
                    if let Some(f) = st.failure.take() {
                        *failure = Some(f.0);
                    } else if !st.done && (cut || self.rec.finish_reason.is_none()) {
                        // Cut mid-line, or ended without [DONE] and without a finish reason.
                        *failure = Some(Outcome::Truncated);
                    }
                }
                if end == End::Complete
                    && let Some(f) = failure
                {
                    outcome = TrafficOutcome::Classified(*f);
                }
                if let Some(done) = st.done_ns {
                    e2e = since(done);
                }
                if let Some(first) = st.first_ns {
                    self.rec.ttft = Some(since(first));
                }
                if self.rec.output_tokens.is_none() && self.rec.output_events > 0 {
                    self.rec.output_tokens = Some(self.rec.output_events);
                    tokens_estimated = true;
                }
                if let (Some(ttft), Some(n)) = (self.rec.ttft, self.rec.output_tokens) {
                    self.rec.tpot = tpot(e2e, ttft, n);
                }
            }
        }
        if let TrafficOutcome::Classified(o) = outcome {
            self.rec.outcome = o;
        }
        self.rec.e2e = e2e;
        TrafficRecord {
            model,
            endpoint: self.endpoint,
            stream: info.stream.unwrap_or(event_stream),
            outcome,
            rec: self.rec,
            tokens_estimated,
            context_ratio,
        }
    }
}

fn context_ratio_of(message: &str, max_model_len: impl FnOnce() -> Option<u32>) -> Option<f64> {
    context_ratio(message, None).or_else(|| context_ratio(message, max_model_len()))
}

/// The record of a request that got no upstream response (502 / 504 / client gone first).
pub fn without_response(
    start_ns: u64,
    end_ns: u64,
    endpoint: Endpoint,
    info: RequestInfo,
    model: String,
    outcome: TrafficOutcome,
) -> TrafficRecord {
    let mut rec = RequestRecord::new(start_ns, start_ns);
    rec.e2e = Duration::from_nanos(end_ns.saturating_sub(start_ns));
    if let TrafficOutcome::Classified(o) = outcome {
        rec.outcome = o;
    }
    TrafficRecord {
        model,
        endpoint,
        stream: info.stream.unwrap_or(false),
        outcome,
        rec,
        tokens_estimated: false,
        context_ratio: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_model_and_stream_in_a_cut_prefix() {
        let body = br#"{"model":"tiny","stream":true,"prompt":"the license the license"#;
        assert_eq!(
            scan_request(body),
            RequestInfo {
                model: Some("tiny".into()),
                stream: Some(true)
            }
        );
        // model after the cut: not found
        let body = br#"{"prompt":"aaaaaaaa","model":"ti"#;
        assert_eq!(scan_request(body).model, None);
        // escaped key and value, nested objects skipped
        let body =
            br#"{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"mod\u0065l":"a\"b"}"#;
        assert_eq!(scan_request(body).model.as_deref(), Some("a\"b"));
        assert_eq!(scan_request(b"not json"), RequestInfo::default());
        assert_eq!(scan_request(b"[1,2]"), RequestInfo::default());
        assert_eq!(scan_request(br#"{"model":3}"#).model, None);
    }

    #[test]
    fn context_ratio_from_vllm_messages() {
        let m = "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=2049)";
        let r = context_ratio(m, None).unwrap();
        assert!((r - 2049.0 / 2048.0).abs() < 1e-12, "{r}");
        let old = "This model's maximum context length is 1000 tokens. However, you requested 3000 tokens (2900 in the messages, 100 in the completion).";
        assert_eq!(context_ratio(old, None), Some(3.0));
        let chars = "This model's maximum context length is 2048 tokens. However, your prompt contains 200000 characters (more than 100352 characters, which is the upper bound for 2048 input tokens). Please reduce the length of the input prompt. (parameter=input_text, value=200000)";
        assert_eq!(context_ratio(chars, None), None);
        let no_max = "your prompt contains at least 300 input tokens";
        assert_eq!(context_ratio(no_max, Some(100)), Some(3.0));
        assert_eq!(context_ratio(no_max, None), None);
    }
}
