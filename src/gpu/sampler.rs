//! The sampling threads.
//!
//! Two OS threads, never the async runtime:
//!
//! * the **worker** owns the [`GpuSource`] and its session and makes every (blocking) driver
//!   call; it answers one request at a time, so however sick the driver is there is exactly one
//!   such thread and never a pile of them;
//! * the **ticker** asks the worker for a sample every `interval` and waits at most
//!   `sample_timeout` for the answer. A late answer marks the GPU down (`gpu_up 0`, per-GPU
//!   series dropped) and the ticker moves on: while the worker is still stuck in the driver no
//!   new request is sent; when it comes back its stale answer is thrown away and the next
//!   request reopens the session. Failures back off exponentially (interval × 2ⁿ up to
//!   `max_backoff`) and a good sample resets it.
//!
//! The per-tick logic ([`Sampling`]) skips and remembers unsupported fields per device and field
//! for the session, reads process names from `/proc`, and accumulates Xid events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::runtime::ReadySlot;

use super::snapshot::{DeviceSnapshot, GpuSnapshot, ProcessSample, SnapshotCell};
use super::source::{DriverInfo, Field, FieldError, GpuSession, GpuSource, Identity, Value};

/// What a tick asks for beyond the always-on fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleOptions {
    /// PCIe TX/RX throughput (about 20 ms per direction per GPU on an H200).
    pub pcie_throughput: bool,
    /// Per-process GPU memory.
    pub processes: bool,
    /// Xid error events.
    pub xid_events: bool,
}

/// When ticks happen and how long they may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    /// Deadline for one sample; past it the GPU is marked down.
    pub sample_timeout: Duration,
    /// Upper bound of the retry backoff after failures.
    pub max_backoff: Duration,
}

/// Clock-event reasons by NVML bit, with the label value exported (nvidia-smi's names).
pub const CLOCK_EVENT_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// What one tick produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TickOutput {
    pub driver: DriverInfo,
    pub devices: Vec<DeviceSnapshot>,
}

#[derive(Debug, Default)]
struct XidState {
    counts: BTreeMap<Option<u64>, u64>,
    last_unix: Option<f64>,
}

/// The per-tick sampling logic, run on the worker thread against an open session. Public so the
/// benchmark can time one tick without threads.
#[derive(Debug)]
pub struct Sampling {
    opts: SampleOptions,
    /// (uuid, field) pairs that answered NotSupported in this session.
    unsupported: HashSet<(String, Field)>,
    /// Identity by index, refreshed when the uuid under an index changes.
    identities: HashMap<u32, Identity>,
    driver: Option<DriverInfo>,
    /// Xid counts by uuid; kept across sessions (they count what this sidecar saw).
    xid: HashMap<String, XidState>,
    /// (uuid, field) pairs whose transient failure was already logged.
    logged: HashSet<(String, Field)>,
    /// Answers of fields that cannot change while the driver is loaded ([`Field::is_static`]),
    /// read once per session: the maximum clocks cost ≈1.2 ms each on an H200.
    constant: HashMap<(String, Field), Value>,
}

impl Sampling {
    pub fn new(opts: SampleOptions) -> Self {
        Self {
            opts,
            unsupported: HashSet::new(),
            identities: HashMap::new(),
            driver: None,
            xid: HashMap::new(),
            logged: HashSet::new(),
            constant: HashMap::new(),
        }
    }

    /// Forgets what the previous session learned (a new driver may support more).
    pub fn session_opened(&mut self, session: &mut dyn GpuSession) {
        self.unsupported.clear();
        self.identities.clear();
        self.logged.clear();
        self.constant.clear();
        self.driver = Some(session.driver_info());
        if self.opts.xid_events {
            session.subscribe_xid();
        }
    }

    /// Fields that are never asked on this device this session.
    pub fn unsupported_fields(&self, uuid: &str) -> Vec<Field> {
        let mut v: Vec<Field> = self
            .unsupported
            .iter()
            .filter(|(u, _)| u == uuid)
            .map(|(_, f)| *f)
            .collect();
        v.sort();
        v
    }

    fn wanted(&self, f: Field) -> bool {
        match f {
            Field::PcieThroughput => self.opts.pcie_throughput,
            Field::ComputeProcesses | Field::GraphicsProcesses => self.opts.processes,
            _ => true,
        }
    }

