//! The built-in vLLM simulator: an OpenAI-compatible server that looks like vLLM 0.32/0.33 on
//! the wire (SSE framing, error bodies, `/metrics` families), with a continuous-batching engine
//! model behind it ([`engine`]), a fixed-timing mode for measuring the prober, and
//! deterministic fault injection ([`faults`]). See `docs/sim.md`.

pub mod api;
pub mod engine;
pub mod faults;
pub mod metrics;
mod server;
mod stream;
pub mod tokenizer;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use faults::{Faults, MetricsFault};
pub use server::MAX_REQUEST_BODY_BYTES;

use crate::units::parse_duration;

/// Fixed-timing mode: first token after `first`, then one every `every` (absolute deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedTiming {
    /// Delay from the request's arrival to the first token.
    pub first: Duration,
    /// Gap between tokens.
    pub every: Duration,
}

/// Parses `FIRST,EVERY`, e.g. `50ms,10ms`.
pub fn parse_fixed_timing(s: &str) -> Result<FixedTiming, String> {
    let (a, b) = s.split_once(',').ok_or_else(|| {
        format!("invalid fixed timing {s:?}: expected FIRST,EVERY such as 50ms,10ms")
    })?;
    let first = parse_duration(a.trim())?;
    let every = parse_duration(b.trim())?;
    if every.is_zero() {
        return Err(format!("invalid fixed timing {s:?}: EVERY must be > 0"));
    }
    Ok(FixedTiming { first, every })
}

/// `vllm-sentinel simulate` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:8000",
        env = "VLLM_SENTINEL_SIM_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
    /// Served model name (what `/v1/models` lists and requests must name).
    #[arg(long, default_value = "sim-model", env = "VLLM_SENTINEL_SIM_MODEL")]
    pub model: String,
    /// Context length (prompt + output tokens).
    #[arg(long, default_value_t = 2048, env = "VLLM_SENTINEL_SIM_MAX_MODEL_LEN")]
    pub max_model_len: u32,
    /// Version reported by `/version` and in `system_fingerprint`.
    #[arg(long, default_value = "0.33.0", env = "VLLM_SENTINEL_SIM_VLLM_VERSION")]
    pub vllm_version: String,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16, env = "VLLM_SENTINEL_SIM_BLOCK_SIZE")]
    pub block_size: u32,
    /// KV-cache blocks (capacity = blocks × block size tokens).
    #[arg(long, default_value_t = 1024, env = "VLLM_SENTINEL_SIM_NUM_GPU_BLOCKS")]
    pub num_gpu_blocks: u32,
    /// Most requests running at once.
    #[arg(long, default_value_t = 64, env = "VLLM_SENTINEL_SIM_MAX_NUM_SEQS")]
    pub max_num_seqs: u32,
    /// Token budget per engine step (chunked prefill).
    #[arg(
        long,
        default_value_t = 2048,
        env = "VLLM_SENTINEL_SIM_MAX_NUM_BATCHED_TOKENS"
    )]
    pub max_num_batched_tokens: u32,
    /// Refuse new requests with 503 while this many are waiting (default: no limit).
    #[arg(long, env = "VLLM_SENTINEL_SIM_MAX_QUEUED_REQUESTS")]
    pub max_queued_requests: Option<u32>,
    /// Disable prefix caching.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_SIM_NO_PREFIX_CACHING")]
    pub no_prefix_caching: bool,
    /// Fixed cost of one engine step (e.g. 2ms).
    #[arg(long, default_value = "2ms", value_parser = parse_duration, env = "VLLM_SENTINEL_SIM_STEP_BASE")]
    pub step_base: Duration,
    /// Cost per prompt token prefilled in a step (e.g. 20us).
    #[arg(long, default_value = "20us", value_parser = parse_duration, env = "VLLM_SENTINEL_SIM_PREFILL_PER_TOKEN")]
    pub prefill_per_token: Duration,
    /// Cost per sequence decoded in a step (e.g. 100us).
    #[arg(long, default_value = "100us", value_parser = parse_duration, env = "VLLM_SENTINEL_SIM_DECODE_PER_SEQ")]
    pub decode_per_seq: Duration,
    /// Probability per generated token of an EOS (finish "stop") unless `ignore_eos`.
    #[arg(
        long,
        default_value_t = 0.001,
        env = "VLLM_SENTINEL_SIM_EOS_PROBABILITY"
    )]
    pub eos_probability: f64,
    /// Emit the pre-0.12 metric names (gpu_cache_usage_perc, gpu_prefix_cache_*,
    /// time_per_output_token_seconds).
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_SIM_LEGACY_METRICS")]
    pub legacy_metrics: bool,
    /// Bypass the engine: first token after FIRST, then one every EVERY (e.g. 50ms,10ms);
    /// every event carries `sim_sent_ns`.
    #[arg(long, value_parser = parse_fixed_timing, env = "VLLM_SENTINEL_SIM_FIXED_TIMING")]
    pub fixed_timing: Option<FixedTiming>,
    /// Write `request_id event_index sent_ns` lines for every stamped event (fixed timing).
    #[arg(long, env = "VLLM_SENTINEL_SIM_SEND_LOG")]
    pub send_log: Option<PathBuf>,
    /// Seed of the generated text, EOS draws and fault rates.
    #[arg(long, default_value_t = 0, env = "VLLM_SENTINEL_SIM_SEED")]
    pub seed: u64,
    /// Faults at start, as the JSON that `POST /sim/faults` takes
    /// (e.g. '{"error_status":500,"error_every":10}').
    #[arg(long, value_parser = parse_faults, env = "VLLM_SENTINEL_SIM_FAULTS")]
    pub faults: Option<Faults>,
    /// LoRA adapter names to serve beside --model (comma-separated): /v1/models lists each with
    /// --model as its parent, as vLLM does, and requests may name them (same behaviour).
    #[arg(long, value_delimiter = ',', env = "VLLM_SENTINEL_SIM_LORA_MODULES")]
    pub lora_modules: Vec<String>,
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    let f: Faults = serde_json::from_str(s).map_err(|e| format!("invalid faults JSON: {e}"))?;
    f.validate()?;
    Ok(f)
}

