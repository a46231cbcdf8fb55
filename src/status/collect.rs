//! One sample: the daemon's own `/metrics` text, parsed back with [`crate::scrape::expfmt`],
//! reduced to the values the status page shows.
//!
//! Counters become rates and histograms become quantiles over a sliding window
//! ([`WINDOW_SECONDS`], like `rate(x[1m])` and `histogram_quantile(q, sum by (le)
//! (rate(x_bucket[1m])))`): the collector keeps, per counter and histogram, the cumulative
//! values of the samples inside the window (a handful) and differences the newest against the
//! oldest. Probe histograms are summed over `model`, `workload` and `endpoint` per target.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::scrape::expfmt::{self, Exposition, Family, Format, MetricType};

use super::ring::{Group, SeriesKey};

/// Width of the rate and quantile window.
pub const WINDOW_SECONDS: f64 = 60.0;
/// Quantiles charted for latency histograms.
pub const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")];

/// A cumulative histogram: `(le, count)` sorted by `le` (the last is `+Inf`), sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Hist {
    /// Adds another series' buckets (same `le` set or not) into this one.
    fn add(&mut self, buckets: &[(f64, f64)], sum: f64, count: f64) {
        for &(le, c) in buckets {
            match self.buckets.binary_search_by(|b| b.0.total_cmp(&le)) {
                Ok(i) => self.buckets[i].1 += c,
                Err(i) => self.buckets.insert(i, (le, c)),
            }
        }
        self.sum += sum;
        self.count += count;
    }

    /// `self − older`, bucket by bucket; `self` whole when a count went down (a reset).
    fn since(&self, older: &Hist) -> Hist {
        let mut out = self.clone();
        for b in &mut out.buckets {
            let old = older
                .buckets
                .iter()
                .find(|o| o.0 == b.0)
                .map_or(0.0, |o| o.1);
            if b.1 < old {
                return self.clone();
            }
            b.1 -= old;
        }
        out.sum -= older.sum;
        out.count -= older.count;
        if out.count < 0.0 {
            return self.clone();
        }
        out
    }
}

/// `histogram_quantile`: linear interpolation inside the bucket holding rank `q × total`; the
/// lowest bucket starts at 0; a rank in the `+Inf` bucket gives the highest finite bound.
/// `NaN` when there is no observation.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(last_le, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total <= 0.0 || total.is_nan() || last_le != f64::INFINITY {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0_f64, 0.0_f64);
    for (i, &(le, c)) in buckets.iter().enumerate() {
        // Counts are cumulative; a non-monotonic exposition is made monotonic.
        let c = c.max(below);
        if c >= rank {
            if le.is_infinite() {
                return lower;
            }
            if i == 0 && le <= 0.0 {
                return le;
            }
            if c == below {
                return le;
            }
            return lower + (le - lower) * (rank - below) / (c - below);
        }
        lower = le;
        below = c;
    }
    f64::NAN
}

/// What the GPU section says when there is no device to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuState {
    /// `gpu.enabled = false` or `--no-gpu`.
    Disabled,
    /// Sampling is on but NVML is absent or failed (`vllm_sentinel_gpu_up` 0 or absent).
    Unavailable,
    Ok,
}

/// Labels of a GPU shown beside its charts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GpuMeta {
    pub name: String,
    pub uuid: String,
    /// Clock-event (throttle) reasons active at the sample.
    pub throttle_reasons: Vec<String>,
}

/// One reduced sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Unix seconds, read just before the registry was encoded.
    pub ts: f64,
    /// Values charted over time.
    pub series: Vec<(SeriesKey, f64)>,
    /// Every value of this sample (the charted ones and scalars such as cumulative counts).
    pub latest: BTreeMap<Group, BTreeMap<String, f64>>,
    pub gpus: BTreeMap<String, GpuMeta>,
    pub gpu_up: Option<f64>,
    /// Per target: since when (unix s) it has been unreachable (model discovery or the
    /// server's `/metrics` failing), while it is.
    pub unreachable_since: BTreeMap<String, f64>,
}

