//! One target's scrape: fetch (timeout, body cap, gzip), parse, normalise, compute the
//! client/server join, and build the next immutable [`TargetView`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use super::expfmt::{self, ErrorKind, Format};
use super::export::{FailReason, Health, TargetView, WindowConcept};
use super::normalize::{self, Concept, Engine, Hist, Key, ServerSeries};
use super::passthrough;

/// `Accept` sent to the server: the 0.0.4 text format first (every engine speaks it), then
/// OpenMetrics.
pub const ACCEPT_HEADER: &str =
    "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1";

/// How often the server's version is re-read even when nothing suggests a change.
const VERSION_REFRESH: Duration = Duration::from_secs(600);

/// Everything one target's scrape loop needs; two equal values mean nothing to restart.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRun {
    /// The `target` label.
    pub label: String,
    pub metrics_url: String,
    /// `None`: do not ask for the version.
    pub version_url: Option<String>,
    /// Name of the environment variable holding the whole `Authorization` header value.
    pub auth_header_env: Option<String>,
    /// `Authorization: Basic …` from credentials in the target URL (when no `auth_header_env`).
    pub basic_auth: Option<crate::config::Secret>,
    /// Model label where the engine has none.
    pub model: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub passthrough: bool,
    pub passthrough_max_series: usize,
}

/// A scrape that failed, with a message for the landing page and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: FailReason,
    /// For [`FailReason::Parse`] (and truncated reads): the parse error kinds to count.
    pub kinds: Vec<(ErrorKind, u32)>,
    pub message: String,
}

/// What one fetch returned.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub format: Format,
}

/// Fetches a body: status 2xx, a content type that can be an exposition, at most `max` bytes
/// (after gzip decoding), all within `timeout`.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&HeaderValue>,
    timeout: Duration,
    max: u64,
    expect_exposition: bool,
) -> Result<Fetched, Failure> {
    // Messages name the URL without any `user:password@` (they reach logs and the landing page).
    let shown = crate::config::redact_url(url);
    let url_for_messages = shown.as_str();
    let work = async {
        let url_shown = url_for_messages;
        let mut req = client.get(url).header(ACCEPT, ACCEPT_HEADER);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let mut resp = req.send().await.map_err(|e| Failure {
            reason: if e.is_timeout() {
                FailReason::Timeout
            } else {
                FailReason::Connect
            },
            kinds: vec![],
            message: format!("GET {url_shown}: {}", crate::errchain::reqwest(&e)),
        })?;
        let ct = check_head(&resp, url_shown, expect_exposition, max)?;
        let body = read_body(&mut resp, url_shown, max).await?;
        Ok(Fetched {
            body,
            format: Format::from_content_type(ct.as_deref()),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure {
            reason: FailReason::Timeout,
            kinds: vec![],
            message: format!(
                "GET {url_for_messages}: no complete answer within {}",
                humantime::format_duration(timeout)
            ),
        }),
    }
}

/// Checks a response head: a 2xx status, a content type that can be an exposition (when
/// `expect_exposition`), a declared length within `max`. Returns the content type.
fn check_head(
    resp: &reqwest::Response,
    url_shown: &str,
    expect_exposition: bool,
    max: u64,
) -> Result<Option<String>, Failure> {
    let status = resp.status();
    if !status.is_success() {
        let note = if status.is_redirection() {
            " (a redirect to another origin is not followed)"
        } else {
            ""
        };
        return Err(Failure {
            reason: FailReason::HttpStatus,
            kinds: vec![],
            message: format!("GET {url_shown}: HTTP {status}{note}"),
        });
    }
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(ct) = &ct
        && expect_exposition
        && !content_type_ok(ct)
    {
        return Err(Failure {
            reason: FailReason::Parse,
            kinds: vec![(ErrorKind::ContentType, 1)],
            message: format!("GET {url_shown}: content type {ct:?} is not a metrics exposition"),
        });
    }
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(too_large(url_shown, max));
    }
    Ok(ct)
}

/// Reads a body of at most `max` bytes (after gzip decoding).
async fn read_body(
    resp: &mut reqwest::Response,
    url_shown: &str,
    max: u64,
) -> Result<Vec<u8>, Failure> {
    let cap = resp.content_length().unwrap_or(64 * 1024).min(max) as usize;
    let mut body = Vec::with_capacity(cap);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > max {
                    return Err(too_large(url_shown, max));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Failure {
                    reason: if e.is_timeout() {
                        FailReason::Timeout
                    } else {
                        FailReason::Body
                    },
                    kinds: vec![(ErrorKind::Truncated, 1)],
                    message: format!(
                        "GET {url_shown}: reading the body: {}",
                        crate::errchain::reqwest(&e)
                    ),
                });
            }
        }
    }
    Ok(body)
}

