//! `--vllm-bench-json FILE`: a run written as `vllm bench serve --save-result --save-detailed
//! --percentile-metrics ttft,tpot,itl,e2el` writes its result file, so tools built around that
//! format read ours unchanged. [`FIELDS`] is the field list and each field's JSON type, taken
//! from a result file of vLLM 0.32.0's client; the real-vLLM tier (`scripts/e2e/bench_parity.py`)
//! compares the keys and types of a freshly produced vLLM file against one of ours.
//!
//! Every figure is computed from the listed requests as vLLM's `calculate_metrics` computes it:
//! only successful requests count; latencies in the per-request arrays are seconds, the
//! `*_ms` statistics milliseconds; `std` is the population standard deviation; percentiles
//! interpolate linearly (numpy's default); `tpot` statistics skip one-token answers; ITL is one
//! entry per token-bearing chunk; a failed request has 0 for its TTFT, latency and output
//! length, as vLLM writes it. Where we differ:
//!
//! - `generated_texts` holds empty strings: we never keep the generated text;
//! - `queue_times` are 0: our open loop has no client-side semaphore to wait on (requests past
//!   `--max-in-flight` are dropped, not queued, and are not listed);
//! - `start_times` are seconds since the run (bench) or level (sweep) started, not a
//!   `perf_counter` reading; in a sweep they are the *intended* send times, from which our
//!   latencies count (so `start + latency` is still when the last token came);
//! - `date` is UTC, not local time; `tokenizer_id` is the model id (we use the server's counts,
//!   no tokenizer of our own); `backend` and `endpoint_type` are `openai` or `openai-chat`, the
//!   names vLLM's client gives the same endpoints;
//! - `bench` is sequential: `request_rate` is `"inf"` and `max_concurrency` 1, as
//!   `vllm bench serve --max-concurrency 1` runs; a sweep level's file covers the requests of
//!   its steady-state window, and `duration` runs from the window's start to the last token of
//!   the last of them (vLLM's meaning: the benchmark's wall time), not the window's length.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value, json};

use super::engine::Sample;
use super::goodput::{self, vllm_latency};
use super::knee::Slo;
use super::report::{Report, SweepLevel};
use super::stats::percentile_sorted;

/// JSON type of a field, as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    /// A float or the string `"inf"` (`request_rate`).
    FloatOrInf,
    /// An integer or `null` (`max_concurrency`).
    IntOrNull,
    /// A float or `null` (`request_goodput` without objectives).
    FloatOrNull,
    /// A string or `null` (`label`).
    StrOrNull,
    IntList,
    FloatList,
    FloatListList,
    StrList,
}

/// The fields of a `vllm bench serve --save-result --save-detailed --percentile-metrics
/// ttft,tpot,itl,e2el` result (vLLM 0.32.0), in its order, with their types. Units: seconds in
/// the per-request arrays and `duration`, milliseconds in `*_ms`, per second in the rates.
pub const FIELDS: &[(&str, Kind)] = &[
    ("date", Kind::Str),
    ("endpoint_type", Kind::Str),
    ("backend", Kind::Str),
    ("label", Kind::StrOrNull),
    ("model_id", Kind::Str),
    ("tokenizer_id", Kind::Str),
    ("num_prompts", Kind::Int),
    ("request_rate", Kind::FloatOrInf),
    ("burstiness", Kind::Float),
    ("max_concurrency", Kind::IntOrNull),
    ("duration", Kind::Float),
    ("completed", Kind::Int),
    ("failed", Kind::Int),
    ("total_input_tokens", Kind::Int),
    ("total_output_tokens", Kind::Int),
    ("request_throughput", Kind::Float),
    ("request_goodput", Kind::FloatOrNull),
    ("output_throughput", Kind::Float),
    ("total_token_throughput", Kind::Float),
    ("input_lens", Kind::IntList),
    ("output_lens", Kind::IntList),
    ("ttfts", Kind::FloatList),
    ("itls", Kind::FloatListList),
    ("latencies", Kind::FloatList),
    ("start_times", Kind::FloatList),
    ("queue_times", Kind::FloatList),
    ("generated_texts", Kind::StrList),
    ("errors", Kind::StrList),
    ("max_output_tokens_per_s", Kind::Float),
    ("max_concurrent_requests", Kind::Int),
    ("rtfx", Kind::Float),
    ("mean_ttft_ms", Kind::Float),
    ("median_ttft_ms", Kind::Float),
    ("std_ttft_ms", Kind::Float),
    ("p99_ttft_ms", Kind::Float),
    ("mean_tpot_ms", Kind::Float),
    ("median_tpot_ms", Kind::Float),
    ("std_tpot_ms", Kind::Float),
    ("p99_tpot_ms", Kind::Float),
    ("mean_itl_ms", Kind::Float),
    ("median_itl_ms", Kind::Float),
    ("std_itl_ms", Kind::Float),
    ("p99_itl_ms", Kind::Float),
    ("mean_e2el_ms", Kind::Float),
    ("median_e2el_ms", Kind::Float),
    ("std_e2el_ms", Kind::Float),
    ("p99_e2el_ms", Kind::Float),
];

