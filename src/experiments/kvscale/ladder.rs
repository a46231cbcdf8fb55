//! The ladder (one held request per prompt length) and the boundary bisection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::args::KvScaleArgs;
use super::geometry::blocks_for;
use super::held::{HeldGroup, Watch, pause, wait_released};
use super::{ATTEMPTS, BACK_TO_BACK, MIN_HOLD_TOKENS, RELEASE_DEADLINE};
use crate::experiments::common;
use crate::experiments::engine::{
    CacheConfig, Outcome, RequestSpec, Sample, ServerSnapshot, Target,
};
use crate::experiments::report::{Boundary, KvScaleSection, LadderRung};

/// The KV usage of one held request, read from two bodies that show it running.
#[derive(Debug, Default, Clone)]
pub(super) struct Residency {
    pub(super) watch: Watch,
    /// Bodies read during the request's decode that show it running.
    pub(super) resident: Vec<ServerSnapshot>,
    /// Output events the client had received when the last resident body was read.
    pub(super) events_at_sample: u32,
}

/// Reads `/metrics` back to back while a one-request group runs, from the moment it is sent,
/// until two bodies show the request running past its prefill, or it ends. Past the prefill:
/// the body's `generation_tokens_total` moved since `before` (on a server without that counter:
/// the client had its first token). The client's own progress is not waited for: a loaded
/// vLLM can hand a whole stream to the client at once after the request has ended in the
/// engine, while its `/metrics` still shows the decode step by step. `None` when interrupted.
pub(super) async fn observe_resident<T: Target>(
    t: &Arc<T>,
    g: &mut HeldGroup,
    before: Option<&ServerSnapshot>,
    every: Duration,
    token: &CancellationToken,
) -> Option<Residency> {
    let mut r = Residency::default();
    loop {
        let at_send = g.state();
        if at_send.ended > 0 {
            return Some(r);
        }
        if let Ok(s) = t.metrics().await {
            r.watch.add(&s);
            let past_prefill = decoded_since(before, &s)
                || (s.generation_tokens_total.is_none() && at_send.started > 0);
            if s.running.is_some_and(|x| x >= 1.0) && past_prefill {
                r.events_at_sample = g.progress.first().map_or(0, |p| p.borrow().output_events);
                r.resident.push(s);
            }
        }
        r.watch.add_gpu(t.as_ref());
        if r.resident.len() >= 2 {
            return Some(r);
        }
        // Back to back while the request runs: the reads end after two resident bodies, and
        // a short request leaves little time. The interval paces only a server that answers
        // /metrics with an error.
        let gap = if r.watch.samples == 0 {
            every
        } else {
            BACK_TO_BACK
        };
        if !pause(gap, token).await {
            return None;
        }
    }
}

/// Whether `body` shows at least one token generated since `before`: it is of an engine step
/// after the held request's prefill (vLLM publishes `num_requests_running`,
/// `kv_cache_usage_perc` and `generation_tokens_total` from the same step), so it alone gives
/// a usage and a token count of one instant.
pub(super) fn decoded_since(before: Option<&ServerSnapshot>, body: &ServerSnapshot) -> bool {
    match (
        before.and_then(|b| b.generation_tokens_total),
        body.generation_tokens_total,
    ) {
        (Some(b), Some(g)) => g > b,
        _ => false,
    }
}

/// One rung of the ladder: the request held, read while resident (twice, or once past its
/// prefill when the stream ends sooner), closed, and its release checked. `None` when
/// interrupted.
pub(super) async fn ladder_rung<T: Target>(
    t: &Arc<T>,
    args: &KvScaleArgs,
    len: u32,
    max_model_len: Option<u32>,
    cache: Option<CacheConfig>,
    token: &CancellationToken,
) -> Option<LadderRung> {
    // All the context left, so the request cannot end before it is read; past the limit,
    // the flag's budget (the server must refuse it whatever it is).
    let room = max_model_len.map(|m| m.saturating_sub(len));
    let budget = match room {
        Some(r) if r >= 1 => r,
        _ => args.max_tokens,
    };
    let holdable = room.is_none_or(|r| r >= MIN_HOLD_TOKENS);
    let spec = RequestSpec {
        prompt_tokens: len,
        max_tokens: budget,
        stream: true,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = t.metrics().await.ok();
        let mut g = HeldGroup::start(t, vec![spec]);
        let res = if holdable {
            observe_resident(t, &mut g, before.as_ref(), args.sample_interval, token).await?
        } else {
            let mut w = Watch::default();
            if let Ok(s) = t.metrics().await {
                w.add(&s);
            }
            Residency {
                watch: w,
                ..Default::default()
            }
        };
        let closed_early = g.state().ended == 0;
        let s = if holdable {
            g.finish().await.pop().unwrap_or_default()
        } else {
            g.join().await.pop().unwrap_or_default()
        };
        let progressed = s.ttft_s.is_some() || s.output_tokens.is_some_and(|n| n > 0);
        let closed_early = closed_early && holdable;
        let released = if progressed && closed_early {
            Some(wait_released(t, before.as_ref(), args.sample_interval, token).await)
        } else {
            None
        };
        if token.is_cancelled() {
            return None;
        }
        let seen = res.resident.len() >= 2
            || res
                .resident
                .first()
                .is_some_and(|r| decoded_since(before.as_ref(), r));
        if holdable && progressed && !seen && attempts < ATTEMPTS {
            continue;
        }
        let note = if !progressed {
            None
        } else if !holdable {
            Some(format!(
                "KV usage not measured: only {} token(s) of context left, too few to hold the request resident (at least {MIN_HOLD_TOKENS})",
                room.unwrap_or(0)
            ))
        } else if !seen {
            Some(format!(
                "KV usage not measured: the stream ended before a /metrics body showed it running past its prefill ({attempts} attempts)"
            ))
        } else {
            None
        };
        return Some(rung_report(
            spec,
            &s,
            &res,
            before.as_ref(),
            cache,
            note,
            released,
            attempts,
        ));
    }
}

