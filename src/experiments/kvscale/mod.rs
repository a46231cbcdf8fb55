//! `kv-scale`: context length against KV cache and feasibility.
//!
//! 1. **Ladder.** One request per prompt length, up to and past `max_model_len` (from
//!    `/v1/models`). For each: TTFT (the prefill cost), the KV-cache usage the request holds,
//!    GPU memory where NVML is present, and feasibility: `accepted`, `clamped` (200 with
//!    finish_reason `length` and fewer tokens than asked) or `rejected` (the server's 4xx
//!    reason). A rejected rung shows no KV usage and no running request: the server refused it
//!    before any GPU work.
//!
//!    The KV usage is read from a body of a known instant, not from a lucky sample: the rung's request
//!    streams with `ignore_eos` and a `max_tokens` of all the context left
//!    (`max_model_len − prompt`), so it stays resident until kv-scale closes it or that context
//!    is used up. From the moment it is sent, `/metrics` is read back to back until two bodies
//!    show the request running past its prefill (`num_requests_running` ≥ 1, a gauge vLLM
//!    publishes in the same engine step as `kv_cache_usage_perc` and `generation_tokens_total`,
//!    and `generation_tokens_total` past its value before the request), or the stream ends
//!    after one such body. The client's progress is not waited for: a loaded vLLM can hand the
//!    whole stream over at once after the request has ended in the engine. The last of them gives the usage, and its
//!    `generation_tokens_total` gives the tokens the request then held, so the expected usage
//!    `ceil((prompt + generated − 1) / block_size) / (num_gpu_blocks − 1)` is of the same
//!    instant. Then the stream is closed, and kv-scale checks that the server aborted the
//!    request and freed its blocks. The hold lasts as long as the server takes to decode the
//!    context left: on a server slow to answer `/metrics` beside a fast decode it can end first.
//!    A rung with less than [`MIN_HOLD_TOKENS`] of context left cannot be held and says so; a
//!    stream that ended before it was seen is sent again (up to [`ATTEMPTS`] times), and is
//!    reported as not observed rather than as 0.
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

mod args;
mod geometry;
mod grid;
mod held;
mod ladder;
mod plots;
#[cfg(test)]
mod tests;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{self, Outputs};
use super::engine::{CacheConfig, RequestSpec, Target, choose_model};
use super::plot::{self, GridRowPlot, LineChart, Series};
use super::progress::Progress;
use super::report::{CacheInfo, GridRow, KvScaleSection, LadderRung, Report, TargetInfo};

pub use args::KvScaleArgs;
pub use geometry::{
    blocks_for, blocks_per_sequence, capacity, default_grid_contexts, default_ladder,
    grid_concurrencies, grid_shape,
};
pub use grid::cell_verdict;
use grid::grid_cell;
use ladder::{boundary, ladder_notes, ladder_rung};
pub use plots::plots;

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

/// Measures against `t`. Stops early (a partial report) when `token` is cancelled.
pub async fn measure<T: Target>(
    t: Arc<T>,
    args: &KvScaleArgs,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    let (mut report, mut k, plan) = prepare(&t, args).await?;
    let progress = Progress::new(
        !args.common.no_progress,
        plan.lengths.len() as u64,
        "kv-scale",
    );
    let started = Instant::now();
    // 1. the ladder
    run_ladder(&t, args, &plan, &mut k, &mut report, &progress, token).await;
    ladder_notes(&k, &mut report.notes);
    // 2. the exact boundary
    if !args.no_boundary && !report.partial {
        progress.message("context boundary");
        match boundary(&t, &k, plan.max_model_len, token).await {
            Ok(Some(b)) => k.boundary = Some(b),
            Ok(None) => report.mark_partial("interrupted while finding the context boundary"),
            Err(e) => report
                .notes
                .push(format!("context boundary not found: {e:#}")),
        }
    }
    // 3. the grid
    if !args.no_grid && !report.partial {
        run_grid(&t, args, &plan, &mut k, &mut report, &progress, token).await;
        grid_notes(&k, &mut report.notes);
    }
    progress.finish();
    report.duration_s = started.elapsed().as_secs_f64();
    report.kv_scale = Some(k);
    Ok(report)
}

/// What the setup learnt from the server and the flags.
struct Plan {
    lengths: Vec<u32>,
    max_model_len: Option<u32>,
    cache: Option<CacheConfig>,
}

