//! The runtime context every subsystem starts with, shared state included: the task tracker and
//! the two cancellation tokens of shutdown, the configuration channel, `/readyz`'s
//! [`Readiness`] and the landing page's [`StatusBoard`].
//!
//! A module of its own, below the subsystems and above [`crate::config`], so the subsystems
//! (prober, scrape, gpu, tap, status) need nothing from [`crate::daemon`], which wires them, nor
//! from [`crate::exporter`], which serves what they measure.

pub mod board;
pub mod readiness;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

pub use board::{StatusBoard, TargetStatus};
pub use readiness::{Readiness, ReadySlot};

/// After the shutdown grace has cancelled what was still in flight, how long the cancelled work
/// may take to end and be recorded (a cancelled request ends at once; this bounds a stuck task).
pub const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What every subsystem gets when it starts.
#[derive(Clone)]
pub struct RunContext {
    /// Every long-lived task is spawned on this tracker so shutdown can wait for it.
    pub tracker: TaskTracker,
    /// Cancelled when shutdown starts (SIGINT/SIGTERM): loops stop starting new work; requests
    /// in flight go on.
    pub token: CancellationToken,
    /// Cancelled when `server.shutdown_grace` has passed after shutdown started: requests still
    /// in flight end as `cancelled` (and are counted).
    pub abort: CancellationToken,
    /// The current configuration; a new value arrives on reload (SIGHUP or `POST /-/reload`).
    pub config: watch::Receiver<Arc<Config>>,
    /// `/readyz` waits for each registered subsystem's first collection.
    pub readiness: Readiness,
    /// Per-target state for the landing page.
    pub status: StatusBoard,
}

/// Produces a fresh, validated configuration (re-reading the file) for a reload.
pub type Reloader = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;
