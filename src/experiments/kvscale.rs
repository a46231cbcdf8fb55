//! `kv-scale`: context length against KV cache and feasibility.
//!
//! 1. **Ladder.** One request per prompt length, up to and past `max_model_len` (from
//!    `/v1/models`). For each: TTFT (the prefill cost), the KV-cache usage the request causes
//!    (the server's `vllm:kv_cache_usage_perc` sampled every `--sample-interval` while it runs,
//!    peak minus the level before it), GPU memory where NVML is present, and feasibility:
//!    `accepted`, `clamped` (200 with finish_reason `length` and fewer tokens than asked) or
//!    `rejected` (the server's 4xx reason). A rejected rung shows no KV usage and no running
//!    request: the server refused it before any GPU work.
//! 2. **Boundary.** Bisection between the longest accepted and the shortest rejected prompt
//!    (with `max_tokens` 1) finds the exact limit.
//! 3. **Grid.** For a few sequence lengths L, N concurrent sequences of L tokens each: does
//!    every one run at once without preemption (`num_requests_running` reaches N,
//!    `num_preemptions_total` does not move)? Beside it, the capacity computed from
//!    `vllm:cache_config_info`: `floor(num_gpu_blocks / ceil(L / block_size))`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{self, CommonArgs, Outputs};
use super::engine::{CacheConfig, RequestSpec, Sample, ServerSnapshot, Target, choose_model};
use super::plot::{self, GridRowPlot, LineChart, Series};
use super::progress::Progress;
use super::report::{
    Boundary, CacheInfo, GridCell, GridRow, KvScaleSection, LadderRung, Report, TargetInfo,
};
use crate::cli::parse_duration;

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
    /// max_tokens of each ladder request (long enough for the request to stay resident while
    /// /metrics is sampled).
    #[arg(long, default_value_t = 64, env = "VLLM_SENTINEL_MAX_TOKENS")]
    pub max_tokens: u32,
    /// The server's context limit, when /v1/models does not publish max_model_len.
    #[arg(long, env = "VLLM_SENTINEL_MAX_MODEL_LEN")]
    pub max_model_len: Option<u32>,
    /// Interval between samples of /metrics while a request runs.
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
/// Whether `c` concurrent sequences ran at once: all served, none preempted, and either the
/// server was seen running all of them or nothing ever waited. vLLM publishes its gauges between
/// engine steps and a `/metrics` sample takes tens of milliseconds, so a short cell can finish
/// between two samples with `running` never seen at `c`; a cell in which no request waited and
/// none was preempted still had every sequence admitted.
pub fn cell_fits(
    c: u32,
    ok: usize,
    running_peak: Option<f64>,
    waiting_peak: Option<f64>,
    preemptions: Option<f64>,
) -> bool {
    ok == c as usize
        && preemptions.is_none_or(|p| p == 0.0)
        && (running_peak.is_some_and(|r| r >= f64::from(c)) || waiting_peak == Some(0.0))
}

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
}

