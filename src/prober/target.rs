//! One target's life: read its key, build its client, discover its model (retrying with
//! backoff while it is down), calibrate prompts through its tokenizer, then run its workloads
//! and canary, applying new settings as they arrive.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::discovery;
use super::load::{HealthCounters, TargetShared, WorkloadSpec, run_workload};
use super::metrics::{ProbeLabels, ProberMetrics, WorkloadMetrics};
use super::prompt::{PromptBuilder, SharedPrefix};
use super::request::{Endpoint, build_client};
use crate::config::TargetConfig;
use crate::config::prober::{CanaryConfig, Load, ProberConfig, effective_workloads};
use crate::config::workload::SourceKind;
use crate::runtime::ReadySlot;
use crate::runtime::StatusBoard;
use crate::workload::Workload;

/// The settings a target task runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRun {
    pub target: TargetConfig,
    pub prober: ProberConfig,
}

impl TargetRun {
    /// Settings whose change needs a fresh client and a new discovery (the target task is
    /// restarted; series are not reset). Everything else is applied in place.
    pub fn restart_key(&self) -> impl PartialEq + use<> {
        let t = &self.target;
        let p = &self.prober;
        (
            t.url.clone(),
            t.model.clone(),
            t.api_key_env.clone(),
            t.api_key_file.clone(),
            (p.connect_timeout, p.first_token_timeout, p.request_timeout),
            p.max_response_bytes,
        )
    }
}

/// Marks the prober ready once every initial target has made its first discovery attempt.
#[derive(Debug, Clone)]
pub struct ReadyGroup {
    pub pending: Arc<AtomicUsize>,
    pub slot: ReadySlot,
}

/// One target's share of a [`ReadyGroup`]; [`ReadyOnce::done`] is idempotent.
#[derive(Debug, Default)]
pub struct ReadyOnce(pub Option<ReadyGroup>);

impl ReadyOnce {
    pub fn done(&mut self) {
        if let Some(g) = self.0.take()
            && g.pending.fetch_sub(1, Ordering::SeqCst) == 1
        {
            g.slot.mark_ready();
        }
    }
}

/// What a target task needs from the prober.
#[derive(Debug, Clone)]
pub struct TargetDeps {
    pub metrics: ProberMetrics,
    pub health: Arc<HealthCounters>,
    pub status: StatusBoard,
    pub tracker: TaskTracker,
    /// Shutdown started: no new request is started; in-flight ones go on.
    pub shutdown: CancellationToken,
    /// The shutdown grace is over: in-flight requests end as `cancelled`.
    pub abort: CancellationToken,
    /// `/readyz`: blocked while a target is not discovered.
    pub readiness: crate::runtime::Readiness,
}

/// The `/readyz` condition of a target not (yet) discovered.
pub fn readiness_key(label: &str) -> String {
    format!("target {label}")
}

