//! Load generation for one workload: a closed loop of N streams or an open loop of arrivals at
//! R per second, resizable while running.
//!
//! * Closed loop: N worker tasks, each sending its next request when the previous one ends.
//!   A resize adds workers, or asks the surplus ones to stop after their current request, so
//!   no measurement is lost and no series is reset.
//! * Open loop: one scheduler draws arrival times (Poisson or constant gaps) and spawns a task
//!   per arrival ([`super::arrivals`], shared with `sweep --rate`), whose latency counts from the arrival's *intended* time. An arrival that
//!   finds `max_in_flight` requests in flight is dropped and counted, never queued. A rate
//!   change re-anchors the schedule at the moment of the change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{TurnTtft, WorkloadMetrics};
use super::prompt::{PromptBuilder, SharedPrefix};
use super::request::{Conn, Endpoint, Outcome, ProbeRequest, Timeouts, execute_with};
use crate::config::prober::{Load, WorkloadConfig};
use crate::workload::{Source, Workload};

/// Counters the self-health task reads (shared by every workload of the prober).
#[derive(Debug, Default)]
pub struct HealthCounters {
    /// Open-loop sends.
    pub sends: AtomicU64,
    /// Open-loop sends later than the saturation threshold.
    pub late_sends: AtomicU64,
    /// Open-loop arrivals dropped at the in-flight cap.
    pub dropped: AtomicU64,
    /// Late threshold in ns.
    pub late_threshold_ns: AtomicU64,
}

/// What every request of a target shares.
pub struct TargetShared {
    pub label: String,
    /// The advertised `max_model_len`, when known.
    pub max_model_len: Option<u32>,
    pub client: super::request::ProbeClient,
    pub base_url: String,
    /// The `Authorization` value (`Bearer …` or `Basic …`); never logged (see the `Debug` impl).
    pub authorization: Option<crate::config::Secret>,
    pub model: String,
    pub timeouts: Timeouts,
    pub max_response_bytes: u64,
    pub prompts: PromptBuilder,
    /// `/v1/models` with each entry's parent, read at discovery when a workload uses the
    /// `lora` source (empty otherwise).
    pub listed: Vec<crate::workload::lora::Listed>,
    /// Cancelled when shutdown starts: no new request is sent; in-flight ones go on.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown grace is over: in-flight requests end as `cancelled`.
    pub abort: CancellationToken,
    pub health: Arc<HealthCounters>,
    pub tracker: TaskTracker,
}

impl std::fmt::Debug for TargetShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetShared")
            .field("label", &self.label)
            .field("base_url", &self.base_url)
            .field("authorization", &self.authorization)
            .field("model", &self.model)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl TargetShared {
    /// The connection settings for [`execute_with`].
    pub fn conn(&self) -> Conn<'_> {
        Conn {
            client: &self.client,
            base_url: &self.base_url,
            authorization: self.authorization.as_ref().map(|s| s.expose()),
            timeouts: &self.timeouts,
            cancel: Some(&self.abort),
            max_response_bytes: self.max_response_bytes,
        }
    }
}

/// A workload's settings as the runner uses them.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub cfg: WorkloadConfig,
    pub label: String,
    pub endpoint: Endpoint,
    pub max_in_flight: u32,
    pub error_backoff: Duration,
    pub shared_prefix: SharedPrefix,
    /// Longest prompt sent: `max_model_len + 1` when the server advertises it (a longer one
    /// is rejected all the same), else [`crate::config::prober::MAX_TOKENS_CEILING`].
    pub max_prompt_tokens: u32,
    /// The workload's source, unless it is `random` (which keeps [`WorkloadSpec::request`]).
    pub workload: Option<Arc<Workload>>,
    /// `lora`: the series of each adapter (the `model` label is the adapter's name); requests
    /// to another model are recorded in the workload's own series.
    pub model_metrics: Vec<(Arc<str>, WorkloadMetrics)>,
    /// `multi-turn`: TTFT by turn.
    pub turn_ttft: TurnTtft,
}

