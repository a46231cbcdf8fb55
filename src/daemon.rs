//! Wires the subsystems together for `serve` and `demo`.
//!
//! Start-up order: bind the listen address (a port in use fails before anything starts), build
//! the registry with every subsystem's families, start the subsystems under one
//! [`TaskTracker`], serve `/metrics`.
//!
//! Shutdown, on SIGINT/SIGTERM (the root token): (1) `RunContext::token` is cancelled: every loop
//! stops starting new work (no new probe, scrape or sample), while requests in flight go on;
//! (2) when they have all ended, or when `server.shutdown_grace` has passed, whichever is first,
//! `RunContext::abort` cancels what is left, and each such request is counted as `cancelled`;
//! (3) `/metrics` keeps serving all along and for `server.shutdown_linger` more, so a last scrape
//! sees the final counts; then the exporter stops (idle connections at once, open responses
//! finish) and the daemon returns.

use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{DemoArgs, GlobalArgs};
use crate::config::{Config, TargetConfig};
use crate::exporter::{self, ExporterState, ReloadFn};
use crate::runtime::{ABORT_WAIT, Readiness, Reloader, RunContext, StatusBoard};

/// Runs the daemon until `token` is cancelled.
pub async fn serve(
    cfg: Config,
    token: CancellationToken,
    reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    let listener = exporter::bind(cfg.server.listen).await?;
    serve_on(listener, cfg, token, reloader).await
}

/// [`serve`] on an already bound listener (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    cfg: Config,
    token: CancellationToken,
    reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    serve_with_gpu(listener, cfg, token, reloader, None).await
}

/// [`serve_on`] with the GPU source given (`None`: NVML); `demo --fake-gpus` passes a
/// [`crate::gpu::FakeSource`].
pub async fn serve_with_gpu(
    listener: tokio::net::TcpListener,
    cfg: Config,
    token: CancellationToken,
    reloader: Option<Reloader>,
    gpu_source: Option<Box<dyn crate::gpu::GpuSource>>,
) -> anyhow::Result<()> {
    let grace = cfg.server.shutdown_grace;
    // A web config that does not load stops start-up, like a bad config file.
    let web = exporter::web_config::WebHandle::new(exporter::web_config::WebConfig::load(
        cfg.server.web_config_file.as_deref(),
    )?);
    let tap_listener = crate::tap::bind(&cfg).await?;
    let linger = cfg.server.shutdown_linger;
    let (config_tx, config_rx) = watch::channel(Arc::new(cfg.clone()));
    let ctx = RunContext {
        tracker: TaskTracker::new(),
        token: token.child_token(),
        abort: CancellationToken::new(),
        config: config_rx,
        readiness: Readiness::default(),
        status: StatusBoard::default(),
    };
    ctx.status.sync_targets(&status_entries(&cfg));

    let mut registry = Registry::default();
    let Subsystems {
        prober,
        scraper,
        gpu,
        tap,
        web_reload_failures,
        render_cost,
    } = register_subsystems(&cfg, &mut registry, gpu_source)?;
    let registry = Arc::new(registry);
    let history = crate::status::StatusHistory::new(
        ctx.status.clone(),
        cfg.server.status_interval,
        cfg.gpu.enabled,
        cfg.tap.enabled,
    );
    history.spawn(registry.clone(), &ctx);

    prober.spawn(&ctx);
    scraper.spawn(&ctx);
    gpu.spawn(&ctx);
    tap.spawn(tap_listener, &ctx);

    let lifecycle = Arc::new(std::sync::atomic::AtomicBool::new(
        cfg.server.enable_lifecycle,
    ));
    let reload = reloader.map(|r| {
        reload_fn(
            r,
            config_tx.clone(),
            ctx.status.clone(),
            lifecycle.clone(),
            (web.clone(), web_reload_failures.clone()),
        )
    });
    watch_web_config(&web, web_reload_failures, &ctx);
    if let Some(f) = reload.clone() {
        spawn_sighup(f, ctx.token.clone(), &ctx.tracker);
    }

    let state = ExporterState {
        registry,
        readiness: ctx.readiness.clone(),
        status: ctx.status.clone(),
        reload,
        lifecycle,
        history,
        render_cost,
    };
    // The exporter outlives the rest: it stops only after in-flight work has been recorded and
    // the final scrape window has passed.
    let exporter_stop = CancellationToken::new();
    let limits = exporter::server::Limits::from_config(&cfg.server);
    let server = tokio::spawn(exporter::serve(
        listener,
        state,
        limits,
        web,
        exporter_stop.clone(),
    ));

    drain(&ctx, grace, linger).await;
    exporter_stop.cancel();
    await_exporter(server, grace).await
}

