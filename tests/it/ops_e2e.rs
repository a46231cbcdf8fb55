//! End-to-end test of the dashboards and alert rules in a real Prometheus:
//! `scripts/ops/e2e-prometheus.sh` (see its header), always against this crate's binary, with
//! faults injected through the simulator's `POST /sim/faults` until the TTFT and context-length
//! alerts fire. Two forms:
//! - `vllm-sentinel simulate` + `serve --no-gpu --tap-listen`;
//! - `vllm-sentinel demo --fake-gpus 2 --tap-listen` (the GPU families from the exporter itself,
//!   two simulated H200s).
//!
//! Both install Prometheus when missing (Debian's `prometheus` package) and bound every wait.

use std::path::Path;
use std::process::Command;

fn run_e2e(args: &[&str], envs: &[(&str, &str)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/ops/e2e-prometheus.sh"))
        .args(args)
        .current_dir(root);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run scripts/ops/e2e-prometheus.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "e2e-prometheus.sh {args:?} failed:\n{text}"
    );
    assert!(text.contains("e2e-prometheus ("), "{text}");
    assert!(text.contains("0 failed"), "{text}");
}

#[test]
fn dashboards_and_rules_work_in_prometheus_against_the_demo_with_fake_gpus() {
    run_e2e(
        &["--binary", env!("CARGO_BIN_EXE_vllm-sentinel"), "--demo"],
        &[],
    );
}

#[test]
fn dashboards_and_rules_work_in_prometheus_against_the_daemon_and_simulator() {
    run_e2e(&["--binary", env!("CARGO_BIN_EXE_vllm-sentinel")], &[]);
}