impl Sample {
    fn put(&mut self, g: &Group, name: &str, v: f64, chart: bool) {
        if v.is_nan() {
            return;
        }
        self.latest
            .entry(g.clone())
            .or_default()
            .insert(name.to_string(), v);
        if chart {
            self.series.push(((g.clone(), name.to_string()), v));
        }
    }
}

/// Window state carried from one sample to the next.
#[derive(Debug, Default)]
pub struct Collector {
    hists: HashMap<(Group, &'static str), VecDeque<(f64, Hist)>>,
    counters: HashMap<(Group, String), VecDeque<(f64, f64)>>,
    unreachable_since: HashMap<String, f64>,
}

/// Pushes `(ts, v)` and drops entries older than needed: the front stays the newest entry at or
/// before `ts − WINDOW_SECONDS` (or the oldest there is).
fn window_push<T>(q: &mut VecDeque<(f64, T)>, ts: f64, v: T) {
    q.push_back((ts, v));
    while q.len() > 2 && q[1].0 <= ts - WINDOW_SECONDS {
        q.pop_front();
    }
}

type Agg<'a> = BTreeMap<(String, String), f64>;

impl Collector {
    /// Reduces one encoding of the registry taken at `ts`.
    pub fn sample(&mut self, text: &str, ts: f64) -> Sample {
        let exp = expfmt::parse(text, Format::Prometheus);
        let mut out = Sample {
            ts,
            ..Sample::default()
        };
        let mut seen = Seen::default();
        self.sample_targets(&exp, ts, &mut out, &mut seen);
        self.sample_gpus(&exp, &mut out);
        self.sample_prober(&exp, ts, &mut out, &mut seen);
        self.sample_traffic(&exp, ts, &mut out, &mut seen);
        // Forget window state of series that are gone.
        self.hists.retain(|k, _| seen.h.contains(k));
        self.counters.retain(|k, _| seen.c.contains(k));
        out
    }

    /// Targets: probe, canary, server side.
    fn sample_targets(&mut self, exp: &Exposition<'_>, ts: f64, out: &mut Sample, seen: &mut Seen) {
        let a = TargetAggs::read(exp);
        let names = target_names(exp);
        for t in &names {
            let g = Group::Target(t.clone());
            let one = |m: &Agg<'_>| m.get(&(t.clone(), String::new())).copied();
            for ((tt, outcome), v) in a.requests.iter().filter(|((tt, _), _)| tt == t) {
                let _ = tt;
                out.put(&g, &format!("requests_total.{outcome}"), *v, false);
                // `ok` and `context_length` are always charted; other outcomes once they happen.
                if *v > 0.0 || outcome == "ok" || outcome == "context_length" {
                    let r = self.rate(&g, &format!("requests.{outcome}"), ts, *v, &mut seen.c);
                    out.put(&g, &format!("requests_per_second.{outcome}"), r, true);
                }
            }
            for (name, m, chart) in [
                ("in_flight", &a.in_flight, true),
                ("discovered", &a.discovered, false),
                ("upstream_up", &a.up, false),
                ("target_concurrency", &a.concurrency, false),
                ("target_rate", &a.rate, false),
                ("max_model_len_tokens", &a.mml, false),
                ("max_prompt_served_tokens", &a.served, false),
                ("limit_honoured", &a.honoured, false),
                ("kv_cache_usage_ratio", &a.kv, true),
                ("requests_running", &a.running, true),
                ("requests_waiting", &a.waiting, true),
                ("server_window_mean_ttft_seconds", &a.w_ttft, true),
                ("server_window_mean_queue_seconds", &a.w_queue, true),
                ("server_window_mean_prefill_seconds", &a.w_prefill, true),
            ] {
                if let Some(v) = one(m) {
                    out.put(&g, name, v, chart);
                }
            }
            for (short, per_target) in &a.probe_h {
                if let Some(h) = per_target.get(t) {
                    self.quantiles(out, &g, short, ts, h.clone(), &mut seen.h);
                }
            }
            let unreachable = one(&a.up) == Some(0.0) || one(&a.discovered) == Some(0.0);
            if unreachable {
                let since = *self.unreachable_since.entry(t.clone()).or_insert(ts);
                out.unreachable_since.insert(t.clone(), since);
            } else {
                self.unreachable_since.remove(t);
            }
        }
        self.unreachable_since.retain(|t, _| names.contains(t));
    }

