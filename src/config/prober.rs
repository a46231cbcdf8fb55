//! The prober's configuration sections (`[prober]`, `[[targets.workloads]]`,
//! `[targets.canary]`) and their validation: plain data, so [`crate::config`] can assemble and
//! check them without depending on the prober that runs them. docs/prober.md describes every key.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use super::workload::{SourceKind, SourceSettings};
use super::{Endpoint, TargetConfig};

/// `[prober]`: settings for every target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProberConfig {
    /// TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Send to the first output event (headers included).
    #[serde(with = "humantime_serde")]
    pub first_token_timeout: Duration,
    /// Send to the end of the response.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Body bytes read from one response at most; more is counted as `malformed`.
    pub max_response_bytes: u64,
    /// Closed loop: the longest pause of a stream after consecutive failed or empty requests
    /// (10 ms after the first, doubling up to this; an ok request resets it), so a down or
    /// broken server is not hammered.
    #[serde(with = "humantime_serde")]
    pub error_backoff: Duration,
    /// Discovery retries start at this interval...
    #[serde(with = "humantime_serde")]
    pub discovery_retry_min: Duration,
    /// ...and double up to this one.
    #[serde(with = "humantime_serde")]
    pub discovery_retry_max: Duration,
    /// Open loop: default cap on requests in flight per workload.
    pub max_in_flight: u32,
    /// Self-health: a send later than its schedule, or a 10 ms tick later than its deadline, by
    /// more than this counts as late.
    #[serde(with = "humantime_serde")]
    pub saturation_lag_threshold: Duration,
    /// Self-health: window over which saturation is judged.
    #[serde(with = "humantime_serde")]
    pub saturation_window: Duration,
    /// Histogram buckets (seconds).
    pub buckets: Buckets,
}

impl Default for ProberConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            error_backoff: Duration::from_secs(1),
            discovery_retry_min: Duration::from_secs(1),
            discovery_retry_max: Duration::from_secs(30),
            max_in_flight: 256,
            saturation_lag_threshold: Duration::from_millis(10),
            saturation_window: Duration::from_secs(10),
            buckets: Buckets::default(),
        }
    }
}

/// Default cap on the bytes read from one response.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// `[prober.buckets]`: upper bounds in seconds, strictly increasing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Buckets {
    /// TTFB, TTFT and failed-request durations.
    pub ttft: Vec<f64>,
    /// ITL and TPOT.
    pub itl: Vec<f64>,
    /// End-to-end.
    pub e2e: Vec<f64>,
    /// Schedule lag and runtime lag.
    pub lag: Vec<f64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            // vLLM's own TTFT buckets, with finer steps at the low end for a local sidecar.
            ttft: vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
            ],
            itl: vec![
                0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
            ],
            e2e: vec![
                0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
            ],
            lag: vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ],
        }
    }
}

/// Open-loop arrival process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Exponential gaps (a Poisson process).
    #[default]
    Poisson,
    /// Equal gaps.
    Constant,
}

/// A prompt length in tokens: `128`, `{ min = 64, max = 256 }` (uniform) or
/// `{ mean = 128, stddev = 32, min = 16, max = 512 }` (normal, clamped).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Length {
    Fixed(u32),
    Normal {
        mean: f64,
        stddev: f64,
        #[serde(default)]
        min: Option<u32>,
        #[serde(default)]
        max: Option<u32>,
    },
    Uniform {
        min: u32,
        max: u32,
    },
}

impl Default for Length {
    fn default() -> Self {
        Length::Fixed(128)
    }
}

