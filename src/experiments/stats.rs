//! Summary statistics of one-shot measurements: mean, percentiles, min and max.
//!
//! One-shot experiments keep every sample (a few thousand at most), so percentiles are exact:
//! the sorted samples are interpolated linearly between the two closest ranks (the "type 7"
//! definition that numpy and most spreadsheets use). The daemon's streaming histograms are a
//! different tool for a different job and live in the prober.

use serde::{Deserialize, Serialize};

/// Summary of one metric over a set of samples. Every value is in the metric's base unit
/// (seconds, tokens, tokens per second); all are `None` when there were no samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples summarised.
    pub count: usize,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    /// Summarises `values`; non-finite values (NaN, ±inf) are ignored.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        Self {
            count: n,
            mean: Some(mean),
            p50: percentile_sorted(&v, 50.0),
            p90: percentile_sorted(&v, 90.0),
            p99: percentile_sorted(&v, 99.0),
            min: v.first().copied(),
            max: v.last().copied(),
        }
    }

    /// Percentile `p` of this summary by name (50, 90 or 99), for tables and SLO checks.
    pub fn pct(&self, p: u8) -> Option<f64> {
        match p {
            50 => self.p50,
            90 => self.p90,
            99 => self.p99,
            _ => None,
        }
    }
}

/// Percentile `p` (0–100) of already sorted, finite values, interpolated linearly between the
/// closest ranks. `None` for an empty slice or a `p` outside 0–100.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted.get(lo)?, sorted.get(hi)?);
    Some(a + (b - a) * (rank - lo as f64))
}

/// Mean and maximum of a sampled gauge (KV-cache usage, queue depth) over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GaugeStats {
    /// Number of samples.
    pub samples: usize,
    pub mean: Option<f64>,
    pub max: Option<f64>,
}

impl GaugeStats {
    /// Mean and max of the finite values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        Self {
            samples: v.len(),
            mean: Some(v.iter().sum::<f64>() / v.len() as f64),
            max: v.iter().copied().reduce(f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&v, 100.0), Some(10.0));
        // rank 4.5 → halfway between 5 and 6
        assert_eq!(percentile_sorted(&v, 50.0), Some(5.5));
        // rank 8.1 → 9 + 0.1
        let p90 = percentile_sorted(&v, 90.0).unwrap();
        assert!((p90 - 9.1).abs() < 1e-12, "{p90}");
        assert_eq!(percentile_sorted(&v, 101.0), None);
        assert_eq!(percentile_sorted(&[], 50.0), None);
        assert_eq!(percentile_sorted(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn summary_ignores_non_finite_and_orders_input() {
        let s = Summary::of([3.0, f64::NAN, 1.0, 2.0, f64::INFINITY]);
        assert_eq!(s.count, 3);
        assert_eq!(s.mean, Some(2.0));
        assert_eq!(s.p50, Some(2.0));
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.max, Some(3.0));
        assert_eq!(s.pct(50), Some(2.0));
        assert_eq!(s.pct(75), None);
    }

    #[test]
    fn empty_summary_is_all_none() {
        let s = Summary::of(Vec::<f64>::new());
        assert_eq!(s, Summary::default());
        assert_eq!(s.count, 0);
        assert!(s.p99.is_none());
        assert_eq!(GaugeStats::of([]), GaugeStats::default());
    }

    #[test]
    fn p99_of_hundred_values() {
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        let s = Summary::of(v);
        // rank 98.01 → 98.01
        assert!((s.p99.unwrap() - 98.01).abs() < 1e-9);
        assert_eq!(s.max, Some(99.0));
    }

    #[test]
    fn gauge_stats_mean_and_max() {
        let g = GaugeStats::of([0.25, 0.5, 0.75]);
        assert_eq!(g.samples, 3);
        assert_eq!(g.mean, Some(0.5));
        assert_eq!(g.max, Some(0.75));
    }
}