    /// GPUs: the main gauges per GPU, and the active throttle reasons.
    fn sample_gpus(&mut self, exp: &Exposition<'_>, out: &mut Sample) {
        out.gpu_up = family(exp, "vllm_sentinel_gpu_up")
            .and_then(|f| exp.family_samples(f).first().map(|s| s.value));
        let gpu_fields = [
            ("memory_used_bytes", "vllm_sentinel_gpu_memory_used_bytes"),
            ("memory_total_bytes", "vllm_sentinel_gpu_memory_total_bytes"),
            ("utilization_ratio", "vllm_sentinel_gpu_utilization_ratio"),
            ("power_watts", "vllm_sentinel_gpu_power_watts"),
            ("power_limit_watts", "vllm_sentinel_gpu_power_limit_watts"),
            (
                "temperature_celsius",
                "vllm_sentinel_gpu_temperature_celsius",
            ),
        ];
        for (short, name) in gpu_fields {
            let Some(f) = family(exp, name) else { continue };
            for s in exp.family_samples(f) {
                let Some(idx) = exp.label(s, "gpu") else {
                    continue;
                };
                let meta = out.gpus.entry(idx.to_string()).or_default();
                meta.name = exp.label(s, "name").unwrap_or("").to_string();
                meta.uuid = exp.label(s, "uuid").unwrap_or("").to_string();
                out.put(&Group::Gpu(idx.to_string()), short, s.value, true);
            }
        }
        if let Some(f) = family(exp, "vllm_sentinel_gpu_clock_event_active") {
            let mut active: BTreeMap<String, f64> = BTreeMap::new();
            for s in exp.family_samples(f) {
                let (Some(idx), Some(reason)) = (exp.label(s, "gpu"), exp.label(s, "reason"))
                else {
                    continue;
                };
                let n = active.entry(idx.to_string()).or_insert(0.0);
                // Idle is not throttling.
                if s.value > 0.0 && !reason.contains("idle") {
                    *n += 1.0;
                    out.gpus
                        .entry(idx.to_string())
                        .or_default()
                        .throttle_reasons
                        .push(reason.to_string());
                }
            }
            for (idx, n) in active {
                out.put(&Group::Gpu(idx), "throttle_reasons_active", n, true);
            }
        }
    }

    /// The prober's own health and the process.
    fn sample_prober(&mut self, exp: &Exposition<'_>, ts: f64, out: &mut Sample, seen: &mut Seen) {
        let g = Group::Prober;
        if let Some(h) = hist_by(
            exp,
            family(exp, "vllm_sentinel_prober_runtime_lag_seconds"),
            "",
        )
        .remove("")
        {
            self.quantiles(out, &g, "runtime_lag_seconds", ts, h, &mut seen.h);
        }
        if let Some(f) = family(exp, "vllm_sentinel_prober_saturated") {
            let v = exp
                .family_samples(f)
                .iter()
                .map(|s| s.value)
                .fold(f64::NAN, f64::max);
            out.put(&g, "saturated", v, true);
        }
        if let Some(f) = family(exp, "vllm_sentinel_probe_dropped_arrivals") {
            let v: f64 = exp.family_samples(f).iter().map(|s| s.value).sum();
            out.put(&g, "dropped_arrivals_total", v, false);
            let r = self.rate(&g, "dropped_arrivals", ts, v, &mut seen.c);
            out.put(&g, "dropped_arrivals_per_second", r, true);
        }
        if let Some(s) = family(exp, "process_resident_memory_bytes")
            .and_then(|f| exp.family_samples(f).first().copied())
        {
            out.put(&g, "resident_memory_bytes", s.value, true);
        }
        if let Some(s) =
            family(exp, "process_cpu_seconds").and_then(|f| exp.family_samples(f).first().copied())
        {
            out.put(&g, "cpu_seconds_total", s.value, false);
            let r = self.rate(&g, "cpu", ts, s.value, &mut seen.c);
            out.put(&g, "cpu_cores", r, true);
        }
    }

