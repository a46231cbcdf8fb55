//! The scraper's Prometheus side: immutable per-target views, published by swapping one
//! `Arc` per scrape, and the `Collector`s that encode them at `/metrics` time.
//!
//! A view is built completely before it is published, so `/metrics` sees either the previous
//! scrape's series or the new one, never a mix.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType as PmType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::expfmt::ErrorKind;
use super::normalize::{Concept, Hist, Key, Kind, ServerSeries};
use super::passthrough::{PassThrough, PassType, PassValue};

/// `vllm_sentinel_server_http_requests_total` (without `_total`: the encoder appends it).
pub const HTTP_REQUESTS_FAMILY: &str = "vllm_sentinel_server_http_requests";

/// Why a scrape failed (the `reason` label of `vllm_sentinel_upstream_scrape_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailReason {
    /// Connection refused, reset, DNS.
    Connect,
    /// The whole fetch took longer than `scrape.timeout`.
    Timeout,
    /// A status other than 2xx.
    HttpStatus,
    /// The body is larger than `scrape.max_body_bytes`.
    TooLarge,
    /// The connection broke while reading the body.
    Body,
    /// The body is not a usable exposition (see the parse error kinds).
    Parse,
    /// A local problem (e.g. the auth header variable is not set).
    Config,
}

impl FailReason {
    pub const ALL: [FailReason; 7] = [
        FailReason::Connect,
        FailReason::Timeout,
        FailReason::HttpStatus,
        FailReason::TooLarge,
        FailReason::Body,
        FailReason::Parse,
        FailReason::Config,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Connect => "connect",
            FailReason::Timeout => "timeout",
            FailReason::HttpStatus => "http_status",
            FailReason::TooLarge => "too_large",
            FailReason::Body => "body",
            FailReason::Parse => "parse",
            FailReason::Config => "config",
        }
    }
}

/// Cumulative health counters of one target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub up: bool,
    pub duration_seconds: f64,
    pub last_success: Option<f64>,
    pub samples: Option<u64>,
    pub scrapes_ok: u64,
    pub scrapes_error: u64,
    pub parse_errors: BTreeMap<ErrorKind, u64>,
    pub failures: BTreeMap<FailReason, u64>,
}

/// The client/server join gauges (`vllm_sentinel_server_window_mean_*_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowConcept {
    Ttft,
    Queue,
    Prefill,
}

impl WindowConcept {
    pub const ALL: [WindowConcept; 3] = [
        WindowConcept::Ttft,
        WindowConcept::Queue,
        WindowConcept::Prefill,
    ];
    pub fn family(self) -> &'static str {
        match self {
            WindowConcept::Ttft => "vllm_sentinel_server_window_mean_ttft_seconds",
            WindowConcept::Queue => "vllm_sentinel_server_window_mean_queue_seconds",
            WindowConcept::Prefill => "vllm_sentinel_server_window_mean_prefill_seconds",
        }
    }
    pub fn source(self) -> Concept {
        match self {
            WindowConcept::Ttft => Concept::Ttft,
            WindowConcept::Queue => Concept::Queue,
            WindowConcept::Prefill => Concept::Prefill,
        }
    }
    fn help(self) -> &'static str {
        match self {
            WindowConcept::Ttft => {
                "Server-reported mean TTFT between the last two scrapes (delta sum / delta count)"
            }
            WindowConcept::Queue => {
                "Server-reported mean queue time between the last two scrapes (delta sum / delta count)"
            }
            WindowConcept::Prefill => {
                "Server-reported mean prefill time between the last two scrapes (delta sum / delta count)"
            }
        }
    }
}

/// Everything `/metrics` shows for one target after one scrape. Immutable once published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetView {
    pub target: String,
    pub health: Health,
    /// `(engine, version)` while up.
    pub info: Option<(&'static str, String)>,
    /// Normalised series while up.
    pub server: Option<ServerSeries>,
    /// Client/server join means (present only when the window had requests).
    pub window: BTreeMap<(WindowConcept, String, String), f64>,
    /// Pass-through families while up (when enabled).
    pub passthrough: Option<Arc<PassThrough>>,
    /// Whether pass-through is enabled for this target (the dropped gauge is shown then).
    pub passthrough_enabled: bool,
}