impl WorkloadSpec {
    /// The next request of this workload.
    pub fn request(
        &self,
        prompts: &PromptBuilder,
        model: &str,
        rng: &mut SmallRng,
    ) -> ProbeRequest {
        let len = self
            .cfg
            .prompt_tokens
            .sample(rng)
            .min(self.max_prompt_tokens)
            .max(1);
        ProbeRequest {
            endpoint: self.endpoint,
            model: model.to_string(),
            prompt: prompts.build(rng, self.endpoint, len, &self.shared_prefix),
            max_tokens: self.cfg.max_tokens,
            ignore_eos: self.cfg.ignore_eos,
            temperature: self.cfg.temperature,
            stream: self.cfg.stream,
            extra: self.cfg.extra_body.clone(),
        }
    }
}

impl WorkloadSpec {
    /// The next request of a workload with a source: its item rendered for this target.
    pub fn request_from(
        &self,
        prompts: &PromptBuilder,
        model: &str,
        source: &mut Source,
    ) -> (ProbeRequest, Option<u32>) {
        let item = source.next_item();
        let req = ProbeRequest {
            endpoint: self.endpoint,
            model: item.model.as_deref().unwrap_or(model).to_string(),
            prompt: prompts.render(&item, self.endpoint, self.max_prompt_tokens),
            max_tokens: item.max_tokens,
            ignore_eos: self.cfg.ignore_eos,
            temperature: self.cfg.temperature,
            stream: self.cfg.stream,
            extra: self.cfg.extra_body.clone(),
        };
        (req, item.turn)
    }

    /// Records a finished request: in the series of its model, and by turn (multi-turn).
    pub fn record(
        &self,
        req: &ProbeRequest,
        turn: Option<u32>,
        rec: &super::request::RequestRecord,
        default: &WorkloadMetrics,
    ) {
        self.metrics_for(&req.model, default).record(rec);
        if let Some(t) = turn {
            self.turn_ttft.record(t, rec);
        }
    }

    /// The series a request to `model` is recorded in.
    pub fn metrics_for<'a>(
        &'a self,
        model: &str,
        default: &'a WorkloadMetrics,
    ) -> &'a WorkloadMetrics {
        self.model_metrics
            .iter()
            .find(|(m, _)| &**m == model)
            .map_or(default, |(_, w)| w)
    }
}

/// One stream's generator, rebuilt when the workload's source changes (a reload).
#[derive(Default)]
struct StreamSource {
    current: Option<(Arc<Workload>, Source)>,
}

impl StreamSource {
    /// The next request of `spec`, with its turn (multi-turn).
    fn request(
        &mut self,
        spec: &WorkloadSpec,
        shared: &TargetShared,
        rng: &mut SmallRng,
    ) -> (ProbeRequest, Option<u32>) {
        let Some(w) = &spec.workload else {
            self.current = None;
            return (spec.request(&shared.prompts, &shared.model, rng), None);
        };
        let source = match &mut self.current {
            Some((cur, src)) if Arc::ptr_eq(cur, w) => src,
            _ => {
                let src = w.source(rng.random());
                &mut self.current.insert((w.clone(), src)).1
            }
        };
        spec.request_from(&shared.prompts, &shared.model, source)
    }
}

