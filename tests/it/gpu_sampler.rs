//! The GPU sampler against the fake source: every field, unsupported fields, no driver, hangs,
//! driver failure and recovery, devices appearing and disappearing, Xid events, processes.

use std::time::Duration;

use prometheus_client::registry::Registry;
use vllm_sentinel::exporter::Readiness;
use vllm_sentinel::gpu::source::{Field, FieldError, Value, XidEvent};
use vllm_sentinel::gpu::{FakeSource, GpuConfig, GpuSampler, GpuSnapshot};

const WAIT: Duration = Duration::from_secs(20);

fn cfg(interval_ms: u64, timeout_ms: u64) -> GpuConfig {
    GpuConfig {
        interval: Duration::from_millis(interval_ms),
        sample_timeout: Some(Duration::from_millis(timeout_ms)),
        pcie_throughput: true,
        ..GpuConfig::default()
    }
}

struct Running {
    registry: Registry,
    threads: Option<vllm_sentinel::gpu::SamplerThreads>,
    cell: std::sync::Arc<vllm_sentinel::gpu::SnapshotCell>,
}

impl Running {
    fn render(&self) -> String {
        vllm_sentinel::exporter::encode(&self.registry, None)
            .unwrap()
            .0
    }
    fn wait(&self, what: &str, pred: impl FnMut(&GpuSnapshot) -> bool) -> GpuSnapshot {
        let (s, ok) = self.cell.wait_until(WAIT, pred);
        assert!(ok, "timed out waiting for {what}; last snapshot: {s:?}");
        (*s).clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.threads.take() {
            t.stop();
        }
    }
}

fn start(source: FakeSource, cfg: &GpuConfig, ready: Option<&Readiness>) -> Running {
    let mut registry = Registry::default();
    let sampler = GpuSampler::with_source(cfg, Box::new(source), &mut registry)
        .with_max_backoff(Duration::from_millis(200));
    let cell = sampler.snapshots();
    let slot = ready.map(|r| r.register("gpu"));
    let threads = sampler.start(slot).unwrap();
    Running {
        registry,
        threads,
        cell,
    }
}

