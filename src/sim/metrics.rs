//! The simulator's `/metrics`: vLLM 0.33's `vllm:` families written by hand.
//!
//! Hand-written because the real body comes from Python's `prometheus_client`, whose shape
//! prometheus-client (Rust) cannot reproduce: colon names, `_created` gauge families after every
//! counter and histogram, a histogram named `…_total`, Python float spelling (`16.0`,
//! `1.7958514243365703e+09`), labels sorted by name, and content type
//! `text/plain; version=1.0.0; charset=utf-8`. Rendering from the engine's counters is cheap.

use std::fmt::Write as _;

/// Exact `Content-Type` of vLLM's `/metrics` (prometheus_client 0.26).
pub const CONTENT_TYPE: &str = "text/plain; version=1.0.0; charset=utf-8";

/// vLLM's default histogram buckets (`vllm/v1/metrics/buckets.py`).
pub mod buckets {
    pub const TTFT: &[f64] = &[
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
    ];
    pub const ITL: &[f64] = &[
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0,
    ];
    pub const REQUEST_LATENCY: &[f64] = &[
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
        240.0, 480.0, 960.0, 1920.0, 7680.0,
    ];
    pub const ITERATION_TOKENS: &[f64] = &[
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    ];
    pub const PARAMS_N: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
    pub const NUM_PREEMPTIONS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0];

    /// The 1-2-5 series up to `max_model_len`.
    pub fn request_tokens(max_model_len: u32) -> Vec<f64> {
        let mut out = Vec::new();
        let mut scale = 1u64;
        'outer: loop {
            for m in [1u64, 2, 5] {
                let v = m * scale;
                if v > u64::from(max_model_len.max(1)) {
                    break 'outer;
                }
                out.push(v as f64);
            }
            scale *= 10;
        }
        out
    }
}

/// A cumulative histogram with fixed upper bounds (`+Inf` implied).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: Vec<f64>) -> Self {
        let n = bounds.len();
        Self {
            bounds,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records `v`.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Spells a float as Python's prometheus_client does (`floatToGoString`).
pub fn go_float(d: f64) -> String {
    if d == f64::INFINITY {
        return "+Inf".into();
    }
    if d == f64::NEG_INFINITY {
        return "-Inf".into();
    }
    if d.is_nan() {
        return "NaN".into();
    }
    let s = format!("{d:?}");
    if let Some(dot) = s.find('.')
        && d > 0.0
        && dot > 6
        && !s.contains('e')
    {
        let digits = format!("{}{}", &s[1..dot], &s[dot + 1..]);
        let mantissa = format!("{}.{}", &s[..1], digits);
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e+{:02}", dot - 1);
    }
    s
}

/// Everything `/metrics` shows, read from the engine and the server under one lock.
pub struct Snapshot<'a> {
    pub model: &'a str,
    pub legacy: bool,
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub stats: &'a super::engine::EngineStats,
    pub created: f64,
    pub cache_info: CacheInfo,
    /// `(handler, method, status class, count)`.
    pub http: Vec<(String, &'static str, &'static str, u64)>,
}

/// Labels of `vllm:cache_config_info`.
pub struct CacheInfo {
    pub block_size: u32,
    pub num_gpu_blocks: u32,
    pub enable_prefix_caching: bool,
    pub max_num_seqs: u32,
    pub max_model_len: u32,
}

struct Writer {
    out: String,
    base: Vec<(String, String)>,
    created: String,
    legacy: bool,
}

