//! The phases of a closed-loop level (warm-up, measurement, stop) and its measurement window.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::run::Timed;

/// What a closed-loop stream may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send a warm-up request (not measured).
    Warmup,
    /// Send a measured request.
    Measured,
    /// The level is over for this stream.
    Stop,
}

/// The phases of a closed-loop level. Warm-up lasts `--warmup` *and* until every stream has
/// completed its first request, so a level whose requests outlast the warm-up still starts
/// measuring from a full pipeline. Measurement then lasts `--duration` (or `--requests`), and a
/// stream stops only once it has sent at least one measured request, so every level has
/// latency samples however long its requests take.
#[derive(Debug)]
pub(super) struct Gate {
    streams: usize,
    min_warm_end: Instant,
    duration: Duration,
    want: Option<usize>,
    firsts: AtomicUsize,
    measured: AtomicUsize,
    /// (end of warm-up, start of the last measured request in requests mode)
    phase: std::sync::Mutex<(Option<Instant>, Option<Instant>)>,
}

impl Gate {
    pub(super) fn new(
        streams: usize,
        min_warm_end: Instant,
        duration: Duration,
        want: Option<usize>,
    ) -> Self {
        Self {
            streams,
            min_warm_end,
            duration,
            want,
            firsts: AtomicUsize::new(0),
            measured: AtomicUsize::new(0),
            phase: std::sync::Mutex::new((None, None)),
        }
    }

    fn warm_end(&self) -> Option<Instant> {
        self.phase.lock().ok().and_then(|p| p.0)
    }

    pub(super) fn first_done(&self, at: Instant) {
        if self.firsts.fetch_add(1, Ordering::SeqCst) + 1 == self.streams
            && let Ok(mut p) = self.phase.lock()
        {
            p.0 = Some(at.max(self.min_warm_end));
        }
    }

    pub(super) fn admit(&self, at: Instant, measured_started: bool) -> Admit {
        let Some(we) = self.warm_end() else {
            return Admit::Warmup;
        };
        if at < we {
            return Admit::Warmup;
        }
        match self.want {
            None => {
                if at < we + self.duration || !measured_started {
                    Admit::Measured
                } else {
                    Admit::Stop
                }
            }
            Some(n) => {
                let k = self.measured.fetch_add(1, Ordering::SeqCst);
                if k + 1 == n
                    && let Ok(mut p) = self.phase.lock()
                {
                    p.1 = Some(at);
                }
                if k < n { Admit::Measured } else { Admit::Stop }
            }
        }
    }

    /// The measurement window `(start, end)`, seconds after the level started.
    pub(super) fn window(
        &self,
        records: &[Timed],
        rel: impl Fn(Instant) -> f64,
        interrupted_at: f64,
    ) -> (f64, f64) {
        let Some(we) = self.warm_end() else {
            return (interrupted_at, interrupted_at);
        };
        let ws = rel(we);
        let end = match self.want {
            None => {
                let last_measured = records
                    .iter()
                    .map(|r| r.start)
                    .filter(|s| *s >= ws)
                    .fold(ws, f64::max);
                (ws + self.duration.as_secs_f64()).max(last_measured)
            }
            Some(_) => self
                .phase
                .lock()
                .ok()
                .and_then(|p| p.1)
                .map(&rel)
                .unwrap_or_else(|| records.iter().map(|r| r.start).fold(ws, f64::max)),
        };
        (ws, end)
    }
}
