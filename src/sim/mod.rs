//! The built-in vLLM simulator. (Skeleton: the foundation issue fills this in.)

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:8000",
        env = "VLLM_SENTINEL_SIM_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
}

pub async fn run_cli(_args: SimArgs, _token: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not implemented yet")
}

/// The simulator's settings.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {}

/// Serves the simulator on `listener` until `token` is cancelled.
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _cfg: SimConfig,
    token: CancellationToken,
) -> anyhow::Result<()> {
    token.cancelled().await;
    Ok(())
}
