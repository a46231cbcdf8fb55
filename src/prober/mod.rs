//! The continuous prober: synthetic streaming traffic and its measurement.
//!
//! Submodules, one concern each:
//! [`request`] (the single-request engine, shared with the one-shot experiments),
//! [`http1`] (its own HTTP/1.1 client for plain-TCP targets), [`sse`] (the incremental SSE splitter), [`event`] (borrowed extraction from event JSON),
//! [`discovery`] (`/v1/models`, `/tokenize`), [`prompt`] (prompt construction),
//! [`metrics`] (families and per-workload handles), [`load`] (closed and open loops), [`canary`] (context-length canary),
//! [`health`] (self-health), [`target`] (one target's life).
//!
//! Task layout: one supervisor follows the configuration (reloads included) and runs one task
//! per target; a target task discovers the model, then runs one runner per workload (which
//! owns its closed-loop workers or open-loop scheduler) and the canary. Measuring tasks hand
//! plain-data [`request::RequestRecord`]s to [`metrics::WorkloadMetrics::record`].
//!
//! The prober's config sections (`[prober]`, workloads, canary) are plain data in
//! [`crate::config::prober`], re-exported here: the prober depends on the config, never the
//! other way round.

pub mod arrivals;
pub mod canary;
pub mod discovery;
pub mod event;
mod fastscan;
pub mod health;
pub mod http1;
pub mod labels;
pub mod load;
pub mod metrics;
pub mod prompt;
pub mod request;
pub mod sse;
pub mod target;

pub use crate::config::prober::{CanaryConfig, ProberConfig, WorkloadConfig};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use load::HealthCounters;
use metrics::ProberMetrics;
use target::{ReadyGroup, ReadyOnce, TargetDeps, TargetRun};

/// The prober's registered families and configuration, before its tasks start.
#[derive(Debug)]
pub struct Prober {
    metrics: ProberMetrics,
    window: std::time::Duration,
}

impl Prober {
    /// Registers the prober's families (with the configured buckets).
    pub fn new(
        cfg: &Config,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            metrics: ProberMetrics::register(registry, &cfg.prober.buckets),
            window: cfg.prober.saturation_window,
        })
    }

    /// The registered families (for tests and embedding).
    pub fn metrics(&self) -> &ProberMetrics {
        &self.metrics
    }

    /// Starts the supervisor and the self-health task on `ctx.tracker`.
    pub fn spawn(self, ctx: &crate::runtime::RunContext) {
        let slot = ctx.readiness.register("prober");
        if ctx.config.borrow().targets.is_empty() {
            slot.mark_ready();
        }
        let health = Arc::new(HealthCounters::default());
        health.late_threshold_ns.store(
            ctx.config
                .borrow()
                .prober
                .saturation_lag_threshold
                .as_nanos() as u64,
            Ordering::Relaxed,
        );
        ctx.tracker.spawn(health::run(
            self.metrics.clone(),
            health.clone(),
            self.window,
            ctx.token.clone(),
        ));
        let deps = TargetDeps {
            metrics: self.metrics,
            health,
            status: ctx.status.clone(),
            tracker: ctx.tracker.clone(),
            shutdown: ctx.token.clone(),
            abort: ctx.abort.clone(),
            readiness: ctx.readiness.clone(),
        };
        ctx.tracker.spawn(supervise(ctx.config.clone(), deps, slot));
    }
}

struct RunningTarget {
    tx: watch::Sender<Arc<TargetRun>>,
    stop: CancellationToken,
    run: Arc<TargetRun>,
}

/// Follows the configuration: starts, updates, restarts and stops target tasks.
async fn supervise(
    mut cfg_rx: watch::Receiver<Arc<Config>>,
    deps: TargetDeps,
    slot: crate::runtime::ReadySlot,
) {
    let initial = cfg_rx.borrow_and_update().clone();
    let group = ReadyGroup {
        pending: Arc::new(AtomicUsize::new(initial.targets.len())),
        slot: slot.clone(),
    };
    let mut first = true;
    let mut running: HashMap<String, RunningTarget> = HashMap::new();
    let mut cfg = initial;
    loop {
        deps.health.late_threshold_ns.store(
            cfg.prober.saturation_lag_threshold.as_nanos() as u64,
            Ordering::Relaxed,
        );
        let mut seen = Vec::new();
        for t in &cfg.targets {
            let label = t.label();
            seen.push(label.clone());
            let run = Arc::new(TargetRun {
                target: t.clone(),
                prober: cfg.prober.clone(),
            });
            if let Some(r) = running.get_mut(&label) {
                if r.run.restart_key() == run.restart_key() {
                    if r.run != run {
                        r.tx.send_replace(run.clone());
                        r.run = run;
                    }
                    continue;
                }
                tracing::info!(target = %label, "target connection settings changed; restarting its probes");
                r.stop.cancel();
                running.remove(&label);
            }
            let (tx, rx) = watch::channel(run.clone());
            let stop = CancellationToken::new();
            let ready = ReadyOnce(first.then(|| group.clone()));
            deps.tracker
                .spawn(target::run_target(rx, deps.clone(), stop.clone(), ready));
            running.insert(label, RunningTarget { tx, stop, run });
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(r) = running.remove(&k) {
                tracing::info!(target = %k, "target removed from the configuration; stopping its probes");
                r.stop.cancel();
                deps.metrics.target_removed(&k);
                deps.readiness.unblock(&target::readiness_key(&k));
            }
        }
        first = false;
        tokio::select! {
            _ = deps.shutdown.cancelled() => break,
            r = cfg_rx.changed() => {
                if r.is_err() { break; }
                cfg = cfg_rx.borrow_and_update().clone();
            }
        }
    }
    for (_, r) in running {
        r.stop.cancel();
    }
}
