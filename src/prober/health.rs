//! The prober's self-health: runtime scheduler lag and the `saturated` verdict.
//!
//! A 10 ms ticker measures how late each tick fires (a busy or blocked runtime delays every
//! timestamp the prober takes). Every `saturation_window` the prober is judged saturated when,
//! over that window, more than 1 % of open-loop sends or of ticks were later than
//! `saturation_lag_threshold`, any arrival was dropped at an in-flight cap, or the process used
//! at least 95 % of the CPUs it may run on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::load::HealthCounters;
use super::metrics::ProberMetrics;

const TICK: Duration = Duration::from_millis(10);

/// Inputs of one saturation verdict (deltas over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub sends: u64,
    pub late_sends: u64,
    pub dropped: u64,
    pub ticks: u64,
    pub late_ticks: u64,
    /// CPU seconds used / wall seconds / usable CPUs.
    pub cpu_share: Option<f64>,
}

/// True when the window says the prober could not keep up.
pub fn saturated(w: &Window) -> bool {
    let frac = |late: u64, all: u64| all > 0 && late * 100 > all;
    frac(w.late_sends, w.sends)
        || w.dropped > 0
        || frac(w.late_ticks, w.ticks)
        || w.cpu_share.is_some_and(|c| c >= 0.95)
}

/// Runs the ticker and the saturation judge until `token` is cancelled.
pub async fn run(
    metrics: ProberMetrics,
    counters: Arc<HealthCounters>,
    window: Duration,
    token: CancellationToken,
) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mut next = tokio::time::Instant::now() + TICK;
    let mut win_start = Instant::now();
    let mut cpu_start = crate::process::cpu_seconds();
    let (mut ticks, mut late_ticks) = (0u64, 0u64);
    let snap = |c: &HealthCounters| {
        (
            c.sends.load(Ordering::Relaxed),
            c.late_sends.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        )
    };
    let mut last = snap(&counters);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let now = tokio::time::Instant::now();
        let late = now.saturating_duration_since(next);
        metrics.runtime_lag.observe(late.as_secs_f64());
        ticks += 1;
        let threshold = Duration::from_nanos(counters.late_threshold_ns.load(Ordering::Relaxed));
        if late > threshold {
            late_ticks += 1;
        }
        next += TICK;
        if next < now {
            next = now + TICK;
        }
        let elapsed = win_start.elapsed();
        if elapsed >= window {
            let cur = snap(&counters);
            let cpu_now = crate::process::cpu_seconds();
            let cpu_share = match (cpu_start, cpu_now) {
                (Some(a), Some(b)) => Some((b - a) / elapsed.as_secs_f64() / cpus),
                _ => None,
            };
            let w = Window {
                sends: cur.0 - last.0,
                late_sends: cur.1 - last.1,
                dropped: cur.2 - last.2,
                ticks,
                late_ticks,
                cpu_share,
            };
            let sat = saturated(&w);
            if sat && metrics.saturated.get() == 0 {
                tracing::warn!(
                    ?w,
                    "the prober cannot keep up; its measurements are not trustworthy"
                );
            }
            metrics.saturated.set(i64::from(sat));
            last = cur;
            cpu_start = cpu_now;
            win_start = Instant::now();
            ticks = 0;
            late_ticks = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_rules() {
        let ok = Window {
            sends: 1000,
            late_sends: 10,
            ticks: 1000,
            late_ticks: 10,
            cpu_share: Some(0.5),
            ..Default::default()
        };
        assert!(!saturated(&ok));
        assert!(saturated(&Window {
            late_sends: 11,
            ..ok
        }));
        assert!(saturated(&Window {
            late_ticks: 11,
            ..ok
        }));
        assert!(saturated(&Window { dropped: 1, ..ok }));
        assert!(saturated(&Window {
            cpu_share: Some(0.99),
            ..ok
        }));
        assert!(!saturated(&Window::default()));
    }
}
