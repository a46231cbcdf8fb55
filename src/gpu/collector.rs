//! Encodes the latest [`GpuSnapshot`] as the `vllm_sentinel_gpu_*` families (docs/metrics.md,
//! "GPU (NVML)"). A custom collector rather than registered gauges: the set of GPUs, clock-event
//! reasons, Xids and processes changes from tick to tick, and series that vanish from the
//! snapshot (a process that exited, a field that stopped answering) must vanish from `/metrics`
//! too, never linger as stale values or appear as zeros.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;

use super::snapshot::{DeviceSnapshot, GpuSnapshot, SnapshotCell};

/// Appended to every HELP text: values come from the last complete tick, not from the scrape.
const LATEST: &str = " (from the latest complete NVML sample; /metrics never waits on the driver)";

/// The collector registered in the daemon's registry.
#[derive(Debug)]
pub struct GpuCollector {
    cell: Arc<SnapshotCell>,
}

impl GpuCollector {
    pub fn new(cell: Arc<SnapshotCell>) -> Self {
        Self { cell }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn id_labels(d: &DeviceSnapshot, index: &str) -> [(&'static str, String); 3] {
    [
        ("gpu", index.to_string()),
        ("uuid", d.identity.uuid.clone()),
        ("name", d.identity.name.clone()),
    ]
}

/// Writes one gauge family with one sample per device that has a value.
fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    devs: &[(String, &DeviceSnapshot)],
    get: impl Fn(&DeviceSnapshot) -> Option<f64>,
) -> Result<(), std::fmt::Error> {
    if !devs.iter().any(|(_, d)| get(d).is_some()) {
        return Ok(());
    }
    let help = format!("{help}{LATEST}");
    let mut fam = enc.encode_descriptor(name, &help, None, MetricType::Gauge)?;
    for (idx, d) in devs {
        if let Some(v) = get(d) {
            let labels = id_labels(d, idx);
            ConstGauge::new(v).encode(fam.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Writes a gauge or counter family with extra labels per device.
fn labelled_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    devs: &[(String, &DeviceSnapshot)],
    get: impl Fn(&DeviceSnapshot) -> Vec<(Labels<'_>, f64)>,
) -> Result<(), std::fmt::Error> {
    if !devs.iter().any(|(_, d)| !get(d).is_empty()) {
        return Ok(());
    }
    let help = format!("{help}{LATEST}");
    let mut fam = enc.encode_descriptor(name, &help, None, kind)?;
    for (idx, d) in devs {
        let id = id_labels(d, idx);
        for (extra, v) in get(d) {
            let labels: Vec<(&str, &str)> = id
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .chain(extra.iter().copied())
                .collect();
            let m = fam.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(v).encode(m)?,
                _ => ConstGauge::new(v).encode(m)?,
            }
        }
    }
    Ok(())
}

/// Encodes one snapshot (public for the benchmark and tests).
pub fn encode_snapshot(
    s: &GpuSnapshot,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(if s.up { 1i64 } else { 0 }).encode(enc.encode_descriptor(
        "vllm_sentinel_gpu_up",
        "1 when NVML is initialised and the last GPU sample completed within its deadline",
        None,
        MetricType::Gauge,
    )?)?;
    if let Some(d) = s.sample_duration_seconds {
        ConstGauge::new(d).encode(enc.encode_descriptor(
            "vllm_sentinel_gpu_sample_duration_seconds",
            "Wall time of the last GPU sampling tick, all GPUs (while a driver call is stuck: the time waited so far)",
            None,
            MetricType::Gauge,
        )?)?;
    }
    if let Some(t) = s.last_sample_timestamp {
        ConstGauge::new(t).encode(enc.encode_descriptor(
            "vllm_sentinel_gpu_last_sample_timestamp_seconds",
            "Unix time the last complete GPU sample finished",
            None,
            MetricType::Gauge,
        )?)?;
    }
    if s.devices.is_empty() {
        return Ok(());
    }
    let devs: Vec<(String, &DeviceSnapshot)> =
        s.devices.iter().map(|d| (d.index.to_string(), d)).collect();

    {
        let help =
            format!("GPU identity: driver and CUDA versions, PCI bus id, serial, MIG mode{LATEST}");
        let mut fam = enc.encode_descriptor("vllm_sentinel_gpu", &help, None, MetricType::Info)?;
        let driver = s.driver.driver_version.clone().unwrap_or_default();
        let cuda = s.driver.cuda_version.clone().unwrap_or_default();
        for (idx, d) in &devs {
            let labels = id_labels(d, idx);
            let info = Info::new(vec![
                ("driver_version", driver.clone()),
                ("cuda_version", cuda.clone()),
                (
                    "pci_bus_id",
                    d.identity.pci_bus_id.clone().unwrap_or_default(),
                ),
                ("serial", d.identity.serial.clone().unwrap_or_default()),
                (
                    "mig_mode",
                    match d.identity.mig_enabled {
                        Some(true) => "enabled",
                        Some(false) => "disabled",
                        None => "unsupported",
                    }
                    .to_string(),
                ),
            ]);
            info.encode(fam.encode_family(&labels)?)?;
        }
    }

    let e = enc;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_total_bytes",
        "Framebuffer memory installed, bytes",
        &devs,
        |d| d.memory.map(|m| m.total as f64),
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_used_bytes",
        "Framebuffer memory allocated, bytes (a serving engine holds most of it whether or not it computes)",
        &devs,
        |d| d.memory.map(|m| m.used as f64),
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_free_bytes",
        "Framebuffer memory free, bytes",
        &devs,
        |d| d.memory.map(|m| m.free as f64),
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_reserved_bytes",
        "Framebuffer memory reserved by the driver, bytes",
        &devs,
        |d| d.memory.map(|m| m.reserved as f64),
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_utilization_ratio",
        "Fraction of the driver's sample period during which a kernel ran on the GPU",
        &devs,
        |d| d.utilization_gpu,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_utilization_ratio",
        "Fraction of the driver's sample period during which device memory was read or written",
        &devs,
        |d| d.utilization_memory,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_power_watts",
        "Power draw, watts",
        &devs,
        |d| d.power_watts,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_power_limit_watts",
        "Enforced power limit, watts",
        &devs,
        |d| d.power_limit_watts,
    )?;
    {
        let help = format!("Energy consumed since the driver was loaded, joules{LATEST}");
        if devs.iter().any(|(_, d)| d.energy_joules.is_some()) {
            let mut fam = e.encode_descriptor(
                "vllm_sentinel_gpu_energy_joules",
                &help,
                None,
                MetricType::Counter,
            )?;
            for (idx, d) in &devs {
                if let Some(v) = d.energy_joules {
                    ConstCounter::new(v).encode(fam.encode_family(&id_labels(d, idx))?)?;
                }
            }
        }
    }
    gauge_family(
        e,
        "vllm_sentinel_gpu_temperature_celsius",
        "GPU temperature, degrees Celsius",
        &devs,
        |d| d.temperature_celsius,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_sm_clock_hertz",
        "Current SM clock, hertz",
        &devs,
        |d| d.sm_clock_hz,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_clock_hertz",
        "Current memory clock, hertz",
        &devs,
        |d| d.memory_clock_hz,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_sm_clock_max_hertz",
        "Maximum SM clock, hertz",
        &devs,
        |d| d.sm_clock_max_hz,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_memory_clock_max_hertz",
        "Maximum memory clock, hertz",
        &devs,
        |d| d.memory_clock_max_hz,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_performance_state",
        "Performance state, P0 (fastest) to P15",
        &devs,
        |d| d.performance_state.map(f64::from),
    )?;
    labelled_family(
        e,
        "vllm_sentinel_gpu_clock_event_active",
        "1 while that clock-event (throttle) reason holds clocks down; one series per reason the GPU supports",
        MetricType::Gauge,
        &devs,
        |d| {
            d.clock_events
                .iter()
                .map(|(r, on)| (vec![("reason", *r)], if *on { 1.0 } else { 0.0 }))
                .collect()
        },
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_pcie_link_generation",
        "Current PCIe link generation",
        &devs,
        |d| d.pcie_generation.map(f64::from),
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_pcie_link_width",
        "Current PCIe link width (lanes)",
        &devs,
        |d| d.pcie_width.map(f64::from),
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_pcie_tx_bytes_per_second",
        "PCIe transmit throughput over NVML's 20 ms window, bytes per second (opt-in: gpu.pcie_throughput)",
        &devs,
        |d| d.pcie_tx_bytes_per_second,
    )?;
    gauge_family(
        e,
        "vllm_sentinel_gpu_pcie_rx_bytes_per_second",
        "PCIe receive throughput over NVML's 20 ms window, bytes per second (opt-in: gpu.pcie_throughput)",
        &devs,
        |d| d.pcie_rx_bytes_per_second,
    )?;
    labelled_family(
        e,
        "vllm_sentinel_gpu_ecc_errors",
        "Volatile ECC error count since the driver was loaded",
        MetricType::Counter,
        &devs,
        |d| {
            let mut v = Vec::new();
            if let Some(c) = d.ecc_corrected {
                v.push((vec![("error_type", "corrected")], c as f64));
            }
            if let Some(c) = d.ecc_uncorrected {
                v.push((vec![("error_type", "uncorrected")], c as f64));
            }
            v
        },
    )?;
    labelled_family(
        e,
        "vllm_sentinel_gpu_remapped_rows",
        "Remapped memory rows by cause; pending and failed are 0 or 1",
        MetricType::Gauge,
        &devs,
        |d| {
            d.remapped_rows
                .map(|r| {
                    vec![
                        (vec![("cause", "correctable")], r.correctable as f64),
                        (vec![("cause", "uncorrectable")], r.uncorrectable as f64),
                        (vec![("cause", "pending")], r.pending as f64),
                        (vec![("cause", "failed")], r.failed as f64),
                    ]
                })
                .unwrap_or_default()
        },
    )?;
    {
        // Xid label values are owned strings; build them before borrowing.
        let xids: Vec<Vec<(String, f64)>> = devs
            .iter()
            .map(|(_, d)| {
                d.xid_counts
                    .iter()
                    .map(|(x, n)| {
                        (
                            x.map(|x| x.to_string()).unwrap_or_else(|| "unknown".into()),
                            *n as f64,
                        )
                    })
                    .collect()
            })
            .collect();
        if xids.iter().any(|v| !v.is_empty()) {
            let help =
                format!("Xid errors the driver reported while this sidecar ran, by Xid{LATEST}");
            let mut fam = e.encode_descriptor(
                "vllm_sentinel_gpu_xid_errors",
                &help,
                None,
                MetricType::Counter,
            )?;
            for ((idx, d), list) in devs.iter().zip(&xids) {
                let id = id_labels(d, idx);
                for (x, n) in list {
                    let labels: Vec<(&str, &str)> = id
                        .iter()
                        .map(|(k, v)| (*k, v.as_str()))
                        .chain([("xid", x.as_str())])
                        .collect();
                    ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
    }
    gauge_family(
        e,
        "vllm_sentinel_gpu_last_xid_timestamp_seconds",
        "Unix time of the last Xid error seen on this GPU",
        &devs,
        |d| d.last_xid_timestamp,
    )?;
    {
        let rows: Vec<Vec<(String, &str, f64)>> = devs
            .iter()
            .map(|(_, d)| {
                d.processes
                    .iter()
                    .flatten()
                    .map(|p| (p.pid.to_string(), p.name.as_str(), p.used_bytes as f64))
                    .collect()
            })
            .collect();
        if rows.iter().any(|v| !v.is_empty()) {
            let help = format!(
                "GPU memory used by each process with a context on the GPU, bytes; process is /proc/<pid>/comm, or unknown when the pid is in another pid namespace{LATEST}"
            );
            let mut fam = e.encode_descriptor(
                "vllm_sentinel_gpu_process_memory_used_bytes",
                &help,
                None,
                MetricType::Gauge,
            )?;
            for ((idx, d), list) in devs.iter().zip(&rows) {
                let id = id_labels(d, idx);
                for (pid, name, v) in list {
                    let labels: Vec<(&str, &str)> = id
                        .iter()
                        .map(|(k, v)| (*k, v.as_str()))
                        .chain([("pid", pid.as_str()), ("process", *name)])
                        .collect();
                    ConstGauge::new(*v).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

impl Collector for GpuCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.cell.load();
        encode_snapshot(&snap, &mut encoder)
    }
}