/// One request of a run, as the result lists it.
#[derive(Debug, Clone)]
pub struct Req {
    /// When it was sent, seconds since the run started.
    pub start_s: f64,
    /// Prompt tokens asked for (used when the server did not count them).
    pub asked_prompt_tokens: u32,
    pub sample: Sample,
}

/// A run to write.
#[derive(Debug, Clone)]
pub struct Run {
    /// `openai` or `openai-chat`.
    pub backend: String,
    pub model_id: String,
    pub started_unix_s: f64,
    /// `None`: `"inf"`.
    pub request_rate: Option<f64>,
    pub max_concurrency: Option<u32>,
    /// vLLM's `--burstiness`: 1 for Poisson arrivals, infinite for constant gaps.
    pub burstiness: f64,
    pub duration_s: f64,
    pub slo: Slo,
    pub requests: Vec<Req>,
}

/// vLLM's statistics of `v` in milliseconds: mean, median, population std, p99; 0 when empty.
fn stats_ms(v: &[f64]) -> [f64; 4] {
    if v.is_empty() {
        return [0.0; 4];
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let pct = |p| percentile_sorted(&s, p).unwrap_or(0.0) * 1000.0;
    [mean * 1000.0, pct(50.0), var.sqrt() * 1000.0, pct(99.0)]
}

/// vLLM's peak figures: the most output tokens in one 1-second bucket (token times rebuilt
/// from TTFT and ITL) and the most requests active in one bucket.
fn peaks(ok: &[&Req]) -> (f64, u64) {
    let Some(t0) = ok.iter().map(|r| r.start_s).reduce(f64::min) else {
        return (0.0, 0);
    };
    let end = ok
        .iter()
        .map(|r| r.start_s + vllm_latency(&r.sample))
        .fold(t0, f64::max);
    let n = (end - t0).ceil() as usize + 1;
    let (mut tokens, mut active) = (vec![0u64; n], vec![0u64; n]);
    for r in ok {
        let mut t = r.start_s + r.sample.ttft_s.unwrap_or(0.0);
        let mut times = vec![t];
        for g in &r.sample.itl_s {
            t += g;
            times.push(t);
        }
        for t in times {
            let b = (t - t0).floor();
            if b >= 0.0 && (b as usize) < n {
                tokens[b as usize] += 1;
            }
        }
        let a = ((r.start_s - t0).floor().max(0.0) as usize).min(n - 1);
        let z = (((r.start_s + vllm_latency(&r.sample)) - t0)
            .floor()
            .max(0.0) as usize)
            .min(n - 1);
        for c in &mut active[a..=z] {
            *c += 1;
        }
    }
    (
        tokens.iter().copied().max().unwrap_or(0) as f64,
        active.iter().copied().max().unwrap_or(0),
    )
}

/// The result document of `run`.
pub fn document(run: &Run) -> Value {
    let oks: Vec<&Req> = run.requests.iter().filter(|r| r.sample.ok()).collect();
    let input_len = |r: &Req| r.sample.prompt_tokens.unwrap_or(r.asked_prompt_tokens);
    let output_len = |r: &Req| {
        if r.sample.ok() {
            r.sample.output_tokens.unwrap_or(1)
        } else {
            0
        }
    };
    let total_in: u64 = oks.iter().map(|r| u64::from(input_len(r))).sum();
    let total_out: u64 = run.requests.iter().map(|r| u64::from(output_len(r))).sum();
    let per_s = |x: f64| {
        if run.duration_s > 0.0 {
            x / run.duration_s
        } else {
            0.0
        }
    };
    let ttfts: Vec<f64> = oks.iter().map(|r| r.sample.ttft_s.unwrap_or(0.0)).collect();
    let tpots: Vec<f64> = oks
        .iter()
        .filter(|r| output_len(r) > 1)
        .filter_map(|r| goodput::vllm_tpot(&r.sample))
        .collect();
    let itls: Vec<f64> = oks.iter().flat_map(|r| r.sample.itl_s.clone()).collect();
    let e2els: Vec<f64> = oks.iter().map(|r| vllm_latency(&r.sample)).collect();
    let (peak_tokens, peak_active) = peaks(&oks);
    let date = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(run.started_unix_s.max(0.0)),
    )
    .to_string();
    // 2026-12-02T13:30:29Z → 20261202-133029
    let digits: String = date.chars().filter(char::is_ascii_digit).collect();
    let date = format!(
        "{}-{}",
        &digits[..8.min(digits.len())],
        &digits[8.min(digits.len())..]
    );
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("date", json!(date));
    put("endpoint_type", json!(run.backend));
    put("backend", json!(run.backend));
    put("label", Value::Null);
    put("model_id", json!(run.model_id));
    put("tokenizer_id", json!(run.model_id));
    put("num_prompts", json!(run.requests.len()));
    put(
        "request_rate",
        run.request_rate.map_or(json!("inf"), |r| json!(r)),
    );
    // vLLM's file writes an infinite burstiness as Python's `Infinity`; [`to_text`] does too
    put(
        "burstiness",
        if run.burstiness.is_finite() {
            json!(run.burstiness)
        } else {
            json!(INFINITY)
        },
    );
    put("max_concurrency", json!(run.max_concurrency));
    put("duration", json!(run.duration_s));
    put("completed", json!(oks.len()));
    put("failed", json!(run.requests.len() - oks.len()));
    put("total_input_tokens", json!(total_in));
    put("total_output_tokens", json!(total_out));
    put("request_throughput", json!(per_s(oks.len() as f64)));
    let good = run
        .requests
        .iter()
        .filter(|r| goodput::is_good(&run.slo, &r.sample))
        .count();
    put(
        "request_goodput",
        if run.slo.is_set() {
            json!(per_s(good as f64))
        } else {
            Value::Null
        },
    );
    put("output_throughput", json!(per_s(total_out as f64)));
    put(
        "total_token_throughput",
        json!(per_s((total_in + total_out) as f64)),
    );
    let each = |f: &dyn Fn(&Req) -> Value| Value::Array(run.requests.iter().map(f).collect());
    put("input_lens", each(&|r| json!(input_len(r))));
    put("output_lens", each(&|r| json!(output_len(r))));
    let ok_or_zero = |r: &Req, v: f64| if r.sample.ok() { v } else { 0.0 };
    put(
        "ttfts",
        each(&|r| json!(ok_or_zero(r, r.sample.ttft_s.unwrap_or(0.0)))),
    );
    put("itls", each(&|r| json!(r.sample.itl_s)));
    put(
        "latencies",
        each(&|r| json!(ok_or_zero(r, vllm_latency(&r.sample)))),
    );
    put("start_times", each(&|r| json!(r.start_s)));
    put("queue_times", each(&|_| json!(0.0)));
    put("generated_texts", each(&|_| json!("")));
    put(
        "errors",
        each(&|r| {
            json!(if r.sample.ok() {
                String::new()
            } else {
                r.sample
                    .error_message
                    .clone()
                    .unwrap_or_else(|| r.sample.outcome.as_str().to_string())
            })
        }),
    );
    put("max_output_tokens_per_s", json!(peak_tokens));
    put("max_concurrent_requests", json!(peak_active));
    put("rtfx", json!(0.0));
    for (name, v) in [
        ("ttft", &ttfts),
        ("tpot", &tpots),
        ("itl", &itls),
        ("e2el", &e2els),
    ] {
        let [mean, median, std, p99] = stats_ms(v);
        put(&format!("mean_{name}_ms"), json!(mean));
        put(&format!("median_{name}_ms"), json!(median));
        put(&format!("std_{name}_ms"), json!(std));
        put(&format!("p99_{name}_ms"), json!(p99));
    }
    Value::Object(m)
}

