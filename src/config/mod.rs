//! The configuration tree, its layering and its validation.
//!
//! Layers, lowest first: built-in defaults < the TOML file (`--config`) < environment
//! variables < flags. clap merges the last two (a flag beats its `VLLM_SENTINEL_*` variable)
//! into plain-data [`Overrides`] (built by [`crate::cli`]); [`load`] lays them over the file.
//! Parsing is strict: an unknown key or a bad value is an error naming the key and the file, and
//! nothing starts.
//!
//! This module is a leaf: it names no subsystem and not the command line, so every subsystem can
//! depend on it (the blackbox_exporter model: probers depend on the config, the config on none of
//! them). Each section is plain data with its own validation, one submodule each:
//!
//! | submodule | section |
//! |---|---|
//! | [`target`] | `[[targets]]`: URL, model, endpoint, credentials |
//! | [`prober`] | `[prober]`, `[[targets.workloads]]`, `[targets.canary]` |
//! | [`scrape`] | `[scrape]`, `[targets.scrape]` |
//! | [`gpu`] | `[gpu]` |
//! | [`tap`] | `[tap]` |
//! | [`workload`] | a workload's source (`source`, `path`, … of `[[targets.workloads]]`; `--dataset`) |
//!
//! `[server]` is here. The subsystems re-export their section (`prober::ProberConfig`).

pub mod gpu;
pub mod prober;
pub mod scrape;
pub mod tap;
pub mod target;
pub mod workload;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use target::{Endpoint, Secret, TargetConfig, basic_authorization, redact_url};

/// The default address of the exporter (`/metrics`, `/healthz`, `/readyz`, `/`).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9471";

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The exporter's own HTTP server.
    pub server: ServerConfig,
    /// vLLM (or compatible) servers to probe and scrape.
    pub targets: Vec<TargetConfig>,
    /// Defaults for the synthetic prober.
    pub prober: prober::ProberConfig,
    /// Scraping of the targets' own `/metrics`.
    pub scrape: scrape::ScrapeConfig,
    /// NVML GPU sampling.
    pub gpu: gpu::GpuConfig,
    /// The measuring reverse proxy in front of a target (off by default).
    pub tap: tap::TapConfig,
    /// Where this config came from (not a key in the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the landing page.
    pub listen: SocketAddr,
    /// How long in-flight work may take to finish after SIGINT/SIGTERM; then it is cancelled
    /// (and counted as `cancelled`).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After in-flight work has finished or been cancelled and counted, how long `/metrics`
    /// keeps serving so a last scrape sees the final counts.
    #[serde(with = "humantime_serde")]
    pub shutdown_linger: Duration,
    /// Allow `POST /-/reload` (off by default: anyone who can reach the port could trigger it).
    /// SIGHUP works either way. Also `--web.enable-lifecycle`.
    pub enable_lifecycle: bool,
    /// From the first byte of a request to its complete head; a slower client is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no byte in either direction for this long
    /// is closed (an idle keep-alive connection, one that never sends, a client that stops
    /// reading its response).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections at most. A connection over the cap makes room by closing the
    /// longest-idle one; with every connection busy, new ones wait in the listen backlog.
    pub max_connections: u32,
    /// Resolution of the live status page's in-memory history (`/` and `/api/v1/status`): one
    /// sample of the daemon's own metrics this often, a fixed number of samples kept (`status::CAPACITY`).
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// TLS and HTTP Basic auth of the exporter: a YAML file in the format of Prometheus'
    /// exporter-toolkit (`--web.config.file`; docs/config.md). Reloaded with the configuration
    /// and whenever it changes.
    pub web_config_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9471))),
            shutdown_grace: Duration::from_secs(5),
            shutdown_linger: Duration::from_secs(5),
            enable_lifecycle: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            status_interval: Duration::from_secs(5),
            web_config_file: None,
        }
    }
}