    /// The tap (users' traffic).
    fn sample_traffic(&mut self, exp: &Exposition<'_>, ts: f64, out: &mut Sample, seen: &mut Seen) {
        if let Some(f) = family(exp, "vllm_sentinel_traffic_requests") {
            let m = reduce(exp, f, "target", "outcome", Reduce::Sum);
            for ((t, outcome), v) in m {
                let g = Group::Traffic(t);
                out.put(&g, &format!("requests_total.{outcome}"), v, false);
                if v > 0.0 {
                    let r = self.rate(&g, &format!("requests.{outcome}"), ts, v, &mut seen.c);
                    out.put(&g, &format!("requests_per_second.{outcome}"), r, true);
                }
            }
        }
        for (short, name) in [
            ("ttft_seconds", "vllm_sentinel_traffic_ttft_seconds"),
            ("e2e_seconds", "vllm_sentinel_traffic_e2e_seconds"),
        ] {
            for (t, h) in hist_by(exp, family(exp, name), "target") {
                self.quantiles(out, &Group::Traffic(t), short, ts, h, &mut seen.h);
            }
        }
        if let Some(f) = family(exp, "vllm_sentinel_traffic_in_flight") {
            for ((t, _), v) in reduce(exp, f, "target", "", Reduce::Sum) {
                out.put(&Group::Traffic(t), "in_flight", v, true);
            }
        }
    }

    fn rate(
        &mut self,
        g: &Group,
        key: &str,
        ts: f64,
        v: f64,
        seen: &mut HashSet<(Group, String)>,
    ) -> f64 {
        let k = (g.clone(), key.to_string());
        seen.insert(k.clone());
        let q = self.counters.entry(k).or_default();
        window_push(q, ts, v);
        let (Some(&(t0, v0)), Some(&(t1, v1))) = (q.front(), q.back()) else {
            return f64::NAN;
        };
        if t1 <= t0 {
            return f64::NAN;
        }
        let d = if v1 < v0 { v1 } else { v1 - v0 };
        d / (t1 - t0)
    }