/// The published views of every target.
#[derive(Debug, Default)]
pub struct Board {
    views: RwLock<BTreeMap<String, Arc<TargetView>>>,
}

impl Board {
    /// Swaps in a target's new view.
    pub fn publish(&self, view: Arc<TargetView>) {
        if let Ok(mut m) = self.views.write() {
            m.insert(view.target.clone(), view);
        }
    }
    /// Swaps in a target's new view unless its loop was cancelled (checked under the lock, so
    /// a loop stopped by a reload cannot re-publish after [`Board::remove`]).
    pub fn publish_unless_cancelled(
        &self,
        view: Arc<TargetView>,
        token: &tokio_util::sync::CancellationToken,
    ) -> bool {
        if let Ok(mut m) = self.views.write()
            && !token.is_cancelled()
        {
            m.insert(view.target.clone(), view);
            return true;
        }
        false
    }
    /// Removes a target (it left the configuration).
    pub fn remove(&self, target: &str) {
        if let Ok(mut m) = self.views.write() {
            m.remove(target);
        }
    }
    /// The current views.
    pub fn snapshot(&self) -> Vec<Arc<TargetView>> {
        self.views
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
    /// One target's current view.
    pub fn get(&self, target: &str) -> Option<Arc<TargetView>> {
        self.views.read().ok().and_then(|m| m.get(target).cloned())
    }
}

type Labels = Vec<(&'static str, String)>;

fn key_labels(target: &str, k: &Key) -> Labels {
    let mut l = vec![
        ("target", target.to_string()),
        ("model", k.model.clone()),
        ("engine_index", k.engine_index.clone()),
    ];
    if let Some(r) = &k.reason {
        l.push(("reason", r.clone()));
    }
    l
}

/// Per-bucket counts from cumulative ones (prometheus-client accumulates again).
pub fn decumulate(buckets: &[(f64, f64)]) -> Vec<(f64, u64)> {
    let mut prev = 0.0f64;
    buckets
        .iter()
        .map(|(le, c)| {
            let d = (c - prev).max(0.0).round() as u64;
            prev = prev.max(*c);
            (*le, d)
        })
        .collect()
}

fn encode_hist(
    enc: &mut prometheus_client::encoding::MetricEncoder<'_>,
    h: &Hist,
) -> Result<(), std::fmt::Error> {
    let buckets = decumulate(&h.buckets);
    // The count is what the encoder writes as the `+Inf` bucket: OpenMetrics requires them
    // equal, and an upstream 0.0.4 body may not have them so.
    let count = buckets.iter().map(|b| b.1).sum();
    enc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        if h.sum.is_nan() { 0.0 } else { h.sum },
        count,
        &buckets,
        None,
    )
}

/// Encodes the health, info, normalised and join families of every target.
#[derive(Debug, Clone)]
pub struct ScrapeCollector {
    pub board: Arc<Board>,
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = self.board.snapshot();
        if views.is_empty() {
            return Ok(());
        }
        // Health.
        gauge_family(
            &mut encoder,
            "vllm_sentinel_upstream_up",
            "1 when the last scrape of the server's /metrics worked and parsed",
            views.iter().map(|v| {
                (
                    vec![("target", v.target.clone())],
                    f64::from(u8::from(v.health.up)),
                )
            }),
        )?;
        gauge_family(
            &mut encoder,
            "vllm_sentinel_upstream_scrape_duration_seconds",
            "Duration of the last scrape of the server's /metrics",
            views.iter().map(|v| {
                (
                    vec![("target", v.target.clone())],
                    v.health.duration_seconds,
                )
            }),
        )?;
        gauge_family(
            &mut encoder,
            "vllm_sentinel_upstream_last_success_timestamp_seconds",
            "Unix time of the last good scrape of the server's /metrics",
            views.iter().filter_map(|v| {
                v.health
                    .last_success
                    .map(|t| (vec![("target", v.target.clone())], t))
            }),
        )?;
        gauge_family(
            &mut encoder,
            "vllm_sentinel_upstream_samples",
            "Samples in the last body scraped from the server",
            views.iter().filter_map(|v| {
                v.health
                    .samples
                    .map(|n| (vec![("target", v.target.clone())], n as f64))
            }),
        )?;
        counter_family(
            &mut encoder,
            "vllm_sentinel_upstream_scrapes",
            "Scrapes of the server's /metrics by result",
            views.iter().flat_map(|v| {
                [
                    ("ok", v.health.scrapes_ok),
                    ("error", v.health.scrapes_error),
                ]
                .into_iter()
                .map(|(r, n)| {
                    (
                        vec![("target", v.target.clone()), ("result", r.to_string())],
                        n as f64,
                    )
                })
            }),
        )?;
        counter_family(
            &mut encoder,
            "vllm_sentinel_upstream_scrape_failures",
            "Failed scrapes of the server's /metrics by reason",
            views.iter().flat_map(|v| {
                FailReason::ALL.into_iter().map(|r| {
                    (
                        vec![
                            ("target", v.target.clone()),
                            ("reason", r.as_str().to_string()),
                        ],
                        v.health.failures.get(&r).copied().unwrap_or(0) as f64,
                    )
                })
            }),
        )?;
        counter_family(
            &mut encoder,
            "vllm_sentinel_upstream_parse_errors",
            "Problems found parsing the server's /metrics, by kind",
            views.iter().flat_map(|v| {
                ErrorKind::ALL.into_iter().map(|k| {
                    (
                        vec![
                            ("target", v.target.clone()),
                            ("kind", k.as_str().to_string()),
                        ],
                        v.health.parse_errors.get(&k).copied().unwrap_or(0) as f64,
                    )
                })
            }),
        )?;
        gauge_family(
            &mut encoder,
            "vllm_sentinel_upstream_passthrough_dropped_series",
            "Upstream series left out of pass-through in the last scrape (cap or name clash)",
            views.iter().filter(|v| v.passthrough_enabled).map(|v| {
                (
                    vec![("target", v.target.clone())],
                    v.passthrough
                        .as_ref()
                        .map(|p| p.dropped_series as f64)
                        .unwrap_or(0.0),
                )
            }),
        )?;
        // Info.
        let infos: Vec<Labels> = views
            .iter()
            .filter_map(|v| {
                v.info.as_ref().map(|(e, ver)| {
                    vec![
                        ("target", v.target.clone()),
                        ("engine", (*e).to_string()),
                        ("version", ver.clone()),
                    ]
                })
            })
            .collect();
        if !infos.is_empty() {
            let mut fam = encoder.encode_descriptor(
                "vllm_sentinel_server",
                "Serving engine and version detected on the target",
                None,
                PmType::Info,
            )?;
            for l in &infos {
                fam.encode_info(l)?;
            }
        }
        // Normalised series.
        for c in Concept::ALL {
            match c.kind() {
                Kind::Gauge | Kind::Counter => {
                    let rows = views.iter().flat_map(|v| {
                        v.server.iter().flat_map(move |s| {
                            s.values
                                .iter()
                                .filter(move |((cc, _), _)| *cc == c)
                                .map(move |((_, k), val)| (key_labels(&v.target, k), *val))
                        })
                    });
                    if c.kind() == Kind::Gauge {
                        gauge_family(&mut encoder, c.family(), c.help(), rows)?;
                    } else {
                        counter_family(&mut encoder, c.family(), c.help(), rows)?;
                    }
                }
                Kind::Histogram => {
                    let rows: Vec<(Labels, &Hist)> = views
                        .iter()
                        .flat_map(|v| {
                            v.server.iter().flat_map(move |s| {
                                s.histograms
                                    .iter()
                                    .filter(move |((cc, _), _)| *cc == c)
                                    .map(move |((_, k), h)| (key_labels(&v.target, k), h))
                            })
                        })
                        .collect();
                    if rows.is_empty() {
                        continue;
                    }
                    let mut fam =
                        encoder.encode_descriptor(c.family(), c.help(), None, PmType::Histogram)?;
                    for (l, h) in &rows {
                        let mut m = fam.encode_family(l)?;
                        encode_hist(&mut m, h)?;
                    }
                }
            }
        }
        counter_family(
            &mut encoder,
            HTTP_REQUESTS_FAMILY,
            "HTTP requests the server answered, by endpoint and status class (the server's own http_requests_total: every client, the tap's and the prober's requests included)",
            views.iter().flat_map(|v| {
                v.server.iter().flat_map(move |s| {
                    s.http_requests.iter().map(move |((e, c), n)| {
                        (
                            vec![
                                ("target", v.target.clone()),
                                ("endpoint", e.as_str().to_string()),
                                ("status_class", c.as_str().to_string()),
                            ],
                            *n,
                        )
                    })
                })
            }),
        )?;
        for w in WindowConcept::ALL {
            gauge_family(
                &mut encoder,
                w.family(),
                w.help(),
                views.iter().flat_map(|v| {
                    v.window.iter().filter(move |((ww, _, _), _)| *ww == w).map(
                        move |((_, model, idx), val)| {
                            (
                                vec![
                                    ("target", v.target.clone()),
                                    ("model", model.clone()),
                                    ("engine_index", idx.clone()),
                                ],
                                *val,
                            )
                        },
                    )
                }),
            )?;
        }
        Ok(())
    }
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let rows: Vec<(Labels, f64)> = rows.collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut fam = encoder.encode_descriptor(name, help, None, PmType::Gauge)?;
    for (l, v) in &rows {
        ConstGauge::new(*v).encode(fam.encode_family(l)?)?;
    }
    Ok(())
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let rows: Vec<(Labels, f64)> = rows.collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut fam = encoder.encode_descriptor(name, help, None, PmType::Counter)?;
    for (l, v) in &rows {
        ConstCounter::new(*v).encode(fam.encode_family(l)?)?;
    }
    Ok(())
}

