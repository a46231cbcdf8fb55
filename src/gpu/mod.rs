//! NVML GPU sampling: memory residency, utilization, power, energy, clocks, clock-event reasons,
//! PCIe, ECC, remapped rows, Xid errors and per-process memory, for every GPU.
//!
//! | submodule | concern |
//! |---|---|
//! | [`source`] | the [`GpuSource`] / [`GpuSession`] / [`GpuDevice`] traits and their plain data |
//! | [`nvml`] | the real source, NVML through `nvml-wrapper` |
//! | [`fake`] | a scripted source for tests and benchmarks |
//! | [`sampler`] | the worker and ticker threads, deadlines, backoff, unsupported-field memory |
//! | [`snapshot`] | the per-tick record and the cell `/metrics` reads it from |
//! | [`collector`] | Prometheus encoding of the latest snapshot |
//!
//! The async runtime never calls NVML: sampling runs on two OS threads and `/metrics` only
//! clones an `Arc` of the last complete snapshot.

pub mod collector;
pub mod fake;
pub mod nvml;
pub mod sampler;
pub mod snapshot;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use crate::config::gpu::GpuConfig;
pub use fake::{FakeControl, FakeSource};
pub use nvml::NvmlSource;
pub use sampler::{SampleOptions, SamplerThreads, Timing};
pub use snapshot::{GpuSnapshot, SnapshotCell};
pub use source::{GpuDevice, GpuSession, GpuSource};

/// The sampler's settings from `[gpu]`.
impl GpuConfig {
    fn options(&self) -> SampleOptions {
        SampleOptions {
            pcie_throughput: self.pcie_throughput,
            processes: self.processes,
            xid_events: self.xid_events,
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            interval: self.interval,
            sample_timeout: self.effective_sample_timeout(),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The GPU sampler's registered families, before its threads start.
pub struct GpuSampler {
    enabled: bool,
    source: Option<Box<dyn GpuSource>>,
    opts: SampleOptions,
    timing: Timing,
    cell: Arc<SnapshotCell>,
}

impl std::fmt::Debug for GpuSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSampler")
            .field("enabled", &self.enabled)
            .field("opts", &self.opts)
            .field("timing", &self.timing)
            .finish()
    }
}

impl GpuSampler {
    /// Registers the GPU families backed by NVML (nothing when `enabled` is false). Never fails
    /// for a missing driver: that is found, and reported once, when the threads start.
    pub fn new(
        cfg: &GpuConfig,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        Ok(Self::with_source(
            cfg,
            Box::new(NvmlSource::new(cfg.nvml_library.clone())),
            registry,
        ))
    }

    /// Like [`GpuSampler::new`] with any source (tests use [`FakeSource`]).
    pub fn with_source(
        cfg: &GpuConfig,
        source: Box<dyn GpuSource>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let cell = Arc::new(SnapshotCell::default());
        if cfg.enabled {
            registry.register_collector(Box::new(collector::GpuCollector::new(cell.clone())));
        }
        Self {
            enabled: cfg.enabled,
            source: Some(source),
            opts: cfg.options(),
            timing: cfg.timing(),
            cell,
        }
    }

    /// Overrides the retry backoff cap (default 60 s); tests shorten it.
    pub fn with_max_backoff(mut self, d: Duration) -> Self {
        self.timing.max_backoff = d;
        self
    }

    /// The cell the collector reads; tests wait on it.
    pub fn snapshots(&self) -> Arc<SnapshotCell> {
        self.cell.clone()
    }

    /// Starts the sampling threads outside a daemon (tests, benchmarks). `None` when disabled.
    pub fn start(
        mut self,
        ready: Option<crate::runtime::ReadySlot>,
    ) -> anyhow::Result<Option<SamplerThreads>> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(source) = self.source.take() else {
            return Ok(None);
        };
        let t = SamplerThreads::start(source, self.opts, self.timing, self.cell, ready)
            .context("starting the GPU sampler threads")?;
        Ok(Some(t))
    }

    /// Starts sampling under the daemon: registers readiness `gpu` (ready after the first
    /// attempt, also when NVML is absent) and stops the threads on `ctx.token` cancellation.
    pub fn spawn(self, ctx: &crate::runtime::RunContext) {
        if !self.enabled {
            return;
        }
        let ready = ctx.readiness.register("gpu");
        let threads = match self.start(Some(ready.clone())) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "GPU sampling could not start; continuing without it");
                ready.mark_ready();
                return;
            }
        };
        let token = ctx.token.clone();
        ctx.tracker.spawn(async move {
            token.cancelled().await;
            let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
        });
    }
}
