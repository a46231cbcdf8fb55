//! The tap's Prometheus families (`vllm_sentinel_traffic_*`; names, labels and meaning:
//! docs/metrics.md, "Tap"). Same conventions as the probe families: base units, `_total`
//! counters, histograms; latency histograms hold successful requests only, failures go to
//! `failed_duration_seconds` by outcome.
//!
//! Label values are bounded: `target` (one), `model` (the upstream's `/v1/models` list, at most
//! [`super::models::MAX_MODELS`], else `other`), `endpoint` (2), `stream` (2), `outcome`
//! ([`TrafficOutcome::ALL`]), `source` (2), `result` and `kind` (fixed lists below).

use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Endpoint;
use crate::config::prober::Buckets;
use crate::prober::metrics::Hist;
use crate::prober::request::{Outcome, RequestRecord};

/// How a measured request through the tap ended: the prober's classification
/// ([`Outcome`], from the same functions), or one of the three endings only a proxy sees.
///
/// A tap-local enum rather than new [`Outcome`] variants: adding variants to `Outcome` would
/// add series to every probe workload (the prober pre-creates one per outcome) and values to
/// a label that dashboards and alerts enumerate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficOutcome {
    /// Classified exactly as a probe would be (`ok`, `context_length`, `client_error`,
    /// `rate_limited`, `overloaded`, `server_error`, `stream_error`, `truncated`, `malformed`).
    Classified(Outcome),
    /// The client went away before the response was complete; the upstream connection was
    /// dropped at once (vLLM aborts the request).
    ClientDisconnected,
    /// The upstream refused or reset the connection before a response (the client got a 502).
    UpstreamUnreachable,
    /// Upstream connect or response-header timeout (the client got a 504), or no body bytes
    /// within the idle timeout mid-response (the response was cut).
    UpstreamTimeout,
}

impl TrafficOutcome {
    /// Every outcome the tap can produce, in label order.
    pub const ALL: [TrafficOutcome; 12] = [
        TrafficOutcome::Classified(Outcome::Ok),
        TrafficOutcome::Classified(Outcome::ContextLength),
        TrafficOutcome::Classified(Outcome::ClientError),
        TrafficOutcome::Classified(Outcome::RateLimited),
        TrafficOutcome::Classified(Outcome::Overloaded),
        TrafficOutcome::Classified(Outcome::ServerError),
        TrafficOutcome::Classified(Outcome::StreamError),
        TrafficOutcome::Classified(Outcome::Truncated),
        TrafficOutcome::Classified(Outcome::Malformed),
        TrafficOutcome::ClientDisconnected,
        TrafficOutcome::UpstreamUnreachable,
        TrafficOutcome::UpstreamTimeout,
    ];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            // The probe-only outcomes cannot come out of the tap's classification; should one
            // ever be passed in, it keeps the prober's label value.
            TrafficOutcome::Classified(o) => o.as_str(),
            TrafficOutcome::ClientDisconnected => "client_disconnected",
            TrafficOutcome::UpstreamUnreachable => "upstream_unreachable",
            TrafficOutcome::UpstreamTimeout => "upstream_timeout",
        }
    }
}

impl EncodeLabelValue for TrafficOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// `target, model, endpoint, stream`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub target: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficOutcomeLabels {
    pub target: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: String,
    pub outcome: TrafficOutcome,
}

/// Output tokens by where the count comes from: `usage` (the server's) or `events`
/// (content-bearing events counted by the tap: an estimate; a stream without `usage`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub target: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: String,
    pub source: String,
}

/// `target, model, endpoint` (context-length ratio).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RatioLabels {
    pub target: String,
    pub model: String,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

/// Requests on routes that are passed through but not measured, by `result`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub target: String,
    pub result: String,
}

/// Upstream failures on any route, by `kind` (`unreachable`, `timeout`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub target: String,
    pub kind: String,
}

