//! Normalisation: one alias table that resolves each concept (KV-cache usage, queue depth,
//! token counters, the server's latency histograms …) across vLLM versions and across engines
//! (vLLM, SGLang, Hugging Face TGI, llama.cpp server, TensorRT-LLM / Triton), and the
//! aggregation rules that turn upstream series into ours.
//!
//! Rules:
//! * The engine is detected from the body (the prefix most families carry).
//! * For each concept the table lists candidate families, newest name first; the first one
//!   present (and not damaged) wins. A concept with no candidate present is absent, not zero.
//! * Series are keyed by `model` (the upstream `model_name`/`model` label, else the configured
//!   model, else `unknown`), `engine_index` (vLLM `engine`, SGLang `dp_rank`, else `0`) and, for
//!   concepts that have one, `reason`. Every other upstream label (`pid` in vLLM's multiprocess
//!   mode, SGLang's `tp_rank`, `is_streaming` …) is aggregated away: summed for counts, counters
//!   and histograms, the maximum for ratios (summing a ratio across processes would exceed 1).
//!   Histograms are only summed when their bucket layouts agree; otherwise the series is
//!   dropped.
//! * Nothing flagged by the parser is used: damaged families are skipped whole (in OpenMetrics
//!   a negative/NaN counter total, a unit that is not the name's suffix and a `_count` that is
//!   not the `+Inf` bucket all damage their family). Counter values 0.0.4 allows but a counter
//!   cannot hold (negative, NaN) are skipped sample by sample.

use std::collections::BTreeMap;

use super::expfmt::{Exposition, Family, MetricType, Suffix, group_histograms};

/// A serving engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
    Trtllm,
    /// Nothing recognisable: the scrape still counts, with no normalised series.
    Unknown,
}

impl Engine {
    /// The `engine` label value of `vllm_sentinel_server_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::Tgi => "tgi",
            Engine::Llamacpp => "llamacpp",
            Engine::Trtllm => "trtllm",
            Engine::Unknown => "unknown",
        }
    }

    fn of_family(name: &str) -> Option<Engine> {
        if name.starts_with("vllm:") {
            Some(Engine::Vllm)
        } else if name.starts_with("sglang:") {
            Some(Engine::Sglang)
        } else if name.starts_with("tgi_") {
            Some(Engine::Tgi)
        } else if name.starts_with("llamacpp:") {
            Some(Engine::Llamacpp)
        } else if name.starts_with("nv_trt_llm_") || name.starts_with("trtllm_") {
            Some(Engine::Trtllm)
        } else {
            None
        }
    }
}

/// Detects the engine: the one whose prefix the most families carry.
pub fn detect_engine(exp: &Exposition<'_>) -> Engine {
    let mut counts = [0usize; 5];
    for f in &exp.families {
        if let Some(e) = Engine::of_family(f.name) {
            counts[e as usize] += 1;
        }
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
        .map(|(i, n)| (i, *n))
        .unwrap_or((0, 0));
    if n == 0 {
        return Engine::Unknown;
    }
    [
        Engine::Vllm,
        Engine::Sglang,
        Engine::Tgi,
        Engine::Llamacpp,
        Engine::Trtllm,
    ][best]
}

/// What a normalised series means. Each concept is one exported family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Concept {
    KvCacheUsage,
    KvCacheCapacity,
    KvCacheHeadroom,
    RequestsRunning,
    RequestsWaiting,
    RequestsWaitingByReason,
    Preemptions,
    PromptTokens,
    GenerationTokens,
    PrefixCacheQueries,
    PrefixCacheHits,
    RequestsFinished,
    Ttft,
    Itl,
    Tpot,
    E2e,
    Queue,
    Prefill,
}

/// How a concept is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// Exported as a counter (the encoder appends `_total`).
    Counter,
    Histogram,
}

impl Concept {
    /// Every concept, in export order.
    pub const ALL: [Concept; 18] = [
        Concept::KvCacheUsage,
        Concept::KvCacheCapacity,
        Concept::KvCacheHeadroom,
        Concept::RequestsRunning,
        Concept::RequestsWaiting,
        Concept::RequestsWaitingByReason,
        Concept::Preemptions,
        Concept::PromptTokens,
        Concept::GenerationTokens,
        Concept::PrefixCacheQueries,
        Concept::PrefixCacheHits,
        Concept::RequestsFinished,
        Concept::Ttft,
        Concept::Itl,
        Concept::Tpot,
        Concept::E2e,
        Concept::Queue,
        Concept::Prefill,
    ];

