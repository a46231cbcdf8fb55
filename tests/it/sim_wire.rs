//! The simulator on a real socket (127.0.0.1:0), checked against the real vLLM 0.32 captures in
//! `tests/data/vllm-0.32.0-cpu/` (copies of the shared fixtures): SSE framing and JSON key order, error
//! bodies and statuses, plain endpoints, `/metrics` families, engine behaviour seen through
//! HTTP, fixed-timing stamps, and every fault mode.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vllm_sentinel::sim::{self, FixedTiming, SimConfig};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/vllm-0.32.0-cpu/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct Sim {
    addr: SocketAddr,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    client: reqwest::Client,
}

impl Sim {
    async fn start(cfg: SimConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(sim::serve(listener, cfg, token.clone()));
        Self {
            addr,
            token,
            task: Some(task),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn post_text(&self, path: &str, body: &str) -> (u16, String, String) {
        let r = self.post(path, body).await;
        let status = r.status().as_u16();
        let ct = header(&r, "content-type");
        (status, ct, r.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let ct = header(&r, "content-type");
        (status, ct, r.text().await.unwrap())
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.2
    }

    async fn set_faults(&self, json: &str) {
        let (status, _, body) = self.post_text("/sim/faults", json).await;
        assert_eq!(status, 200, "{body}");
    }

    async fn stop(mut self) {
        self.token.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops promptly")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Reads an SSE body event by event with the time each arrived; the error, if the body broke.
async fn read_events(
    mut r: reqwest::Response,
    per_chunk: Duration,
) -> (Vec<(String, Instant)>, Option<String>) {
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(per_chunk, r.chunk()).await {
            Err(_) => return (out, Some("timeout".into())),
            Ok(Err(e)) => return (out, Some(format!("{e:?}"))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => {
                let now = Instant::now();
                buf.push_str(std::str::from_utf8(&b).unwrap());
                while let Some(i) = buf.find("\n\n") {
                    out.push((buf[..i + 2].to_string(), now));
                    buf.drain(..i + 2);
                }
            }
        }
    }
    assert!(buf.is_empty(), "trailing bytes {buf:?}");
    (out, None)
}

// ---- an order-preserving JSON "shape" (keys in order, value kinds), for structure checks ----

fn shape(json: &str) -> String {
    let b = json.as_bytes();
    let mut i = 0;
    let s = shape_value(b, &mut i);
    skip_ws(b, &mut i);
    assert_eq!(i, b.len(), "trailing data in {json}");
    s
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn read_string(b: &[u8], i: &mut usize) -> String {
    assert_eq!(b[*i], b'"');
    *i += 1;
    let start = *i;
    while b[*i] != b'"' {
        if b[*i] == b'\\' {
            *i += 1;
        }
        *i += 1;
    }
    let s = String::from_utf8_lossy(&b[start..*i]).to_string();
    *i += 1;
    s
}

fn shape_value(b: &[u8], i: &mut usize) -> String {
    skip_ws(b, i);
    match b[*i] {
        b'{' => {
            *i += 1;
            let mut parts = Vec::new();
            loop {
                skip_ws(b, i);
                if b[*i] == b'}' {
                    *i += 1;
                    break;
                }
                let k = read_string(b, i);
                skip_ws(b, i);
                assert_eq!(b[*i], b':');
                *i += 1;
                let v = shape_value(b, i);
                parts.push(format!("{k}:{v}"));
                skip_ws(b, i);
                if b[*i] == b',' {
                    *i += 1;
                }
            }
            format!("{{{}}}", parts.join(","))
        }
        b'[' => {
            *i += 1;
            let mut parts = Vec::new();
            loop {
                skip_ws(b, i);
                if b[*i] == b']' {
                    *i += 1;
                    break;
                }
                parts.push(shape_value(b, i));
                skip_ws(b, i);
                if b[*i] == b',' {
                    *i += 1;
                }
            }
            parts.dedup();
            format!("[{}]", parts.join(","))
        }
        b'"' => {
            read_string(b, i);
            "s".into()
        }
        b'n' => {
            *i += 4;
            "null".into()
        }
        b't' => {
            *i += 4;
            "b".into()
        }
        b'f' => {
            *i += 5;
            "b".into()
        }
        _ => {
            while *i < b.len()
                && (b[*i] == b'-'
                    || b[*i] == b'.'
                    || b[*i] == b'e'
                    || b[*i] == b'+'
                    || b[*i].is_ascii_digit())
            {
                *i += 1;
            }
            "n".into()
        }
    }
}

/// The distinct consecutive event shapes of a raw SSE body, checking the framing on the way.
fn event_shapes(raw: &str) -> Vec<String> {
    assert!(!raw.contains('\r'), "LF only");
    assert!(raw.ends_with("data: [DONE]\n\n"));
    let mut shapes: Vec<String> = Vec::new();
    for ev in raw.split_inclusive("\n\n") {
        assert!(ev.starts_with("data: "), "{ev:?}");
        assert!(ev.ends_with("\n\n"));
        let payload = &ev[6..ev.len() - 2];
        assert!(!payload.contains('\n'));
        let s = if payload == "[DONE]" {
            "[DONE]".to_string()
        } else {
            shape(payload)
        };
        if shapes.last() != Some(&s) {
            shapes.push(s);
        }
    }
    shapes
}

fn tiny() -> SimConfig {
    SimConfig {
        model: "tiny".into(),
        eos_probability: 0.0,
        ..SimConfig::default()
    }
}

fn json_field<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*p],
        };
    }
    cur
}

#[tokio::test]
async fn sse_streams_have_the_fixtures_framing_and_key_order() {
    let sim = Sim::start(tiny()).await;
    let cases = [
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"the license","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}"#,
            "sse_completions",
        ),
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"the license","max_tokens":3,"stream":true}"#,
            "sse_completions_no_stream_options",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}"#,
            "sse_chat",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
            "sse_chat_continuous_usage",
        ),
    ];
    let want_ct = fixture("sse_completions.headers")
        .lines()
        .find_map(|l| l.strip_prefix("content-type: ").map(str::to_string))
        .unwrap();
    for (path, req, fx) in cases {
        let r = sim.post(path, req).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), want_ct, "{fx}");
        assert_eq!(header(&r, "transfer-encoding"), "chunked");
        assert_eq!(header(&r, "vary"), "Origin");
        let body = r.text().await.unwrap();
        let want = event_shapes(&fixture(&format!("{fx}.raw")));
        let got = event_shapes(&body);
        assert_eq!(got, want, "{fx}: event structure differs");
        // one event per token
        let tokens = body.matches("\"finish_reason\":").count()
            - body.matches("\"role\":\"assistant\"").count();
        let max: usize = req.split("\"max_tokens\":").nth(1).unwrap()[..1]
            .parse()
            .unwrap();
        assert_eq!(tokens, max, "{fx}");
        // usage agrees with the events
        if let Some(usage_ev) = body.split("\n\n").find(|e| e.contains("\"choices\":[]")) {
            let v: serde_json::Value = serde_json::from_str(&usage_ev[6..]).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], max);
            let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
            assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), p + max as u64);
        }
    }
    // completions with continuous usage: checked against a real 0.32.0 server (no capture file)
    let r = sim
        .post(
            "/v1/completions",
            r#"{"model":"tiny","prompt":"hi there","max_tokens":2,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
        )
        .await;
    let body = r.text().await.unwrap();
    let content = "{id:s,object:s,created:n,model:s,choices:[{index:n,text:s,logprobs:null,finish_reason:FR,stop_reason:null,prompt_token_ids:null,token_ids:null}],usage:{prompt_tokens:n,total_tokens:n,completion_tokens:n}}";
    assert_eq!(
        event_shapes(&body),
        [
            content.replace("FR", "null"),
            content.replace("FR", "s"),
            "{id:s,object:s,created:n,model:s,choices:[],usage:{prompt_tokens:n,total_tokens:n,completion_tokens:n},system_fingerprint:s}".into(),
            "[DONE]".to_string(),
        ]
    );
    sim.stop().await;
}