    /// One tick over every device. `Err` is fatal for the session (driver or GPU lost).
    pub fn sample(&mut self, session: &mut dyn GpuSession) -> Result<TickOutput, String> {
        let count = session.device_count().map_err(|e| e.to_string())?;
        let mut devices = Vec::with_capacity(count as usize);
        self.identities.retain(|i, _| *i < count);
        for index in 0..count {
            match self.sample_device(session, index) {
                Ok(Some(d)) => devices.push(d),
                Ok(None) => {}
                Err(e) => return Err(format!("GPU {index}: {e}")),
            }
        }
        if self.opts.xid_events {
            let events = session.poll_xid();
            if !events.is_empty() {
                let now = unix_now();
                for ev in events {
                    let Some(id) = self.identities.get(&ev.index) else {
                        continue;
                    };
                    tracing::warn!(gpu = ev.index, uuid = %id.uuid, xid = ?ev.xid, "GPU Xid error");
                    let st = self.xid.entry(id.uuid.clone()).or_default();
                    *st.counts.entry(ev.xid).or_insert(0) += 1;
                    st.last_unix = Some(now);
                }
                for d in &mut devices {
                    if let Some(st) = self.xid.get(&d.identity.uuid) {
                        d.xid_counts = st.counts.iter().map(|(k, v)| (*k, *v)).collect();
                        d.last_xid_timestamp = st.last_unix;
                    }
                }
            }
        }
        Ok(TickOutput {
            driver: self.driver.clone().unwrap_or_default(),
            devices,
        })
    }

    fn sample_device(
        &mut self,
        session: &mut dyn GpuSession,
        index: u32,
    ) -> Result<Option<DeviceSnapshot>, FieldError> {
        let mut dev = match session.device(index) {
            Ok(d) => d,
            Err(FieldError::Fatal(m)) => return Err(FieldError::Fatal(m)),
            Err(e) => {
                tracing::debug!(gpu = index, error = %e, "GPU handle not available this tick");
                return Ok(None);
            }
        };
        let uuid = match dev.uuid() {
            Ok(u) => u,
            Err(FieldError::Fatal(m)) => return Err(FieldError::Fatal(m)),
            Err(e) => {
                tracing::debug!(gpu = index, error = %e, "GPU uuid not available this tick");
                return Ok(None);
            }
        };
        let identity = match self.identities.get(&index) {
            Some(id) if id.uuid == uuid => id.clone(),
            _ => match dev.identity() {
                Ok(id) => {
                    tracing::info!(gpu = index, uuid = %id.uuid, name = %id.name, "GPU found");
                    self.identities.insert(index, id.clone());
                    id
                }
                Err(FieldError::Fatal(m)) => return Err(FieldError::Fatal(m)),
                Err(e) => {
                    tracing::debug!(gpu = index, error = %e, "GPU identity not available this tick");
                    return Ok(None);
                }
            },
        };
        let mut snap = DeviceSnapshot {
            index,
            ..DeviceSnapshot::default()
        };
        let mut procs: Option<Vec<super::source::GpuProcess>> = None;
        for field in Field::ALL {
            let key = (uuid.clone(), field);
            if !self.wanted(field) || self.unsupported.contains(&key) {
                continue;
            }
            if let Some(v) = self.constant.get(&key) {
                apply(&mut snap, &mut procs, field, v.clone());
                continue;
            }
            match dev.read(field) {
                Ok(v) => {
                    if field.is_static() {
                        self.constant.insert(key, v.clone());
                    }
                    apply(&mut snap, &mut procs, field, v)
                }
                Err(FieldError::NotSupported) => {
                    tracing::debug!(gpu = index, field = %field, "not supported on this GPU; not asked again");
                    self.unsupported.insert((uuid.clone(), field));
                }
                Err(FieldError::Transient(m)) => {
                    if self.logged.insert((uuid.clone(), field)) {
                        tracing::warn!(gpu = index, field = %field, error = %m, "GPU query failed; skipped this tick (logged once)");
                    }
                }
                Err(FieldError::Fatal(m)) => return Err(FieldError::Fatal(m)),
            }
        }
        snap.processes = procs.map(|list| {
            let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
            for p in list {
                let e = by_pid.entry(p.pid).or_insert(0);
                *e = (*e).max(p.used_bytes.unwrap_or(0));
            }
            by_pid
                .into_iter()
                .map(|(pid, used_bytes)| ProcessSample {
                    pid,
                    name: process_name(pid),
                    used_bytes,
                })
                .collect()
        });
        if let Some(st) = self.xid.get(&uuid) {
            snap.xid_counts = st.counts.iter().map(|(k, v)| (*k, *v)).collect();
            snap.last_xid_timestamp = st.last_unix;
        }
        snap.identity = identity;
        Ok(Some(snap))
    }
}

