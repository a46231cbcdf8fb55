//! `--web.config.file`: TLS and HTTP Basic auth for the exporter, in the YAML format of
//! Prometheus' exporter-toolkit (node_exporter's `--web.config.file`):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   alice: $2y$10$...   # bcrypt
//! ```
//!
//! Relative paths resolve against the web config file's directory. Unknown keys are errors; keys
//! of exporter-toolkit that this server cannot honour (`cipher_suites`, `curve_preferences`,
//! `client_allowed_sans`, `http_server_config.headers`, TLS 1.0/1.1) are errors naming the key.
//! As in exporter-toolkit, authentication covers every path (`/healthz` too).
//!
//! The file (and the certificates it names) is re-read on SIGHUP / `POST /-/reload` and when
//! its content changes ([`spawn_watcher`] polls every [`POLL`]); a file that does not load leaves
//! the running one in place, is logged, and counts
//! `vllm_sentinel_web_config_reload_failures_total`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Deserialize;

/// How often [`spawn_watcher`] looks at the file and its certificates.
pub const POLL: Duration = Duration::from_secs(2);
/// Distinct (user, password) results kept by [`BasicAuth`]; the cache is emptied when full.
pub const AUTH_CACHE: usize = 256;

// ---------------------------------------------------------------------------------------------
// The file format.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted and ignored: the exporter serves HTTP/1.1 (clients fall back to it).
    http2: Option<bool>,
    headers: Option<serde_norway::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            "RequireAnyClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            other => bail!(
                "tls_server_config.client_auth_type: {other:?} is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ),
        })
    }
    fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The loaded state.

/// A loaded web config: what the accept loop and the auth check use.
#[derive(Default)]
pub struct WebConfig {
    /// The file it came from (`None`: no web config, plain HTTP without auth).
    pub path: Option<PathBuf>,
    /// TLS, when `tls_server_config` is set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic auth, when `basic_auth_users` is set.
    pub auth: Option<Arc<BasicAuth>>,
    /// A hash of the file and of every file it names, to see changes.
    fingerprint: u64,
    /// A line per setting, without secrets (check-config, logs).
    summary: Vec<String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl WebConfig {
    /// No web config: plain HTTP, no authentication.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loads `path` (`None`: [`WebConfig::none`]): parses the YAML, loads the certificates and
    /// keys, parses the bcrypt hashes. Errors name the file and the key.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::none());
        };
        load_file(path).with_context(|| format!("web config file {}", path.display()))
    }

    /// What `check-config` prints (no secrets).
    pub fn describe(&self) -> String {
        match &self.path {
            None => "web config: none (plain HTTP, no authentication)".to_string(),
            Some(p) => format!(
                "web config: {}\n  {}",
                p.display(),
                self.summary.join("\n  ")
            ),
        }
    }
}

fn load_file(path: &Path) -> anyhow::Result<WebConfig> {
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let file: FileFormat = if text.trim().is_empty() {
        FileFormat::default()
    } else {
        serde_norway::from_str::<Option<FileFormat>>(&text)
            .map_err(|e| anyhow!("{e}"))?
            .unwrap_or_default()
    };
    let mut files = Files {
        dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
        named: Vec::new(),
    };
    let mut summary = Vec::new();

    if let Some(http) = &file.http_server_config {
        if http.headers.is_some() {
            bail!("http_server_config.headers: not supported by vllm-sentinel");
        }
        if http.http2 == Some(true) {
            summary.push("http_server_config.http2: ignored (HTTP/1.1 only)".to_string());
        }
    }
    let tls = match &file.tls_server_config {
        None => {
            summary.push("tls: off (plain HTTP)".to_string());
            None
        }
        Some(t) => Some(tls_config(t, &mut files, &mut summary)?),
    };
    let auth = basic_auth(file.basic_auth_users, &mut summary)?;
    Ok(WebConfig {
        path: Some(path.to_path_buf()),
        tls,
        auth,
        fingerprint: fingerprint(path, &files.named),
        summary,
    })
}

/// Paths named in the web config file: resolved against its directory, and remembered so a
/// change to any of them (a rotated certificate) triggers a reload.
struct Files {
    dir: PathBuf,
    named: Vec<PathBuf>,
}

impl Files {
    fn resolve(&mut self, p: &str) -> PathBuf {
        let p = Path::new(p);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        };
        self.named.push(full.clone());
        full
    }
}

