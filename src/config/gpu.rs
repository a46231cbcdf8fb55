//! `[gpu]`: the settings of NVML sampling, plain data with their validation (the sampler in
//! [`crate::gpu`] reads them; this module knows nothing of it).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