impl Length {
    /// Draws one length (at least 1).
    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        match *self {
            Length::Fixed(n) => n.max(1),
            Length::Uniform { min, max } => rng.random_range(min.min(max)..=max.max(min)).max(1),
            Length::Normal {
                mean,
                stddev,
                min,
                max,
            } => {
                // Box-Muller.
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let v = (mean + stddev * z).round();
                let lo = f64::from(min.unwrap_or(1).max(1));
                let hi = f64::from(max.unwrap_or(u32::MAX));
                v.clamp(lo, hi.max(lo)) as u32
            }
        }
    }

    /// The smallest length it can produce.
    pub fn min(&self) -> u32 {
        match *self {
            Length::Fixed(n) => n,
            Length::Uniform { min, max } => min.min(max),
            Length::Normal { min, .. } => min.unwrap_or(1).max(1),
        }
    }

    /// The largest length it can produce (`None`: unbounded).
    pub fn max(&self) -> Option<u32> {
        match *self {
            Length::Fixed(n) => Some(n),
            Length::Uniform { min, max } => Some(min.max(max)),
            Length::Normal { max, .. } => max,
        }
    }

    fn describe(&self) -> String {
        match *self {
            Length::Fixed(n) => n.to_string(),
            Length::Uniform { min, max } => format!("{min}..{max}"),
            Length::Normal { mean, stddev, .. } => format!("N({mean},{stddev})"),
        }
    }
}

/// `[[targets.workloads]]`: one synthetic traffic stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// The `workload` label; default `default` (or `w<index>` beyond the first).
    pub name: Option<String>,
    /// Closed loop: this many concurrent streams (default 1 when `rate` is not set).
    pub concurrency: Option<u32>,
    /// Open loop: this many requests per second.
    pub rate: Option<f64>,
    /// Open loop: `poisson` or `constant` gaps.
    pub arrival: Arrival,
    /// Open loop: in-flight cap; arrivals beyond it are dropped and counted. Default:
    /// `[prober] max_in_flight`.
    pub max_in_flight: Option<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: Length,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Send `ignore_eos` so every request produces `max_tokens` tokens.
    pub ignore_eos: bool,
    /// Sampling temperature (unset: the server's default).
    pub temperature: Option<f64>,
    /// Stream the response (TTFT and ITL need it).
    pub stream: bool,
    /// Shared-prefix mode: the first this-many prompt tokens are the same in every request of
    /// this workload (0: every prompt is random from its first token, so the prefix cache
    /// cannot flatter TTFT).
    pub shared_prefix_tokens: u32,
    /// Extra body fields passed through as given.
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Endpoint for this workload (default: the target's).
    pub endpoint: Option<Endpoint>,
    /// Where the requests come from: `random` (default), `sharegpt`, `jsonl`, `prefix`,
    /// `multi-turn` or `lora` (docs/config.md, "Workload sources").
    pub source: SourceKind,
    /// The dataset file of `sharegpt` and `jsonl` (read once, at start-up and on reload).
    pub path: Option<PathBuf>,
    /// `sharegpt`: `max_tokens` of every request, instead of the reference answer's length.
    pub sharegpt_output_len: Option<u32>,
    /// `sharegpt`/`jsonl`: random prompts of the dataset's lengths instead of its text.
    pub lengths_only: bool,
    /// `prefix`: number of groups, each with its own shared prefix of `shared_prefix_tokens`.
    pub prefix_groups: u32,
    /// `multi-turn`: turns per session.
    pub turns: u32,
    /// `lora`: the adapters to spread requests over (empty: every adapter the server lists).
    pub lora_adapters: Vec<String>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            name: None,
            concurrency: None,
            rate: None,
            arrival: Arrival::default(),
            max_in_flight: None,
            prompt_tokens: Length::default(),
            max_tokens: 16,
            ignore_eos: true,
            temperature: None,
            stream: true,
            shared_prefix_tokens: 0,
            extra_body: serde_json::Map::new(),
            endpoint: None,
            source: SourceKind::Random,
            path: None,
            sharegpt_output_len: None,
            lengths_only: false,
            prefix_groups: super::workload::DEFAULT_PREFIX_GROUPS,
            turns: super::workload::DEFAULT_TURNS,
            lora_adapters: Vec::new(),
        }
    }
}

impl WorkloadConfig {
    /// The `workload` label value of the `index`-th workload.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None if index == 0 => "default".to_string(),
            None => format!("w{index}"),
        }
    }

    /// Its source settings, for requests to `endpoint` (the workload's effective endpoint).
    pub fn source_settings(&self, endpoint: Endpoint) -> SourceSettings {
        SourceSettings {
            kind: self.source,
            path: self.path.clone(),
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.max_tokens,
            sharegpt_output_len: self.sharegpt_output_len,
            lengths_only: self.lengths_only,
            prefix_groups: self.prefix_groups,
            prefix_tokens: self.shared_prefix_tokens,
            turns: self.turns,
            lora_adapters: self.lora_adapters.clone(),
            endpoint,
        }
    }

    /// The load it asks for.
    pub fn load(&self) -> Load {
        match (self.rate, self.concurrency) {
            (Some(r), _) => Load::Open { rate: r },
            (None, c) => Load::Closed {
                concurrency: c.unwrap_or(1),
            },
        }
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed { concurrency: u32 },
    Open { rate: f64 },
}

