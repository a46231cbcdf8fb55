//! The continuous prober: synthetic streaming traffic and its measurement.
//!
//! Submodules: [`request`] (the single-request engine, shared with the one-shot experiments),
//! [`sse`] (the incremental SSE splitter), [`event`] (borrowed extraction from event JSON),
//! [`discovery`] (`/v1/models`, `/tokenize`), [`prompt`] (prompt construction).

pub mod discovery;
pub mod event;
pub mod prompt;
pub mod request;
pub mod sse;

use serde::{Deserialize, Serialize};

use crate::config::TargetConfig;

/// `[prober]`: defaults for every target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProberConfig {}

/// `[[targets.workloads]]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    pub name: Option<String>,
    pub concurrency: Option<u32>,
    pub rate: Option<f64>,
}

/// `[targets.canary]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {}

/// Applies `--concurrency` / `--rate` to a target's workloads.
pub fn apply_load_args(t: &mut TargetConfig, concurrency: Option<u32>, rate: Option<f64>) {
    if concurrency.is_none() && rate.is_none() {
        return;
    }
    if t.workloads.is_empty() {
        t.workloads.push(WorkloadConfig::default());
    }
    for w in &mut t.workloads {
        if let Some(c) = concurrency {
            w.concurrency = Some(c);
            w.rate = None;
        }
        if let Some(r) = rate {
            w.rate = Some(r);
            w.concurrency = None;
        }
    }
}

pub fn validate_target(
    _key: &str,
    _t: &TargetConfig,
    _p: &ProberConfig,
    _errors: &mut Vec<String>,
) {
}
pub fn validate(_p: &ProberConfig, _errors: &mut Vec<String>) {}
pub fn describe_workloads(t: &TargetConfig) -> String {
    format!("{}", t.workloads.len().max(1))
}

/// The prober's registered families and configuration, before its tasks start.
#[derive(Debug)]
pub struct Prober {}

impl Prober {
    pub fn new(
        _cfg: &crate::config::Config,
        _registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        Ok(Self {})
    }
    pub fn spawn(self, _ctx: &crate::daemon::RunContext) {}
}
