//! The seam between the sampler and whatever answers GPU queries: the real driver
//! ([`super::nvml::NvmlSource`]) or a scripted one for tests ([`super::fake::FakeSource`]).
//!
//! A source is opened into a session (NVML: `nvmlInit` .. `nvmlShutdown`); a session hands out
//! devices by index; a device answers one [`Field`] at a time. Every call may block (NVML calls
//! take microseconds to 20 ms and can hang in a sick driver), so the sampler only ever calls a
//! source from its own worker thread.

use std::fmt;

/// One query the sampler asks a device. The sampler remembers, per device and field, which ones
/// answered [`FieldError::NotSupported`] and does not ask them again in the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Total / used / free / reserved framebuffer memory.
    Memory,
    /// GPU (SM) and memory-controller utilization, percent.
    Utilization,
    /// Power draw, milliwatts.
    Power,
    /// Enforced power limit, milliwatts.
    PowerLimit,
    /// Energy counter since driver load, millijoules.
    Energy,
    /// GPU temperature, °C.
    Temperature,
    /// Current SM clock, MHz.
    SmClock,
    /// Current memory clock, MHz.
    MemoryClock,
    /// Maximum SM clock, MHz.
    SmClockMax,
    /// Maximum memory clock, MHz.
    MemoryClockMax,
    /// Performance state (0 fastest).
    PerformanceState,
    /// Active and supported clock-event (throttle) reasons.
    ClockEvents,
    /// Current PCIe link generation.
    PcieGeneration,
    /// Current PCIe link width.
    PcieWidth,
    /// PCIe TX and RX throughput (opt-in: NVML samples over 20 ms per direction).
    PcieThroughput,
    /// Volatile corrected ECC error count.
    EccCorrected,
    /// Volatile uncorrected ECC error count.
    EccUncorrected,
    /// Remapped rows (correctable, uncorrectable, pending, failed).
    RemappedRows,
    /// Processes with a compute context and their memory.
    ComputeProcesses,
    /// Processes with a graphics context and their memory.
    GraphicsProcesses,
}

impl Field {
    /// Every field, in sampling order.
    pub const ALL: [Field; 20] = [
        Field::Memory,
        Field::Utilization,
        Field::Power,
        Field::PowerLimit,
        Field::Energy,
        Field::Temperature,
        Field::SmClock,
        Field::MemoryClock,
        Field::SmClockMax,
        Field::MemoryClockMax,
        Field::PerformanceState,
        Field::ClockEvents,
        Field::PcieGeneration,
        Field::PcieWidth,
        Field::PcieThroughput,
        Field::EccCorrected,
        Field::EccUncorrected,
        Field::RemappedRows,
        Field::ComputeProcesses,
        Field::GraphicsProcesses,
    ];

    /// Fields that cannot change while the driver is loaded (the board's maximum clocks): read
    /// once per session, then reused every tick.
    pub fn is_static(self) -> bool {
        matches!(self, Field::SmClockMax | Field::MemoryClockMax)
    }

    /// A stable snake_case name for logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            Field::Memory => "memory",
            Field::Utilization => "utilization",
            Field::Power => "power",
            Field::PowerLimit => "power_limit",
            Field::Energy => "energy",
            Field::Temperature => "temperature",
            Field::SmClock => "sm_clock",
            Field::MemoryClock => "memory_clock",
            Field::SmClockMax => "sm_clock_max",
            Field::MemoryClockMax => "memory_clock_max",
            Field::PerformanceState => "performance_state",
            Field::ClockEvents => "clock_events",
            Field::PcieGeneration => "pcie_generation",
            Field::PcieWidth => "pcie_width",
            Field::PcieThroughput => "pcie_throughput",
            Field::EccCorrected => "ecc_corrected",
            Field::EccUncorrected => "ecc_uncorrected",
            Field::RemappedRows => "remapped_rows",
            Field::ComputeProcesses => "compute_processes",
            Field::GraphicsProcesses => "graphics_processes",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Framebuffer memory in bytes, as NVML's memory info v2 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBytes {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub reserved: u64,
}

