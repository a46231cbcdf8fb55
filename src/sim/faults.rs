//! Deterministic fault injection: what to break, settable at start (flags) and at run time
//! (`POST /sim/faults` with this struct as JSON; `GET /sim/faults` reads it back).
//!
//! Every field defaults to "off". Request-level faults apply to `/v1/completions` and
//! `/v1/chat/completions` only. "Every Nth" counts those requests from 1 since the faults were
//! last set, so a test that sets `error_every: 3` knows requests 3, 6, 9… fail.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `/metrics` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MetricsFault {
    /// Serve normally.
    #[default]
    Ok,
    /// Answer 500.
    Error500,
    /// Answer 404.
    NotFound,
    /// Answer 200 with a body that is not valid exposition text.
    Garbled,
}

/// The fault settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// HTTP status of injected error responses (e.g. 500, 503, 429); 0 = never.
    pub error_status: u16,
    /// Fail every Nth generation request with `error_status` (0 = off).
    pub error_every: u32,
    /// Fail this fraction (0–1) of generation requests with `error_status`, drawn from a
    /// generator seeded with `--seed` (deterministic for a given request order).
    pub error_rate: f64,
    /// Delay before the response headers of generation requests.
    #[serde(with = "humantime_serde")]
    pub slow_headers: Option<Duration>,
    /// Extra delay before the first token (adds to TTFT).
    #[serde(with = "humantime_serde")]
    pub slow_first_token: Option<Duration>,
    /// Streams stall after this many tokens …
    pub stall_after_tokens: Option<u32>,
    /// … for this long (absent = until the client goes away or the server stops).
    #[serde(with = "humantime_serde")]
    pub stall_for: Option<Duration>,
    /// Streams are cut (connection closed, no `[DONE]`) after this many tokens.
    pub cut_after_tokens: Option<u32>,
    /// Streams send an in-stream error event after this many tokens, then `[DONE]`.
    pub error_event_after_tokens: Option<u32>,
    /// Streams send one malformed (non-JSON) event after this many tokens, then go on.
    pub malformed_after_tokens: Option<u32>,
    /// Every Nth token of a stream (N ≥ 1) is delayed by `spike_delay` (0 = off).
    pub spike_every_tokens: u32,
    /// Size of a latency spike.
    #[serde(with = "humantime_serde")]
    pub spike_delay: Option<Duration>,
    /// Which streams the stream faults (stall, cut, error event, malformed, spikes) hit:
    /// every Nth generation request (0 or 1 = all).
    pub stream_fault_every: u32,
    /// What `/metrics` does.
    pub metrics: MetricsFault,
    /// Overrides `max_model_len` (context-limit validation, `/v1/models`, `/tokenize`) while
    /// set; capped at the configured `--max-model-len`.
    pub max_model_len: Option<u32>,
}

impl Faults {
    /// Checks values; messages name the field.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.error_status != 0 && !(400..=599).contains(&self.error_status) {
            errs.push(format!(
                "error_status: must be 0 or an HTTP error status 400-599, got {}",
                self.error_status
            ));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            errs.push(format!(
                "error_rate: must be between 0 and 1, got {}",
                self.error_rate
            ));
        }
        if (self.error_every > 0 || self.error_rate > 0.0) && self.error_status == 0 {
            errs.push("error_status: must be set when error_every or error_rate is".into());
        }
        if self.max_model_len == Some(0) {
            errs.push("max_model_len: must be > 0".into());
        }
        if self.spike_every_tokens > 0 && self.spike_delay.is_none() {
            errs.push("spike_delay: must be set when spike_every_tokens is".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// True when request number `n` (1-based) gets an error response; `draw` is a uniform
    /// number in [0, 1) for the rate.
    pub fn error_for(&self, n: u64, draw: f64) -> Option<u16> {
        if self.error_status == 0 {
            return None;
        }
        let every = self.error_every > 0 && n.is_multiple_of(u64::from(self.error_every));
        let rate = self.error_rate > 0.0 && draw < self.error_rate;
        (every || rate).then_some(self.error_status)
    }

    /// True when request number `n` gets the stream faults.
    pub fn stream_faults_for(&self, n: u64) -> bool {
        self.stream_fault_every <= 1 || n.is_multiple_of(u64::from(self.stream_fault_every))
    }

    /// True when any stream fault is set.
    pub fn has_stream_faults(&self) -> bool {
        self.stall_after_tokens.is_some()
            || self.cut_after_tokens.is_some()
            || self.error_event_after_tokens.is_some()
            || self.malformed_after_tokens.is_some()
            || self.spike_every_tokens > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_with_durations() {
        let f: Faults = serde_json::from_str(
            r#"{"error_status":503,"error_every":3,"slow_headers":"200ms","metrics":"garbled"}"#,
        )
        .unwrap();
        assert_eq!(f.slow_headers, Some(Duration::from_millis(200)));
        assert_eq!(f.metrics, MetricsFault::Garbled);
        let back: Faults = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(serde_json::from_str::<Faults>(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn every_nth_is_deterministic() {
        let f = Faults {
            error_status: 500,
            error_every: 3,
            ..Faults::default()
        };
        let hits: Vec<u64> = (1..=9)
            .filter(|&n| f.error_for(n, 0.99).is_some())
            .collect();
        assert_eq!(hits, [3, 6, 9]);
        assert_eq!(Faults::default().error_for(3, 0.0), None);
    }

    #[test]
    fn validation_names_fields() {
        let f = Faults {
            error_status: 200,
            error_rate: 2.0,
            ..Faults::default()
        };
        let e = f.validate().unwrap_err();
        assert!(e.contains("error_status"), "{e}");
        assert!(e.contains("error_rate"), "{e}");
        assert!(Faults::default().validate().is_ok());
    }
}