    fn quantiles(
        &mut self,
        out: &mut Sample,
        g: &Group,
        short: &'static str,
        ts: f64,
        h: Hist,
        seen: &mut HashSet<(Group, &'static str)>,
    ) {
        let k = (g.clone(), short);
        seen.insert(k.clone());
        let q = self.hists.entry(k).or_default();
        window_push(q, ts, h);
        let (Some((t0, old)), Some((t1, new))) = (q.front(), q.back()) else {
            return;
        };
        if t1 <= t0 {
            return;
        }
        let d = new.since(old);
        for (qq, label) in QUANTILES {
            out.put(
                g,
                &format!("{short}.{label}"),
                quantile(qq, &d.buckets),
                true,
            );
        }
        if d.count > 0.0 {
            out.put(g, &format!("{short}.mean"), d.sum / d.count, true);
        }
        out.put(g, &format!("{short}.count_in_window"), d.count, false);
    }
}

#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Max,
    Min,
}

/// The series keys a sample touched: window state of any other is forgotten.
#[derive(Default)]
struct Seen {
    h: HashSet<(Group, &'static str)>,
    c: HashSet<(Group, String)>,
}

/// The first undamaged family named `name` (or with that base name).
fn family<'e, 'a>(exp: &'e Exposition<'a>, name: &str) -> Option<&'e Family<'a>> {
    exp.families
        .iter()
        .find(|f| !f.damaged && (f.name == name || f.base_name() == name))
}

/// Every target named by a probe, target, server, upstream or canary series, sorted.
fn target_names(exp: &Exposition<'_>) -> Vec<String> {
    let mut targets: HashSet<String> = HashSet::new();
    for f in exp.families.iter().filter(|f| !f.damaged) {
        if f.name.starts_with("vllm_sentinel_probe_")
            || f.name.starts_with("vllm_sentinel_target_")
            || f.name.starts_with("vllm_sentinel_server_")
            || f.name.starts_with("vllm_sentinel_upstream_")
            || f.name.starts_with("vllm_sentinel_canary_")
        {
            for s in exp.family_samples(f) {
                if let Some(t) = exp.label(s, "target") {
                    targets.insert(t.to_string());
                }
            }
        }
    }
    let mut names: Vec<String> = targets.into_iter().collect();
    names.sort();
    names
}

/// The per-target reductions of one sample.
struct TargetAggs {
    requests: Agg<'static>,
    in_flight: Agg<'static>,
    discovered: Agg<'static>,
    up: Agg<'static>,
    concurrency: Agg<'static>,
    rate: Agg<'static>,
    mml: Agg<'static>,
    served: Agg<'static>,
    honoured: Agg<'static>,
    kv: Agg<'static>,
    running: Agg<'static>,
    waiting: Agg<'static>,
    w_ttft: Agg<'static>,
    w_queue: Agg<'static>,
    w_prefill: Agg<'static>,
    probe_h: Vec<(&'static str, HashMap<String, Hist>)>,
}

impl TargetAggs {
    fn read(exp: &Exposition<'_>) -> Self {
        let by_target = |name: &str, extra: &str, how: Reduce| -> Agg<'static> {
            family(exp, name).map_or_else(BTreeMap::new, |f| reduce(exp, f, "target", extra, how))
        };
        let requests = by_target("vllm_sentinel_probe_requests", "outcome", Reduce::Sum);
        let in_flight = by_target("vllm_sentinel_probe_in_flight", "", Reduce::Sum);
        let discovered = by_target("vllm_sentinel_target_discovered", "", Reduce::Max);
        let up = by_target("vllm_sentinel_upstream_up", "", Reduce::Max);
        let concurrency = by_target("vllm_sentinel_probe_target_concurrency", "", Reduce::Sum);
        let rate = by_target("vllm_sentinel_probe_target_rate", "", Reduce::Sum);
        let mml = by_target("vllm_sentinel_canary_max_model_len_tokens", "", Reduce::Max);
        let served = by_target(
            "vllm_sentinel_canary_max_prompt_served_tokens",
            "",
            Reduce::Max,
        );
        let honoured = by_target("vllm_sentinel_canary_limit_honoured", "", Reduce::Min);
        // Several engines (data parallel): the fullest cache, the sum of requests, the
        // slowest window mean.
        let kv = by_target("vllm_sentinel_server_kv_cache_usage_ratio", "", Reduce::Max);
        let running = by_target("vllm_sentinel_server_requests_running", "", Reduce::Sum);
        let waiting = by_target("vllm_sentinel_server_requests_waiting", "", Reduce::Sum);
        let w_ttft = by_target(
            "vllm_sentinel_server_window_mean_ttft_seconds",
            "",
            Reduce::Max,
        );
        let w_queue = by_target(
            "vllm_sentinel_server_window_mean_queue_seconds",
            "",
            Reduce::Max,
        );
        let w_prefill = by_target(
            "vllm_sentinel_server_window_mean_prefill_seconds",
            "",
            Reduce::Max,
        );
        let probe_h: Vec<(&'static str, HashMap<String, Hist>)> = [
            ("ttft_seconds", "vllm_sentinel_probe_ttft_seconds"),
            ("itl_seconds", "vllm_sentinel_probe_itl_seconds"),
            ("e2e_seconds", "vllm_sentinel_probe_e2e_seconds"),
        ]
        .into_iter()
        .map(|(short, name)| (short, hist_by(exp, family(exp, name), "target")))
        .collect();

