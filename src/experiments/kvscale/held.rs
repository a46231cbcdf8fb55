//! Streams held open while `/metrics` is read: the group, the gauges' peaks, the release.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RELEASE_DEADLINE;
use crate::experiments::engine::{
    Outcome, RequestSpec, Sample, ServerSnapshot, StreamProgress, Target,
};

/// Peaks of the server's gauges while something ran.
#[derive(Debug, Default, Clone)]
pub(super) struct Watch {
    pub(super) samples: usize,
    pub(super) kv_peak: Option<f64>,
    pub(super) running_peak: Option<f64>,
    pub(super) waiting_peak: Option<f64>,
    pub(super) gpu_mem_peak: Option<f64>,
    pub(super) gpu_util_peak: Option<f64>,
}

pub(super) fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Watch {
    pub(super) fn add(&mut self, s: &ServerSnapshot) {
        self.samples += 1;
        self.kv_peak = max_opt(self.kv_peak, s.kv_usage);
        self.running_peak = max_opt(self.running_peak, s.running);
        self.waiting_peak = max_opt(self.waiting_peak, s.waiting);
    }

    pub(super) fn add_gpu<T: Target>(&mut self, t: &T) {
        if let Ok(g) = t.gpu() {
            self.gpu_mem_peak = max_opt(self.gpu_mem_peak, Some(g.memory_used_bytes));
            self.gpu_util_peak = max_opt(self.gpu_util_peak, Some(g.utilization));
        }
    }
}

/// Streams sent together and held open ([`Target::stream_held`]), each on its own task so that
/// reading `/metrics` never delays them.
pub(super) struct HeldGroup {
    pub(super) progress: Vec<watch::Receiver<StreamProgress>>,
    pub(super) close: CancellationToken,
    pub(super) set: tokio::task::JoinSet<(usize, Sample)>,
}

/// How far a group has got when a sample is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupState {
    /// Streams past their first token.
    pub(super) started: u32,
    /// Streams that have ended.
    pub(super) ended: u32,
}

impl HeldGroup {
    pub(super) fn start<T: Target>(t: &Arc<T>, specs: Vec<RequestSpec>) -> Self {
        let close = CancellationToken::new();
        let mut set = tokio::task::JoinSet::new();
        let mut progress = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let (tx, rx) = watch::channel(StreamProgress::default());
            progress.push(rx);
            let (t, close) = (t.clone(), close.clone());
            set.spawn(async move { (i, t.stream_held(spec, tx, close).await) });
        }
        Self {
            progress,
            close,
            set,
        }
    }

    pub(super) fn state(&self) -> GroupState {
        let mut st = GroupState {
            started: 0,
            ended: 0,
        };
        for p in &self.progress {
            let p = *p.borrow();
            st.started += u32::from(p.started());
            st.ended += u32::from(p.ended);
        }
        st
    }

    pub(super) fn len(&self) -> u32 {
        self.progress.len() as u32
    }

    /// Closes every stream still open and collects the samples, in the order sent.
    pub(super) async fn finish(mut self) -> Vec<Sample> {
        self.close.cancel();
        self.join().await
    }

    /// Waits for every stream to end by itself and collects the samples.
    pub(super) async fn join(&mut self) -> Vec<Sample> {
        let mut out: Vec<Option<Sample>> = vec![None; self.progress.len()];
        while let Some(j) = self.set.join_next().await {
            match j {
                Ok((i, s)) => {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(s);
                    }
                }
                Err(e) => tracing::warn!("request task failed: {e}"),
            }
        }
        out.into_iter()
            .map(|s| {
                s.unwrap_or_else(|| Sample::failed(Outcome::ClientError, "request task failed"))
            })
            .collect()
    }
}

impl Drop for HeldGroup {
    fn drop(&mut self) {
        self.close.cancel();
    }
}

/// Sleeps `d`; `false` when interrupted first.
pub(super) async fn pause(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = token.cancelled() => false,
    }
}

/// Reads `/metrics` until the server shows nothing more running than `before` did, KV usage
/// back at its level, and no token generated between two reads: a closed stream's request
/// was aborted and its blocks freed. `Some(seconds)` when seen within [`RELEASE_DEADLINE`].
pub(super) async fn wait_released<T: Target>(
    t: &Arc<T>,
    before: Option<&ServerSnapshot>,
    every: Duration,
    token: &CancellationToken,
) -> Option<f64> {
    let started = Instant::now();
    let running0 = before.and_then(|b| b.running).unwrap_or(0.0);
    let kv0 = before.and_then(|b| b.kv_usage).unwrap_or(0.0);
    let mut last_gen: Option<Option<f64>> = None;
    while started.elapsed() < RELEASE_DEADLINE {
        if let Ok(s) = t.metrics().await {
            let idle = s.running.unwrap_or(0.0) <= running0 && s.kv_usage.unwrap_or(0.0) <= kv0;
            if idle && last_gen == Some(s.generation_tokens_total) {
                return Some(started.elapsed().as_secs_f64());
            }
            last_gen = idle.then_some(s.generation_tokens_total);
        }
        if !pause(every, token).await {
            return None;
        }
    }
    None
}