/// Runs a target until `stop` (graceful) or shutdown.
pub async fn run_target(
    mut cfg_rx: watch::Receiver<Arc<TargetRun>>,
    deps: TargetDeps,
    stop: CancellationToken,
    mut ready: ReadyOnce,
) {
    let run = cfg_rx.borrow_and_update().clone();
    let t = &run.target;
    let label = t.label();
    let base_url = t.base_url();
    // Not discovered until proven otherwise: the series exist (at 0) and /readyz waits.
    deps.metrics.target_configured(&label);
    deps.readiness
        .block(readiness_key(&label), "model discovery not attempted yet");

    let authorization = match t.authorization() {
        Ok(k) => k,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(target = %label, error = %msg, "cannot read the API key; not probing this target");
            return not_probed(&deps, &label, msg, ready, stop).await;
        }
    };
    let timeouts = super::request::Timeouts::from_config(&run.prober);
    let pool: usize = effective_workloads(t)
        .iter()
        .map(|w| match w.load() {
            Load::Closed { concurrency } => concurrency as usize,
            Load::Open { .. } => w.max_in_flight.unwrap_or(run.prober.max_in_flight) as usize,
        })
        .sum::<usize>()
        + 2;
    let client = match build_client(&timeouts, pool) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot build an HTTP client: {e}");
            tracing::error!(target = %label, error = %msg);
            return not_probed(&deps, &label, msg, ready, stop).await;
        }
    };

    // Discovery, retried with backoff while the target is down.
    let discovery_timeout = timeouts.connect + Duration::from_secs(10);
    let discovering = Discovering {
        client: client.http(),
        base_url: &base_url,
        authorization: authorization.as_ref().map(|s| s.expose()),
        label: &label,
        timeout: discovery_timeout,
    };
    let Some((info, listed)) =
        discover(&discovering, t, &run.prober, &deps, &mut ready, &stop).await
    else {
        return;
    };
    ready.done();
    if deps.shutdown.is_cancelled() || stop.is_cancelled() {
        // Shutdown started while discovery was in flight: start nothing new.
        return;
    }
    mark_discovered(&deps, &label, &info);

    let prompts = calibrate_prompts(&discovering, t, &info.id).await;

    if let Some(limit) = info.max_model_len {
        warn_over_max_model_len(&label, t, &info, limit, &deps.metrics);
    }

    let shared = Arc::new(TargetShared {
        label: label.clone(),
        max_model_len: info.max_model_len,
        client,
        base_url,
        authorization,
        model: info.id.clone(),
        timeouts,
        max_response_bytes: run.prober.max_response_bytes,
        prompts,
        listed,
        shutdown: deps.shutdown.clone(),
        abort: deps.abort.clone(),
        health: deps.health.clone(),
        tracker: deps.tracker.clone(),
    });

    let (canary_tx, canary_rx) = watch::channel(t.canary.clone());
    let canary_stop = stop.child_token();
    deps.tracker.spawn(super::canary::run(
        shared.clone(),
        deps.metrics.clone(),
        canary_rx,
        canary_stop.clone(),
        info.max_model_len,
    ));

    follow_config(&shared, &deps, run, cfg_rx, &canary_tx, &stop).await;
    canary_stop.cancel();
}

/// A target that cannot be probed at all (its API key or its client): counted, shown and kept
/// not ready until the target is removed or the daemon stops.
async fn not_probed(
    deps: &TargetDeps,
    label: &str,
    msg: String,
    mut ready: ReadyOnce,
    stop: CancellationToken,
) {
    deps.metrics.discovery_failed(label, "config");
    deps.readiness
        .block(readiness_key(label), format!("not probed (config): {msg}"));
    deps.status.update(label, |s| s.last_error = Some(msg));
    ready.done();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = deps.shutdown.cancelled() => {}
    }
}

/// A discovered target: logged, counted, ready (as far as this target goes) and shown.
fn mark_discovered(deps: &TargetDeps, label: &str, info: &discovery::ModelInfo) {
    tracing::info!(target = %label, model = %info.id, max_model_len = ?info.max_model_len, "target discovered");
    deps.metrics.set_discovered(label, true);
    deps.readiness.unblock(&readiness_key(label));
    deps.status.update(label, |s| {
        s.model = Some(info.id.clone());
        s.last_error = None;
    });
}

/// Where and how a target's model is discovered.
struct Discovering<'a> {
    client: &'a reqwest::Client,
    base_url: &'a str,
    authorization: Option<&'a str>,
    label: &'a str,
    timeout: Duration,
}

/// Discovers the target's model, retrying with backoff while the target is down; `None` when
/// the target is removed or shutdown starts first. With it, every entry of the same
/// `/v1/models` read and its parent (the `lora` source's adapters).
async fn discover(
    d: &Discovering<'_>,
    t: &TargetConfig,
    prober: &ProberConfig,
    deps: &TargetDeps,
    ready: &mut ReadyOnce,
    stop: &CancellationToken,
) -> Option<(discovery::ModelInfo, Vec<crate::workload::lora::Listed>)> {
    let mut backoff = prober.discovery_retry_min;
    let mut attempts = 0u32;
    loop {
        match discovery::discover_listed(
            d.client,
            d.base_url,
            d.authorization,
            t.model.as_deref(),
            d.timeout,
        )
        .await
        {
            Ok(m) => return Some(m),
            Err(e) => {
                attempts += 1;
                let msg = format!("model discovery: {e}");
                deps.metrics.discovery_failed(d.label, e.reason());
                deps.readiness.block(
                    readiness_key(d.label),
                    format!("model discovery failed ({}): {e}", e.reason()),
                );
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(target = %d.label, error = %msg, retry_in = ?backoff, "target not ready; retrying");
                }
                deps.status.update(d.label, |s| s.last_error = Some(msg));
                ready.done();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return None,
                    _ = deps.shutdown.cancelled() => return None,
                }
                backoff = (backoff * 2).min(prober.discovery_retry_max);
            }
        }
    }
}

