//! The flags of `kv-scale` and their checks.

use std::time::Duration;

use anyhow::bail;

use crate::experiments::common::CommonArgs;
use crate::units::parse_duration;

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
    pub(super) fn validate(&self) -> anyhow::Result<()> {
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
