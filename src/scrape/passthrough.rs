//! Pass-through: every upstream family re-exported under its own name with a `target` label.
//!
//! Rules (also in docs/scrape.md):
//! * Counters whose samples end in `_total` stay counters (prometheus-client appends `_total`
//!   itself, so the family is registered without it); a counter without `_total` (TGI), or
//!   with a value a counter cannot hold (negative or NaN, legal in 0.0.4), is re-exported
//!   untyped so that its name stays exactly as upstream wrote it and our OpenMetrics stays
//!   valid.
//! * A histogram's `_count` is re-exported as its `+Inf` bucket (OpenMetrics requires them
//!   equal; an OpenMetrics upstream where they differ is damaged and not re-exported).
//! * Gauges stay gauges; OpenMetrics `info` stays info; histograms keep their buckets; a
//!   family whose samples carry different names (a counter with both `x` and `x_total`) is
//!   treated like an untyped one;
//!   summaries, gauge histograms, state sets and untyped families become untyped families, one
//!   per sample name (`x{quantile=..}`, `x_sum`, `x_count`) so every name is kept.
//! * `_created` samples and Python's separate `x_created` gauge families are dropped (they are
//!   start times, not data), as are exemplars and timestamps.
//! * An upstream label that clashes with ours (`target`) is renamed `exported_target`
//!   (`exported_exported_target` if that is taken too), as Prometheus does with
//!   `honor_labels: false`.
//! * Families whose names we export ourselves (`process_*`, `vllm_sentinel_*`) are dropped:
//!   two families of one name would make the whole exposition invalid.
//! * HELP texts lose line breaks and backslashes (prometheus-client's OpenMetrics encoder
//!   writes HELP verbatim).
//! * At most `passthrough_max_series` sample lines per target; series past the cap are dropped
//!   whole (a histogram series is its buckets plus `_sum` and `_count`) and counted.

use std::collections::HashSet;

use super::expfmt::{Exposition, Family, MetricType, Suffix, group_histograms};

/// How a pass-through family is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassType {
    Counter,
    Gauge,
    Histogram,
    Info,
    Unknown,
}

/// One series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum PassValue {
    Scalar(f64),
    /// Buckets with per-bucket (not cumulative) counts, as prometheus-client wants them.
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

/// One series: labels (the `target` label first) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct PassSeries {
    pub labels: Vec<(String, String)>,
    pub value: PassValue,
}

/// One re-exported family.
#[derive(Debug, Clone, PartialEq)]
pub struct PassFamily {
    /// Name given to the encoder (counters without `_total`, info without `_info`).
    pub name: String,
    pub help: String,
    pub typ: PassType,
    pub series: Vec<PassSeries>,
}

/// A target's pass-through families and what was dropped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PassThrough {
    pub families: Vec<PassFamily>,
    /// Series dropped by the cap.
    pub dropped_series: u64,
}

/// True for names we export ourselves.
fn ours(name: &str) -> bool {
    name.starts_with("process_") || name.starts_with("vllm_sentinel_")
}

/// Renames clashing labels (`target` -> `exported_target`, repeatedly) and puts ours first.
fn relabel(target: &str, labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(labels.len() + 1);
    out.push(("target".to_string(), target.to_string()));
    let taken: HashSet<&str> = labels.iter().map(|(k, _)| *k).collect();
    for (k, v) in labels {
        let mut name = (*k).to_string();
        if name == "target" {
            name = format!("exported_{name}");
            while taken.contains(name.as_str()) {
                name = format!("exported_{name}");
            }
        }
        out.push((name, (*v).to_string()));
    }
    out
}

/// True when every sample (but `_created`) carries the same name, so the family can be
/// re-exported as one typed family without merging two names into one.
fn uniform_names(samples: &[super::expfmt::Sample<'_>]) -> bool {
    let mut it = samples.iter().filter(|s| s.suffix != Suffix::Created);
    match it.next() {
        Some(first) => it.all(|s| s.name == first.name),
        None => true,
    }
}

fn labels_of<'e>(
    exp: &'e Exposition<'_>,
    s: &super::expfmt::Sample<'_>,
) -> Vec<(&'e str, &'e str)> {
    exp.labels[s.labels.0 as usize..s.labels.1 as usize]
        .iter()
        .map(|l| (l.name, l.value.as_ref()))
        .collect()
}

/// HELP text safe for both encoders: prometheus-client's OpenMetrics encoder writes HELP
/// verbatim, so an upstream `\n` (unescaped by the parser) or backslash would break the line.
/// Found by the fuzz harness (tests/data/scrape/regressions/help_with_newline.txt).
fn clean_help(h: &str) -> String {
    h.chars()
        .map(|c| match c {
            '\n' | '\r' => ' ',
            '\\' => '/',
            c => c,
        })
        .collect()
}

/// Builds the pass-through families of one body.
pub fn build(exp: &Exposition<'_>, target: &str, max_series: usize) -> PassThrough {
    let mut out = PassThrough::default();
    let mut budget = Budget {
        left: max_series,
        dropped: 0,
    };
    // Names of counter/histogram/summary families, to spot Python's `x_created` gauges.
    let with_created: HashSet<&str> = exp
        .families
        .iter()
        .filter(|f| {
            matches!(
                f.typ,
                MetricType::Counter | MetricType::Histogram | MetricType::Summary
            )
        })
        .map(|f| f.base_name())
        .collect();
    let mut seen_names: HashSet<String> = HashSet::new();
    for f in &exp.families {
        if f.damaged || f.is_empty() || ours(f.name) {
            continue;
        }
        if let Some(base) = f.name.strip_suffix("_created")
            && with_created.contains(base)
        {
            continue;
        }
        let help = clean_help(f.help.as_deref().unwrap_or(""));
        let samples = exp.family_samples(f);
        let fams = match f.typ {
            MetricType::Histogram => {
                let Some(pf) = histogram_family(exp, f, help, target, &mut budget) else {
                    continue;
                };
                vec![pf]
            }
            MetricType::Counter | MetricType::Gauge | MetricType::Info
                if uniform_names(samples) =>
            {
                vec![typed_family(exp, f, help, target, &mut budget)]
            }
            _ => untyped_families(exp, f, help, target, &mut budget),
        };
        for pf in fams {
            admit(&mut out, &mut seen_names, pf);
        }
    }
    out.dropped_series += budget.dropped;
    out
}

