//! The report every experiment writes: a versioned JSON document (schema in
//! `docs/report-schema.json`, bumped with [`SCHEMA_VERSION`] on any incompatible change) and
//! CSV files with one row per request (bench), level (sweep) or ladder rung / grid cell
//! (kv-scale).
//!
//! CSV is written by hand: the rows are flat numbers and short strings, and the only rule that
//! matters (quote a field holding a comma, quote or newline; double inner quotes) is four lines.
//! All values are in base units (seconds, tokens, bytes, ratios 0–1).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::engine::{Outcome, Sample};
use super::knee::{Knee, KneeParams, Slo};
use super::stats::{GaugeStats, Summary};
pub use super::sweep::search::RateSearch;

/// Version of the report format. Readers should check it.
pub const SCHEMA_VERSION: u32 = 1;

/// One experiment's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `bench`, `sweep` or `kv-scale`.
    pub kind: String,
    /// `vllm-sentinel <version>`.
    pub tool: String,
    /// Start of the experiment, seconds since the unix epoch.
    pub started_unix_s: f64,
    /// How long the experiment ran, seconds.
    pub duration_s: f64,
    /// The run was interrupted (Ctrl-C) or stopped by an error: what is here was measured, but
    /// not everything that was asked for.
    pub partial: bool,
    /// Why the run is partial.
    pub partial_reason: Option<String>,
    /// The server.
    pub target: TargetInfo,
    /// The settings the experiment ran with (its flags, resolved).
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Things a reader should know (warnings, caveats).
    pub notes: Vec<String>,
    /// Present when `kind` is `bench`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bench: Option<BenchSection>,
    /// Present when `kind` is `sweep`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sweep: Option<SweepSection>,
    /// Present when `kind` is `kv-scale`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kv_scale: Option<KvScaleSection>,
}

impl Report {
    /// An empty report of `kind` for `target`, started now.
    pub fn new(kind: &str, target: TargetInfo) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            kind: kind.to_string(),
            tool: format!("vllm-sentinel {}", env!("CARGO_PKG_VERSION")),
            started_unix_s: crate::clock::unix_seconds(),
            duration_s: 0.0,
            partial: false,
            partial_reason: None,
            target,
            settings: BTreeMap::new(),
            notes: Vec::new(),
            bench: None,
            sweep: None,
            kv_scale: None,
        }
    }

    /// Marks the report partial, keeping the first reason.
    pub fn mark_partial(&mut self, reason: impl Into<String>) {
        if !self.partial {
            self.partial = true;
            self.partial_reason = Some(reason.into());
        }
    }

    /// Records one setting.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.settings.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }

    /// Writes the JSON report to `path` (pretty-printed).
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let body = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(path, body + "\n")
            .with_context(|| format!("writing the JSON report to {}", path.display()))
    }
}

/// The server the experiment ran against.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Base URL.
    pub url: String,
    /// Model id used.
    pub model: String,
    /// `completions` or `chat`.
    pub endpoint: String,
    /// `max_model_len` from `/v1/models`, when published.
    pub max_model_len: Option<u32>,
}

/// Latency and size summaries of a set of requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencySummaries {
    /// Time to first byte of the response body, seconds.
    pub ttfb_s: Summary,
    /// Time to first token, seconds (streaming requests only).
    pub ttft_s: Summary,
    /// Gaps between consecutive token-bearing chunks, seconds (all gaps of all requests).
    pub itl_s: Summary,
    /// Per-request mean time per output token after the first, seconds.
    pub tpot_s: Summary,
    /// End-to-end latency, seconds.
    pub e2e_s: Summary,
    /// Per-request output tokens per second (output tokens / end-to-end latency).
    pub output_tokens_per_s: Summary,
    /// Output tokens per request.
    pub output_tokens: Summary,
    /// Prompt tokens per request, as the server counted them.
    pub prompt_tokens: Summary,
}

/// `bench`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchSection {
    /// One entry per mode run (streaming, non-streaming).
    pub modes: Vec<BenchMode>,
    /// Every measured request (warm-ups excluded), in order.
    pub requests: Vec<RequestRow>,
    /// The objectives, when any `--slo-*` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<BenchSlo>,
    /// `--dataset multi-turn`: TTFT by turn of the session (absent for other sources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnRow>,
}

