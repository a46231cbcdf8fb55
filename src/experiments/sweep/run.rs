//! One level of a sweep: the closed loop of N streams or the open loop of Poisson arrivals
//! ([`crate::prober::arrivals`], the daemon's generator), the sampler of the server's
//! `/metrics` and the GPUs alongside, and the records they leave for the summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::engine::{GpuSnapshot, RequestSpec, Sample, ServerSnapshot, Target};
use super::super::knee::Slo;
use super::super::report::SweepLevel;
use super::super::workload::{send, stream_seed};
use super::Load;
use super::gate::{Admit, Gate};
use super::summary::summarize_level;
use crate::config::prober::Arrival;
use crate::prober::arrivals::Schedule;
use crate::workload::Workload;

/// One request with its times, seconds after the level started.
#[derive(Debug, Clone)]
pub(super) struct Timed {
    /// When it should have been sent (open loop) or was sent (closed loop).
    pub(super) intended: f64,
    pub(super) start: f64,
    pub(super) end: f64,
    pub(super) sample: Sample,
    /// Multi-turn: the request's turn in its session.
    pub(super) turn: Option<u32>,
}

/// One sample of the server and the GPUs, seconds after the level started.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) at: f64,
    pub(super) server: Option<ServerSnapshot>,
    pub(super) gpu: Result<GpuSnapshot, String>,
}

pub(super) struct LevelPlan {
    /// The source of the requests (`None`: random prompts of `spec`'s length).
    pub(super) workload: Option<Arc<Workload>>,
    pub(super) spec: RequestSpec,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
    pub(super) requests: Option<u32>,
    pub(super) metrics_interval: Duration,
    pub(super) server_metrics: bool,
    pub(super) max_in_flight: usize,
    pub(super) seed: u64,
    pub(super) slo: Slo,
    pub(super) arrival: Arrival,
    pub(super) precise_arrivals: bool,
}

/// Tokio's timer has a resolution of 1 ms: `sleep_until` wakes at the first tick at or after
/// the deadline, so a send is up to 1 ms late. With `precise`, the wait sleeps to 2 ms before
/// the deadline (a sleep itself can end up to a tick late, so 1 ms of margin is not enough:
/// measured, lag p50 0.3–0.4 ms at 500 req/s with it) and then yields to the runtime until the
/// deadline: lag of microseconds, for a busy CPU while it waits (the other tasks still run; each
/// yield lets them).
async fn pace_until(next: Instant, precise: bool) {
    if !precise {
        tokio::time::sleep_until(next).await;
        return;
    }
    let margin = Duration::from_millis(2);
    if let Some(coarse) = next.checked_sub(margin)
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse).await;
    }
    while Instant::now() < next {
        tokio::task::yield_now().await;
    }
}

async fn sampler<T: Target>(
    t: Arc<T>,
    epoch: Instant,
    every: Duration,
    server: bool,
    stop: CancellationToken,
) -> Vec<Probe> {
    let mut out = Vec::new();
    loop {
        let snap = if server { t.metrics().await.ok() } else { None };
        out.push(Probe {
            at: epoch.elapsed().as_secs_f64(),
            server: snap,
            gpu: t.gpu(),
        });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
    }
    out
}