fn too_large(url: &str, max: u64) -> Failure {
    Failure {
        reason: FailReason::TooLarge,
        kinds: vec![],
        message: format!("GET {url}: body larger than scrape.max_body_bytes ({max} bytes)"),
    }
}

/// Content types an exposition can come with: `text/plain` (0.0.4, or Python's
/// `version=1.0.0`) and `application/openmetrics-text`. Anything else (HTML, JSON) is refused.
pub fn content_type_ok(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.is_empty() || media == "text/plain" || media == "application/openmetrics-text"
}

/// Reads `{"version": "..."}` (vLLM, SGLang, TGI's `/info`) or llama.cpp's `build_info`.
pub fn version_from_json(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = v
        .get("version")
        .or_else(|| v.get("build_info"))
        .and_then(|x| x.as_str())?;
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    Some(s.to_string())
}

type HistMap = BTreeMap<(Concept, Key), Hist>;

/// A target's state between scrapes: cumulative counters, the previous histograms for the
/// window means, what is known of the server's version.
#[derive(Debug, Default)]
pub struct TargetState {
    health: Health,
    prev_hist: Option<(Engine, HistMap)>,
    version: Option<String>,
    version_checked: Option<Instant>,
    engine: Option<Engine>,
    start_time: Option<u64>,
}

/// Drives one target: [`TargetScraper::scrape`] does one full scrape and returns the view to
/// publish. The loop in [`super::Scraper`] calls it on every tick; tests call it directly.
#[derive(Debug)]
pub struct TargetScraper {
    pub run: TargetRun,
    client: reqwest::Client,
    state: TargetState,
    /// The last error message (for the landing page).
    pub last_error: Option<String>,
}

impl TargetScraper {
    pub fn new(run: TargetRun, client: reqwest::Client) -> Self {
        Self {
            run,
            client,
            state: TargetState::default(),
            last_error: None,
        }
    }

    fn auth(&self) -> Result<Option<HeaderValue>, Failure> {
        let Some(var) = &self.run.auth_header_env else {
            return match &self.run.basic_auth {
                None => Ok(None),
                Some(s) => match HeaderValue::from_str(s.expose()) {
                    Ok(mut h) => {
                        h.set_sensitive(true);
                        Ok(Some(h))
                    }
                    Err(_) => Err(Failure {
                        reason: FailReason::Config,
                        kinds: vec![],
                        message: "the target URL's credentials are not a valid header value".into(),
                    }),
                },
            };
        };
        let fail = |m: String| Failure {
            reason: FailReason::Config,
            kinds: vec![],
            message: m,
        };
        let v = std::env::var(var).map_err(|_| {
            fail(format!(
                "scrape.auth_header_env: environment variable {var} is not set"
            ))
        })?;
        let mut h = HeaderValue::from_str(v.trim()).map_err(|_| {
            fail(format!(
                "scrape.auth_header_env: {var} does not hold a valid header value"
            ))
        })?;
        h.set_sensitive(true);
        Ok(Some(h))
    }

    /// One scrape: returns the complete next view.
    pub async fn scrape(&mut self) -> TargetView {
        let t0 = Instant::now();
        let fetched = match self.auth() {
            Ok(auth) => {
                fetch(
                    &self.client,
                    &self.run.metrics_url,
                    auth.as_ref(),
                    self.run.timeout,
                    self.run.max_body_bytes,
                    true,
                )
                .await
            }
            Err(f) => Err(f),
        };
        match fetched {
            Ok(f) => self.process(&f.body, f.format, t0).await,
            Err(f) => self.fail(f, t0),
        }
    }

    fn fail(&mut self, f: Failure, t0: Instant) -> TargetView {
        let h = &mut self.state.health;
        h.up = false;
        h.duration_seconds = t0.elapsed().as_secs_f64();
        h.samples = None;
        h.scrapes_error += 1;
        *h.failures.entry(f.reason).or_insert(0) += 1;
        for (k, n) in &f.kinds {
            *h.parse_errors.entry(*k).or_insert(0) += u64::from(*n);
        }
        // Nothing carries over a failure: the next window starts afresh.
        self.state.prev_hist = None;
        self.state.version = None;
        self.state.engine = None;
        tracing::debug!(target_label = %self.run.label, reason = f.reason.as_str(), error = %f.message, "upstream scrape failed");
        self.last_error = Some(f.message);
        TargetView {
            target: self.run.label.clone(),
            health: self.state.health.clone(),
            passthrough_enabled: self.run.passthrough,
            ..Default::default()
        }
    }

