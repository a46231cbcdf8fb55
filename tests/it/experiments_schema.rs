//! The experiment reports validate against docs/report-schema.json.
//!
//! The checker is a small hand-rolled subset of JSON Schema 2020-12 — exactly the keywords the
//! schema uses (`type`, `required`, `properties`, `additionalProperties`, `items`, `enum`,
//! `const`, `minimum`, `$ref` to `#/$defs`, `anyOf`, `allOf` with `if`/`then`) — which keeps
//! the dev-dependencies small. The schema is strict (`additionalProperties: false`), so a field
//! added to the report without the schema, or the reverse, fails here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vllm_sentinel::experiments::engine::{
    CacheConfig, ModelInfo, Outcome, RequestSpec, Sample, ServerSnapshot, Target,
};
use vllm_sentinel::experiments::{bench, common::CommonArgs, kvscale, sweep};

fn schema() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/report-schema.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn type_ok(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        other => panic!("schema uses unsupported type {other}"),
    }
}

/// Appends every violation of `s` by `v` (at `path`) to `errs`.
fn check(root: &Value, s: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let Some(s) = s.as_object() else { return };
    for k in s.keys() {
        assert!(
            matches!(
                k.as_str(),
                "$schema"
                    | "$id"
                    | "$defs"
                    | "$ref"
                    | "title"
                    | "description"
                    | "type"
                    | "required"
                    | "properties"
                    | "additionalProperties"
                    | "items"
                    | "enum"
                    | "const"
                    | "minimum"
                    | "anyOf"
                    | "allOf"
                    | "if"
                    | "then"
            ),
            "the checker does not implement keyword {k} (at {path})"
        );
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("local refs only");
        check(root, &root["$defs"][name], v, path, errs);
    }
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(v, t),
            Value::Array(ts) => ts.iter().any(|t| type_ok(v, t.as_str().unwrap())),
            _ => panic!("bad type keyword"),
        };
        if !ok {
            errs.push(format!("{path}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{path}: {v} not in {e:?}"));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        errs.push(format!("{path}: {v} != {c}"));
    }
    if let (Some(m), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && x < m
    {
        errs.push(format!("{path}: {x} < minimum {m}"));
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        let passes = any.iter().any(|sub| {
            let mut e = Vec::new();
            check(root, sub, v, path, &mut e);
            e.is_empty()
        });
        if !passes {
            errs.push(format!("{path}: matches none of anyOf"));
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            if let (Some(cond), Some(then)) = (sub.get("if"), sub.get("then")) {
                let mut e = Vec::new();
                check(root, cond, v, path, &mut e);
                if e.is_empty() {
                    check(root, then, v, path, errs);
                }
            } else {
                check(root, sub, v, path, errs);
            }
        }
    }
    if let Some(o) = v.as_object() {
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req {
                let k = k.as_str().unwrap();
                if !o.contains_key(k) {
                    errs.push(format!("{path}: missing required key {k}"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in o {
            let p = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(sub) => check(root, sub, val, &p, errs),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => errs.push(format!("{p}: not in the schema")),
                    Some(sub @ Value::Object(_)) => check(root, sub, val, &p, errs),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(root, items, x, &format!("{path}[{i}]"), errs);
        }
    }
}

pub fn validate(v: &Value) -> Vec<String> {
    let root = schema();
    let mut errs = Vec::new();
    check(&root, &root, v, "$", &mut errs);
    errs
}

/// A tiny server on tokio's (paused) clock: 4 sequences at once, 64 KV blocks of 16 tokens,
/// context 512; 10 ms prefill, 5 ms per further token.
#[derive(Clone)]
struct Fake {
    slots: Arc<Semaphore>,
    kv: Arc<Semaphore>,
    gauges: Arc<Mutex<(f64, f64, u64)>>,
}

impl Fake {
    fn new() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(4)),
            kv: Arc::new(Semaphore::new(64)),
            gauges: Arc::default(),
        }
    }
}

impl Target for Fake {
    async fn models(&self) -> anyhow::Result<Vec<ModelInfo>> {
        Ok(vec![ModelInfo {
            id: "fake".into(),
            max_model_len: Some(512),
        }])
    }
    async fn prepare(&self, _: &ModelInfo) -> Vec<String> {
        vec![]
    }
    async fn execute(&self, spec: RequestSpec, intended: tokio::time::Instant) -> Sample {
        let t0 = tokio::time::Instant::now();
        let late = t0.saturating_duration_since(intended).as_secs_f64();
        if spec.prompt_tokens >= 512 {
            return Sample {
                outcome: Outcome::ContextLength,
                status: Some(400),
                error_message: Some("This model's maximum context length is 512 tokens.".into()),
                ..Default::default()
            };
        }
        let out = spec.max_tokens.min(512 - spec.prompt_tokens);
        let blocks = (spec.prompt_tokens + out).div_ceil(16);
        self.gauges.lock().unwrap().1 += 1.0;
        let _s = self.slots.acquire().await.unwrap();
        let _k = self.kv.acquire_many(blocks).await.unwrap();
        {
            let mut g = self.gauges.lock().unwrap();
            g.1 -= 1.0;
            g.0 += 1.0;
            g.2 += u64::from(blocks);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let ttft = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(5) * out.saturating_sub(1)).await;
        {
            let mut g = self.gauges.lock().unwrap();
            g.0 -= 1.0;
            g.2 -= u64::from(blocks);
        }
        let e2e = t0.elapsed().as_secs_f64() + late;
        Sample {
            outcome: Outcome::Ok,
            status: Some(200),
            ttfb_s: Some(ttft),
            ttft_s: spec.stream.then_some(ttft + late),
            tpot_s: (out > 1).then(|| (e2e - late - ttft) / f64::from(out - 1)),
            itl_s: vec![0.005; out.saturating_sub(1) as usize],
            e2e_s: e2e,
            prompt_tokens: Some(spec.prompt_tokens),
            output_tokens: Some(out),
            finish_reason: Some("length".into()),
            error_message: None,
        }
    }
    async fn metrics(&self) -> anyhow::Result<ServerSnapshot> {
        let g = *self.gauges.lock().unwrap();
        Ok(ServerSnapshot {
            kv_usage: Some(g.2 as f64 / 64.0),
            running: Some(g.0),
            waiting: Some(g.1),
            preemptions_total: Some(0.0),
            generation_tokens_total: None,
            cache: Some(CacheConfig {
                block_size: 16,
                num_gpu_blocks: 64,
            }),
        })
    }
}

fn common(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["x", "--target", "http://127.0.0.1:9", "--no-progress"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[derive(clap::Parser)]
struct BenchCli {
    #[command(flatten)]
    a: bench::BenchArgs,
}
#[derive(clap::Parser)]
struct SweepCli {
    #[command(flatten)]
    a: sweep::SweepArgs,
}
#[derive(clap::Parser)]
struct KvCli {
    #[command(flatten)]
    a: kvscale::KvScaleArgs,
}

fn to_json(r: &vllm_sentinel::experiments::report::Report) -> Value {
    serde_json::to_value(r).unwrap()
}

#[tokio::test(start_paused = true)]
async fn bench_report_validates() {
    use clap::Parser;
    let a = BenchCli::parse_from(common(&["--requests", "4", "--max-tokens", "8"])).a;
    let r = bench::measure(&Fake::new(), &a, &CancellationToken::new())
        .await
        .unwrap();
    let v = to_json(&r);
    assert_eq!(validate(&v), Vec::<String>::new());
    assert_eq!(v["bench"]["modes"].as_array().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn sweep_report_validates() {
    use clap::Parser;
    let a = SweepCli::parse_from(common(&[
        "--concurrency",
        "1,2,4,8,16,32",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--max-tokens",
        "9",
        "--slo-e2e",
        "120ms",
        "--metrics-interval",
        "100ms",
    ]))
    .a;
    let r = sweep::measure(Arc::new(Fake::new()), &a, &CancellationToken::new())
        .await
        .unwrap();
    let v = to_json(&r);
    assert_eq!(validate(&v), Vec::<String>::new());
    assert_eq!(v["sweep"]["knee"]["load"], 4.0);
    assert_eq!(v["sweep"]["slo"]["best_load"], 8.0);
}

#[tokio::test(start_paused = true)]
async fn bench_with_slos_and_sweep_rate_search_validate() {
    use clap::Parser;
    let a = BenchCli::parse_from(common(&[
        "--requests",
        "4",
        "--max-tokens",
        "8",
        "--slo-ttft",
        "1s",
        "--slo-tpot",
        "1s",
    ]))
    .a;
    let r = bench::measure(&Fake::new(), &a, &CancellationToken::new())
        .await
        .unwrap();
    let v = to_json(&r);
    assert_eq!(validate(&v), Vec::<String>::new());
    assert_eq!(v["bench"]["modes"][0]["slo_attainment"], 1.0);
    assert_eq!(
        v["bench"]["modes"][1]["slo_attainment"], 0.0,
        "a non-streamed answer has no TTFT to meet"
    );
    let a = SweepCli::parse_from(common(&[
        "--rate-search",
        "--rate-min",
        "5",
        "--rate-max",
        "400",
        "--requests",
        "100",
        "--warmup",
        "200ms",
        "--max-tokens",
        "9",
        "--slo-e2e",
        "150ms",
        "--metrics-interval",
        "100ms",
        "--search-max-probes",
        "6",
    ]))
    .a;
    let r = sweep::measure(Arc::new(Fake::new()), &a, &CancellationToken::new())
        .await
        .unwrap();
    let v = to_json(&r);
    assert_eq!(validate(&v), Vec::<String>::new());
    assert_eq!(v["sweep"]["search"]["probes"].as_array().unwrap().len(), 6);
    assert_eq!(v["sweep"]["search"]["stop_reason"], "max_probes");
}

#[tokio::test(start_paused = true)]
async fn kv_scale_report_validates() {
    use clap::Parser;
    let a = KvCli::parse_from(common(&["--max-tokens", "8", "--sample-interval", "2ms"])).a;
    let r = kvscale::measure(Arc::new(Fake::new()), &a, &CancellationToken::new())
        .await
        .unwrap();
    let v = to_json(&r);
    assert_eq!(validate(&v), Vec::<String>::new());
    assert_eq!(v["kv_scale"]["boundary"]["max_accepted_prompt_tokens"], 511);
}

#[tokio::test(start_paused = true)]
async fn partial_report_validates() {
    use clap::Parser;
    let a = SweepCli::parse_from(common(&["--concurrency", "1,2"])).a;
    let token = CancellationToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        t2.cancel();
    });
    let r = sweep::measure(Arc::new(Fake::new()), &a, &token)
        .await
        .unwrap();
    let v = to_json(&r);
    assert_eq!(v["partial"], true);
    assert_eq!(validate(&v), Vec::<String>::new());
}

#[test]
fn the_checker_catches_drift() {
    let ok = serde_json::json!({
        "schema_version": 1, "kind": "bench", "tool": "t", "started_unix_s": 1.0,
        "duration_s": 1.0, "partial": false, "partial_reason": null,
        "target": {"url": "u", "model": "m", "endpoint": "chat", "max_model_len": null},
        "settings": {}, "notes": [], "bench": {"modes": [], "requests": []}
    });
    assert_eq!(validate(&ok), Vec::<String>::new());
    let mut missing = ok.clone();
    missing.as_object_mut().unwrap().remove("bench");
    assert!(validate(&missing).iter().any(|e| e.contains("bench")));
    let mut extra = ok.clone();
    extra["target"]["surprise"] = Value::from(1);
    assert!(validate(&extra).iter().any(|e| e.contains("surprise")));
    let mut wrong = ok.clone();
    wrong["duration_s"] = Value::from("long");
    assert!(!validate(&wrong).is_empty());
    let mut bad_enum = ok;
    bad_enum["target"]["endpoint"] = Value::from("embeddings");
    assert!(!validate(&bad_enum).is_empty());
}

/// The CommonArgs flags parse, with env fallbacks documented in docs/experiments.md.
#[test]
fn common_flags_parse() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct C {
        #[command(flatten)]
        c: CommonArgs,
    }
    let c = C::parse_from([
        "x",
        "--target",
        "http://h:1",
        "--endpoint",
        "chat",
        "--json",
        "r.json",
        "--request-timeout",
        "5s",
    ])
    .c;
    assert_eq!(c.request_timeout, Duration::from_secs(5));
    assert_eq!(c.json.unwrap().to_str(), Some("r.json"));
    assert!(C::try_parse_from(["x", "--target", "t", "--request-timeout", "soon"]).is_err());
}
