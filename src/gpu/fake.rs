//! A scripted [`GpuSource`] for tests and benchmarks: GPUs whose every field, unsupported field,
//! failure and hang is set from the outside through a [`FakeControl`], with call counts to prove
//! what the sampler asked.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::source::{
    DriverInfo, Field, FieldError, GpuDevice, GpuProcess, GpuSession, GpuSource, Identity,
    MemoryBytes, RemappedRows, Value, XidEvent,
};

/// One fake GPU.
#[derive(Debug, Clone)]
pub struct FakeGpu {
    pub identity: Identity,
    /// The answer per field; a field absent here answers `NotSupported`.
    pub fields: HashMap<Field, Result<Value, FieldError>>,
}

impl FakeGpu {
    /// A GPU that answers every field with H200-like values (idle, 1 process when `pid` is set).
    pub fn h200(index: u32) -> Self {
        let mut f = HashMap::new();
        let total = 150_754_820_096u64;
        let reserved = 644_939_776u64;
        let used = 42_000_000_000u64;
        f.insert(
            Field::Memory,
            Ok(Value::Memory(MemoryBytes {
                total,
                used,
                free: total - used - reserved,
                reserved,
            })),
        );
        f.insert(
            Field::Utilization,
            Ok(Value::Utilization {
                gpu: 100,
                memory: 23,
            }),
        );
        f.insert(Field::Power, Ok(Value::Milliwatts(512_345)));
        f.insert(Field::PowerLimit, Ok(Value::Milliwatts(700_000)));
        f.insert(Field::Energy, Ok(Value::Millijoules(123_456_789)));
        f.insert(Field::Temperature, Ok(Value::Celsius(45)));
        f.insert(Field::SmClock, Ok(Value::Megahertz(1980)));
        f.insert(Field::MemoryClock, Ok(Value::Megahertz(3201)));
        f.insert(Field::SmClockMax, Ok(Value::Megahertz(1980)));
        f.insert(Field::MemoryClockMax, Ok(Value::Megahertz(3201)));
        f.insert(Field::PerformanceState, Ok(Value::PerformanceState(0)));
        f.insert(
            Field::ClockEvents,
            Ok(Value::ClockEvents {
                active: 0x4,
                supported: 0x1ff,
            }),
        );
        f.insert(Field::PcieGeneration, Ok(Value::Number(5)));
        f.insert(Field::PcieWidth, Ok(Value::Number(16)));
        f.insert(
            Field::PcieThroughput,
            Ok(Value::PcieThroughput {
                tx_kib_per_s: 1000,
                rx_kib_per_s: 2000,
            }),
        );
        f.insert(Field::EccCorrected, Ok(Value::Count(3)));
        f.insert(Field::EccUncorrected, Ok(Value::Count(0)));
        f.insert(
            Field::RemappedRows,
            Ok(Value::RemappedRows(RemappedRows::default())),
        );
        f.insert(
            Field::ComputeProcesses,
            Ok(Value::Processes(vec![GpuProcess {
                pid: std::process::id(),
                used_bytes: Some(41_000_000_000),
            }])),
        );
        f.insert(Field::GraphicsProcesses, Ok(Value::Processes(Vec::new())));
        Self {
            identity: Identity {
                uuid: format!("GPU-fake-{index:04}"),
                name: "NVIDIA H200".into(),
                pci_bus_id: Some(format!("00000000:{:02X}:00.0", index + 6)),
                serial: Some(format!("165000000{index:04}")),
                mig_enabled: Some(false),
            },
            fields: f,
        }
    }
}

/// The fake's mutable state, shared with the test through [`FakeControl`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// `Some(msg)`: `open` fails with this message (no driver).
    pub open_error: Option<String>,
    pub gpus: Vec<FakeGpu>,
    pub driver: DriverInfo,
    /// `Some(msg)`: every call after open fails fatally (driver died).
    pub fatal: Option<String>,
    /// While true, every device read blocks (a hung driver call).
    pub hang: bool,
    /// Xid events waiting to be polled.
    pub xid_queue: Vec<XidEvent>,
    /// Calls per (uuid, field).
    pub reads: HashMap<(String, Field), u64>,
    pub opens: u64,
    /// Reads currently blocked in `hang`.
    pub blocked: u64,
    /// The most reads ever in flight at once (proves one worker thread).
    pub max_concurrent: u64,
    in_flight: u64,
}

/// The test's handle on a [`FakeSource`].
#[derive(Debug, Clone, Default)]
pub struct FakeControl {
    inner: Arc<(Mutex<FakeState>, Condvar)>,
}

