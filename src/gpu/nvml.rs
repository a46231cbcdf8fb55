//! The real source: NVML through `nvml-wrapper` (which `dlopen`s the driver's
//! `libnvidia-ml.so.1` at run time, so the binary runs on machines without a driver).
//!
//! Library lookup: the configured `nvml_library` path alone when set; otherwise
//! `libnvidia-ml.so.1` from the loader path, then [`FALLBACK_LIBRARY`] (where the H200 machines
//! and many container images keep it). Errors name every path tried.
//!
//! Remapped rows are read through NVML's field-values API (fields 142–145) because the wrapper
//! has no safe call for `nvmlDeviceGetRemappedRows`, and this crate denies `unsafe`.

use std::ffi::OsStr;
use std::path::PathBuf;

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
    NVML_FI_DEV_REMAPPED_UNC,
};

use super::source::{
    DriverInfo, Field, FieldError, GpuDevice, GpuProcess, GpuSession, GpuSource, Identity,
    MemoryBytes, RemappedRows, Value, XidEvent,
};

/// The soname the driver installs.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
/// Tried when [`DEFAULT_LIBRARY`] is not on the loader path.
pub const FALLBACK_LIBRARY: &str = "/usr/local/nvidia/lib64/libnvidia-ml.so.1";

/// Opens NVML sessions.
#[derive(Debug)]
pub struct NvmlSource {
    configured: Option<PathBuf>,
    nvml: Option<Nvml>,
    /// The library that loaded last, for the log line.
    loaded_from: Option<String>,
}

impl NvmlSource {
    /// `library`: the `--nvml-library` path, or `None` for the loader path plus the fallback.
    pub fn new(library: Option<PathBuf>) -> Self {
        Self {
            configured: library,
            nvml: None,
            loaded_from: None,
        }
    }

    /// The library that loaded in the last successful [`GpuSource::open`].
    pub fn loaded_from(&self) -> Option<&str> {
        self.loaded_from.as_deref()
    }

    fn candidates(&self) -> Vec<PathBuf> {
        match &self.configured {
            Some(p) => vec![p.clone()],
            None => vec![
                PathBuf::from(DEFAULT_LIBRARY),
                PathBuf::from(FALLBACK_LIBRARY),
            ],
        }
    }
}

impl GpuSource for NvmlSource {
    fn open(&mut self) -> Result<Box<dyn GpuSession + '_>, String> {
        // Shut the previous session down before initialising again.
        self.nvml = None;
        let mut tried = Vec::new();
        let mut loaded = None;
        for path in self.candidates() {
            match Nvml::builder().lib_path(OsStr::new(&path)).init() {
                Ok(n) => {
                    loaded = Some((n, path));
                    break;
                }
                Err(e) => tried.push(format!("{}: {}", path.display(), describe(&e))),
            }
        }
        let Some((nvml, path)) = loaded else {
            return Err(format!("NVML could not be loaded ({})", tried.join("; ")));
        };
        let from = path.display().to_string();
        if self.loaded_from.as_deref() != Some(from.as_str()) {
            if tried.is_empty() {
                tracing::info!(library = %from, "NVML loaded");
            } else {
                tracing::info!(library = %from, earlier = %tried.join("; "), "NVML loaded from the fallback path");
            }
        }
        self.loaded_from = Some(from);
        let nvml = self.nvml.insert(nvml);
        Ok(Box::new(NvmlSession {
            nvml,
            events: Vec::new(),
        }))
    }
}

struct NvmlSession<'a> {
    nvml: &'a Nvml,
    /// One event set per subscribed device (a failed registration frees the set it was given,
    /// so sharing one set would lose the others' subscriptions).
    events: Vec<(u32, EventSet<'a>)>,
}