    /// The exported family name (counters without `_total`).
    pub fn family(self) -> &'static str {
        match self {
            Concept::KvCacheUsage => "vllm_sentinel_server_kv_cache_usage_ratio",
            Concept::KvCacheCapacity => "vllm_sentinel_server_kv_cache_capacity_tokens",
            Concept::KvCacheHeadroom => "vllm_sentinel_server_kv_cache_headroom_tokens",
            Concept::RequestsRunning => "vllm_sentinel_server_requests_running",
            Concept::RequestsWaiting => "vllm_sentinel_server_requests_waiting",
            Concept::RequestsWaitingByReason => "vllm_sentinel_server_requests_waiting_by_reason",
            Concept::Preemptions => "vllm_sentinel_server_preemptions",
            Concept::PromptTokens => "vllm_sentinel_server_prompt_tokens",
            Concept::GenerationTokens => "vllm_sentinel_server_generation_tokens",
            Concept::PrefixCacheQueries => "vllm_sentinel_server_prefix_cache_queries",
            Concept::PrefixCacheHits => "vllm_sentinel_server_prefix_cache_hits",
            Concept::RequestsFinished => "vllm_sentinel_server_requests_finished",
            Concept::Ttft => "vllm_sentinel_server_ttft_seconds",
            Concept::Itl => "vllm_sentinel_server_itl_seconds",
            Concept::Tpot => "vllm_sentinel_server_tpot_seconds",
            Concept::E2e => "vllm_sentinel_server_e2e_seconds",
            Concept::Queue => "vllm_sentinel_server_queue_seconds",
            Concept::Prefill => "vllm_sentinel_server_prefill_seconds",
        }
    }

    /// HELP text.
    pub fn help(self) -> &'static str {
        match self {
            Concept::KvCacheUsage => "KV-cache blocks in use as the server reports them, 0-1",
            Concept::KvCacheCapacity => {
                "KV-cache capacity in tokens (num_gpu_blocks x block_size from the server's cache config)"
            }
            Concept::KvCacheHeadroom => "KV-cache tokens free: capacity x (1 - usage)",
            Concept::RequestsRunning => "Requests in the server's running batch",
            Concept::RequestsWaiting => "Requests waiting in the server's queue",
            Concept::RequestsWaitingByReason => "Waiting requests by the reason the server gives",
            Concept::Preemptions => "Preemptions the server reports",
            Concept::PromptTokens => "Prompt (prefill) tokens the server processed",
            Concept::GenerationTokens => "Tokens the server generated",
            Concept::PrefixCacheQueries => "Prefix-cache queries, in tokens",
            Concept::PrefixCacheHits => "Prefix-cache hits, in tokens",
            Concept::RequestsFinished => "Requests the server finished, by reason",
            Concept::Ttft => "The server's own time to first token, upstream buckets",
            Concept::Itl => "The server's own inter-token latency, upstream buckets",
            Concept::Tpot => "The server's own per-request time per output token, upstream buckets",
            Concept::E2e => "The server's own end-to-end request latency, upstream buckets",
            Concept::Queue => "The server's own queue (waiting) time, upstream buckets",
            Concept::Prefill => "The server's own prefill time, upstream buckets",
        }
    }

    /// How it is exported.
    pub fn kind(self) -> Kind {
        match self {
            Concept::KvCacheUsage
            | Concept::KvCacheCapacity
            | Concept::KvCacheHeadroom
            | Concept::RequestsRunning
            | Concept::RequestsWaiting
            | Concept::RequestsWaitingByReason => Kind::Gauge,
            Concept::Preemptions
            | Concept::PromptTokens
            | Concept::GenerationTokens
            | Concept::PrefixCacheQueries
            | Concept::PrefixCacheHits
            | Concept::RequestsFinished => Kind::Counter,
            Concept::Ttft
            | Concept::Itl
            | Concept::Tpot
            | Concept::E2e
            | Concept::Queue
            | Concept::Prefill => Kind::Histogram,
        }
    }

    /// True for concepts carrying a `reason` label.
    pub fn has_reason(self) -> bool {
        matches!(
            self,
            Concept::RequestsWaitingByReason | Concept::RequestsFinished
        )
    }

    fn is_ratio(self) -> bool {
        self == Concept::KvCacheUsage
    }
}

/// Where a concept's value comes from in one engine's body.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    pub concept: Concept,
    pub engine: Engine,
    /// Family name (counters may be given with or without `_total`).
    pub family: &'static str,
    /// Only samples with this label value count.
    pub filter: Option<(&'static str, &'static str)>,
    /// The upstream label that becomes `reason`, or a fixed reason (`=value`).
    pub reason: Option<&'static str>,
    /// Take the `_sum` of an upstream histogram as a counter (TGI token totals).
    pub from_histogram_sum: bool,
    /// Version note for the docs.
    pub note: &'static str,
}

