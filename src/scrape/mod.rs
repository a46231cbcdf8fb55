//! Scraping the server's own `/metrics`. (Skeleton: the scrape issue fills this in.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::TargetConfig;

/// `[scrape]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
        }
    }
}

/// `[targets.scrape]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TargetScrapeConfig {}

pub fn validate_target(_key: &str, _t: &TargetConfig, _errors: &mut Vec<String>) {}
pub fn validate(_s: &ScrapeConfig, _errors: &mut Vec<String>) {}

/// The scraper's registered families and configuration, before its tasks start.
#[derive(Debug)]
pub struct Scraper {}

impl Scraper {
    pub fn new(
        _cfg: &crate::config::Config,
        _registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        Ok(Self {})
    }
    pub fn spawn(self, _ctx: &crate::daemon::RunContext) {}
}
