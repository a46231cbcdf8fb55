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
    /// sample of the daemon's own metrics this often, [`crate::status::CAPACITY`] samples kept.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: crate::cli::DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9471))),
            shutdown_grace: Duration::from_secs(5),
            shutdown_linger: Duration::from_secs(5),
            enable_lifecycle: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            status_interval: Duration::from_secs(5),
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

    /// The `target` label value: the name, else the URL's `host:port` (never its credentials).
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let url = redact_url(&self.url);
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    /// The base URL requests go to: without `user:password@` and without a trailing slash. Safe
    /// to show (landing page, `check-config`, logs).
    pub fn base_url(&self) -> String {
        redact_url(&self.url).trim_end_matches('/').to_string()
    }

    /// `user:password` given in the URL (percent-decoded), sent as HTTP Basic auth.
    pub fn url_credentials(&self) -> Option<(String, String)> {
        let u = reqwest::Url::parse(&self.url).ok()?;
        if u.username().is_empty() && u.password().is_none() {
            return None;
        }
        Some((
            percent_decode(u.username()),
            percent_decode(u.password().unwrap_or("")),
        ))
    }

    /// The `Authorization` header value of every request to this target (probes, discovery,
    /// `/tokenize`): `Bearer <key>` from `api_key_env`/`api_key_file`, or `Basic …` from
    /// credentials in the URL (validation refuses both at once). Never logged.
    pub fn authorization(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(key) = self.api_key()? {
            return Ok(Some(Secret(format!("Bearer {key}"))));
        }
        Ok(self
            .url_credentials()
            .map(|(user, pass)| Secret(basic_authorization(&user, &pass))))
    }

    /// Reads the API key from the environment variable or file, if one is configured, and
    /// checks it: one line of visible characters (a CR or LF would split the HTTP header it is
    /// sent in). The key is never logged; errors name the variable or path only.
    pub fn api_key(&self) -> anyhow::Result<Option<String>> {
        if let Some(var) = &self.api_key_env {
            let v = std::env::var(var).with_context(|| {
                format!(
                    "target {}: api_key_env: environment variable {var} is not set",
                    self.label()
                )
            })?;
            let key = v.trim().to_string();
            check_api_key(&key).map_err(|why| {
                anyhow::anyhow!(
                    "target {}: api_key_env: environment variable {var} {why}",
                    self.label()
                )
            })?;
            return Ok(Some(key));
        }
        if let Some(path) = &self.api_key_file {
            let v = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "target {}: api_key_file: cannot read {}",
                    self.label(),
                    path.display()
                )
            })?;
            let key = v.trim().to_string();
            check_api_key(&key).map_err(|why| {
                anyhow::anyhow!(
                    "target {}: api_key_file: file {} {why}",
                    self.label(),
                    path.display()
                )
            })?;
            return Ok(Some(key));
        }
        Ok(None)
    }
}

/// A credential (an `Authorization` header value): `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a header value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value, for the one place that writes the header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Basic base64(user:password)` (RFC 7617).
pub fn basic_authorization(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(6 + bytes.len().div_ceil(3) * 4);
    out.push_str("Basic ");
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks an API key read from the environment or a file (after trimming surrounding
/// whitespace): not empty, and only visible ASCII (no CR, LF or other control character, which
/// would end or split the `Authorization` header). The reason never quotes the key.
fn check_api_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("holds an empty API key");
    }
    if key.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err("holds a line break (CR or LF) inside the API key; the key must be one line");
    }
    if key.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(
            "holds a control character, a space or a non-ASCII byte inside the API key; the key must be printable ASCII",
        );
    }
    Ok(())
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
    if args.enable_lifecycle {
        cfg.server.enable_lifecycle = true;
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

/// `url` with any `user:password@` removed, for labels, logs, pages and messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let s = u.to_string();
            if url.ends_with('/') {
                s
            } else {
                s.trim_end_matches('/').to_string()
            }
        }
        Ok(_) => url.to_string(),
        // Not a URL: drop everything up to the last '@' before the first '/' after the scheme.
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find('/').unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                    None => url.to_string(),
                }
            }
            None => url.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_authorization_is_rfc7617_base64() {
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_authorization("a", ""), "Basic YTo=");
        assert_eq!(basic_authorization("ab", "c"), "Basic YWI6Yw==");
        assert_eq!(basic_authorization("ab", "cd"), "Basic YWI6Y2Q=");
    }

    #[test]
    fn url_credentials_are_decoded_and_redacted() {
        let t = TargetConfig::from_url("http://us%40er:p%3Ass@127.0.0.1:8000/");
        assert_eq!(t.url_credentials(), Some(("us@er".into(), "p:ss".into())));
        assert_eq!(t.base_url(), "http://127.0.0.1:8000");
        assert_eq!(t.label(), "127.0.0.1:8000");
        assert_eq!(redact_url("http://a:b@h:1/x"), "http://h:1/x");
        assert_eq!(redact_url("http://a:b@h:1"), "http://h:1");
        assert_eq!(redact_url("http://a:b@[bad"), "http://[bad");
        assert_eq!(redact_url("http://h:1/"), "http://h:1/");
        assert_eq!(TargetConfig::from_url("http://h:1").url_credentials(), None);
        assert!(!format!("{:?}", Secret::new("Bearer x")).contains('x'));
    }
}
