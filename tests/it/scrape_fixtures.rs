//! The real vLLM 0.32.0 bodies parse completely and normalise to what the raw text says.

use crate::scrape_support;

use scrape_support::*;
use vllm_sentinel::scrape::expfmt::{self, Format, MetricType, Suffix};
use vllm_sentinel::scrape::normalize::{self, Concept, Engine};

const BODIES: [&str; 5] = [
    "metrics_idle.txt",
    "metrics_busy.txt",
    "metrics_idle_openmetrics.txt",
    "metrics_with_kv_cache_metrics_flag.txt",
    "metrics_after_tests.txt",
];

fn burst_bodies() -> Vec<(String, String)> {
    let dir = fixture_dir().join("burst16/metrics");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let b = std::fs::read_to_string(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

fn all_bodies() -> Vec<(String, String)> {
    let mut v: Vec<_> = BODIES.iter().map(|n| (n.to_string(), fixture(n))).collect();
    v.extend(burst_bodies());
    v
}

#[test]
fn every_family_and_sample_is_accounted_for() {
    let bodies = all_bodies();
    assert!(bodies.len() >= 16);
    for (name, body) in &bodies {
        let e = expfmt::parse(body, Format::Prometheus);
        assert_eq!(e.error_total(), 0, "{name}: {:?}", e.errors);
        assert_eq!(e.samples.len(), count_samples(body), "{name}: samples");
        assert_eq!(e.families.len(), count_types(body), "{name}: families");
        assert!(e.families.iter().all(|f| f.typed && !f.damaged), "{name}");
        let in_families: usize = e.families.iter().map(|f| f.len()).sum();
        assert_eq!(
            in_families,
            e.samples.len(),
            "{name}: every sample in a family"
        );
        // Families are contiguous and in order.
        let mut at = 0;
        for f in &e.families {
            assert_eq!(f.samples.0 as usize, at, "{name}: {}", f.name);
            at = f.samples.1 as usize;
        }
        // The quirks: a `_total` histogram, `_created` gauges, a `_` label, summaries.
        let it = e
            .families
            .iter()
            .find(|f| f.name == "vllm:iteration_tokens_total")
            .unwrap();
        assert_eq!(it.typ, MetricType::Histogram);
        assert!(
            e.family_samples(it)
                .iter()
                .all(|s| matches!(s.suffix, Suffix::Bucket | Suffix::Sum | Suffix::Count))
        );
        let cc = e
            .families
            .iter()
            .find(|f| f.name == "vllm:cache_config_info")
            .unwrap();
        let s = &e.family_samples(cc)[0];
        assert_eq!(e.label(s, "_block_size_resolved"), Some("True"));
        assert_eq!(e.label(s, "kv_cache_dtype_skip_layers"), Some("[]"));
        let created = e
            .families
            .iter()
            .filter(|f| f.name.ends_with("_created"))
            .count();
        assert_eq!(created, body.matches("_created gauge\n").count(), "{name}");
        // Rendering and parsing again reproduces every sample.
        let again = expfmt::render(&e);
        let e2 = expfmt::parse(&again, Format::Prometheus);
        assert_eq!(e2.samples.len(), e.samples.len(), "{name}");
        for (a, b) in e.samples.iter().zip(&e2.samples) {
            assert_eq!(a.name, b.name);
            assert!(a.value == b.value || (a.value.is_nan() && b.value.is_nan()));
            assert_eq!(e.sample_labels(a), e2.sample_labels(b));
        }
    }
}

const P: &str = "{engine=\"0\",model_name=\"tiny\"} ";

fn check_normalised(name: &str, body: &str) {
    let e = expfmt::parse(body, Format::Prometheus);
    let n = normalize::normalize(&e, "configured");
    assert_eq!(n.engine, Engine::Vllm, "{name}");
    let v = |c| n.value(c, "tiny", "0");
    let raw = |fam: &str| raw_value(body, &format!("{fam}{P}"));
    for (c, fam) in [
        (Concept::KvCacheUsage, "vllm:kv_cache_usage_perc"),
        (Concept::RequestsRunning, "vllm:num_requests_running"),
        (Concept::RequestsWaiting, "vllm:num_requests_waiting"),
        (Concept::Preemptions, "vllm:num_preemptions_total"),
        (Concept::PromptTokens, "vllm:prompt_tokens_total"),
        (Concept::GenerationTokens, "vllm:generation_tokens_total"),
        (
            Concept::PrefixCacheQueries,
            "vllm:prefix_cache_queries_total",
        ),
        (Concept::PrefixCacheHits, "vllm:prefix_cache_hits_total"),
    ] {
        let want = raw(fam).unwrap_or_else(|| panic!("{name}: no {fam}"));
        assert_eq!(v(c), Some(want), "{name}: {c:?}");
    }
    for reason in ["stop", "length", "abort", "error", "repetition"] {
        let want = raw_value(
            body,
            &format!(
                "vllm:request_success_total{{engine=\"0\",finished_reason=\"{reason}\",model_name=\"tiny\"}} "
            ),
        )
        .unwrap();
        let got = n
            .values
            .iter()
            .find(|((c, k), _)| {
                *c == Concept::RequestsFinished && k.reason.as_deref() == Some(reason)
            })
            .map(|(_, v)| *v);
        assert_eq!(got, Some(want), "{name}: finished {reason}");
    }
    for reason in ["capacity", "deferred"] {
        let want = raw_value(
            body,
            &format!(
                "vllm:num_requests_waiting_by_reason{{engine=\"0\",model_name=\"tiny\",reason=\"{reason}\"}} "
            ),
        )
        .unwrap();
        let got = n
            .values
            .iter()
            .find(|((c, k), _)| {
                *c == Concept::RequestsWaitingByReason && k.reason.as_deref() == Some(reason)
            })
            .map(|(_, v)| *v);
        assert_eq!(got, Some(want), "{name}: waiting {reason}");
    }
    // Capacity: num_gpu_blocks x block_size, which vLLM also states as kv_cache_size_tokens.
    let cc = body
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .unwrap();
    let label = |k: &str| -> f64 {
        let at = cc.find(&format!(",{k}=\"")).unwrap() + k.len() + 3;
        cc[at..at + cc[at..].find('"').unwrap()].parse().unwrap()
    };
    let cap = label("num_gpu_blocks") * label("block_size");
    assert_eq!(cap, label("kv_cache_size_tokens"));
    assert_eq!(v(Concept::KvCacheCapacity), Some(cap), "{name}");
    let usage = raw("vllm:kv_cache_usage_perc").unwrap();
    assert_eq!(
        v(Concept::KvCacheHeadroom),
        Some(cap * (1.0 - usage)),
        "{name}"
    );
    // Histograms: count, sum and every bucket as written.
    for (c, fam) in [
        (Concept::Ttft, "vllm:time_to_first_token_seconds"),
        (Concept::Itl, "vllm:inter_token_latency_seconds"),
        (Concept::Tpot, "vllm:request_time_per_output_token_seconds"),
        (Concept::E2e, "vllm:e2e_request_latency_seconds"),
        (Concept::Queue, "vllm:request_queue_time_seconds"),
        (Concept::Prefill, "vllm:request_prefill_time_seconds"),
    ] {
        let h = n
            .histograms
            .iter()
            .find(|((cc, k), _)| *cc == c && k.model == "tiny" && k.engine_index == "0")
            .map(|(_, h)| h)
            .unwrap_or_else(|| panic!("{name}: {c:?}"));
        assert_eq!(Some(h.count), raw(&format!("{fam}_count")), "{name} {c:?}");
        assert_eq!(Some(h.sum), raw(&format!("{fam}_sum")), "{name} {c:?}");
        let raw_buckets: Vec<(String, f64)> = body
            .lines()
            .filter(|l| l.starts_with(&format!("{fam}_bucket{{")))
            .map(|l| {
                let at = l.find("le=\"").unwrap() + 4;
                let le = l[at..at + l[at..].find('"').unwrap()].to_string();
                (le, l.rsplit(' ').next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(h.buckets.len(), raw_buckets.len(), "{name} {c:?}");
        for ((le, c), (rle, rc)) in h.buckets.iter().zip(&raw_buckets) {
            let rle: f64 = if rle == "+Inf" {
                f64::INFINITY
            } else {
                rle.parse().unwrap()
            };
            assert_eq!((*le, *c), (rle, *rc), "{name}");
        }
    }
}

#[test]
fn normalised_values_equal_the_raw_body() {
    for (name, body) in all_bodies() {
        check_normalised(&name, &body);
    }
}

/// The 0.5 s burst: every normalised value equals the column the capture script wrote to
/// samples.csv at the same time (an independent reading of the same bodies).
#[test]
fn burst_series_match_the_capture_csv() {
    let csv = std::fs::read_to_string(fixture_dir().join("burst16/samples.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    let bodies = burst_bodies();
    assert_eq!(rows.len(), bodies.len());
    let col = |row: &Vec<f64>, name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    for (row, (name, body)) in rows.iter().zip(&bodies) {
        let e = expfmt::parse(body, Format::Prometheus);
        let n = normalize::normalize(&e, "x");
        let v = |c| n.value(c, "tiny", "0").unwrap();
        assert_eq!(v(Concept::RequestsRunning), col(row, "running"), "{name}");
        assert_eq!(v(Concept::RequestsWaiting), col(row, "waiting"), "{name}");
        assert_eq!(v(Concept::KvCacheUsage), col(row, "kv_usage"), "{name}");
        assert_eq!(v(Concept::Preemptions), col(row, "preemptions"), "{name}");
        assert_eq!(
            v(Concept::GenerationTokens),
            col(row, "gen_tokens"),
            "{name}"
        );
        assert_eq!(
            v(Concept::PromptTokens),
            col(row, "prompt_tokens"),
            "{name}"
        );
        assert_eq!(
            v(Concept::PrefixCacheHits),
            col(row, "prefix_hits"),
            "{name}"
        );
        assert_eq!(
            v(Concept::PrefixCacheQueries),
            col(row, "prefix_queries"),
            "{name}"
        );
        for r in ["stop", "length", "abort", "error", "repetition"] {
            let got = n
                .values
                .iter()
                .find(|((c, k), _)| {
                    *c == Concept::RequestsFinished && k.reason.as_deref() == Some(r)
                })
                .map(|(_, v)| *v);
            assert_eq!(got, Some(col(row, &format!("success_{r}"))), "{name} {r}");
        }
    }
}

/// Through the scrape state and our own /metrics: window means are Δsum/Δcount of the raw
/// bodies, and the exported values equal the raw ones.
#[test]
fn burst_window_means_and_exported_series() {
    let bodies = burst_bodies();
    let refs: Vec<&str> = bodies.iter().map(|(_, b)| b.as_str()).collect();
    let views = process_all(run("vllm", "http://127.0.0.1:1"), &refs);
    let raw = |b: &str, fam: &str| raw_value(b, &format!("{fam}{P}")).unwrap();
    let mut saw_window = 0;
    for i in 0..views.len() {
        let v = &views[i];
        assert!(v.health.up);
        assert_eq!(v.info.as_ref().map(|i| i.0), Some("vllm"));
        for (w, fam) in [
            ("ttft", "vllm:time_to_first_token_seconds"),
            ("queue", "vllm:request_queue_time_seconds"),
            ("prefill", "vllm:request_prefill_time_seconds"),
        ] {
            let got = v
                .window
                .iter()
                .find(|((c, m, e), _)| {
                    format!("{c:?}").to_lowercase() == w && m == "tiny" && e == "0"
                })
                .map(|(_, x)| *x);
            if i == 0 {
                assert_eq!(got, None, "no window before the second scrape");
                continue;
            }
            let dc =
                raw(refs[i], &format!("{fam}_count")) - raw(refs[i - 1], &format!("{fam}_count"));
            let ds = raw(refs[i], &format!("{fam}_sum")) - raw(refs[i - 1], &format!("{fam}_sum"));
            if dc > 0.0 {
                assert_eq!(got, Some(ds / dc), "{w} at {i}");
                saw_window += 1;
            } else {
                assert_eq!(got, None, "{w} at {i}: no requests, no mean");
            }
        }
    }
    assert!(
        saw_window > 0,
        "the burst finishes requests inside the capture"
    );
    // Our exposition of the busiest view, parsed back with our parser.
    let last = views.last().unwrap().clone();
    let text = exposition(&[last]);
    let e = expfmt::parse(&text, Format::Prometheus);
    assert_eq!(e.error_total(), 0, "{:?}\n{text}", e.errors);
    let b = refs.last().unwrap();
    let ours =
        |prefix: &str| raw_value(&text, prefix).unwrap_or_else(|| panic!("{prefix}\n{text}"));
    let lbl = "{target=\"vllm\",model=\"tiny\",engine_index=\"0\"} ";
    assert_eq!(
        ours(&format!("vllm_sentinel_server_kv_cache_usage_ratio{lbl}")),
        raw(b, "vllm:kv_cache_usage_perc")
    );
    assert_eq!(
        ours(&format!(
            "vllm_sentinel_server_generation_tokens_total{lbl}"
        )),
        raw(b, "vllm:generation_tokens_total")
    );
    assert_eq!(
        ours(&format!("vllm_sentinel_server_ttft_seconds_count{lbl}")),
        raw(b, "vllm:time_to_first_token_seconds_count")
    );
    assert_eq!(
        ours(
            "vllm_sentinel_server_ttft_seconds_bucket{target=\"vllm\",model=\"tiny\",engine_index=\"0\",le=\"0.04\"} "
        ),
        raw_value(
            b,
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.04\",model_name=\"tiny\"} "
        )
        .unwrap()
    );
    assert_eq!(ours("vllm_sentinel_upstream_up{target=\"vllm\"} "), 1.0);
    assert!(
        text.contains(
            "vllm_sentinel_server_info{target=\"vllm\",engine=\"vllm\",version=\"unknown\"} 1"
        ),
        "{text}"
    );
}

/// The server's own `http_requests_total{handler,method,status}` (prometheus-fastapi-
/// instrumentator) becomes `vllm_sentinel_server_http_requests_total{target,endpoint,
/// status_class}`: every real body, summed independently from the raw lines.
#[test]
fn http_requests_by_endpoint_and_status_class() {
    use normalize::{HttpEndpoint as Ep, StatusClass as Sc};
    for (name, body) in all_bodies() {
        let e = expfmt::parse(&body, Format::Prometheus);
        let n = normalize::normalize(&e, "configured");
        // Independent reading of the raw text.
        let mut want = std::collections::BTreeMap::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("http_requests_total{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ").unwrap();
            let get = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"'))
                    .unwrap()
            };
            let ep = match get("handler") {
                "/v1/completions" => "completions",
                "/v1/chat/completions" => "chat",
                _ => "other",
            };
            let v: f64 = value.split_whitespace().next().unwrap().parse().unwrap();
            *want.entry((ep, get("status"))).or_insert(0.0) += v;
        }
        assert!(
            !want.is_empty(),
            "{name}: the capture has http_requests_total"
        );
        let got: std::collections::BTreeMap<(&str, &str), f64> = n
            .http_requests
            .iter()
            .map(|((ep, sc), v)| ((ep.as_str(), sc.as_str()), *v))
            .collect();
        assert_eq!(got, want, "{name}");
    }
    // The numbers of the after-tests capture, by hand: /v1/models and /tokenize are `other`.
    let e_body = fixture("metrics_after_tests.txt");
    let e = expfmt::parse(&e_body, Format::Prometheus);
    let n = normalize::normalize(&e, "configured");
    let g = |ep, sc| n.http_requests.get(&(ep, sc)).copied();
    assert_eq!(g(Ep::Completions, Sc::C2xx), Some(59.0));
    assert_eq!(g(Ep::Completions, Sc::C4xx), Some(17.0));
    assert_eq!(g(Ep::Chat, Sc::C2xx), Some(21.0));
    assert_eq!(g(Ep::Chat, Sc::C4xx), Some(2.0));
    assert_eq!(g(Ep::Other, Sc::C2xx), Some(7.0));
    assert_eq!(g(Ep::Chat, Sc::C5xx), None, "absent, not zero");
    assert_eq!(n.http_requests.len(), 5);
    // Exported through the scrape state and our /metrics (counter, `_total`).
    let views = process_all(run("vllm", "http://127.0.0.1:1"), &[e_body.as_str()]);
    let text = exposition(&views);
    assert!(
        text.contains("# TYPE vllm_sentinel_server_http_requests_total counter"),
        "{text}"
    );
    for (ep, sc, v) in [
        ("completions", "4xx", 17.0),
        ("chat", "2xx", 21.0),
        ("other", "2xx", 7.0),
    ] {
        let p = format!(
            "vllm_sentinel_server_http_requests_total{{target=\"vllm\",endpoint=\"{ep}\",status_class=\"{sc}\"}} "
        );
        assert_eq!(raw_value(&text, &p), Some(v), "{p}\n{text}");
    }
}

#[test]
fn status_and_handler_mapping_is_bounded() {
    use normalize::{HttpEndpoint as Ep, StatusClass as Sc};
    for (s, want) in [
        ("2xx", Sc::C2xx),
        ("4XX", Sc::C4xx),
        ("404", Sc::C4xx),
        ("503", Sc::C5xx),
        ("101", Sc::C1xx),
        ("302", Sc::C3xx),
        ("", Sc::Other),
        ("4x", Sc::Other),
        ("600", Sc::Other),
        ("4040", Sc::Other),
        ("abc", Sc::Other),
        ("é4xx", Sc::Other),
    ] {
        assert_eq!(Sc::of_status(s), want, "{s:?}");
    }
    for (h, want) in [
        ("/v1/completions", Ep::Completions),
        ("/v1/completions/", Ep::Completions),
        ("/v1/chat/completions", Ep::Chat),
        ("/v1/models", Ep::Other),
        ("/v1/completions/render", Ep::Other),
        ("none", Ep::Other),
        ("", Ep::Other),
    ] {
        assert_eq!(Ep::of_handler(h), want, "{h:?}");
    }
}