#[tokio::test]
async fn non_streaming_bodies_match_the_fixtures() {
    let sim = Sim::start(tiny()).await;
    for (path, req, fx) in [
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"the license","max_tokens":8}"#,
            "nonstream_completions.json",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#,
            "nonstream_chat.json",
        ),
    ] {
        let (status, ct, body) = sim.post_text(path, req).await;
        assert_eq!((status, ct.as_str()), (200, "application/json"));
        assert_eq!(shape(&body), shape(&fixture(fx)), "{fx}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 8);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    sim.stop().await;
}

/// vLLM accepts request bodies far over axum's 2 MiB default (a long prompt as text); the
/// simulator must answer such a prompt as vLLM does (a context-length 400), not with a 413.
#[tokio::test]
async fn bodies_over_two_mib_are_served_like_vllm() {
    let sim = Sim::start(tiny()).await;
    let prompt = "word ".repeat(700 * 1024); // 3.5 MiB
    let body = serde_json::json!({"model": "tiny", "prompt": prompt, "max_tokens": 1}).to_string();
    assert!(body.len() > 3 * 1024 * 1024);
    assert!(body.len() < sim::MAX_REQUEST_BODY_BYTES);
    let (status, _, text) = sim.post_text("/v1/completions", &body).await;
    assert_ne!(status, 413, "{text}");
    assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
    assert!(
        text.contains("context length") || text.contains("maximum"),
        "{}",
        &text[..text.len().min(300)]
    );
}

#[tokio::test]
async fn context_length_requests_replay_like_the_real_server() {
    let sim = Sim::start(tiny()).await;
    for name in [
        "prompt_too_long",
        "chat_prompt_too_long",
        "stream_prompt_too_long",
        "prompt_plus_max_tokens_too_long",
        "chat_prompt_plus_max_tokens_too_long",
        "stream_under_no_max_tokens",
    ] {
        let req = fixture(&format!("req_{name}.json"));
        let path = if req.contains("\"messages\"") {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let (status, ct, body) = sim.post_text(path, &req).await;
        let want_status: u16 = fixture(&format!("ctx_{name}.status"))
            .trim()
            .parse()
            .unwrap();
        let want_body = fixture(&format!("ctx_{name}.body"));
        assert_eq!(status, want_status, "{name}: {body}");
        if want_status == 400 {
            assert_eq!(ct, "application/json");
            assert_eq!(body, want_body, "{name}");
        } else if body.starts_with("data: ") {
            assert_eq!(event_shapes(&body), event_shapes(&want_body), "{name}");
            let usage = |b: &str| -> serde_json::Value {
                let ev = b
                    .split("\n\n")
                    .find(|e| e.contains("\"choices\":[]"))
                    .unwrap();
                serde_json::from_str::<serde_json::Value>(&ev[6..]).unwrap()["usage"].clone()
            };
            assert_eq!(usage(&body), usage(&want_body), "{name}");
        } else {
            assert_eq!(shape(&body), shape(&want_body), "{name}");
            let a: serde_json::Value = serde_json::from_str(&body).unwrap();
            let b: serde_json::Value = serde_json::from_str(&want_body).unwrap();
            // same token counts: clamped max_tokens, total == max_model_len
            assert_eq!(a["usage"], b["usage"], "{name}");
            assert_eq!(a["choices"][0]["finish_reason"], "length");
        }
    }
    sim.stop().await;
}

#[tokio::test]
async fn edge_cases_give_the_real_status_and_body() {
    let sim = Sim::start(tiny()).await;
    let edge: serde_json::Value = serde_json::from_str(&fixture("edge_cases.json")).unwrap();
    let ids = |n: usize| {
        (0..n)
            .map(|i| (i % 1000).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/v1/completions",
            format!(r#"{{"model":"tiny","prompt":[{}]}}"#, ids(2048)),
            "prompt_exactly_2048_token_ids",
        ),
        (
            "/v1/completions",
            format!(r#"{{"model":"tiny","prompt":[{}]}}"#, ids(2049)),
            "prompt_2049_token_ids",
        ),
        (
            "/v1/completions",
            format!(r#"{{"model":"tiny","prompt":"{}"}}"#, "x".repeat(200_000)),
            "prompt_huge_chars",
        ),
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"hi","max_tokens":5000}"#.into(),
            "max_tokens_5000_short_prompt",
        ),
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"hi","max_tokens":0}"#.into(),
            "max_tokens_zero",
        ),
        (
            "/v1/completions",
            r#"{"model":"tiny","prompt":"hi","max_tokens":-1}"#.into(),
            "max_tokens_negative",
        ),
        (
            "/v1/completions",
            r#"{"model":"nope","prompt":"hi"}"#.into(),
            "unknown_model",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"tiny","max_tokens":5}"#.into(),
            "missing_messages",
        ),
    ];
    for (path, req, name) in cases {
        let (status, ct, body) = sim.post_text(path, &req).await;
        assert_eq!(
            status,
            edge[name]["status"].as_u64().unwrap() as u16,
            "{name}"
        );
        assert_eq!(ct, "application/json");
        assert_eq!(body, edge[name]["body"].as_str().unwrap(), "{name}");
    }
    // 2047 token ids: 200 with one token, total 2048, finish length.
    let (status, _, body) = sim
        .post_text(
            "/v1/completions",
            &format!(r#"{{"model":"tiny","prompt":[{}]}}"#, ids(2047)),
        )
        .await;
    assert_eq!(status, 200);
    let want: serde_json::Value =
        serde_json::from_str(edge["prompt_2047_token_ids"]["body"].as_str().unwrap()).unwrap();
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["usage"], want["usage"]);
    assert_eq!(got["choices"][0]["finish_reason"], want["finish_reason"]);
    // malformed JSON: vLLM's pydantic shape, param body.<offset>
    let (status, _, body) = sim
        .post_text(
            "/v1/chat/completions",
            "{\"model\": \"tiny\", \"messages\": }",
        )
        .await;
    assert_eq!(status, 400);
    // byte for byte what a real vLLM 0.32.0 answered to this body
    assert_eq!(
        body,
        r#"{"error":{"message":"1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.30', 'msg': 'JSON decode error', 'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting value'}}","type":"Bad Request","param":"body.30","code":400}}"#
    );
    // a streaming request that is too long is refused before any SSE
    let r = sim
        .post(
            "/v1/completions",
            &format!(r#"{{"prompt":[{}],"stream":true}}"#, ids(3000)),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "content-type"), "application/json");
    sim.stop().await;
}

#[tokio::test]
async fn plain_endpoints_look_like_vllm() {
    let sim = Sim::start(SimConfig {
        version: "0.32.0".into(),
        ..tiny()
    })
    .await;
    for p in ["/health", "/ping"] {
        let (status, ct, body) = sim.get(p).await;
        assert_eq!((status, ct.as_str(), body.as_str()), (200, "", ""), "{p}");
    }
    assert_eq!(sim.get("/version").await.2, "{\"version\":\"0.32.0\"}");
    // FastAPI's bodies for unknown routes and wrong methods (checked against a live 0.32.0)
    assert_eq!(
        sim.get("/nope").await,
        (
            404,
            "application/json".into(),
            "{\"detail\":\"Not Found\"}".into()
        )
    );
    let r = sim
        .client
        .get(sim.url("/v1/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "POST");
    assert_eq!(
        r.text().await.unwrap(),
        "{\"detail\":\"Method Not Allowed\"}"
    );
    assert_eq!(sim.get("/load").await.2, "{\"server_load\":0}");
    let (_, ct, models) = sim.get("/v1/models").await;
    assert_eq!(ct, "application/json");
    assert_eq!(shape(&models), shape(&fixture("v1_models.body")));
    let v: serde_json::Value = serde_json::from_str(&models).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["max_model_len"], 2048);
    let (status, _, tok) = sim
        .post_text(
            "/tokenize",
            r#"{"model":"tiny","prompt":"the license the"}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(shape(&tok), shape(&fixture("tokenize.json")));
    let v: serde_json::Value = serde_json::from_str(&tok).unwrap();
    assert_eq!(v["count"], 4, "BOS + one token per word");
    assert_eq!(v["tokens"][1], v["tokens"][3]);
    sim.stop().await;
}

/// family -> (type, label names) from `# TYPE` lines and samples.
fn families(body: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.insert(name.into(), (kind.into(), BTreeSet::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            let fam = ["_bucket", "_count", "_sum", ""]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| out.contains_key(*f))
                .unwrap_or_else(|| panic!("sample without family: {line}"))
                .to_string();
            if let Some(l) = line[name_end..].strip_prefix('{') {
                let labels = &l[..l.find('}').unwrap()];
                for kv in labels.split("\",") {
                    let k = kv.split('=').next().unwrap();
                    if k != "le" {
                        out.get_mut(&fam).unwrap().1.insert(k.to_string());
                    }
                }
            }
            let v = line.rsplit(' ').next().unwrap();
            assert!(
                v.parse::<f64>().is_ok() || v == "+Inf" || v == "NaN",
                "bad value in {line}"
            );
        }
    }
    out
}

#[tokio::test]
async fn metrics_have_the_real_families_types_and_labels() {
    let sim = Sim::start(tiny()).await;
    // some traffic so histograms and http counters have series
    let (s, _, _) = sim
        .post_text("/v1/completions", r#"{"prompt":"a b c","max_tokens":3}"#)
        .await;
    assert_eq!(s, 200);
    let r = sim.client.get(sim.url("/metrics")).send().await.unwrap();
    let want_ct = fixture("metrics_idle.headers")
        .lines()
        .find_map(|l| l.strip_prefix("content-type: ").map(str::to_string))
        .unwrap();
    assert_eq!(header(&r, "content-type"), want_ct);
    let body = r.text().await.unwrap();
    let got = families(&body);
    let want = families(&fixture("metrics_busy.txt"));
    let pick = |m: &BTreeMap<String, (String, BTreeSet<String>)>| -> BTreeMap<String, (String, BTreeSet<String>)> {
        m.iter()
            .filter(|(k, _)| k.starts_with("vllm:") || k.starts_with("http_requests_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (got, want) = (pick(&got), pick(&want));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "family names"
    );
    for (k, v) in &want {
        assert_eq!(&got[k], v, "{k}");
    }
    assert!(body.contains("vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"tiny\"} 1.0"));
    assert!(body.contains("vllm:generation_tokens_total{engine=\"0\",model_name=\"tiny\"} 3.0"));
    assert!(body.contains(
        "http_requests_total{handler=\"/v1/completions\",method=\"POST\",status=\"2xx\"} 1.0"
    ));
    assert!(body.contains(
        "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"tiny\"} 1.0"
    ));
    sim.stop().await;

    let legacy = Sim::start(SimConfig {
        legacy_metrics: true,
        ..tiny()
    })
    .await;
    let body = legacy.metrics().await;
    let f = families(&body);
    for name in [
        "vllm:gpu_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_hits_total",
        "vllm:time_per_output_token_seconds",
    ] {
        assert!(f.contains_key(name), "{name}");
    }
    for name in [
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:inter_token_latency_seconds",
    ] {
        assert!(!f.contains_key(name), "{name}");
    }
    legacy.stop().await;
}

fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{prefix} missing"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `cond` holds (deadline 20 s).
async fn wait_metrics(sim: &Sim, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = sim.metrics().await;
        if cond(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn slow_engine() -> SimConfig {
    let mut c = tiny();
    c.engine.step_base = Duration::from_millis(5);
    c.engine.max_num_seqs = 2;
    c
}

#[tokio::test]
async fn engine_queues_grows_kv_and_drains_to_zero() {
    let sim = Sim::start(slow_engine()).await;
    // 40 words: two full 16-token blocks that later identical prompts find in the prefix cache
    let req = format!(
        r#"{{"prompt":"{}","max_tokens":100,"ignore_eos":true,"stream":true}}"#,
        "word ".repeat(40)
    );
    let req = req.as_str();
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(sim.post("/v1/completions", req).await);
    }
    let m = wait_metrics(&sim, "4 waiting, 2 running", |m| {
        metric(m, "vllm:num_requests_waiting{") == 4.0
            && metric(m, "vllm:num_requests_running{") == 2.0
            && metric(m, "vllm:kv_cache_usage_perc{") > 0.0
    })
    .await;
    assert_eq!(
        metric(
            &m,
            "vllm:num_requests_waiting_by_reason{engine=\"0\",model_name=\"tiny\",reason=\"capacity\"}"
        ),
        4.0
    );
    assert_eq!(sim.get("/load").await.2, "{\"server_load\":6}");
    for s in streams {
        let (events, err) = read_events(s, Duration::from_secs(20)).await;
        assert!(err.is_none());
        assert_eq!(events.len(), 101);
    }
    let m = wait_metrics(&sim, "idle", |m| {
        metric(m, "vllm:num_requests_running{") == 0.0
    })
    .await;
    assert_eq!(metric(&m, "vllm:kv_cache_usage_perc{"), 0.0);
    assert_eq!(metric(&m, "vllm:num_requests_waiting{"), 0.0);
    assert_eq!(metric(&m, "vllm:generation_tokens_total{"), 600.0);
    // later requests queued: their queue time is visible
    assert!(metric(&m, "vllm:request_queue_time_seconds_sum{") > 0.0);
    assert!(
        metric(&m, "vllm:prefix_cache_hits_total{") > 0.0,
        "identical prompts hit"
    );
    assert_eq!(sim.get("/load").await.2, "{\"server_load\":0}");
    sim.stop().await;
}

#[tokio::test]
async fn preemption_when_kv_blocks_run_out() {
    let mut c = tiny();
    c.engine.block_size = 4;
    c.engine.num_gpu_blocks = 17; // 64 tokens
    c.engine.enable_prefix_caching = false;
    c.max_model_len = 64;
    let sim = Sim::start(c).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let client = sim.client.clone();
        let url = sim.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .body(format!(
                    r#"{{"prompt":"p{i} a b c d e f","max_tokens":24,"ignore_eos":true}}"#
                ))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let body = t.await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 24);
    }
    let m = sim.metrics().await;
    assert!(
        metric(&m, "vllm:num_preemptions_total{") > 0.0,
        "no preemption"
    );
    assert_eq!(metric(&m, "vllm:kv_cache_usage_perc{"), 0.0);
    sim.stop().await;
}

#[tokio::test]
async fn queue_limit_rejects_with_503() {
    let mut c = slow_engine();
    c.engine.max_num_seqs = 1;
    c.max_queued_requests = Some(1);
    let sim = Sim::start(c).await;
    let req = r#"{"prompt":"x","max_tokens":1000,"ignore_eos":true,"stream":true}"#;
    let mut first = sim.post("/v1/completions", req).await;
    assert!(first.chunk().await.unwrap().is_some(), "first is running");
    let _second = sim.post("/v1/completions", req).await;
    wait_metrics(&sim, "one waiting", |m| {
        metric(m, "vllm:num_requests_waiting{") == 1.0
    })
    .await;
    let (status, ct, body) = sim.post_text("/v1/completions", req).await;
    assert_eq!((status, ct.as_str()), (503, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], 503);
    assert_eq!(shape(&body), "{error:{message:s,type:s,param:null,code:n}}");
    let m = sim.metrics().await;
    assert_eq!(
        metric(
            &m,
            "vllm:admission_rejections_total{model_name=\"tiny\",reason=\"max_num_queued_reqs\"}"
        ),
        1.0
    );
    drop(first);
    sim.stop().await;
}

fn fixed(first_ms: u64, every_ms: u64) -> SimConfig {
    SimConfig {
        fixed_timing: Some(FixedTiming {
            first: Duration::from_millis(first_ms),
            every: Duration::from_millis(every_ms),
        }),
        ..tiny()
    }
}

fn stamps(events: &[(String, Instant)]) -> Vec<u64> {
    events
        .iter()
        .filter(|(e, _)| !e.contains("[DONE]"))
        .map(|(e, _)| {
            let v: serde_json::Value = serde_json::from_str(&e[6..e.len() - 2]).unwrap();
            v["sim_sent_ns"].as_u64().expect("stamped")
        })
        .collect()
}

#[tokio::test]
async fn fixed_timing_stamps_are_monotonic_and_spaced() {
    // EVERY is large (40 ms) so that a scheduling stall of the loaded test machine, after which
    // the overdue tokens go out at once, spoils only a few gaps.
    const FIRST: u64 = 30_000_000;
    const EVERY: u64 = 40_000_000;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("send.log");
    let mut c = fixed(30, 40);
    c.send_log = Some(log.clone());
    let sim = Sim::start(c).await;
    let t0 = vllm_sentinel::clock::monotonic_ns();
    let r = sim
        .post(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_none());
    let st = stamps(&events);
    assert_eq!(st.len(), 18, "role + 16 tokens + usage");
    assert!(st.windows(2).all(|w| w[1] >= w[0]), "monotonic");
    // token i (event i+1) is never sent before its absolute deadline
    for (i, s) in st[1..17].iter().enumerate() {
        assert!(*s >= t0 + FIRST + i as u64 * EVERY, "token {i} early");
    }
    // spacing of the stamps themselves: median gap ≈ EVERY (generous bounds for a loaded box)
    let mut gaps: Vec<u64> = st[1..17].windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        (EVERY / 2..=3 * EVERY).contains(&median),
        "median gap {median} ns"
    );
    // absolute deadlines: lateness does not accumulate from token to token
    let last_deadline = t0 + FIRST + 15 * EVERY;
    assert!(
        st[16] - last_deadline < 1_000_000_000,
        "last token {} ns late",
        st[16] - last_deadline
    );
    sim.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 18);
    let parts: Vec<&str> = lines[5].split(' ').collect();
    assert!(parts[0].starts_with("chatcmpl-"));
    assert_eq!(parts[1], "5");
    assert_eq!(parts[2].parse::<u64>().unwrap(), st[5]);
}

#[tokio::test]
async fn fixed_timing_scales_to_many_concurrent_streams() {
    let sim = Sim::start(fixed(20, 5)).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = sim.client.clone();
        let url = sim.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .body(r#"{"prompt":"x","max_tokens":20,"stream":true}"#)
                .send()
                .await
                .unwrap();
            read_events(r, Duration::from_secs(20)).await
        }));
    }
    for t in tasks {
        let (events, err) = t.await.unwrap();
        assert!(err.is_none());
        assert_eq!(events.len(), 21);
        let st = stamps(&events);
        assert!(st.windows(2).all(|w| w[1] >= w[0]));
    }
    sim.stop().await;
}