fn apply(
    s: &mut DeviceSnapshot,
    procs: &mut Option<Vec<super::source::GpuProcess>>,
    field: Field,
    v: Value,
) {
    const MHZ: f64 = 1e6;
    match (field, v) {
        (Field::Memory, Value::Memory(m)) => s.memory = Some(m),
        (Field::Utilization, Value::Utilization { gpu, memory }) => {
            s.utilization_gpu = Some(f64::from(gpu) / 100.0);
            s.utilization_memory = Some(f64::from(memory) / 100.0);
        }
        (Field::Power, Value::Milliwatts(mw)) => s.power_watts = Some(f64::from(mw) / 1000.0),
        (Field::PowerLimit, Value::Milliwatts(mw)) => {
            s.power_limit_watts = Some(f64::from(mw) / 1000.0)
        }
        (Field::Energy, Value::Millijoules(mj)) => s.energy_joules = Some(mj as f64 / 1000.0),
        (Field::Temperature, Value::Celsius(c)) => s.temperature_celsius = Some(f64::from(c)),
        (Field::SmClock, Value::Megahertz(m)) => s.sm_clock_hz = Some(f64::from(m) * MHZ),
        (Field::MemoryClock, Value::Megahertz(m)) => s.memory_clock_hz = Some(f64::from(m) * MHZ),
        (Field::SmClockMax, Value::Megahertz(m)) => s.sm_clock_max_hz = Some(f64::from(m) * MHZ),
        (Field::MemoryClockMax, Value::Megahertz(m)) => {
            s.memory_clock_max_hz = Some(f64::from(m) * MHZ)
        }
        (Field::PerformanceState, Value::PerformanceState(p)) => s.performance_state = Some(p),
        (Field::ClockEvents, Value::ClockEvents { active, supported }) => {
            s.clock_events = CLOCK_EVENT_REASONS
                .iter()
                .filter(|(bit, _)| supported & bit != 0)
                .map(|(bit, name)| (*name, active & bit != 0))
                .collect();
        }
        (Field::PcieGeneration, Value::Number(n)) => s.pcie_generation = Some(n),
        (Field::PcieWidth, Value::Number(n)) => s.pcie_width = Some(n),
        (
            Field::PcieThroughput,
            Value::PcieThroughput {
                tx_kib_per_s,
                rx_kib_per_s,
            },
        ) => {
            s.pcie_tx_bytes_per_second = Some(f64::from(tx_kib_per_s) * 1024.0);
            s.pcie_rx_bytes_per_second = Some(f64::from(rx_kib_per_s) * 1024.0);
        }
        (Field::EccCorrected, Value::Count(n)) => s.ecc_corrected = Some(n),
        (Field::EccUncorrected, Value::Count(n)) => s.ecc_uncorrected = Some(n),
        (Field::RemappedRows, Value::RemappedRows(r)) => s.remapped_rows = Some(r),
        (Field::ComputeProcesses | Field::GraphicsProcesses, Value::Processes(list)) => {
            procs.get_or_insert_with(Vec::new).extend(list);
        }
        (field, v) => {
            tracing::debug!(field = %field, value = ?v, "GPU source answered with the wrong kind of value; ignored");
        }
    }
}

/// The process's command name from `/proc/<pid>/comm`, or `unknown` when that pid is not visible
/// here (the GPU process lives in another pid namespace) or unreadable.
pub fn process_name(pid: u32) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "unknown".to_string(),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Request {
    seq: u64,
}

enum TickError {
    /// The source could not be opened (no driver, wrong library path).
    Unavailable(String),
    /// The driver or a GPU failed mid-run.
    Failed(String),
}

struct Response {
    seq: u64,
    result: Result<TickOutput, TickError>,
    elapsed: Duration,
}