/// How the document holds an infinite `burstiness` until [`to_text`] writes it.
const INFINITY: &str = "Infinity";

/// `doc` as one line of JSON with its fields in [`FIELDS`]' order (vLLM's). An infinite
/// `burstiness` (constant arrivals) is written `Infinity`, as Python's `json.dump` writes it in
/// vLLM's file (Python reads it back; strict JSON parsers do not).
pub fn to_text(doc: &Value) -> anyhow::Result<String> {
    let mut out = String::from("{");
    for (i, (k, _)) in FIELDS.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let v = doc.get(*k).unwrap_or(&Value::Null);
        out.push_str(&serde_json::to_string(k).context("serialising a field name")?);
        out.push_str(": ");
        if *k == "burstiness" && v.as_str() == Some(INFINITY) {
            out.push_str(INFINITY);
            continue;
        }
        out.push_str(&serde_json::to_string(v).context("serialising the vLLM bench result")?);
    }
    out.push('}');
    Ok(out)
}

fn write(path: &Path, doc: &Value) -> anyhow::Result<()> {
    let text = to_text(doc)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn backend(report: &Report) -> String {
    if report.target.endpoint == "chat" {
        "openai-chat".into()
    } else {
        "openai".into()
    }
}

/// Writes `bench`'s streaming requests to `path`.
pub fn write_bench(report: &Report, path: &Path) -> anyhow::Result<()> {
    let b = report.bench.clone().unwrap_or_default();
    let mode = b.modes.iter().find(|m| m.stream);
    let prompt = report
        .settings
        .get("prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let requests = b
        .requests
        .iter()
        .filter(|r| r.stream)
        .map(|r| Req {
            start_s: r.start_s,
            asked_prompt_tokens: prompt,
            sample: Sample {
                outcome: r.outcome,
                status: r.status,
                error_message: r.error_message.clone(),
                ttfb_s: r.ttfb_s,
                ttft_s: r.ttft_s,
                tpot_s: r.tpot_s,
                itl_s: r.itl_s.clone(),
                e2e_s: r.e2e_s,
                prompt_tokens: r.prompt_tokens,
                output_tokens: r.output_tokens,
                finish_reason: r.finish_reason.clone(),
            },
        })
        .collect();
    let run = Run {
        backend: backend(report),
        model_id: report.target.model.clone(),
        started_unix_s: report.started_unix_s,
        request_rate: None,
        max_concurrency: Some(1),
        burstiness: 1.0,
        duration_s: mode.map_or(0.0, |m| m.duration_s),
        slo: b.slo.map(|s| s.objectives).unwrap_or_default(),
        requests,
    };
    write(path, &document(&run))
}

/// The file of one sweep level beside `path`: `STEM-rate5.json`, `STEM-concurrency8.json`.
pub fn level_path(path: &Path, level: &SweepLevel) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "vllm-bench".into());
    let name = match (level.rate_rps, level.concurrency) {
        (Some(r), _) => {
            // three decimals, trailing zeros dropped: 2.5, 126.491
            let r = format!("{r:.3}");
            let r = r.trim_end_matches('0').trim_end_matches('.');
            format!("{stem}-rate{r}.json")
        }
        (None, Some(c)) => format!("{stem}-concurrency{c}.json"),
        (None, None) => format!("{stem}-level{}.json", level.load),
    };
    path.with_file_name(name)
}