/// `tls_server_config` → a rustls server configuration.
fn tls_config(
    t: &TlsFile,
    files: &mut Files,
    summary: &mut Vec<String>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    for (key, set) in [
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        ("client_allowed_sans", t.client_allowed_sans.is_some()),
    ] {
        if set {
            bail!(
                "tls_server_config.{key}: not supported by vllm-sentinel (rustls chooses its own safe defaults)"
            );
        }
    }
    let (certs, key, ca) = pem_material(t, files)?;
    let auth = ClientAuth::parse(t.client_auth_type.as_deref().unwrap_or(""))?;
    if ca.is_some() && auth == ClientAuth::NoClientCert {
        bail!(
            "tls_server_config.client_ca_file: client CAs are configured without a client_auth_type that uses them (as exporter-toolkit)"
        );
    }
    if auth.verifies() && ca.is_none() {
        bail!(
            "tls_server_config.client_ca_file: client_auth_type {:?} needs client_ca_file",
            t.client_auth_type.as_deref().unwrap_or("")
        );
    }
    let min = tls_version("min_version", t.min_version.as_deref(), 12)?;
    let max = tls_version("max_version", t.max_version.as_deref(), 13)?;
    if min > max {
        bail!("tls_server_config: min_version is above max_version");
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| anyhow!("tls_server_config: {e}"))?;
    let verifier = client_verifier(auth, ca.as_deref(), &provider)?;
    let mut cfg = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow!("tls_server_config: the certificate and key do not make a usable pair: {e}")
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(false);
    summary.push(format!(
        "tls: on (TLS 1.{min}..1.{max}), client_auth_type {auth:?}{}",
        if ca.is_some() {
            ", client CA loaded"
        } else {
            ""
        }
    ));
    Ok(Arc::new(cfg))
}

type PemMaterial = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    Option<Vec<CertificateDer<'static>>>,
);

/// The certificate chain, the key and the client CAs, from files or inline PEM.
fn pem_material(t: &TlsFile, files: &mut Files) -> anyhow::Result<PemMaterial> {
    let certs: Vec<CertificateDer<'static>> = match (&t.cert_file, &t.cert) {
        (Some(_), Some(_)) => bail!("tls_server_config: set cert_file or cert, not both"),
        (Some(f), None) => {
            let p = files.resolve(f);
            read_certs(&p).context("tls_server_config.cert_file")?
        }
        (None, Some(pem)) => certs_from_pem(pem.as_bytes()).context("tls_server_config.cert")?,
        (None, None) => bail!("tls_server_config: missing cert_file"),
    };
    let key: PrivateKeyDer<'static> = match (&t.key_file, &t.key) {
        (Some(_), Some(_)) => bail!("tls_server_config: set key_file or key, not both"),
        (Some(f), None) => {
            let p = files.resolve(f);
            let bytes = std::fs::read(&p).with_context(|| {
                format!("tls_server_config.key_file: cannot read {}", p.display())
            })?;
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                anyhow!(
                    "tls_server_config.key_file: {}: no PEM private key ({e})",
                    p.display()
                )
            })?
        }
        (None, Some(pem)) => PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow!("tls_server_config.key: no PEM private key ({e})"))?,
        (None, None) => bail!("tls_server_config: missing key_file"),
    };
    let ca: Option<Vec<CertificateDer<'static>>> = match (&t.client_ca_file, &t.client_ca) {
        (Some(_), Some(_)) => {
            bail!("tls_server_config: set client_ca_file or client_ca, not both")
        }
        (Some(f), None) => {
            let p = files.resolve(f);
            Some(read_certs(&p).context("tls_server_config.client_ca_file")?)
        }
        (None, Some(pem)) => {
            Some(certs_from_pem(pem.as_bytes()).context("tls_server_config.client_ca")?)
        }
        (None, None) => None,
    };
    Ok((certs, key, ca))
}

/// The client-certificate verifier for `client_auth_type`.
fn client_verifier(
    auth: ClientAuth,
    ca: Option<&[CertificateDer<'static>]>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    Ok(match (auth, ca) {
        (ClientAuth::NoClientCert, _) => rustls::server::WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, _) => {
            Arc::new(AnyClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                provider: provider.clone(),
            })
        }
        (_, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in ca {
                roots.add(c.clone()).map_err(|e| {
                    anyhow!("tls_server_config.client_ca_file: not a usable CA certificate: {e}")
                })?;
            }
            let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            );
            let b = if auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| anyhow!("tls_server_config.client_ca_file: {e}"))?
        }
        (_, None) => bail!("tls_server_config.client_ca_file: missing"),
    })
}