const fn a(concept: Concept, engine: Engine, family: &'static str) -> Alias {
    Alias {
        concept,
        engine,
        family,
        filter: None,
        reason: None,
        from_histogram_sum: false,
        note: "",
    }
}

const fn note(mut x: Alias, n: &'static str) -> Alias {
    x.note = n;
    x
}

const fn filt(mut x: Alias, k: &'static str, v: &'static str) -> Alias {
    x.filter = Some((k, v));
    x
}

const fn reason(mut x: Alias, r: &'static str) -> Alias {
    x.reason = Some(r);
    x
}

const fn hsum(mut x: Alias) -> Alias {
    x.from_histogram_sum = true;
    x
}

use Concept as C;
use Engine as E;

/// The alias table, newest name first within a concept and engine.
pub const ALIASES: &[Alias] = &[
    // ---- vLLM
    note(
        a(C::KvCacheUsage, E::Vllm, "vllm:kv_cache_usage_perc"),
        "0.9+",
    ),
    note(
        a(C::KvCacheUsage, E::Vllm, "vllm:gpu_cache_usage_perc"),
        "before 0.12",
    ),
    a(C::RequestsRunning, E::Vllm, "vllm:num_requests_running"),
    a(C::RequestsWaiting, E::Vllm, "vllm:num_requests_waiting"),
    reason(
        a(
            C::RequestsWaitingByReason,
            E::Vllm,
            "vllm:num_requests_waiting_by_reason",
        ),
        "reason",
    ),
    a(C::Preemptions, E::Vllm, "vllm:num_preemptions"),
    a(C::PromptTokens, E::Vllm, "vllm:prompt_tokens"),
    a(C::GenerationTokens, E::Vllm, "vllm:generation_tokens"),
    note(
        a(C::PrefixCacheQueries, E::Vllm, "vllm:prefix_cache_queries"),
        "0.9+",
    ),
    note(
        a(
            C::PrefixCacheQueries,
            E::Vllm,
            "vllm:gpu_prefix_cache_queries",
        ),
        "before 0.12 (0.8: in blocks)",
    ),
    note(
        a(C::PrefixCacheHits, E::Vllm, "vllm:prefix_cache_hits"),
        "0.9+",
    ),
    note(
        a(C::PrefixCacheHits, E::Vllm, "vllm:gpu_prefix_cache_hits"),
        "before 0.12 (0.8: in blocks)",
    ),
    reason(
        a(C::RequestsFinished, E::Vllm, "vllm:request_success"),
        "finished_reason",
    ),
    a(C::Ttft, E::Vllm, "vllm:time_to_first_token_seconds"),
    note(
        a(C::Itl, E::Vllm, "vllm:inter_token_latency_seconds"),
        "0.11+",
    ),
    note(
        a(C::Itl, E::Vllm, "vllm:time_per_output_token_seconds"),
        "before 0.12 (per step, i.e. ITL)",
    ),
    a(
        C::Tpot,
        E::Vllm,
        "vllm:request_time_per_output_token_seconds",
    ),
    a(C::E2e, E::Vllm, "vllm:e2e_request_latency_seconds"),
    a(C::Queue, E::Vllm, "vllm:request_queue_time_seconds"),
    a(C::Prefill, E::Vllm, "vllm:request_prefill_time_seconds"),
    // ---- SGLang
    a(C::KvCacheUsage, E::Sglang, "sglang:token_usage"),
    a(C::RequestsRunning, E::Sglang, "sglang:num_running_reqs"),
    a(C::RequestsWaiting, E::Sglang, "sglang:num_queue_reqs"),
    a(C::Preemptions, E::Sglang, "sglang:num_retracted_requests"),
    a(C::PromptTokens, E::Sglang, "sglang:prompt_tokens"),
    a(C::GenerationTokens, E::Sglang, "sglang:generation_tokens"),
    a(C::PrefixCacheHits, E::Sglang, "sglang:cached_tokens"),
    reason(
        a(
            C::RequestsFinished,
            E::Sglang,
            "sglang:num_aborted_requests",
        ),
        "=abort",
    ),
    a(C::Ttft, E::Sglang, "sglang:time_to_first_token_seconds"),
    a(C::Itl, E::Sglang, "sglang:inter_token_latency_seconds"),
    note(
        a(C::Itl, E::Sglang, "sglang:time_per_output_token_seconds"),
        "older releases",
    ),
    a(
        C::Tpot,
        E::Sglang,
        "sglang:request_time_per_output_token_seconds",
    ),
    a(C::E2e, E::Sglang, "sglang:e2e_request_latency_seconds"),
    a(C::Queue, E::Sglang, "sglang:queue_time_seconds"),
    // ---- Hugging Face TGI
    a(C::RequestsRunning, E::Tgi, "tgi_batch_current_size"),
    a(C::RequestsWaiting, E::Tgi, "tgi_queue_size"),
    hsum(a(C::PromptTokens, E::Tgi, "tgi_request_input_length")),
    hsum(a(
        C::GenerationTokens,
        E::Tgi,
        "tgi_request_generated_tokens",
    )),
    reason(
        a(C::RequestsFinished, E::Tgi, "tgi_request_success"),
        "=success",
    ),
    reason(
        a(C::RequestsFinished, E::Tgi, "tgi_request_failure"),
        "=error",
    ),
    a(C::Tpot, E::Tgi, "tgi_request_mean_time_per_token_duration"),
    a(C::E2e, E::Tgi, "tgi_request_duration"),
    a(C::Queue, E::Tgi, "tgi_request_queue_duration"),
    // ---- llama.cpp server
    note(
        a(
            C::KvCacheUsage,
            E::Llamacpp,
            "llamacpp:kv_cache_usage_ratio",
        ),
        "removed in llama.cpp PR #13660",
    ),
    a(
        C::RequestsRunning,
        E::Llamacpp,
        "llamacpp:requests_processing",
    ),
    a(
        C::RequestsWaiting,
        E::Llamacpp,
        "llamacpp:requests_deferred",
    ),
    a(C::PromptTokens, E::Llamacpp, "llamacpp:prompt_tokens"),
    a(
        C::GenerationTokens,
        E::Llamacpp,
        "llamacpp:tokens_predicted",
    ),
    // ---- TensorRT-LLM: trtllm-serve first, then the Triton backend
    a(C::KvCacheUsage, E::Trtllm, "trtllm_kv_cache_utilization"),
    filt(
        a(
            C::KvCacheUsage,
            E::Trtllm,
            "nv_trt_llm_kv_cache_block_metrics",
        ),
        "kv_cache_block_type",
        "fraction",
    ),
    a(C::RequestsRunning, E::Trtllm, "trtllm_num_requests_running"),
    filt(
        a(C::RequestsRunning, E::Trtllm, "nv_trt_llm_request_metrics"),
        "request_type",
        "scheduled",
    ),
    a(C::RequestsWaiting, E::Trtllm, "trtllm_num_requests_waiting"),
    filt(
        a(C::RequestsWaiting, E::Trtllm, "nv_trt_llm_request_metrics"),
        "request_type",
        "waiting",
    ),
    reason(
        a(
            C::RequestsFinished,
            E::Trtllm,
            "nv_inference_request_success",
        ),
        "=success",
    ),
    reason(
        a(
            C::RequestsFinished,
            E::Trtllm,
            "nv_inference_request_failure",
        ),
        "=error",
    ),
];