/// Multi-turn: the requests of one turn of the sessions (`1` … `7`; later turns fold into `8+`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TurnRow {
    /// `1` … `7` or `8+`.
    pub turn: String,
    /// Measured requests of this turn.
    pub requests: usize,
    /// Of which succeeded.
    pub ok: usize,
    /// TTFT of the successful streaming requests, seconds.
    pub ttft_s: Summary,
    /// Prompt tokens (the whole history) as the server counted them.
    pub prompt_tokens: Summary,
}

/// `bench`: one mode.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchMode {
    /// Streaming (SSE) or not.
    pub stream: bool,
    /// Measured requests sent (warm-ups excluded).
    pub requests: usize,
    /// Of which succeeded.
    pub ok: usize,
    /// Failures by error class.
    pub errors_by_class: BTreeMap<String, usize>,
    /// Summaries over the successful requests.
    pub latency: LatencySummaries,
    /// Wall time of the measured requests (warm-up excluded), seconds.
    #[serde(default)]
    pub duration_s: f64,
    /// Share of the requests (failures included) that met every SLO; with `--slo-*` only.
    #[serde(default)]
    pub slo_attainment: Option<f64>,
    /// Requests per second that met every SLO (vLLM's `request_goodput`); with `--slo-*` only.
    #[serde(default)]
    pub goodput_rps: Option<f64>,
    /// Whether `slo_attainment` reached `--slo-attainment`; with `--slo-*` only.
    #[serde(default)]
    pub slo_met: Option<bool>,
}

/// `bench`: the objectives its goodput was judged against.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchSlo {
    /// The thresholds (seconds).
    pub objectives: Slo,
    /// Share of a mode's requests that must meet them.
    pub min_attainment: f64,
}

/// One request, flat (bench JSON `requests` and bench CSV rows).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRow {
    /// Sequence number among the measured requests of the run.
    pub index: usize,
    /// Streaming or not.
    pub stream: bool,
    /// How it ended, written as the prober's `outcome` label (`ok`, `context_length`, …).
    #[serde(with = "outcome_label")]
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub ttfb_s: Option<f64>,
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub e2e_s: f64,
    pub prompt_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub finish_reason: Option<String>,
    pub error_message: Option<String>,
    /// Gaps between token-bearing chunks, seconds: kept for `--vllm-bench-json`, not written
    /// to the report.
    #[serde(skip)]
    pub itl_s: Vec<f64>,
    /// When it was sent, seconds after the run started: kept for `--vllm-bench-json`, not
    /// written to the report.
    #[serde(skip)]
    pub start_s: f64,
}

impl Default for RequestRow {
    fn default() -> Self {
        Self {
            index: 0,
            stream: false,
            outcome: Outcome::Ok,
            status: None,
            ttfb_s: None,
            ttft_s: None,
            tpot_s: None,
            e2e_s: 0.0,
            prompt_tokens: None,
            output_tokens: None,
            finish_reason: None,
            error_message: None,
            itl_s: Vec::new(),
            start_s: 0.0,
        }
    }
}

/// Serde for an [`Outcome`] as its label: the report keeps the strings the daemon's `outcome`
/// label uses, and reads back only those.
mod outcome_label {
    use super::Outcome;

    pub fn serialize<S: serde::Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(o.as_str())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
        let label = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == label)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown outcome {label:?}")))
    }
}

/// `sweep`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepSection {
    /// `concurrency` (closed loop) or `rate` (open loop, Poisson arrivals).
    pub mode: String,
    /// The levels run, in order of increasing load.
    pub levels: Vec<SweepLevel>,
    /// Thresholds the knee was detected with.
    pub knee_params: KneeParams,
    /// Where throughput stopped growing while latency climbed; `null` when not reached.
    pub knee: Option<Knee>,
    /// The sweep stopped before its last level because the server was over-saturated.
    pub stopped_early: bool,
    /// Why it stopped early.
    pub stop_reason: Option<String>,
    /// The objectives, when any `--slo-*` was given.
    pub slo: Option<SloSection>,
    /// Index of the level with the highest output token throughput.
    pub max_throughput_level: Option<usize>,
    /// `--rate-search`: every probe and the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<RateSearch>,
}

/// The SLO part of a sweep.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SloSection {
    /// The thresholds (seconds).
    pub objectives: Slo,
    /// Share of a level's requests that must meet them for the level to pass.
    pub min_attainment: f64,
    /// Highest-load level that passed; `null` when none did.
    pub best_level: Option<usize>,
    /// Its offered load.
    pub best_load: Option<f64>,
    /// Its goodput: requests per second that met every objective.
    pub best_goodput_rps: Option<f64>,
}

