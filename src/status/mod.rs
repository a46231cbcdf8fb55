//! The live status page: `/` (HTML, with `status.js` and `status.css` embedded in the binary)
//! and `/api/v1/status` (JSON, docs/status-api.md), served from an in-memory history of the last
//! [`ring::CAPACITY`] samples.
//!
//! Design: every `server.status_interval` (5 s by default: 360 samples = 30 minutes) one task
//! encodes the daemon's own [`Registry`] (the same text `/metrics` serves), parses it back with
//! the repository's exposition parser ([`crate::scrape::expfmt`]) and reduces it
//! ([`collect`]) to the handful of values the page shows, appended to fixed-size `f64` rings
//! ([`ring`]). Reading the text rather than the metric handles keeps this module independent of
//! how each subsystem registers its families (collectors, families, info metrics): what the page
//! shows is by construction what `/metrics` said at that instant, and the only coupling is the
//! metric names of docs/metrics.md. One sample (encode, parse, reduce) of a daemon with one
//! target and 8 GPUs (88 KB of text) takes 1.2–1.6 ms in the release build (median of 19:
//! 1.6 ms, worst 9 ms, on a busy 2-core machine); `RUST_LOG=vllm_sentinel::status=debug` logs
//! the cost of each one.
//!
//! Memory is bounded by [`ring::MAX_SERIES`] × ([`ring::CAPACITY`] + 1) × 8 bytes for the values
//! plus the window state of [`collect::Collector`] (a few cumulative histograms per target);
//! docs/status-api.md gives the figure for 8 GPUs and 4 targets.

pub mod api;
pub mod collect;
pub mod page;
pub mod ring;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

pub use collect::GpuState;
pub use ring::{CAPACITY, MAX_SERIES};

use crate::runtime::StatusBoard;

/// What the handlers read: the ring and the newest sample.
#[derive(Debug, Default)]
struct Shared {
    ring: ring::Ring,
    latest: Option<collect::Sample>,
}

/// Cheap-to-clone handle on the history; the exporter's handlers read it.
#[derive(Debug, Clone)]
pub struct StatusHistory {
    shared: Arc<Mutex<Shared>>,
    board: StatusBoard,
    interval: Duration,
    gpu_enabled: bool,
    tap_enabled: bool,
}

impl StatusHistory {
    pub fn new(
        board: StatusBoard,
        interval: Duration,
        gpu_enabled: bool,
        tap_enabled: bool,
    ) -> Self {
        Self {
            shared: Arc::default(),
            board,
            interval,
            gpu_enabled,
            tap_enabled,
        }
    }

    /// The sampling interval (`server.status_interval`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes one sample of `registry` now.
    pub fn sample_now(&self, registry: &Registry, collector: &mut collect::Collector) {
        let ts = unix_now();
        let started = std::time::Instant::now();
        let mut text = String::with_capacity(32 * 1024);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
            tracing::warn!(error = %e, "status page: encoding the registry failed; sample skipped");
            return;
        }
        let mut sample = collector.sample(&text, ts);
        // The ring takes the charted values; `latest` keeps every value of this sample.
        let values = std::mem::take(&mut sample.series);
        if let Ok(mut s) = self.shared.lock() {
            s.ring.push(ts, values);
            s.latest = Some(sample);
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                text_bytes = text.len(),
                series = s.ring.series().len(),
                approx_bytes = s.ring.approx_bytes(),
                "status sample"
            );
        }
    }

    /// Samples `registry` every interval until `ctx.token` is cancelled.
    pub fn spawn(&self, registry: Arc<Registry>, ctx: &crate::runtime::RunContext) {
        let this = self.clone();
        let token = ctx.token.clone();
        ctx.tracker.spawn(async move {
            let mut collector = collect::Collector::default();
            let mut tick = tokio::time::interval(this.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => this.sample_now(&registry, &mut collector),
                }
            }
        });
    }
}

/// Unix time in seconds, to the millisecond.
fn unix_now() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}
