//! `GET /api/v1/status`: the history as JSON (schema: docs/status-api.md).
//!
//! Non-finite values (`NaN`: no value at that sample) are written as `null`.
//!
//! Query parameters (both optional, defaults unchanged: the whole history): `since=<sample
//! timestamp>` keeps only the samples newer than it, `points=N` (1..=[`CAPACITY`]) at most the
//! last `N`; [`StatusQuery::parse`] reads them and [`StatusQuery::window`] picks the samples.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};

use super::collect::{GpuState, WINDOW_SECONDS};
use super::ring::Group;
use super::{CAPACITY, MAX_SERIES, StatusHistory};

/// Version of the JSON document; bumped on any incompatible change.
pub const VERSION: u32 = 1;

type Obj = Map<String, Value>;

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// What `GET /api/v1/status?since=..&points=..` asks for; the default is the whole history.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatusQuery {
    /// Only samples with a timestamp newer than this (unix seconds).
    pub since: Option<f64>,
    /// At most this many samples, the newest (1..=[`CAPACITY`]).
    pub points: Option<usize>,
}

/// A query parameter that could not be read: answered with 400 and this as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The parameter's name.
    pub parameter: &'static str,
    pub message: String,
}

impl QueryError {
    pub fn to_json(&self) -> Value {
        json!({"error": self.message, "parameter": self.parameter})
    }
}

/// Which samples of the ring a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Index of the first sample sent (samples `start..len` of the ring are sent).
    pub start: usize,
    /// `since` is a sample still in the ring (or the newest) and every sample after it is sent:
    /// a client that holds the history up to `since` can append this response.
    pub contiguous: bool,
}