impl GpuSession for NvmlSession<'_> {
    fn driver_info(&mut self) -> DriverInfo {
        let cuda = self.nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        DriverInfo {
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_version: cuda,
        }
    }

    fn device_count(&mut self) -> Result<u32, FieldError> {
        self.nvml.device_count().map_err(classify)
    }

    fn device(&mut self, index: u32) -> Result<Box<dyn GpuDevice + '_>, FieldError> {
        let device = self.nvml.device_by_index(index).map_err(classify)?;
        Ok(Box::new(NvmlDevice { device }))
    }

    fn subscribe_xid(&mut self) {
        self.events.clear();
        let Ok(count) = self.nvml.device_count() else {
            return;
        };
        for index in 0..count {
            let Ok(device) = self.nvml.device_by_index(index) else {
                continue;
            };
            let supported = device
                .supported_event_types()
                .map(|t| t.contains(EventTypes::CRITICAL_XID_ERROR))
                .unwrap_or(false);
            if !supported {
                tracing::info!(gpu = index, "Xid events not supported on this GPU");
                continue;
            }
            let set = match self.nvml.create_event_set() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(gpu = index, error = %describe(&e), "cannot create an NVML event set; Xid errors will not be counted");
                    continue;
                }
            };
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(set) => self.events.push((index, set)),
                Err(e) => {
                    tracing::warn!(gpu = index, error = %describe(&e.error), "cannot subscribe to Xid events; Xid errors will not be counted");
                }
            }
        }
    }

    fn poll_xid(&mut self) -> Vec<XidEvent> {
        let mut out = Vec::new();
        for (index, set) in &self.events {
            // wait(0) returns at once: an event, or Timeout when none is queued. Bounded so a
            // storm of events cannot keep the sampler here.
            for _ in 0..64 {
                match set.wait(0) {
                    Ok(ev) => {
                        if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                            out.push(XidEvent {
                                index: *index,
                                xid: match ev.event_data {
                                    Some(XidError::Value(v)) => Some(v),
                                    _ => None,
                                },
                            });
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        out
    }
}

struct NvmlDevice<'a> {
    device: nvml_wrapper::Device<'a>,
}

impl GpuDevice for NvmlDevice<'_> {
    fn uuid(&mut self) -> Result<String, FieldError> {
        self.device.uuid().map_err(classify)
    }

    fn identity(&mut self) -> Result<Identity, FieldError> {
        let d = &self.device;
        Ok(Identity {
            uuid: d.uuid().map_err(classify)?,
            name: d.name().map_err(classify)?,
            pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
            serial: d.serial().ok(),
            mig_enabled: d.mig_mode().ok().map(|m| m.current != 0),
        })
    }

    fn read(&mut self, field: Field) -> Result<Value, FieldError> {
        let d = &self.device;
        let v = match field {
            Field::Memory => {
                let m = d.memory_info().map_err(classify)?;
                Value::Memory(MemoryBytes {
                    total: m.total,
                    used: m.used,
                    free: m.free,
                    reserved: m.reserved,
                })
            }
            Field::Utilization => {
                let u = d.utilization_rates().map_err(classify)?;
                Value::Utilization {
                    gpu: u.gpu,
                    memory: u.memory,
                }
            }
            Field::Power => Value::Milliwatts(d.power_usage().map_err(classify)?),
            Field::PowerLimit => Value::Milliwatts(d.enforced_power_limit().map_err(classify)?),
            Field::Energy => Value::Millijoules(d.total_energy_consumption().map_err(classify)?),
            Field::Temperature => {
                Value::Celsius(d.temperature(TemperatureSensor::Gpu).map_err(classify)?)
            }
            Field::SmClock => Value::Megahertz(d.clock_info(Clock::SM).map_err(classify)?),
            Field::MemoryClock => Value::Megahertz(d.clock_info(Clock::Memory).map_err(classify)?),
            Field::SmClockMax => Value::Megahertz(d.max_clock_info(Clock::SM).map_err(classify)?),
            Field::MemoryClockMax => {
                Value::Megahertz(d.max_clock_info(Clock::Memory).map_err(classify)?)
            }
            Field::PerformanceState => performance_state(d)?,
            Field::ClockEvents => {
                let active = d.current_throttle_reasons().map_err(classify)?;
                let supported = d
                    .supported_throttle_reasons()
                    .unwrap_or(ThrottleReasons::all());
                Value::ClockEvents {
                    active: active.bits(),
                    supported: supported.bits(),
                }
            }
            Field::PcieGeneration => Value::Number(d.current_pcie_link_gen().map_err(classify)?),
            Field::PcieWidth => Value::Number(d.current_pcie_link_width().map_err(classify)?),
            Field::PcieThroughput => Value::PcieThroughput {
                tx_kib_per_s: d.pcie_throughput(PcieUtilCounter::Send).map_err(classify)?,
                rx_kib_per_s: d
                    .pcie_throughput(PcieUtilCounter::Receive)
                    .map_err(classify)?,
            },
            Field::EccCorrected => Value::Count(
                d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                    .map_err(classify)?,
            ),
            Field::EccUncorrected => Value::Count(
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    .map_err(classify)?,
            ),
            Field::RemappedRows => remapped_rows(d)?,
            Field::ComputeProcesses => processes(d.running_compute_processes())?,
            Field::GraphicsProcesses => processes(d.running_graphics_processes())?,
        };
        Ok(v)
    }
}

/// The performance state, P0 (fastest) to P15; unknown is not supported.
fn performance_state(d: &nvml_wrapper::Device<'_>) -> Result<Value, FieldError> {
    use nvml_wrapper::enum_wrappers::device::PerformanceState as P;
    let n = match d.performance_state().map_err(classify)? {
        P::Zero => 0,
        P::One => 1,
        P::Two => 2,
        P::Three => 3,
        P::Four => 4,
        P::Five => 5,
        P::Six => 6,
        P::Seven => 7,
        P::Eight => 8,
        P::Nine => 9,
        P::Ten => 10,
        P::Eleven => 11,
        P::Twelve => 12,
        P::Thirteen => 13,
        P::Fourteen => 14,
        P::Fifteen => 15,
        P::Unknown => return Err(FieldError::NotSupported),
    };
    Ok(Value::PerformanceState(n))
}

/// Remapped rows (correctable, uncorrectable, pending, failed), one field-values call.
fn remapped_rows(d: &nvml_wrapper::Device<'_>) -> Result<Value, FieldError> {
    let ids = [
        FieldId(NVML_FI_DEV_REMAPPED_COR),
        FieldId(NVML_FI_DEV_REMAPPED_UNC),
        FieldId(NVML_FI_DEV_REMAPPED_PENDING),
        FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
    ];
    let samples = d.field_values_for(&ids).map_err(classify)?;
    let mut n = [0u64; 4];
    for (slot, s) in n.iter_mut().zip(samples) {
        let s = s.map_err(classify)?;
        *slot = sample_u64(s.value.map_err(classify)?)?;
    }
    Ok(Value::RemappedRows(RemappedRows {
        correctable: n[0],
        uncorrectable: n[1],
        pending: n[2],
        failed: n[3],
    }))
}

fn processes(
    r: Result<Vec<nvml_wrapper::struct_wrappers::device::ProcessInfo>, NvmlError>,
) -> Result<Value, FieldError> {
    match r {
        Ok(list) => Ok(Value::Processes(
            list.into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect(),
        )),
        // No process has a context.
        Err(NvmlError::NotFound) => Ok(Value::Processes(Vec::new())),
        Err(e) => Err(classify(e)),
    }
}

fn sample_u64(v: nvml_wrapper::enums::device::SampleValue) -> Result<u64, FieldError> {
    use nvml_wrapper::enums::device::SampleValue as S;
    Ok(match v {
        S::U32(x) => u64::from(x),
        S::U64(x) => x,
        S::I64(x) => u64::try_from(x).unwrap_or(0),
        S::F64(x) if x >= 0.0 => x as u64,
        _ => return Err(FieldError::Transient("unexpected sample type".into())),
    })
}

/// NVML's error, in words, with the code name operators search for.
fn describe(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(l) => format!("cannot load the library: {l}"),
        other => format!("{other}"),
    }
}

