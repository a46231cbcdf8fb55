//! NVML GPU sampling. (Skeleton: the GPU issue fills this in.)

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[gpu]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub nvml_library: Option<PathBuf>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            nvml_library: None,
        }
    }
}

pub fn validate(_g: &GpuConfig, _errors: &mut Vec<String>) {}

/// The GPU sampler's registered families, before its thread starts.
#[derive(Debug)]
pub struct GpuSampler {}

impl GpuSampler {
    pub fn new(
        _cfg: &GpuConfig,
        _registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        Ok(Self {})
    }
    pub fn spawn(self, _ctx: &crate::daemon::RunContext) {}
}
