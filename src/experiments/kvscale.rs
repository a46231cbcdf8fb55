//! Skeleton.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct KvScaleArgs {
    /// Base URL of the server.
    #[arg(long, env = "VLLM_SENTINEL_TARGET")]
    pub target: String,
}

pub async fn run_cli(_args: KvScaleArgs, _token: CancellationToken) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
