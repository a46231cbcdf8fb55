//! `[tap]`: the settings of the measuring reverse proxy, plain data with their validation (the
//! proxy in [`crate::tap`] reads them; this module knows nothing of it). docs/tap.md.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, TargetConfig};

/// The most threads `tap.threads` may ask for.
pub const MAX_TAP_THREADS: usize = 256;
/// The default address of the tap.
pub const DEFAULT_TAP_LISTEN: &str = "0.0.0.0:9472";
/// `[tap]`: the measuring reverse proxy (docs/config.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TapConfig {
    /// Run the tap (`--tap-listen` turns it on).
    pub enabled: bool,
    /// Address the tap listens on.
    pub listen: SocketAddr,
    /// Name (label) of the target to forward to; default: the first target.
    pub target: Option<String>,
    /// Upstream TCP connect timeout (504 past it).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Request sent to upstream response headers (504 past it). vLLM sends the headers of a
    /// non-streamed completion only when it is complete, so this bounds whole non-streamed
    /// requests too.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest silence between two upstream body reads; past it the response is cut.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client must send its request headers within this (else the connection is closed).
    #[serde(with = "humantime_serde")]
    pub client_header_timeout: Duration,
    /// Most bytes of a request body copied aside (as it streams upstream) to read the model, and
    /// of a non-streamed response body held to read `usage`.
    pub max_body_bytes: u64,
    /// How often the upstream's `/v1/models` is re-read (the `model` label's bound).
    #[serde(with = "humantime_serde")]
    pub models_refresh: Duration,
    /// Threads of the tap's own, each with a single-threaded event loop (as nginx's
    /// `worker_processes`).
    pub threads: usize,
}

impl Default for TapConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: DEFAULT_TAP_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9472))),
            target: None,
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            client_header_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            models_refresh: Duration::from_secs(60),
            threads: 1,
        }
    }
}

impl TapConfig {
    /// The target the tap forwards to (validated to exist when the tap is enabled).
    pub fn upstream<'a>(&self, cfg: &'a Config) -> Option<&'a TargetConfig> {
        match &self.target {
            Some(name) => cfg.targets.iter().find(|t| &t.label() == name),
            None => cfg.targets.first(),
        }
    }
}

/// Checks `[tap]`; errors name the key.
pub fn validate(cfg: &Config, errors: &mut Vec<String>) {
    let t = &cfg.tap;
    if !t.enabled {
        return;
    }
    match t.upstream(cfg) {
        None if cfg.targets.is_empty() => errors
            .push("tap: the tap needs a target to forward to (--target URL or [[targets]])".into()),
        None => errors.push(format!(
            "tap.target: no target named {:?}",
            t.target.as_deref().unwrap_or_default()
        )),
        Some(up) if !up.url.starts_with("http://") => errors.push(format!(
            "tap.target: the tap forwards to plain http:// upstreams only; target {} is {}",
            up.label(),
            up.url
        )),
        Some(_) => {}
    }
    // Port 0 asks the OS for a free port, different for each listener (tests use it for both).
    if t.listen == cfg.server.listen && t.listen.port() != 0 {
        errors.push(format!("tap.listen: {} is also server.listen", t.listen));
    }
    for (k, d) in [
        ("connect_timeout", t.connect_timeout),
        ("header_timeout", t.header_timeout),
        ("idle_timeout", t.idle_timeout),
        ("client_header_timeout", t.client_header_timeout),
        ("models_refresh", t.models_refresh),
    ] {
        if d.is_zero() {
            errors.push(format!("tap.{k}: must be more than 0"));
        }
    }
    if !(1024..=64 * 1024 * 1024).contains(&t.max_body_bytes) {
        errors.push("tap.max_body_bytes: must be 1024 to 67108864".into());
    }
    if !(1..=MAX_TAP_THREADS).contains(&t.threads) {
        errors.push(format!("tap.threads: must be 1 to {MAX_TAP_THREADS}"));
    }
}

/// A one-line summary for `check-config`.
pub fn describe(cfg: &Config) -> String {
    let t = &cfg.tap;
    if !t.enabled {
        return "tap: disabled".into();
    }
    format!(
        "tap: {} -> {} (connect {}, headers {}, idle {}, hold {} bytes, {} thread{})",
        t.listen,
        t.upstream(cfg)
            .map_or("(no target)".to_string(), |u| u.url.clone()),
        humantime::format_duration(t.connect_timeout),
        humantime::format_duration(t.header_timeout),
        humantime::format_duration(t.idle_timeout),
        t.max_body_bytes,
        t.threads,
        if t.threads == 1 { "" } else { "s" }
    )
}