/// The value of the one series whose name and label fragment match.
fn value(text: &str, name: &str, frag: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (n, _) = l.split_once(['{', ' ']).unwrap_or((l, ""));
            n == name && l.contains(frag)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn every_field_is_exported_in_base_units() {
    let (src, _ctl) = FakeSource::with_gpus(2);
    let r = start(src, &cfg(100, 90), None);
    r.wait("first sample", |s| s.up && s.devices.len() == 2);
    let t = r.render();
    let g0 = r#"gpu="0",uuid="GPU-fake-0000",name="NVIDIA H200""#;
    let checks: &[(&str, &str, f64)] = &[
        ("vllm_sentinel_gpu_up", "", 1.0),
        (
            "vllm_sentinel_gpu_memory_total_bytes",
            g0,
            150_754_820_096.0,
        ),
        ("vllm_sentinel_gpu_memory_used_bytes", g0, 42_000_000_000.0),
        ("vllm_sentinel_gpu_memory_reserved_bytes", g0, 644_939_776.0),
        (
            "vllm_sentinel_gpu_memory_free_bytes",
            g0,
            (150_754_820_096u64 - 42_000_000_000 - 644_939_776) as f64,
        ),
        ("vllm_sentinel_gpu_utilization_ratio", g0, 1.0),
        ("vllm_sentinel_gpu_memory_utilization_ratio", g0, 0.23),
        ("vllm_sentinel_gpu_power_watts", g0, 512.345),
        ("vllm_sentinel_gpu_power_limit_watts", g0, 700.0),
        ("vllm_sentinel_gpu_energy_joules_total", g0, 123_456.789),
        ("vllm_sentinel_gpu_temperature_celsius", g0, 45.0),
        ("vllm_sentinel_gpu_sm_clock_hertz", g0, 1.98e9),
        ("vllm_sentinel_gpu_memory_clock_hertz", g0, 3.201e9),
        ("vllm_sentinel_gpu_sm_clock_max_hertz", g0, 1.98e9),
        ("vllm_sentinel_gpu_memory_clock_max_hertz", g0, 3.201e9),
        ("vllm_sentinel_gpu_performance_state", g0, 0.0),
        (
            "vllm_sentinel_gpu_clock_event_active",
            r#"reason="sw_power_cap""#,
            1.0,
        ),
        (
            "vllm_sentinel_gpu_clock_event_active",
            r#"reason="gpu_idle""#,
            0.0,
        ),
        ("vllm_sentinel_gpu_pcie_link_generation", g0, 5.0),
        ("vllm_sentinel_gpu_pcie_link_width", g0, 16.0),
        (
            "vllm_sentinel_gpu_pcie_tx_bytes_per_second",
            g0,
            1_024_000.0,
        ),
        (
            "vllm_sentinel_gpu_pcie_rx_bytes_per_second",
            g0,
            2_048_000.0,
        ),
        (
            "vllm_sentinel_gpu_ecc_errors_total",
            r#"error_type="corrected""#,
            3.0,
        ),
        (
            "vllm_sentinel_gpu_ecc_errors_total",
            r#"error_type="uncorrected""#,
            0.0,
        ),
        ("vllm_sentinel_gpu_remapped_rows", r#"cause="pending""#, 0.0),
        (
            "vllm_sentinel_gpu_info",
            r#"driver_version="580.159.04""#,
            1.0,
        ),
    ];
    for (name, frag, want) in checks {
        let got = value(&t, name, frag).unwrap_or_else(|| panic!("{name} {frag} missing:\n{t}"));
        assert!((got - want).abs() < 1e-6, "{name} {frag}: {got} != {want}");
    }
    assert!(t.contains(r#"cuda_version="13.0""#), "{t}");
    assert!(t.contains(r#"pci_bus_id="00000000:06:00.0""#), "{t}");
    assert!(t.contains(r#"mig_mode="disabled""#), "{t}");
    assert_eq!(
        t.matches("vllm_sentinel_gpu_clock_event_active{").count(),
        2 * 9,
        "one series per supported reason per GPU"
    );
    assert!(value(&t, "vllm_sentinel_gpu_sample_duration_seconds", "").unwrap() >= 0.0);
    assert!(value(&t, "vllm_sentinel_gpu_last_sample_timestamp_seconds", "").unwrap() > 1e9);
    assert!(
        t.contains("latest complete NVML sample"),
        "HELP says where values come from"
    );
}

#[test]
fn unsupported_fields_are_skipped_remembered_and_never_zero() {
    let (src, ctl) = FakeSource::with_gpus(1);
    {
        let mut s = ctl.state();
        let g = &mut s.gpus[0];
        g.fields.remove(&Field::PcieGeneration);
        g.fields.remove(&Field::RemappedRows);
        g.fields
            .insert(Field::EccCorrected, Err(FieldError::NotSupported));
    }
    let r = start(src, &cfg(100, 90), None);
    r.wait("three samples", |s| s.up && s.attempts >= 3);
    let t = r.render();
    assert!(!t.contains("vllm_sentinel_gpu_pcie_link_generation"), "{t}");
    assert!(!t.contains("vllm_sentinel_gpu_remapped_rows"), "{t}");
    assert!(!t.contains(r#"error_type="corrected""#), "{t}");
    assert!(t.contains(r#"error_type="uncorrected""#), "{t}");
    let uuid = "GPU-fake-0000";
    let opens = ctl.state().opens;
    // Asked once per session, not once per tick.
    assert_eq!(ctl.reads(uuid, Field::PcieGeneration), opens);
    assert_eq!(ctl.reads(uuid, Field::RemappedRows), opens);
    assert!(ctl.reads(uuid, Field::Memory) >= 3);
    // Maximum clocks cannot change under a loaded driver: read once per session, still exported.
    assert_eq!(ctl.reads(uuid, Field::SmClockMax), opens);
    assert_eq!(ctl.reads(uuid, Field::MemoryClockMax), opens);
    assert!(t.contains("vllm_sentinel_gpu_sm_clock_max_hertz{"), "{t}");
}

#[test]
fn transient_failures_skip_one_tick_and_are_asked_again() {
    let (src, ctl) = FakeSource::with_gpus(1);
    ctl.state().gpus[0].fields.insert(
        Field::Temperature,
        Err(FieldError::Transient("busy".into())),
    );
    let r = start(src, &cfg(100, 90), None);
    r.wait("three samples", |s| s.up && s.attempts >= 3);
    assert!(
        !r.render()
            .contains("vllm_sentinel_gpu_temperature_celsius{")
    );
    assert!(ctl.reads("GPU-fake-0000", Field::Temperature) >= 3);
    ctl.state().gpus[0]
        .fields
        .insert(Field::Temperature, Ok(Value::Celsius(51)));
    r.wait("temperature back", |s| {
        s.devices
            .first()
            .is_some_and(|d| d.temperature_celsius == Some(51.0))
    });
}

#[test]
fn no_driver_is_gpu_up_zero_and_ready() {
    let (src, ctl) =
        FakeSource::unavailable("NVML could not be loaded (libnvidia-ml.so.1: not found)");
    let ready = Readiness::default();
    let r = start(src, &cfg(100, 90), Some(&ready));
    r.wait("first attempt", |s| s.attempts >= 1);
    let (_, ok) = r.cell.wait_until(WAIT, |_| ready.is_ready());
    assert!(ok || ready.is_ready(), "ready after the first attempt");
    let t = r.render();
    assert_eq!(value(&t, "vllm_sentinel_gpu_up", ""), Some(0.0), "{t}");
    assert!(!t.contains("vllm_sentinel_gpu_memory"), "{t}");
    // It keeps retrying (with backoff) and comes up when a driver appears.
    ctl.state().open_error = None;
    ctl.state().gpus = vec![vllm_sentinel::gpu::fake::FakeGpu::h200(0)];
    r.wait("driver appears", |s| s.up && s.devices.len() == 1);
}

#[test]
fn a_hung_driver_marks_down_without_piling_up_threads_and_recovers() {
    let (src, ctl) = FakeSource::with_gpus(1);
    let r = start(src, &cfg(50, 40), None);
    r.wait("up", |s| s.up);
    ctl.set_hang(true);
    assert!(ctl.wait_blocked(WAIT), "a read blocks");
    let down = r.wait("marked down", |s| !s.up);
    assert!(
        down.devices.is_empty(),
        "no stale per-GPU series while down"
    );
    let attempts = down.attempts;
    r.wait("several ticks while hung", |s| s.attempts >= attempts + 3);
    {
        let s = ctl.state();
        assert_eq!(
            s.max_concurrent, 1,
            "one worker thread, however long the hang"
        );
        assert_eq!(s.blocked, 1);
    }
    assert_eq!(value(&r.render(), "vllm_sentinel_gpu_up", ""), Some(0.0));
    let opens = ctl.state().opens;
    ctl.set_hang(false);
    r.wait("recovered", |s| s.up && s.devices.len() == 1);
    assert!(
        ctl.state().opens > opens,
        "the session was reopened after the hang"
    );
    assert_eq!(ctl.state().max_concurrent, 1);
}

#[test]
fn a_driver_failure_marks_down_and_recovers_with_a_new_session() {
    let (src, ctl) = FakeSource::with_gpus(1);
    let r = start(src, &cfg(50, 40), None);
    r.wait("up", |s| s.up);
    ctl.state().fatal = Some("GPU is lost".into());
    r.wait("down", |s| !s.up);
    let opens = ctl.state().opens;
    ctl.state().fatal = None;
    r.wait("up again", |s| s.up && s.devices.len() == 1);
    assert!(ctl.state().opens > opens);
}

#[test]
fn devices_appear_and_disappear() {
    let (src, ctl) = FakeSource::with_gpus(2);
    let r = start(src, &cfg(50, 40), None);
    r.wait("two GPUs", |s| s.devices.len() == 2);
    ctl.state()
        .gpus
        .push(vllm_sentinel::gpu::fake::FakeGpu::h200(7));
    r.wait("three GPUs", |s| s.devices.len() == 3);
    assert!(r.render().contains(r#"gpu="2",uuid="GPU-fake-0007""#));
    ctl.state().gpus.remove(0);
    let s = r.wait("two again", |s| s.devices.len() == 2);
    assert_eq!(s.devices[0].identity.uuid, "GPU-fake-0001");
    let t = r.render();
    assert!(
        !t.contains("GPU-fake-0000"),
        "a gone GPU's series go too:\n{t}"
    );
}

#[test]
fn xid_events_are_counted_by_xid() {
    let (src, ctl) = FakeSource::with_gpus(2);
    let r = start(src, &cfg(50, 40), None);
    r.wait("up", |s| s.up);
    assert!(!r.render().contains("vllm_sentinel_gpu_xid_errors_total"));
    ctl.state().xid_queue.extend([
        XidEvent {
            index: 1,
            xid: Some(79),
        },
        XidEvent {
            index: 1,
            xid: Some(79),
        },
        XidEvent {
            index: 1,
            xid: Some(48),
        },
    ]);
    r.wait("xids", |s| {
        s.devices
            .get(1)
            .is_some_and(|d| d.xid_counts.iter().map(|(_, n)| n).sum::<u64>() == 3)
    });
    let t = r.render();
    assert_eq!(
        value(&t, "vllm_sentinel_gpu_xid_errors_total", r#"xid="79""#),
        Some(2.0),
        "{t}"
    );
    assert_eq!(
        value(&t, "vllm_sentinel_gpu_xid_errors_total", r#"xid="48""#),
        Some(1.0)
    );
    assert!(
        value(
            &t,
            "vllm_sentinel_gpu_last_xid_timestamp_seconds",
            r#"gpu="1""#
        )
        .unwrap()
            > 1e9
    );
    assert!(
        value(
            &t,
            "vllm_sentinel_gpu_last_xid_timestamp_seconds",
            r#"gpu="0""#
        )
        .is_none()
    );
}

#[test]
fn processes_are_named_from_proc_or_unknown() {
    let (src, ctl) = FakeSource::with_gpus(1);
    ctl.state().gpus[0].fields.insert(
        Field::GraphicsProcesses,
        Ok(Value::Processes(vec![
            vllm_sentinel::gpu::source::GpuProcess {
                // Above any pid_max: a process in another pid namespace.
                pid: 4_000_000_000,
                used_bytes: Some(1024),
            },
        ])),
    );
    let r = start(src, &cfg(100, 90), None);
    r.wait("up", |s| s.up);
    let t = r.render();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let frag = format!(r#"pid="{}",process="{}""#, std::process::id(), me.trim());
    assert_eq!(
        value(&t, "vllm_sentinel_gpu_process_memory_used_bytes", &frag),
        Some(41_000_000_000.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            "vllm_sentinel_gpu_process_memory_used_bytes",
            r#"pid="4000000000",process="unknown""#
        ),
        Some(1024.0)
    );
}

#[test]
fn processes_off_and_pcie_off_are_not_asked() {
    let (src, ctl) = FakeSource::with_gpus(1);
    let c = GpuConfig {
        processes: false,
        pcie_throughput: false,
        ..cfg(100, 90)
    };
    let r = start(src, &c, None);
    r.wait("two samples", |s| s.up && s.attempts >= 2);
    assert_eq!(ctl.reads("GPU-fake-0000", Field::ComputeProcesses), 0);
    assert_eq!(ctl.reads("GPU-fake-0000", Field::PcieThroughput), 0);
    let t = r.render();
    assert!(!t.contains("process_memory_used_bytes"));
    assert!(!t.contains("pcie_tx_bytes_per_second"));
}

#[test]
fn disabled_registers_nothing_and_starts_nothing() {
    let (src, ctl) = FakeSource::with_gpus(1);
    let mut registry = Registry::default();
    let c = GpuConfig {
        enabled: false,
        ..GpuConfig::default()
    };
    let sampler = GpuSampler::with_source(&c, Box::new(src), &mut registry);
    assert!(sampler.start(None).unwrap().is_none());
    let t = vllm_sentinel::exporter::encode(&registry, None).unwrap().0;
    assert!(!t.contains("vllm_sentinel_gpu"), "{t}");
    assert_eq!(ctl.state().opens, 0);
}