        Self {
            requests,
            in_flight,
            discovered,
            up,
            concurrency,
            rate,
            mml,
            served,
            honoured,
            kv,
            running,
            waiting,
            w_ttft,
            w_queue,
            w_prefill,
            probe_h,
        }
    }
}

/// Values of a gauge or counter family reduced over every label but `by` and `extra` (when not
/// empty): `(by value, extra value) → value`.
fn reduce<'a>(exp: &Exposition<'a>, f: &Family<'a>, by: &str, extra: &str, how: Reduce) -> Agg<'a> {
    let mut out: Agg<'a> = BTreeMap::new();
    if !matches!(
        f.typ,
        MetricType::Gauge | MetricType::Counter | MetricType::Unknown
    ) {
        return out;
    }
    for s in exp.family_samples(f) {
        if s.suffix == expfmt::Suffix::Created || s.value.is_nan() {
            continue;
        }
        let Some(b) = exp.label(s, by) else { continue };
        let e = if extra.is_empty() {
            String::new()
        } else {
            match exp.label(s, extra) {
                Some(e) => e.to_string(),
                None => continue,
            }
        };
        let slot = out.entry((b.to_string(), e));
        let v = s.value;
        match slot {
            std::collections::btree_map::Entry::Vacant(x) => {
                x.insert(v);
            }
            std::collections::btree_map::Entry::Occupied(mut x) => {
                let cur = x.get_mut();
                *cur = match how {
                    Reduce::Sum => *cur + v,
                    Reduce::Max => cur.max(v),
                    Reduce::Min => cur.min(v),
                };
            }
        }
    }
    out
}

/// A histogram family summed per value of label `by` (`""`: everything into key `""`).
fn hist_by(exp: &Exposition<'_>, f: Option<&Family<'_>>, by: &str) -> HashMap<String, Hist> {
    let mut out: HashMap<String, Hist> = HashMap::new();
    let Some(f) = f else { return out };
    if f.typ != MetricType::Histogram {
        return out;
    }
    let Ok(series) = expfmt::group_histograms(exp, f) else {
        return out;
    };
    for s in series {
        let key = if by.is_empty() {
            String::new()
        } else {
            match s.labels.iter().find(|(n, _)| *n == by) {
                Some((_, v)) => v.to_string(),
                None => continue,
            }
        };
        out.entry(key)
            .or_default()
            .add(&s.buckets, s.sum.unwrap_or(0.0), s.count.unwrap_or(0.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn quantile_interpolates_like_histogram_quantile() {
        // 10 observations: 4 ≤ 0.1, 4 in (0.1, 0.5], 2 in (0.5, 1].
        let b = [(0.1, 4.0), (0.5, 8.0), (1.0, 10.0), (INF, 10.0)];
        assert!((quantile(0.5, &b) - 0.2).abs() < 1e-12);
        assert!((quantile(0.2, &b) - 0.05).abs() < 1e-12);
        assert!((quantile(0.9, &b) - 0.75).abs() < 1e-12);
        // A rank in +Inf gives the highest finite bound.
        let b = [(0.1, 1.0), (INF, 10.0)];
        assert_eq!(quantile(0.99, &b), 0.1);
        assert!(quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]).is_nan());
        assert!(quantile(0.5, &[]).is_nan());
    }

    fn body(ok: u64, fast: u64, slow: u64) -> String {
        let total = fast + slow;
        format!(
            "# TYPE vllm_sentinel_probe_requests_total counter\n\
vllm_sentinel_probe_requests_total{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\",outcome=\"ok\"}} {ok}\n\
vllm_sentinel_probe_requests_total{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\",outcome=\"context_length\"}} 0\n\
# TYPE vllm_sentinel_probe_ttft_seconds histogram\n\
vllm_sentinel_probe_ttft_seconds_bucket{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\",le=\"0.1\"}} {fast}\n\
vllm_sentinel_probe_ttft_seconds_bucket{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\",le=\"1\"}} {total}\n\
vllm_sentinel_probe_ttft_seconds_bucket{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\",le=\"+Inf\"}} {total}\n\
vllm_sentinel_probe_ttft_seconds_sum{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\"}} 1\n\
vllm_sentinel_probe_ttft_seconds_count{{target=\"a\",model=\"m\",workload=\"w\",endpoint=\"chat\"}} {total}\n\
# TYPE vllm_sentinel_target_discovered gauge\n\
vllm_sentinel_target_discovered{{target=\"a\"}} 1\n\
# TYPE vllm_sentinel_upstream_up gauge\n\
vllm_sentinel_upstream_up{{target=\"a\"}} 1\n"
        )
    }

    #[test]
    fn rates_and_quantiles_come_from_deltas_within_the_window() {
        let mut c = Collector::default();
        let g = Group::Target("a".into());
        // Before the window: 100 fast requests.
        let s0 = c.sample(&body(100, 100, 0), 1000.0);
        assert_eq!(s0.latest[&g]["requests_total.ok"], 100.0);
        assert!(!s0.latest[&g].contains_key("requests_per_second.ok"));
        // 10 s later: 20 more, all slow; the window sees only those.
        let s1 = c.sample(&body(120, 100, 20), 1010.0);
        assert_eq!(s1.latest[&g]["requests_per_second.ok"], 2.0);
        let p50 = s1.latest[&g]["ttft_seconds.p50"];
        assert!((p50 - 0.55).abs() < 1e-9, "{p50}");
        // context_length is charted (at 0) before it ever happens.
        assert_eq!(s1.latest[&g]["requests_per_second.context_length"], 0.0);
        assert_eq!(s1.latest[&g]["requests_total.context_length"], 0.0);
        // 70 s later the slow ones have left the window: only fast ones since 1010.
        let s2 = c.sample(&body(220, 200, 20), 1080.0);
        assert!((s2.latest[&g]["ttft_seconds.p50"] - 0.05).abs() < 1e-9);
        assert!((s2.latest[&g]["requests_per_second.ok"] - 100.0 / 70.0).abs() < 1e-9);
        assert!(s2.unreachable_since.is_empty());
    }

    #[test]
    fn tap_traffic_is_grouped_per_target_with_rates_and_quantiles() {
        let text = |n: u64| {
            format!(
                "# TYPE vllm_sentinel_traffic_requests_total counter\n\
vllm_sentinel_traffic_requests_total{{target=\"a\",model=\"m\",endpoint=\"chat\",stream=\"true\",outcome=\"ok\"}} {n}\n\
vllm_sentinel_traffic_requests_total{{target=\"a\",model=\"other\",endpoint=\"chat\",stream=\"false\",outcome=\"ok\"}} {n}\n\
vllm_sentinel_traffic_requests_total{{target=\"a\",model=\"m\",endpoint=\"chat\",stream=\"true\",outcome=\"overloaded\"}} 0\n\
# TYPE vllm_sentinel_traffic_e2e_seconds histogram\n\
vllm_sentinel_traffic_e2e_seconds_bucket{{target=\"a\",model=\"m\",endpoint=\"chat\",stream=\"true\",le=\"1\"}} {n}\n\
vllm_sentinel_traffic_e2e_seconds_bucket{{target=\"a\",model=\"m\",endpoint=\"chat\",stream=\"true\",le=\"+Inf\"}} {n}\n\
vllm_sentinel_traffic_e2e_seconds_sum{{target=\"a\",model=\"m\",endpoint=\"chat\",stream=\"true\"}} 0\n\
vllm_sentinel_traffic_e2e_seconds_count{{target=\"a\",model=\"m\",endpoint=\"chat\",stream=\"true\"}} {n}\n"
            )
        };
        let mut c = Collector::default();
        c.sample(&text(10), 0.0);
        let s = c.sample(&text(30), 10.0);
        let g = &s.latest[&Group::Traffic("a".into())];
        assert_eq!(g["requests_total.ok"], 60.0);
        assert_eq!(g["requests_per_second.ok"], 4.0);
        assert!(!g.contains_key("requests_per_second.overloaded"));
        assert_eq!(g["e2e_seconds.p50"], 0.5);
        // Traffic does not create a probe target.
        assert!(!s.latest.contains_key(&Group::Target("a".into())));
    }

    #[test]
    fn an_unreachable_target_keeps_the_time_it_went_away() {
        let mut c = Collector::default();
        let down =
            body(1, 1, 0).replace("upstream_up{target=\"a\"} 1", "upstream_up{target=\"a\"} 0");
        assert_eq!(c.sample(&down, 5.0).unreachable_since["a"], 5.0);
        assert_eq!(c.sample(&down, 10.0).unreachable_since["a"], 5.0);
        assert!(c.sample(&body(1, 1, 0), 15.0).unreachable_since.is_empty());
    }
}
