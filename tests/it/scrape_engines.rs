//! Hand-written bodies (tests/data/scrape/, from the reference's name lists) for vLLM before
//! 0.12 in multiprocess mode, SGLang, TGI, llama.cpp and TensorRT-LLM normalise to the same
//! concepts; concepts an engine lacks are absent.

use crate::scrape_support;

use scrape_support::*;
use vllm_sentinel::scrape::expfmt::{self, Format};
use vllm_sentinel::scrape::normalize::{self, Concept, Engine, ServerSeries};

fn norm(name: &str, fallback: &str) -> ServerSeries {
    let body = data(name);
    let e = expfmt::parse(&body, Format::Prometheus);
    assert_eq!(e.error_total(), 0, "{name}: {:?}", e.errors);
    assert_eq!(e.samples.len(), count_samples(&body), "{name}");
    normalize::normalize(&e, fallback)
}

fn reason(n: &ServerSeries, c: Concept, r: &str) -> Option<f64> {
    n.values
        .iter()
        .find(|((cc, k), _)| *cc == c && k.reason.as_deref() == Some(r))
        .map(|(_, v)| *v)
}

fn hist(n: &ServerSeries, c: Concept) -> Option<&normalize::Hist> {
    n.histograms
        .iter()
        .find(|((cc, _), _)| *cc == c)
        .map(|(_, h)| h)
}

#[test]
fn vllm_before_0_12_in_multiprocess_mode() {
    let n = norm("vllm_0_10_multiprocess.txt", "x");
    assert_eq!(n.engine, Engine::Vllm);
    let v = |c| n.value(c, "llama", "0");
    // Ratios: the largest across pids; everything else summed across pids.
    assert_eq!(v(Concept::KvCacheUsage), Some(0.5));
    assert_eq!(v(Concept::RequestsRunning), Some(7.0));
    assert_eq!(v(Concept::RequestsWaiting), Some(3.0));
    assert_eq!(v(Concept::PrefixCacheQueries), Some(1500.0));
    assert_eq!(v(Concept::PrefixCacheHits), Some(384.0));
    assert_eq!(v(Concept::Preemptions), Some(3.0));
    assert_eq!(v(Concept::PromptTokens), Some(2200.0));
    assert_eq!(v(Concept::GenerationTokens), Some(1000.0));
    assert_eq!(
        n.sources[&Concept::KvCacheUsage],
        "vllm:gpu_cache_usage_perc"
    );
    // time_per_output_token_seconds is the old per-step ITL; per-pid buckets summed.
    let itl = hist(&n, Concept::Itl).unwrap();
    assert_eq!(
        itl.buckets,
        vec![(0.01, 6.0), (0.025, 10.0), (f64::INFINITY, 12.0)]
    );
    assert_eq!(itl.count, 12.0);
    assert!((itl.sum - 0.18).abs() < 1e-12);
    assert!(
        hist(&n, Concept::Tpot).is_none(),
        "no per-request TPOT before 0.11"
    );
    // Capacity from cache_config_info (no engine label: index 0), model from the usage series.
    assert_eq!(v(Concept::KvCacheCapacity), Some(16000.0));
    assert_eq!(v(Concept::KvCacheHeadroom), Some(8000.0));
    assert_eq!(v(Concept::RequestsWaitingByReason), None);
}