/// Remapped-row counts (Ampere and newer; Hopper has no retired pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemappedRows {
    pub correctable: u64,
    pub uncorrectable: u64,
    /// 1 while a remapping is pending (needs a GPU reset).
    pub pending: u64,
    /// 1 when a remapping failed.
    pub failed: u64,
}

/// One GPU process as the driver lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` when the driver does not say (e.g. under WDDM or without permission).
    pub used_bytes: Option<u64>,
}

/// The answer to one [`Field`], in the driver's own units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Memory(MemoryBytes),
    /// Percent, 0–100.
    Utilization {
        gpu: u32,
        memory: u32,
    },
    Milliwatts(u32),
    Millijoules(u64),
    Celsius(u32),
    Megahertz(u32),
    PerformanceState(u32),
    /// NVML `nvmlClocksEventReasons` bitmasks.
    ClockEvents {
        active: u64,
        supported: u64,
    },
    /// A plain number (PCIe generation or width).
    Number(u32),
    /// A counter (ECC errors).
    Count(u64),
    /// KB/s as NVML reports it (1 KB = 1024 bytes).
    PcieThroughput {
        tx_kib_per_s: u32,
        rx_kib_per_s: u32,
    },
    RemappedRows(RemappedRows),
    Processes(Vec<GpuProcess>),
}

/// Why a query gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// The device cannot answer this (fan on a data-centre part, retired pages on Hopper, …):
    /// remembered for the session and never exported as zero.
    NotSupported,
    /// This query failed this time; skip it this tick and ask again next tick.
    Transient(String),
    /// The driver or the device is gone (`GPU_IS_LOST`, `UNINITIALIZED`, library errors): the
    /// session is closed, the GPU marked down, and the source reopened with backoff.
    Fatal(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::NotSupported => f.write_str("not supported"),
            FieldError::Transient(m) => write!(f, "{m}"),
            FieldError::Fatal(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for FieldError {}

/// What identifies one GPU; read once per session (and again when its uuid changes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub uuid: String,
    pub name: String,
    /// `None` where the driver did not answer; exported as an empty label.
    pub pci_bus_id: Option<String>,
    pub serial: Option<String>,
    /// Current MIG mode, `None` where MIG is not supported.
    pub mig_enabled: Option<bool>,
}

/// Driver-wide facts for the info series.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriverInfo {
    pub driver_version: Option<String>,
    /// e.g. `13.0`.
    pub cuda_version: Option<String>,
}

/// One Xid error event as the driver delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidEvent {
    /// Device index of the session that saw it.
    pub index: u32,
    /// The Xid number; `None` when the driver could not say which.
    pub xid: Option<u64>,
}

/// Something that can be opened into a [`GpuSession`].
pub trait GpuSource: Send {
    /// Opens a session (NVML: loads the library and initialises it). The error names what was
    /// tried (the library path) so the operator can fix it.
    fn open(&mut self) -> Result<Box<dyn GpuSession + '_>, String>;
}

/// An open connection to the driver. Dropping it closes it (NVML: `nvmlShutdown` when the last
/// handle goes).
pub trait GpuSession {
    /// Driver and CUDA versions.
    fn driver_info(&mut self) -> DriverInfo;
    /// Number of GPUs visible now.
    fn device_count(&mut self) -> Result<u32, FieldError>;
    /// A device by index (0 ≤ index < `device_count`).
    fn device(&mut self, index: u32) -> Result<Box<dyn GpuDevice + '_>, FieldError>;
    /// Subscribes to Xid events (critical errors) where the devices support them. Called once per
    /// session when `xid_events` is on.
    fn subscribe_xid(&mut self) {}
    /// Xid events delivered since the last call, without blocking.
    fn poll_xid(&mut self) -> Vec<XidEvent> {
        Vec::new()
    }
}

/// One GPU within a session.
pub trait GpuDevice {
    /// The stable UUID, asked every tick to notice a device that changed under an index.
    fn uuid(&mut self) -> Result<String, FieldError>;
    /// The full identity (name, PCI bus id, serial, MIG mode).
    fn identity(&mut self) -> Result<Identity, FieldError>;
    /// One query.
    fn read(&mut self, field: Field) -> Result<Value, FieldError>;
}