/// The steady-state window of a level.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Window {
    /// Start, seconds after the level started (the end of its warm-up).
    pub start_s: f64,
    /// End, seconds after the level started.
    pub end_s: f64,
    /// `end_s - start_s`.
    pub duration_s: f64,
}

/// `sweep`: one level.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepLevel {
    /// Offered load: the concurrency or the request rate.
    pub load: f64,
    /// Concurrent streams (concurrency mode).
    pub concurrency: Option<u32>,
    /// Requests per second offered (rate mode).
    pub rate_rps: Option<f64>,
    /// The level was cut short (interrupt).
    pub partial: bool,
    /// Warm-up requests, discarded.
    pub warmup_requests: usize,
    /// The window the numbers below come from.
    pub window: Window,
    /// Requests that started in the window and succeeded.
    pub ok: usize,
    /// Requests that started in the window and failed.
    pub failed: usize,
    /// Failures by error class.
    pub errors_by_class: BTreeMap<String, usize>,
    /// Successful requests completed in the window per second.
    pub request_throughput_rps: f64,
    /// Output tokens of requests completed in the window, per second.
    pub output_token_throughput_tps: f64,
    /// Prompt + output tokens of requests completed in the window, per second.
    pub total_token_throughput_tps: f64,
    /// Mean requests in flight over the window.
    pub mean_in_flight: f64,
    /// Latency summaries of the window's successful requests.
    pub latency: LatencySummaries,
    /// The server's gauges over the level.
    pub server: ServerLevelStats,
    /// GPUs over the level.
    pub gpu: GpuLevelStats,
    /// SLO results of the level, when objectives were given.
    pub slo_attainment: Option<f64>,
    /// Requests per second that met every objective.
    pub goodput_rps: Option<f64>,
    /// `--dataset multi-turn`: TTFT by turn over the level's window (absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnRow>,
    /// Open loop only: the generator's achieved send rate and schedule lag in the window.
    #[serde(default)]
    pub schedule: Option<ScheduleStats>,
    /// The window's requests, (intended send time, seconds after the level started, from which
    /// its latencies count; measurement): kept
    /// for `--vllm-bench-json`, not written to the report.
    #[serde(skip)]
    pub records: Vec<(f64, Sample)>,
}

/// How closely an open-loop level kept its arrival schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScheduleStats {
    /// Requests sent in the window divided by the time from the window's start to the last
    /// send: the offered rate the generator really achieved.
    pub achieved_send_rate_rps: f64,
    /// Actual send minus scheduled arrival, per request, seconds (latencies count from the
    /// scheduled arrival, so lag is charged to them, never hidden).
    pub lag_s: Summary,
}

/// A level's view of the server's own `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerLevelStats {
    /// Whether `/metrics` could be read during the level.
    pub available: bool,
    /// `vllm:kv_cache_usage_perc` (0–1).
    pub kv_cache_usage: GaugeStats,
    /// `vllm:num_requests_waiting`.
    pub requests_waiting: GaugeStats,
    /// `vllm:num_requests_running`.
    pub requests_running: GaugeStats,
    /// Increase of `vllm:num_preemptions_total` over the level.
    pub preemptions: Option<f64>,
}

/// A level's view of the GPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GpuLevelStats {
    /// Whether NVML answered.
    pub available: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// Utilisation 0–1.
    pub utilization: GaugeStats,
    /// Memory used, bytes.
    pub memory_used_bytes: GaugeStats,
}

/// `kv-scale`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KvScaleSection {
    /// From `/v1/models`.
    pub max_model_len: Option<u32>,
    /// From `vllm:cache_config_info`.
    pub cache: Option<CacheInfo>,
    /// How GPU memory behaves, for readers who expect it to follow context length.
    pub gpu_memory_note: String,
    /// One rung per prompt length.
    pub ladder: Vec<LadderRung>,
    /// The exact context boundary, found by bisection.
    pub boundary: Option<Boundary>,
    /// Concurrency × context feasibility.
    pub grid: Vec<GridRow>,
}