/// The simulator's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Served model name.
    pub model: String,
    /// Context length.
    pub max_model_len: u32,
    /// `/version` answer.
    pub version: String,
    /// Engine sizing and timing (its `max_model_len` is set from the field above).
    pub engine: engine::EngineConfig,
    /// 503 while this many requests wait.
    pub max_queued_requests: Option<u32>,
    /// Per-token EOS probability (without `ignore_eos`).
    pub eos_probability: f64,
    /// Pre-0.12 metric names.
    pub legacy_metrics: bool,
    /// Fixed-timing mode.
    pub fixed_timing: Option<FixedTiming>,
    /// Send log path (fixed timing).
    pub send_log: Option<PathBuf>,
    /// Seed.
    pub seed: u64,
    /// Faults at start.
    pub faults: Faults,
    /// LoRA adapter names served beside the model: `/v1/models` lists each with the model as
    /// its `parent`, as vLLM does for `--lora-modules`, and requests may name them.
    pub lora_modules: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "sim-model".into(),
            max_model_len: 2048,
            version: "0.33.0".into(),
            engine: engine::EngineConfig::default(),
            max_queued_requests: None,
            eos_probability: 0.001,
            legacy_metrics: false,
            fixed_timing: None,
            send_log: None,
            seed: 0,
            faults: Faults::default(),
            lora_modules: Vec::new(),
        }
    }
}

impl From<&SimArgs> for SimConfig {
    fn from(a: &SimArgs) -> Self {
        Self {
            model: a.model.clone(),
            max_model_len: a.max_model_len,
            version: a.vllm_version.clone(),
            engine: engine::EngineConfig {
                block_size: a.block_size,
                num_gpu_blocks: a.num_gpu_blocks,
                max_num_seqs: a.max_num_seqs,
                max_num_batched_tokens: a.max_num_batched_tokens,
                enable_prefix_caching: !a.no_prefix_caching,
                step_base: a.step_base,
                prefill_per_token: a.prefill_per_token,
                decode_per_seq: a.decode_per_seq,
                max_model_len: a.max_model_len,
            },
            max_queued_requests: a.max_queued_requests,
            eos_probability: a.eos_probability,
            legacy_metrics: a.legacy_metrics,
            fixed_timing: a.fixed_timing,
            send_log: a.send_log.clone(),
            seed: a.seed,
            faults: a.faults.clone().unwrap_or_default(),
            lora_modules: a.lora_modules.clone(),
        }
    }
}