/// The report line of one rung.
#[allow(clippy::too_many_arguments)]
pub(super) fn rung_report(
    spec: RequestSpec,
    s: &Sample,
    res: &Residency,
    before: Option<&ServerSnapshot>,
    cache: Option<CacheConfig>,
    kv_note: Option<String>,
    released: Option<Option<f64>>,
    attempts: u32,
) -> LadderRung {
    let len = spec.prompt_tokens;
    // A stream that was closed after its first token was accepted: the server was generating.
    let feas = if s.outcome == Outcome::Cancelled && s.ttft_s.is_some() {
        "accepted"
    } else {
        feasibility(s, spec.max_tokens)
    };
    let kv_before = before.and_then(|b| b.kv_usage);
    let sample = res.resident.last().filter(|_| kv_note.is_none());
    let generated = sample.and_then(|x| {
        let g = x.generation_tokens_total?;
        let g0 = before.and_then(|b| b.generation_tokens_total)?;
        Some((g - g0).max(0.0) as u64)
    });
    let tokens = sample.map(|_| {
        let out = generated.unwrap_or(u64::from(res.events_at_sample));
        (u64::from(len) + out).saturating_sub(1)
    });
    let blocks = cache.zip(tokens).map(|(c, n)| blocks_for(n, c.block_size));
    let usable = cache.map(|c| c.usable_blocks().max(1) as f64);
    let expected = blocks.zip(usable).map(|(b, u)| b as f64 / u);
    let peak = sample.and_then(|x| x.kv_usage);
    let delta = peak.zip(kv_before).map(|(p, b)| (p - b).max(0.0));
    let within = delta
        .zip(expected)
        .zip(usable)
        .map(|((d, e), u)| (d - e).abs() <= 1.0 / u + 1e-9);
    let rejected = feas == "rejected";
    LadderRung {
        prompt_tokens_requested: len,
        prompt_tokens: s.prompt_tokens,
        max_tokens: spec.max_tokens,
        feasibility: feas.to_string(),
        status: s.status,
        reason: if s.ok() || feas == "accepted" {
            None
        } else {
            s.error_message.clone()
        },
        ttft_s: s.ttft_s,
        e2e_s: s.ok().then_some(s.e2e_s),
        output_tokens: s.output_tokens,
        finish_reason: s.finish_reason.clone(),
        kv_usage_before: kv_before,
        kv_usage_peak: if rejected { res.watch.kv_peak } else { peak },
        kv_usage_delta: if rejected {
            res.watch
                .kv_peak
                .zip(kv_before)
                .map(|(p, b)| (p - b).max(0.0))
        } else {
            delta
        },
        kv_blocks_expected: blocks,
        kv_usage_expected: expected,
        running_peak: res.watch.running_peak,
        metric_samples: res.watch.samples,
        resident_samples: res.resident.len(),
        kv_tokens_at_sample: tokens,
        kv_within_one_block: within,
        kv_note,
        released_after_close: released.map(|r| r.is_some()),
        release_s: released.flatten(),
        attempts,
        gpu_memory_used_bytes: res.watch.gpu_mem_peak,
        gpu_utilization_peak: res.watch.gpu_util_peak,
    }
}

pub(super) fn feasibility(s: &Sample, max_tokens: u32) -> &'static str {
    if s.ok() {
        let short = s.output_tokens.is_some_and(|o| o < max_tokens);
        if short && s.finish_reason.as_deref() == Some("length") {
            "clamped"
        } else {
            "accepted"
        }
    } else if s.status.is_some_and(|c| (400..500).contains(&c)) {
        "rejected"
    } else {
        "error"
    }
}

