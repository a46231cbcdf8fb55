//! The prober's Prometheus families (names and labels: docs/metrics.md, "Prober") and the
//! per-workload handles that request records are written into.
//!
//! # Why records go straight into pre-resolved handles, not through an aggregator task
//! Every measuring task produces a plain-data [`RequestRecord`]; exactly one function,
//! [`WorkloadMetrics::record`], turns it into series. The handles it writes to are resolved
//! once per (target, model, workload, endpoint) when a workload starts, so recording is a few
//! uncontended mutex/atomic operations on memory the task already holds: no label hashing, no
//! family lock, no channel hop, no second task to wake per request (at 1,000 streams an
//! aggregator task would add a cross-thread wake-up per finished request and a copy of every
//! ITL list through a bounded queue, and a full queue would have to either block measuring
//! tasks, which distorts timing, or drop records, which loses data). The cost of this path is
//! part of the client CPU per token measured in docs/bench-prober.md.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::labels::FinishReason;
use super::request::{Outcome, RequestRecord};
use crate::config::Endpoint;
use crate::config::prober::Buckets;

/// `target, model, workload, endpoint`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub target: String,
    pub model: String,
    pub workload: String,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub target: String,
    pub model: String,
    pub workload: String,
    pub endpoint: Endpoint,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub target: String,
    pub model: String,
    pub workload: String,
    pub endpoint: Endpoint,
    pub reason: FinishReason,
}

/// `target, workload` (schedule lag, dropped arrivals).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub target: String,
    pub workload: String,
}

/// `target, workload, turn` (multi-turn workloads: `1` … `7`, `8+`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TurnLabels {
    pub target: String,
    pub workload: String,
    pub turn: String,
}

/// `target` (discovery state).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

/// `target, reason` (discovery failures).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetReasonLabels {
    pub target: String,
    pub reason: String,
}

/// `target, model` (canary).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub target: String,
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryProbeLabels {
    pub target: String,
    pub model: String,
    pub probe: String,
    pub result: String,
}

/// Builds histograms with configured buckets.
#[derive(Debug, Clone)]
pub struct Hist(pub Vec<f64>);