/// How KV capacity is read, per engine (documented with the table).
pub const CAPACITY_SOURCES: &[(Engine, &str)] = &[
    (
        Engine::Vllm,
        "vllm:cache_config_info labels num_gpu_blocks x block_size (per engine)",
    ),
    (
        Engine::Sglang,
        "sglang:max_total_num_tokens, else sglang:cache_config_info num_pages x page_size",
    ),
    (
        Engine::Trtllm,
        "trtllm_kv_cache_max_blocks x trtllm_kv_cache_tokens_per_block, else nv_trt_llm_kv_cache_block_metrics max x tokens_per",
    ),
];

/// Identity of one normalised series (besides `target`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub model: String,
    pub engine_index: String,
    /// Only for concepts with a `reason` label.
    pub reason: Option<String>,
}

/// A histogram as the server exposes it: cumulative counts by upper bound (ending in `+Inf`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

/// One target's normalised view of one body.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSeries {
    pub engine: Engine,
    /// Gauges and counters.
    pub values: BTreeMap<(Concept, Key), f64>,
    pub histograms: BTreeMap<(Concept, Key), Hist>,
    /// The upstream family each present concept was read from.
    pub sources: BTreeMap<Concept, &'static str>,
    /// The server's HTTP request counter (`http_requests_total` of
    /// prometheus-fastapi-instrumentator, vLLM's API server) by `(endpoint, status_class)`;
    /// empty when the body has no such family.
    pub http_requests: BTreeMap<(HttpEndpoint, StatusClass), f64>,
}

