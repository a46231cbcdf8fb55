//! What the experiments need from a server, as one narrow trait: discover the model, send one
//! request and measure it, read the server's own gauges, read the GPU.
//!
//! The experiments run against [`Target`] so that their logic (levels, windows, knees,
//! capacity) is tested against an in-process fake with a virtual clock, and the real
//! implementation ([`super::http::HttpTarget`]) maps it onto the prober's single-request engine
//! and the scrape module, so a one-shot number means what the daemon's number means.

use std::future::Future;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::prober::request::{Outcome, RequestRecord};
use crate::workload::Item;
use crate::workload::lora::Listed;

/// One model the server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model id to put in requests.
    pub id: String,
    /// The server's context limit for it (vLLM publishes `max_model_len` in `/v1/models`).
    pub max_model_len: Option<u32>,
}

/// What one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// `max_tokens` of the request.
    pub max_tokens: u32,
    /// Streaming (SSE) or not.
    pub stream: bool,
}

/// The measurement of one request, whatever happened to it: the prober's [`RequestRecord`]
/// (see [`Sample::from_record`]) in the seconds the reports are written in. The outcome is the
/// prober's own typed [`Outcome`]; reports write its label ([`Outcome::as_str`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// How the request ended.
    pub outcome: Outcome,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The server's error message (for a 4xx/5xx) or the client's, when it failed.
    pub error_message: Option<String>,
    /// Time to the first byte of the response body, seconds.
    pub ttfb_s: Option<f64>,
    /// Time to the first token (streaming only), seconds.
    pub ttft_s: Option<f64>,
    /// Mean time per output token after the first, seconds.
    pub tpot_s: Option<f64>,
    /// Gaps between consecutive token-bearing chunks, seconds.
    pub itl_s: Vec<f64>,
    /// End-to-end latency, seconds (measured from the intended start when one was given).
    pub e2e_s: f64,
    /// Prompt tokens as the server counted them (`usage`).
    pub prompt_tokens: Option<u32>,
    /// Output tokens as the server counted them (`usage`), else as counted on the stream.
    pub output_tokens: Option<u32>,
    /// `finish_reason` of the (first) choice.
    pub finish_reason: Option<String>,
}

impl Default for Sample {
    /// An empty successful sample, as [`RequestRecord`] starts out.
    fn default() -> Self {
        Self {
            outcome: Outcome::Ok,
            status: None,
            error_message: None,
            ttfb_s: None,
            ttft_s: None,
            tpot_s: None,
            itl_s: Vec::new(),
            e2e_s: 0.0,
            prompt_tokens: None,
            output_tokens: None,
            finish_reason: None,
        }
    }
}

impl Sample {
    /// Whether the request succeeded.
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// A failed sample (for requests that never reached the engine).
    pub fn failed(outcome: Outcome, message: impl Into<String>) -> Self {
        Self {
            outcome,
            error_message: Some(message.into()),
            ..Self::default()
        }
    }

    /// The experiments' view of the prober's record of one request: the same outcome, status,
    /// token counts and finish reason, its durations in seconds. A non-streaming answer arrives
    /// whole, so it has no first token, TPOT or inter-token gaps of its own.
    pub fn from_record(rec: &RequestRecord, stream: bool) -> Self {
        let secs = |d: Duration| d.as_secs_f64();
        Self {
            outcome: rec.outcome,
            status: rec.http_status,
            error_message: rec.error.clone(),
            ttfb_s: rec.ttfb.map(secs),
            ttft_s: if stream { rec.ttft.map(secs) } else { None },
            tpot_s: if stream { rec.tpot.map(secs) } else { None },
            itl_s: if stream {
                rec.itl.iter().copied().map(secs).collect()
            } else {
                Vec::new()
            },
            e2e_s: secs(rec.e2e),
            prompt_tokens: rec.prompt_tokens,
            output_tokens: rec.output_tokens,
            finish_reason: rec.finish_reason.clone(),
        }
    }
}

