//! The daemon on a machine without NVML: one warning, `vllm_sentinel_gpu_up 0`, ready, and the
//! rest of `/metrics` served.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vllm_sentinel::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_without_nvml_serves_gpu_up_zero_and_becomes_ready() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = Config::default();
    cfg.gpu.nvml_library = Some("/nonexistent/libnvidia-ml.so.1".into());
    let token = CancellationToken::new();
    let daemon = tokio::spawn(vllm_sentinel::daemon::serve_on(
        listener,
        cfg,
        token.clone(),
        None,
    ));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/metrics")).send().await {
            body = r.text().await.unwrap_or_default();
            if body.contains("vllm_sentinel_gpu_up 0") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no gpu_up 0 in time:\n{body}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains("vllm_sentinel_build_info"), "{body}");
    assert!(!body.contains("vllm_sentinel_gpu_memory_total_bytes"));
    // Ready does not wait for a GPU that is not there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        if !text.contains("gpu") {
            break;
        }
        assert!(Instant::now() < deadline, "gpu never ready: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("daemon stops on cancellation")
        .unwrap()
        .unwrap();
}