impl ServerSeries {
    /// The value of a gauge or counter concept for a key.
    pub fn value(&self, c: Concept, model: &str, engine_index: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|((cc, k), _)| *cc == c && k.model == model && k.engine_index == engine_index)
            .map(|(_, v)| *v)
    }

    /// Number of series (histograms count once).
    pub fn len(&self) -> usize {
        self.values.len() + self.histograms.len()
    }

    /// True when the body had nothing we normalise.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Lookup<'e, 'a> {
    exp: &'e Exposition<'a>,
    fallback_model: &'e str,
}

impl<'e, 'a> Lookup<'e, 'a> {
    fn family(&self, name: &str) -> Option<&'e Family<'a>> {
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.exp
            .families
            .iter()
            .find(|f| !f.damaged && !f.is_empty() && (f.base_name() == base || f.name == name))
    }

    fn key_parts(&self, engine: Engine, labels: &[(&str, &str)]) -> (String, String) {
        let get = |n: &str| labels.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let model = get("model_name")
            .or_else(|| get("model"))
            .unwrap_or(self.fallback_model);
        let idx = match engine {
            Engine::Vllm => get("engine"),
            Engine::Sglang => get("dp_rank"),
            _ => None,
        }
        .unwrap_or("0");
        (model.to_string(), idx.to_string())
    }
}

fn reason_of(alias: &Alias, labels: &[(&str, &str)]) -> Option<String> {
    let r = alias.reason?;
    if let Some(fixed) = r.strip_prefix('=') {
        return Some(fixed.to_string());
    }
    Some(
        labels
            .iter()
            .find(|(k, _)| *k == r)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
    )
}

/// Normalises one parsed body. `fallback_model` is used where the engine has no model label.
pub fn normalize(exp: &Exposition<'_>, fallback_model: &str) -> ServerSeries {
    let engine = detect_engine(exp);
    let lk = Lookup {
        exp,
        fallback_model,
    };
    let mut out = ServerSeries {
        engine,
        values: BTreeMap::new(),
        histograms: BTreeMap::new(),
        sources: BTreeMap::new(),
        http_requests: BTreeMap::new(),
    };
    add_http_requests(&lk, &mut out);
    for concept in Concept::ALL {
        // The first alias (newest name) present wins; several rows of one engine with a fixed
        // reason (TGI success/failure) all apply.
        let mut used: Option<&'static str> = None;
        for alias in ALIASES
            .iter()
            .filter(|x| x.concept == concept && x.engine == engine)
        {
            let Some(fam) = lk.family(alias.family) else {
                continue;
            };
            let fixed_reason = alias.reason.is_some_and(|r| r.starts_with('='));
            if used.is_some() && !fixed_reason {
                continue;
            }
            if concept.kind() == Kind::Histogram || alias.from_histogram_sum {
                if !matches!(fam.typ, MetricType::Histogram) {
                    continue;
                }
                add_histograms(&lk, engine, concept, alias, fam, &mut out);
            } else {
                add_values(&lk, engine, concept, alias, fam, &mut out);
            }
            used = Some(alias.family);
            out.sources.entry(concept).or_insert(alias.family);
        }
    }
    add_capacity(&lk, engine, &mut out);
    out
}

fn add_values(
    lk: &Lookup<'_, '_>,
    engine: Engine,
    concept: Concept,
    alias: &Alias,
    fam: &Family<'_>,
    out: &mut ServerSeries,
) {
    let exp = lk.exp;
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for s in exp.family_samples(fam) {
        if !matches!(s.suffix, Suffix::None | Suffix::Total) {
            continue;
        }
        labels.clear();
        labels.extend(
            exp.sample_labels(s)
                .iter()
                .map(|l| (l.name, l.value.as_ref())),
        );
        if let Some((k, v)) = alias.filter
            && !labels.iter().any(|(a, b)| *a == k && *b == v)
        {
            continue;
        }
        let v = s.value;
        // A counter value OpenMetrics forbids (negative, NaN) is never used: an OpenMetrics
        // body's family is already damaged; a 0.0.4 body's sample is skipped here, so that our
        // own counter stays valid.
        if concept.kind() == Kind::Counter && (v.is_nan() || v < 0.0) {
            continue;
        }
        let (model, engine_index) = lk.key_parts(engine, &labels);
        let key = Key {
            model,
            engine_index,
            reason: reason_of(alias, &labels),
        };
        out.values
            .entry((concept, key))
            .and_modify(|old| {
                *old = if concept.is_ratio() {
                    old.max(v)
                } else {
                    *old + v
                }
            })
            .or_insert(v);
    }
}