#[test]
fn sglang() {
    let n = norm("sglang.txt", "x");
    assert_eq!(n.engine, Engine::Sglang);
    let v = |c| n.value(c, "qwen", "0");
    assert_eq!(v(Concept::KvCacheUsage), Some(0.42));
    assert_eq!(v(Concept::RequestsRunning), Some(12.0));
    assert_eq!(v(Concept::RequestsWaiting), Some(5.0));
    assert_eq!(v(Concept::PromptTokens), Some(123456.0));
    assert_eq!(v(Concept::GenerationTokens), Some(65432.0));
    assert_eq!(v(Concept::PrefixCacheHits), Some(4096.0));
    assert_eq!(v(Concept::PrefixCacheQueries), None);
    assert_eq!(v(Concept::Preemptions), Some(3.0));
    assert_eq!(reason(&n, Concept::RequestsFinished, "abort"), Some(7.0));
    assert_eq!(v(Concept::KvCacheCapacity), Some(500000.0));
    assert_eq!(v(Concept::KvCacheHeadroom), Some(500000.0 * (1.0 - 0.42)));
    // is_streaming true/false summed.
    let t = hist(&n, Concept::Ttft).unwrap();
    assert_eq!(
        t.buckets,
        vec![(0.1, 5.0), (0.5, 10.0), (f64::INFINITY, 12.0)]
    );
    assert_eq!((t.sum, t.count), (4.0, 12.0));
    assert_eq!(hist(&n, Concept::Queue).unwrap().count, 12.0);
    assert_eq!(hist(&n, Concept::E2e).unwrap().sum, 30.0);
    assert!(hist(&n, Concept::Prefill).is_none());
}

#[test]
fn tgi() {
    let n = norm("tgi.txt", "my-model");
    assert_eq!(n.engine, Engine::Tgi);
    let v = |c| n.value(c, "my-model", "0");
    assert_eq!(v(Concept::RequestsRunning), Some(4.0));
    assert_eq!(v(Concept::RequestsWaiting), Some(9.0));
    assert_eq!(v(Concept::PromptTokens), Some(6000.0));
    assert_eq!(v(Concept::GenerationTokens), Some(9000.0));
    assert_eq!(
        reason(&n, Concept::RequestsFinished, "success"),
        Some(120.0)
    );
    assert_eq!(reason(&n, Concept::RequestsFinished, "error"), Some(5.0));
    assert_eq!(v(Concept::KvCacheUsage), None);
    assert_eq!(v(Concept::KvCacheCapacity), None);
    assert_eq!(hist(&n, Concept::Tpot).unwrap().count, 120.0);
    assert_eq!(hist(&n, Concept::E2e).unwrap().sum, 180.0);
    assert_eq!(hist(&n, Concept::Queue).unwrap().sum, 1.2);
    assert!(hist(&n, Concept::Ttft).is_none());
}

#[test]
fn llamacpp() {
    let n = norm("llamacpp.txt", "gguf");
    assert_eq!(n.engine, Engine::Llamacpp);
    let v = |c| n.value(c, "gguf", "0");
    assert_eq!(v(Concept::KvCacheUsage), Some(0.125));
    assert_eq!(v(Concept::RequestsRunning), Some(2.0));
    assert_eq!(v(Concept::RequestsWaiting), Some(1.0));
    assert_eq!(v(Concept::PromptTokens), Some(2048.0));
    assert_eq!(v(Concept::GenerationTokens), Some(4096.0));
    assert_eq!(v(Concept::Preemptions), None);
    assert!(n.histograms.is_empty());
}

#[test]
fn tensorrt_llm_triton_and_trtllm_serve() {
    let n = norm("trtllm_triton.txt", "x");
    assert_eq!(n.engine, Engine::Trtllm);
    let v = |c| n.value(c, "tensorrt_llm", "0");
    assert_eq!(v(Concept::KvCacheUsage), Some(0.3));
    assert_eq!(v(Concept::RequestsRunning), Some(6.0));
    assert_eq!(v(Concept::RequestsWaiting), Some(3.0));
    assert_eq!(v(Concept::KvCacheCapacity), Some(64000.0));
    assert_eq!(v(Concept::KvCacheHeadroom), Some(64000.0 * 0.7));
    assert_eq!(
        reason(&n, Concept::RequestsFinished, "success"),
        Some(500.0)
    );
    assert_eq!(reason(&n, Concept::RequestsFinished, "error"), Some(4.0));

    let n = norm("trtllm_serve.txt", "x");
    assert_eq!(n.engine, Engine::Trtllm);
    let v = |c| n.value(c, "llama", "0");
    assert_eq!(v(Concept::KvCacheUsage), Some(0.75));
    assert_eq!(v(Concept::RequestsRunning), Some(8.0));
    assert_eq!(v(Concept::RequestsWaiting), Some(2.0));
    assert_eq!(v(Concept::KvCacheCapacity), Some(131072.0));
    assert_eq!(v(Concept::KvCacheHeadroom), Some(131072.0 * 0.25));
}