impl FakeControl {
    /// Locks the state for reading or changing it; changes are seen by the next call.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        match self.inner.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Sets `hang` and wakes blocked reads when it is cleared.
    pub fn set_hang(&self, on: bool) {
        self.state().hang = on;
        self.inner.1.notify_all();
    }

    /// Calls of one field on one GPU so far.
    pub fn reads(&self, uuid: &str, field: Field) -> u64 {
        self.state()
            .reads
            .get(&(uuid.to_string(), field))
            .copied()
            .unwrap_or(0)
    }

    /// Waits (with a deadline) until a read is blocked in a hang.
    pub fn wait_blocked(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.state();
        while g.blocked == 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.inner.1.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// A scripted GPU source.
#[derive(Debug, Clone, Default)]
pub struct FakeSource {
    control: FakeControl,
}

impl FakeSource {
    /// `n` H200-like GPUs.
    pub fn with_gpus(n: u32) -> (Self, FakeControl) {
        let control = FakeControl::default();
        {
            let mut s = control.state();
            s.gpus = (0..n).map(FakeGpu::h200).collect();
            s.driver = DriverInfo {
                driver_version: Some("580.159.04".into()),
                cuda_version: Some("13.0".into()),
            };
        }
        (
            Self {
                control: control.clone(),
            },
            control,
        )
    }

    /// A source whose `open` fails, like a machine without a driver.
    pub fn unavailable(msg: &str) -> (Self, FakeControl) {
        let (s, c) = Self::with_gpus(0);
        c.state().open_error = Some(msg.to_string());
        (s, c)
    }
}

impl GpuSource for FakeSource {
    fn open(&mut self) -> Result<Box<dyn GpuSession + '_>, String> {
        let mut s = self.control.state();
        s.opens += 1;
        if let Some(e) = &s.open_error {
            return Err(e.clone());
        }
        drop(s);
        Ok(Box::new(FakeSession {
            control: self.control.clone(),
        }))
    }
}

struct FakeSession {
    control: FakeControl,
}

impl FakeSession {
    fn check(&self) -> Result<MutexGuard<'_, FakeState>, FieldError> {
        let s = self.control.state();
        if let Some(m) = &s.fatal {
            return Err(FieldError::Fatal(m.clone()));
        }
        Ok(s)
    }
}

impl GpuSession for FakeSession {
    fn driver_info(&mut self) -> DriverInfo {
        self.control.state().driver.clone()
    }
    fn device_count(&mut self) -> Result<u32, FieldError> {
        Ok(self.check()?.gpus.len() as u32)
    }
    fn device(&mut self, index: u32) -> Result<Box<dyn GpuDevice + '_>, FieldError> {
        let s = self.check()?;
        if index as usize >= s.gpus.len() {
            return Err(FieldError::Transient("no such GPU".into()));
        }
        drop(s);
        Ok(Box::new(FakeDevice {
            control: self.control.clone(),
            index: index as usize,
        }))
    }
    fn poll_xid(&mut self) -> Vec<XidEvent> {
        std::mem::take(&mut self.control.state().xid_queue)
    }
}

struct FakeDevice {
    control: FakeControl,
    index: usize,
}

impl FakeDevice {
    fn identity_now(&self) -> Result<Identity, FieldError> {
        let s = self.control.state();
        if let Some(m) = &s.fatal {
            return Err(FieldError::Fatal(m.clone()));
        }
        s.gpus
            .get(self.index)
            .map(|g| g.identity.clone())
            .ok_or_else(|| FieldError::Fatal("GPU is lost".into()))
    }
}

impl GpuDevice for FakeDevice {
    fn uuid(&mut self) -> Result<String, FieldError> {
        Ok(self.identity_now()?.uuid)
    }
    fn identity(&mut self) -> Result<Identity, FieldError> {
        self.identity_now()
    }
    fn read(&mut self, field: Field) -> Result<Value, FieldError> {
        let (lock, cv) = &*self.control.inner;
        let mut s = match lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        s.in_flight += 1;
        s.max_concurrent = s.max_concurrent.max(s.in_flight);
        if s.hang {
            s.blocked += 1;
            cv.notify_all();
            while s.hang {
                s = match cv.wait(s) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            s.blocked -= 1;
        }
        s.in_flight -= 1;
        if let Some(m) = &s.fatal {
            return Err(FieldError::Fatal(m.clone()));
        }
        let Some(gpu) = s.gpus.get(self.index) else {
            return Err(FieldError::Fatal("GPU is lost".into()));
        };
        let answer = gpu
            .fields
            .get(&field)
            .cloned()
            .unwrap_or(Err(FieldError::NotSupported));
        let uuid = gpu.identity.uuid.clone();
        *s.reads.entry((uuid, field)).or_insert(0) += 1;
        answer
    }
}