/// The server's own gauges at one instant (from its `/metrics`, read and normalised by the
/// daemon's scrape path, [`crate::scrape::once`], so every engine the daemon knows works). A
/// field is `None` when the server does not export that concept. Across engines
/// (data-parallel ranks) counts and counters are summed and KV usage, a ratio, is the maximum,
/// as the daemon aggregates them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSnapshot {
    /// KV-cache usage (0–1; vLLM `vllm:kv_cache_usage_perc`).
    pub kv_usage: Option<f64>,
    /// `vllm:num_requests_running`.
    pub running: Option<f64>,
    /// `vllm:num_requests_waiting`.
    pub waiting: Option<f64>,
    /// `vllm:num_preemptions_total` (a counter).
    pub preemptions_total: Option<f64>,
    /// `vllm:generation_tokens_total` (a counter). vLLM updates it in the same engine step as
    /// the gauges above, so within one body it says how many tokens the resident requests
    /// have produced.
    #[serde(default)]
    pub generation_tokens_total: Option<f64>,
    /// From `vllm:cache_config_info`.
    pub cache: Option<CacheConfig>,
}

impl ServerSnapshot {
    /// The experiments' gauges out of one normalised scrape.
    pub fn from_scrape(snap: &crate::scrape::once::Snapshot) -> Self {
        use crate::scrape::normalize::Concept;
        let values = |c: Concept| {
            snap.series
                .values
                .iter()
                .filter(move |((cc, _), v)| *cc == c && v.is_finite())
                .map(|(_, v)| *v)
        };
        let sum = |c: Concept| values(c).reduce(|a, b| a + b);
        Self {
            kv_usage: values(Concept::KvCacheUsage).reduce(f64::max),
            running: sum(Concept::RequestsRunning),
            waiting: sum(Concept::RequestsWaiting),
            preemptions_total: sum(Concept::Preemptions),
            generation_tokens_total: sum(Concept::GenerationTokens),
            cache: snap.cache.map(|g| CacheConfig {
                block_size: g.block_size,
                num_gpu_blocks: g.num_blocks,
            }),
        }
    }
}

/// The KV-cache geometry a vLLM server publishes in `vllm:cache_config_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Tokens per KV block.
    pub block_size: u64,
    /// KV blocks on the GPU (or CPU KV space).
    pub num_gpu_blocks: u64,
}

impl CacheConfig {
    /// Total tokens of the KV cache, as vLLM reports it (`kv_cache_size_tokens`).
    pub fn capacity_tokens(&self) -> u64 {
        self.block_size.saturating_mul(self.num_gpu_blocks)
    }

    /// Blocks requests can use: vLLM keeps one block aside (its null block), and
    /// `kv_cache_usage_perc` is used blocks over this number.
    pub fn usable_blocks(&self) -> u64 {
        self.num_gpu_blocks.saturating_sub(1)
    }
}

/// GPU state at one instant (NVML), summed over the devices in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    /// Utilisation 0–1 (mean over devices).
    pub utilization: f64,
    /// Memory used, bytes (sum over devices).
    pub memory_used_bytes: f64,
}

impl GpuSnapshot {
    /// The experiments' summary of one snapshot of the GPU module's sampler: utilisation
    /// averaged over the GPUs that answered, memory used summed; why there is none otherwise.
    pub fn from_sampled(s: &crate::gpu::GpuSnapshot) -> Result<Self, String> {
        if !s.up {
            return Err(if s.attempts == 0 {
                "not available (starting)".to_string()
            } else {
                "not available (NVML could not be used on this machine)".to_string()
            });
        }
        let util: Vec<f64> = s.devices.iter().filter_map(|d| d.utilization_gpu).collect();
        if util.is_empty() {
            return Err("not available (no GPU answered)".into());
        }
        Ok(Self {
            utilization: util.iter().sum::<f64>() / util.len() as f64,
            memory_used_bytes: s
                .devices
                .iter()
                .filter_map(|d| d.memory.map(|m| m.used as f64))
                .sum(),
        })
    }
}

/// How far a held stream ([`Target::stream_held`]) has got, published while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamProgress {
    /// Output-bearing events received so far (the first one is the first token).
    pub output_events: u32,
    /// The stream has ended: by itself, by a failure, or closed by the caller.
    pub ended: bool,
}

impl StreamProgress {
    /// Whether the first token has arrived: the request is past its prefill.
    pub fn started(&self) -> bool {
        self.output_events > 0
    }
}