/// KV-cache geometry and what it implies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheInfo {
    pub block_size: u64,
    pub num_gpu_blocks: u64,
    /// `num_gpu_blocks − 1`: vLLM keeps one null block; KV usage is relative to this.
    pub usable_blocks: u64,
    /// `block_size × num_gpu_blocks`.
    pub capacity_tokens: u64,
}

/// `kv-scale`: one prompt length.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LadderRung {
    /// Prompt length asked for.
    pub prompt_tokens_requested: u32,
    /// Prompt length the server counted (`usage`), when it answered.
    pub prompt_tokens: Option<u32>,
    /// `max_tokens` sent.
    pub max_tokens: u32,
    /// `accepted`, `clamped` (200 but fewer tokens, finish_reason `length`), `rejected` (4xx
    /// with the server's reason) or `error` (anything else).
    pub feasibility: String,
    pub status: Option<u16>,
    /// The server's reason for a rejection.
    pub reason: Option<String>,
    /// Time to first token: the prefill cost, seconds.
    pub ttft_s: Option<f64>,
    pub e2e_s: Option<f64>,
    pub output_tokens: Option<u32>,
    pub finish_reason: Option<String>,
    /// KV-cache usage before the request (0–1).
    pub kv_usage_before: Option<f64>,
    /// Peak KV-cache usage while it ran (0–1).
    pub kv_usage_peak: Option<f64>,
    /// `peak - before`: what this one request occupied.
    pub kv_usage_delta: Option<f64>,
    /// Blocks the request holds at its end: ceil((prompt + output − 1) / block_size).
    pub kv_blocks_expected: Option<u64>,
    /// The same as a share of the cache.
    pub kv_usage_expected: Option<f64>,
    /// `vllm:num_requests_running` peak while it ran (0 for a rejection: no GPU work).
    pub running_peak: Option<f64>,
    /// Samples of `/metrics` taken while it ran.
    pub metric_samples: usize,
    /// Samples that the server's own gauges showed it running in, taken during its decode
    /// (after its first token, before it ended): the KV figures come from the last of them.
    #[serde(default)]
    pub resident_samples: usize,
    /// Tokens the request held in the KV cache at that sample: prompt + generated − 1 (the
    /// newest token is not cached yet), with generated from the server's
    /// `generation_tokens_total` in the same body.
    #[serde(default)]
    pub kv_tokens_at_sample: Option<u64>,
    /// Whether the measured usage is within one block of the expected usage.
    #[serde(default)]
    pub kv_within_one_block: Option<bool>,
    /// Why the KV usage of this rung was not measured, when it was not.
    #[serde(default)]
    pub kv_note: Option<String>,
    /// After the stream was closed: whether the server aborted the request and freed its
    /// blocks (running back to its level before, KV usage back, generation stopped).
    #[serde(default)]
    pub released_after_close: Option<bool>,
    /// Seconds from closing the stream to seeing it released.
    #[serde(default)]
    pub release_s: Option<f64>,
    /// Requests sent for this rung (more than one when a stream ended before it was seen
    /// resident twice).
    #[serde(default)]
    pub attempts: u32,
    /// GPU memory used (bytes) at the peak, when NVML is present.
    pub gpu_memory_used_bytes: Option<f64>,
    /// GPU utilisation peak (0–1), when NVML is present.
    pub gpu_utilization_peak: Option<f64>,
}

/// The exact context-length boundary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Boundary {
    /// Longest prompt the server accepted (with `max_tokens` 1).
    pub max_accepted_prompt_tokens: u32,
    /// Shortest prompt it rejected.
    pub min_rejected_prompt_tokens: u32,
    /// Requests the bisection took.
    pub probes: usize,
    /// Whether `max_accepted + 1 == max_model_len` (a prompt must leave room for one token).
    pub consistent_with_max_model_len: Option<bool>,
    /// The server's message for the shortest rejected prompt.
    pub rejection_reason: Option<String>,
}

/// Concurrency × context: one context length.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GridRow {
    /// Tokens each sequence holds at its end (prompt + max_tokens).
    pub context_tokens: u32,
    /// Prompt tokens of each request.
    pub prompt_tokens: u32,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// ceil((context − 1) / block_size): the last output token is never cached.
    pub blocks_per_sequence: Option<u64>,
    /// floor(usable_blocks / blocks_per_sequence): sequences the cache holds at once.
    pub capacity_computed: Option<u64>,
    /// Largest tested concurrency at which every sequence ran at once without preemption.
    pub max_fitting_observed: Option<u32>,
    /// The tested concurrencies.
    pub cells: Vec<GridCell>,
}