/// The workloads a target runs: the configured ones, or one default closed-loop stream.
pub fn effective_workloads(t: &TargetConfig) -> Vec<WorkloadConfig> {
    if t.workloads.is_empty() {
        vec![WorkloadConfig::default()]
    } else {
        t.workloads.clone()
    }
}

/// `[targets.canary]`: the context-length canary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// Run the canary (needs `max_model_len` from `/v1/models`).
    pub enabled: bool,
    /// Time between canary rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Send the inside probe (a full-length prefill: costly on a large context; turn it off or
    /// shorten it on a busy production server).
    pub inside: bool,
    /// Prompt length of the inside probe; default `max_model_len - 1` (with `max_tokens = 1`).
    pub inside_prompt_tokens: Option<u32>,
    /// The over-limit probe's prompt is `max_model_len + over_by` tokens.
    pub over_by: u32,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(60),
            inside: true,
            inside_prompt_tokens: None,
            over_by: 1,
        }
    }
}

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

/// Hard ceiling on every token count in the configuration (prompt lengths, `max_tokens`, shared
/// prefixes, canary lengths): far above any served context, far below what would exhaust memory
/// building one prompt.
pub const MAX_TOKENS_CEILING: u32 = 10_000_000;
/// Ceiling on `prober.max_response_bytes` (1 GiB).
pub const MAX_RESPONSE_BYTES_CEILING: u64 = 1 << 30;
/// Ceiling on in-flight caps.
pub const MAX_IN_FLIGHT_CEILING: u32 = 100_000;

fn check_tokens(key: &str, v: Option<f64>, errors: &mut Vec<String>) {
    if let Some(v) = v
        && v > f64::from(MAX_TOKENS_CEILING)
    {
        errors.push(format!(
            "{key}: {v} tokens is over the ceiling; at most {MAX_TOKENS_CEILING}"
        ));
    }
}

const BODY_KEYS_OWNED: &[&str] = &["model", "prompt", "messages", "stream", "stream_options"];

/// Checks a target's prober settings; pushes `"<key>: <problem>"` messages.
pub fn validate_target(
    key: &str,
    t: &TargetConfig,
    _prober: &ProberConfig,
    errors: &mut Vec<String>,
) {
    let mut names = std::collections::HashSet::new();
    for (i, w) in t.workloads.iter().enumerate() {
        let k = format!("{key}.workloads[{i}]");
        let label = w.label(i);
        if label.is_empty() || label.len() > 64 {
            errors.push(format!("{k}.name: must be 1 to 64 characters"));
        }
        if !names.insert(label.clone()) {
            errors.push(format!("{k}.name: duplicate workload {label:?}"));
        }
        check_workload_load(&k, w, errors);
        check_workload_ceilings(&k, w, errors);
        check_workload_shape(&k, w, errors);
        let settings = w.source_settings(w.endpoint.unwrap_or(t.endpoint));
        errors.extend(settings.problems(&|name| {
            let name = match name {
                "prefix_tokens" => "shared_prefix_tokens",
                n => n,
            };
            format!("{k}.{name}")
        }));
    }
    check_canary(key, &t.canary, errors);
}

/// A workload's loop: closed (`concurrency`) or open (`rate`, `max_in_flight`).
fn check_workload_load(k: &str, w: &WorkloadConfig, errors: &mut Vec<String>) {
    if w.concurrency.is_some() && w.rate.is_some() {
        errors.push(format!("{k}: set concurrency or rate, not both"));
    }
    if let Some(c) = w.concurrency
        && !(1..=100_000).contains(&c)
    {
        errors.push(format!("{k}.concurrency: must be 1 to 100000"));
    }
    if let Some(r) = w.rate
        && !(r.is_finite() && r > 0.0 && r <= 100_000.0)
    {
        errors.push(format!(
            "{k}.rate: must be > 0 and at most 100000 requests/s"
        ));
    }
    if w.max_in_flight == Some(0) {
        errors.push(format!("{k}.max_in_flight: must be at least 1"));
    }
    if w.max_in_flight.is_some() && w.rate.is_none() {
        errors.push(format!(
            "{k}.max_in_flight: only applies to an open loop (set rate)"
        ));
    }
    if let Some(m) = w.max_in_flight
        && m > MAX_IN_FLIGHT_CEILING
    {
        errors.push(format!(
            "{k}.max_in_flight: at most {MAX_IN_FLIGHT_CEILING}"
        ));
    }
}

