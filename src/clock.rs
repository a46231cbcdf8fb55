//! The one clock that the simulator and the prober share: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! `std::time::Instant` is the same clock on Linux but opaque, so two processes cannot compare
//! their readings. The simulator's fixed-timing mode stamps its true send time with
//! [`monotonic_ns`] and the prober stamps each received chunk with it, so the benchmark can
//! subtract one from the other across processes (the harness recommended in
//! `reference/prober-overhead.md`).

/// Nanoseconds on `CLOCK_MONOTONIC` (system-wide, never jumps; not wall time).
#[inline]
pub fn monotonic_ns() -> u64 {
    read_ns(rustix::time::ClockId::Monotonic)
}

#[inline]
fn read_ns(clock: rustix::time::ClockId) -> u64 {
    let ts = rustix::time::clock_gettime(clock);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CPU time (user + system) the calling thread has used, in nanoseconds
/// (`CLOCK_THREAD_CPUTIME_ID`). The difference of two readings taken in one synchronous stretch
/// of code is that code's CPU cost, whatever else the machine runs: the exporter reports what
/// encoding `/metrics` costs with it.
#[inline]
pub fn thread_cpu_ns() -> u64 {
    read_ns(rustix::time::ClockId::ThreadCPUTime)
}

/// Seconds since the unix epoch, as Prometheus timestamps want them.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_agrees_with_instant() {
        let i0 = std::time::Instant::now();
        let m0 = monotonic_ns();
        let mut spins = 0u64;
        while i0.elapsed() < std::time::Duration::from_millis(2) {
            spins += 1;
        }
        let dm = monotonic_ns() - m0;
        let di = i0.elapsed().as_nanos() as u64;
        assert!(spins > 0);
        // Both are CLOCK_MONOTONIC; the readings differ only by the calls' own cost.
        assert!(
            dm.abs_diff(di) < 1_000_000,
            "monotonic {dm} ns vs instant {di} ns"
        );
    }

    /// The thread's CPU clock moves while it computes and not while it sleeps, whatever else
    /// the machine runs (a sleeping thread is charged nothing).
    #[test]
    fn thread_cpu_counts_work_not_sleep() {
        let c0 = thread_cpu_ns();
        let m0 = monotonic_ns();
        let mut x = 0u64;
        while monotonic_ns() - m0 < 2_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let c1 = thread_cpu_ns();
        assert!(c1 > c0, "{c0} -> {c1}");
        let w0 = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = monotonic_ns() - w0;
        let charged = thread_cpu_ns() - c1;
        assert!(
            charged < slept,
            "charged {charged} ns over a {slept} ns sleep"
        );
    }
}
