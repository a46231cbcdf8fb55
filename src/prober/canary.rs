//! The context-length canary: at a low rate, one prompt just inside the advertised
//! `max_model_len` (must be served) and one just over it (must be rejected as a context-length
//! error). Both ask for one output token; the over-limit probe is rejected by vLLM before any
//! GPU work, and the inside probe can be shortened or turned off where a full-length prefill is
//! too costly.
//!
//! `vllm_sentinel_canary_limit_honoured` is set to 1 when a round proves the limit (inside
//! served or not sent, over rejected as `context_length`) and to 0 when a round disproves it
//! (inside rejected as context-length, or over served); a round whose probes fail for another
//! reason (server down, timeouts) leaves it as it was and counts `result="error"`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;

use super::discovery;
use super::load::TargetShared;
use super::metrics::{CanaryLabels, CanaryProbeLabels, ProberMetrics};
use super::prompt::SharedPrefix;
use super::request::{Endpoint, Outcome, ProbeRequest, RequestRecord, execute_with};
use crate::config::prober::CanaryConfig;

/// What one probe showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Served,
    Rejected,
    Error,
}

impl ProbeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Served => "served",
            ProbeResult::Rejected => "rejected",
            ProbeResult::Error => "error",
        }
    }
    fn of(r: &RequestRecord) -> Self {
        match r.outcome {
            Outcome::Ok => ProbeResult::Served,
            Outcome::ContextLength => ProbeResult::Rejected,
            _ => ProbeResult::Error,
        }
    }
}

/// The verdict of one round: `Some(true/false)` when proven, `None` when unknown.
pub fn verdict(inside: Option<ProbeResult>, over: ProbeResult) -> Option<bool> {
    match (inside, over) {
        (Some(ProbeResult::Rejected), _) | (_, ProbeResult::Served) => Some(false),
        (Some(ProbeResult::Error), _) | (_, ProbeResult::Error) => None,
        (None | Some(ProbeResult::Served), ProbeResult::Rejected) => Some(true),
    }
}

/// Runs canary rounds every `cfg.interval` until the target's shutdown token fires or `stop`
/// is cancelled. New canary settings arrive on `cfg_rx`.
pub async fn run(
    shared: Arc<TargetShared>,
    metrics: ProberMetrics,
    mut cfg_rx: watch::Receiver<CanaryConfig>,
    stop: tokio_util::sync::CancellationToken,
    mut max_model_len: Option<u32>,
) {
    let labels = CanaryLabels {
        target: shared.label.clone(),
        model: shared.model.clone(),
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut max_served: u32 = 0;
    loop {
        let cfg = cfg_rx.borrow_and_update().clone();
        if cfg.enabled {
            // Refresh the advertised limit (it changes when the server restarts).
            if let Ok(m) = discovery::discover_model(
                shared.client.http(),
                &shared.base_url,
                shared.authorization.as_ref().map(|s| s.expose()),
                Some(&shared.model),
                shared.timeouts.connect + Duration::from_secs(10),
            )
            .await
                && m.max_model_len.is_some()
            {
                max_model_len = m.max_model_len;
            }
            if let Some(limit) = max_model_len {
                metrics
                    .canary_max_model_len
                    .get_or_create(&labels)
                    .set(i64::from(limit));
                let inside = if cfg.inside && shared.prompts.has_vocab() && limit >= 2 {
                    let len = cfg
                        .inside_prompt_tokens
                        .unwrap_or(limit - 1)
                        .clamp(1, limit - 1);
                    let rec = probe(&shared, &mut rng, len).await;
                    let res = ProbeResult::of(&rec);
                    if res == ProbeResult::Served {
                        max_served = max_served.max(rec.prompt_tokens.unwrap_or(len));
                        metrics
                            .canary_max_served
                            .get_or_create(&labels)
                            .set(i64::from(max_served));
                    }
                    count(&metrics, &labels, "inside", res);
                    if rec.outcome == Outcome::Cancelled || shared.shutdown.is_cancelled() {
                        return;
                    }
                    Some(res)
                } else {
                    None
                };
                let over_len = limit.saturating_add(cfg.over_by.max(1));
                let rec = probe(&shared, &mut rng, over_len).await;
                if rec.outcome == Outcome::Cancelled {
                    return;
                }
                let over = ProbeResult::of(&rec);
                if over == ProbeResult::Served {
                    max_served = max_served.max(rec.prompt_tokens.unwrap_or(over_len));
                    metrics
                        .canary_max_served
                        .get_or_create(&labels)
                        .set(i64::from(max_served));
                }
                count(&metrics, &labels, "over", over);
                match verdict(inside, over) {
                    Some(v) => {
                        metrics
                            .canary_honoured
                            .get_or_create(&labels)
                            .set(i64::from(v));
                        if !v {
                            tracing::warn!(target = %shared.label, limit, ?inside, ?over, "the server does not honour its advertised context length");
                        }
                    }
                    None => {
                        tracing::debug!(target = %shared.label, ?inside, ?over, "canary round inconclusive")
                    }
                }
            }
        }
        let wait = tokio::time::sleep(cfg.interval);
        tokio::select! {
            _ = wait => {}
            _ = stop.cancelled() => return,
            _ = shared.shutdown.cancelled() => return,
            r = cfg_rx.changed() => if r.is_err() { return },
        }
    }
}

fn count(m: &ProberMetrics, l: &CanaryLabels, probe: &str, r: ProbeResult) {
    m.canary_probes
        .get_or_create(&CanaryProbeLabels {
            target: l.target.clone(),
            model: l.model.clone(),
            probe: probe.to_string(),
            result: r.as_str().to_string(),
        })
        .inc();
}

async fn probe(shared: &TargetShared, rng: &mut SmallRng, len: u32) -> RequestRecord {
    // Token ids when the server's tokenizer was reached (exact lengths). Otherwise text, one
    // word per token at least, so the over-limit probe is still over the limit.
    let prompt = shared
        .prompts
        .build(rng, Endpoint::Completions, len, &SharedPrefix::default());
    let req = ProbeRequest {
        endpoint: Endpoint::Completions,
        model: shared.model.clone(),
        prompt,
        max_tokens: 1,
        ignore_eos: false,
        temperature: None,
        stream: true,
        extra: Default::default(),
    };
    execute_with(&shared.conn(), &req, Instant::now(), &mut ()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProbeResult::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Some(Served), Rejected), Some(true));
        assert_eq!(verdict(None, Rejected), Some(true));
        assert_eq!(verdict(Some(Rejected), Rejected), Some(false));
        assert_eq!(verdict(Some(Served), Served), Some(false));
        assert_eq!(verdict(Some(Error), Rejected), None);
        assert_eq!(verdict(Some(Served), Error), None);
    }
}