const STREAM: &str = r#"{"prompt":"x","max_tokens":6,"stream":true}"#;

#[tokio::test]
async fn fault_error_responses_every_nth() {
    let sim = Sim::start(tiny()).await;
    sim.set_faults(r#"{"error_status":503,"error_every":2}"#)
        .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            sim.post_text("/v1/completions", r#"{"prompt":"x","max_tokens":1}"#)
                .await,
        );
    }
    assert_eq!(
        statuses.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 503, 200, 503]
    );
    assert_eq!(statuses[1].1, "application/json");
    assert_eq!(
        shape(&statuses[1].2),
        "{error:{message:s,type:s,param:null,code:n}}"
    );
    // read back, then turn off
    let (_, _, f) = sim.get("/sim/faults").await;
    let v: serde_json::Value = serde_json::from_str(&f).unwrap();
    assert_eq!(v["error_every"], 2);
    sim.set_faults("{}").await;
    assert_eq!(
        sim.post_text("/v1/completions", r#"{"prompt":"x","max_tokens":1}"#)
            .await
            .0,
        200
    );
    // bad fault JSON is refused with a message naming the problem
    let (status, _, body) = sim
        .post_text("/sim/faults", r#"{"error_rate":2,"error_status":500}"#)
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("error_rate"), "{body}");
    let (status, _, body) = sim.post_text("/sim/faults", r#"{"bogus":1}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("bogus"), "{body}");
    // rate: seeded, so some but not all of 40 fail at 0.5
    sim.set_faults(r#"{"error_status":500,"error_rate":0.5}"#)
        .await;
    let mut fails = 0;
    for _ in 0..40 {
        if sim
            .post_text("/v1/completions", r#"{"prompt":"x","max_tokens":1}"#)
            .await
            .0
            == 500
        {
            fails += 1;
        }
    }
    assert!((5..=35).contains(&fails), "{fails}");
    sim.stop().await;
}

#[tokio::test]
async fn fault_slow_headers_and_slow_first_token() {
    let sim = Sim::start(fixed(1, 1)).await;
    sim.set_faults(r#"{"slow_headers":"300ms"}"#).await;
    let t = Instant::now();
    let r = sim.post("/v1/completions", STREAM).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    read_events(r, Duration::from_secs(10)).await;
    sim.set_faults(r#"{"slow_first_token":"300ms"}"#).await;
    let t = Instant::now();
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, _) = read_events(r, Duration::from_secs(10)).await;
    assert!(events[0].1 - t >= Duration::from_millis(300));
    sim.stop().await;

    // the same in engine mode
    let sim = Sim::start(tiny()).await;
    sim.set_faults(r#"{"slow_first_token":"300ms"}"#).await;
    let t = Instant::now();
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_none());
    assert!(events[0].1 - t >= Duration::from_millis(300));
    assert_eq!(events.len(), 7);
    // the engine's own TTFT histogram sees it too (nothing under 0.25 s)
    let m = sim.metrics().await;
    assert_eq!(
        metric(
            &m,
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.25\""
        ),
        0.0
    );
    assert_eq!(metric(&m, "vllm:time_to_first_token_seconds_count{"), 1.0);
    sim.stop().await;
}

#[tokio::test]
async fn fault_stalls_for_a_while_or_forever() {
    let sim = Sim::start(fixed(1, 1)).await;
    sim.set_faults(r#"{"stall_after_tokens":2,"stall_for":"400ms"}"#)
        .await;
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_none());
    assert_eq!(events.len(), 7);
    // the server's own send stamps show the pause after the second token
    let st = stamps(&events);
    assert!(st[2] - st[1] >= 400_000_000, "{st:?}");
    sim.set_faults(r#"{"stall_after_tokens":2}"#).await;
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_millis(1500)).await;
    assert_eq!(err.as_deref(), Some("timeout"));
    assert_eq!(events.len(), 2);
    // a stalled stream does not hold up shutdown
    let _stalled = sim.post("/v1/completions", STREAM).await;
    sim.stop().await;
}

#[tokio::test]
async fn fault_cut_error_event_malformed_and_spikes() {
    let sim = Sim::start(fixed(1, 1)).await;
    sim.set_faults(r#"{"cut_after_tokens":3}"#).await;
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_some(), "the body breaks");
    assert_eq!(events.len(), 3);
    assert!(!events.iter().any(|e| e.0.contains("[DONE]")));

    sim.set_faults(r#"{"error_event_after_tokens":2}"#).await;
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_none());
    assert_eq!(events.len(), 4);
    let v: serde_json::Value = serde_json::from_str(&events[2].0[6..]).unwrap();
    assert_eq!(v["error"]["code"], 500);
    assert_eq!(events[3].0, "data: [DONE]\n\n");

    sim.set_faults(r#"{"malformed_after_tokens":1}"#).await;
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_none());
    assert_eq!(events.len(), 8, "6 tokens + malformed + DONE");
    assert!(serde_json::from_str::<serde_json::Value>(&events[1].0[6..]).is_err());
    assert!(serde_json::from_str::<serde_json::Value>(&events[2].0[6..]).is_ok());

    sim.set_faults(r#"{"spike_every_tokens":3,"spike_delay":"250ms"}"#)
        .await;
    let r = sim.post("/v1/completions", STREAM).await;
    let (events, err) = read_events(r, Duration::from_secs(10)).await;
    assert!(err.is_none());
    let st = stamps(&events);
    assert!(st[2] - st[1] >= 250_000_000, "3rd token spiked");
    assert!(st[5] - st[4] >= 250_000_000, "6th token spiked");

    // stream faults can target every Nth request only
    sim.set_faults(r#"{"cut_after_tokens":0,"stream_fault_every":2}"#)
        .await;
    let (_, e1) = read_events(
        sim.post("/v1/completions", STREAM).await,
        Duration::from_secs(10),
    )
    .await;
    let (_, e2) = read_events(
        sim.post("/v1/completions", STREAM).await,
        Duration::from_secs(10),
    )
    .await;
    assert!(e1.is_none());
    assert!(e2.is_some());
    sim.stop().await;
}

#[tokio::test]
async fn fault_metrics_down_or_garbled_and_context_override() {
    let sim = Sim::start(tiny()).await;
    sim.set_faults(r#"{"metrics":"error500"}"#).await;
    assert_eq!(sim.get("/metrics").await.0, 500);
    sim.set_faults(r#"{"metrics":"not_found"}"#).await;
    assert_eq!(sim.get("/metrics").await.0, 404);
    sim.set_faults(r#"{"metrics":"garbled"}"#).await;
    let (status, _, body) = sim.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        std::panic::catch_unwind(|| families(&body)).is_err(),
        "garbled parses"
    );
    sim.set_faults(r#"{"max_model_len":16}"#).await;
    let (status, _, body) = sim
        .post_text(
            "/v1/completions",
            &format!(r#"{{"prompt":"{}"}}"#, "w ".repeat(20)),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body.contains("maximum context length is 16 tokens"),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(&sim.get("/v1/models").await.2).unwrap();
    assert_eq!(json_field(&v, &["data", "0", "max_model_len"]), 16);
    sim.set_faults("{}").await;
    assert_eq!(
        sim.post_text(
            "/v1/completions",
            &format!(r#"{{"prompt":"{}"}}"#, "w ".repeat(20))
        )
        .await
        .0,
        200
    );
    sim.stop().await;
}

#[tokio::test]
async fn client_disconnect_aborts_in_the_engine() {
    let sim = Sim::start(slow_engine()).await;
    let mut r = sim
        .post(
            "/v1/completions",
            r#"{"prompt":"x","max_tokens":1000,"ignore_eos":true,"stream":true}"#,
        )
        .await;
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    let m = wait_metrics(&sim, "aborted request gone", |m| {
        metric(m, "vllm:num_requests_running{") == 0.0
    })
    .await;
    assert_eq!(metric(&m, "vllm:kv_cache_usage_perc{"), 0.0);
    // like vLLM, an abort is not a finished request
    assert_eq!(
        metric(
            &m,
            "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\""
        ),
        0.0
    );
    sim.stop().await;
}

#[tokio::test]
async fn port_in_use_is_one_line_naming_the_address() {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        sim: sim::SimArgs,
    }
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let w = Wrap::try_parse_from(["x", "--listen", &addr]).unwrap();
    let err = sim::run_cli(w.sim, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr), "{err}");
    assert!(!err.contains('\n'));
}

#[tokio::test]
async fn the_scrape_parser_reads_the_simulators_metrics_cleanly() {
    use vllm_sentinel::scrape::expfmt::{Format, parse};
    let sim = Sim::start(tiny()).await;
    let (s, _, _) = sim
        .post_text("/v1/completions", r#"{"prompt":"a b c","max_tokens":3}"#)
        .await;
    assert_eq!(s, 200);
    let r = sim.client.get(sim.url("/metrics")).send().await.unwrap();
    let format = Format::from_content_type(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
    );
    let body = r.text().await.unwrap();
    let exp = parse(&body, format);
    assert_eq!(
        exp.error_total(),
        0,
        "{:?}",
        exp.error_counts().collect::<Vec<_>>()
    );
    assert!(exp.fatal().is_none());
    let real = fixture("metrics_busy.txt");
    let real_exp = parse(&real, Format::Prometheus);
    assert_eq!(real_exp.error_total(), 0);
    let names = |e: &vllm_sentinel::scrape::expfmt::Exposition<'_>| -> BTreeSet<String> {
        e.families
            .iter()
            .map(|f| f.base_name().to_string())
            .filter(|n| n.starts_with("vllm:") || n.starts_with("http_requests"))
            .collect()
    };
    assert_eq!(
        names(&exp),
        names(&real_exp),
        "same families as the real body"
    );
    sim.set_faults(r#"{"metrics":"garbled"}"#).await;
    let garbled = sim.metrics().await;
    assert!(parse(&garbled, Format::Prometheus).error_total() > 0);
    sim.stop().await;
}