fn base_labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Writer {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&self, extra: &[(&str, &str)]) -> String {
        let mut all: Vec<(&str, &str)> = extra.to_vec();
        all.extend(self.base.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        all.sort_by(|a, b| a.0.cmp(b.0));
        if all.is_empty() {
            return String::new();
        }
        let mut s = String::from("{");
        for (i, (k, v)) in all.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{k}=\"{}\"", escape_label(v));
        }
        s.push('}');
        s
    }

    fn gauge(&mut self, name: &str, help: &str, series: &[(&[(&str, &str)], f64)]) {
        self.header(name, help, "gauge");
        for (extra, v) in series {
            let l = self.labels(extra);
            let _ = writeln!(self.out, "{name}{l} {}", go_float(*v));
        }
    }

    /// A counter `base` exposed as `base_total` plus its `base_created` family.
    fn counter(&mut self, base: &str, help: &str, series: &[(&[(&str, &str)], f64)]) {
        let total = format!("{base}_total");
        self.header(&total, help, "counter");
        for (extra, v) in series {
            let l = self.labels(extra);
            let _ = writeln!(self.out, "{total}{l} {}", go_float(*v));
        }
        let created = format!("{base}_created");
        self.header(&created, help, "gauge");
        for (extra, _) in series {
            let l = self.labels(extra);
            let _ = writeln!(self.out, "{created}{l} {}", self.created);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let mut cum = 0u64;
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            cum += c;
            let le = go_float(*b);
            let l = self.labels(&[("le", &le)]);
            let _ = writeln!(self.out, "{name}_bucket{l} {}", go_float(cum as f64));
        }
        let l = self.labels(&[("le", "+Inf")]);
        let _ = writeln!(self.out, "{name}_bucket{l} {}", go_float(h.count as f64));
        let l = self.labels(&[]);
        let _ = writeln!(self.out, "{name}_count{l} {}", go_float(h.count as f64));
        let _ = writeln!(self.out, "{name}_sum{l} {}", go_float(h.sum));
        let created = format!("{name}_created");
        self.header(&created, help, "gauge");
        let _ = writeln!(self.out, "{created}{l} {}", self.created);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the whole body.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut w = Writer {
        out: String::with_capacity(48 * 1024),
        base: base_labels(&[("engine", "0"), ("model_name", s.model)]),
        created: go_float(s.created),
        legacy: s.legacy,
    };
    let st = s.stats;
    let none: &[(&str, &str)] = &[];
    for (n, h) in [
        (
            "estimated_flops_per_gpu",
            "Estimated number of floating point operations per GPU (for Model Flops Utilization calculations).",
        ),
        (
            "estimated_read_bytes_per_gpu",
            "Estimated number of bytes read from memory per GPU (for Model Flops Utilization calculations).",
        ),
        (
            "estimated_write_bytes_per_gpu",
            "Estimated number of bytes written to memory per GPU (for Model Flops Utilization calculations).",
        ),
    ] {
        w.counter(&format!("vllm:{n}"), h, &[(none, 0.0)]);
    }
    w.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        &[(none, s.running as f64)],
    );
    w.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        &[(none, s.waiting as f64)],
    );
    w.gauge(
        "vllm:num_requests_waiting_by_reason",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
        &[
            (&[("reason", "capacity")], s.waiting as f64),
            (&[("reason", "deferred")], 0.0),
        ],
    );
    w.gauge(
        "vllm:engine_sleep_state",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        &[
            (&[("sleep_state", "awake")], 1.0),
            (&[("sleep_state", "weights_offloaded")], 0.0),
            (&[("sleep_state", "discard_all")], 0.0),
        ],
    );
    let legacy = w.legacy;
    if legacy {
        w.gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            &[(none, s.kv_usage)],
        );
        w.counter(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            &[(none, st.prefix_cache_queries as f64)],
        );
        w.counter(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens.",
            &[(none, st.prefix_cache_hits as f64)],
        );
    } else {
        w.gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            &[(none, s.kv_usage)],
        );
        w.counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            &[(none, st.prefix_cache_queries as f64)],
        );
        w.counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            &[(none, st.prefix_cache_hits as f64)],
        );
    }
    w.counter(
        "vllm:external_prefix_cache_queries",
        "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
        &[(none, 0.0)],
    );
    w.counter(
        "vllm:external_prefix_cache_hits",
        "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
        &[(none, 0.0)],
    );
    w.counter(
        "vllm:mm_cache_queries",
        "Multi-modal cache queries, in terms of number of queried items.",
        &[(none, 0.0)],
    );
    w.counter(
        "vllm:mm_cache_hits",
        "Multi-modal cache hits, in terms of number of cached items.",
        &[(none, 0.0)],
    );
    w.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        &[(none, st.num_preemptions as f64)],
    );
    w.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        &[(none, st.prompt_tokens as f64)],
    );
    w.counter(
        "vllm:prompt_tokens_by_source",
        "Number of prompt tokens by source.",
        &[
            (
                &[("source", "local_compute")],
                st.prompt_tokens_local_compute as f64,
            ),
            (
                &[("source", "local_cache_hit")],
                st.prompt_tokens_cache_hit as f64,
            ),
            (&[("source", "external_kv_transfer")], 0.0),
        ],
    );
    w.counter(
        "vllm:prompt_tokens_cached",
        "Number of cached prompt tokens (local + external).",
        &[(none, st.prompt_tokens_cache_hit as f64)],
    );
    w.counter(
        "vllm:prompt_tokens_cached_by_source",
        "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
        &[
            (&[("source", "device")], st.prompt_tokens_cache_hit as f64),
            (&[("source", "host")], 0.0),
            (&[("source", "p2p")], 0.0),
            (&[("source", "disk")], 0.0),
            (&[("source", "external_unspecified")], 0.0),
        ],
    );
    w.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        &[(none, st.generation_tokens as f64)],
    );
    w.counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        &[
            (&[("finished_reason", "stop")], st.success_stop as f64),
            (&[("finished_reason", "length")], st.success_length as f64),
            (&[("finished_reason", "abort")], 0.0),
            (&[("finished_reason", "error")], 0.0),
            (&[("finished_reason", "repetition")], 0.0),
        ],
    );
    // admission_rejections has no `engine` label.
    let saved = std::mem::replace(&mut w.base, base_labels(&[("model_name", s.model)]));
    w.counter(
        "vllm:admission_rejections",
        "Number of admission attempts rejected by a queue limit, by reason.",
        &[
            (
                &[("reason", "max_num_queued_reqs")],
                st.admission_rejections as f64,
            ),
            (&[("reason", "max_num_queued_tokens")], 0.0),
        ],
    );
    w.base = saved;
    w.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        &st.prompt_tokens_hist,
    );
    w.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        &st.generation_tokens_hist,
    );
    w.histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        &st.iteration_tokens,
    );
    w.histogram(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        &st.max_num_generation_tokens,
    );
    w.histogram(
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        &st.params_n,
    );
    w.histogram(
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        &st.params_max_tokens,
    );
    w.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &st.ttft,
    );
    if legacy {
        w.histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &st.itl,
        );
    } else {
        w.histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &st.itl,
        );
    }
    w.histogram(
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        &st.tpot,
    );
    w.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &st.e2e,
    );
    w.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &st.queue_time,
    );
    w.histogram(
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        &st.inference_time,
    );
    w.histogram(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        &st.prefill_time,
    );
    w.histogram(
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        &st.decode_time,
    );
    w.histogram(
        "vllm:request_num_preemptions",
        "Histogram of the number of times a request was preempted.",
        &st.num_preemptions_hist,
    );
    w.histogram(
        "vllm:request_prefill_kv_computed_tokens",
        "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
        &st.prefill_kv_computed,
    );
    let ci = &s.cache_info;
    let bs = ci.block_size.to_string();
    let nb = ci.num_gpu_blocks.to_string();
    let tokens = (u64::from(ci.block_size) * u64::from(ci.num_gpu_blocks)).to_string();
    let mem = (u64::from(ci.block_size) * u64::from(ci.num_gpu_blocks) * 2048).to_string();
    let conc = format!(
        "{:?}",
        (f64::from(ci.block_size) * f64::from(ci.num_gpu_blocks))
            / f64::from(ci.max_model_len.max(1))
    );
    let pc = if ci.enable_prefix_caching {
        "True"
    } else {
        "False"
    };
    let _ = ci.max_num_seqs;
    let info: Vec<(&str, &str)> = vec![
        ("_block_size_resolved", "True"),
        ("block_size", &bs),
        ("cache_dtype", "auto"),
        ("cache_hit_alignment_tokens", "None"),
        ("effective_attention_block_size", &bs),
        ("enable_mamba_shared_prefix_checkpoint", "False"),
        ("enable_prefix_caching", pc),
        ("gpu_memory_utilization", "0.92"),
        ("hash_block_size", "None"),
        ("is_attention_free", "False"),
        ("kv_cache_dtype_skip_layers", "[]"),
        ("kv_cache_layout", "None"),
        ("kv_cache_max_concurrency", &conc),
        ("kv_cache_memory_bytes", &mem),
        ("kv_cache_size_tokens", &tokens),
        ("kv_offloading_backend", "native"),
        ("kv_offloading_size", "None"),
        ("kv_sharing_fast_prefill", "False"),
        ("mamba_block_size", "None"),
        ("mamba_cache_dtype", "auto"),
        ("mamba_cache_mode", "none"),
        ("mamba_page_size_padded", "None"),
        ("mamba_ssm_cache_dtype", "float32"),
        ("num_cpu_blocks", "None"),
        ("num_gpu_blocks", &nb),
        ("num_gpu_blocks_override", "None"),
        ("prefix_cache_retention_interval", "0"),
        ("prefix_caching_hash_algo", "sha256"),
        ("prefix_match_unit", "None"),
        ("replayssm_buffer_len", "16"),
        ("skip_page_size_padded", "None"),
        ("sliding_window", "None"),
        ("swa_bounded_replay", "True"),
        ("use_kda_recoverssm", "False"),
        ("use_replayssm", "False"),
        ("user_specified_block_size", "False"),
    ];
    // cache_config_info carries `engine` but not `model_name`.
    let saved = std::mem::replace(&mut w.base, base_labels(&[("engine", "0")]));
    w.gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        &[(&info, 1.0)],
    );
    w.base = saved;
    // The API server's own family (prometheus-fastapi-instrumentator).
    w.base = Vec::new();
    w.header(
        "http_requests_total",
        "Total number of requests by method, status and handler.",
        "counter",
    );
    for (h, m, st, v) in &s.http {
        let l = w.labels(&[("handler", h), ("method", m), ("status", st)]);
        let _ = writeln!(w.out, "http_requests_total{l} {}", go_float(*v as f64));
    }
    w.header(
        "http_requests_created",
        "Total number of requests by method, status and handler.",
        "gauge",
    );
    for (h, m, st, _) in &s.http {
        let l = w.labels(&[("handler", h), ("method", m), ("status", st)]);
        let _ = writeln!(w.out, "http_requests_created{l} {}", w.created);
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_spelled_like_python() {
        assert_eq!(go_float(16.0), "16.0");
        assert_eq!(go_float(0.0), "0.0");
        assert_eq!(go_float(0.5039370078740157), "0.5039370078740157");
        assert_eq!(go_float(1795851424.3365703), "1.7958514243365703e+09");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(123456.0), "123456.0");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(0.001), "0.001");
    }

    #[test]
    fn request_token_buckets_follow_1_2_5_to_max_len() {
        assert_eq!(
            buckets::request_tokens(2048),
            [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0
            ]
        );
        assert_eq!(buckets::request_tokens(10), [1.0, 2.0, 5.0, 10.0]);
    }

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(vec![1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 1]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum(), 12.0);
    }
}
