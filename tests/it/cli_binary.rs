//! The real binary, as a user runs it: `demo` starts, serves live metrics that a Prometheus text
//! parser and `promtool check metrics` accept, and shuts down cleanly on SIGTERM; bad flags and a
//! port in use fail with one clear line before anything starts; proxy variables in the
//! environment never divert the scrape.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vllm-sentinel");

fn get(url: &str) -> Option<(u16, String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Some((status, ct, resp.text().await.ok()?))
    })
}

/// Polls `f` until it returns `Some`, failing after `deadline`.
fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sample_value(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn demo_serves_live_metrics_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--sim-listen",
            "127.0.0.1:0",
            "--no-gpu",
            "--concurrency",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let metrics_url = wait_for("the demo's metrics URL", Duration::from_secs(30), || {
        let line = lines.next()?.ok()?;
        line.contains("vllm-sentinel metrics:")
            .then(|| line.split_whitespace().last().unwrap().to_string())
    });
    assert!(
        metrics_url.starts_with("http://127.0.0.1:") && metrics_url.ends_with("/metrics"),
        "{metrics_url}"
    );

    // Live probe results arrive within seconds.
    let (ct, body) = wait_for("probe results in /metrics", Duration::from_secs(60), || {
        let (status, ct, body) = get(&metrics_url)?;
        assert_eq!(status, 200);
        let ok = sample_value(&body, "vllm_sentinel_probe_ttft_seconds_count{")?;
        let up = sample_value(&body, "vllm_sentinel_upstream_up{")?;
        (ok >= 2.0 && up == 1.0).then_some((ct, body))
    });
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(body.contains("vllm_sentinel_build_info{"));
    // GPU sampling was disabled: no GPU series at all (not zeros that would page someone).
    assert!(
        !body.contains("\nvllm_sentinel_gpu_up "),
        "GPU series exported although disabled"
    );

    // Our own exposition re-parses with our Prometheus text parser, and promtool accepts it.
    let parsed = vllm_sentinel::scrape::expfmt::parse(
        &body,
        vllm_sentinel::scrape::expfmt::Format::Prometheus,
    );
    assert!(
        parsed.errors.is_empty(),
        "parse errors: {:?}",
        parsed.errors
    );
    assert!(
        parsed
            .families
            .iter()
            .any(|f| f.name == "vllm_sentinel_probe_ttft_seconds")
    );
    check_with_promtool(&body);

    // The landing page lists the target, /readyz turns ready.
    let base = metrics_url.trim_end_matches("/metrics");
    let (_, _, landing) = get(&format!("{base}/")).unwrap();
    assert!(landing.contains("simulator"), "{landing}");
    wait_for("/readyz", Duration::from_secs(30), || {
        (get(&format!("{base}/readyz"))?.0 == 200).then_some(())
    });

    // SIGTERM: a graceful stop with exit code 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for("the demo to exit", Duration::from_secs(30), || {
        child.0.try_wait().unwrap()
    });
    assert!(exit.success(), "demo exited with {exit:?}");
}

/// Kills the child if the test fails half-way, so no demo outlives its test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check_with_promtool(body: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!(
            "promtool is required for this test: run scripts/test.sh (it installs Debian's prometheus package)"
        );
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics complained:\n{text}"
    );
}

/// Proxy variables in the environment are ignored: the scraper talks to its server directly, so
/// the credentials it sends never reach a proxy (issue 14, defect 8). The proxy here accepts
/// nothing: a scrape sent through it could never succeed, and its listener would hold the
/// connection.
#[test]
fn proxy_variables_are_ignored_by_the_scraper() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://spy:S3CRET@{}", proxy.local_addr().unwrap());
    let mut cmd = Command::new(BIN);
    cmd.args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--sim-listen",
        "127.0.0.1:0",
        "--no-gpu",
    ])
    .env("RUST_LOG", "warn")
    .env_remove("NO_PROXY")
    .env_remove("no_proxy")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env(var, &proxy_url);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let metrics_url = wait_for("the demo's metrics URL", Duration::from_secs(30), || {
        let line = lines.next()?.ok()?;
        line.contains("vllm-sentinel metrics:")
            .then(|| line.split_whitespace().last().unwrap().to_string())
    });
    wait_for(
        "a successful upstream scrape",
        Duration::from_secs(60),
        || {
            let (_, _, body) = get(&metrics_url)?;
            let ok: f64 = body
                .lines()
                .find(|l| {
                    l.starts_with("vllm_sentinel_upstream_scrapes_total{")
                        && l.contains("result=\"ok\"")
                })?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()?;
            (ok >= 1.0).then_some(())
        },
    );
    proxy.set_nonblocking(true).unwrap();
    match proxy.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the proxy was contacted: {other:?}"),
    }
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--no-gpu"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!("error: cannot listen on {addr}: address already in use")
    );
}