/// What the command line (flags, and the environment variables clap merged under them) sets
/// over the file: plain data, so this module needs nothing from [`crate::cli`], which builds it.
/// `None` / `false`: not given, the file's value stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--target`: replaces the file's targets with this one (keeping the file's settings for a
    /// target of the same URL).
    pub target: Option<String>,
    /// `--listen`: `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--web.enable-lifecycle`: sets `server.enable_lifecycle`.
    pub enable_lifecycle: bool,
    /// `--web.config.file`: `server.web_config_file`.
    pub web_config_file: Option<PathBuf>,
    /// `--model`: every target's model.
    pub model: Option<String>,
    /// `--endpoint`: every target's endpoint.
    pub endpoint: Option<Endpoint>,
    /// `--concurrency`: every workload closed-loop with this many streams.
    pub concurrency: Option<u32>,
    /// `--rate`: every workload open-loop at this rate.
    pub rate: Option<f64>,
    /// `--api-key-env`: every target's API key variable (replacing any key file).
    pub api_key_env: Option<String>,
    /// `--api-key-file`: every target's API key file (replacing any key variable).
    pub api_key_file: Option<PathBuf>,
    /// `--scrape-interval`: `scrape.interval`.
    pub scrape_interval: Option<Duration>,
    /// `--no-gpu`: `gpu.enabled = false`.
    pub no_gpu: bool,
    /// `--nvml-library`: `gpu.nvml_library`.
    pub nvml_library: Option<PathBuf>,
    /// `--gpu-interval`: `gpu.interval`.
    pub gpu_interval: Option<Duration>,
    /// `--tap-listen`: `tap.listen` and `tap.enabled = true`.
    pub tap_listen: Option<SocketAddr>,
}

/// Reads `file` (if any), lays the command line's overrides over it, and validates.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    let mut cfg = match file {
        Some(path) => from_file(path)?,
        None => Config::default(),
    };
    apply_overrides(&mut cfg, overrides);
    validate(&cfg)?;
    Ok(cfg)
}

/// Parses a config file strictly.
pub fn from_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut cfg =
        from_toml(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Parses config text strictly (unknown keys are errors).
pub fn from_toml(text: &str) -> Result<Config, String> {
    toml::from_str::<Config>(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// Lays flags and environment (already merged by clap) over the file's values.
pub fn apply_overrides(cfg: &mut Config, o: &Overrides) {
    if let Some(url) = &o.target {
        let mut t = TargetConfig::from_url(url);
        // Keep the file's settings for a target of the same URL, if any.
        if let Some(existing) = cfg
            .targets
            .iter()
            .find(|t| t.url.trim_end_matches('/') == url.trim_end_matches('/'))
        {
            t = existing.clone();
        }
        cfg.targets = vec![t];
    }
    if let Some(listen) = o.listen {
        cfg.server.listen = listen;
    }
    if o.enable_lifecycle {
        cfg.server.enable_lifecycle = true;
    }
    if let Some(p) = &o.web_config_file {
        cfg.server.web_config_file = Some(p.clone());
    }
    for t in &mut cfg.targets {
        if let Some(m) = &o.model {
            t.model = Some(m.clone());
        }
        if let Some(e) = o.endpoint {
            t.endpoint = e;
        }
        if let Some(v) = &o.api_key_env {
            t.api_key_env = Some(v.clone());
            t.api_key_file = None;
        }
        if let Some(p) = &o.api_key_file {
            t.api_key_file = Some(p.clone());
            t.api_key_env = None;
        }
        prober::apply_load_args(t, o.concurrency, o.rate);
    }
    if let Some(i) = o.scrape_interval {
        cfg.scrape.interval = i;
    }
    if o.no_gpu {
        cfg.gpu.enabled = false;
    }
    if let Some(p) = &o.nvml_library {
        cfg.gpu.nvml_library = Some(p.clone());
    }
    if let Some(i) = o.gpu_interval {
        cfg.gpu.interval = i;
    }
    if let Some(a) = o.tap_listen {
        cfg.tap.listen = a;
        cfg.tap.enabled = true;
    }
}

/// Checks every rule that parsing alone cannot. Errors name the key (and the file).
pub fn validate(cfg: &Config) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, t) in cfg.targets.iter().enumerate() {
        let key = format!("targets[{i}]");
        let shown = redact_url(&t.url);
        if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
            errors.push(format!(
                "{key}.url: {shown:?} must start with http:// or https://"
            ));
        } else {
            match reqwest::Url::parse(&t.url) {
                Err(_) => errors.push(format!("{key}.url: {shown:?} is not a valid URL")),
                Ok(u) if u.query().is_some() || u.fragment().is_some() => errors.push(format!(
                    "{key}.url: {shown:?} has a query or fragment (`?`, `#`); give the base URL only, e.g. http://host:8000"
                )),
                Ok(_) => {}
            }
        }
        if t.url.starts_with("https://") && !cfg!(feature = "tls") {
            errors.push(format!(
                "{key}.url: https targets need a build with the `tls` feature (on by default; this binary was built without it)"
            ));
        }
        if !names.insert(t.label()) {
            errors.push(format!("{key}.name: duplicate target {:?}", t.label()));
        }
        if t.api_key_env.is_some() && t.api_key_file.is_some() {
            errors.push(format!("{key}: set api_key_env or api_key_file, not both"));
        } else if t.url_credentials().is_some()
            && (t.api_key_env.is_some() || t.api_key_file.is_some())
        {
            errors.push(format!(
                "{key}.url: credentials in the URL (sent as HTTP Basic auth) cannot be combined with api_key_env or api_key_file (sent as a Bearer token); use one of the two"
            ));
        } else if let Err(e) = t.api_key() {
            // Read at load (and at every reload) so a bad key stops check-config and start-up.
            errors.push(format!("{key}: {e:#}"));
        }
        prober::validate_target(&key, t, &cfg.prober, &mut errors);
        scrape::validate_target(&key, t, &mut errors);
    }
    prober::validate(&cfg.prober, &mut errors);
    scrape::validate(&cfg.scrape, &mut errors);
    gpu::validate(&cfg.gpu, &mut errors);
    tap::validate(cfg, &mut errors);
    if cfg.server.shutdown_grace > Duration::from_secs(300) {
        errors.push("server.shutdown_grace: at most 300s".to_string());
    }
    if cfg.server.shutdown_linger > Duration::from_secs(300) {
        errors.push("server.shutdown_linger: at most 300s".to_string());
    }
    for (key, d) in [
        ("header_read_timeout", cfg.server.header_read_timeout),
        ("idle_timeout", cfg.server.idle_timeout),
    ] {
        if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
            errors.push(format!("server.{key}: between 10ms and 1h"));
        }
    }
    if cfg.server.status_interval < Duration::from_millis(100)
        || cfg.server.status_interval > Duration::from_secs(60)
    {
        errors.push("server.status_interval: between 100ms and 60s".to_string());
    }
    if !(1..=1_000_000).contains(&cfg.server.max_connections) {
        errors.push("server.max_connections: between 1 and 1000000".to_string());
    }
    if errors.is_empty() {
        return Ok(());
    }
    let origin = match &cfg.source {
        Some(p) => format!(
            "invalid configuration (file {}, with flags and environment applied)",
            p.display()
        ),
        None => "invalid configuration (flags and environment)".to_string(),
    };
    bail!("{origin}:\n  {}", errors.join("\n  "))
}

