//! The fixed-size history behind the status page: one ring of sample timestamps shared by every
//! series, and per series a ring of `f64` of the same length (`NaN` where the series had no value
//! at that sample).
//!
//! Bounds: at most [`CAPACITY`] samples and [`MAX_SERIES`] series. A series that would be created
//! past the cap is left out (and counted in [`Ring::dropped_series`]); a series whose every
//! value in the window is `NaN` (a target removed by a reload, a GPU gone) is deleted. Each
//! series holds one allocation of `CAPACITY + 1` values, so the values take at most
//! `MAX_SERIES × (CAPACITY + 1) × 8` bytes; [`Ring::approx_bytes`] reports the actual figure.

use std::collections::{BTreeMap, VecDeque};

/// Samples kept: 30 minutes at the default `server.status_interval` of 5 s.
pub const CAPACITY: usize = 360;
/// Series kept at most (all groups together).
pub const MAX_SERIES: usize = 2048;

/// What a series belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// A configured target (probe, canary and server-side series).
    Target(String),
    /// A GPU, by NVML index.
    Gpu(String),
    /// The prober's own health.
    Prober,
    /// Users' real traffic through the tap, per target.
    Traffic(String),
}

/// Key of one series.
pub type SeriesKey = (Group, String);

/// The history: timestamps and per-series values, oldest first.
#[derive(Debug)]
pub struct Ring {
    cap: usize,
    max_series: usize,
    timestamps: VecDeque<f64>,
    series: BTreeMap<SeriesKey, VecDeque<f64>>,
    dropped_series: u64,
    seq: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self::new(CAPACITY, MAX_SERIES)
    }
}

impl Ring {
    pub fn new(cap: usize, max_series: usize) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            max_series,
            timestamps: VecDeque::with_capacity(cap + 1),
            series: BTreeMap::new(),
            dropped_series: 0,
            seq: 0,
        }
    }

    /// Appends one sample taken at `ts` (unix seconds): `values` holds each series' value; a
    /// series not named gets `NaN`.
    pub fn push(&mut self, ts: f64, values: impl IntoIterator<Item = (SeriesKey, f64)>) {
        self.seq += 1;
        self.timestamps.push_back(ts);
        if self.timestamps.len() > self.cap {
            self.timestamps.pop_front();
            for s in self.series.values_mut() {
                s.pop_front();
            }
        }
        // Every series now holds `len − 1` values; this sample adds one to each.
        let len = self.timestamps.len();
        for (key, v) in values {
            if let Some(s) = self.series.get_mut(&key) {
                if s.len() < len {
                    s.push_back(v);
                } else if let Some(last) = s.back_mut() {
                    // The same key twice in one sample: the last value wins.
                    *last = v;
                }
                continue;
            }
            if v.is_nan() {
                continue;
            }
            if self.series.len() >= self.max_series {
                self.dropped_series += 1;
                continue;
            }
            let mut s = VecDeque::with_capacity(self.cap + 1);
            s.extend(std::iter::repeat_n(f64::NAN, len - 1));
            s.push_back(v);
            self.series.insert(key, s);
        }
        self.series.retain(|_, s| {
            if s.len() < len {
                s.push_back(f64::NAN);
            }
            s.iter().any(|v| !v.is_nan())
        });
    }

    pub fn timestamps(&self) -> &VecDeque<f64> {
        &self.timestamps
    }

    /// Samples taken since start (also those that have left the ring).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn series(&self) -> &BTreeMap<SeriesKey, VecDeque<f64>> {
        &self.series
    }

    /// Series refused because [`MAX_SERIES`] was reached.
    pub fn dropped_series(&self) -> u64 {
        self.dropped_series
    }

    /// Bytes held by the values and timestamps (allocated capacity) and the keys.
    pub fn approx_bytes(&self) -> usize {
        let per_value = std::mem::size_of::<f64>();
        let keys: usize = self
            .series
            .keys()
            .map(|(g, n)| {
                n.capacity()
                    + match g {
                        Group::Target(s) | Group::Gpu(s) | Group::Traffic(s) => s.capacity(),
                        Group::Prober => 0,
                    }
            })
            .sum();
        self.timestamps.capacity() * per_value
            + self
                .series
                .values()
                .map(|s| s.capacity() * per_value + SERIES_OVERHEAD)
                .sum::<usize>()
            + keys
    }
}

/// Per-series bookkeeping besides values and key text: the key and deque headers and the
/// BTreeMap node share (an upper estimate).
pub const SERIES_OVERHEAD: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> SeriesKey {
        (Group::Prober, n.to_string())
    }

    #[test]
    fn keeps_at_most_capacity_samples_aligned_with_timestamps() {
        let mut r = Ring::new(3, 10);
        for i in 0..5 {
            r.push(i as f64, [(k("a"), i as f64 * 10.0)]);
        }
        assert_eq!(
            r.timestamps().iter().copied().collect::<Vec<_>>(),
            [2.0, 3.0, 4.0]
        );
        let a: Vec<f64> = r.series()[&k("a")].iter().copied().collect();
        assert_eq!(a, [20.0, 30.0, 40.0]);
        assert_eq!(r.seq(), 5);
    }

    #[test]
    fn a_late_series_is_back_filled_and_a_missing_value_is_nan() {
        let mut r = Ring::new(4, 10);
        r.push(1.0, [(k("a"), 1.0)]);
        r.push(2.0, [(k("a"), 2.0), (k("b"), 5.0)]);
        r.push(3.0, [(k("b"), 6.0)]);
        let a: Vec<f64> = r.series()[&k("a")].iter().copied().collect();
        assert_eq!(a.len(), 3);
        assert!(a[2].is_nan());
        let b: Vec<f64> = r.series()[&k("b")].iter().copied().collect();
        assert!(b[0].is_nan());
        assert_eq!(&b[1..], [5.0, 6.0]);
    }

    #[test]
    fn a_series_that_is_nan_over_the_whole_window_is_deleted() {
        let mut r = Ring::new(2, 10);
        r.push(1.0, [(k("gone"), 1.0)]);
        r.push(2.0, []);
        assert!(r.series().contains_key(&k("gone")));
        r.push(3.0, []);
        assert!(!r.series().contains_key(&k("gone")));
    }

    #[test]
    fn the_series_cap_holds_and_is_counted() {
        let mut r = Ring::new(2, 2);
        r.push(1.0, [(k("a"), 1.0), (k("b"), 1.0), (k("c"), 1.0)]);
        assert_eq!(r.series().len(), 2);
        assert_eq!(r.dropped_series(), 1);
        // Memory stays within the stated bound: values and timestamps at capacity + 1 each.
        let bound = (2 + 1) * 8 * 3 + 2 * SERIES_OVERHEAD + 64;
        assert!(r.approx_bytes() <= bound, "{} > {bound}", r.approx_bytes());
    }
}