/// Every token count of a workload against [`MAX_TOKENS_CEILING`].
fn check_workload_ceilings(k: &str, w: &WorkloadConfig, errors: &mut Vec<String>) {
    match w.prompt_tokens {
        Length::Fixed(n) => check_tokens(&format!("{k}.prompt_tokens"), Some(f64::from(n)), errors),
        Length::Uniform { min, max } => {
            check_tokens(
                &format!("{k}.prompt_tokens.min"),
                Some(f64::from(min)),
                errors,
            );
            check_tokens(
                &format!("{k}.prompt_tokens.max"),
                Some(f64::from(max)),
                errors,
            );
        }
        Length::Normal {
            mean,
            stddev,
            min,
            max,
        } => {
            check_tokens(&format!("{k}.prompt_tokens.mean"), Some(mean), errors);
            check_tokens(&format!("{k}.prompt_tokens.stddev"), Some(stddev), errors);
            check_tokens(
                &format!("{k}.prompt_tokens.min"),
                min.map(f64::from),
                errors,
            );
            check_tokens(
                &format!("{k}.prompt_tokens.max"),
                max.map(f64::from),
                errors,
            );
        }
    }
    check_tokens(
        &format!("{k}.max_tokens"),
        Some(f64::from(w.max_tokens)),
        errors,
    );
    check_tokens(
        &format!("{k}.shared_prefix_tokens"),
        Some(f64::from(w.shared_prefix_tokens)),
        errors,
    );
}

/// A workload's prompt length distribution, `max_tokens`, `temperature`, shared prefix and
/// `extra_body`.
fn check_workload_shape(k: &str, w: &WorkloadConfig, errors: &mut Vec<String>) {
    match w.prompt_tokens {
        Length::Fixed(0) => errors.push(format!("{k}.prompt_tokens: must be at least 1")),
        Length::Uniform { min, max } if min == 0 || min > max => errors.push(format!(
            "{k}.prompt_tokens: need 1 <= min <= max (got min {min}, max {max})"
        )),
        Length::Normal {
            mean,
            stddev,
            min,
            max,
        } => {
            if !(mean.is_finite() && mean >= 1.0) {
                errors.push(format!("{k}.prompt_tokens.mean: must be at least 1"));
            }
            if !(stddev.is_finite() && stddev >= 0.0) {
                errors.push(format!("{k}.prompt_tokens.stddev: must be >= 0"));
            }
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                errors.push(format!("{k}.prompt_tokens: min {a} is above max {b}"));
            }
        }
        _ => {}
    }
    if w.max_tokens == 0 {
        errors.push(format!("{k}.max_tokens: must be at least 1"));
    }
    if let Some(tp) = w.temperature
        && !(tp.is_finite() && tp >= 0.0)
    {
        errors.push(format!("{k}.temperature: must be >= 0"));
    }
    if w.shared_prefix_tokens > 0 && w.shared_prefix_tokens >= w.prompt_tokens.min() {
        errors.push(format!(
            "{k}.shared_prefix_tokens: {} must be below the shortest prompt ({} tokens)",
            w.shared_prefix_tokens,
            w.prompt_tokens.min()
        ));
    }
    for b in BODY_KEYS_OWNED {
        if w.extra_body.contains_key(*b) {
            errors.push(format!(
                "{k}.extra_body.{b}: set by the prober; it cannot be overridden"
            ));
        }
    }
}