/// `basic_auth_users` → the checker (hashes validated now, verified lazily and cached).
fn basic_auth(
    users: Option<BTreeMap<String, String>>,
    summary: &mut Vec<String>,
) -> anyhow::Result<Option<Arc<BasicAuth>>> {
    Ok(match users {
        None => {
            summary.push("basic auth: off".to_string());
            None
        }
        Some(users) => {
            for (user, hash) in &users {
                if user.contains(':') {
                    bail!("basic_auth_users.{user}: a user name cannot contain ':'");
                }
                hash.parse::<bcrypt::HashParts>().map_err(|e| {
                    anyhow!("basic_auth_users.{user}: not a bcrypt hash ($2y$...): {e}")
                })?;
            }
            summary.push(format!(
                "basic auth: {} user(s): {}",
                users.len(),
                users.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            Some(Arc::new(BasicAuth::new(users.into_iter().collect())))
        }
    })
}

fn tls_version(key: &str, v: Option<&str>, default: u8) -> anyhow::Result<u8> {
    Ok(match v {
        None | Some("") => default,
        Some("TLS12") => 12,
        Some("TLS13") => 13,
        Some("TLS10" | "TLS11") => bail!(
            "tls_server_config.{key}: {:?} is not supported by vllm-sentinel (rustls speaks TLS12 and TLS13)",
            v.unwrap_or("")
        ),
        Some(other) => bail!("tls_server_config.{key}: unknown TLS version {other:?}"),
    })
}

fn read_certs(p: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    certs_from_pem(&bytes).with_context(|| p.display().to_string())
}

fn certs_from_pem(bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("bad PEM: {e}"))?;
    if certs.is_empty() {
        bail!("no PEM certificate in it");
    }
    Ok(certs)
}

/// A hash of the web config file and the files it names (0 when the file cannot be read).
fn fingerprint(path: &Path, named: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in std::iter::once(path).chain(named.iter().map(PathBuf::as_path)) {
        p.hash(&mut h);
        if let Ok(m) = std::fs::metadata(p) {
            m.modified().ok().hash(&mut h);
            m.len().hash(&mut h);
        }
        std::fs::read(p).ok().hash(&mut h);
    }
    h.finish()
}

/// The fingerprint the file at `path` has now, with the files its current content names
/// (re-parsed leniently: only the paths matter here).
fn current_fingerprint(path: &Path) -> u64 {
    let named = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_norway::from_str::<serde_norway::Value>(&t).ok())
        .map(|v| {
            let dir = path.parent().unwrap_or(Path::new(""));
            ["cert_file", "key_file", "client_ca_file"]
                .iter()
                .filter_map(|k| {
                    v.get("tls_server_config")?
                        .get(*k)?
                        .as_str()
                        .map(str::to_string)
                })
                .map(|f| {
                    let p = Path::new(&f);
                    if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        dir.join(p)
                    }
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    fingerprint(path, &named)
}

// ---------------------------------------------------------------------------------------------
// Client certificates without verification (RequestClientCert, RequireAnyClientCert).

#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Basic auth.

/// `basic_auth_users`, with a bounded cache of bcrypt results keyed by a keyed 128-bit hash of
/// (user, password) (the password itself is not kept).
pub struct BasicAuth {
    users: HashMap<String, String>,
    cache: Mutex<HashMap<(u64, u64), bool>>,
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

/// A bcrypt hash (of a random string) checked for unknown users, so a wrong user name costs as
/// long as a wrong password (as exporter-toolkit).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

impl BasicAuth {
    fn new(users: HashMap<String, String>) -> Self {
        Self {
            users,
            cache: Mutex::new(HashMap::new()),
            keys: Default::default(),
        }
    }

    /// Whether the `Authorization` header value carries a listed user and its password.
    /// bcrypt runs on the blocking pool, once per distinct (user, password).
    pub async fn check(self: &Arc<Self>, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let pair = (user.as_str(), password.as_str());
        let key = (self.keys.0.hash_one(pair), self.keys.1.hash_one(pair));
        if let Some(ok) = self.cache.lock().ok().and_then(|c| c.get(&key).copied()) {
            return ok;
        }
        let this = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let (hash, known) = match this.users.get(&user) {
                Some(h) => (h.as_str(), true),
                None => (DUMMY_HASH, false),
            };
            bcrypt::verify(password.as_bytes(), hash).unwrap_or(false) && known
        })
        .await
        .unwrap_or(false);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= AUTH_CACHE {
                c.clear();
            }
            c.insert(key, ok);
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(v: &[u8]) -> Option<(String, String)> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim())?;
    let s = String::from_utf8(decoded).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The running web config, swapped on reload.

/// The web config in force, shared by the accept loop, the auth check and the reloaders.
#[derive(Clone, Default)]
pub struct WebHandle(Arc<RwLock<Arc<WebConfig>>>);

impl WebHandle {
    pub fn new(cfg: WebConfig) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(cfg))))
    }
    pub fn get(&self) -> Arc<WebConfig> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    pub fn set(&self, cfg: WebConfig) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(cfg),
            Err(p) => *p.into_inner() = Arc::new(cfg),
        }
    }
    /// Loads `path` and puts it in force; on error the running one stays, the error is logged
    /// and counted, and returned.
    pub fn reload(&self, path: Option<&Path>, failures: &Counter) -> anyhow::Result<()> {
        match WebConfig::load(path) {
            Ok(new) => {
                if path.is_some() || self.get().path.is_some() {
                    tracing::info!(summary = %new.describe(), "web config loaded");
                }
                self.set(new);
                Ok(())
            }
            Err(e) => {
                failures.inc();
                tracing::error!(error = %format!("{e:#}"), "web config not loaded; keeping the running one");
                Err(e)
            }
        }
    }
}