    /// Parses and normalises a fetched body (public for tests and benchmarks).
    pub async fn process(&mut self, body: &[u8], format: Format, t0: Instant) -> TargetView {
        let exp = expfmt::parse_bytes(body, format);
        let kinds: Vec<(ErrorKind, u32)> = exp.error_counts().collect();
        if let Some(fatal) = exp.fatal() {
            let msg = format!(
                "GET {}: the body is not a usable exposition ({})",
                crate::config::redact_url(&self.run.metrics_url),
                fatal.as_str()
            );
            return self.fail(
                Failure {
                    reason: FailReason::Parse,
                    kinds,
                    message: msg,
                },
                t0,
            );
        }
        let fallback = self.run.model.as_deref().unwrap_or("unknown");
        let server = normalize::normalize(&exp, fallback);
        let pass = self.run.passthrough.then(|| {
            Arc::new(passthrough::build(
                &exp,
                &self.run.label,
                self.run.passthrough_max_series,
            ))
        });
        let samples = exp.samples.len() as u64;
        // A restart or a different server: forget the version and the previous window.
        let start_time = exp
            .families
            .iter()
            .find(|f| f.name == "process_start_time_seconds" && !f.damaged)
            .and_then(|f| exp.family_samples(f).first())
            .map(|s| s.value.to_bits());
        drop(exp);
        self.follow_identity(server.engine, start_time);
        let window = self.window_means(&server);
        self.refresh_version().await;
        self.record_success(t0, samples, &kinds);
        TargetView {
            target: self.run.label.clone(),
            health: self.state.health.clone(),
            info: Some((
                server.engine.as_str(),
                self.state
                    .version
                    .clone()
                    .unwrap_or_else(|| "unknown".to_string()),
            )),
            server: Some(server),
            window,
            passthrough: pass,
            passthrough_enabled: self.run.passthrough,
        }
    }

    /// Forgets the version and the previous histogram window when the upstream's engine
    /// changed or it restarted (a new `process_start_time_seconds`).
    fn follow_identity(&mut self, engine: Engine, start_time: Option<u64>) {
        let engine_changed = self.state.engine != Some(engine);
        let restarted = start_time.is_some() && start_time != self.state.start_time;
        if engine_changed || restarted {
            if self.state.engine.is_some() && engine_changed {
                tracing::info!(target_label = %self.run.label, engine = engine.as_str(), "upstream engine changed");
            }
            self.state.version = None;
            self.state.version_checked = None;
            self.state.prev_hist = None;
        }
        self.state.engine = Some(engine);
        self.state.start_time = start_time;
    }

    /// The client/server join: per windowed concept, model and engine index, delta sum / delta
    /// count of the server's histogram since the previous good scrape; keeps this scrape's
    /// histograms for the next.
    fn window_means(
        &mut self,
        server: &ServerSeries,
    ) -> BTreeMap<(WindowConcept, String, String), f64> {
        let mut window = BTreeMap::new();
        if let Some((e, prev)) = &self.state.prev_hist
            && *e == server.engine
        {
            for w in WindowConcept::ALL {
                for ((c, k), h) in server
                    .histograms
                    .iter()
                    .filter(|((c, _), _)| *c == w.source())
                {
                    if let Some(p) = prev.get(&(*c, k.clone())) {
                        let dc = h.count - p.count;
                        let ds = h.sum - p.sum;
                        if dc > 0.0 && ds >= 0.0 && ds.is_finite() {
                            window.insert((w, k.model.clone(), k.engine_index.clone()), ds / dc);
                        }
                    }
                }
            }
        }
        self.state.prev_hist = Some((
            server.engine,
            server
                .histograms
                .iter()
                .filter(|((c, _), _)| WindowConcept::ALL.iter().any(|w| w.source() == *c))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
        window
    }

    /// A good scrape: health, parse-problem counts and the last error.
    fn record_success(&mut self, t0: Instant, samples: u64, kinds: &[(ErrorKind, u32)]) {
        let h = &mut self.state.health;
        h.up = true;
        h.duration_seconds = t0.elapsed().as_secs_f64();
        h.last_success = Some(crate::clock::unix_seconds());
        h.samples = Some(samples);
        h.scrapes_ok += 1;
        for (k, n) in kinds {
            *h.parse_errors.entry(*k).or_insert(0) += u64::from(*n);
        }
        self.last_error = if kinds.is_empty() {
            None
        } else {
            Some(format!(
                "parsed with problems: {}",
                kinds
                    .iter()
                    .map(|(k, n)| format!("{} x{n}", k.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
    }

    async fn refresh_version(&mut self) {
        let Some(url) = self.run.version_url.clone() else {
            return;
        };
        let due = self
            .state
            .version_checked
            .is_none_or(|t| t.elapsed() >= VERSION_REFRESH);
        if !due {
            return;
        }
        self.state.version_checked = Some(Instant::now());
        let auth = self.auth().ok().flatten();
        match fetch(
            &self.client,
            &url,
            auth.as_ref(),
            self.run.timeout,
            64 * 1024,
            false,
        )
        .await
        {
            Ok(f) => self.state.version = version_from_json(&f.body),
            Err(f) => {
                tracing::debug!(target_label = %self.run.label, error = %f.message, "no server version");
                self.state.version = None;
            }
        }
    }
}
