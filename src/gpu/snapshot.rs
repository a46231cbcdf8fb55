//! The plain-data record one sampling tick produces, and the cell `/metrics` reads it from.
//!
//! The sampler builds a whole [`GpuSnapshot`] off to the side and swaps the `Arc` in; the
//! collector clones the `Arc` under a lock held for nanoseconds, so a scrape never waits on NVML
//! and never sees half a tick.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::source::{DriverInfo, Identity, MemoryBytes, RemappedRows};

/// One GPU process with its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    /// From `/proc/<pid>/comm`; `unknown` when the pid is not visible here (another pid
    /// namespace) or the file cannot be read.
    pub name: String,
    pub used_bytes: u64,
}

/// Everything one tick learned about one GPU. `None` / empty: not supported or not answered
/// this tick, and then not exported (never as zero).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceSnapshot {
    pub index: u32,
    pub identity: Identity,
    pub memory: Option<MemoryBytes>,
    /// Ratios 0–1.
    pub utilization_gpu: Option<f64>,
    pub utilization_memory: Option<f64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub energy_joules: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_hz: Option<f64>,
    pub memory_clock_hz: Option<f64>,
    pub sm_clock_max_hz: Option<f64>,
    pub memory_clock_max_hz: Option<f64>,
    pub performance_state: Option<u32>,
    /// Every supported clock-event reason and whether it is active.
    pub clock_events: Vec<(&'static str, bool)>,
    pub pcie_generation: Option<u32>,
    pub pcie_width: Option<u32>,
    pub pcie_tx_bytes_per_second: Option<f64>,
    pub pcie_rx_bytes_per_second: Option<f64>,
    pub ecc_corrected: Option<u64>,
    pub ecc_uncorrected: Option<u64>,
    pub remapped_rows: Option<RemappedRows>,
    /// Count of Xid events seen by this sidecar, by Xid (`None` key: the driver did not say).
    pub xid_counts: Vec<(Option<u64>, u64)>,
    /// Unix time of the last Xid event seen.
    pub last_xid_timestamp: Option<f64>,
    /// `None` when process listing is off or unsupported.
    pub processes: Option<Vec<ProcessSample>>,
}

/// The state `/metrics` shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuSnapshot {
    /// NVML initialised and the last sample completed.
    pub up: bool,
    pub driver: DriverInfo,
    /// Empty while down.
    pub devices: Vec<DeviceSnapshot>,
    /// Wall time of the last tick (the time waited, when it timed out); `None` before the first.
    pub sample_duration_seconds: Option<f64>,
    /// Unix time the last complete sample finished.
    pub last_sample_timestamp: Option<f64>,
    /// Ticks attempted so far (1 after the first attempt, whatever its outcome).
    pub attempts: u64,
}

/// Holds the latest snapshot; writers swap it, readers clone the `Arc`, tests wait on it.
#[derive(Debug, Default)]
pub struct SnapshotCell {
    current: Mutex<Arc<GpuSnapshot>>,
    changed: Condvar,
}

impl SnapshotCell {
    /// The latest snapshot.
    pub fn load(&self) -> Arc<GpuSnapshot> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the snapshot and wakes waiters.
    pub fn store(&self, s: GpuSnapshot) {
        let s = Arc::new(s);
        match self.current.lock() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
        self.changed.notify_all();
    }

    /// Waits until `pred` holds for the current snapshot or `timeout` passes; returns the last
    /// snapshot seen and whether `pred` held.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&GpuSnapshot) -> bool,
    ) -> (Arc<GpuSnapshot>, bool) {
        let deadline = Instant::now() + timeout;
        let mut guard = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        loop {
            if pred(&guard) {
                return (guard.clone(), true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (guard.clone(), false);
            }
            guard = match self.changed.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}
