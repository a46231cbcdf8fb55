//! The prober against the built-in simulator and its fault injection (`POST /sim/faults`):
//! every fault lands in its outcome class, the daemon keeps measuring, and the canary sees the
//! simulator's context limit.

use crate::prober_support;

use prober_support::harness::{Harness, parse_config, start_prober};
use prober_support::metric;
use tokio_util::sync::CancellationToken;

const REQ: &str = "vllm_sentinel_probe_requests_total";

async fn start_sim() -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = vllm_sentinel::sim::SimConfig {
        model: "tiny".into(),
        fixed_timing: Some(vllm_sentinel::sim::parse_fixed_timing("5ms,1ms").unwrap()),
        ..Default::default()
    };
    let token = CancellationToken::new();
    tokio::spawn(vllm_sentinel::sim::serve(listener, cfg, token.clone()));
    (url, token)
}

fn start_sim_prober(url: &str) -> Harness {
    let text = format!(
        "[prober]\nerror_backoff = \"10ms\"\nfirst_token_timeout = \"500ms\"\nrequest_timeout = \"1s\"\ndiscovery_retry_min = \"20ms\"\ndiscovery_retry_max = \"50ms\"\n\n[[targets]]\nname = \"sim\"\nurl = \"{url}\"\n[[targets.workloads]]\nname = \"w\"\nconcurrency = 2\nprompt_tokens = 16\nmax_tokens = 8\n[[targets.workloads]]\nname = \"long\"\nconcurrency = 1\nprompt_tokens = 3000\nmax_tokens = 4\n[targets.canary]\ninterval = \"1s\"\n"
    );
    start_prober(parse_config(&text))
}

async fn set_faults(url: &str, json: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/sim/faults"))
        .header("content-type", "application/json")
        .body(json.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{json}: {}",
        r.text().await.unwrap()
    );
}

#[tokio::test]
async fn every_simulated_fault_lands_in_its_class() {
    let (url, sim) = start_sim().await;
    let h = start_sim_prober(&url);
    let w = "workload=\"w\"";
    h.wait_for("ok, context_length and a canary verdict", |t| {
        metric(t, REQ, &[w, "outcome=\"ok\""]) >= 3.0
            && metric(t, REQ, &["workload=\"long\"", "outcome=\"context_length\""]) >= 1.0
            && metric(t, "vllm_sentinel_canary_limit_honoured", &[]) == 1.0
    })
    .await;
    let t = h.text();
    assert_eq!(
        metric(&t, "vllm_sentinel_canary_max_model_len_tokens", &[]),
        2048.0
    );
    // TTFT is at least the simulator's fixed 5 ms.
    let l = [w];
    let ttft_sum = metric(&t, "vllm_sentinel_probe_ttft_seconds_sum", &l);
    let ttft_n = metric(&t, "vllm_sentinel_probe_ttft_seconds_count", &l);
    assert!(ttft_sum / ttft_n >= 0.005, "{}", ttft_sum / ttft_n);
    for (faults, class) in [
        (r#"{"error_status":500,"error_every":1}"#, "server_error"),
        (r#"{"error_status":429,"error_every":1}"#, "rate_limited"),
        (r#"{"error_status":503,"error_every":1}"#, "overloaded"),
        (r#"{"cut_after_tokens":2}"#, "truncated"),
        (r#"{"error_event_after_tokens":2}"#, "stream_error"),
        (r#"{"malformed_after_tokens":2}"#, "malformed"),
        (r#"{"stall_after_tokens":2}"#, "timeout_request"),
        (r#"{"slow_headers":"2s"}"#, "timeout_first_token"),
    ] {
        set_faults(&url, faults).await;
        let label = format!("outcome=\"{class}\"");
        h.wait_for(class, |t| metric(t, REQ, &[w, &label]) >= 1.0)
            .await;
        set_faults(&url, "{}").await;
        // Back to normal: successes resume.
        let before = metric(&h.text(), REQ, &[w, "outcome=\"ok\""]);
        h.wait_for("recovery", |t| {
            metric(t, REQ, &[w, "outcome=\"ok\""]) > before
        })
        .await;
    }
    // The simulator goes away mid-run: failures are counted and the prober keeps exporting.
    sim.cancel();
    h.wait_for("connect failures", |t| {
        metric(t, REQ, &[w, "outcome=\"connect\""]) >= 1.0
    })
    .await;
    let t = h.text();
    let ok = metric(&t, REQ, &[w, "outcome=\"ok\""]);
    assert_eq!(
        metric(&t, "vllm_sentinel_probe_e2e_seconds_count", &l),
        ok,
        "only successes in the success histograms"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn chat_workload_with_calibrated_prompt_length() {
    let (url, sim) = start_sim().await;
    let text = format!(
        "[[targets]]\nname = \"sim\"\nurl = \"{url}\"\nendpoint = \"chat\"\n[[targets.workloads]]\nname = \"c\"\nprompt_tokens = 64\nmax_tokens = 4\n[targets.canary]\nenabled = false\n"
    );
    let h = start_prober(parse_config(&text));
    let t = h
        .wait_for("chat requests", |t| {
            metric(t, REQ, &["endpoint=\"chat\"", "outcome=\"ok\""]) >= 3.0
        })
        .await;
    let n = metric(&t, REQ, &["outcome=\"ok\""]);
    let prompt = metric(&t, "vllm_sentinel_probe_prompt_tokens_total", &[]) / n;
    // Calibrated through the simulator's /tokenize: within a few tokens of the target.
    assert!((prompt - 64.0).abs() <= 4.0, "mean prompt {prompt}");
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_probe_ttft_seconds_count",
            &["endpoint=\"chat\""]
        ),
        n
    );
    sim.cancel();
    h.shutdown().await;
}