/// Registers `vllm_sentinel_web_config_reload_failures_total`.
pub fn register(registry: &mut prometheus_client::registry::Registry) -> Counter {
    let c = Counter::default();
    registry.register(
        "vllm_sentinel_web_config_reload_failures",
        "Loads of --web.config.file (on reload or on a change of the file) that failed; the running web config stayed",
        c.clone(),
    );
    c
}

/// Polls the web config file (path from `path()`, the running configuration's) every `poll`:
/// when it or a file it names changes, reloads it. A file that fails is not retried until it
/// changes again.
pub fn spawn_watcher(
    handle: WebHandle,
    path: impl Fn() -> Option<PathBuf> + Send + 'static,
    failures: Counter,
    poll: Duration,
    token: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    tracker.spawn(async move {
        let mut failed: Option<u64> = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            let Some(p) = path() else { continue };
            let running = handle.get();
            let now = {
                let p = p.clone();
                match tokio::task::spawn_blocking(move || current_fingerprint(&p)).await {
                    Ok(f) => f,
                    Err(_) => continue,
                }
            };
            if running.path.as_deref() == Some(p.as_path())
                && (now == running.fingerprint || Some(now) == failed)
            {
                continue;
            }
            if running.path.as_deref() != Some(p.as_path()) && Some(now) == failed {
                continue;
            }
            tracing::info!(path = %p.display(), "web config file changed; reloading it");
            match handle.reload(Some(&p), &failures) {
                Ok(()) => failed = None,
                Err(_) => failed = Some(now),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_basic_header() {
        let h = crate::config::basic_authorization("alice", "open: sesame");
        assert_eq!(
            parse_basic(h.as_bytes()),
            Some(("alice".to_string(), "open: sesame".to_string()))
        );
        assert_eq!(parse_basic(b"Bearer x"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
    }

    #[test]
    fn unknown_and_unsupported_keys_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.yml");
        for (text, want) in [
            ("foo: 1\n", "foo"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
                "cipher_suites",
            ),
            (
                "basic_auth_users:\n  alice: notahash\n",
                "basic_auth_users.alice",
            ),
            ("tls_server_config:\n  key_file: b\n", "cert_file"),
            (
                "tls_server_config:\n  cert_file: missing.crt\n  key_file: b\n",
                "cert_file",
            ),
            ("http_server_config:\n  headers: {}\n", "headers"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", WebConfig::load(Some(&p)).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::write(&p, "").unwrap();
        let c = WebConfig::load(Some(&p)).unwrap();
        assert!(c.tls.is_none() && c.auth.is_none());
    }

    #[tokio::test]
    async fn basic_auth_checks_and_caches() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let a = Arc::new(BasicAuth::new(HashMap::from([("alice".to_string(), hash)])));
        let h = |u: &str, p: &str| crate::config::basic_authorization(u, p);
        assert!(a.check(Some(h("alice", "secret").as_bytes())).await);
        assert!(!a.check(Some(h("alice", "wrong").as_bytes())).await);
        assert!(!a.check(Some(h("bob", "secret").as_bytes())).await);
        assert!(!a.check(None).await);
        assert_eq!(a.cache.lock().unwrap().len(), 3);
        assert!(a.check(Some(h("alice", "secret").as_bytes())).await);
    }
}

#[cfg(test)]
mod dummy_hash_tests {
    /// An unknown user is checked against this hash so that it costs what a wrong password
    /// costs: it must be a hash bcrypt accepts (an unparsable one would answer at once).
    #[test]
    fn the_dummy_hash_is_a_valid_bcrypt_hash_of_cost_10() {
        assert_eq!(bcrypt::verify("x", super::DUMMY_HASH).ok(), Some(false));
        assert!(super::DUMMY_HASH.starts_with("$2y$10$"));
    }
}