/// A server to experiment on.
pub trait Target: Send + Sync + 'static {
    /// `/v1/models`: the models offered. Fails when the server cannot be reached.
    fn models(&self) -> impl Future<Output = anyhow::Result<Vec<ModelInfo>>> + Send;
    /// Gets ready to send requests for `model` (e.g. calibrates prompt lengths against the
    /// server's tokenizer). Returns notes for the report (e.g. "prompt lengths are estimates").
    fn prepare(&self, model: &ModelInfo) -> impl Future<Output = Vec<String>> + Send;
    /// Sends one request and measures it. Never fails: a failure is a [`Sample`] with its class.
    /// `intended` is when the request should have been sent (open-loop load: its scheduled
    /// arrival; otherwise now): latencies count from it, so a late send is charged to them.
    fn execute(&self, spec: RequestSpec, intended: Instant) -> impl Future<Output = Sample> + Send;
    /// Sends one streaming request and keeps it open until it ends by itself or `close` is
    /// cancelled (which closes the connection, so the server aborts the request and frees its
    /// KV blocks). Publishes its progress on `progress` as each output event arrives. The
    /// returned sample of a closed stream has outcome `cancelled` and keeps its TTFT.
    ///
    /// The default runs [`Target::execute`] and publishes progress only at the end: a target
    /// that cannot report progress mid-stream cannot be observed while resident.
    fn stream_held(
        &self,
        spec: RequestSpec,
        progress: watch::Sender<StreamProgress>,
        close: CancellationToken,
    ) -> impl Future<Output = Sample> + Send {
        async move {
            let s = tokio::select! {
                s = self.execute(spec, Instant::now()) => s,
                _ = close.cancelled() => Sample::failed(Outcome::Cancelled, "closed by the caller"),
            };
            progress.send_replace(StreamProgress {
                output_events: s.output_tokens.unwrap_or(0),
                ended: true,
            });
            s
        }
    }
    /// Sends the request a workload source describes ([`crate::workload::Item`]: its prompt,
    /// `max_tokens`, model) and measures it. The default sends a random prompt of the item's
    /// length through [`Target::execute`] (what a target without prompt rendering can do).
    fn execute_item(
        &self,
        item: &Item,
        stream: bool,
        intended: Instant,
    ) -> impl Future<Output = Sample> + Send {
        let spec = RequestSpec {
            prompt_tokens: item.prompt.approx_tokens(),
            max_tokens: item.max_tokens,
            stream,
        };
        self.execute(spec, intended)
    }
    /// `/v1/models` with each entry's `parent` (LoRA adapters have one). The default lists
    /// nothing.
    fn listed_models(&self) -> impl Future<Output = anyhow::Result<Vec<Listed>>> + Send {
        async { Ok(Vec::new()) }
    }
    /// Reads the server's gauges from its `/metrics`. Fails when there is no `/metrics`.
    fn metrics(&self) -> impl Future<Output = anyhow::Result<ServerSnapshot>> + Send;
    /// Reads the GPUs, or says why it cannot (e.g. no NVML on this machine).
    fn gpu(&self) -> Result<GpuSnapshot, String> {
        Err("not available".to_string())
    }
}