#[test]
fn bad_flags_fail_before_anything_starts() {
    let out = Command::new(BIN)
        .args(["serve", "--concurrency", "many"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--concurrency") && err.contains("many"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--target", "ftp://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("targets[0].url"), "{err}");

    let out = Command::new(BIN)
        .args(["serve", "--scrape-interval", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn env_variables_set_flags() {
    let out = Command::new(BIN)
        .args(["check-config"])
        .env("VLLM_SENTINEL_TARGET", "http://127.0.0.1:8123")
        .env("VLLM_SENTINEL_LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("url=http://127.0.0.1:8123"), "{text}");
    assert!(text.contains("listen: 127.0.0.1:9999"), "{text}");
}

#[test]
fn help_lists_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "serve",
        "simulate",
        "demo",
        "check-config",
        "bench",
        "sweep",
        "kv-scale",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn boolean_env_variables_take_1_0_true_false_yes_no() {
    for (v, disabled) in [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("0", false),
        ("false", false),
        ("no", false),
    ] {
        let (ok, out, err) = check_config(&[], &[("VLLM_SENTINEL_NO_GPU", v)]);
        assert!(ok, "VLLM_SENTINEL_NO_GPU={v}: {err}");
        assert_eq!(out.contains("gpu: disabled"), disabled, "{v}: {out}");
    }
}

#[test]
fn a_negative_rate_or_concurrency_says_must_be_positive() {
    for args in [
        &["--rate", "-1"][..],
        &["--concurrency", "-1"],
        &["--rate", "0"],
    ] {
        let (ok, _, err) = check_config(args, &[]);
        assert!(!ok, "{args:?}");
        assert!(err.contains("must be positive"), "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
}

#[test]
fn a_target_with_a_query_or_fragment_is_refused() {
    for url in ["http://127.0.0.1:8000/?x=1", "http://127.0.0.1:8000/#f"] {
        let (ok, _, err) = check_config(&["--no-gpu", "--target", url], &[]);
        assert!(!ok, "{url}");
        assert!(err.contains("query or fragment"), "{url}: {err}");
    }
}

#[test]
fn a_garbage_rust_log_fails_at_start_up() {
    let (ok, _, err) = check_config(&["--no-gpu"], &[("RUST_LOG", "vllm_sentinel=loud")]);
    assert!(!ok);
    assert!(err.contains("invalid RUST_LOG"), "{err}");
    let (ok, _, err) = check_config(&["--no-gpu"], &[("RUST_LOG", "vllm_sentinel=debug")]);
    assert!(ok, "{err}");
}

#[test]
fn an_api_key_env_with_cr_lf_fails_check_config() {
    let (ok, out, err) = check_config(
        &[
            "--no-gpu",
            "--target",
            "http://127.0.0.1:8000",
            "--api-key-env",
            "VLLM_SENTINEL_TEST_KEY",
        ],
        &[("VLLM_SENTINEL_TEST_KEY", "sk-abc\r\nX-Injected: 1")],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("api_key_env") && err.contains("VLLM_SENTINEL_TEST_KEY"),
        "{err}"
    );
    assert!(err.contains("line break"), "{err}");
    assert!(!err.contains("sk-abc"), "{err}");
}

#[test]
fn check_config_reports_the_reload_endpoint_state() {
    let (ok, out, err) = check_config(&["--no-gpu"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("POST /-/reload: disabled"), "{out}");
    let (ok, out, err) = check_config(&["--no-gpu", "--web.enable-lifecycle"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("POST /-/reload: enabled"), "{out}");
}

#[test]
fn credentials_in_the_target_url_are_never_printed() {
    let url = "http://admin:S3CRETPASS@127.0.0.1:18100/";
    let (ok, out, err) = check_config(&["--no-gpu", "--target", url], &[]);
    assert!(ok, "{err}");
    assert!(
        !out.contains("S3CRETPASS") && !err.contains("S3CRETPASS"),
        "{out}{err}"
    );
    assert!(out.contains("target 127.0.0.1:18100:"), "{out}");
    assert!(out.contains("url=http://127.0.0.1:18100 "), "{out}");
    assert!(out.contains("HTTP Basic"), "{out}");
    // A bad URL's error does not echo the password either.
    let (ok, _, err) = check_config(
        &[
            "--no-gpu",
            "--target",
            "http://admin:S3CRETPASS@127.0.0.1:18100/?q=1",
        ],
        &[],
    );
    assert!(!ok);
    assert!(!err.contains("S3CRETPASS"), "{err}");
    // Basic from the URL and a Bearer key at once: refused.
    let (ok, _, err) = check_config(
        &[
            "--no-gpu",
            "--target",
            url,
            "--api-key-env",
            "VLLM_SENTINEL_TEST_KEY2",
        ],
        &[("VLLM_SENTINEL_TEST_KEY2", "sk-1")],
    );
    assert!(!ok);
    assert!(err.contains("cannot be combined"), "{err}");
    assert!(!err.contains("S3CRETPASS"), "{err}");
}