/// A human summary of the effective configuration (for `check-config`). Never prints secrets.
pub fn describe(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "configuration OK");
    if let Some(p) = &cfg.source {
        let _ = writeln!(out, "file: {}", p.display());
    }
    let _ = writeln!(out, "listen: {}", cfg.server.listen);
    let _ = writeln!(
        out,
        "POST /-/reload: {}",
        if cfg.server.enable_lifecycle {
            "enabled"
        } else {
            "disabled (SIGHUP only; enable with --web.enable-lifecycle)"
        }
    );
    if cfg.targets.is_empty() {
        let _ = writeln!(out, "targets: none (only GPU sampling will run)");
    }
    for t in &cfg.targets {
        let key = match (&t.api_key_env, &t.api_key_file) {
            (Some(v), _) => format!("from env {v}"),
            (_, Some(p)) => format!("from file {}", p.display()),
            _ => "none".to_string(),
        };
        let key = match (key.as_str(), t.url_credentials()) {
            ("none", Some(_)) => "HTTP Basic from the URL's user:password".to_string(),
            _ => key,
        };
        let _ = writeln!(
            out,
            "target {}: url={} model={} endpoint={} api_key={key} workloads={}",
            t.label(),
            t.base_url(),
            t.model.as_deref().unwrap_or("(discover)"),
            t.endpoint.as_str(),
            prober::describe_workloads(t),
        );
    }
    let _ = writeln!(
        out,
        "scrape: every {}",
        humantime::format_duration(cfg.scrape.interval)
    );
    let _ = writeln!(
        out,
        "gpu: {}",
        if cfg.gpu.enabled {
            format!("every {}", humantime::format_duration(cfg.gpu.interval))
        } else {
            "disabled".into()
        }
    );
    let _ = writeln!(out, "{}", tap::describe(cfg));
    out
}