impl MetricConstructor<Histogram> for Hist {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type HFam<L> = Family<L, Histogram, Hist>;
type FGauge = Gauge<f64, AtomicU64>;

/// Every prober family, registered once; cheap to clone (families are shared).
#[derive(Debug, Clone)]
pub struct ProberMetrics {
    pub requests: Family<OutcomeLabels, Counter>,
    pub ttfb: HFam<ProbeLabels>,
    pub ttft: HFam<ProbeLabels>,
    pub itl: HFam<ProbeLabels>,
    pub tpot: HFam<ProbeLabels>,
    pub e2e: HFam<ProbeLabels>,
    pub failed: HFam<OutcomeLabels>,
    pub prompt_tokens: Family<ProbeLabels, Counter>,
    pub output_tokens: Family<ProbeLabels, Counter>,
    pub finish_reasons: Family<ReasonLabels, Counter>,
    pub in_flight: Family<ProbeLabels, Gauge>,
    pub target_concurrency: Family<ProbeLabels, Gauge>,
    pub target_rate: Family<ProbeLabels, FGauge>,
    pub schedule_lag: HFam<WorkloadLabels>,
    pub dropped: Family<WorkloadLabels, Counter>,
    pub turn_ttft: HFam<TurnLabels>,
    pub canary_max_model_len: Family<CanaryLabels, Gauge>,
    pub canary_max_served: Family<CanaryLabels, Gauge>,
    pub canary_honoured: Family<CanaryLabels, Gauge>,
    pub canary_probes: Family<CanaryProbeLabels, Counter>,
    pub runtime_lag: Histogram,
    pub saturated: Gauge,
    pub target_discovered: Family<TargetLabels, Gauge>,
    pub discovery_failures: Family<TargetReasonLabels, Counter>,
}

impl ProberMetrics {
    /// Creates and registers every family.
    pub fn register(registry: &mut Registry, b: &Buckets) -> Self {
        let m = Self {
            requests: Family::default(),
            ttfb: Family::new_with_constructor(Hist(b.ttft.clone())),
            ttft: Family::new_with_constructor(Hist(b.ttft.clone())),
            itl: Family::new_with_constructor(Hist(b.itl.clone())),
            tpot: Family::new_with_constructor(Hist(b.itl.clone())),
            e2e: Family::new_with_constructor(Hist(b.e2e.clone())),
            failed: Family::new_with_constructor(Hist(b.e2e.clone())),
            prompt_tokens: Family::default(),
            output_tokens: Family::default(),
            finish_reasons: Family::default(),
            in_flight: Family::default(),
            target_concurrency: Family::default(),
            target_rate: Family::default(),
            schedule_lag: Family::new_with_constructor(Hist(b.lag.clone())),
            dropped: Family::default(),
            turn_ttft: Family::new_with_constructor(Hist(b.ttft.clone())),
            canary_max_model_len: Family::default(),
            canary_max_served: Family::default(),
            canary_honoured: Family::default(),
            canary_probes: Family::default(),
            runtime_lag: Histogram::new(b.lag.iter().copied()),
            saturated: Gauge::default(),
            target_discovered: Family::default(),
            discovery_failures: Family::default(),
        };
        let r = registry;
        r.register(
            "vllm_sentinel_probe_requests",
            "Finished probe requests by outcome: ok or an error class",
            m.requests.clone(),
        );
        r.register(
            "vllm_sentinel_probe_ttfb_seconds",
            "Probe request sent (intended send time in the open loop) to response headers",
            m.ttfb.clone(),
        );
        r.register(
            "vllm_sentinel_probe_ttft_seconds",
            "Probe request sent (intended send time in the open loop) to the first SSE event carrying generated output: non-empty text, content, reasoning_content/reasoning or a tool call (role-only and empty events do not count); successful requests only",
            m.ttft.clone(),
        );
        r.register(
            "vllm_sentinel_probe_itl_seconds",
            "Every gap between consecutive output-carrying SSE events (one event may carry several tokens); successful requests only",
            m.itl.clone(),
        );
        r.register(
            "vllm_sentinel_probe_tpot_seconds",
            "Per request: (last output event time - first output event time) / (usage.completion_tokens - 1); successful requests only",
            m.tpot.clone(),
        );
        r.register(
            "vllm_sentinel_probe_e2e_seconds",
            "Probe request sent (intended send time in the open loop) to the end of the stream ([DONE]); successful requests only",
            m.e2e.clone(),
        );
        r.register(
            "vllm_sentinel_probe_failed_duration_seconds",
            "Latency of failed probe requests (send to failure), by outcome",
            m.failed.clone(),
        );
        r.register(
            "vllm_sentinel_probe_prompt_tokens",
            "Prompt tokens of successful probe requests (from usage)",
            m.prompt_tokens.clone(),
        );
        r.register(
            "vllm_sentinel_probe_output_tokens",
            "Completion tokens of successful probe requests (from usage)",
            m.output_tokens.clone(),
        );
        r.register(
            "vllm_sentinel_probe_finish_reasons",
            "Finish reasons of successful probe requests (stop, length, abort, other)",
            m.finish_reasons.clone(),
        );
        r.register(
            "vllm_sentinel_probe_in_flight",
            "Probe requests in flight",
            m.in_flight.clone(),
        );
        r.register(
            "vllm_sentinel_probe_target_concurrency",
            "Configured closed-loop concurrency (0 in the open loop)",
            m.target_concurrency.clone(),
        );
        r.register(
            "vllm_sentinel_probe_target_rate",
            "Configured open-loop rate in requests per second (0 in the closed loop)",
            m.target_rate.clone(),
        );
        r.register(
            "vllm_sentinel_probe_schedule_lag_seconds",
            "Open loop: actual send time minus intended send time",
            m.schedule_lag.clone(),
        );
        r.register(
            "vllm_sentinel_probe_dropped_arrivals",
            "Open-loop arrivals not sent because the in-flight cap was reached",
            m.dropped.clone(),
        );
        r.register(
            "vllm_sentinel_probe_turn_ttft_seconds",
            "Multi-turn workloads only: TTFT of successful streamed requests by turn of the chat session (1 to 7, later turns in 8+); the same requests are also in vllm_sentinel_probe_ttft_seconds",
            m.turn_ttft.clone(),
        );
        r.register(
            "vllm_sentinel_canary_max_model_len_tokens",
            "The context length the server advertises in /v1/models (max_model_len)",
            m.canary_max_model_len.clone(),
        );
        r.register(
            "vllm_sentinel_canary_max_prompt_served_tokens",
            "The largest prompt (tokens) seen served by the context-length canary",
            m.canary_max_served.clone(),
        );
        r.register(
            "vllm_sentinel_canary_limit_honoured",
            "1 when the inside probe is served and the over-limit probe is rejected as a context-length error",
            m.canary_honoured.clone(),
        );
        r.register(
            "vllm_sentinel_canary_probes",
            "Context-length canary probes by probe (inside, over) and result (served, rejected, error)",
            m.canary_probes.clone(),
        );
        r.register(
            "vllm_sentinel_prober_runtime_lag_seconds",
            "How late a 10 ms timer tick fires in the sidecar's async runtime",
            m.runtime_lag.clone(),
        );
        r.register(
            "vllm_sentinel_prober_saturated",
            "1 when the prober cannot keep up (late sends, dropped arrivals, runtime lag or CPU); its numbers are then not trustworthy",
            m.saturated.clone(),
        );
        r.register(
            "vllm_sentinel_target_discovered",
            "1 once model discovery (GET /v1/models) has succeeded and the target is probed; 0 from the moment it is configured until then",
            m.target_discovered.clone(),
        );
        r.register(
            "vllm_sentinel_target_discovery_failures",
            "Failed model discovery attempts by reason (connect, timeout, http_status, malformed, no_models, model_not_found, config)",
            m.discovery_failures.clone(),
        );
        m
    }

