//! `[scrape]` and `[targets.scrape]`: the settings of the scrape loops, plain data with their
//! validation (the scraper in [`crate::scrape`] reads them; this module knows nothing of it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::TargetConfig;

/// `[scrape]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    /// Time between scrapes of each target (also `--scrape-interval`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Limit for one whole scrape (connect, headers, body); default: the interval, at most 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Largest body accepted (after gzip decoding).
    pub max_body_bytes: u64,
    /// Re-export every upstream family under its own name with a `target` label.
    pub passthrough: bool,
    /// At most this many pass-through sample lines per target.
    pub passthrough_max_series: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: None,
            max_body_bytes: 16 * 1024 * 1024,
            passthrough: false,
            passthrough_max_series: 10_000,
        }
    }
}

impl ScrapeConfig {
    /// The timeout in force.
    pub fn effective_timeout(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| self.interval.min(Duration::from_secs(10)))
    }
}

/// `[targets.scrape]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TargetScrapeConfig {
    /// Scrape this target's `/metrics` at all.
    pub enabled: bool,
    /// Full URL of the metrics endpoint; default `<url>/metrics`.
    pub metrics_url: Option<String>,
    /// Name of an environment variable holding the whole `Authorization` header value
    /// (e.g. `Bearer abc`). Never logged.
    pub auth_header_env: Option<String>,
    /// Where the server's version is read (JSON with `version`); default `<url>/version`.
    pub version_url: Option<String>,
}

impl Default for TargetScrapeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics_url: None,
            auth_header_env: None,
            version_url: None,
        }
    }
}

fn check_url(key: &str, url: &str, errors: &mut Vec<String>) {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        errors.push(format!(
            "{key}: {url:?} must start with http:// or https://"
        ));
    } else if reqwest::Url::parse(url).is_err() {
        errors.push(format!("{key}: {url:?} is not a valid URL"));
    } else if url.starts_with("https://") && !cfg!(feature = "tls") {
        errors.push(format!("{key}: https needs a build with the `tls` feature (on by default; this binary was built without it)"));
    }
}

/// Validates `targets[i].scrape`.
pub fn validate_target(key: &str, t: &TargetConfig, errors: &mut Vec<String>) {
    let s = &t.scrape;
    if let Some(u) = &s.metrics_url {
        check_url(&format!("{key}.scrape.metrics_url"), u, errors);
    }
    if let Some(u) = &s.version_url {
        check_url(&format!("{key}.scrape.version_url"), u, errors);
    }
    if let Some(var) = &s.auth_header_env {
        let k = format!("{key}.scrape.auth_header_env");
        if var.trim().is_empty() {
            errors.push(format!("{k}: must name an environment variable"));
        } else if s.enabled {
            match std::env::var(var) {
                Err(_) => errors.push(format!("{k}: environment variable {var} is not set")),
                Ok(v) if reqwest::header::HeaderValue::from_str(v.trim()).is_err() => errors.push(
                    format!("{k}: environment variable {var} does not hold a valid header value"),
                ),
                Ok(_) => {}
            }
        }
    }
}

/// Validates `[scrape]`.
pub fn validate(s: &ScrapeConfig, errors: &mut Vec<String>) {
    if s.interval < Duration::from_millis(100) {
        errors.push("scrape.interval: must be at least 100ms".into());
    }
    if s.interval > Duration::from_secs(3600) {
        errors.push("scrape.interval: must be at most 1h".into());
    }
    if let Some(t) = s.timeout {
        if t.is_zero() {
            errors.push("scrape.timeout: must be > 0".into());
        } else if t > s.interval {
            errors.push(format!(
                "scrape.timeout: {} is longer than scrape.interval {}",
                humantime::format_duration(t),
                humantime::format_duration(s.interval)
            ));
        }
    }
    if s.max_body_bytes < 1024 {
        errors.push("scrape.max_body_bytes: must be at least 1024".into());
    }
    if s.max_body_bytes > 1 << 30 {
        errors.push("scrape.max_body_bytes: must be at most 1 GiB".into());
    }
    if s.passthrough_max_series == 0 {
        errors.push("scrape.passthrough_max_series: must be > 0".into());
    }
}