/// Warns about workloads whose prompts can exceed the server's `max_model_len`, and exports it.
fn warn_over_max_model_len(
    label: &str,
    t: &TargetConfig,
    info: &discovery::ModelInfo,
    limit: u32,
    metrics: &ProberMetrics,
) {
    for (i, w) in effective_workloads(t).iter().enumerate() {
        let longest = w.prompt_tokens.max().unwrap_or(u32::MAX);
        if u64::from(longest) + u64::from(w.max_tokens) > u64::from(limit) {
            tracing::warn!(
                target = %label,
                workload = %w.label(i),
                limit,
                "prompt_tokens + max_tokens can exceed the server's max_model_len; those requests will count as context_length"
            );
            if longest > limit.saturating_add(1) {
                tracing::warn!(
                    target = %label,
                    workload = %w.label(i),
                    limit,
                    longest,
                    "prompts longer than max_model_len + 1 are clamped to max_model_len + 1 tokens (they are rejected all the same)"
                );
            }
        }
    }
    metrics
        .canary_max_model_len
        .get_or_create(&super::metrics::CanaryLabels {
            target: label.to_string(),
            model: info.id.clone(),
        })
        .set(i64::from(limit));
}

struct RunningWorkload {
    endpoint: Endpoint,
    tx: watch::Sender<Arc<WorkloadSpec>>,
    stop: CancellationToken,
    metrics: WorkloadMetrics,
}