/// Buckets of the context-length ratio (requested tokens / max_model_len).
pub const RATIO_BUCKETS: [f64; 9] = [1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0];

type HFam<L> = Family<L, Histogram, Hist>;

/// Every tap family, registered once; cheap to clone.
#[derive(Debug, Clone)]
pub struct TrafficMetrics {
    pub requests: Family<TrafficOutcomeLabels, Counter>,
    pub ttft: HFam<TrafficLabels>,
    pub itl: HFam<TrafficLabels>,
    pub tpot: HFam<TrafficLabels>,
    pub e2e: HFam<TrafficLabels>,
    pub failed: HFam<TrafficOutcomeLabels>,
    pub prompt_tokens: Family<TrafficLabels, Counter>,
    pub output_tokens: Family<TokenLabels, Counter>,
    pub context_ratio: HFam<RatioLabels>,
    pub in_flight: Family<TargetLabels, Gauge>,
    pub passthrough: Family<PassLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub models_known: Family<TargetLabels, Gauge>,
}

/// What the tap learnt about one measured request.
#[derive(Debug, Clone)]
pub struct TrafficRecord {
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub outcome: TrafficOutcome,
    /// Latencies and tokens, in the prober's record (latencies count from the request's
    /// arrival at the tap).
    pub rec: RequestRecord,
    /// The output token count is the number of content-bearing events (no `usage` seen).
    pub tokens_estimated: bool,
    /// Requested tokens / max_model_len of a context-length rejection, when both were found.
    pub context_ratio: Option<f64>,
}

impl TrafficMetrics {
    /// Creates and registers every family (latency buckets from `[prober.buckets]`).
    pub fn register(registry: &mut Registry, b: &Buckets) -> Self {
        let m = Self {
            requests: Family::default(),
            ttft: Family::new_with_constructor(Hist(b.ttft.clone())),
            itl: Family::new_with_constructor(Hist(b.itl.clone())),
            tpot: Family::new_with_constructor(Hist(b.itl.clone())),
            e2e: Family::new_with_constructor(Hist(b.e2e.clone())),
            failed: Family::new_with_constructor(Hist(b.e2e.clone())),
            prompt_tokens: Family::default(),
            output_tokens: Family::default(),
            context_ratio: Family::new_with_constructor(Hist(RATIO_BUCKETS.to_vec())),
            in_flight: Family::default(),
            passthrough: Family::default(),
            upstream_errors: Family::default(),
            models_known: Family::default(),
        };
        let r = registry;
        r.register(
            "vllm_sentinel_traffic_requests",
            "Users' completions and chat requests through the tap, by outcome (the prober's classes plus client_disconnected, upstream_unreachable, upstream_timeout)",
            m.requests.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_ttft_seconds",
            "Tap: request arrival to the first SSE event carrying generated output (streamed, successful requests)",
            m.ttft.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_itl_seconds",
            "Tap: every gap between consecutive output-carrying SSE events (successful requests)",
            m.itl.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_tpot_seconds",
            "Tap: (e2e - ttft) / (output tokens - 1) per successful streamed request with at least 2 output tokens",
            m.tpot.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_e2e_seconds",
            "Tap: request arrival to the end of the response ([DONE] when streamed); successful requests",
            m.e2e.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_failed_duration_seconds",
            "Tap: request arrival to the failure, by outcome",
            m.failed.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_prompt_tokens",
            "Tap: prompt tokens of successful requests, from usage",
            m.prompt_tokens.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_output_tokens",
            "Tap: output tokens of successful requests, by source: usage, or events (a stream without usage: content-bearing events counted, an estimate)",
            m.output_tokens.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_context_length_ratio",
            "Tap: requested tokens / max_model_len of each context-length rejection, read from vLLM's error message",
            m.context_ratio.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_in_flight",
            "Tap: requests in flight (every route)",
            m.in_flight.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_passthrough_requests",
            "Tap: requests on routes that are forwarded but not measured, by result (status class 2xx..5xx, upstream_unreachable, upstream_timeout, client_disconnected, upgrade_refused)",
            m.passthrough.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_upstream_errors",
            "Tap: requests on any route that got no upstream response, by kind (unreachable: 502, timeout: 504)",
            m.upstream_errors.clone(),
        );
        r.register(
            "vllm_sentinel_traffic_models_known",
            "Tap: models read from the upstream's /v1/models (the allowed model label values besides other); 0 until the first read",
            m.models_known.clone(),
        );
        m
    }

