//! The concurrency × sequence-length grid.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::args::KvScaleArgs;
use super::held::{GroupState, HeldGroup, Watch, pause};
use super::{ATTEMPTS, BACK_TO_BACK};
use crate::experiments::engine::{RequestSpec, ServerSnapshot, Target};
use crate::experiments::report::GridCell;

/// The grid's verdict on one cell, from what was seen in known states.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct CellEvidence {
    /// A body read after every sequence started and before any ended showed all of them
    /// running and none waiting.
    pub(super) all_resident: bool,
    /// Two bodies, read while every running sequence was past its prefill and none had ended,
    /// with more than one engine step between them (the generation counter grew by more than
    /// the running count), both showed one waiting: it was not admitted in a step where the
    /// token budget was free, so the KV cache (or the sequence limit) kept it out.
    pub(super) one_waiting: bool,
    /// The last body that showed one waiting in that state: (started, generated, running).
    pub(super) pending: Option<(u32, f64, f64)>,
}

impl CellEvidence {
    pub(super) fn add(&mut self, c: u32, at_send: GroupState, s: &ServerSnapshot) {
        let running = s.running.unwrap_or(0.0);
        let waiting = s.waiting.unwrap_or(0.0);
        if at_send.ended > 0 {
            self.pending = None;
            return;
        }
        if at_send.started == c && running >= f64::from(c) && waiting == 0.0 {
            self.all_resident = true;
        }
        let candidate =
            at_send.started >= 1 && waiting >= 1.0 && running <= f64::from(at_send.started);
        match (candidate, s.generation_tokens_total) {
            (true, Some(generated)) => {
                if let Some((started, g0, r0)) = self.pending
                    && started == at_send.started
                    && generated - g0 > r0
                {
                    self.one_waiting = true;
                }
                if self
                    .pending
                    .is_none_or(|(started, _, _)| started != at_send.started)
                {
                    self.pending = Some((at_send.started, generated, running));
                }
            }
            _ => self.pending = None,
        }
    }
}

/// `fits`, `queues`, `undecided` or `failed` (see [`GridCell::verdict`]).
pub fn cell_verdict(
    c: u32,
    ok: usize,
    evidence_resident: bool,
    evidence_waiting: bool,
    preemptions: Option<f64>,
) -> &'static str {
    if preemptions.is_some_and(|p| p > 0.0) || evidence_waiting {
        "queues"
    } else if ok < c as usize {
        "failed"
    } else if evidence_resident {
        "fits"
    } else {
        "undecided"
    }
}

/// One grid cell: `c` sequences of the row's shape at once, watched until they end. `None`
/// when interrupted.
pub(super) async fn grid_cell<T: Target>(
    t: &Arc<T>,
    args: &KvScaleArgs,
    spec: RequestSpec,
    c: u32,
    token: &CancellationToken,
) -> Option<GridCell> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = t.metrics().await.ok();
        let pre0 = before.as_ref().and_then(|s| s.preemptions_total);
        let mut g = HeldGroup::start(t, vec![spec; c as usize]);
        let mut w = Watch::default();
        let mut ev = CellEvidence::default();
        loop {
            let at_send = g.state();
            if at_send.ended == g.len() {
                break;
            }
            if let Ok(s) = t.metrics().await {
                w.add(&s);
                ev.add(c, at_send, &s);
            }
            // Between the last prefill and the first end every body can decide the cell, and
            // that window may be only a few engine steps: read back to back there.
            let deciding = at_send.started == c && at_send.ended == 0 && !ev.all_resident;
            let gap = if deciding {
                BACK_TO_BACK
            } else {
                args.sample_interval
            };
            if !pause(gap, token).await {
                return None;
            }
        }
        let samples = g.join().await;
        let after = t.metrics().await.ok().and_then(|s| s.preemptions_total);
        let preemptions = after.zip(pre0).map(|(a, b)| (a - b).max(0.0));
        let ok = samples.iter().filter(|s| s.ok()).count();
        let verdict = cell_verdict(c, ok, ev.all_resident, ev.one_waiting, preemptions);
        if verdict == "undecided" && attempts < ATTEMPTS {
            continue;
        }
        return Some(GridCell {
            concurrency: c,
            fits: verdict == "fits",
            verdict: verdict.to_string(),
            attempts,
            running_peak: w.running_peak,
            waiting_peak: w.waiting_peak,
            preemptions,
            kv_usage_peak: w.kv_peak,
            ok,
            failed: samples.len() - ok,
        });
    }
}