/// The pass-through's series budget: what is left, and how many series it refused.
struct Budget {
    left: usize,
    dropped: u64,
}

impl Budget {
    /// Takes `cost` series from the budget, or counts one dropped series when it has not that
    /// many left.
    fn take(&mut self, cost: usize) -> bool {
        if cost > self.left {
            self.dropped += 1;
            return false;
        }
        self.left -= cost;
        true
    }
}

/// A histogram family, bucket counts made per-bucket again; `None` when its series cannot be
/// grouped.
fn histogram_family(
    exp: &Exposition<'_>,
    f: &Family<'_>,
    help: String,
    target: &str,
    budget: &mut Budget,
) -> Option<PassFamily> {
    let series = group_histograms(exp, f).ok()?;
    let mut pf = PassFamily {
        name: f.name.to_string(),
        help,
        typ: PassType::Histogram,
        series: Vec::new(),
    };
    for h in series {
        if !budget.take(h.buckets.len() + 2) {
            continue;
        }
        let mut prev = 0.0f64;
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .map(|(le, c)| {
                let d = (c - prev).max(0.0).round() as u64;
                prev = prev.max(*c);
                (*le, d)
            })
            .collect();
        // `_count` is re-exported as the `+Inf` bucket the encoder writes (OpenMetrics requires
        // them equal; a 0.0.4 upstream may differ).
        let count = buckets.iter().map(|b| b.1).sum();
        pf.series.push(PassSeries {
            labels: relabel(target, &h.labels),
            value: PassValue::Histogram {
                buckets,
                sum: h.sum.unwrap_or(0.0),
                count,
            },
        });
    }
    Some(pf)
}

/// A counter, gauge or info family whose samples all share one name: kept typed (a counter
/// whose samples do not end in `_total` becomes untyped).
fn typed_family(
    exp: &Exposition<'_>,
    f: &Family<'_>,
    help: String,
    target: &str,
    budget: &mut Budget,
) -> PassFamily {
    let samples = exp.family_samples(f);
    let all_total = samples
        .iter()
        .filter(|s| s.suffix != Suffix::Created)
        .all(|s| s.name.ends_with("_total") && s.value >= 0.0);
    let (name, typ) = match f.typ {
        MetricType::Counter if all_total => (
            samples
                .iter()
                .find(|s| s.suffix != Suffix::Created)
                .map(|s| s.name.strip_suffix("_total").unwrap_or(s.name))
                .unwrap_or(f.base_name())
                .to_string(),
            PassType::Counter,
        ),
        MetricType::Counter => (f.name.to_string(), PassType::Unknown),
        MetricType::Info => (f.name.to_string(), PassType::Info),
        _ => (f.name.to_string(), PassType::Gauge),
    };
    let mut pf = PassFamily {
        name,
        help,
        typ,
        series: Vec::new(),
    };
    for s in samples.iter().filter(|s| s.suffix != Suffix::Created) {
        if !budget.take(1) {
            continue;
        }
        pf.series.push(PassSeries {
            labels: relabel(target, &labels_of(exp, s)),
            value: PassValue::Scalar(s.value),
        });
    }
    pf
}

/// Any other family: one untyped family per sample name keeps every name exactly.
fn untyped_families(
    exp: &Exposition<'_>,
    f: &Family<'_>,
    help: String,
    target: &str,
    budget: &mut Budget,
) -> Vec<PassFamily> {
    let mut fams: Vec<PassFamily> = Vec::new();
    for s in exp
        .family_samples(f)
        .iter()
        .filter(|s| s.suffix != Suffix::Created)
    {
        if !budget.take(1) {
            continue;
        }
        let series = PassSeries {
            labels: relabel(target, &labels_of(exp, s)),
            value: PassValue::Scalar(s.value),
        };
        match fams.iter_mut().find(|p| p.name == s.name) {
            Some(p) => p.series.push(series),
            None => fams.push(PassFamily {
                name: s.name.to_string(),
                help: help.clone(),
                typ: PassType::Unknown,
                series: vec![series],
            }),
        }
    }
    fams
}

/// Adds a family to the pass-through unless it is left empty or its exported name is taken.
fn admit(out: &mut PassThrough, seen_names: &mut HashSet<String>, mut pf: PassFamily) {
    // Renaming `target` can make two upstream series one (`{target="x"}` and
    // `{exported_target="x"}`): keep the first.
    let mut keys: HashSet<Vec<(String, String)>> = HashSet::new();
    let before = pf.series.len();
    pf.series.retain(|s| {
        let mut k = s.labels.clone();
        k.sort();
        keys.insert(k)
    });
    out.dropped_series += (before - pf.series.len()) as u64;
    if pf.series.is_empty() {
        return;
    }
    // Two upstream families that would encode under one name: keep the first.
    let exported = match pf.typ {
        PassType::Counter => format!("{}_total", pf.name),
        PassType::Info => format!("{}_info", pf.name),
        _ => pf.name.clone(),
    };
    if !seen_names.insert(exported) {
        out.dropped_series += pf.series.len() as u64;
        return;
    }
    out.families.push(pf);
}