/// The worker thread: owns the source and the session; one blocking request at a time.
/// `reopen` requests (after a timeout) close the session first.
fn worker_main(
    mut source: Box<dyn GpuSource>,
    opts: SampleOptions,
    rx: Receiver<(Request, bool)>,
    tx: SyncSender<Response>,
) {
    let mut sampling = Sampling::new(opts);
    let mut pending: Option<Request> = None;
    loop {
        let mut req = match pending.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok((r, _)) => r,
                Err(_) => return,
            },
        };
        let start = Instant::now();
        let mut session = match source.open() {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Response {
                    seq: req.seq,
                    result: Err(TickError::Unavailable(e)),
                    elapsed: start.elapsed(),
                });
                continue;
            }
        };
        sampling.session_opened(session.as_mut());
        let mut start = start;
        loop {
            let result = sampling.sample(session.as_mut());
            let failed = result.is_err();
            let _ = tx.send(Response {
                seq: req.seq,
                result: result.map_err(TickError::Failed),
                elapsed: start.elapsed(),
            });
            if failed {
                break; // drop the session; the next request reopens
            }
            match rx.recv() {
                Ok((r, reopen)) => {
                    if reopen {
                        pending = Some(r);
                        break;
                    }
                    req = r;
                    start = Instant::now();
                }
                Err(_) => return,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Health {
    Starting,
    Up,
    Down(&'static str),
}

/// The ticker thread's loop: one request to the worker per interval, a deadline on its answer,
/// and the snapshot `/metrics` reads; [`Ticker`] holds the state between ticks.
fn ticker_main(
    timing: Timing,
    req_tx: SyncSender<(Request, bool)>,
    resp_rx: Receiver<Response>,
    cell: Arc<SnapshotCell>,
    stop_rx: Receiver<()>,
    ready: Option<ReadySlot>,
) {
    let mut tk = Ticker {
        timing,
        cell,
        seq: 0,
        outstanding: None,
        reopen: false,
        failures: 0,
        health: Health::Starting,
        last: GpuSnapshot::default(),
        next: Instant::now(),
    };
    loop {
        let wait = tk.next.saturating_duration_since(Instant::now());
        match stop_rx.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
        let tick_start = Instant::now();
        match tk.check_outstanding(&resp_rx, tick_start) {
            Flow::Sample => {}
            Flow::Skip => continue,
            Flow::Stop => break,
        }
        tk.seq += 1;
        match req_tx.try_send((Request { seq: tk.seq }, tk.reopen)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                tk.next = tick_start + timing.interval;
                continue;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => break,
        }
        tk.reopen = false;
        tk.outstanding = Some((tk.seq, tick_start));
        match wait_answer(&resp_rx, tk.seq, tick_start + timing.sample_timeout) {
            Some(r) => {
                tk.outstanding = None;
                match r.result {
                    Ok(out) => tk.up(out, r.elapsed),
                    Err(e) => tk.failed(&e, r.elapsed, tick_start),
                }
            }
            None => tk.timed_out(tick_start),
        }
        if let Some(r) = &ready {
            r.mark_ready();
        }
    }
    // Dropping req_tx lets the worker exit as soon as its current call (if any) returns.
}

/// What a tick does after looking at an earlier, unanswered request.
enum Flow {
    /// Send this tick's request.
    Sample,
    /// Skip this tick (the driver is still stuck).
    Skip,
    /// The worker is gone.
    Stop,
}

/// The answer to request `seq`, or `None` when none came by `deadline` (stale answers to
/// earlier requests are dropped).
fn wait_answer(resp_rx: &Receiver<Response>, seq: u64, deadline: Instant) -> Option<Response> {
    loop {
        match resp_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) if r.seq == seq => return Some(r),
            Ok(_) => continue, // a stale answer from before
            Err(_) => return None,
        }
    }
}

/// The ticker thread's state between ticks.
struct Ticker {
    timing: Timing,
    cell: Arc<SnapshotCell>,
    seq: u64,
    /// A request still in the driver past its deadline: its sequence number and send time.
    outstanding: Option<(u64, Instant)>,
    /// Ask the worker to reopen the session (after a hung call).
    reopen: bool,
    /// Consecutive failed ticks (the backoff's exponent).
    failures: u32,
    health: Health,
    last: GpuSnapshot,
    /// When the next tick starts.
    next: Instant,
}

impl Ticker {
    /// The pause after `failures` consecutive failures: the interval doubling up to the
    /// maximum backoff.
    fn backoff(&self) -> Duration {
        let factor = 1u32 << self.failures.saturating_sub(1).min(16);
        self.timing
            .interval
            .saturating_mul(factor)
            .min(self.timing.max_backoff.max(self.timing.interval))
    }

    /// Marks the GPUs down after a tick that took `elapsed`, and publishes that.
    fn down(&mut self, elapsed: Duration) {
        self.last.up = false;
        self.last.devices.clear();
        self.last.sample_duration_seconds = Some(elapsed.as_secs_f64());
        self.last.attempts += 1;
        self.cell.store(self.last.clone());
    }

    /// A request from an earlier tick still in the driver? Once it returns, the session is
    /// reopened; while it is stuck, this tick is skipped.
    fn check_outstanding(&mut self, resp_rx: &Receiver<Response>, tick_start: Instant) -> Flow {
        let Some((s, sent)) = self.outstanding else {
            return Flow::Sample;
        };
        match resp_rx.try_recv() {
            Ok(r) if r.seq == s => {
                tracing::info!(
                    late_by = ?r.elapsed.saturating_sub(self.timing.sample_timeout),
                    "the hung GPU sample returned; reopening NVML"
                );
                self.outstanding = None;
                self.reopen = true;
                Flow::Sample
            }
            Ok(_) => Flow::Sample,
            Err(TryRecvError::Empty) => {
                // Still stuck. Nothing is sent to the driver meanwhile, so look again
                // after one interval (not the backoff): recovery follows the driver's.
                self.failures = self.failures.saturating_add(1);
                self.down(tick_start.duration_since(sent));
                self.next = tick_start + self.timing.interval;
                Flow::Skip
            }
            Err(TryRecvError::Disconnected) => Flow::Stop,
        }
    }

    /// A complete sample that took `elapsed`.
    fn up(&mut self, out: TickOutput, elapsed: Duration) {
        self.failures = 0;
        if self.health != Health::Up {
            tracing::info!(
                gpus = out.devices.len(),
                driver = out.driver.driver_version.as_deref().unwrap_or("?"),
                "GPU sampling up"
            );
        }
        self.health = Health::Up;
        self.last = GpuSnapshot {
            up: true,
            driver: out.driver,
            devices: out.devices,
            sample_duration_seconds: Some(elapsed.as_secs_f64()),
            last_sample_timestamp: Some(unix_now()),
            attempts: self.last.attempts + 1,
        };
        self.cell.store(self.last.clone());
        self.next += self.timing.interval;
        let now = Instant::now();
        if self.next <= now {
            self.next = now + self.timing.interval;
        }
    }

    /// A sample that failed (NVML unavailable, or a call failed) after `elapsed`.
    fn failed(&mut self, e: &TickError, elapsed: Duration, tick_start: Instant) {
        self.failures = self.failures.saturating_add(1);
        let (kind, msg) = match e {
            TickError::Unavailable(m) => ("unavailable", m),
            TickError::Failed(m) => ("failed", m),
        };
        if self.health != Health::Down(kind) {
            if kind == "unavailable" && self.health == Health::Starting {
                tracing::warn!(error = %msg, "NVML is not available: GPU metrics are off (vllm_sentinel_gpu_up 0); everything else runs. Set --nvml-library if the driver is installed outside the loader path");
            } else {
                tracing::warn!(error = %msg, retry_in = ?self.backoff(), "GPU sampling failed; GPU marked down, retrying with backoff");
            }
        } else {
            tracing::debug!(error = %msg, "GPU sampling still down");
        }
        self.health = Health::Down(kind);
        self.down(elapsed);
        self.next = tick_start + self.backoff();
    }

    /// No answer within the sample deadline: the call is hung in the driver.
    fn timed_out(&mut self, tick_start: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.health != Health::Down("timeout") {
            tracing::warn!(timeout = ?self.timing.sample_timeout, "GPU sample missed its deadline (NVML call hung); GPU marked down until the driver answers again");
        }
        self.health = Health::Down("timeout");
        self.down(self.timing.sample_timeout);
        self.reopen = true;
        self.next = tick_start + self.backoff();
    }
}

/// A running sampler (two threads). Dropping it asks the threads to stop without waiting.
#[derive(Debug)]
pub struct SamplerThreads {
    stop_tx: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
    cell: Arc<SnapshotCell>,
}

impl SamplerThreads {
    /// Starts the worker and the ticker; the first tick is immediate.
    pub fn start(
        source: Box<dyn GpuSource>,
        opts: SampleOptions,
        timing: Timing,
        cell: Arc<SnapshotCell>,
        ready: Option<ReadySlot>,
    ) -> std::io::Result<Self> {
        let (req_tx, req_rx) = mpsc::sync_channel::<(Request, bool)>(1);
        let (resp_tx, resp_rx) = mpsc::sync_channel::<Response>(2);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("gpu-nvml".into())
            .spawn(move || worker_main(source, opts, req_rx, resp_tx))?;
        let c = cell.clone();
        let ticker = std::thread::Builder::new()
            .name("gpu-sampler".into())
            .spawn(move || ticker_main(timing, req_tx, resp_rx, c, stop_rx, ready))?;
        Ok(Self {
            stop_tx: Some(stop_tx),
            ticker: Some(ticker),
            cell,
        })
    }

    /// The snapshot cell the threads publish to.
    pub fn snapshots(&self) -> Arc<SnapshotCell> {
        self.cell.clone()
    }

    /// Stops the ticker and waits for it (at most about `sample_timeout`). The worker is not
    /// waited for: it may be stuck in the driver, and exits when that call returns.
    pub fn stop(mut self) {
        self.stop_tx.take();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SamplerThreads {
    fn drop(&mut self) {
        self.stop_tx.take();
    }
}