/// Writes every level of a sweep, one file each ([`level_path`]); returns the files written.
pub fn write_sweep(report: &Report, path: &Path, slo: &Slo) -> anyhow::Result<Vec<PathBuf>> {
    let s = report.sweep.clone().unwrap_or_default();
    let prompt = report
        .settings
        .get("prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let burstiness = match report.settings.get("arrival").and_then(Value::as_str) {
        Some("constant") => f64::INFINITY,
        _ => 1.0,
    };
    let mut out = Vec::new();
    for l in &s.levels {
        let mut p = level_path(path, l);
        // two search probes a thousandth of a request per second apart share a name
        let mut n = 1;
        while out.contains(&p) {
            n += 1;
            let stem = level_path(path, l)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            p = path.with_file_name(format!("{stem}-{n}.json"));
        }
        let run = Run {
            backend: backend(report),
            model_id: report.target.model.clone(),
            started_unix_s: report.started_unix_s,
            request_rate: l.rate_rps,
            max_concurrency: l.concurrency,
            burstiness,
            // vLLM's duration: from the start to the last request's last token
            duration_s: l
                .records
                .iter()
                .map(|(start, s)| start + vllm_latency(s))
                .fold(l.window.start_s, f64::max)
                - l.window.start_s,
            slo: *slo,
            requests: l
                .records
                .iter()
                .map(|(start_s, sample)| Req {
                    start_s: *start_s,
                    asked_prompt_tokens: prompt,
                    sample: sample.clone(),
                })
                .collect(),
        };
        write(&p, &document(&run))?;
        out.push(p);
    }
    Ok(out)
}