/// Resolves the model to use: the one asked for (which must exist when the server lists
/// models), else the first the server offers.
pub fn choose_model(models: &[ModelInfo], wanted: Option<&str>) -> anyhow::Result<ModelInfo> {
    match wanted {
        Some(w) => Ok(models
            .iter()
            .find(|m| m.id == w)
            .cloned()
            .unwrap_or_else(|| ModelInfo {
                id: w.to_string(),
                max_model_len: None,
            })),
        None => models.first().cloned().ok_or_else(|| {
            anyhow::anyhow!("the server lists no models in /v1/models; pass --model")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::expfmt::Format;

    fn snapshot_from_exposition(body: &str) -> ServerSnapshot {
        // lenient, as the table it replaced: an unreadable body reads as nothing
        crate::scrape::once::snapshot_of_body(body.as_bytes(), Format::Prometheus)
            .map(|s| ServerSnapshot::from_scrape(&s))
            .unwrap_or_default()
    }

    #[test]
    fn reads_the_watched_gauges() {
        let body = r#"
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:num_requests_running{engine="0"} 3
vllm:num_requests_running{engine="1"} 2
vllm:num_requests_waiting{engine="0"} 1
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0"} 7
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1024"} 1.0
"#;
        let s = snapshot_from_exposition(body);
        // a ratio is the maximum across engines, as the daemon takes it; counts are summed
        assert_eq!(s.kv_usage, Some(0.75));
        assert_eq!(s.running, Some(5.0));
        assert_eq!(s.waiting, Some(1.0));
        assert_eq!(s.preemptions_total, Some(7.0));
        assert_eq!(
            s.cache,
            Some(CacheConfig {
                block_size: 16,
                num_gpu_blocks: 1024
            })
        );
        let empty = snapshot_from_exposition("# nothing\n");
        assert_eq!(empty, ServerSnapshot::default());
        let old = snapshot_from_exposition("vllm:gpu_cache_usage_perc 0.1\n");
        assert_eq!(old.kv_usage, Some(0.1));
    }

    /// Lines of a real vLLM 0.32.0 (CPU) capture, busy with 16 requests (a counter is
    /// recognised by its `# TYPE` line, which vLLM always writes, as the daemon reads it).
    const REAL: &str = r#"# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5039370078740157
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 0.0
vllm:cache_config_info{_block_size_resolved="True",block_size="128",cache_dtype="auto",cache_hit_alignment_tokens="None",effective_attention_block_size="128",enable_mamba_shared_prefix_checkpoint="False",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.92",hash_block_size="None",is_attention_free="False",kv_cache_dtype_skip_layers="[]",kv_cache_layout="None",kv_cache_max_concurrency="8.0",kv_cache_memory_bytes="33554432",kv_cache_size_tokens="16384",kv_offloading_backend="native",kv_offloading_size="None",kv_sharing_fast_prefill="False",mamba_block_size="None",mamba_cache_dtype="auto",mamba_cache_mode="none",mamba_page_size_padded="None",mamba_ssm_cache_dtype="float32",num_cpu_blocks="None",num_gpu_blocks="128",num_gpu_blocks_override="None",prefix_cache_retention_interval="0",prefix_caching_hash_algo="sha256",prefix_match_unit="None",replayssm_buffer_len="16",skip_page_size_padded="None",sliding_window="None",swa_bounded_replay="True",use_kda_recoverssm="False",use_replayssm="False",user_specified_block_size="False"} 1.0
"#;

    #[test]
    fn reads_a_real_vllm_capture() {
        let s = snapshot_from_exposition(REAL);
        assert_eq!(s.kv_usage, Some(0.5039370078740157));
        assert_eq!(
            s.waiting,
            Some(0.0),
            "waiting_by_reason is a different family"
        );
        assert_eq!(s.preemptions_total, Some(0.0));
        assert_eq!(
            s.cache,
            Some(CacheConfig {
                block_size: 128,
                num_gpu_blocks: 128
            })
        );
    }

    #[test]
    fn reads_other_engines_too() {
        let s = snapshot_from_exposition(
            "sglang:num_running_reqs{dp_rank=\"0\"} 2\nsglang:num_running_reqs{dp_rank=\"1\"} 3\nsglang:token_usage{dp_rank=\"0\"} 0.4\n",
        );
        assert_eq!(s.running, Some(5.0));
        assert_eq!(s.kv_usage, Some(0.4));
    }

    #[test]
    fn model_choice() {
        let ms = vec![
            ModelInfo {
                id: "a".into(),
                max_model_len: Some(2048),
            },
            ModelInfo {
                id: "b".into(),
                max_model_len: Some(4096),
            },
        ];
        assert_eq!(choose_model(&ms, None).unwrap().id, "a");
        assert_eq!(
            choose_model(&ms, Some("b")).unwrap().max_model_len,
            Some(4096)
        );
        assert_eq!(choose_model(&ms, Some("c")).unwrap().max_model_len, None);
        assert!(choose_model(&[], None).is_err());
        let c = CacheConfig {
            block_size: 16,
            num_gpu_blocks: 1024,
        };
        assert_eq!(c.capacity_tokens(), 16_384);
        assert_eq!(c.usable_blocks(), 1023);
        assert!(
            Sample::failed(Outcome::Connect, "refused")
                .error_message
                .is_some()
        );
        assert!(!Sample::failed(Outcome::Connect, "refused").ok());
    }
}
