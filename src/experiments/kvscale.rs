//! `kv-scale`: context length against KV cache and feasibility.
//!
//! 1. **Ladder.** One request per prompt length, up to and past `max_model_len` (from
//!    `/v1/models`). For each: TTFT (the prefill cost), the KV-cache usage the request holds,
//!    GPU memory where NVML is present, and feasibility: `accepted`, `clamped` (200 with
//!    finish_reason `length` and fewer tokens than asked) or `rejected` (the server's 4xx
//!    reason). A rejected rung shows no KV usage and no running request: the server refused it
//!    before any GPU work.
//!
//!    The KV usage is measured **by construction**, not by a lucky sample: the rung's request
//!    streams with `ignore_eos` and a `max_tokens` of all the context left
//!    (`max_model_len − prompt`), so it stays resident until kv-scale closes it. After its first
//!    token, `/metrics` is read until two bodies show the request running
//!    (`num_requests_running` ≥ 1, a gauge vLLM publishes in the same engine step as
//!    `kv_cache_usage_perc` and `generation_tokens_total`). The last of them gives the usage,
//!    and its `generation_tokens_total` gives the tokens the request then held, so the expected
//!    usage `ceil((prompt + generated − 1) / block_size) / (num_gpu_blocks − 1)` is of the same
//!    instant. Then the stream is closed, and kv-scale checks that the server aborted the
//!    request and freed its blocks. A rung with less than [`MIN_HOLD_TOKENS`] of context left
//!    cannot be held and says so; a stream that ended before it was seen twice is sent again
//!    (up to [`ATTEMPTS`] times), and is reported as not observed rather than as 0.
//! 2. **Boundary.** Bisection between the longest accepted and the shortest rejected prompt
//!    (with `max_tokens` 1) finds the exact limit.
//! 3. **Grid.** For a few sequence lengths L, N concurrent sequences of L tokens each: does
//!    every one run at once without preemption? Beside it, the capacity computed from
//!    `vllm:cache_config_info`: `floor((num_gpu_blocks − 1) / ceil((L − 1) / block_size))`.
//!    Each sequence is built to hold exactly B = `ceil((L − 1) / block_size)` blocks from the
//!    end of its prefill to its last token (a prompt of `(B − 1) · block_size + 1` tokens and
//!    `L − prompt` output tokens with `ignore_eos`), so a sample taken at any moment of its
//!    decode sees it at its full size. The verdict comes only from samples taken in a known
//!    state: `fits` when a body read after every sequence had its first token and before any
//!    ended shows all of them running and none waiting, and nothing was preempted; `queues`
//!    when something was preempted, or two bodies read while every running sequence was past
//!    its prefill, more than one engine step apart, both show one waiting. (vLLM records its gauges before it hands a step's tokens to
//!    the streams, so a body read after a token arrived is of that step or a later one.) A cell
//!    seen in neither state is run again, and is `undecided` after [`ATTEMPTS`] runs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{self, CommonArgs, Outputs};
use super::engine::{
    CacheConfig, Outcome, RequestSpec, Sample, ServerSnapshot, StreamProgress, Target, choose_model,
};
use super::plot::{self, GridRowPlot, LineChart, Series};
use super::progress::Progress;
use super::report::{
    Boundary, CacheInfo, GridCell, GridRow, KvScaleSection, LadderRung, Report, TargetInfo,
};
use crate::units::parse_duration;

/// A ladder rung with less context left than this (`max_model_len − prompt`) cannot be held
/// resident long enough to be read twice; its KV usage is not measured.
pub const MIN_HOLD_TOKENS: u32 = 64;
/// Runs of a rung or grid cell that was not seen in a known state before it is reported so.
pub const ATTEMPTS: u32 = 3;
/// The gap between two reads of `/metrics` while a short window can decide a measurement.
const BACK_TO_BACK: Duration = Duration::from_millis(1);
/// How long the server gets to abort a closed stream and free its blocks.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

/// What the report says about GPU memory.
pub const GPU_MEMORY_NOTE: &str = "GPU memory does not follow context length: vLLM allocates its whole KV cache at start-up (gpu_memory_utilization or kv-cache-memory) and keeps it resident, so memory used stays flat across the ladder; what one request occupies shows in KV-cache usage instead.";