    /// A target's discovery series, created when it is configured: not discovered, and every
    /// failure reason at 0 (so alerts work from the first failure).
    pub fn target_configured(&self, target: &str) {
        self.target_discovered
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .set(0);
        for reason in super::discovery::FAILURE_REASONS {
            let _ = self.discovery_failures.get_or_create(&TargetReasonLabels {
                target: target.to_string(),
                reason: reason.to_string(),
            });
        }
    }

    /// Counts one failed discovery attempt.
    pub fn discovery_failed(&self, target: &str, reason: &str) {
        self.discovery_failures
            .get_or_create(&TargetReasonLabels {
                target: target.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets whether the target has been discovered.
    pub fn set_discovered(&self, target: &str, yes: bool) {
        self.target_discovered
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .set(i64::from(yes));
    }

    /// Drops a target's discovery series (the target left the configuration).
    pub fn target_removed(&self, target: &str) {
        self.target_discovered.remove(&TargetLabels {
            target: target.to_string(),
        });
        for reason in super::discovery::FAILURE_REASONS {
            self.discovery_failures.remove(&TargetReasonLabels {
                target: target.to_string(),
                reason: reason.to_string(),
            });
        }
    }

    /// The per-turn TTFT histograms of a multi-turn workload, index `turn - 1` (the last one
    /// holds every later turn), created at 0.
    pub fn turn_ttft(&self, target: &str, workload: &str) -> TurnTtft {
        let n = crate::workload::TURN_BUCKETS;
        TurnTtft(
            (1..=n)
                .map(|t| {
                    self.turn_ttft.get_or_create_owned(&TurnLabels {
                        target: target.to_string(),
                        workload: workload.to_string(),
                        turn: crate::workload::turn_bucket(t),
                    })
                })
                .collect(),
        )
    }

    /// Resolves the handles of one workload.
    pub fn workload(&self, l: &ProbeLabels) -> WorkloadMetrics {
        let outcome = |o: Outcome| OutcomeLabels {
            target: l.target.clone(),
            model: l.model.clone(),
            workload: l.workload.clone(),
            endpoint: l.endpoint,
            outcome: o,
        };
        let reason = |r: FinishReason| ReasonLabels {
            target: l.target.clone(),
            model: l.model.clone(),
            workload: l.workload.clone(),
            endpoint: l.endpoint,
            reason: r,
        };
        let wl = WorkloadLabels {
            target: l.target.clone(),
            workload: l.workload.clone(),
        };
        WorkloadMetrics {
            requests: Outcome::ALL.map(|o| self.requests.get_or_create_owned(&outcome(o))),
            failed_family: self.failed.clone(),
            failed_labels: Outcome::ALL.map(outcome),
            ttfb: self.ttfb.get_or_create_owned(l),
            ttft: self.ttft.get_or_create_owned(l),
            itl: self.itl.get_or_create_owned(l),
            tpot: self.tpot.get_or_create_owned(l),
            e2e: self.e2e.get_or_create_owned(l),
            prompt_tokens: self.prompt_tokens.get_or_create_owned(l),
            output_tokens: self.output_tokens.get_or_create_owned(l),
            finish: FinishReason::ALL.map(|r| self.finish_reasons.get_or_create_owned(&reason(r))),
            in_flight: self.in_flight.get_or_create_owned(l),
            target_concurrency: self.target_concurrency.get_or_create_owned(l),
            target_rate: self.target_rate.get_or_create_owned(l),
            schedule_lag: self.schedule_lag.get_or_create_owned(&wl),
            dropped: self.dropped.get_or_create_owned(&wl),
        }
    }
}

/// A multi-turn workload's TTFT histograms by turn (empty for other workloads).
#[derive(Debug, Clone, Default)]
pub struct TurnTtft(Vec<Histogram>);

impl TurnTtft {
    /// Records the TTFT of a successful request of turn `turn` (turns beyond the last bucket
    /// fold into it).
    pub fn record(&self, turn: u32, r: &RequestRecord) {
        if r.outcome != Outcome::Ok || self.0.is_empty() {
            return;
        }
        if let Some(t) = r.ttft {
            let i = (turn.max(1) as usize - 1).min(self.0.len() - 1);
            self.0[i].observe(t.as_secs_f64());
        }
    }
}

/// The handles one workload writes to.
#[derive(Debug, Clone)]
pub struct WorkloadMetrics {
    requests: [Counter; Outcome::ALL.len()],
    failed_family: HFam<OutcomeLabels>,
    failed_labels: [OutcomeLabels; Outcome::ALL.len()],
    ttfb: Histogram,
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    prompt_tokens: Counter,
    output_tokens: Counter,
    finish: [Counter; FinishReason::ALL.len()],
    pub in_flight: Gauge,
    pub target_concurrency: Gauge,
    pub target_rate: FGauge,
    pub schedule_lag: Histogram,
    pub dropped: Counter,
}

impl WorkloadMetrics {
    /// Writes one finished request into the series. Failed requests count by outcome and in
    /// the failed-duration histogram only, never in the success latency histograms.
    pub fn record(&self, r: &RequestRecord) {
        let i = Outcome::ALL
            .iter()
            .position(|o| *o == r.outcome)
            .unwrap_or(0);
        self.requests[i].inc();
        if r.outcome != Outcome::Ok {
            self.failed_family
                .get_or_create(&self.failed_labels[i])
                .observe(r.e2e.as_secs_f64());
            return;
        }
        if let Some(t) = r.ttfb {
            self.ttfb.observe(t.as_secs_f64());
        }
        if let Some(t) = r.ttft {
            self.ttft.observe(t.as_secs_f64());
        }
        for g in &r.itl {
            self.itl.observe(g.as_secs_f64());
        }
        if let Some(t) = r.tpot {
            self.tpot.observe(t.as_secs_f64());
        }
        self.e2e.observe(r.e2e.as_secs_f64());
        if let Some(n) = r.prompt_tokens {
            self.prompt_tokens.inc_by(u64::from(n));
        }
        if let Some(n) = r.output_tokens {
            self.output_tokens.inc_by(u64::from(n));
        }
        if let Some(reason) = &r.finish_reason {
            let f = FinishReason::from_wire(reason);
            // ALL lists every variant, so the position always exists.
            if let Some(k) = FinishReason::ALL.iter().position(|x| *x == f) {
                self.finish[k].inc();
            }
        }
    }
}
