//! Runs the static and promtool checks of the ops files (dashboards, alert rules and their
//! unit tests, compose stack, Dockerfile, Kubernetes manifests): `scripts/ops/test-static.sh`.
//! The script installs what it needs (promtool, PyYAML in a venv outside the repository) and
//! fails loudly when it cannot.

use std::path::Path;
use std::process::Command;

#[test]
fn ops_static_checks_and_promtool_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/ops/test-static.sh"))
        .current_dir(root)
        .output()
        .expect("run scripts/ops/test-static.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/ops/test-static.sh failed:\n{text}"
    );
    assert!(text.contains("test-static: OK"), "{text}");
}
