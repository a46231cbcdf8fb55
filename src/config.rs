//! The configuration tree, its layering and its validation.
//!
//! Layers, lowest first: built-in defaults < the TOML file (`--config`) < environment
//! variables < flags. clap merges the last two (a flag beats its `VLLM_SENTINEL_*` variable);
//! [`load`] lays the result over the file. Parsing is strict: an unknown key or a bad value is an
//! error naming the key and the file, and nothing starts.
//!
//! Each subsystem owns the struct of its own section ([`crate::prober::ProberConfig`],
//! [`crate::scrape::ScrapeConfig`], [`crate::gpu::GpuConfig`], [`crate::tap::TapConfig`]); this module assembles them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cli::{GlobalArgs, ServeArgs};

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The exporter's own HTTP server.
    pub server: ServerConfig,
    /// vLLM (or compatible) servers to probe and scrape.
    pub targets: Vec<TargetConfig>,
    /// Defaults for the synthetic prober.
    pub prober: crate::prober::ProberConfig,
    /// Scraping of the targets' own `/metrics`.
    pub scrape: crate::scrape::ScrapeConfig,
    /// NVML GPU sampling.
    pub gpu: crate::gpu::GpuConfig,
    /// The measuring reverse proxy in front of a target (off by default).
    pub tap: crate::tap::TapConfig,
    /// Where this config came from (not a key in the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the landing page.
    pub listen: SocketAddr,
    /// How long in-flight work may take to finish after SIGINT/SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: crate::cli::DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9471))),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// OpenAI-compatible endpoint used by probes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/v1/completions` (token-id prompts: exact prompt lengths).
    #[default]
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat",
        }
    }
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// One server to watch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Label value for `target`; default: the URL's `host:port`.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// Model to request; default: the first of `/v1/models`.
    #[serde(default)]
    pub model: Option<String>,
    /// Name of an environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Endpoint for this target's workloads unless a workload says otherwise.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// The synthetic workloads; default: one closed-loop stream of short prompts.
    #[serde(default)]
    pub workloads: Vec<crate::prober::WorkloadConfig>,
    /// The context-length canary.
    #[serde(default)]
    pub canary: crate::prober::CanaryConfig,
    /// Per-target scrape settings.
    #[serde(default)]
    pub scrape: crate::scrape::TargetScrapeConfig,
}

impl TargetConfig {
    /// A target with defaults, for `--target URL`.
    pub fn from_url(url: &str) -> Self {
        Self {
            name: None,
            url: url.trim_end_matches('/').to_string(),
            model: None,
            api_key_env: None,
            api_key_file: None,
            endpoint: Endpoint::default(),
            workloads: Vec::new(),
            canary: Default::default(),
            scrape: Default::default(),
        }
    }

    /// The `target` label value.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    /// Reads the API key from the environment variable or file, if one is configured.
    /// The key is never logged; errors name the variable or path only.
    pub fn api_key(&self) -> anyhow::Result<Option<String>> {
        if let Some(var) = &self.api_key_env {
            let v = std::env::var(var).with_context(|| {
                format!(
                    "target {}: api_key_env: environment variable {var} is not set",
                    self.label()
                )
            })?;
            return Ok(Some(v.trim().to_string()));
        }
        if let Some(path) = &self.api_key_file {
            let v = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "target {}: api_key_file: cannot read {}",
                    self.label(),
                    path.display()
                )
            })?;
            return Ok(Some(v.trim().to_string()));
        }
        Ok(None)
    }
}

/// Reads the file named by `--config` (if any), lays environment and flags over it, and validates.
pub fn load(_global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => from_file(path)?,
        None => Config::default(),
    };
    apply_args(&mut cfg, args);
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
pub fn apply_args(cfg: &mut Config, args: &ServeArgs) {
    if let Some(url) = &args.target {
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
    if let Some(listen) = args.listen {
        cfg.server.listen = listen;
    }
    for t in &mut cfg.targets {
        if let Some(m) = &args.model {
            t.model = Some(m.clone());
        }
        if let Some(e) = args.endpoint {
            t.endpoint = e;
        }
        if let Some(v) = &args.api_key_env {
            t.api_key_env = Some(v.clone());
            t.api_key_file = None;
        }
        if let Some(p) = &args.api_key_file {
            t.api_key_file = Some(p.clone());
            t.api_key_env = None;
        }
        crate::prober::apply_load_args(t, args.concurrency, args.rate);
    }
    if let Some(i) = args.scrape_interval {
        cfg.scrape.interval = i;
    }
    if args.no_gpu {
        cfg.gpu.enabled = false;
    }
    if let Some(p) = &args.nvml_library {
        cfg.gpu.nvml_library = Some(p.clone());
    }
    if let Some(i) = args.gpu_interval {
        cfg.gpu.interval = i;
    }
    if let Some(a) = args.tap_listen {
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
        if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
            errors.push(format!(
                "{key}.url: {:?} must start with http:// or https://",
                t.url
            ));
        } else if reqwest::Url::parse(&t.url).is_err() {
            errors.push(format!("{key}.url: {:?} is not a valid URL", t.url));
        }
        if t.url.starts_with("https://") && !cfg!(feature = "tls") {
            errors.push(format!(
                "{key}.url: https targets need a build with the `tls` feature"
            ));
        }
        if !names.insert(t.label()) {
            errors.push(format!("{key}.name: duplicate target {:?}", t.label()));
        }
        if t.api_key_env.is_some() && t.api_key_file.is_some() {
            errors.push(format!("{key}: set api_key_env or api_key_file, not both"));
        }
        crate::prober::validate_target(&key, t, &cfg.prober, &mut errors);
        crate::scrape::validate_target(&key, t, &mut errors);
    }
    crate::prober::validate(&cfg.prober, &mut errors);
    crate::scrape::validate(&cfg.scrape, &mut errors);
    crate::gpu::validate(&cfg.gpu, &mut errors);
    crate::tap::validate(cfg, &mut errors);
    if cfg.server.shutdown_grace > Duration::from_secs(300) {
        errors.push("server.shutdown_grace: at most 300s".to_string());
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
    if cfg.targets.is_empty() {
        let _ = writeln!(out, "targets: none (only GPU sampling will run)");
    }
    for t in &cfg.targets {
        let key = match (&t.api_key_env, &t.api_key_file) {
            (Some(v), _) => format!("from env {v}"),
            (_, Some(p)) => format!("from file {}", p.display()),
            _ => "none".to_string(),
        };
        let _ = writeln!(
            out,
            "target {}: url={} model={} endpoint={} api_key={key} workloads={}",
            t.label(),
            t.url,
            t.model.as_deref().unwrap_or("(discover)"),
            t.endpoint.as_str(),
            crate::prober::describe_workloads(t),
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
    let _ = writeln!(out, "{}", crate::tap::describe(cfg));
    out
}