/// `targets[i].canary`.
fn check_canary(key: &str, c: &CanaryConfig, errors: &mut Vec<String>) {
    if c.enabled && c.interval < Duration::from_secs(1) {
        errors.push(format!("{key}.canary.interval: must be at least 1s"));
    }
    if c.inside_prompt_tokens == Some(0) {
        errors.push(format!(
            "{key}.canary.inside_prompt_tokens: must be at least 1"
        ));
    }
    check_tokens(
        &format!("{key}.canary.inside_prompt_tokens"),
        c.inside_prompt_tokens.map(f64::from),
        errors,
    );
    check_tokens(
        &format!("{key}.canary.over_by"),
        Some(f64::from(c.over_by)),
        errors,
    );
    if c.over_by == 0 {
        errors.push(format!(
            "{key}.canary.over_by: must be at least 1 (the probe must exceed the limit)"
        ));
    }
}

/// Checks `[prober]`.
pub fn validate(p: &ProberConfig, errors: &mut Vec<String>) {
    for (name, d) in [
        ("prober.connect_timeout", p.connect_timeout),
        ("prober.first_token_timeout", p.first_token_timeout),
        ("prober.request_timeout", p.request_timeout),
        ("prober.discovery_retry_min", p.discovery_retry_min),
        (
            "prober.saturation_lag_threshold",
            p.saturation_lag_threshold,
        ),
    ] {
        if d.is_zero() {
            errors.push(format!("{name}: must be greater than 0"));
        }
    }
    if p.first_token_timeout > p.request_timeout {
        errors.push(format!(
            "prober.first_token_timeout: {} is longer than prober.request_timeout ({})",
            humantime::format_duration(p.first_token_timeout),
            humantime::format_duration(p.request_timeout)
        ));
    }
    if p.discovery_retry_max < p.discovery_retry_min {
        errors.push("prober.discovery_retry_max: must be >= prober.discovery_retry_min".into());
    }
    if p.saturation_window < Duration::from_secs(1) {
        errors.push("prober.saturation_window: must be at least 1s".into());
    }
    if p.max_response_bytes < 4096 {
        errors.push("prober.max_response_bytes: must be at least 4096".into());
    }
    if p.max_response_bytes > MAX_RESPONSE_BYTES_CEILING {
        errors.push("prober.max_response_bytes: must be at most 1073741824 (1 GiB)".into());
    }
    if p.max_in_flight == 0 {
        errors.push("prober.max_in_flight: must be at least 1".into());
    }
    if p.max_in_flight > MAX_IN_FLIGHT_CEILING {
        errors.push(format!(
            "prober.max_in_flight: at most {MAX_IN_FLIGHT_CEILING}"
        ));
    }
    for (name, b) in [
        ("ttft", &p.buckets.ttft),
        ("itl", &p.buckets.itl),
        ("e2e", &p.buckets.e2e),
        ("lag", &p.buckets.lag),
    ] {
        if b.is_empty() {
            errors.push(format!("prober.buckets.{name}: must not be empty"));
        } else if b.iter().any(|v| !v.is_finite() || *v <= 0.0)
            || b.windows(2).any(|w| w[0] >= w[1])
        {
            errors.push(format!(
                "prober.buckets.{name}: must be positive, finite and strictly increasing"
            ));
        }
    }
}