impl StatusQuery {
    /// Reads the raw query string (`None`: no `?`). Unknown parameters are ignored; a parameter
    /// given twice, without a value or with a bad value is an error naming it.
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "since" => {
                    if q.since.is_some() {
                        return Err(twice("since"));
                    }
                    match value.parse::<f64>() {
                        Ok(v) if v.is_finite() => q.since = Some(v),
                        _ => {
                            return Err(QueryError {
                                parameter: "since",
                                message: format!(
                                    "since must be a sample timestamp (unix seconds, a finite \
                                     decimal number), got {value:?}"
                                ),
                            });
                        }
                    }
                }
                "points" => {
                    if q.points.is_some() {
                        return Err(twice("points"));
                    }
                    match value.parse::<usize>() {
                        Ok(n) if (1..=CAPACITY).contains(&n) => q.points = Some(n),
                        _ => {
                            return Err(QueryError {
                                parameter: "points",
                                message: format!(
                                    "points must be an integer from 1 to {CAPACITY}, got {value:?}"
                                ),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }

    /// The samples to send out of a ring holding `timestamps` (oldest first).
    pub fn window(&self, timestamps: &VecDeque<f64>) -> Window {
        let len = timestamps.len();
        let (mut start, mut contiguous) = match self.since {
            None => (0, false),
            // The sample the client has last: everything after it, and the client may append.
            Some(since) => match timestamps.iter().rposition(|t| *t == since) {
                Some(i) => (i + 1, true),
                // Not in the ring (older than the ring, or in the future): the samples newer
                // than it; the client has to replace what it holds.
                None => (timestamps.partition_point(|t| *t <= since), false),
            },
        };
        if let Some(points) = self.points {
            let from = len.saturating_sub(points);
            if from > start {
                start = from;
                contiguous = false;
            }
        }
        Window { start, contiguous }
    }
}

fn twice(parameter: &'static str) -> QueryError {
    QueryError {
        parameter,
        message: format!("{parameter} is given more than once"),
    }
}

impl StatusHistory {
    /// The whole document.
    pub fn to_json(&self) -> Value {
        self.to_json_with(&StatusQuery::default())
    }

    /// The document with the samples `query` asks for.
    pub fn to_json_with(&self, query: &StatusQuery) -> Value {
        let Ok(shared) = self.shared.lock() else {
            return json!({"version": VERSION, "error": "status history unavailable"});
        };
        let ring = &shared.ring;
        let latest = shared.latest.as_ref();
        let window = query.window(ring.timestamps());
        let mut groups = Groups::of(ring, latest, window.start);
        let traffic_names = groups.traffic_names();
        let mut take = |g: &Group| groups.take(g);

        let sample_ts = latest.map(|s| s.ts);
        let targets: Vec<Value> = self
            .board
            .snapshot()
            .into_iter()
            .map(|(name, t)| {
                let (series, latest_v) = take(&Group::Target(name.clone()));
                let since = latest.and_then(|s| s.unreachable_since.get(&name).copied());
                json!({
                    "name": name,
                    "url": t.url,
                    "model": t.model,
                    "metrics_up": t.up,
                    "last_error": t.last_error,
                    "unreachable_since": since.map_or(Value::Null, num),
                    "latest": latest_v,
                    "series": series,
                })
            })
            .collect();

        let gpu = self.gpu_json(latest, &mut take);
        let (p_series, p_latest) = take(&Group::Prober);
        let tap_targets: Vec<Value> = if self.tap_enabled {
            traffic_names
                .into_iter()
                .map(|t| {
                    let (series, latest_v) = take(&Group::Traffic(t.clone()));
                    json!({"name": t, "latest": latest_v, "series": series})
                })
                .collect()
        } else {
            Vec::new()
        };

        json!({
            "version": VERSION,
            "generated_at": num(super::unix_now()),
            "interval_seconds": num(self.interval.as_secs_f64()),
            "window_seconds": num(WINDOW_SECONDS),
            "capacity": CAPACITY,
            "seq": ring.seq(),
            "sample_timestamp": sample_ts.map_or(Value::Null, num),
            "ring_samples": ring.timestamps().len(),
            "contiguous": window.contiguous,
            "timestamps": ring.timestamps().range(window.start..).map(|v| num(*v)).collect::<Vec<_>>(),
            "targets": targets,
            "gpu": gpu,
            "prober": {"latest": p_latest, "series": p_series},
            "tap": {"enabled": self.tap_enabled, "targets": tap_targets},
            "memory": {
                "series": ring.series().len(),
                "max_series": MAX_SERIES,
                "dropped_series": ring.dropped_series(),
                "approx_bytes": ring.approx_bytes(),
            },
        })
    }

    /// `"gpu"`: the state, `gpu_up`, and each GPU's identity, latest values and series.
    fn gpu_json(
        &self,
        latest: Option<&super::collect::Sample>,
        take: &mut impl FnMut(&Group) -> (Value, Value),
    ) -> Value {
        let gpu_up = latest.and_then(|s| s.gpu_up);
        let gpu_meta = latest.map(|s| s.gpus.clone()).unwrap_or_default();
        let state = if !self.gpu_enabled {
            GpuState::Disabled
        } else if gpu_meta.is_empty() || gpu_up != Some(1.0) {
            GpuState::Unavailable
        } else {
            GpuState::Ok
        };
        let mut ids: Vec<&String> = gpu_meta.keys().collect();
        ids.sort_by_key(|i| (i.parse::<u64>().unwrap_or(u64::MAX), (*i).clone()));
        let devices: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let (series, latest_v) = take(&Group::Gpu(id.clone()));
                let m = &gpu_meta[id];
                json!({
                    "gpu": id,
                    "name": m.name,
                    "uuid": m.uuid,
                    "throttle_reasons": m.throttle_reasons,
                    "latest": latest_v,
                    "series": series,
                })
            })
            .collect();
        json!({
            "state": state,
            "up": gpu_up.map_or(Value::Null, num),
            "devices": devices,
        })
    }
}

/// Per group: `{"series": {name: [..]}, "latest": {name: v}}`, taken out one group at a time.
struct Groups(BTreeMap<Group, (Obj, Obj)>);

impl Groups {
    /// Series values from sample `start` on.
    fn of(ring: &super::ring::Ring, latest: Option<&super::collect::Sample>, start: usize) -> Self {
        let mut groups: BTreeMap<Group, (Obj, Obj)> = BTreeMap::new();
        for ((g, name), values) in ring.series() {
            let arr: Vec<Value> = values.iter().skip(start).map(|v| num(*v)).collect();
            groups
                .entry(g.clone())
                .or_default()
                .0
                .insert(name.clone(), Value::Array(arr));
        }
        if let Some(s) = latest {
            for (g, vals) in &s.latest {
                let e = &mut groups.entry(g.clone()).or_default().1;
                for (k, v) in vals {
                    e.insert(k.clone(), num(*v));
                }
            }
        }
        Self(groups)
    }

    /// The targets of the tap's traffic groups.
    fn traffic_names(&self) -> Vec<String> {
        self.0
            .keys()
            .filter_map(|g| match g {
                Group::Traffic(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// A group's series and latest values (empty objects when it has none).
    fn take(&mut self, g: &Group) -> (Value, Value) {
        let (series, latest) = self.0.remove(g).unwrap_or_default();
        (Value::Object(series), Value::Object(latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::StatusBoard;
    use std::time::Duration;

    #[test]
    fn document_has_version_bounds_and_aligned_series() {
        let board = StatusBoard::default();
        board.sync_targets(&[("a".into(), "http://a".into(), None)]);
        let h = StatusHistory::new(board, Duration::from_secs(5), false, false);
        let mut reg = prometheus_client::registry::Registry::default();
        let g = prometheus_client::metrics::family::Family::<
            Vec<(String, String)>,
            prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
        >::default();
        reg.register("vllm_sentinel_server_kv_cache_usage_ratio", "kv", g.clone());
        g.get_or_create(&vec![
            ("target".into(), "a".into()),
            ("model".into(), "m".into()),
        ])
        .set(0.25);
        let mut c = super::super::collect::Collector::default();
        h.sample_now(&reg, &mut c);
        g.get_or_create(&vec![
            ("target".into(), "a".into()),
            ("model".into(), "m".into()),
        ])
        .set(0.5);
        h.sample_now(&reg, &mut c);
        let v = h.to_json();
        assert_eq!(v["version"], 1);
        assert_eq!(v["capacity"], CAPACITY);
        assert_eq!(v["seq"], 2);
        assert_eq!(v["timestamps"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["sample_timestamp"], v["timestamps"][1]);
        let t = &v["targets"][0];
        assert_eq!(t["name"], "a");
        assert_eq!(t["series"]["kv_cache_usage_ratio"], json!([0.25, 0.5]));
        assert_eq!(t["latest"]["kv_cache_usage_ratio"], 0.5);
        assert_eq!(v["gpu"]["state"], "disabled");
        assert_eq!(v["tap"]["enabled"], false);
        assert_eq!(v["memory"]["series"], 1);
    }

    #[test]
    fn gpu_sampling_on_without_a_device_reads_unavailable() {
        let h = StatusHistory::new(StatusBoard::default(), Duration::from_secs(5), true, true);
        let mut reg = prometheus_client::registry::Registry::default();
        let up = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        reg.register("vllm_sentinel_gpu_up", "up", up.clone());
        h.sample_now(&reg, &mut super::super::collect::Collector::default());
        let v = h.to_json();
        assert_eq!(v["gpu"]["state"], "unavailable");
        assert_eq!(v["gpu"]["up"], 0.0);
        assert_eq!(v["gpu"]["devices"], json!([]));
        assert_eq!(v["tap"], json!({"enabled": true, "targets": []}));
    }

    fn ts(v: &[f64]) -> VecDeque<f64> {
        v.iter().copied().collect()
    }

    fn q(since: Option<f64>, points: Option<usize>) -> StatusQuery {
        StatusQuery { since, points }
    }

    #[test]
    fn query_defaults_and_values() {
        assert_eq!(StatusQuery::parse(None), Ok(StatusQuery::default()));
        assert_eq!(StatusQuery::parse(Some("")), Ok(StatusQuery::default()));
        assert_eq!(
            StatusQuery::parse(Some("since=1764645998.125&points=12")),
            Ok(q(Some(1764645998.125), Some(12)))
        );
        assert_eq!(StatusQuery::parse(Some("points=1")), Ok(q(None, Some(1))));
        assert_eq!(
            StatusQuery::parse(Some(&format!("points={CAPACITY}"))),
            Ok(q(None, Some(CAPACITY)))
        );
        // Unknown parameters (a cache buster, say) are ignored: the API only grows.
        assert_eq!(
            StatusQuery::parse(Some("_=123&since=0&&x")),
            Ok(q(Some(0.0), None))
        );
    }

    #[test]
    fn bad_query_values_name_the_parameter() {
        for (raw, param) in [
            ("points=0", "points"),
            ("points=361", "points"),
            ("points=-1", "points"),
            ("points=1.5", "points"),
            ("points=", "points"),
            ("points", "points"),
            ("points=99999999999999999999999", "points"),
            ("points=2&points=3", "points"),
            ("since=abc", "since"),
            ("since=", "since"),
            ("since=NaN", "since"),
            ("since=inf", "since"),
            ("since=1e999", "since"),
            ("since=1&since=2", "since"),
            ("points=5&since=x", "since"),
        ] {
            match StatusQuery::parse(Some(raw)) {
                Err(e) => {
                    assert_eq!(e.parameter, param, "{raw}");
                    assert_eq!(e.to_json()["parameter"], param);
                    assert!(
                        e.to_json()["error"]
                            .as_str()
                            .is_some_and(|m| m.contains(param))
                    );
                }
                Ok(v) => panic!("{raw} parsed as {v:?}"),
            }
        }
    }

    #[test]
    fn window_since_and_points() {
        let t = ts(&[10.0, 15.0, 20.0, 25.0]);
        let w = |since, points| q(since, points).window(&t);
        // No parameters: everything, and not an increment.
        assert_eq!(
            w(None, None),
            Window {
                start: 0,
                contiguous: false
            }
        );
        // since = a sample in the ring: what follows it.
        assert_eq!(
            w(Some(15.0), None),
            Window {
                start: 2,
                contiguous: true
            }
        );
        // since = the newest: nothing new, still contiguous.
        assert_eq!(
            w(Some(25.0), None),
            Window {
                start: 4,
                contiguous: true
            }
        );
        // since older than the ring: the whole ring, and the client must replace.
        assert_eq!(
            w(Some(1.0), None),
            Window {
                start: 0,
                contiguous: false
            }
        );
        // since between two samples (not one we sent): the newer ones, not contiguous.
        assert_eq!(
            w(Some(17.0), None),
            Window {
                start: 2,
                contiguous: false
            }
        );
        // since in the future: nothing.
        assert_eq!(
            w(Some(99.0), None),
            Window {
                start: 4,
                contiguous: false
            }
        );
        // points larger than the ring holds: everything.
        assert_eq!(
            w(None, Some(CAPACITY)),
            Window {
                start: 0,
                contiguous: false
            }
        );
        assert_eq!(
            w(None, Some(2)),
            Window {
                start: 2,
                contiguous: false
            }
        );
        // points cutting into what since asks for: the last N, no longer contiguous.
        assert_eq!(
            w(Some(10.0), Some(2)),
            Window {
                start: 2,
                contiguous: false
            }
        );
        // points not cutting: since decides.
        assert_eq!(
            w(Some(20.0), Some(3)),
            Window {
                start: 3,
                contiguous: true
            }
        );
        // An empty ring.
        let e = VecDeque::new();
        assert_eq!(
            q(Some(5.0), Some(3)).window(&e),
            Window {
                start: 0,
                contiguous: false
            }
        );
    }

    #[test]
    fn document_slices_every_series_with_the_timestamps() {
        let h = StatusHistory::new(StatusBoard::default(), Duration::from_secs(5), false, false);
        let mut reg = prometheus_client::registry::Registry::default();
        let g = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        reg.register("vllm_sentinel_prober_saturated", "s", g.clone());
        let mut c = super::super::collect::Collector::default();
        for i in 0..3 {
            g.set(i % 2);
            h.sample_now(&reg, &mut c);
            std::thread::sleep(Duration::from_millis(2));
        }
        let full = h.to_json();
        let stamps = full["timestamps"].as_array().cloned().unwrap_or_default();
        assert_eq!(stamps.len(), 3);
        assert_eq!(full["ring_samples"], 3);
        assert_eq!(full["contiguous"], false);
        assert_eq!(
            full["prober"]["series"]["saturated"],
            json!([0.0, 1.0, 0.0])
        );
        let first = stamps[0].as_f64();
        let inc = h.to_json_with(&q(first, None));
        assert_eq!(inc["contiguous"], true);
        assert_eq!(inc["timestamps"], json!(stamps[1..]));
        assert_eq!(inc["prober"]["series"]["saturated"], json!([1.0, 0.0]));
        // Everything else is as in the full document.
        assert_eq!(inc["prober"]["latest"], full["prober"]["latest"]);
        assert_eq!(inc["seq"], full["seq"]);
        assert_eq!(inc["sample_timestamp"], full["sample_timestamp"]);
        let last = h.to_json_with(&q(None, Some(1)));
        assert_eq!(last["timestamps"], json!([stamps[2]]));
        assert_eq!(last["prober"]["series"]["saturated"], json!([0.0]));
        let none = h.to_json_with(&q(stamps[2].as_f64(), None));
        assert_eq!(none["timestamps"], json!([]));
        assert_eq!(none["prober"]["series"]["saturated"], json!([]));
    }
}