pub(super) async fn run_level<T: Target>(
    t: Arc<T>,
    load: Load,
    plan: &LevelPlan,
    index: u64,
    token: &CancellationToken,
) -> SweepLevel {
    let epoch = Instant::now();
    let warm_end = epoch + plan.warmup;
    let stops = Stops {
        warm_end,
        timed: plan.requests.is_none().then(|| warm_end + plan.duration),
        want: plan.requests.map(|n| n as usize),
        measured: AtomicUsize::new(0),
        count_stop: std::sync::Mutex::new(None),
    };
    let want = stops.want;
    let level_token = token.child_token();
    let stop_sampler = CancellationToken::new();
    let sampler_task = tokio::spawn(sampler(
        t.clone(),
        epoch,
        plan.metrics_interval,
        plan.server_metrics,
        stop_sampler.clone(),
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<Timed>();
    let rel = move |i: Instant| i.saturating_duration_since(epoch).as_secs_f64();
    let gate = Arc::new(Gate::new(
        match load {
            Load::Concurrency(c) => c as usize,
            Load::Rate(_) => 0,
        },
        warm_end,
        plan.duration,
        want,
    ));
    let mut tasks = JoinSet::new();
    let mut dropped = 0usize;
    match load {
        Load::Concurrency(c) => {
            spawn_streams(
                &mut tasks,
                &t,
                c,
                (plan, index),
                &gate,
                &tx,
                &level_token,
                epoch,
            );
        }
        Load::Rate(r) => {
            let ctx = OpenLoop {
                plan,
                index,
                epoch,
                tx: &tx,
                level_token: &level_token,
            };
            dropped = open_loop(&mut tasks, &t, r, &ctx, |at| stops.admit(at)).await;
        }
    }
    drop(tx);
    let interrupted = join_all(&mut tasks, token, &level_token).await;
    // the streams also stop on their own when the (child) token is cancelled
    let interrupted = interrupted || token.is_cancelled();
    let interrupted_at = rel(Instant::now());
    stop_sampler.cancel();
    let probes = sampler_task.await.unwrap_or_default();
    let mut records = Vec::new();
    while let Some(r) = rx.recv().await {
        records.push(r);
    }
    let (ws, mut we) = match load {
        Load::Concurrency(_) => gate.window(&records, rel, interrupted_at),
        Load::Rate(_) => stops.rate_window(plan, &records, rel),
    };
    if interrupted {
        we = we.min(interrupted_at);
    }
    let mut level = summarize_level(load, &records, ws, we, &probes, &plan.slo);
    level.turns = super::super::workload::turn_rows(
        records
            .iter()
            .filter(|r| r.intended >= ws && r.intended <= we)
            .filter_map(|r| Some((r.turn?, &r.sample))),
    );
    level.partial = interrupted;
    if dropped > 0 {
        *level
            .errors_by_class
            .entry("dropped_max_in_flight".into())
            .or_insert(0) += dropped;
    }
    level
}

/// When a level stops admitting requests: at the end of its duration, or after its
/// `--requests` measured requests (the intended start of the last one is kept).
struct Stops {
    warm_end: Instant,
    timed: Option<Instant>,
    want: Option<usize>,
    measured: AtomicUsize,
    count_stop: std::sync::Mutex<Option<Instant>>,
}

impl Stops {
    /// Claims a measured slot for a request intended at `at`; false once the level is done.
    fn admit(&self, at: Instant) -> bool {
        if let Some(s) = self.timed {
            return at < s;
        }
        if at < self.warm_end {
            return true;
        }
        let Some(n) = self.want else { return true };
        let k = self.measured.fetch_add(1, Ordering::SeqCst);
        if k + 1 == n
            && let Ok(mut g) = self.count_stop.lock()
        {
            *g = Some(at);
        }
        k < n
    }

    /// The measurement window of an open-loop level, in seconds since its start.
    fn rate_window(
        &self,
        plan: &LevelPlan,
        records: &[Timed],
        rel: impl Fn(Instant) -> f64,
    ) -> (f64, f64) {
        let ws = plan.warmup.as_secs_f64();
        let we = match (self.timed, self.count_stop.lock().ok().and_then(|g| *g)) {
            (Some(s), _) => rel(s),
            (None, Some(s)) => rel(s),
            (None, None) => records.iter().map(|r| r.intended).fold(ws, f64::max),
        };
        (ws, we)
    }
}

/// Waits for the streams (or in-flight requests) to finish; an interrupt cancels them.
/// `true` when interrupted.
async fn join_all(
    tasks: &mut JoinSet<()>,
    token: &CancellationToken,
    level_token: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            j = tasks.join_next() => if j.is_none() { break false },
            _ = token.cancelled() => {
                level_token.cancel();
                while tasks.join_next().await.is_some() {}
                break true;
            }
        }
    }
}