/// Checks the flags and the server (models, `/metrics` with KV usage), picks the ladder and
/// starts the report with the run's parameters.
async fn prepare<T: Target>(
    t: &Arc<T>,
    args: &KvScaleArgs,
) -> anyhow::Result<(Report, KvScaleSection, Plan)> {
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
    record_parameters(&mut report, args, &lengths);
    let cache = first.cache;
    let k = KvScaleSection {
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
    let plan = Plan {
        lengths,
        max_model_len,
        cache,
    };
    Ok((report, k, plan))
}

/// The run's parameters, as the report records them.
fn record_parameters(report: &mut Report, args: &KvScaleArgs, lengths: &[u32]) {
    report.set("lengths", lengths);
    report.set("max_tokens", args.max_tokens);
    report.set("sample_interval_s", args.sample_interval.as_secs_f64());
    report.set("boundary", !args.no_boundary);
    report.set("grid", !args.no_grid);
    report.set("grid_max_concurrency", args.grid_max_concurrency);
    report.set(
        "request_timeout_s",
        args.common.request_timeout.as_secs_f64(),
    );
}

/// Phase 1: one held request per prompt length.
async fn run_ladder<T: Target>(
    t: &Arc<T>,
    args: &KvScaleArgs,
    plan: &Plan,
    k: &mut KvScaleSection,
    report: &mut Report,
    progress: &Progress,
    token: &CancellationToken,
) {
    for &len in &plan.lengths {
        progress.message(format!("prompt {len}"));
        let Some(rung) = ladder_rung(t, args, len, plan.max_model_len, plan.cache, token).await
        else {
            report.mark_partial(format!("interrupted at prompt length {len}"));
            break;
        };
        k.ladder.push(rung);
        progress.inc(1);
    }
}

/// Phase 3: for each sequence length, concurrencies around the computed capacity.
async fn run_grid<T: Target>(
    t: &Arc<T>,
    args: &KvScaleArgs,
    plan: &Plan,
    k: &mut KvScaleSection,
    report: &mut Report,
    progress: &Progress,
    token: &CancellationToken,
) {
    let cache = plan.cache;
    let contexts = if args.grid_contexts.is_empty() {
        plan.max_model_len
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
    progress.set_length((plan.lengths.len() + total) as u64);
    for &ctx in &contexts {
        let (row, interrupted) = grid_row(t, args, cache, ctx, progress, token).await;
        k.grid.push(row);
        if let Some(c) = interrupted {
            report.mark_partial(format!("interrupted in the grid at {c} × {ctx} tokens"));
            break;
        }
    }
}

/// One grid row: sequences of `ctx` tokens at rising concurrency. With the concurrency at
/// which it was interrupted, if it was.
async fn grid_row<T: Target>(
    t: &Arc<T>,
    args: &KvScaleArgs,
    cache: Option<CacheConfig>,
    ctx: u32,
    progress: &Progress,
    token: &CancellationToken,
) -> (GridRow, Option<u32>) {
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
        let Some(cell) = grid_cell(t, args, spec, c, token).await else {
            return (row, Some(c));
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
    (row, None)
}

/// Notes on the grid as a whole: undecided cells, and another limit binding before the cache.
fn grid_notes(k: &KvScaleSection, notes: &mut Vec<String>) {
    let undecided = k
        .grid
        .iter()
        .flat_map(|r| r.cells.iter().map(move |c| (r.context_tokens, c)))
        .filter(|(_, c)| c.verdict == "undecided")
        .map(|(ctx, c)| format!("{} × {ctx}", c.concurrency))
        .collect::<Vec<_>>();
    if !undecided.is_empty() {
        notes.push(format!(
            "grid cells never seen in a known state after {ATTEMPTS} runs (all running, or one waiting while the rest decoded): {}; their sequences end too fast for /metrics to be read between their prefill and their end",
            undecided.join(", ")
        ));
    }
    if k.grid.iter().any(|r| {
        r.capacity_computed
            .zip(r.max_fitting_observed)
            .is_some_and(|(c, o)| u64::from(o) < c)
    }) {
        notes.push(
            "fewer sequences ran at once than the KV cache holds for some lengths: another limit (max_num_seqs, max_num_batched_tokens) binds first".into(),
        );
    }
}