/// One concurrency at one context length.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GridCell {
    pub concurrency: u32,
    /// `verdict == "fits"`.
    pub fits: bool,
    /// `fits`: a sample taken after every sequence had its first token and before any ended
    /// showed all of them running, nothing waiting, and none was preempted. `queues`: a
    /// preemption, or a sample taken while every running sequence was past its prefill showed
    /// one waiting. `undecided`: no sample was taken in either known state. `failed`: a
    /// request failed.
    #[serde(default)]
    pub verdict: String,
    /// Times the cell was run (an undecided cell is run again, up to 3 times).
    #[serde(default)]
    pub attempts: u32,
    pub running_peak: Option<f64>,
    pub waiting_peak: Option<f64>,
    /// Increase of `vllm:num_preemptions_total` while the cell ran.
    pub preemptions: Option<f64>,
    pub kv_usage_peak: Option<f64>,
    /// Requests that succeeded.
    pub ok: usize,
    /// Requests that failed.
    pub failed: usize,
}

/// Quotes one CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// Builds CSV text from a header and rows of already formatted cells.
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", header.join(","));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| csv_field(c)).collect();
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

/// Writes `text` to `path` with a useful error.
pub fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Bench CSV: one row per measured request.
pub fn bench_csv(b: &BenchSection) -> String {
    let header = [
        "index",
        "stream",
        "outcome",
        "status",
        "ttfb_s",
        "ttft_s",
        "tpot_s",
        "e2e_s",
        "prompt_tokens",
        "output_tokens",
        "finish_reason",
        "error_message",
    ];
    let rows: Vec<Vec<String>> = b
        .requests
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                r.stream.to_string(),
                r.outcome.as_str().to_string(),
                opt(r.status),
                opt(r.ttfb_s),
                opt(r.ttft_s),
                opt(r.tpot_s),
                r.e2e_s.to_string(),
                opt(r.prompt_tokens),
                opt(r.output_tokens),
                opt(r.finish_reason.clone()),
                opt(r.error_message.clone()),
            ]
        })
        .collect();
    csv(&header, &rows)
}

/// Sweep CSV: one row per level.
pub fn sweep_csv(s: &SweepSection) -> String {
    let header = [
        "load",
        "concurrency",
        "rate_rps",
        "window_s",
        "ok",
        "failed",
        "request_throughput_rps",
        "output_token_throughput_tps",
        "total_token_throughput_tps",
        "mean_in_flight",
        "ttft_p50_s",
        "ttft_p90_s",
        "ttft_p99_s",
        "tpot_p50_s",
        "tpot_p99_s",
        "itl_p50_s",
        "itl_p99_s",
        "e2e_p50_s",
        "e2e_p90_s",
        "e2e_p99_s",
        "kv_cache_usage_max",
        "requests_waiting_max",
        "preemptions",
        "gpu_utilization_mean",
        "gpu_memory_used_bytes_max",
        "slo_attainment",
        "goodput_rps",
        "is_knee",
    ];
    let knee = s.knee.as_ref().map(|k| k.level_index);
    let rows: Vec<Vec<String>> = s
        .levels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let lat = &l.latency;
            vec![
                l.load.to_string(),
                opt(l.concurrency),
                opt(l.rate_rps),
                l.window.duration_s.to_string(),
                l.ok.to_string(),
                l.failed.to_string(),
                l.request_throughput_rps.to_string(),
                l.output_token_throughput_tps.to_string(),
                l.total_token_throughput_tps.to_string(),
                l.mean_in_flight.to_string(),
                opt(lat.ttft_s.p50),
                opt(lat.ttft_s.p90),
                opt(lat.ttft_s.p99),
                opt(lat.tpot_s.p50),
                opt(lat.tpot_s.p99),
                opt(lat.itl_s.p50),
                opt(lat.itl_s.p99),
                opt(lat.e2e_s.p50),
                opt(lat.e2e_s.p90),
                opt(lat.e2e_s.p99),
                opt(l.server.kv_cache_usage.max),
                opt(l.server.requests_waiting.max),
                opt(l.server.preemptions),
                opt(l.gpu.utilization.mean),
                opt(l.gpu.memory_used_bytes.max),
                opt(l.slo_attainment),
                opt(l.goodput_rps),
                (knee == Some(i)).to_string(),
            ]
        })
        .collect();
    csv(&header, &rows)
}

