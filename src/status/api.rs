//! `GET /api/v1/status`: the history as JSON (schema: docs/status-api.md).
//!
//! Non-finite values (`NaN`: no value at that sample) are written as `null`.

use std::collections::BTreeMap;

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

impl StatusHistory {
    /// The whole document.
    pub fn to_json(&self) -> Value {
        let Ok(shared) = self.shared.lock() else {
            return json!({"version": VERSION, "error": "status history unavailable"});
        };
        let ring = &shared.ring;
        let latest = shared.latest.as_ref();
        let mut groups = Groups::of(ring, latest);
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
            "timestamps": ring.timestamps().iter().map(|v| num(*v)).collect::<Vec<_>>(),
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
    fn of(ring: &super::ring::Ring, latest: Option<&super::collect::Sample>) -> Self {
        let mut groups: BTreeMap<Group, (Obj, Obj)> = BTreeMap::new();
        for ((g, name), values) in ring.series() {
            let arr: Vec<Value> = values.iter().map(|v| num(*v)).collect();
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
}