    /// Writes one finished measured request.
    pub fn record(&self, target: &str, t: &TrafficRecord) {
        let stream = if t.stream { "true" } else { "false" };
        let l = TrafficLabels {
            target: target.to_string(),
            model: t.model.clone(),
            endpoint: t.endpoint,
            stream: stream.to_string(),
        };
        let ol = TrafficOutcomeLabels {
            target: target.to_string(),
            model: t.model.clone(),
            endpoint: t.endpoint,
            stream: stream.to_string(),
            outcome: t.outcome,
        };
        self.requests.get_or_create(&ol).inc();
        if let Some(r) = t.context_ratio {
            self.context_ratio
                .get_or_create(&RatioLabels {
                    target: target.to_string(),
                    model: t.model.clone(),
                    endpoint: t.endpoint,
                })
                .observe(r);
        }
        let rec = &t.rec;
        if t.outcome != TrafficOutcome::Classified(Outcome::Ok) {
            self.failed
                .get_or_create(&ol)
                .observe(rec.e2e.as_secs_f64());
            return;
        }
        if let Some(d) = rec.ttft {
            self.ttft.get_or_create(&l).observe(d.as_secs_f64());
        }
        if !rec.itl.is_empty() {
            let h = self.itl.get_or_create(&l);
            for g in &rec.itl {
                h.observe(g.as_secs_f64());
            }
        }
        if let Some(d) = rec.tpot {
            self.tpot.get_or_create(&l).observe(d.as_secs_f64());
        }
        self.e2e.get_or_create(&l).observe(rec.e2e.as_secs_f64());
        if let Some(n) = rec.prompt_tokens {
            self.prompt_tokens.get_or_create(&l).inc_by(u64::from(n));
        }
        if let Some(n) = rec.output_tokens {
            let source = if t.tokens_estimated {
                "events"
            } else {
                "usage"
            };
            self.output_tokens
                .get_or_create(&TokenLabels {
                    target: target.to_string(),
                    model: t.model.clone(),
                    endpoint: t.endpoint,
                    stream: stream.to_string(),
                    source: source.to_string(),
                })
                .inc_by(u64::from(n));
        }
    }

    /// Counts a request on an unmeasured route.
    pub fn passthrough(&self, target: &str, result: &str) {
        self.passthrough
            .get_or_create(&PassLabels {
                target: target.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a request that got no upstream response.
    pub fn upstream_error(&self, target: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                target: target.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// TPOT as the tap defines it: (e2e − ttft) / (output tokens − 1), for ≥ 2 tokens.
pub fn tpot(e2e: Duration, ttft: Duration, output_tokens: u32) -> Option<Duration> {
    if output_tokens < 2 || e2e < ttft {
        return None;
    }
    Some((e2e - ttft) / (output_tokens - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_are_unique_and_extend_the_probers() {
        let mut s: Vec<_> = TrafficOutcome::ALL.iter().map(|o| o.as_str()).collect();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), TrafficOutcome::ALL.len());
        assert_eq!(
            TrafficOutcome::Classified(Outcome::ContextLength).as_str(),
            "context_length"
        );
    }

    #[test]
    fn tpot_definition() {
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(tpot(d(100), d(10), 10), Some(d(10)));
        assert_eq!(tpot(d(100), d(10), 1), None);
        assert_eq!(tpot(d(5), d(10), 3), None);
    }
}