/// Runs `requests` at once (as spawned tasks, so sampling never delays them) and samples the
/// server every `every` until all are done. `None` when interrupted.
async fn run_watched<T: Target>(
    t: &Arc<T>,
    requests: Vec<RequestSpec>,
    every: Duration,
    token: &CancellationToken,
) -> Option<(Vec<Sample>, Watch)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in requests.into_iter().enumerate() {
        let t = t.clone();
        set.spawn(async move { (i, t.execute(spec, 0.0).await) });
    }
    let n = set.len();
    let mut out: Vec<Option<Sample>> = vec![None; n];
    let mut w = Watch::default();
    let mut next = Instant::now();
    loop {
        if let Ok(s) = t.metrics().await {
            w.add(&s);
        }
        if let Ok(g) = t.gpu() {
            w.gpu_mem_peak = max_opt(w.gpu_mem_peak, Some(g.memory_used_bytes));
            w.gpu_util_peak = max_opt(w.gpu_util_peak, Some(g.utilization));
        }
        next += every;
        let mut done = false;
        loop {
            tokio::select! {
                j = set.join_next() => match j {
                    None => { done = true; break; }
                    Some(Ok((i, s))) => { if let Some(slot) = out.get_mut(i) { *slot = Some(s); } }
                    Some(Err(e)) => tracing::warn!("request task failed: {e}"),
                },
                _ = tokio::time::sleep_until(next) => break,
                _ = token.cancelled() => {
                    set.abort_all();
                    return None;
                }
            }
        }
        if done {
            break;
        }
    }
    Some((
        out.into_iter()
            .map(|s| s.unwrap_or_else(|| Sample::failed("client_error", "request task failed")))
            .collect(),
        w,
    ))
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
        let before = t.metrics().await.ok().and_then(|s| s.kv_usage);
        let spec = RequestSpec {
            prompt_tokens: len,
            max_tokens: args.max_tokens,
            stream: true,
        };
        let Some((mut samples, w)) = run_watched(&t, vec![spec], args.sample_interval, token).await
        else {
            report.mark_partial(format!("interrupted at prompt length {len}"));
            break;
        };
        let s = samples.pop().unwrap_or_default();
        let feas = feasibility(&s, args.max_tokens);
        let resident = s.ok().then(|| {
            u64::from(s.prompt_tokens.unwrap_or(len)) + u64::from(s.output_tokens.unwrap_or(0))
        });
        let blocks = cache
            .zip(resident)
            .map(|(c, r)| blocks_for(r.saturating_sub(1), c.block_size));
        k.ladder.push(LadderRung {
            prompt_tokens_requested: len,
            prompt_tokens: s.prompt_tokens,
            max_tokens: args.max_tokens,
            feasibility: feas.to_string(),
            status: s.status,
            reason: if s.ok() {
                None
            } else {
                s.error_message.clone()
            },
            ttft_s: s.ttft_s,
            e2e_s: s.ok().then_some(s.e2e_s),
            output_tokens: s.output_tokens,
            finish_reason: s.finish_reason.clone(),
            kv_usage_before: before,
            kv_usage_peak: w.kv_peak,
            kv_usage_delta: w.kv_peak.zip(before).map(|(p, b)| (p - b).max(0.0)),
            kv_blocks_expected: blocks,
            kv_usage_expected: blocks
                .zip(cache)
                .map(|(b, c)| b as f64 / c.usable_blocks().max(1) as f64),
            running_peak: w.running_peak,
            metric_samples: w.samples,
            gpu_memory_used_bytes: w.gpu_mem_peak,
            gpu_utilization_peak: w.gpu_util_peak,
        });
        progress.inc(1);
    }
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
        report.notes.push(format!(
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
            let out = args
                .grid_max_tokens
                .unwrap_or((ctx / 4).max(1))
                .clamp(1, ctx.saturating_sub(1).max(1));
            let prompt = ctx.saturating_sub(out).max(1);
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
            let mut all_fit_so_far = true;
            for c in grid_concurrencies(cap, args.grid_max_concurrency) {
                progress.message(format!("grid: {c} × {ctx} tokens"));
                let before = t.metrics().await.ok().and_then(|s| s.preemptions_total);
                let spec = RequestSpec {
                    prompt_tokens: prompt,
                    max_tokens: out,
                    stream: false,
                };
                let Some((samples, w)) =
                    run_watched(&t, vec![spec; c as usize], args.sample_interval, token).await
                else {
                    k.grid.push(row);
                    report.mark_partial(format!("interrupted in the grid at {c} × {ctx} tokens"));
                    break 'grid;
                };
                let after = t.metrics().await.ok().and_then(|s| s.preemptions_total);
                let ok = samples.iter().filter(|s| s.ok()).count();
                let preemptions = after.zip(before).map(|(a, b)| (a - b).max(0.0));
                let fits = cell_fits(c, ok, w.running_peak, w.waiting_peak, preemptions);
                if fits && all_fit_so_far {
                    row.max_fitting_observed = Some(c);
                }
                all_fit_so_far &= fits;
                row.cells.push(GridCell {
                    concurrency: c,
                    fits,
                    running_peak: w.running_peak,
                    waiting_peak: w.waiting_peak,
                    preemptions,
                    kv_usage_peak: w.kv_peak,
                    ok,
                    failed: samples.len() - ok,
                });
                progress.inc(1);
                if !fits && cap.is_none() {
                    break;
                }
            }
            k.grid.push(row);
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
                s = t.execute(spec, 0.0) => Some(s),
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
        assert_eq!(by(m - 4).feasibility, "clamped");
        assert_eq!(by(m - 4).output_tokens, Some(4));
        assert_eq!(by(m).feasibility, "rejected");
        assert!(
            by(m)
                .reason
                .as_deref()
                .unwrap()
                .contains("maximum context length")
        );
        assert_eq!(by(m).kv_usage_delta, Some(0.0));
        // one 64-token prompt + 8 out = 71 cached tokens → 5 blocks of 16, out of 63 usable
        let r64 = by(64);
        assert_eq!(r64.kv_usage_peak, Some(5.0 / 63.0));
        assert_eq!(r64.kv_blocks_expected, Some(5));
        assert_eq!(r64.kv_usage_expected, Some(5.0 / 63.0));
        assert!(r64.ttft_s.unwrap() > 0.0);
        let b = k.boundary.unwrap();
        assert_eq!(b.max_accepted_prompt_tokens, m - 1);
        assert_eq!(b.min_rejected_prompt_tokens, m);
        assert_eq!(b.consistent_with_max_model_len, Some(true));
        // grid: 63 usable blocks of 16; 256 tokens → 16 blocks → 3 sequences
        let g256 = k.grid.iter().find(|g| g.context_tokens == 256).unwrap();
        assert_eq!(g256.capacity_computed, Some(3));
        assert_eq!(g256.max_fitting_observed, Some(3));
        let g64 = k.grid.iter().find(|g| g.context_tokens == 64).unwrap();
        assert_eq!(g64.capacity_computed, Some(15));
        assert_eq!(g64.max_fitting_observed, Some(15));
        let over = g64.cells.iter().find(|c| c.concurrency == 16).unwrap();
        assert!(!over.fits);
        // A cell whose gauges were sampled between steps: nothing waited, nothing preempted.
        assert!(cell_fits(1, 1, Some(0.0), Some(0.0), Some(0.0)));
        assert!(!cell_fits(4, 4, Some(2.0), Some(2.0), Some(0.0)));
        assert!(!cell_fits(4, 4, Some(4.0), Some(0.0), Some(1.0)));
        assert!(!cell_fits(4, 3, Some(4.0), Some(0.0), Some(0.0)));
        assert!(over.waiting_peak.unwrap() >= 1.0);
        assert!(
            r.notes.iter().any(|n| n.contains("before any GPU work")),
            "{:?}",
            r.notes
        );
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