/// Runs one workload until `stop` or the shutdown token fires; either way in-flight requests go
/// on (until the abort token, at the end of the shutdown grace, cancels them). New settings
/// arrive on `spec`.
pub async fn run_workload(
    shared: Arc<TargetShared>,
    metrics: WorkloadMetrics,
    mut spec: watch::Receiver<Arc<WorkloadSpec>>,
    stop: CancellationToken,
) {
    let mut workers: Vec<CancellationToken> = Vec::new();
    let mut open: Option<CancellationToken> = None;
    let in_flight = Arc::new(AtomicU32::new(0));
    loop {
        let current = spec.borrow_and_update().clone();
        match current.cfg.load() {
            Load::Closed { concurrency } => {
                if let Some(o) = open.take() {
                    o.cancel();
                }
                let want = concurrency as usize;
                while workers.len() > want {
                    if let Some(w) = workers.pop() {
                        w.cancel();
                    }
                }
                while workers.len() < want {
                    let w = stop.child_token();
                    workers.push(w.clone());
                    let (sh, m, rx) = (shared.clone(), metrics.clone(), spec.clone());
                    let seed = rand::rng().random();
                    shared.tracker.spawn(closed_worker(sh, m, rx, w, seed));
                }
                metrics.target_concurrency.set(i64::from(concurrency));
                metrics.target_rate.set(0.0);
            }
            Load::Open { rate } => {
                for w in workers.drain(..) {
                    w.cancel();
                }
                if open.is_none() {
                    let o = stop.child_token();
                    open = Some(o.clone());
                    let (sh, m, rx, inf) = (
                        shared.clone(),
                        metrics.clone(),
                        spec.clone(),
                        in_flight.clone(),
                    );
                    shared.tracker.spawn(open_scheduler(sh, m, rx, o, inf));
                }
                metrics.target_concurrency.set(0);
                metrics.target_rate.set(rate);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = shared.shutdown.cancelled() => break,
            r = spec.changed() => if r.is_err() { break },
        }
    }
    for w in workers {
        w.cancel();
    }
    if let Some(o) = open {
        o.cancel();
    }
}

async fn closed_worker(
    shared: Arc<TargetShared>,
    metrics: WorkloadMetrics,
    spec: watch::Receiver<Arc<WorkloadSpec>>,
    stop: CancellationToken,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut source = StreamSource::default();
    let conn = shared.conn();
    let mut backoff = Duration::ZERO;
    while !stop.is_cancelled() && !shared.shutdown.is_cancelled() {
        let s = spec.borrow().clone();
        let (req, turn) = source.request(&s, &shared, &mut rng);
        let started = Instant::now();
        metrics.in_flight.inc();
        let rec = execute_with(&conn, &req, started, &mut ()).await;
        metrics.in_flight.dec();
        s.record(&req, turn, &rec, &metrics);
        let pause = match rec.outcome {
            Outcome::Cancelled => Duration::ZERO,
            Outcome::Ok => {
                backoff = Duration::ZERO;
                MIN_CYCLE.saturating_sub(started.elapsed())
            }
            _ => {
                backoff = next_backoff(backoff, s.error_backoff);
                backoff
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => {}
                _ = shared.shutdown.cancelled() => {}
            }
        }
    }
}

/// Closed loop: the first pause after a failed or empty request.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Closed loop: the shortest time from one request's send to the next on a stream when the
/// request succeeded, so a server that answers instantly sees at most 1,000 requests/s per
/// stream.
pub const MIN_CYCLE: Duration = Duration::from_millis(1);

/// The pause after one more consecutive failure: [`FIRST_BACKOFF`], then doubling, capped at
/// `cap` (`prober.error_backoff`).
pub fn next_backoff(prev: Duration, cap: Duration) -> Duration {
    if prev.is_zero() {
        FIRST_BACKOFF.min(cap)
    } else {
        prev.saturating_mul(2).min(cap)
    }
}

async fn open_scheduler(
    shared: Arc<TargetShared>,
    metrics: WorkloadMetrics,
    mut spec: watch::Receiver<Arc<WorkloadSpec>>,
    stop: CancellationToken,
    in_flight: Arc<AtomicU32>,
) {
    let mut rng = SmallRng::seed_from_u64(rand::rng().random());
    let mut source = StreamSource::default();
    let mut next = Instant::now();
    loop {
        let s = spec.borrow_and_update().clone();
        let Load::Open { rate } = s.cfg.load() else {
            return;
        };
        next += super::arrivals::next_gap(s.cfg.arrival, rate, &mut rng);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = shared.shutdown.cancelled() => return,
            r = spec.changed() => {
                if r.is_err() { return; }
                // New settings: re-anchor the schedule now (Poisson gaps are memoryless).
                next = Instant::now();
                continue;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
        if in_flight.load(Ordering::Relaxed) >= s.max_in_flight {
            metrics.dropped.inc();
            shared.health.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (req, turn) = source.request(&s, &shared, &mut rng);
        let (sh, m, inf, intended) = (shared.clone(), metrics.clone(), in_flight.clone(), next);
        shared.tracker.spawn(async move {
            m.in_flight.inc();
            let rec = execute_with(&sh.conn(), &req, intended, &mut ()).await;
            m.in_flight.dec();
            inf.fetch_sub(1, Ordering::Relaxed);
            m.schedule_lag.observe(rec.schedule_lag.as_secs_f64());
            sh.health.sends.fetch_add(1, Ordering::Relaxed);
            if rec.schedule_lag.as_nanos() as u64
                > sh.health.late_threshold_ns.load(Ordering::Relaxed)
            {
                sh.health.late_sends.fetch_add(1, Ordering::Relaxed);
            }
            s.record(&req, turn, &rec, &m);
        });
    }
}
