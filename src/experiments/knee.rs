//! Saturation knee, over-saturation and SLO goodput detection over the levels of a sweep.
//!
//! A level is summarised as a [`LevelPoint`]: the offered load (concurrency or request rate),
//! the achieved throughput and a latency. Between two consecutive levels the *scaling
//! efficiency* is `(ΔT/T) / (Δx/x)`: the relative throughput gain divided by the relative load
//! increase. Below saturation a server turns extra load into throughput (efficiency ≈ 1); past
//! it, throughput stays flat and latency climbs instead (Little's law: in a closed loop
//! `latency = concurrency / throughput`). The **knee** is the last level before the first step
//! whose efficiency falls below [`KneeParams::min_efficiency`] *while* latency grows by more
//! than [`KneeParams::min_latency_growth`].

use serde::{Deserialize, Serialize};

/// One level of a sweep, as the knee detector sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelPoint {
    /// Offered load: concurrency, or requests per second.
    pub load: f64,
    /// Achieved throughput (output tokens per second, or requests per second).
    pub throughput: f64,
    /// A latency that climbs past saturation (e.g. end-to-end p50), seconds.
    pub latency: Option<f64>,
    /// Failed requests over all requests of the level, 0–1.
    pub error_rate: f64,
}

/// Thresholds of the knee detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KneeParams {
    /// A step whose scaling efficiency is below this is "not scaling" (default 0.5).
    pub min_efficiency: f64,
    /// ... and it must raise latency by more than this fraction (default 0.10 = 10 %).
    pub min_latency_growth: f64,
    /// Stop the sweep after this many consecutive non-scaling steps past the knee (default 2).
    pub stop_after: usize,
    /// Stop the sweep when a level's error rate reaches this (default 0.5).
    pub stop_error_rate: f64,
}

impl Default for KneeParams {
    fn default() -> Self {
        Self {
            min_efficiency: 0.5,
            min_latency_growth: 0.10,
            stop_after: 2,
            stop_error_rate: 0.5,
        }
    }
}

/// Where a sweep saturated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knee {
    /// Index of the knee level in the report's `levels`.
    pub level_index: usize,
    /// The knee level's offered load.
    pub load: f64,
    /// Scaling efficiency of the step that followed the knee.
    pub next_step_efficiency: f64,
    /// Relative latency growth of the step that followed the knee.
    pub next_step_latency_growth: f64,
    /// One sentence for people.
    pub explanation: String,
}

/// Scaling efficiency and latency growth of the step `a → b`; `None` when the step is not an
/// increase of load or a throughput/latency is missing or zero.
pub fn step(a: &LevelPoint, b: &LevelPoint) -> Option<(f64, f64)> {
    if !(a.load > 0.0 && b.load > a.load && a.throughput > 0.0) {
        return None;
    }
    let rel_load = b.load / a.load - 1.0;
    let rel_tp = b.throughput / a.throughput - 1.0;
    let eff = rel_tp / rel_load;
    let growth = match (a.latency, b.latency) {
        (Some(la), Some(lb)) if la > 0.0 => lb / la - 1.0,
        // Every request of the higher level failed: latency unknown, treat as climbing.
        (Some(_), None) => f64::INFINITY,
        _ => return None,
    };
    Some((eff, growth))
}

fn not_scaling(a: &LevelPoint, b: &LevelPoint, p: &KneeParams) -> Option<(f64, f64)> {
    let (eff, growth) = step(a, b)?;
    (eff < p.min_efficiency && growth > p.min_latency_growth).then_some((eff, growth))
}

/// Finds the saturation knee of `points` (ordered by increasing load), if the sweep reached it.
pub fn find_knee(points: &[LevelPoint], p: &KneeParams) -> Option<Knee> {
    for (i, w) in points.windows(2).enumerate() {
        let (a, b) = (&w[0], &w[1]);
        if let Some((eff, growth)) = not_scaling(a, b, p) {
            return Some(Knee {
                level_index: i,
                load: a.load,
                next_step_efficiency: eff,
                next_step_latency_growth: growth,
                explanation: format!(
                    "going from {} to {} changed throughput by {:+.0}% while latency rose {:+.0}%",
                    fmt_load(a.load),
                    fmt_load(b.load),
                    (b.throughput / a.throughput - 1.0) * 100.0,
                    if growth.is_finite() {
                        growth * 100.0
                    } else {
                        f64::INFINITY
                    },
                ),
            });
        }
    }
    None
}

/// Whether the sweep can stop: the server is over-saturated (the last
/// [`KneeParams::stop_after`] steps all failed to scale) or the last level mostly failed.
pub fn over_saturated(points: &[LevelPoint], p: &KneeParams) -> bool {
    if points
        .last()
        .is_some_and(|l| l.error_rate >= p.stop_error_rate)
    {
        return true;
    }
    if p.stop_after == 0 || points.len() < p.stop_after + 1 {
        return false;
    }
    points[points.len() - p.stop_after - 1..]
        .windows(2)
        .all(|w| not_scaling(&w[0], &w[1], p).is_some())
}

fn fmt_load(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// Service-level objectives a request must meet to count towards goodput. A threshold left
/// `None` is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token, seconds.
    pub ttft_s: Option<f64>,
    /// Time per output token (after the first), seconds.
    pub tpot_s: Option<f64>,
    /// End-to-end latency, seconds.
    pub e2e_s: Option<f64>,
}

impl Slo {
    /// Whether any threshold is set.
    pub fn is_set(&self) -> bool {
        self.ttft_s.is_some() || self.tpot_s.is_some() || self.e2e_s.is_some()
    }