#[test]
fn unknown_engine_is_up_with_no_server_series() {
    let views = process_all(
        run("t", "http://127.0.0.1:1"),
        &["some_metric 1\nother_total 2\n"],
    );
    assert!(views[0].health.up);
    assert_eq!(views[0].info.as_ref().unwrap().0, "unknown");
    assert!(views[0].server.as_ref().unwrap().is_empty());
}

/// Every engine's body through our own /metrics: the same family names whatever the engine.
#[test]
fn every_engine_exports_the_same_families() {
    let mut views = Vec::new();
    for (i, f) in [
        "vllm_0_10_multiprocess.txt",
        "sglang.txt",
        "tgi.txt",
        "llamacpp.txt",
        "trtllm_triton.txt",
    ]
    .iter()
    .enumerate()
    {
        let body = data(f);
        let mut v = process_all(run(&format!("t{i}"), "http://127.0.0.1:1"), &[&body]);
        views.push(v.remove(0));
    }
    let text = exposition(&views);
    let e = expfmt::parse(&text, Format::Prometheus);
    assert_eq!(e.error_total(), 0, "{:?}", e.errors);
    for (t, engine) in ["vllm", "sglang", "tgi", "llamacpp", "trtllm"]
        .iter()
        .enumerate()
    {
        assert!(
            text.contains(&format!(
                "vllm_sentinel_server_requests_running{{target=\"t{t}\""
            )),
            "{engine}\n{text}"
        );
        assert!(text.contains(&format!("engine=\"{engine}\"")), "{engine}");
    }
    // TGI has no KV usage: absent, not zero.
    assert!(!text.contains("vllm_sentinel_server_kv_cache_usage_ratio{target=\"t2\""));
}

/// docs/scrape.md names every upstream family of the alias table, and docs/metrics.md every
/// family we export.
#[test]
fn docs_match_the_alias_table() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let scrape_md = std::fs::read_to_string(root.join("docs/scrape.md")).unwrap();
    let metrics_md = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    for a in normalize::ALIASES {
        assert!(
            scrape_md.contains(a.family),
            "docs/scrape.md lacks {}",
            a.family
        );
    }
    for c in Concept::ALL {
        let name = match c.kind() {
            normalize::Kind::Counter => format!("{}_total", c.family()),
            _ => c.family().to_string(),
        };
        assert!(
            metrics_md.contains(&format!("`{name}`")),
            "docs/metrics.md lacks {name}"
        );
    }
    for k in vllm_sentinel::scrape::expfmt::ErrorKind::ALL {
        assert!(
            scrape_md.contains(&format!("| `{}` |", k.as_str())),
            "{k:?}"
        );
    }
    for r in vllm_sentinel::scrape::export::FailReason::ALL {
        assert!(
            scrape_md.contains(&format!("| `{}` |", r.as_str())),
            "{r:?}"
        );
    }
    // The server's HTTP request counter: its family, upstream name and every label value.
    let http = format!(
        "`{}_total`",
        vllm_sentinel::scrape::export::HTTP_REQUESTS_FAMILY
    );
    assert!(metrics_md.contains(&http), "docs/metrics.md lacks {http}");
    assert!(scrape_md.contains(normalize::UPSTREAM_HTTP_REQUESTS));
    let row = metrics_md
        .lines()
        .find(|l| l.starts_with(&format!("| {http}")))
        .unwrap();
    for v in normalize::HttpEndpoint::ALL.map(|e| e.as_str()) {
        assert!(row.contains(&format!("`{v}`")), "endpoint {v}: {row}");
    }
    for v in normalize::StatusClass::ALL.map(|c| c.as_str()) {
        assert!(row.contains(&format!("`{v}`")), "status_class {v}: {row}");
    }
}
