//! Open-loop arrival times, shared by the daemon's open-loop workloads ([`super::load`]) and
//! `sweep --rate` ([`crate::experiments::sweep`]): one generator, so "Poisson arrivals at R per
//! second" means the same schedule in both. It works in [`Duration`] offsets and advances an
//! `Instant` (std or tokio) by them; no time is converted through `f64` seconds and back.

use std::time::Duration;

use rand::Rng;

use crate::config::prober::Arrival;

/// The longest gap drawn (a rate near zero must not overflow an `Instant`).
pub const MAX_GAP: Duration = Duration::from_secs(86_400);

/// The gap before the next arrival at `rate` per second: exponential for [`Arrival::Poisson`],
/// `1 / rate` for [`Arrival::Constant`]; at most [`MAX_GAP`]. `rate` must be positive.
pub fn next_gap(kind: Arrival, rate: f64, rng: &mut impl Rng) -> Duration {
    let mean_gaps = match kind {
        Arrival::Constant => 1.0,
        // u in [0, 1): 1 − u in (0, 1], so the logarithm is finite
        Arrival::Poisson => -(1.0 - rng.random::<f64>()).ln(),
    };
    let secs = mean_gaps / rate;
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).map_or(MAX_GAP, |d| d.min(MAX_GAP))
    } else {
        MAX_GAP
    }
}

/// An arrival schedule: each call to [`Schedule::next_after`] advances the previous arrival by
/// one gap.
#[derive(Debug, Clone)]
pub struct Schedule<R> {
    kind: Arrival,
    rate: f64,
    rng: R,
}

impl<R: Rng> Schedule<R> {
    pub fn new(kind: Arrival, rate: f64, rng: R) -> Self {
        Self { kind, rate, rng }
    }

    /// The arrival after `prev`.
    pub fn next_after<I: std::ops::Add<Duration, Output = I>>(&mut self, prev: I) -> I {
        prev + next_gap(self.kind, self.rate, &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn gaps_have_the_rate_and_a_seed_gives_one_schedule() {
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 20_000;
        let total: Duration = (0..n)
            .map(|_| next_gap(Arrival::Poisson, 50.0, &mut rng))
            .sum();
        let mean = total.as_secs_f64() / f64::from(n);
        assert!((mean - 0.02).abs() < 0.001, "{mean}");
        assert_eq!(
            next_gap(Arrival::Constant, 4.0, &mut rng),
            Duration::from_millis(250)
        );
        assert_eq!(next_gap(Arrival::Constant, 1e-12, &mut rng), MAX_GAP);
        let t0 = std::time::Instant::now();
        let mut a = Schedule::new(Arrival::Poisson, 10.0, SmallRng::seed_from_u64(1));
        let mut b = Schedule::new(Arrival::Poisson, 10.0, SmallRng::seed_from_u64(1));
        let (mut x, mut y) = (t0, t0);
        for _ in 0..10 {
            x = a.next_after(x);
            y = b.next_after(y);
            assert_eq!(x, y);
        }
        assert!(x > t0);
    }
}