    /// Whether one successful request met every set threshold. A metric the request lacks
    /// (e.g. TPOT of a one-token answer) passes that threshold only if it is not set.
    pub fn met_by(&self, ttft: Option<f64>, tpot: Option<f64>, e2e: Option<f64>) -> bool {
        fn ok(limit: Option<f64>, v: Option<f64>) -> bool {
            match (limit, v) {
                (None, _) => true,
                (Some(l), Some(v)) => v <= l,
                (Some(_), None) => false,
            }
        }
        // TPOT is undefined for a single output token: such a request has no decode phase to
        // judge, so it meets a TPOT objective vacuously.
        let tpot_ok = self.tpot_s.is_none() || tpot.is_none_or(|v| ok(self.tpot_s, Some(v)));
        ok(self.ttft_s, ttft) && tpot_ok && ok(self.e2e_s, e2e)
    }
}

/// Picks the highest-load level whose SLO attainment (share of its requests, failures
/// included, that met every objective) is at least `min_attainment`. `attainment[i]` belongs
/// to the level of load `loads[i]`.
pub fn highest_meeting(loads: &[f64], attainment: &[f64], min_attainment: f64) -> Option<usize> {
    loads
        .iter()
        .zip(attainment)
        .enumerate()
        .filter(|(_, (_, a))| **a >= min_attainment)
        .max_by(|(_, (la, _)), (_, (lb, _))| la.total_cmp(lb))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed loop against a server that runs at most `cap` sequences, each taking `s`
    /// seconds alone: throughput c/s up to cap, then flat; latency s, then c/cap·s.
    fn closed_loop(cap: f64, loads: &[f64]) -> Vec<LevelPoint> {
        let s = 0.1;
        loads
            .iter()
            .map(|&c| {
                let tp = c.min(cap) / s;
                LevelPoint {
                    load: c,
                    throughput: tp,
                    latency: Some(c / tp),
                    error_rate: 0.0,
                }
            })
            .collect()
    }

    #[test]
    fn knee_at_capacity_of_a_closed_loop() {
        let pts = closed_loop(8.0, &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        let k = find_knee(&pts, &KneeParams::default()).unwrap();
        assert_eq!(k.load, 8.0);
        assert_eq!(k.level_index, 3);
        assert!(k.next_step_efficiency.abs() < 1e-9);
        assert!((k.next_step_latency_growth - 1.0).abs() < 1e-9);
        let pts = closed_loop(6.0, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(find_knee(&pts, &KneeParams::default()).unwrap().load, 6.0);
    }

    #[test]
    fn no_knee_while_scaling() {
        let pts = closed_loop(100.0, &[1.0, 2.0, 4.0, 8.0]);
        assert!(find_knee(&pts, &KneeParams::default()).is_none());
        assert!(!over_saturated(&pts, &KneeParams::default()));
    }

    #[test]
    fn flat_throughput_without_latency_growth_is_not_a_knee() {
        // e.g. a client bottleneck: nothing climbs, nothing to blame on the server
        let pts: Vec<_> = [1.0, 2.0, 4.0]
            .iter()
            .map(|&c| LevelPoint {
                load: c,
                throughput: 10.0,
                latency: Some(0.1),
                error_rate: 0.0,
            })
            .collect();
        assert!(find_knee(&pts, &KneeParams::default()).is_none());
    }

    #[test]
    fn knee_in_a_rate_sweep() {
        // open loop: achieved follows offered up to 5 req/s, latency explodes after
        let pts: Vec<_> = [
            (1.0, 1.0, 0.2),
            (2.0, 2.0, 0.2),
            (5.0, 4.9, 0.3),
            (10.0, 5.0, 3.0),
        ]
        .iter()
        .map(|&(l, t, lat)| LevelPoint {
            load: l,
            throughput: t,
            latency: Some(lat),
            error_rate: 0.0,
        })
        .collect();
        assert_eq!(find_knee(&pts, &KneeParams::default()).unwrap().load, 5.0);
    }

    #[test]
    fn over_saturation_needs_consecutive_flat_steps() {
        let p = KneeParams::default();
        let pts = closed_loop(4.0, &[1.0, 2.0, 4.0, 8.0]);
        assert!(!over_saturated(&pts, &p), "one flat step is not enough");
        let pts = closed_loop(4.0, &[1.0, 2.0, 4.0, 8.0, 16.0]);
        assert!(over_saturated(&pts, &p));
        let mut pts = closed_loop(100.0, &[1.0, 2.0]);
        pts[1].error_rate = 0.9;
        assert!(
            over_saturated(&pts, &p),
            "a mostly failing level stops the sweep"
        );
    }

    #[test]
    fn slo_checks_each_set_threshold() {
        let slo = Slo {
            ttft_s: Some(0.5),
            tpot_s: Some(0.05),
            e2e_s: None,
        };
        assert!(slo.is_set());
        assert!(slo.met_by(Some(0.4), Some(0.04), Some(100.0)));
        assert!(!slo.met_by(Some(0.6), Some(0.04), None));
        assert!(!slo.met_by(Some(0.4), Some(0.06), None));
        assert!(
            !slo.met_by(None, Some(0.01), None),
            "missing TTFT cannot meet a TTFT SLO"
        );
        assert!(
            slo.met_by(Some(0.1), None, None),
            "single-token answer has no TPOT"
        );
        assert!(!Slo::default().is_set());
        assert!(Slo::default().met_by(None, None, None));
    }

    #[test]
    fn goodput_picks_highest_meeting_load() {
        let loads = [1.0, 2.0, 4.0, 8.0];
        let att = [1.0, 0.95, 0.91, 0.4];
        assert_eq!(highest_meeting(&loads, &att, 0.9), Some(2));
        assert_eq!(highest_meeting(&loads, &att, 0.99), Some(0));
        assert_eq!(highest_meeting(&loads, &att, 1.01), None);
    }
}