fn reconcile(
    shared: &Arc<TargetShared>,
    deps: &TargetDeps,
    run: &TargetRun,
    running: &mut HashMap<String, RunningWorkload>,
    stop: &CancellationToken,
) {
    let t = &run.target;
    let mut seen = Vec::new();
    for (i, w) in effective_workloads(t).into_iter().enumerate() {
        let label = w.label(i);
        let endpoint = w.endpoint.unwrap_or(t.endpoint);
        let shared_prefix = if w.shared_prefix_tokens > 0 {
            shared
                .prompts
                .shared_prefix(w.shared_prefix_tokens, seed_of(&label))
        } else {
            SharedPrefix::default()
        };
        let max_prompt_tokens = shared
            .max_model_len
            .map_or(crate::config::prober::MAX_TOKENS_CEILING, |l| {
                l.saturating_add(1)
            })
            .min(crate::config::prober::MAX_TOKENS_CEILING);
        let previous = running.get(&label).map(|r| r.tx.borrow().clone());
        let Some(workload) = build_source(shared, &label, &w, endpoint, previous.as_deref()) else {
            if let Some(old) = running.remove(&label) {
                retire(old);
            }
            continue;
        };
        let model_metrics = workload
            .as_ref()
            .map(|w| {
                w.adapters()
                    .iter()
                    .map(|a| {
                        let m = deps.metrics.workload(&ProbeLabels {
                            target: shared.label.clone(),
                            model: a.to_string(),
                            workload: label.clone(),
                            endpoint,
                        });
                        (a.clone(), m)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let turn_ttft = if w.source == SourceKind::MultiTurn {
            deps.metrics.turn_ttft(&shared.label, &label)
        } else {
            Default::default()
        };
        let spec = Arc::new(WorkloadSpec {
            workload,
            model_metrics,
            turn_ttft,
            max_prompt_tokens,
            max_in_flight: w.max_in_flight.unwrap_or(run.prober.max_in_flight),
            error_backoff: run.prober.error_backoff,
            label: label.clone(),
            endpoint,
            shared_prefix,
            cfg: w,
        });
        seen.push(label.clone());
        if let Some(r) = running.get(&label) {
            if r.endpoint == endpoint {
                r.tx.send_replace(spec);
                continue;
            }
            // A new endpoint means new series: stop the old runner, start a new one.
            if let Some(old) = running.remove(&label) {
                retire(old);
            }
        }
        let metrics = deps.metrics.workload(&ProbeLabels {
            target: shared.label.clone(),
            model: shared.model.clone(),
            workload: label.clone(),
            endpoint,
        });
        let (tx, rx) = watch::channel(spec);
        let wstop = stop.child_token();
        deps.tracker.spawn(run_workload(
            shared.clone(),
            metrics.clone(),
            rx,
            wstop.clone(),
        ));
        running.insert(
            label,
            RunningWorkload {
                endpoint,
                tx,
                stop: wstop,
                metrics,
            },
        );
    }
    let gone: Vec<String> = running
        .keys()
        .filter(|k| !seen.contains(k))
        .cloned()
        .collect();
    for k in gone {
        if let Some(old) = running.remove(&k) {
            retire(old);
        }
    }
}

/// The workload's source (`None`: `random`, the built-in path), reusing the running one when
/// its settings did not change (so multi-turn sessions survive a reload). `None` from the outer
/// option: the source cannot be built (logged; the workload does not run).
fn build_source(
    shared: &TargetShared,
    label: &str,
    w: &crate::config::prober::WorkloadConfig,
    endpoint: Endpoint,
    previous: Option<&WorkloadSpec>,
) -> Option<Option<Arc<Workload>>> {
    if w.source == SourceKind::Random {
        return Some(None);
    }
    let settings = w.source_settings(endpoint);
    if let Some(old) = previous.and_then(|p| p.workload.as_ref())
        && *old.settings() == settings
    {
        return Some(Some(old.clone()));
    }
    let built = Workload::load(&settings, seed_of(label)).and_then(|mut wl| {
        if wl.needs_adapters() {
            wl.bind_adapters(&shared.listed)?;
        }
        Ok(wl)
    });
    match built {
        Ok(wl) => Some(Some(Arc::new(wl))),
        Err(e) => {
            tracing::error!(target = %shared.label, workload = %label, error = %e, "workload source unusable; the workload does not run");
            None
        }
    }
}

fn retire(w: RunningWorkload) {
    w.stop.cancel();
    w.metrics.target_concurrency.set(0);
    w.metrics.target_rate.set(0.0);
}

fn seed_of(s: &str) -> u64 {
    // FNV-1a: a stable seed per workload name, so a shared prefix survives restarts.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The prompt builder for the target's model: calibrated with the server's `/tokenize` when it
/// has one, else uncalibrated (text prompts, one word per token).
async fn calibrate_prompts(d: &Discovering<'_>, t: &TargetConfig, model: &str) -> PromptBuilder {
    let wants_chat = effective_workloads(t)
        .iter()
        .any(|w| w.endpoint.unwrap_or(t.endpoint) == Endpoint::Chat);
    match PromptBuilder::calibrate_with(
        d.client,
        d.base_url,
        d.authorization,
        model,
        wants_chat,
        d.timeout,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(target = %d.label, error = %e, "no /tokenize: prompts are text, lengths estimated at one word per token");
            PromptBuilder::uncalibrated()
        }
    }
}

/// Runs the target's workloads and canary as its configuration says, following every reload,
/// until the target is removed or shutdown starts; then stops its workloads.
async fn follow_config(
    shared: &Arc<TargetShared>,
    deps: &TargetDeps,
    run: Arc<TargetRun>,
    mut cfg_rx: watch::Receiver<Arc<TargetRun>>,
    canary_tx: &watch::Sender<CanaryConfig>,
    stop: &CancellationToken,
) {
    let mut workloads: HashMap<String, RunningWorkload> = HashMap::new();
    let mut current = run;
    loop {
        reconcile(shared, deps, &current, &mut workloads, stop);
        canary_tx.send_if_modified(|c| {
            let changed = *c != current.target.canary;
            *c = current.target.canary.clone();
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = deps.shutdown.cancelled() => break,
            r = cfg_rx.changed() => {
                if r.is_err() { break; }
                current = cfg_rx.borrow_and_update().clone();
            }
        }
    }
    for (_, w) in workloads.drain() {
        w.stop.cancel();
    }
}