/// Whether `v` has the JSON type `k`.
pub fn has_kind(v: &Value, k: Kind) -> bool {
    let float = |v: &Value| v.is_number();
    match k {
        Kind::Str => v.is_string(),
        Kind::Int => v.is_u64() || v.is_i64(),
        Kind::Float => float(v) || v.as_str() == Some(INFINITY),
        Kind::FloatOrInf => float(v) || v.as_str() == Some("inf"),
        Kind::IntOrNull => v.is_null() || v.is_u64() || v.is_i64(),
        Kind::FloatOrNull => v.is_null() || float(v),
        Kind::StrOrNull => v.is_null() || v.is_string(),
        Kind::IntList => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_u64() || x.is_i64())),
        Kind::FloatList => v.as_array().is_some_and(|a| a.iter().all(float)),
        Kind::FloatListList => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| has_kind(x, Kind::FloatList))),
        Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::engine::Outcome;

    fn ok(start: f64, ttft: f64, itl: &[f64], prompt: u32) -> Req {
        Req {
            start_s: start,
            asked_prompt_tokens: 32,
            sample: Sample {
                ttft_s: Some(ttft),
                itl_s: itl.to_vec(),
                e2e_s: ttft + itl.iter().sum::<f64>() + 0.01,
                prompt_tokens: Some(prompt),
                output_tokens: Some(itl.len() as u32 + 1),
                ..Sample::default()
            },
        }
    }

    fn run(requests: Vec<Req>, slo: Slo) -> Run {
        Run {
            backend: "openai".into(),
            model_id: "tiny".into(),
            started_unix_s: 1_796_000_000.0,
            request_rate: Some(5.0),
            max_concurrency: None,
            burstiness: 1.0,
            duration_s: 2.0,
            slo,
            requests,
        }
    }

    #[test]
    fn every_field_of_vllms_result_with_its_type_and_nothing_else() {
        let mut bad = Req {
            start_s: 0.5,
            asked_prompt_tokens: 32,
            sample: Sample::failed(Outcome::ServerError, "HTTP 500"),
        };
        bad.sample.status = Some(500);
        let d = document(&run(
            vec![ok(0.0, 0.1, &[0.02, 0.04], 31), bad, ok(1.2, 0.2, &[], 33)],
            Slo {
                ttft_s: Some(0.15),
                ..Slo::default()
            },
        ));
        let m = d.as_object().unwrap();
        for (k, kind) in FIELDS {
            let v = m.get(*k).unwrap_or_else(|| panic!("missing {k}"));
            assert!(has_kind(v, *kind), "{k}: {v} is not {kind:?}");
        }
        assert_eq!(m.len(), FIELDS.len(), "no field beyond vLLM's");
        let text = to_text(&d).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&back), keys(&d));
        assert_eq!(back["errors"], d["errors"]);
        let at: Vec<usize> = FIELDS
            .iter()
            .map(|(k, _)| text.find(&format!("\"{k}\": ")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "vLLM's order");
    }

    #[test]
    fn figures_as_vllm_computes_them() {
        let bad = Req {
            start_s: 0.5,
            asked_prompt_tokens: 32,
            sample: Sample::failed(Outcome::ServerError, "boom"),
        };
        let d = document(&run(
            vec![ok(0.0, 0.1, &[0.02, 0.04], 31), bad, ok(1.2, 0.3, &[], 33)],
            Slo {
                ttft_s: Some(0.15),
                ..Slo::default()
            },
        ));
        assert_eq!(d["date"], "20261130-005320");
        assert_eq!(
            (d["completed"].as_u64(), d["failed"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(d["total_input_tokens"], 64, "successes only");
        assert_eq!(d["total_output_tokens"], 4);
        assert_eq!(
            d["input_lens"],
            json!([31, 32, 33]),
            "asked length for a failure"
        );
        assert_eq!(d["output_lens"], json!([3, 0, 1]));
        assert_eq!(d["request_throughput"], 1.0);
        assert_eq!(
            d["request_goodput"], 0.5,
            "one of two successes within 150 ms"
        );
        assert_eq!(d["output_throughput"], 2.0);
        assert_eq!(d["total_token_throughput"], 34.0);
        assert_eq!(d["ttfts"], json!([0.1, 0.0, 0.3]));
        let lat = d["latencies"].as_array().unwrap();
        assert!(
            (lat[0].as_f64().unwrap() - 0.16).abs() < 1e-12,
            "to the last token"
        );
        assert_eq!(lat[1], 0.0);
        assert_eq!(d["errors"], json!(["", "boom", ""]));
        assert_eq!(d["generated_texts"], json!(["", "", ""]));
        let close = |k: &str, want: f64| {
            let v = d[k].as_f64().unwrap();
            assert!((v - want).abs() < 1e-9, "{k}: {v} vs {want}");
        };
        close("mean_ttft_ms", 200.0);
        close("median_ttft_ms", 200.0);
        close("std_ttft_ms", 100.0);
        close("p99_ttft_ms", 100.0 + 200.0 * 0.99);
        // TPOT skips the one-token answer: only (0.16 − 0.1) / 2
        close("mean_tpot_ms", 30.0);
        close("std_tpot_ms", 0.0);
        close("mean_itl_ms", 30.0);
        close("mean_e2el_ms", (160.0 + 300.0) / 2.0);
        // tokens at 0.1, 0.12, 0.16 (bucket 0) and 1.5 (bucket 1); both requests active in
        // neither bucket at once
        assert_eq!(d["max_output_tokens_per_s"], 3.0);
        assert_eq!(d["max_concurrent_requests"], 1);
        let none = document(&run(vec![], Slo::default()));
        assert_eq!(none["request_goodput"], Value::Null);
        assert_eq!(none["mean_ttft_ms"], 0.0);
        assert_eq!(none["max_concurrent_requests"], 0);
    }

    #[test]
    fn inf_rate_and_level_file_names() {
        let mut r = run(vec![], Slo::default());
        r.request_rate = None;
        r.max_concurrency = Some(1);
        let d = document(&r);
        assert_eq!(d["request_rate"], "inf");
        assert_eq!(d["max_concurrency"], 1);
        r.burstiness = f64::INFINITY;
        let text = to_text(&document(&r)).unwrap();
        assert!(text.contains("\"burstiness\": Infinity, "), "{text}");
        assert!(has_kind(&d["request_rate"], Kind::FloatOrInf));
        let l = SweepLevel {
            rate_rps: Some(2.5),
            ..Default::default()
        };
        assert_eq!(
            level_path(Path::new("/o/v.json"), &l),
            Path::new("/o/v-rate2.5.json")
        );
        let l = SweepLevel {
            rate_rps: Some(126.491_106_406_735_17),
            ..Default::default()
        };
        assert_eq!(
            level_path(Path::new("v.json"), &l),
            Path::new("v-rate126.491.json")
        );
        let l = SweepLevel {
            concurrency: Some(8),
            ..Default::default()
        };
        assert_eq!(
            level_path(Path::new("v.json"), &l),
            Path::new("v-concurrency8.json")
        );
    }
}