fn add_histograms(
    lk: &Lookup<'_, '_>,
    engine: Engine,
    concept: Concept,
    alias: &Alias,
    fam: &Family<'_>,
    out: &mut ServerSeries,
) {
    let Ok(series) = group_histograms(lk.exp, fam) else {
        return;
    };
    let mut merged: BTreeMap<Key, Option<Hist>> = BTreeMap::new();
    for h in series {
        if let Some((k, v)) = alias.filter
            && !h.labels.iter().any(|(a, b)| *a == k && *b == v)
        {
            continue;
        }
        let (model, engine_index) = lk.key_parts(engine, &h.labels);
        let key = Key {
            model,
            engine_index,
            reason: reason_of(alias, &h.labels),
        };
        let this = Hist {
            buckets: h.buckets,
            sum: h.sum.unwrap_or(f64::NAN),
            count: h.count.unwrap_or(f64::NAN),
        };
        match merged.entry(key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Some(this));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                if let Some(old) = slot {
                    let same = old.buckets.len() == this.buckets.len()
                        && old
                            .buckets
                            .iter()
                            .zip(&this.buckets)
                            .all(|(a, b)| a.0 == b.0);
                    if same {
                        for (o, n) in old.buckets.iter_mut().zip(&this.buckets) {
                            o.1 += n.1;
                        }
                        old.sum += this.sum;
                        old.count += this.count;
                    } else {
                        *slot = None;
                    }
                }
            }
        }
    }
    for (key, h) in merged {
        let Some(mut h) = h else { continue };
        if h.count.is_nan() {
            h.count = h.buckets.last().map(|b| b.1).unwrap_or(0.0);
        }
        if alias.from_histogram_sum {
            if h.sum.is_finite() {
                *out.values.entry((concept, key)).or_insert(0.0) += h.sum;
            }
        } else {
            out.histograms.insert((concept, key), h);
        }
    }
}

/// The upstream HTTP request counter read for `vllm_sentinel_server_http_requests_total`.
pub const UPSTREAM_HTTP_REQUESTS: &str = "http_requests_total";

/// The `endpoint` label of `vllm_sentinel_server_http_requests_total`: the two generation
/// routes the tap and the prober measure, everything else folded into `other` (bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HttpEndpoint {
    Completions,
    Chat,
    Other,
}

impl HttpEndpoint {
    pub const ALL: [HttpEndpoint; 3] = [
        HttpEndpoint::Completions,
        HttpEndpoint::Chat,
        HttpEndpoint::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpEndpoint::Completions => "completions",
            HttpEndpoint::Chat => "chat",
            HttpEndpoint::Other => "other",
        }
    }

    /// From the instrumentator's `handler` label (the route template, e.g. `/v1/completions`).
    pub fn of_handler(handler: &str) -> HttpEndpoint {
        match handler.trim_end_matches('/') {
            "/v1/completions" => HttpEndpoint::Completions,
            "/v1/chat/completions" => HttpEndpoint::Chat,
            _ => HttpEndpoint::Other,
        }
    }
}

/// The `status_class` label: `1xx` … `5xx`, or `other` for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusClass {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
    Other,
}

impl StatusClass {
    pub const ALL: [StatusClass; 6] = [
        StatusClass::C1xx,
        StatusClass::C2xx,
        StatusClass::C3xx,
        StatusClass::C4xx,
        StatusClass::C5xx,
        StatusClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::C1xx => "1xx",
            StatusClass::C2xx => "2xx",
            StatusClass::C3xx => "3xx",
            StatusClass::C4xx => "4xx",
            StatusClass::C5xx => "5xx",
            StatusClass::Other => "other",
        }
    }

    /// From the instrumentator's `status` label: grouped (`4xx`, its default) or a code (`404`).
    pub fn of_status(status: &str) -> StatusClass {
        let b = status.trim().as_bytes();
        let grouped = b.len() == 3 && b[1..].eq_ignore_ascii_case(b"xx");
        let code = b.len() == 3 && b.iter().all(u8::is_ascii_digit);
        if !(grouped || code) {
            return StatusClass::Other;
        }
        match b[0] {
            b'1' => StatusClass::C1xx,
            b'2' => StatusClass::C2xx,
            b'3' => StatusClass::C3xx,
            b'4' => StatusClass::C4xx,
            b'5' => StatusClass::C5xx,
            _ => StatusClass::Other,
        }
    }
}