/// Re-reads the web config file (and the certificates it names) when it changes on disk.
fn watch_web_config(
    web: &exporter::web_config::WebHandle,
    failures: prometheus_client::metrics::counter::Counter,
    ctx: &RunContext,
) {
    let rx = ctx.config.clone();
    exporter::web_config::spawn_watcher(
        web.clone(),
        move || rx.borrow().server.web_config_file.clone(),
        failures,
        exporter::web_config::POLL,
        ctx.token.clone(),
        &ctx.tracker,
    );
}

/// Waits for the exporter to stop after the final scrape window (bounded: a stuck connection
/// cannot hold the daemon).
async fn await_exporter(
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    match tokio::time::timeout(grace.max(ABORT_WAIT), server).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(anyhow::anyhow!("exporter task failed: {e}")),
        Err(_) => {
            tracing::warn!("exporter did not stop within the shutdown grace");
            Ok(())
        }
    }
}

/// What `POST /-/reload` and SIGHUP run: `reloader` re-reads the configuration; a valid one
/// updates the status board, the lifecycle switch and every subsystem (through `tx`); an invalid
/// one is refused and the running configuration stays. The web config file is re-read too; one
/// that does not load refuses the whole reload (and is counted).
fn reload_fn(
    r: Reloader,
    tx: watch::Sender<Arc<Config>>,
    status: StatusBoard,
    lifecycle: Arc<std::sync::atomic::AtomicBool>,
    (web, web_failures): (
        exporter::web_config::WebHandle,
        prometheus_client::metrics::counter::Counter,
    ),
) -> ReloadFn {
    Arc::new(move || {
        match r().and_then(|new| {
            web.reload(new.server.web_config_file.as_deref(), &web_failures)?;
            Ok(new)
        }) {
            Ok(new) => {
                status.sync_targets(&status_entries(&new));
                lifecycle.store(
                    new.server.enable_lifecycle,
                    std::sync::atomic::Ordering::Relaxed,
                );
                tx.send_replace(Arc::new(new));
                tracing::info!("configuration reloaded");
                Ok("configuration reloaded".to_string())
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reload rejected; keeping the running configuration");
                Err(format!("reload rejected: {e:#}"))
            }
        }
    })
}

/// Shutdown steps 1 to 3 (module doc), once `ctx.token` is cancelled: wait out the grace,
/// cancel what is left, then keep `/metrics` up for the linger window.
async fn drain(ctx: &RunContext, grace: std::time::Duration, linger: std::time::Duration) {
    // 1. Stop starting new work; in-flight probes get the grace to finish.
    ctx.token.cancelled().await;
    ctx.tracker.close();
    if tokio::time::timeout(grace, ctx.tracker.wait())
        .await
        .is_err()
    {
        // 2. The grace is over: cancel what is still in flight; each request ends as
        //    `cancelled` and is counted.
        tracing::warn!(grace = ?grace, "in-flight work did not finish within the shutdown grace; cancelling it");
        ctx.abort.cancel();
        if tokio::time::timeout(ABORT_WAIT, ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("cancelled work did not end within {ABORT_WAIT:?}; abandoning it");
        }
    }
    // 3. A last window in which /metrics shows the final counts, then the exporter stops.
    if !linger.is_zero() {
        tracing::info!(window = ?linger, "in-flight work recorded; serving /metrics for the final scrape window");
        tokio::time::sleep(linger).await;
    }
}

/// The subsystems, their families registered and nothing started.
pub(crate) struct Subsystems {
    pub prober: crate::prober::Prober,
    pub scraper: crate::scrape::Scraper,
    pub gpu: crate::gpu::GpuSampler,
    pub tap: crate::tap::Tap,
    /// `vllm_sentinel_web_config_reload_failures_total`.
    pub web_reload_failures: prometheus_client::metrics::counter::Counter,
    /// The render cost of `/metrics` (`vllm_sentinel_exporter_render*`).
    pub render_cost: exporter::RenderCost,
}