/// Flags of `kv-scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct KvScaleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Prompt lengths to try, in tokens [default: powers of two up to max_model_len, then the
    /// boundary cases max_model_len − max_tokens, − max_tokens/2, − 1, +0, +1 and ×2].
    #[arg(long, value_delimiter = ',', env = "VLLM_SENTINEL_KV_LENGTHS")]
    pub lengths: Vec<u32>,
    /// Output tokens that set the default ladder's boundary rungs (max_model_len − N, − N/2), and
    /// the max_tokens of a rung when max_model_len is unknown; with it known, a rung may decode
    /// all the context left, so it stays resident until it has been read.
    #[arg(long, default_value_t = 64, env = "VLLM_SENTINEL_MAX_TOKENS")]
    pub max_tokens: u32,
    /// The server's context limit, when /v1/models does not publish max_model_len.
    #[arg(long, env = "VLLM_SENTINEL_MAX_MODEL_LEN")]
    pub max_model_len: Option<u32>,
    /// Interval between samples of /metrics while requests run (back to back, 1 ms apart,
    /// while a held request or a whole grid cell is in the state that decides it).
    #[arg(long, default_value = "50ms", value_parser = parse_duration, env = "VLLM_SENTINEL_KV_SAMPLE_INTERVAL")]
    pub sample_interval: Duration,
    /// Skip the bisection for the exact context boundary.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_KV_NO_BOUNDARY")]
    pub no_boundary: bool,
    /// Skip the concurrency × context grid.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_KV_NO_GRID")]
    pub no_grid: bool,
    /// Grid: sequence lengths (prompt + output tokens) [default: max_model_len/8, /4, /2 and
    /// max_model_len, rounded down to whole KV blocks].
    #[arg(long, value_delimiter = ',', env = "VLLM_SENTINEL_KV_GRID_CONTEXTS")]
    pub grid_contexts: Vec<u32>,
    /// Grid: output tokens of each sequence [default: a quarter of its length].
    #[arg(long, env = "VLLM_SENTINEL_KV_GRID_MAX_TOKENS")]
    pub grid_max_tokens: Option<u32>,
    /// Grid: the most concurrent sequences tried.
    #[arg(
        long,
        default_value_t = 256,
        env = "VLLM_SENTINEL_KV_GRID_MAX_CONCURRENCY"
    )]
    pub grid_max_concurrency: u32,
}

impl KvScaleArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.max_tokens == 0 {
            bail!("--max-tokens: must be at least 1");
        }
        if self.lengths.contains(&0) {
            bail!("--lengths: prompt lengths must be at least 1");
        }
        if self.grid_contexts.iter().any(|c| *c < 2) {
            bail!(
                "--grid-contexts: sequence lengths must be at least 2 (one prompt and one output token)"
            );
        }
        if self.sample_interval.is_zero() {
            bail!("--sample-interval: must be more than 0");
        }
        if self.grid_max_concurrency == 0 {
            bail!("--grid-max-concurrency: must be at least 1");
        }
        Ok(())
    }
}

/// The default ladder for a server of context `m` and requests of `out` output tokens.
pub fn default_ladder(m: u32, out: u32) -> Vec<u32> {
    let mut v = Vec::new();
    let fit = m.saturating_sub(out);
    let mut p = 64u32;
    while p < fit {
        v.push(p);
        p = p.saturating_mul(2);
    }
    v.extend([
        fit,
        m.saturating_sub(out / 2),
        m.saturating_sub(1),
        m,
        m.saturating_add(1),
        m.saturating_mul(2),
    ]);
    v.retain(|x| *x >= 1);
    v.sort_unstable();
    v.dedup();
    v
}

/// KV blocks a sequence of `tokens` tokens holds.
pub fn blocks_for(tokens: u64, block_size: u64) -> u64 {
    if block_size == 0 {
        0
    } else {
        tokens.div_ceil(block_size)
    }
}

/// KV blocks a sequence of `tokens` tokens (prompt + output) holds at its end: the last output
/// token is sampled but never written to the cache, so `ceil((tokens − 1) / block_size)`.
pub fn blocks_per_sequence(tokens: u64, block_size: u64) -> u64 {
    blocks_for(tokens.saturating_sub(1).max(1), block_size)
}

/// Sequences of `tokens` tokens (prompt + output) the cache holds at once:
/// `floor((num_gpu_blocks − 1) / blocks_per_sequence)` (one block is vLLM's null block).
pub fn capacity(cache: &CacheConfig, tokens: u64) -> u64 {
    match blocks_per_sequence(tokens, cache.block_size) {
        0 => 0,
        b => cache.usable_blocks() / b,
    }
}

/// Concurrencies to try for a computed capacity: around it, so the edge is observed.
pub fn grid_concurrencies(cap: Option<u64>, max: u32) -> Vec<u32> {
    let mut v: Vec<u32> = match cap {
        Some(0) => vec![1, 2],
        Some(c) => {
            let c = c.min(u64::from(u32::MAX / 2)) as u32;
            vec![1, c / 2, c, c + 1, c * 2]
        }
        None => (0..16).map(|i| 1u32 << i).collect(),
    };
    v.retain(|x| *x >= 1 && *x <= max);
    v.sort_unstable();
    v.dedup();
    v
}

/// Default grid lengths: `m/8, m/4, m/2, m`, whole blocks, at least one block.
pub fn default_grid_contexts(m: u32, block_size: Option<u64>) -> Vec<u32> {
    let bs = block_size.unwrap_or(1).clamp(1, u64::from(u32::MAX)) as u32;
    let mut v: Vec<u32> = [m / 8, m / 4, m / 2, m]
        .iter()
        .map(|x| ((x / bs) * bs).max(bs).min(m))
        .filter(|x| *x >= 2)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Runs `kv-scale` from the command line.
pub async fn run_cli(args: KvScaleArgs, token: CancellationToken) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let outputs = Outputs::prepare(&args.common, "kv-scale")?;
    let target = Arc::new(super::http::HttpTarget::new(&args.common)?);
    let report = measure(target, &args, &token).await?;
    finish(&report, &outputs)
}

