//! Typed label values: the `outcome`, `endpoint` and `reason` (finish reason) labels are
//! enums encoded through client_rust's [`EncodeLabelValue`], so a label value can only be
//! one the docs list (docs/metrics.md), and the prober, the tap and the experiments cannot
//! drift apart by spelling a string differently.
//!
//! The encoding is written by hand rather than derived: the derive writes the Rust variant
//! name (`ContextLength`), while the exposition uses the snake_case values that dashboards and
//! alerts already select on (`context_length`).

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use super::request::Outcome;
use crate::config::Endpoint;

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The `reason` label of `vllm_sentinel_probe_finish_reasons_total`: the server's
/// `finish_reason`, folded into a bounded set (anything else is `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model stopped on its own (EOS or a stop string).
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// The server aborted the request.
    Abort,
    /// Any other value a server sends.
    Other,
}

impl FinishReason {
    /// Every value, in label order.
    pub const ALL: [FinishReason; 4] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
        FinishReason::Other,
    ];

    /// Folds a server's `finish_reason` into the bounded set.
    pub fn from_wire(s: &str) -> FinishReason {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "abort" => FinishReason::Abort,
            _ => FinishReason::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Other => "other",
        }
    }
}

impl EncodeLabelValue for FinishReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::*;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct L {
        outcome: Outcome,
        endpoint: Endpoint,
        reason: FinishReason,
    }

    #[test]
    fn typed_values_encode_as_their_snake_case_label_values() {
        let fam = Family::<L, Counter>::default();
        let mut reg = Registry::default();
        reg.register("t", "t", fam.clone());
        fam.get_or_create(&L {
            outcome: Outcome::TimeoutFirstToken,
            endpoint: Endpoint::Chat,
            reason: FinishReason::Length,
        })
        .inc();
        let mut out = String::new();
        encode(&mut out, &reg).expect("encodes");
        assert!(
            out.contains(
                r#"t_total{outcome="timeout_first_token",endpoint="chat",reason="length"} 1"#
            ),
            "{out}"
        );
    }

    #[test]
    fn unknown_finish_reasons_fold_into_other() {
        assert_eq!(FinishReason::from_wire("stop"), FinishReason::Stop);
        assert_eq!(FinishReason::from_wire("tool_calls"), FinishReason::Other);
        assert_eq!(FinishReason::from_wire(""), FinishReason::Other);
    }
}
