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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use fake::{FakeControl, FakeSource};
pub use nvml::NvmlSource;
pub use sampler::{SampleOptions, SamplerThreads, Timing};
pub use snapshot::{GpuSnapshot, SnapshotCell};
pub use source::{GpuDevice, GpuSession, GpuSource};

/// `[gpu]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Sample GPUs at all.
    pub enabled: bool,
    /// Time between samples (≥ 100ms).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Path to `libnvidia-ml.so.1` when it is not on the loader path.
    pub nvml_library: Option<PathBuf>,
    /// Deadline for one sample of all GPUs; past it the GPU is marked down (< interval).
    /// Unset: half the interval, at most 500ms.
    #[serde(with = "humantime_serde::option")]
    pub sample_timeout: Option<Duration>,
    /// Also sample PCIe TX/RX throughput (NVML spends about 20 ms per direction per GPU).
    pub pcie_throughput: bool,
    /// Export per-process GPU memory.
    pub processes: bool,
    /// Count Xid errors from NVML events.
    pub xid_events: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            nvml_library: None,
            sample_timeout: None,
            pcie_throughput: false,
            processes: true,
            xid_events: true,
        }
    }
}

impl GpuConfig {
    /// The deadline in force: `sample_timeout`, or half the interval capped at 500ms.
    pub fn effective_sample_timeout(&self) -> Duration {
        self.sample_timeout
            .unwrap_or_else(|| (self.interval / 2).min(Duration::from_millis(500)))
    }

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

/// Pushes `"gpu.<key>: ..."` messages for every rule parsing cannot check.
pub fn validate(g: &GpuConfig, errors: &mut Vec<String>) {
    if g.interval < Duration::from_millis(100) {
        errors.push(format!(
            "gpu.interval: must be at least 100ms (got {}); NVML queries take milliseconds",
            humantime::format_duration(g.interval)
        ));
    }
    if g.interval > Duration::from_secs(3600) {
        errors.push("gpu.interval: at most 1h".to_string());
    }
    let timeout = g.effective_sample_timeout();
    let source = if g.sample_timeout.is_some() {
        ""
    } else {
        " (unset: half of gpu.interval, at most 500ms)"
    };
    if timeout < Duration::from_millis(10) {
        errors.push(format!(
            "gpu.sample_timeout: must be at least 10ms (got {}{source})",
            humantime::format_duration(timeout)
        ));
    }
    if timeout >= g.interval {
        errors.push(format!(
            "gpu.sample_timeout: must be shorter than gpu.interval ({} >= {})",
            humantime::format_duration(timeout),
            humantime::format_duration(g.interval)
        ));
    }
    if g.pcie_throughput && timeout < Duration::from_millis(100) {
        errors.push(format!(
            "gpu.sample_timeout: must be at least 100ms with gpu.pcie_throughput, which takes about 40 ms per GPU (got {}{source})",
            humantime::format_duration(timeout)
        ));
    }
    if let Some(p) = &g.nvml_library
        && p.as_os_str().is_empty()
    {
        errors.push("gpu.nvml_library: must not be empty".to_string());
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
        ready: Option<crate::exporter::readiness::ReadySlot>,
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
    pub fn spawn(self, ctx: &crate::daemon::RunContext) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(g: &GpuConfig) -> Vec<String> {
        let mut e = Vec::new();
        validate(g, &mut e);
        e
    }

    #[test]
    fn defaults_are_valid() {
        assert!(errs(&GpuConfig::default()).is_empty());
    }

    #[test]
    fn unset_timeout_follows_the_interval() {
        let mut g = GpuConfig::default();
        assert_eq!(g.effective_sample_timeout(), Duration::from_millis(500));
        g.interval = Duration::from_millis(200);
        assert_eq!(g.effective_sample_timeout(), Duration::from_millis(100));
        assert!(errs(&g).is_empty(), "{:?}", errs(&g));
        g.interval = Duration::from_secs(10);
        assert_eq!(g.effective_sample_timeout(), Duration::from_millis(500));
        g.interval = Duration::from_millis(150);
        g.pcie_throughput = true;
        let e = errs(&g);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("gpu.sample_timeout: must be at least 100ms with gpu.pcie_throughput")
        );
        assert!(e[0].contains("unset: half of gpu.interval"), "{e:?}");
    }

    #[test]
    fn toml_round_trip() {
        let g: GpuConfig =
            toml::from_str("sample_timeout = \"250ms\"\ninterval = \"2s\"\n").unwrap();
        assert_eq!(g.sample_timeout, Some(Duration::from_millis(250)));
        assert_eq!(g.interval, Duration::from_secs(2));
        assert!(
            toml::from_str::<GpuConfig>("fan = true\n").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn validation_messages_name_the_key() {
        let g = GpuConfig {
            interval: Duration::from_millis(50),
            ..GpuConfig::default()
        };
        // The unset timeout follows the interval, so only the interval is wrong.
        assert_eq!(
            errs(&g),
            vec![
                "gpu.interval: must be at least 100ms (got 50ms); NVML queries take milliseconds"
                    .to_string()
            ]
        );
        let g = GpuConfig {
            interval: Duration::from_millis(50),
            sample_timeout: Some(Duration::from_millis(5)),
            ..GpuConfig::default()
        };
        let e = errs(&g);
        assert!(e.iter().any(|m| m.starts_with("gpu.interval:")), "{e:?}");
        assert!(
            e.iter()
                .any(|m| m == "gpu.sample_timeout: must be at least 10ms (got 5ms)"),
            "{e:?}"
        );

        let g = GpuConfig {
            sample_timeout: Some(Duration::from_secs(1)),
            ..GpuConfig::default()
        };
        assert_eq!(
            errs(&g),
            vec!["gpu.sample_timeout: must be shorter than gpu.interval (1s >= 1s)".to_string()]
        );

        let g = GpuConfig {
            pcie_throughput: true,
            sample_timeout: Some(Duration::from_millis(50)),
            ..GpuConfig::default()
        };
        assert!(errs(&g).iter().any(|m| m.contains("pcie_throughput")));

        let g = GpuConfig {
            nvml_library: Some(PathBuf::new()),
            ..GpuConfig::default()
        };
        assert_eq!(
            errs(&g),
            vec!["gpu.nvml_library: must not be empty".to_string()]
        );
    }
}