impl SimConfig {
    /// Checks values; messages name the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs = Vec::new();
        if self.model.is_empty() {
            errs.push("--model: must not be empty".to_string());
        }
        if self.max_model_len == 0 {
            errs.push("--max-model-len: must be > 0".into());
        }
        if self
            .lora_modules
            .iter()
            .any(|a| a.is_empty() || *a == self.model)
        {
            errs.push("--lora-modules: names must be non-empty and differ from --model".into());
        }
        let e = &self.engine;
        if e.block_size == 0 {
            errs.push("--block-size: must be > 0".into());
        }
        if e.num_gpu_blocks < 2 {
            errs.push("--num-gpu-blocks: must be >= 2".into());
        }
        if e.max_num_seqs == 0 {
            errs.push("--max-num-seqs: must be > 0".into());
        }
        if e.max_num_batched_tokens == 0 {
            errs.push("--max-num-batched-tokens: must be > 0".into());
        }
        let kv_tokens = u64::from(e.num_gpu_blocks.saturating_sub(1)) * u64::from(e.block_size);
        if e.block_size > 0 && e.num_gpu_blocks >= 2 && kv_tokens < u64::from(self.max_model_len) {
            errs.push(format!(
                "--num-gpu-blocks: the KV cache holds {kv_tokens} tokens ((blocks - 1) x block size), fewer than --max-model-len {}; one request could never fit",
                self.max_model_len
            ));
        }
        if !(0.0..=1.0).contains(&self.eos_probability) {
            errs.push("--eos-probability: must be between 0 and 1".into());
        }
        if let Err(e) = self.faults.validate() {
            errs.push(format!("--faults: {e}"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid simulator settings: {}", errs.join("; "))
        }
    }
}

/// `vllm-sentinel simulate`: binds, prints the address, serves until `token` is cancelled.
pub async fn run_cli(args: SimArgs, token: CancellationToken) -> anyhow::Result<()> {
    let cfg = SimConfig::from(&args);
    cfg.validate()?;
    let listener = crate::exporter::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "vllm-sentinel simulator: model {} on http://{addr}/v1 (metrics http://{addr}/metrics)",
        cfg.model
    );
    serve(listener, cfg, token).await
}

/// Serves the simulator on `listener` until `token` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
    token: CancellationToken,
) -> anyhow::Result<()> {
    cfg.validate()?;
    server::serve(listener, cfg, token).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_are_consistent_and_parse() {
        use clap::CommandFactory;
        Wrap::command().debug_assert();
        let w = Wrap::try_parse_from([
            "x",
            "--fixed-timing",
            "50ms,10ms",
            "--max-model-len",
            "128",
            "--faults",
            r#"{"error_status":500,"error_every":2}"#,
        ])
        .unwrap();
        let cfg = SimConfig::from(&w.sim);
        assert_eq!(
            cfg.fixed_timing,
            Some(FixedTiming {
                first: Duration::from_millis(50),
                every: Duration::from_millis(10)
            })
        );
        assert_eq!(cfg.max_model_len, 128);
        assert_eq!(cfg.faults.error_every, 2);
        cfg.validate().unwrap();
        assert!(Wrap::try_parse_from(["x", "--fixed-timing", "50ms"]).is_err());
        assert!(Wrap::try_parse_from(["x", "--faults", r#"{"error_status":200}"#]).is_err());
        let mut bad = SimConfig::default();
        bad.engine.num_gpu_blocks = 1;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("--num-gpu-blocks"), "{e}");
        let mut small = SimConfig::default();
        small.engine.num_gpu_blocks = 100; // 99 x 16 = 1584 < 2048
        let e = small.validate().unwrap_err().to_string();
        assert!(e.contains("fewer than --max-model-len 2048"), "{e}");
    }
}