/// Sums `http_requests_total{handler,method,status}` by endpoint and status class (methods,
/// `pid` and every other label aggregated away). Samples without a `status` label are skipped.
fn add_http_requests(lk: &Lookup<'_, '_>, out: &mut ServerSeries) {
    let exp = lk.exp;
    let Some(fam) = lk.family(UPSTREAM_HTTP_REQUESTS) else {
        return;
    };
    if !matches!(fam.typ, MetricType::Counter | MetricType::Unknown) {
        return;
    }
    for s in exp.family_samples(fam) {
        if !matches!(s.suffix, Suffix::None | Suffix::Total)
            || !s.value.is_finite()
            || s.value < 0.0
        {
            continue;
        }
        let Some(status) = exp.label(s, "status") else {
            continue;
        };
        let endpoint = HttpEndpoint::of_handler(exp.label(s, "handler").unwrap_or(""));
        *out.http_requests
            .entry((endpoint, StatusClass::of_status(status)))
            .or_insert(0.0) += s.value;
    }
}

/// Reads a label of the first sample of a family as a number.
fn label_num(exp: &Exposition<'_>, fam: &Family<'_>, sample: usize, name: &str) -> Option<f64> {
    let s = exp.family_samples(fam).get(sample)?;
    exp.label(s, name)?.trim().parse::<f64>().ok()
}

fn add_capacity(lk: &Lookup<'_, '_>, engine: Engine, out: &mut ServerSeries) {
    let mut caps: Vec<Capacity> = Vec::new();
    match engine {
        Engine::Vllm => vllm_capacity(lk, &mut caps),
        Engine::Sglang => sglang_capacity(lk, &mut caps),
        Engine::Trtllm => trtllm_capacity(lk, &mut caps),
        _ => {}
    }
    for (idx, model, tokens, src) in caps {
        if !tokens.is_finite() || tokens < 0.0 {
            continue;
        }
        // The cache config usually has no model label: take the model of the usage series
        // of the same engine index, else of any series, else the fallback.
        let model = model.unwrap_or_else(|| {
            out.values
                .keys()
                .find(|(c, k)| *c == Concept::KvCacheUsage && k.engine_index == idx)
                .or_else(|| out.values.keys().find(|(_, k)| k.engine_index == idx))
                .map(|(_, k)| k.model.clone())
                .unwrap_or_else(|| lk.fallback_model.to_string())
        });
        let key = Key {
            model,
            engine_index: idx,
            reason: None,
        };
        let usage = out
            .values
            .get(&(Concept::KvCacheUsage, key.clone()))
            .copied();
        out.values
            .insert((Concept::KvCacheCapacity, key.clone()), tokens);
        out.sources.entry(Concept::KvCacheCapacity).or_insert(src);
        if let Some(u) = usage
            && u.is_finite()
        {
            out.values.insert(
                (Concept::KvCacheHeadroom, key),
                tokens * (1.0 - u.clamp(0.0, 1.0)),
            );
            out.sources.entry(Concept::KvCacheHeadroom).or_insert(src);
        }
    }
}