/// The closed loop: `c` streams, each sending its next request when the previous one ends,
/// as the gate lets it.
#[allow(clippy::too_many_arguments)]
fn spawn_streams<T: Target>(
    tasks: &mut JoinSet<()>,
    t: &Arc<T>,
    c: u32,
    (plan, level): (&LevelPlan, u64),
    gate: &Arc<Gate>,
    tx: &mpsc::UnboundedSender<Timed>,
    level_token: &CancellationToken,
    epoch: Instant,
) {
    let rel = move |i: Instant| i.saturating_duration_since(epoch).as_secs_f64();
    let spec = plan.spec;
    for i in 0..c {
        let (t, tx, lt, gate) = (t.clone(), tx.clone(), level_token.clone(), gate.clone());
        let mut source = plan
            .workload
            .as_ref()
            .map(|w| w.source(stream_seed(plan.seed, level, u64::from(i))));
        tasks.spawn(async move {
            let mut first = true;
            let mut measured_started = false;
            loop {
                let start = Instant::now();
                match gate.admit(start, measured_started) {
                    Admit::Stop => break,
                    Admit::Measured => measured_started = true,
                    Admit::Warmup => {}
                }
                let item = source.as_mut().map(|s| s.next_item());
                let s = tokio::select! {
                    s = send(&*t, spec, item.as_ref(), start) => s,
                    _ = lt.cancelled() => break,
                };
                let end = Instant::now();
                if first {
                    first = false;
                    gate.first_done(end);
                }
                let st = rel(start);
                let _ = tx.send(Timed {
                    intended: st,
                    start: st,
                    end: rel(end),
                    sample: s,
                    turn: item.and_then(|i| i.turn),
                });
            }
        });
    }
}

/// What the open loop of one level works with.
struct OpenLoop<'a> {
    plan: &'a LevelPlan,
    index: u64,
    epoch: Instant,
    tx: &'a mpsc::UnboundedSender<Timed>,
    level_token: &'a CancellationToken,
}

/// The open loop: Poisson arrivals at `r` per second (the daemon's generator), each request
/// charged from its intended start, while `admit` says the level goes on. Returns the arrivals
/// dropped at `--max-in-flight`.
async fn open_loop<T: Target>(
    tasks: &mut JoinSet<()>,
    t: &Arc<T>,
    r: f64,
    ctx: &OpenLoop<'_>,
    mut admit: impl FnMut(Instant) -> bool,
) -> usize {
    let (plan, index, epoch) = (ctx.plan, ctx.index, ctx.epoch);
    let (tx, level_token) = (ctx.tx, ctx.level_token);
    let rel = move |i: Instant| i.saturating_duration_since(epoch).as_secs_f64();
    let mut dropped = 0usize;
    let mut arrivals = Schedule::new(
        plan.arrival,
        r,
        rand::rngs::SmallRng::seed_from_u64(plan.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut source = plan
        .workload
        .as_ref()
        .map(|w| w.source(stream_seed(plan.seed, index, u64::from(u32::MAX))));
    let mut next = epoch;
    loop {
        next = arrivals.next_after(next);
        if !admit(next) {
            break;
        }
        tokio::select! {
            _ = pace_until(next, plan.precise_arrivals) => {}
            _ = level_token.cancelled() => break,
        }
        if in_flight.load(Ordering::SeqCst) >= plan.max_in_flight {
            dropped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        let (t, tx, lt, inf) = (
            t.clone(),
            tx.clone(),
            level_token.clone(),
            in_flight.clone(),
        );
        let spec = plan.spec;
        let intended = next;
        let item = source.as_mut().map(|s| s.next_item());
        tasks.spawn(async move {
            let start = Instant::now();
            let s = tokio::select! {
                s = send(&*t, spec, item.as_ref(), intended) => Some(s),
                _ = lt.cancelled() => None,
            };
            inf.fetch_sub(1, Ordering::SeqCst);
            if let Some(s) = s {
                let _ = tx.send(Timed {
                    intended: rel(intended),
                    start: rel(start),
                    end: rel(Instant::now()),
                    sample: s,
                    turn: item.and_then(|i| i.turn),
                });
            }
        });
    }
    dropped
}