/// Encodes every target's pass-through families under their upstream names. Register it on an
/// unprefixed registry: a prefix would rename them.
#[derive(Debug, Clone)]
pub struct PassthroughCollector {
    pub board: Arc<Board>,
}

impl Collector for PassthroughCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = self.board.snapshot();
        // Group families by the name they encode under (a counter `x` and a gauge `x_total`
        // would both write `x_total`) across targets; the first target's type wins.
        let mut by_name: BTreeMap<String, Vec<&super::passthrough::PassFamily>> = BTreeMap::new();
        for v in &views {
            if let Some(p) = &v.passthrough {
                for f in &p.families {
                    let exported = match f.typ {
                        PassType::Counter => format!("{}_total", f.name),
                        PassType::Info => format!("{}_info", f.name),
                        _ => f.name.clone(),
                    };
                    by_name.entry(exported).or_default().push(f);
                }
            }
        }
        for fams in by_name.values() {
            let first = fams[0];
            let name = first.name.as_str();
            let typ = match first.typ {
                PassType::Counter => PmType::Counter,
                PassType::Gauge => PmType::Gauge,
                PassType::Histogram => PmType::Histogram,
                PassType::Info => PmType::Info,
                PassType::Unknown => PmType::Unknown,
            };
            let mut fam = encoder.encode_descriptor(name, &first.help, None, typ)?;
            for f in fams.iter().filter(|f| f.typ == first.typ) {
                for s in &f.series {
                    match (&s.value, first.typ) {
                        (PassValue::Scalar(v), PassType::Counter) => {
                            ConstCounter::new(*v).encode(fam.encode_family(&s.labels)?)?;
                        }
                        (PassValue::Scalar(_), PassType::Info) => {
                            fam.encode_info(&s.labels)?;
                        }
                        (PassValue::Scalar(v), _) => {
                            ConstGauge::new(*v).encode(fam.encode_family(&s.labels)?)?;
                        }
                        (
                            PassValue::Histogram {
                                buckets,
                                sum,
                                count,
                            },
                            _,
                        ) => {
                            fam.encode_family(&s.labels)?
                                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                                    *sum, *count, buckets, None,
                                )?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