/// One engine's KV-cache capacity: (engine index, model if known, tokens, source family).
type Capacity = (String, Option<String>, f64, &'static str);

/// vLLM: `num_gpu_blocks × block_size` of `vllm:cache_config_info`.
fn vllm_capacity(lk: &Lookup<'_, '_>, caps: &mut Vec<Capacity>) {
    let exp = lk.exp;
    if let Some(f) = lk.family("vllm:cache_config_info") {
        for (i, s) in exp.family_samples(f).iter().enumerate() {
            let blocks = label_num(exp, f, i, "num_gpu_blocks");
            let bs = label_num(exp, f, i, "block_size");
            if let (Some(b), Some(bs)) = (blocks, bs) {
                let idx = exp.label(s, "engine").unwrap_or("0").to_string();
                let model = exp.label(s, "model_name").map(str::to_string);
                caps.push((idx, model, b * bs, "vllm:cache_config_info"));
            }
        }
    }
}

/// SGLang: `sglang:max_total_num_tokens`, else `page_size × num_pages` of its cache config.
fn sglang_capacity(lk: &Lookup<'_, '_>, caps: &mut Vec<Capacity>) {
    let exp = lk.exp;
    if let Some(f) = lk.family("sglang:max_total_num_tokens") {
        for s in exp.family_samples(f) {
            let idx = exp.label(s, "dp_rank").unwrap_or("0").to_string();
            let model = exp.label(s, "model_name").map(str::to_string);
            caps.push((idx, model, s.value, "sglang:max_total_num_tokens"));
        }
    } else if let Some(f) = lk.family("sglang:cache_config_info") {
        for (i, s) in exp.family_samples(f).iter().enumerate() {
            if let (Some(p), Some(n)) = (
                label_num(exp, f, i, "page_size"),
                label_num(exp, f, i, "num_pages"),
            ) {
                let idx = exp.label(s, "dp_rank").unwrap_or("0").to_string();
                let model = exp.label(s, "model_name").map(str::to_string);
                caps.push((idx, model, p * n, "sglang:cache_config_info"));
            }
        }
    }
}

/// TensorRT-LLM: max blocks × tokens per block, under either generation's names.
fn trtllm_capacity(lk: &Lookup<'_, '_>, caps: &mut Vec<Capacity>) {
    let exp = lk.exp;
    let single = |name: &str, filter: Option<(&str, &str)>| -> Option<(f64, Option<String>)> {
        let f = lk.family(name)?;
        exp.family_samples(f)
            .iter()
            .find(|s| filter.is_none_or(|(k, v)| exp.label(s, k) == Some(v)))
            .map(|s| {
                let model = exp.label(s, "model_name").or_else(|| exp.label(s, "model"));
                (s.value, model.map(str::to_string))
            })
    };
    if let (Some((m, model)), Some((t, _))) = (
        single("trtllm_kv_cache_max_blocks", None),
        single("trtllm_kv_cache_tokens_per_block", None),
    ) {
        caps.push(("0".into(), model, m * t, "trtllm_kv_cache_max_blocks"));
    } else if let (Some((m, model)), Some((t, _))) = (
        single(
            "nv_trt_llm_kv_cache_block_metrics",
            Some(("kv_cache_block_type", "max")),
        ),
        single(
            "nv_trt_llm_kv_cache_block_metrics",
            Some(("kv_cache_block_type", "tokens_per")),
        ),
    ) {
        caps.push((
            "0".into(),
            model,
            m * t,
            "nv_trt_llm_kv_cache_block_metrics",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::expfmt::{Format, parse};

    #[test]
    fn pids_are_summed_and_ratios_maxed() {
        let body = "# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\",pid=\"1\"} 3\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\",pid=\"2\"} 4\n\
# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\",pid=\"1\"} 0.25\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\",pid=\"2\"} 0.5\n";
        let e = parse(body, Format::Prometheus);
        let n = normalize(&e, "x");
        assert_eq!(n.engine, Engine::Vllm);
        assert_eq!(n.value(Concept::RequestsRunning, "m", "0"), Some(7.0));
        assert_eq!(n.value(Concept::KvCacheUsage, "m", "0"), Some(0.5));
        assert_eq!(n.value(Concept::RequestsWaiting, "m", "0"), None);
    }

    /// Values the parser flags in OpenMetrics (negative counter total, unit not the name's
    /// suffix, `_count` not the `+Inf` bucket) never reach the normalised series; in 0.0.4 the
    /// counter's negative sample is skipped and the histogram is kept.
    #[test]
    fn flagged_values_are_never_used() {
        let body = "# TYPE vllm:prompt_tokens counter\n\
vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\",pid=\"1\"} 5\n\
vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\",pid=\"2\"} -3\n\
# TYPE vllm:num_requests_running gauge\n# UNIT vllm:num_requests_running seconds\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 4\n\
# TYPE vllm:time_to_first_token_seconds histogram\n\
vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"m\",le=\"1.0\"} 1\n\
vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"m\",le=\"+Inf\"} 2\n\
vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 9\n\
vllm:time_to_first_token_seconds_sum{engine=\"0\",model_name=\"m\"} 1.5\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1\n";
        let key = Key {
            model: "m".into(),
            engine_index: "0".into(),
            reason: None,
        };
        let om_body = format!("{body}# EOF\n");
        let om = parse(&om_body, Format::OpenMetrics);
        assert_eq!(om.error_total(), 3, "{:?}", om.errors);
        let n = normalize(&om, "x");
        assert_eq!(n.value(Concept::PromptTokens, "m", "0"), None);
        assert_eq!(n.value(Concept::RequestsRunning, "m", "0"), None);
        assert!(!n.histograms.contains_key(&(Concept::Ttft, key.clone())));
        assert_eq!(n.value(Concept::RequestsWaiting, "m", "0"), Some(1.0));
        let prom = parse(body, Format::Prometheus);
        assert_eq!(prom.error_total(), 0, "{:?}", prom.errors);
        let n = normalize(&prom, "x");
        assert_eq!(n.value(Concept::PromptTokens, "m", "0"), Some(5.0));
        assert_eq!(n.value(Concept::RequestsRunning, "m", "0"), Some(4.0));
        assert!(n.histograms.contains_key(&(Concept::Ttft, key)));
    }
}