/// Registers every family `/metrics` exports (the metrics contract test, src/contract.rs,
/// builds its registry with this too). `gpu_source` `None`: NVML.
pub(crate) fn register_subsystems(
    cfg: &Config,
    registry: &mut Registry,
    gpu_source: Option<Box<dyn crate::gpu::GpuSource>>,
) -> anyhow::Result<Subsystems> {
    let render_cost = exporter::register_common(registry);
    let web_reload_failures = exporter::web_config::register(registry);
    let prober = crate::prober::Prober::new(cfg, registry).context("setting up the prober")?;
    let scraper = crate::scrape::Scraper::new(cfg, registry).context("setting up the scraper")?;
    let gpu = match gpu_source {
        Some(src) => crate::gpu::GpuSampler::with_source(&cfg.gpu, src, registry),
        None => {
            crate::gpu::GpuSampler::new(&cfg.gpu, registry).context("setting up GPU sampling")?
        }
    };
    let tap = crate::tap::Tap::new(cfg, registry);
    Ok(Subsystems {
        prober,
        scraper,
        gpu,
        tap,
        web_reload_failures,
        render_cost,
    })
}

/// (label, url, configured model) of every target, for the landing page.
fn status_entries(cfg: &Config) -> Vec<(String, String, Option<String>)> {
    cfg.targets
        .iter()
        .map(|t| (t.label(), t.base_url(), t.model.clone()))
        .collect()
}

fn spawn_sighup(reload: ReloadFn, token: CancellationToken, tracker: &TaskTracker) {
    #[cfg(unix)]
    tracker.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() { return; }
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = reload();
                }
            }
        }
    });
}

/// `demo`: the simulator and the daemon together on loopback.
pub async fn demo(
    global: &GlobalArgs,
    args: DemoArgs,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let _ = global;
    let sim_listener = exporter::bind(args.sim_listen).await?;
    let sim_addr = sim_listener.local_addr()?;
    let listener = exporter::bind(args.listen).await?;
    let addr = listener.local_addr()?;

    let sim_cfg = crate::sim::SimConfig::default();
    let sim_token = token.child_token();
    let sim = tokio::spawn(crate::sim::serve(sim_listener, sim_cfg, sim_token.clone()));

    let mut cfg = Config::default();
    cfg.server.listen = addr;
    let mut target = TargetConfig::from_url(&format!("http://{sim_addr}"));
    target.name = Some("simulator".to_string());
    crate::config::prober::apply_load_args(&mut target, Some(args.concurrency), None);
    cfg.targets.push(target);
    cfg.gpu.enabled = !args.no_gpu;
    cfg.server.status_interval = args.status_interval;
    if let Some(a) = args.tap_listen {
        cfg.tap.listen = a;
        cfg.tap.enabled = true;
    }
    crate::config::validate(&cfg)?;
    let gpu_source: Option<Box<dyn crate::gpu::GpuSource>> = match args.fake_gpus {
        0 => None,
        n => Some(Box::new(crate::gpu::FakeSource::with_gpus(n).0)),
    };

    println!("vllm-sentinel demo");
    println!(
        "  simulator (OpenAI-compatible, vLLM metrics): http://{sim_addr}/v1/models  http://{sim_addr}/metrics"
    );
    println!("  vllm-sentinel live status page:              http://{addr}/");
    if args.fake_gpus > 0 {
        println!(
            "  GPUs: {} simulated H200s (--fake-gpus), constant values",
            args.fake_gpus
        );
    }
    println!("  vllm-sentinel metrics:                       http://{addr}/metrics");
    if let Some(a) = args.tap_listen {
        println!("  tap (send traffic here, it is measured):     http://{a}/v1/models");
    }
    println!("Press Ctrl-C to stop.");

    if let Some(d) = args.duration {
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    let result = serve_with_gpu(listener, cfg, token.clone(), None, gpu_source).await;
    sim_token.cancel();
    match sim.await {
        Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "simulator stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "simulator task failed"),
        Ok(Ok(())) => {}
    }
    result
}