/// A one-line summary of a target's workloads (for `check-config`).
pub fn describe_workloads(t: &TargetConfig) -> String {
    let ws = effective_workloads(t);
    let parts: Vec<String> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let load = match w.load() {
                Load::Closed { concurrency } => format!("concurrency {concurrency}"),
                Load::Open { rate } => format!(
                    "rate {rate}/s {:?} cap {}",
                    w.arrival,
                    w.max_in_flight
                        .map_or("default".to_string(), |m| m.to_string())
                )
                .to_lowercase(),
            };
            let endpoint = w.endpoint.unwrap_or(t.endpoint);
            let source = match w.source {
                SourceKind::Random => String::new(),
                _ => format!(", source {}", w.source_settings(endpoint).describe()),
            };
            format!(
                "{}({load}, prompt {} tok, max_tokens {}, {}{source})",
                w.label(i),
                w.prompt_tokens.describe(),
                w.max_tokens,
                endpoint.as_str()
            )
        })
        .collect();
    let canary = if t.canary.enabled {
        format!(
            " canary every {}",
            humantime::format_duration(t.canary.interval)
        )
    } else {
        " canary off".to_string()
    };
    format!("[{}]{canary}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn target(extra: &str) -> TargetConfig {
        let cfg = crate::config::from_toml(&format!(
            "[[targets]]\nurl = \"http://127.0.0.1:8000\"\n{extra}"
        ))
        .unwrap();
        cfg.targets[0].clone()
    }

    fn errors_of(t: &TargetConfig) -> Vec<String> {
        let mut e = Vec::new();
        validate_target("targets[0]", t, &ProberConfig::default(), &mut e);
        e
    }

    #[test]
    fn lengths_parse_in_three_forms() {
        let t = target(
            "[[targets.workloads]]\nprompt_tokens = 64\n[[targets.workloads]]\nname = \"u\"\nprompt_tokens = { min = 10, max = 20 }\n[[targets.workloads]]\nname = \"n\"\nprompt_tokens = { mean = 100.0, stddev = 10.0, min = 50, max = 150 }\n",
        );
        assert_eq!(t.workloads[0].prompt_tokens, Length::Fixed(64));
        assert_eq!(
            t.workloads[1].prompt_tokens,
            Length::Uniform { min: 10, max: 20 }
        );
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let u = t.workloads[1].prompt_tokens.sample(&mut rng);
            assert!((10..=20).contains(&u));
            let n = t.workloads[2].prompt_tokens.sample(&mut rng);
            assert!((50..=150).contains(&n));
        }
        assert!(errors_of(&t).is_empty(), "{:?}", errors_of(&t));
    }

    #[test]
    fn bad_workloads_name_their_keys() {
        let t = target(
            "[[targets.workloads]]\nconcurrency = 2\nrate = 1.0\nmax_tokens = 0\n[[targets.workloads]]\nname = \"default\"\nrate = -1.0\nshared_prefix_tokens = 500\nextra_body = { stream = false }\n[targets.canary]\nover_by = 0\n",
        );
        let e = errors_of(&t).join("\n");
        for want in [
            "targets[0].workloads[0]: set concurrency or rate, not both",
            "targets[0].workloads[0].max_tokens: must be at least 1",
            "targets[0].workloads[1].name: duplicate workload \"default\"",
            "targets[0].workloads[1].rate: must be > 0",
            "targets[0].workloads[1].shared_prefix_tokens",
            "targets[0].workloads[1].extra_body.stream",
            "targets[0].canary.over_by",
        ] {
            assert!(e.contains(want), "missing {want:?} in\n{e}");
        }
    }

    #[test]
    fn prober_section_rules() {
        let mut p = ProberConfig::default();
        let mut e = Vec::new();
        validate(&p, &mut e);
        assert!(e.is_empty(), "{e:?}");
        p.first_token_timeout = Duration::from_secs(600);
        p.buckets.itl = vec![0.1, 0.05];
        p.connect_timeout = Duration::ZERO;
        validate(&p, &mut e);
        let e = e.join("\n");
        assert!(e.contains("prober.first_token_timeout"), "{e}");
        assert!(e.contains("prober.buckets.itl"), "{e}");
        assert!(e.contains("prober.connect_timeout"), "{e}");
    }

    #[test]
    fn length_typos_are_rejected() {
        let r = crate::config::from_toml(
            "[[targets]]\nurl = \"http://x:1\"\n[[targets.workloads]]\nprompt_tokens = { min = 1, max = 2, mena = 3 }\n",
        );
        assert!(r.is_err());
    }

    #[test]
    fn unknown_workload_key_is_rejected() {
        let r = crate::config::from_toml(
            "[[targets]]\nurl = \"http://x:1\"\n[[targets.workloads]]\nconcurency = 3\n",
        );
        assert!(r.unwrap_err().contains("concurency"));
    }

    #[test]
    fn load_args_and_describe() {
        let mut t = target("");
        apply_load_args(&mut t, Some(8), None);
        assert_eq!(t.workloads[0].load(), Load::Closed { concurrency: 8 });
        apply_load_args(&mut t, None, Some(2.5));
        assert_eq!(t.workloads[0].load(), Load::Open { rate: 2.5 });
        let d = describe_workloads(&t);
        assert!(d.contains("default(rate 2.5/s poisson"), "{d}");
        assert!(d.contains("canary every 1m"), "{d}");
    }
}