/// Prints and writes a finished kv-scale report; fails (after writing) when no request got an
/// answer from the server.
pub fn finish(report: &Report, outputs: &Outputs) -> anyhow::Result<ExitCode> {
    let k = report.kv_scale.clone().unwrap_or_default();
    let code = common::emit(
        report,
        outputs,
        &super::table::kv_scale(&k),
        &[
            (outputs.csv.clone(), super::report::kv_ladder_csv(&k)),
            (
                outputs.sibling_csv("grid").filter(|_| !k.grid.is_empty()),
                super::report::kv_grid_csv(&k),
            ),
        ],
        |dir| plots(dir, &k),
    )?;
    if !k.ladder.is_empty() && k.ladder.iter().all(|r| r.feasibility == "error") {
        let first = k
            .ladder
            .first()
            .and_then(|r| r.reason.clone())
            .unwrap_or_default();
        bail!("every request failed; first failure: {first}");
    }
    Ok(code)
}

/// Peaks of the server's gauges while something ran.
#[derive(Debug, Default, Clone)]
struct Watch {
    samples: usize,
    kv_peak: Option<f64>,
    running_peak: Option<f64>,
    waiting_peak: Option<f64>,
    gpu_mem_peak: Option<f64>,
    gpu_util_peak: Option<f64>,
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Watch {
    fn add(&mut self, s: &ServerSnapshot) {
        self.samples += 1;
        self.kv_peak = max_opt(self.kv_peak, s.kv_usage);
        self.running_peak = max_opt(self.running_peak, s.running);
        self.waiting_peak = max_opt(self.waiting_peak, s.waiting);
    }

    fn add_gpu<T: Target>(&mut self, t: &T) {
        if let Ok(g) = t.gpu() {
            self.gpu_mem_peak = max_opt(self.gpu_mem_peak, Some(g.memory_used_bytes));
            self.gpu_util_peak = max_opt(self.gpu_util_peak, Some(g.utilization));
        }
    }
}

/// Streams sent together and held open ([`Target::stream_held`]), each on its own task so that
/// reading `/metrics` never delays them.
struct HeldGroup {
    progress: Vec<watch::Receiver<StreamProgress>>,
    close: CancellationToken,
    set: tokio::task::JoinSet<(usize, Sample)>,
}

/// How far a group has got when a sample is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupState {
    /// Streams past their first token.
    started: u32,
    /// Streams that have ended.
    ended: u32,
}