/// Notes on the ladder as a whole: rejections that did or did not touch the GPU, rungs whose
/// KV usage was not measured or was off by more than a block, requests not released.
pub(super) fn ladder_notes(k: &KvScaleSection, notes: &mut Vec<String>) {
    let rejected: Vec<&LadderRung> = k
        .ladder
        .iter()
        .filter(|r| r.feasibility == "rejected")
        .collect();
    if !rejected.is_empty() {
        let kv = rejected
            .iter()
            .filter_map(|r| r.kv_usage_delta)
            .fold(0.0, f64::max);
        let run = rejected
            .iter()
            .filter_map(|r| r.running_peak)
            .fold(0.0, f64::max);
        notes.push(format!(
            "{} rejected request(s): largest KV-usage change {:.2}%, largest running count {run}: {}",
            rejected.len(),
            kv * 100.0,
            if kv == 0.0 && run == 0.0 {
                "the server refused them before any GPU work"
            } else {
                "other requests were running at the same time, or the server did start work"
            }
        ));
    }

    let off: Vec<String> = k
        .ladder
        .iter()
        .filter(|r| r.kv_within_one_block == Some(false))
        .map(|r| {
            format!(
                "{} tokens: {:.2}% measured, {:.2}% expected",
                r.prompt_tokens_requested,
                r.kv_usage_delta.unwrap_or(0.0) * 100.0,
                r.kv_usage_expected.unwrap_or(0.0) * 100.0
            )
        })
        .collect();
    if !off.is_empty() {
        notes.push(format!(
            "KV usage differs from cache_config_info's expectation by more than one block (another request was running, or the server allocates differently): {}",
            off.join("; ")
        ));
    }
    let kept: Vec<String> = k
        .ladder
        .iter()
        .filter(|r| r.released_after_close == Some(false))
        .map(|r| r.prompt_tokens_requested.to_string())
        .collect();
    if !kept.is_empty() {
        notes.push(format!(
            "the server did not free the KV blocks of a closed stream within {}s (prompt lengths {}): it may not abort requests whose client went away",
            RELEASE_DEADLINE.as_secs(),
            kept.join(", ")
        ));
    }
}

/// Bisects for the longest accepted prompt (`max_tokens` 1). `Ok(None)` when interrupted.
pub(super) async fn boundary<T: Target>(
    t: &Arc<T>,
    k: &KvScaleSection,
    max_model_len: Option<u32>,
    token: &CancellationToken,
) -> anyhow::Result<Option<Boundary>> {
    let mut probes = 0usize;
    let mut reason = None;
    let mut probe = |len: u32| {
        probes += 1;
        let t = t.clone();
        async move {
            let spec = RequestSpec {
                prompt_tokens: len,
                max_tokens: 1,
                stream: false,
            };
            tokio::select! {
                s = t.execute(spec, Instant::now()) => Some(s),
                _ = token.cancelled() => None,
            }
        }
    };
    let accepted = |r: &&LadderRung| matches!(r.feasibility.as_str(), "accepted" | "clamped");
    let mut lo = k
        .ladder
        .iter()
        .filter(accepted)
        .map(|r| r.prompt_tokens_requested)
        .max();
    let mut hi = k
        .ladder
        .iter()
        .filter(|r| r.feasibility == "rejected")
        .map(|r| r.prompt_tokens_requested)
        .min();
    if let Some(r) = k
        .ladder
        .iter()
        .filter(|r| r.feasibility == "rejected")
        .min_by_key(|r| r.prompt_tokens_requested)
    {
        reason = r.reason.clone();
    }
    if lo.is_none() {
        let Some(s) = probe(1).await else {
            return Ok(None);
        };
        if !s.ok() {
            bail!(
                "even a 1-token prompt fails: {}",
                common::first_failure([&s])
            );
        }
        lo = Some(1);
    }
    if hi.is_none() {
        let h = max_model_len.unwrap_or(1 << 20).saturating_mul(2).max(2);
        let Some(s) = probe(h).await else {
            return Ok(None);
        };
        if s.ok() {
            bail!("a {h}-token prompt was accepted: no limit found below it");
        }
        reason = s.error_message.clone();
        hi = Some(h);
    }
    let (mut lo, mut hi) = (lo.unwrap_or(1), hi.unwrap_or(2));
    if lo >= hi {
        bail!("inconsistent answers: {lo} tokens accepted but {hi} rejected");
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let Some(s) = probe(mid).await else {
            return Ok(None);
        };
        if s.ok() {
            lo = mid;
        } else if s.status.is_some_and(|c| (400..500).contains(&c)) {
            hi = mid;
            reason = s.error_message.clone();
        } else {
            bail!("prompt of {mid} tokens: {}", common::first_failure([&s]));
        }
    }
    Ok(Some(Boundary {
        max_accepted_prompt_tokens: lo,
        min_rejected_prompt_tokens: hi,
        probes,
        consistent_with_max_model_len: max_model_len.map(|m| lo.saturating_add(1) == m),
        rejection_reason: reason,
    }))
}