/// kv-scale CSV: one row per ladder rung.
pub fn kv_ladder_csv(k: &KvScaleSection) -> String {
    let header = [
        "prompt_tokens_requested",
        "prompt_tokens",
        "max_tokens",
        "feasibility",
        "status",
        "ttft_s",
        "e2e_s",
        "output_tokens",
        "finish_reason",
        "kv_usage_before",
        "kv_usage_peak",
        "kv_usage_delta",
        "kv_usage_expected",
        "kv_within_one_block",
        "released_after_close",
        "running_peak",
        "gpu_memory_used_bytes",
        "reason",
        "kv_note",
    ];
    let rows: Vec<Vec<String>> = k
        .ladder
        .iter()
        .map(|r| {
            vec![
                r.prompt_tokens_requested.to_string(),
                opt(r.prompt_tokens),
                r.max_tokens.to_string(),
                r.feasibility.clone(),
                opt(r.status),
                opt(r.ttft_s),
                opt(r.e2e_s),
                opt(r.output_tokens),
                opt(r.finish_reason.clone()),
                opt(r.kv_usage_before),
                opt(r.kv_usage_peak),
                opt(r.kv_usage_delta),
                opt(r.kv_usage_expected),
                opt(r.kv_within_one_block),
                opt(r.released_after_close),
                opt(r.running_peak),
                opt(r.gpu_memory_used_bytes),
                opt(r.reason.clone()),
                opt(r.kv_note.clone()),
            ]
        })
        .collect();
    csv(&header, &rows)
}

/// kv-scale grid CSV: one row per (context, concurrency) cell.
pub fn kv_grid_csv(k: &KvScaleSection) -> String {
    let header = [
        "context_tokens",
        "concurrency",
        "fits",
        "verdict",
        "capacity_computed",
        "running_peak",
        "waiting_peak",
        "preemptions",
        "kv_usage_peak",
        "ok",
        "failed",
    ];
    let rows: Vec<Vec<String>> = k
        .grid
        .iter()
        .flat_map(|g| {
            g.cells.iter().map(move |c| {
                vec![
                    g.context_tokens.to_string(),
                    c.concurrency.to_string(),
                    c.fits.to_string(),
                    c.verdict.clone(),
                    opt(g.capacity_computed),
                    opt(c.running_peak),
                    opt(c.waiting_peak),
                    opt(c.preemptions),
                    opt(c.kv_usage_peak),
                    c.ok.to_string(),
                    c.failed.to_string(),
                ]
            })
        })
        .collect();
    csv(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let t = csv(&["a", "b"], &[vec!["1".into(), "x,y".into()]]);
        assert_eq!(t, "a,b\n1,\"x,y\"\n");
    }

    #[test]
    fn bench_csv_has_one_row_per_request() {
        let b = BenchSection {
            turns: vec![],
            modes: vec![],
            requests: vec![
                RequestRow {
                    index: 0,
                    stream: true,
                    outcome: Outcome::Ok,
                    e2e_s: 0.5,
                    ttft_s: Some(0.1),
                    ..Default::default()
                },
                RequestRow {
                    index: 1,
                    stream: false,
                    outcome: Outcome::ContextLength,
                    error_message: Some("too long, sorry".into()),
                    ..Default::default()
                },
            ],
            slo: None,
        };
        let text = bench_csv(&b);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("index,stream,outcome"));
        assert_eq!(lines[1], "0,true,ok,,,0.1,,0.5,,,,");
        assert!(lines[2].ends_with(",\"too long, sorry\""));
    }

    #[test]
    fn report_json_round_trips_and_marks_partial() {
        let mut r = Report::new("bench", TargetInfo::default());
        r.set("requests", 5);
        r.mark_partial("interrupted");
        r.mark_partial("second reason is ignored");
        r.bench = Some(BenchSection::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        r.write_json(&p).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["partial"], true);
        assert_eq!(v["partial_reason"], "interrupted");
        assert_eq!(v["settings"]["requests"], 5);
        assert!(v.get("sweep").is_none());
        assert!(v["bench"]["modes"].is_array());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind, "bench");
        let bad = dir.path().join("no/such/dir/r.json");
        let err = r.write_json(&bad).unwrap_err();
        assert!(format!("{err:#}").contains("no/such/dir"), "{err:#}");
    }
}