impl HeldGroup {
    fn start<T: Target>(t: &Arc<T>, specs: Vec<RequestSpec>) -> Self {
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

    fn state(&self) -> GroupState {
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

    fn len(&self) -> u32 {
        self.progress.len() as u32
    }

    /// Waits until every stream has started or ended. `false` when interrupted.
    async fn all_started_or_ended(&mut self, token: &CancellationToken) -> bool {
        for p in &mut self.progress {
            tokio::select! {
                r = p.wait_for(|p| p.started() || p.ended) => {
                    // a sender dropped without `ended`: its task is gone
                    if r.is_err() { continue; }
                }
                _ = token.cancelled() => return false,
            }
        }
        true
    }

    /// Closes every stream still open and collects the samples, in the order sent.
    async fn finish(mut self) -> Vec<Sample> {
        self.close.cancel();
        self.join().await
    }

    /// Waits for every stream to end by itself and collects the samples.
    async fn join(&mut self) -> Vec<Sample> {
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
async fn pause(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = token.cancelled() => false,
    }
}

/// Reads `/metrics` until the server shows nothing more running than `before` did, KV usage
/// back at its level, and no token generated between two reads: a closed stream's request
/// was aborted and its blocks freed. `Some(seconds)` when seen within [`RELEASE_DEADLINE`].
async fn wait_released<T: Target>(
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

/// The KV usage of one held request, read from two bodies that show it running.
#[derive(Debug, Default, Clone)]
struct Residency {
    watch: Watch,
    /// Bodies read during the request's decode that show it running.
    resident: Vec<ServerSnapshot>,
    /// Output events the client had received when the last resident body was read.
    events_at_sample: u32,
}

/// Reads `/metrics` while a one-request group runs, until two bodies read after its first
/// token and before it ended show it running, or it ends. `None` when interrupted.
async fn observe_resident<T: Target>(
    t: &Arc<T>,
    g: &mut HeldGroup,
    every: Duration,
    token: &CancellationToken,
) -> Option<Residency> {
    let mut r = Residency::default();
    if !g.all_started_or_ended(token).await {
        return None;
    }
    loop {
        let at_send = g.state();
        if at_send.ended > 0 || at_send.started == 0 {
            return Some(r);
        }
        if let Ok(s) = t.metrics().await {
            r.watch.add(&s);
            if s.running.is_some_and(|x| x >= 1.0) {
                r.events_at_sample = g.progress.first().map_or(0, |p| p.borrow().output_events);
                r.resident.push(s);
            }
        }
        r.watch.add_gpu(t.as_ref());
        if r.resident.len() >= 2 {
            return Some(r);
        }
        // Back to back while the request decodes: the reads end after two resident bodies,
        // and a short request leaves little time. The interval paces only a server that
        // answers /metrics with an error.
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

/// One rung of the ladder: the request held, read twice while resident, closed, and its
/// release checked. `None` when interrupted.
async fn ladder_rung<T: Target>(
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
            observe_resident(t, &mut g, args.sample_interval, token).await?
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
        let seen = res.resident.len() >= 2;
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
                "KV usage not measured: the stream ended before two /metrics bodies showed it running ({attempts} attempts)"
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
fn rung_report(
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

/// The grid's verdict on one cell, from what was seen in known states.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct CellEvidence {
    /// A body read after every sequence started and before any ended showed all of them
    /// running and none waiting.
    all_resident: bool,
    /// Two bodies, read while every running sequence was past its prefill and none had ended,
    /// with more than one engine step between them (the generation counter grew by more than
    /// the running count), both showed one waiting: it was not admitted in a step where the
    /// token budget was free, so the KV cache (or the sequence limit) kept it out.
    one_waiting: bool,
    /// The last body that showed one waiting in that state: (started, generated, running).
    pending: Option<(u32, f64, f64)>,
}

impl CellEvidence {
    fn add(&mut self, c: u32, at_send: GroupState, s: &ServerSnapshot) {
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
async fn grid_cell<T: Target>(
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

/// Prompt and output tokens of a grid row of sequences of `ctx` tokens: with the cache's
/// geometry, a prompt of `(B − 1) · block_size + 1` tokens so that each sequence holds exactly
/// `B = ceil((ctx − 1) / block_size)` blocks from its prefill to its end; else (or with
/// `--grid-max-tokens`) a quarter of the length as output.
pub fn grid_shape(ctx: u32, block_size: Option<u64>, max_tokens: Option<u32>) -> (u32, u32) {
    if let (Some(bs), None) = (block_size, max_tokens)
        && bs >= 1
        && ctx >= 2
    {
        let b = blocks_per_sequence(u64::from(ctx), bs);
        let prompt = (b.saturating_sub(1) * bs + 1).min(u64::from(ctx - 1)) as u32;
        return (prompt, ctx - prompt);
    }
    let out = max_tokens
        .unwrap_or((ctx / 4).max(1))
        .clamp(1, ctx.saturating_sub(1).max(1));
    (ctx.saturating_sub(out).max(1), out)
}

fn feasibility(s: &Sample, max_tokens: u32) -> &'static str {
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

/// Measures against `t`. Stops early (a partial report) when `token` is cancelled.
pub async fn measure<T: Target>(
    t: Arc<T>,
    args: &KvScaleArgs,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    args.validate()?;
    let url = common::check_target_url(&args.common.target)?;
    let models = t
        .models()
        .await
        .with_context(|| format!("cannot reach the target at {url}"))?;
    let model = choose_model(&models, args.common.model.as_deref())?;
    let max_model_len = args.max_model_len.or(model.max_model_len);
    let first = t.metrics().await.with_context(|| {
        format!("the server at {url} has no readable /metrics; kv-scale reads vllm:kv_cache_usage_perc and vllm:cache_config_info from it")
    })?;
    if first.kv_usage.is_none() {
        bail!(
            "the server's /metrics at {url} has no vllm:kv_cache_usage_perc; kv-scale needs it (is this a vLLM server?)"
        );
    }
    let lengths = if !args.lengths.is_empty() {
        let mut v = args.lengths.clone();
        v.sort_unstable();
        v.dedup();
        v
    } else {
        match max_model_len {
            Some(m) => default_ladder(m, args.max_tokens),
            None => bail!(
                "/v1/models does not publish max_model_len for {}; pass --max-model-len or --lengths",
                model.id
            ),
        }
    };
    let mut report = Report::new(
        "kv-scale",
        TargetInfo {
            url,
            model: model.id.clone(),
            endpoint: args.common.endpoint.as_str().to_string(),
            max_model_len,
        },
    );
    report.notes.extend(t.prepare(&model).await);
    report.set("lengths", &lengths);
    report.set("max_tokens", args.max_tokens);
    report.set("sample_interval_s", args.sample_interval.as_secs_f64());
    report.set("boundary", !args.no_boundary);
    report.set("grid", !args.no_grid);
    report.set("grid_max_concurrency", args.grid_max_concurrency);
    report.set(
        "request_timeout_s",
        args.common.request_timeout.as_secs_f64(),
    );
    let cache = first.cache;
    let mut k = KvScaleSection {
        max_model_len,
        cache: cache.map(|c| CacheInfo {
            block_size: c.block_size,
            num_gpu_blocks: c.num_gpu_blocks,
            usable_blocks: c.usable_blocks(),
            capacity_tokens: c.capacity_tokens(),
        }),
        gpu_memory_note: GPU_MEMORY_NOTE.to_string(),
        ..Default::default()
    };
    if cache.is_none() {
        report.notes.push(
            "the server publishes no vllm:cache_config_info: expected KV usage and computed capacity are unknown".into(),
        );
    }
    if let Err(r) = t.gpu() {
        report.notes.push(format!("GPU metrics: {r}"));
    }
    let progress = Progress::new(!args.common.no_progress, lengths.len() as u64, "kv-scale");
    let started = Instant::now();

    // 1. the ladder
    for &len in &lengths {
        progress.message(format!("prompt {len}"));
        let Some(rung) = ladder_rung(&t, args, len, max_model_len, cache, token).await else {
            report.mark_partial(format!("interrupted at prompt length {len}"));
            break;
        };
        k.ladder.push(rung);
        progress.inc(1);
    }
    ladder_notes(&k, &mut report.notes);
    // 2. the exact boundary
    if !args.no_boundary && !report.partial {
        progress.message("context boundary");
        match boundary(&t, &k, max_model_len, token).await {
            Ok(Some(b)) => k.boundary = Some(b),
            Ok(None) => report.mark_partial("interrupted while finding the context boundary"),
            Err(e) => report
                .notes
                .push(format!("context boundary not found: {e:#}")),
        }
    }

    // 3. the grid
    if !args.no_grid && !report.partial {
        let contexts = if args.grid_contexts.is_empty() {
            max_model_len
                .map(|m| default_grid_contexts(m, cache.map(|c| c.block_size)))
                .unwrap_or_default()
        } else {
            args.grid_contexts.clone()
        };
        let total: usize = contexts
            .iter()
            .map(|&c| {
                let cap = cache.map(|cc| capacity(&cc, u64::from(c)));
                grid_concurrencies(cap, args.grid_max_concurrency).len()
            })
            .sum();
        progress.set_length((lengths.len() + total) as u64);
        'grid: for &ctx in &contexts {
            let (prompt, out) = grid_shape(ctx, cache.map(|c| c.block_size), args.grid_max_tokens);
            let bps = cache.map(|c| blocks_per_sequence(u64::from(ctx), c.block_size));
            let cap = cache.map(|c| capacity(&c, u64::from(ctx)));
            let mut row = GridRow {
                context_tokens: ctx,
                prompt_tokens: prompt,
                max_tokens: out,
                blocks_per_sequence: bps,
                capacity_computed: cap,
                ..Default::default()
            };
            let spec = RequestSpec {
                prompt_tokens: prompt,
                max_tokens: out,
                stream: true,
            };
            let mut all_fit_so_far = true;
            for c in grid_concurrencies(cap, args.grid_max_concurrency) {
                progress.message(format!("grid: {c} × {ctx} tokens"));
                let Some(cell) = grid_cell(&t, args, spec, c, token).await else {
                    k.grid.push(row);
                    report.mark_partial(format!("interrupted in the grid at {c} × {ctx} tokens"));
                    break 'grid;
                };
                if cell.fits && all_fit_so_far {
                    row.max_fitting_observed = Some(c);
                }
                all_fit_so_far &= cell.fits;
                let stop = !cell.fits && cap.is_none();
                row.cells.push(cell);
                progress.inc(1);
                if stop {
                    break;
                }
            }
            k.grid.push(row);
        }
        let undecided = k
            .grid
            .iter()
            .flat_map(|r| r.cells.iter().map(move |c| (r.context_tokens, c)))
            .filter(|(_, c)| c.verdict == "undecided")
            .map(|(ctx, c)| format!("{} × {ctx}", c.concurrency))
            .collect::<Vec<_>>();
        if !undecided.is_empty() {
            report.notes.push(format!(
                "grid cells never seen in a known state after {ATTEMPTS} runs (all running, or one waiting while the rest decoded): {}; their sequences end too fast for /metrics to be read between their prefill and their end",
                undecided.join(", ")
            ));
        }
        if k.grid.iter().any(|r| {
            r.capacity_computed
                .zip(r.max_fitting_observed)
                .is_some_and(|(c, o)| u64::from(o) < c)
        }) {
            report.notes.push(
                "fewer sequences ran at once than the KV cache holds for some lengths: another limit (max_num_seqs, max_num_batched_tokens) binds first".into(),
            );
        }
    }
    progress.finish();
    report.duration_s = started.elapsed().as_secs_f64();
    report.kv_scale = Some(k);
    Ok(report)
}

/// Notes on the ladder as a whole: rejections that did or did not touch the GPU, rungs whose
/// KV usage was not measured or was off by more than a block, requests not released.
fn ladder_notes(k: &KvScaleSection, notes: &mut Vec<String>) {
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
async fn boundary<T: Target>(
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

/// Writes the kv-scale plots into `dir`.
pub fn plots(dir: &std::path::Path, k: &KvScaleSection) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let answered: Vec<&LadderRung> = k
        .ladder
        .iter()
        .filter(|r| matches!(r.feasibility.as_str(), "accepted" | "clamped"))
        .collect();
    let x = |r: &LadderRung| f64::from(r.prompt_tokens.unwrap_or(r.prompt_tokens_requested));
    let marker = k
        .max_model_len
        .map(|m| (f64::from(m), format!("max_model_len {m}")));
    let mut files = plot::line_chart(
        dir,
        "kv-ttft",
        &LineChart {
            title: "Time to first token against prompt length (prefill cost)".into(),
            x_label: "prompt tokens".into(),
            y_label: "TTFT (ms)".into(),
            x_log: false,
            series: vec![Series {
                name: "TTFT".into(),
                points: answered
                    .iter()
                    .filter_map(|r| r.ttft_s.map(|v| (x(r), v * 1000.0)))
                    .collect(),
                color: 0,
                width: 3,
            }],
            marker: marker.clone(),
        },
    )?;
    files.extend(plot::line_chart(
        dir,
        "kv-usage",
        &LineChart {
            title: "KV-cache usage of one request against prompt length".into(),
            x_label: "prompt tokens".into(),
            y_label: "KV-cache usage (%)".into(),
            x_log: false,
            series: vec![
                Series {
                    name: "expected from cache_config_info".into(),
                    points: answered
                        .iter()
                        .filter_map(|r| r.kv_usage_expected.map(|v| (x(r), v * 100.0)))
                        .collect(),
                    color: 5,
                    width: 7,
                },
                Series {
                    name: "measured (peak − before)".into(),
                    points: k
                        .ladder
                        .iter()
                        .filter_map(|r| r.kv_usage_delta.map(|v| (x(r), v * 100.0)))
                        .collect(),
                    color: 1,
                    width: 2,
                },
            ],
            marker,
        },
    )?);
    if !k.grid.is_empty() {
        let rows: Vec<GridRowPlot> = k
            .grid
            .iter()
            .map(|g| GridRowPlot {
                label: format!(
                    "{} tokens, capacity {}",
                    g.context_tokens,
                    g.capacity_computed
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
                cells: g.cells.iter().map(|c| (c.concurrency, c.fits)).collect(),
                capacity: g.capacity_computed,
            })
            .collect();
        files.extend(plot::grid_chart(
            dir,
            "kv-grid",
            "Concurrent sequences that fit, by sequence length",
            &rows,
        )?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::fake::{self, FakeServer, common_args};

    fn args() -> KvScaleArgs {
        KvScaleArgs {
            common: common_args(),
            lengths: vec![],
            max_tokens: 8,
            max_model_len: None,
            sample_interval: Duration::from_millis(2),
            no_boundary: false,
            no_grid: false,
            grid_contexts: vec![],
            grid_max_tokens: None,
            grid_max_concurrency: 64,
        }
    }

    #[test]
    fn capacity_math() {
        let c = CacheConfig {
            block_size: 128,
            num_gpu_blocks: 128,
        };
        assert_eq!(blocks_for(256, 128), 2);
        assert_eq!(blocks_for(257, 128), 3);
        assert_eq!(blocks_for(1, 128), 1);
        assert_eq!(blocks_for(5, 0), 0);
        assert_eq!(blocks_per_sequence(256, 128), 2);
        assert_eq!(
            blocks_per_sequence(257, 128),
            2,
            "the last token is not cached"
        );
        assert_eq!(blocks_per_sequence(258, 128), 3);
        assert_eq!(blocks_per_sequence(1, 128), 1);
        // 127 usable blocks (one null block)
        assert_eq!(capacity(&c, 256), 63);
        assert_eq!(capacity(&c, 2048), 7);
        assert_eq!(capacity(&c, 1024), 15);
        assert_eq!(capacity(&c, 16_384), 0);
        assert_eq!(grid_concurrencies(Some(8), 64), vec![1, 4, 8, 9, 16]);
        assert_eq!(grid_concurrencies(Some(8), 8), vec![1, 4, 8]);
        assert_eq!(grid_concurrencies(Some(1), 64), vec![1, 2]);
        assert_eq!(grid_concurrencies(Some(0), 64), vec![1, 2]);
        assert_eq!(grid_concurrencies(None, 8), vec![1, 2, 4, 8]);
        assert_eq!(
            default_grid_contexts(2048, Some(128)),
            vec![256, 512, 1024, 2048]
        );
        assert_eq!(default_grid_contexts(100, Some(128)), vec![100]);
    }

    #[test]
    fn ladder_reaches_past_the_limit() {
        let l = default_ladder(2048, 64);
        assert_eq!(
            l,
            vec![64, 128, 256, 512, 1024, 1984, 2016, 2047, 2048, 2049, 4096]
        );
        assert!(default_ladder(10, 64).iter().all(|x| *x >= 1));
    }

    #[tokio::test(start_paused = true)]
    async fn ladder_boundary_and_grid_against_the_fake() {
        let f = Arc::new(FakeServer::new(64));
        let r = measure(f, &args(), &CancellationToken::new())
            .await
            .unwrap();
        assert!(!r.partial, "{:?}", r.partial_reason);
        let k = r.kv_scale.unwrap();
        let m = fake::MAX_MODEL_LEN;
        assert_eq!(k.max_model_len, Some(m));
        let by = |p: u32| {
            k.ladder
                .iter()
                .find(|r| r.prompt_tokens_requested == p)
                .unwrap()
        };
        assert_eq!(by(64).feasibility, "accepted");
        assert_eq!(by(m - 8).feasibility, "accepted");
        assert_eq!(by(m - 4).feasibility, "accepted");
        assert_eq!(by(m - 4).output_tokens, Some(4), "the whole context left");
        assert_eq!(by(m).feasibility, "rejected");
        assert!(
            by(m)
                .reason
                .as_deref()
                .unwrap()
                .contains("maximum context length")
        );
        assert_eq!(by(m).kv_usage_delta, Some(0.0));
        // A held rung: all the context left as its budget, read twice while resident, its
        // expectation from the generated tokens in the same body, closed and released.
        let r64 = by(64);
        assert_eq!(r64.max_tokens, m - 64);
        assert_eq!(r64.resident_samples, 2);
        let tokens = r64.kv_tokens_at_sample.unwrap();
        assert!(tokens >= 64, "{tokens}");
        let blocks = tokens.div_ceil(16);
        assert_eq!(r64.kv_blocks_expected, Some(blocks));
        assert_eq!(r64.kv_usage_expected, Some(blocks as f64 / 63.0));
        assert_eq!(r64.kv_usage_delta, Some(blocks as f64 / 63.0));
        assert_eq!(r64.kv_within_one_block, Some(true));
        assert_eq!(r64.released_after_close, Some(true));
        assert!(r64.kv_note.is_none());
        assert!(r64.ttft_s.unwrap() > 0.0);
        // Every rung with room to be held was measured and matched.
        for r in k.ladder.iter().filter(|r| r.feasibility == "accepted") {
            if m - r.prompt_tokens_requested >= MIN_HOLD_TOKENS {
                assert_eq!(r.kv_within_one_block, Some(true), "{r:?}");
            } else {
                assert!(r.kv_note.as_deref().unwrap().contains("too few"), "{r:?}");
                assert_eq!(r.kv_usage_delta, None, "not measured is not 0");
            }
        }
        let b = k.boundary.unwrap();
        assert_eq!(b.max_accepted_prompt_tokens, m - 1);
        assert_eq!(b.min_rejected_prompt_tokens, m);
        assert_eq!(b.consistent_with_max_model_len, Some(true));
        // grid: 63 usable blocks of 16; 256 tokens → 16 blocks → 3 sequences
        let g256 = k.grid.iter().find(|g| g.context_tokens == 256).unwrap();
        assert_eq!((g256.prompt_tokens, g256.max_tokens), (241, 15));
        assert_eq!(g256.capacity_computed, Some(3));
        assert_eq!(g256.max_fitting_observed, Some(3));
        let g64 = k.grid.iter().find(|g| g.context_tokens == 64).unwrap();
        assert_eq!(g64.capacity_computed, Some(15));
        assert_eq!(g64.max_fitting_observed, Some(15));
        for g in &k.grid {
            for c in &g.cells {
                let expect = if u64::from(c.concurrency) <= g.capacity_computed.unwrap() {
                    "fits"
                } else {
                    "queues"
                };
                assert_eq!(
                    c.verdict, expect,
                    "{} × {}",
                    c.concurrency, g.context_tokens
                );
                assert_eq!(c.attempts, 1);
            }
        }
        let over = g64.cells.iter().find(|c| c.concurrency == 16).unwrap();
        assert!(!over.fits);
        assert!(over.waiting_peak.unwrap() >= 1.0);
        assert!(
            r.notes.iter().any(|n| n.contains("before any GPU work")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn verdicts_come_only_from_known_states() {
        let st = |started, ended| GroupState { started, ended };
        let snap = |running: f64, waiting: f64, generated: f64| ServerSnapshot {
            running: Some(running),
            waiting: Some(waiting),
            generation_tokens_total: Some(generated),
            ..Default::default()
        };
        let mut e = CellEvidence::default();
        // before every sequence started, all running proves nothing
        e.add(4, st(3, 0), &snap(4.0, 0.0, 10.0));
        assert_eq!(e, CellEvidence::default());
        // after one ended, nothing counts
        e.add(4, st(4, 1), &snap(4.0, 0.0, 10.0));
        assert_eq!(e, CellEvidence::default());
        // waiting while a sequence was still being prefilled: not known to be waiting
        e.add(4, st(2, 0), &snap(3.0, 1.0, 10.0));
        assert_eq!(e, CellEvidence::default());
        e.add(4, st(4, 0), &snap(4.0, 0.0, 10.0));
        assert!(e.all_resident && !e.one_waiting);
        // one waiting while the rest decode: known only once more than one step has passed
        let mut q = CellEvidence::default();
        q.add(4, st(3, 0), &snap(3.0, 1.0, 30.0));
        assert!(!q.one_waiting, "it may have arrived during the step");
        q.add(4, st(3, 0), &snap(3.0, 1.0, 33.0));
        assert!(
            !q.one_waiting,
            "one step: it may not have had its chance yet"
        );
        q.add(4, st(3, 0), &snap(3.0, 1.0, 34.0));
        assert!(q.one_waiting && !q.all_resident);
        // a new start in between, or no generation counter: nothing is known
        let mut q = CellEvidence::default();
        q.add(4, st(2, 0), &snap(2.0, 2.0, 30.0));
        q.add(4, st(3, 0), &snap(3.0, 1.0, 40.0));
        assert!(!q.one_waiting);
        let mut q = CellEvidence::default();
        q.add(4, st(3, 0), &snap(3.0, 1.0, 30.0));
        q.add(
            4,
            st(3, 0),
            &ServerSnapshot {
                running: Some(3.0),
                waiting: Some(1.0),
                ..Default::default()
            },
        );
        q.add(4, st(3, 0), &snap(3.0, 1.0, 40.0));
        assert!(!q.one_waiting);
        assert_eq!(cell_verdict(4, 4, true, false, Some(0.0)), "fits");
        assert_eq!(cell_verdict(4, 4, true, false, Some(1.0)), "queues");
        assert_eq!(cell_verdict(4, 4, false, true, Some(0.0)), "queues");
        assert_eq!(cell_verdict(4, 3, true, false, Some(0.0)), "failed");
        assert_eq!(cell_verdict(4, 4, false, false, None), "undecided");
        // the grid's shape keeps each sequence at exactly B blocks
        assert_eq!(grid_shape(1024, Some(128), None), (897, 127));
        assert_eq!(grid_shape(100, Some(128), None), (1, 99));
        assert_eq!(grid_shape(1000, Some(16), None), (993, 7));
        assert_eq!(grid_shape(256, None, None), (192, 64));
        assert_eq!(grid_shape(256, Some(16), Some(10)), (246, 10));
        for (ctx, bs) in [
            (1024u32, 128u64),
            (100, 128),
            (1000, 16),
            (257, 16),
            (2, 16),
        ] {
            let (p, out) = grid_shape(ctx, Some(bs), None);
            let b = blocks_per_sequence(u64::from(ctx), bs);
            for k in 1..=u64::from(out) {
                assert_eq!(
                    blocks_for(u64::from(p) + k - 1, bs),
                    b,
                    "{ctx}/{bs} at token {k}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rung_that_ends_before_it_is_seen_is_not_reported_as_zero() {
        // The default stream_held reports progress only at the end: never seen resident.
        struct Opaque(FakeServer);
        impl Target for Opaque {
            async fn models(&self) -> anyhow::Result<Vec<super::super::engine::ModelInfo>> {
                self.0.models().await
            }
            async fn prepare(&self, m: &super::super::engine::ModelInfo) -> Vec<String> {
                self.0.prepare(m).await
            }
            async fn execute(&self, spec: RequestSpec, intended: Instant) -> Sample {
                self.0.execute(spec, intended).await
            }
            async fn metrics(&self) -> anyhow::Result<ServerSnapshot> {
                self.0.metrics().await
            }
        }
        let f = Opaque(FakeServer::new(64));
        let mut a = args();
        a.lengths = vec![64];
        a.no_grid = true;
        a.no_boundary = true;
        let r = measure(Arc::new(f), &a, &CancellationToken::new())
            .await
            .unwrap();
        let rung = &r.kv_scale.unwrap().ladder[0];
        assert_eq!(rung.attempts, ATTEMPTS);
        assert_eq!(rung.kv_usage_delta, None);
        assert_eq!(rung.kv_within_one_block, None);
        assert!(rung.kv_note.as_deref().unwrap().contains("ended before"));
    }

    #[tokio::test(start_paused = true)]
    async fn explicit_lengths_bisect_the_boundary() {
        let f = Arc::new(FakeServer::new(64));
        let mut a = args();
        a.lengths = vec![10, 1000];
        a.no_grid = true;
        let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
        let b = r.kv_scale.unwrap().boundary.unwrap();
        assert_eq!(b.max_accepted_prompt_tokens, fake::MAX_MODEL_LEN - 1);
        assert!(b.probes >= 7 && b.probes <= 10, "{}", b.probes);
    }

    #[tokio::test(start_paused = true)]
    async fn no_metrics_is_an_error_and_interrupt_is_partial() {
        let f = Arc::new(FakeServer::new(64));
        f.without_metrics();
        let e = measure(f, &args(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("no readable /metrics"), "{e:#}");
        let f = Arc::new(FakeServer::new(64));
        let token = CancellationToken::new();
        token.cancel();
        let r = measure(f, &args(), &token).await.unwrap();
        assert!(r.partial);
    }

    #[test]
    fn bad_arguments() {
        let mut a = args();
        a.lengths = vec![0];
        assert!(a.validate().unwrap_err().to_string().contains("--lengths"));
        let mut a = args();
        a.grid_contexts = vec![1];
        assert!(a.validate().is_err());
    }
}
