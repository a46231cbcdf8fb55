//! `sweep --rate-search`: the highest Poisson request rate whose SLO attainment reaches
//! `--slo-attainment`, between `--rate-min` and `--rate-max`.
//!
//! Each probe is one open-loop level (its warm-up, then `--duration` or `--requests`, arrivals
//! seeded by `--seed` and the probe's number, so a run is repeatable). The search first
//! brackets: `--rate-min` must pass (else there is no answer) and `--rate-max` must fail (else
//! the answer is `--rate-max`, and the report says the bracket was too low). It then bisects
//! the bracket `[highest pass, lowest fail]` at its geometric mean (rates span orders of
//! magnitude; the geometric mean halves the *ratio*) until `fail / pass − 1 ≤
//! --search-precision` or `--search-max-probes` probes have run. The answer is the highest rate
//! that passed. The logic is a pure state machine ([`Bisection`]) fed with each probe's verdict,
//! so it is tested without any load.
//!
//! Attainment need not be monotonic in the rate on a real server (noise); bisection trusts each
//! verdict, so the answer is a rate that passed with a failing rate within the precision above
//! it (unless the probe budget ran out first, which the report says).

use serde::{Deserialize, Serialize};

/// One probe of the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchProbe {
    /// Offered rate, requests per second.
    pub rate_rps: f64,
    /// Share of its requests (failures included) that met every SLO.
    pub slo_attainment: f64,
    /// Its goodput, requests per second.
    pub goodput_rps: f64,
    /// Whether the attainment reached the minimum.
    pub passed: bool,
}

/// `--rate-search`'s part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateSearch {
    pub rate_min: f64,
    pub rate_max: f64,
    /// Relative precision asked for: the search stops when the lowest failing rate is within
    /// this fraction above the highest passing one.
    pub precision: f64,
    pub max_probes: usize,
    /// Every probe, in the order run.
    pub probes: Vec<SearchProbe>,
    /// The highest rate that passed; `null` when even `rate_min` failed.
    pub best_rate_rps: Option<f64>,
    /// The lowest rate that failed; `null` when `rate_max` passed.
    pub lowest_failing_rps: Option<f64>,
    /// Why the search stopped: `precision`, `max_probes`, `rate_min_fails`, `rate_max_passes`,
    /// `interrupted`.
    pub stop_reason: String,
}

/// The search's state: which rate to probe next, given the verdicts so far.
#[derive(Debug, Clone)]
pub struct Bisection {
    rate_min: f64,
    rate_max: f64,
    precision: f64,
    max_probes: usize,
    probes: usize,
    pass: Option<f64>,
    fail: Option<f64>,
    done: Option<&'static str>,
}

impl Bisection {
    /// A search of `[rate_min, rate_max]` (0 < min < max, precision > 0, max_probes ≥ 2; the
    /// flags are checked before).
    pub fn new(rate_min: f64, rate_max: f64, precision: f64, max_probes: usize) -> Self {
        Self {
            rate_min,
            rate_max,
            precision,
            max_probes,
            probes: 0,
            pass: None,
            fail: None,
            done: None,
        }
    }

    /// The next rate to probe; `None` when the search is over (see [`Bisection::stop_reason`]).
    pub fn next_rate(&mut self) -> Option<f64> {
        if self.done.is_some() {
            return None;
        }
        let next = match (self.probes, self.pass, self.fail) {
            (0, _, _) => self.rate_min,
            (_, None, _) => return self.stop("rate_min_fails"),
            (_, Some(_), None) if self.probes == 1 => self.rate_max,
            (_, Some(_), None) => return self.stop("rate_max_passes"),
            (_, Some(p), Some(f)) => {
                if f / p - 1.0 <= self.precision {
                    return self.stop("precision");
                }
                (p * f).sqrt()
            }
        };
        if self.probes >= self.max_probes {
            return self.stop("max_probes");
        }
        Some(next)
    }

    fn stop(&mut self, why: &'static str) -> Option<f64> {
        self.done = Some(why);
        None
    }

    /// Records the verdict of the probe at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.probes += 1;
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }

    /// Marks the search interrupted.
    pub fn interrupt(&mut self) {
        self.done = Some("interrupted");
    }

    /// The highest passing and the lowest failing rate so far.
    pub fn bracket(&self) -> (Option<f64>, Option<f64>) {
        (self.pass, self.fail)
    }

    /// Why the search stopped (empty while it runs).
    pub fn stop_reason(&self) -> &'static str {
        self.done.unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a server whose attainment passes up to `capacity`.
    fn run(
        capacity: f64,
        min: f64,
        max: f64,
        precision: f64,
        budget: usize,
    ) -> (Bisection, Vec<f64>) {
        let mut b = Bisection::new(min, max, precision, budget);
        let mut rates = Vec::new();
        while let Some(r) = b.next_rate() {
            rates.push(r);
            b.record(r, r <= capacity);
        }
        (b, rates)
    }

    #[test]
    fn converges_below_the_capacity_within_the_precision() {
        let (b, rates) = run(37.0, 1.0, 100.0, 0.05, 20);
        let (pass, fail) = b.bracket();
        let (pass, fail) = (pass.unwrap(), fail.unwrap());
        assert_eq!(b.stop_reason(), "precision");
        assert!(pass <= 37.0 && fail > 37.0, "{pass} {fail}");
        assert!(fail / pass - 1.0 <= 0.05);
        assert_eq!(&rates[..2], &[1.0, 100.0], "brackets first");
        // each bisection takes the square root of the ratio 100: k probes leave 100^(1/2^k),
        // which first reaches 1.05 at k = ceil(log2(ln 100 / ln 1.05))
        let k = (100f64.ln() / 1.05f64.ln()).log2().ceil() as usize;
        assert_eq!(rates.len(), 2 + k, "{rates:?}");
        assert!((rates[2] - 10.0).abs() < 1e-9, "geometric mean first");
    }

    #[test]
    fn same_verdicts_give_the_same_probes() {
        assert_eq!(
            run(5.5, 0.5, 64.0, 0.02, 30).1,
            run(5.5, 0.5, 64.0, 0.02, 30).1
        );
    }

    #[test]
    fn probe_budget_bounds_the_search() {
        let (b, rates) = run(37.0, 1.0, 100.0, 0.001, 4);
        assert_eq!(rates.len(), 4);
        assert_eq!(b.stop_reason(), "max_probes");
        assert!(b.bracket().0.unwrap() <= 37.0);
    }

    #[test]
    fn bracket_ends_that_decide_alone() {
        let (b, rates) = run(0.1, 1.0, 100.0, 0.05, 10);
        assert_eq!(rates, vec![1.0]);
        assert_eq!(b.stop_reason(), "rate_min_fails");
        assert_eq!(b.bracket(), (None, Some(1.0)));
        let (b, rates) = run(1000.0, 1.0, 100.0, 0.05, 10);
        assert_eq!(rates, vec![1.0, 100.0]);
        assert_eq!(b.stop_reason(), "rate_max_passes");
        assert_eq!(b.bracket(), (Some(100.0), None));
    }

    #[test]
    fn interrupt_stops_it() {
        let mut b = Bisection::new(1.0, 2.0, 0.1, 5);
        assert_eq!(b.next_rate(), Some(1.0));
        b.interrupt();
        assert_eq!(b.next_rate(), None);
        assert_eq!(b.stop_reason(), "interrupted");
    }
}
