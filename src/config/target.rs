//! `[[targets]]`: one server to watch, its endpoint and its credentials (read, checked, and kept
//! out of `Debug` and logs), and URL redaction for everything shown.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

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
    pub workloads: Vec<super::prober::WorkloadConfig>,
    /// The context-length canary.
    #[serde(default)]
    pub canary: super::prober::CanaryConfig,
    /// Per-target scrape settings.
    #[serde(default)]
    pub scrape: super::scrape::TargetScrapeConfig,
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