/// Maps NVML's errors onto the sampler's three reactions.
pub fn classify(e: NvmlError) -> FieldError {
    match e {
        NvmlError::NotSupported | NvmlError::FunctionNotFound | NvmlError::NoPermission => {
            FieldError::NotSupported
        }
        NvmlError::FailedToLoadSymbol(_) => FieldError::NotSupported,
        NvmlError::GpuLost
        | NvmlError::Uninitialized
        | NvmlError::DriverNotLoaded
        | NvmlError::LibRmVersionMismatch
        | NvmlError::ResetRequired
        | NvmlError::LibraryNotFound
        | NvmlError::LibloadingError(_)
        | NvmlError::Unknown => FieldError::Fatal(describe(&e)),
        other => FieldError::Transient(describe(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_path() {
        let mut s = NvmlSource::new(Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")));
        let err = s.open().err().unwrap_or_default();
        assert!(err.contains("/nonexistent/libnvidia-ml.so.1"), "{err}");
    }

    #[test]
    fn default_lookup_names_both_paths() {
        let mut s = NvmlSource::new(None);
        // On a machine with a driver this opens; without one both candidates are named.
        if let Err(err) = s.open() {
            assert!(err.contains(DEFAULT_LIBRARY), "{err}");
            assert!(err.contains(FALLBACK_LIBRARY), "{err}");
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(NvmlError::NotSupported), FieldError::NotSupported);
        assert!(matches!(classify(NvmlError::GpuLost), FieldError::Fatal(_)));
        assert!(matches!(
            classify(NvmlError::Timeout),
            FieldError::Transient(_)
        ));
    }
}
