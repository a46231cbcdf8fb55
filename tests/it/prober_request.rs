//! The single-request engine against a raw fake replaying real vLLM captures and every
//! wire-level failure.

use crate::prober_support;

use std::time::{Duration, Instant};

use prober_support::{Step, fixed, fixture, sse_head, sse_script, start};
use tokio_util::sync::CancellationToken;
use vllm_sentinel::prober::request::{
    Conn, Endpoint, Outcome, ProbeRequest, Prompt, RequestRecord, Timeouts, build_client, execute,
    execute_with,
};

fn probe(endpoint: Endpoint) -> ProbeRequest {
    ProbeRequest {
        endpoint,
        model: "tiny".into(),
        prompt: match endpoint {
            Endpoint::Completions => Prompt::TokenIds(vec![1574, 8147, 2713, 2224, 275, 7949]),
            Endpoint::Chat => Prompt::Text("hello there".into()),
        },
        max_tokens: 8,
        ignore_eos: true,
        temperature: None,
        stream: true,
        extra: Default::default(),
    }
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_token: Duration::from_millis(300),
        request: Duration::from_millis(600),
    }
}

async fn run_script(steps: Vec<Step>, endpoint: Endpoint, t: Timeouts) -> RequestRecord {
    let fake = start(move |_, _, _| steps.clone()).await;
    let client = build_client(&t, 4).unwrap();
    execute(
        &client,
        &fake.url,
        None,
        &probe(endpoint),
        &t,
        Instant::now(),
    )
    .await
}

#[tokio::test]
async fn replays_vllm_completions_stream() {
    let mut fake = start(|_, _, _| sse_script(&fixture("sse_completions.raw"))).await;
    let t = Timeouts::default();
    let client = build_client(&t, 4).unwrap();
    let r = execute(
        &client,
        &fake.url,
        Some("sekret"),
        &probe(Endpoint::Completions),
        &t,
        Instant::now(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.http_status, Some(200));
    assert_eq!(r.prompt_tokens, Some(6));
    assert_eq!(r.output_tokens, Some(8));
    // 7 text events (the usage trailer carries no text): 6 gaps.
    assert_eq!(r.output_events, 7);
    assert_eq!(r.itl.len(), 6);
    assert_eq!(r.finish_reason.as_deref(), Some("length"));
    let ttft = r.ttft.unwrap();
    assert!(r.ttfb.unwrap() <= ttft && ttft <= r.e2e);
    assert!(r.tpot.is_some());
    assert!(r.error.is_none());
    // What went on the wire.
    let (head, body) = fake.requests.recv().await.unwrap();
    assert!(head.starts_with("/v1/completions"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer sekret")
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["prompt"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn chat_role_prelude_is_not_the_first_token() {
    let r = run_script(
        sse_script(&fixture("sse_chat.raw")),
        Endpoint::Chat,
        Timeouts::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_events, 8); // 9 choice events, the first is role-only
    assert_eq!(r.itl.len(), 7);
    assert_eq!((r.prompt_tokens, r.output_tokens), (Some(15), Some(8)));
}

#[tokio::test]
async fn continuous_usage_takes_the_last_count() {
    let r = run_script(
        sse_script(&fixture("sse_chat_continuous_usage.raw")),
        Endpoint::Chat,
        Timeouts::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_tokens, Some(r.output_events));
}

#[tokio::test]
async fn no_usage_means_no_tpot_but_ok() {
    let r = run_script(
        sse_script(&fixture("sse_completions_no_stream_options.raw")),
        Endpoint::Completions,
        Timeouts::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_tokens, None);
    assert_eq!(r.tpot, None);
    assert_eq!(r.output_events, 3);
}

#[tokio::test]
async fn known_gaps_are_measured() {
    // First event 60 ms after the request, then 4 more 25 ms apart (server-side deadlines are
    // relative sleeps, so each gap is at least 25 ms at the server).
    let ev = |t: &str, fin: &str| {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"text\":\"{t}\",\"finish_reason\":{fin}}}]}}\n\n"
        )
        .into_bytes()
    };
    let mut steps = vec![
        sse_head(),
        Step::Sleep(Duration::from_millis(60)),
        Step::Chunk(ev("a", "null")),
    ];
    for i in 0..4 {
        steps.push(Step::Sleep(Duration::from_millis(25)));
        steps.push(Step::Chunk(ev(
            &i.to_string(),
            if i == 3 { "\"length\"" } else { "null" },
        )));
    }
    steps.push(Step::Chunk(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":6,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n".to_vec(),
    ));
    steps.push(Step::EndChunks);
    let t = Timeouts {
        first_token: Duration::from_secs(30),
        request: Duration::from_secs(60),
        ..Timeouts::default()
    };
    let start = Instant::now();
    let fake = start_fake(steps).await;
    let client = build_client(&t, 1).unwrap();
    let r = execute(
        &client,
        &fake,
        None,
        &probe(Endpoint::Completions),
        &t,
        start,
    )
    .await;
    let wall = start.elapsed();
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let ttft = r.ttft.unwrap();
    assert!(ttft >= Duration::from_millis(60), "{ttft:?}");
    assert!(ttft <= wall);
    assert_eq!(r.itl.len(), 4);
    let span: Duration = r.itl.iter().sum();
    // The last token is at least 3 full gaps after the first (each gap ≥ 25 ms at the server;
    // delivery can only shift a single receive later, never make the span shorter by more
    // than the first event's delay).
    assert!(span >= Duration::from_millis(75), "{span:?}");
    // TPOT is exactly (last − first) / (completion_tokens − 1) from usage.
    let tpot = r.tpot.unwrap();
    let want = span / 4;
    assert!(
        tpot.abs_diff(want) < Duration::from_micros(1),
        "{tpot:?} vs {want:?}"
    );
    assert!(r.e2e >= ttft + span);
    assert!(r.e2e <= wall);
}

async fn start_fake(steps: Vec<Step>) -> String {
    start(move |_, _, _| steps.clone()).await.url
}

#[tokio::test]
async fn context_length_rejection_is_classified() {
    for f in [
        "ctx_prompt_too_long.body",
        "ctx_chat_prompt_too_long.body",
        "ctx_stream_prompt_too_long.body",
    ] {
        let r = run_script(
            fixed(400, "application/json", &fixture(f)),
            Endpoint::Completions,
            Timeouts::default(),
        )
        .await;
        assert_eq!(r.outcome, Outcome::ContextLength, "{f}: {r:?}");
        assert_eq!(r.http_status, Some(400));
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .contains("maximum context length")
        );
        assert!(r.ttft.is_none());
    }
    // vLLM's 400 for a huge prompt measured in characters.
    let body = br#"{"error":{"message":"This model's maximum context length is 2048 tokens. However, your prompt contains 200000 characters","type":"BadRequestError","param":"input_text","code":400}}"#;
    let r = run_script(
        fixed(400, "application/json", body),
        Endpoint::Completions,
        Timeouts::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::ContextLength);
    // A different 400 (max_tokens) is a client error.
    let body = br#"{"error":{"message":"max_tokens must be at least 1, got 0.","type":"BadRequestError","param":"max_tokens","code":400}}"#;
    let r = run_script(
        fixed(400, "application/json", body),
        Endpoint::Completions,
        Timeouts::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::ClientError);
}

#[tokio::test]
async fn http_statuses_are_classified() {
    for (status, want) in [
        (404, Outcome::ClientError),
        (429, Outcome::RateLimited),
        (503, Outcome::Overloaded),
        (500, Outcome::ServerError),
        (502, Outcome::ServerError),
    ] {
        let r = run_script(
            fixed(status, "text/plain", b"nope"),
            Endpoint::Completions,
            Timeouts::default(),
        )
        .await;
        assert_eq!(r.outcome, want, "{status}");
        assert_eq!(r.http_status, Some(status));
        assert!(r.error.as_deref().unwrap().contains(&status.to_string()));
    }
}

#[tokio::test]
async fn non_streamed_response() {
    let mut p = probe(Endpoint::Completions);
    p.stream = false;
    let steps = fixed(
        200,
        "application/json",
        &fixture("nonstream_completions.json"),
    );
    let fake = start_fake(steps).await;
    let t = Timeouts::default();
    let client = build_client(&t, 1).unwrap();
    let r = execute(&client, &fake, None, &p, &t, Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_tokens, Some(8));
    assert_eq!(r.ttft, None);
    assert_eq!(r.finish_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn connection_refused() {
    let url = prober_support::dead_url().await;
    let t = short_timeouts();
    let client = build_client(&t, 1).unwrap();
    let r = execute(
        &client,
        &url,
        None,
        &probe(Endpoint::Completions),
        &t,
        Instant::now(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Connect, "{r:?}");
    assert_eq!(r.http_status, None);
    assert!(r.error.is_some());
}

#[tokio::test]
async fn slow_headers_time_out_as_first_token() {
    let r = run_script(vec![Step::Stall], Endpoint::Completions, short_timeouts()).await;
    assert_eq!(r.outcome, Outcome::TimeoutFirstToken, "{r:?}");
    assert!(r.e2e >= Duration::from_millis(300));
}

#[tokio::test]
async fn stalled_stream_before_and_after_first_token() {
    let r = run_script(
        vec![sse_head(), Step::Stall],
        Endpoint::Completions,
        short_timeouts(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::TimeoutFirstToken, "{r:?}");
    assert_eq!(r.http_status, Some(200));
    let events = prober_support::split_events(&fixture("sse_completions.raw"));
    let r = run_script(
        vec![sse_head(), Step::Chunk(events[0].clone()), Step::Stall],
        Endpoint::Completions,
        short_timeouts(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::TimeoutRequest, "{r:?}");
    assert!(r.ttft.is_some());
    assert!(r.e2e >= Duration::from_millis(600));
}

#[tokio::test]
async fn reset_mid_stream_is_truncated() {
    let events = prober_support::split_events(&fixture("sse_completions.raw"));
    let r = run_script(
        vec![
            sse_head(),
            Step::Chunk(events[0].clone()),
            Step::Chunk(events[1].clone()),
            Step::Close,
        ],
        Endpoint::Completions,
        short_timeouts(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Truncated, "{r:?}");
    assert_eq!(r.output_events, 2);
}

#[tokio::test]
async fn clean_end_without_done_or_finish_is_truncated() {
    let events = prober_support::split_events(&fixture("sse_completions.raw"));
    let r = run_script(
        vec![sse_head(), Step::Chunk(events[0].clone()), Step::EndChunks],
        Endpoint::Completions,
        short_timeouts(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Truncated, "{r:?}");
}

#[tokio::test]
async fn malformed_event_and_error_event() {
    let r = run_script(
        vec![
            sse_head(),
            Step::Chunk(b"data: {\"choices\": [oops\n\n".to_vec()),
            Step::EndChunks,
        ],
        Endpoint::Completions,
        short_timeouts(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Malformed, "{r:?}");
    let r = run_script(
        vec![
            sse_head(),
            Step::Chunk(b"data: {\"error\":{\"message\":\"engine dead\",\"type\":\"InternalServerError\",\"code\":500}}\n\ndata: [DONE]\n\n".to_vec()),
            Step::EndChunks,
        ],
        Endpoint::Completions,
        short_timeouts(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::StreamError, "{r:?}");
    assert!(r.error.unwrap().contains("engine dead"));
}

#[tokio::test]
async fn huge_response_is_capped() {
    let event = b"data: {\"choices\":[{\"text\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}]}\n\n".repeat(1000);
    let mut steps = vec![sse_head()];
    for _ in 0..100 {
        steps.push(Step::Chunk(event.clone())); // ~7.5 MB in all
    }
    steps.push(Step::EndChunks);
    let fake = start_fake(steps).await;
    let t = Timeouts::default();
    let client = build_client(&t, 1).unwrap();
    let conn = Conn {
        client: &client,
        base_url: &fake,
        authorization: None,
        timeouts: &t,
        cancel: None,
        max_response_bytes: 1 << 20,
    };
    let r = execute_with(
        &conn,
        &probe(Endpoint::Completions),
        Instant::now(),
        &mut (),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Malformed, "{r:?}");
    assert!(r.response_bytes <= (1 << 20) + event.len() as u64);
    // One endless line is capped too.
    let steps = vec![sse_head(), Step::Chunk(vec![b'a'; 2 << 20]), Step::Stall];
    let fake = start_fake(steps).await;
    let conn = Conn {
        base_url: &fake,
        max_response_bytes: 64 << 20,
        ..conn
    };
    let r = execute_with(
        &conn,
        &probe(Endpoint::Completions),
        Instant::now(),
        &mut (),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Malformed, "{r:?}");
}

#[tokio::test]
async fn cancellation_mid_stream() {
    let events = prober_support::split_events(&fixture("sse_completions.raw"));
    let fake = start_fake(vec![
        sse_head(),
        Step::Chunk(events[0].clone()),
        Step::Stall,
    ])
    .await;
    let t = Timeouts::default();
    let client = build_client(&t, 1).unwrap();
    let token = CancellationToken::new();
    let conn = Conn {
        client: &client,
        base_url: &fake,
        authorization: None,
        timeouts: &t,
        cancel: Some(&token),
        max_response_bytes: 1 << 20,
    };
    struct CancelOnFirst(CancellationToken);
    impl vllm_sentinel::prober::request::ChunkObserver for CancelOnFirst {
        fn on_event(&mut self, _: u64, _: &[u8]) {
            self.0.cancel();
        }
    }
    let mut obs = CancelOnFirst(token.clone());
    let r = execute_with(
        &conn,
        &probe(Endpoint::Completions),
        Instant::now(),
        &mut obs,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Cancelled, "{r:?}");
}

#[tokio::test]
async fn open_loop_latency_counts_from_the_intended_start() {
    let intended = Instant::now();
    // Pretend the scheduler sent this request 200 ms late.
    let fake = start_fake(sse_script(&fixture("sse_completions.raw"))).await;
    let t = Timeouts::default();
    let client = build_client(&t, 1).unwrap();
    let late = intended.checked_sub(Duration::from_millis(200)).unwrap();
    let r = execute(
        &client,
        &fake,
        None,
        &probe(Endpoint::Completions),
        &t,
        late,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(r.schedule_lag >= Duration::from_millis(200));
    assert!(r.ttft.unwrap() >= Duration::from_millis(200));
    assert!(r.e2e >= Duration::from_millis(200));
}

#[tokio::test]
async fn keep_alive_connection_is_reused() {
    let fake = start(|_, _, _| sse_script(&fixture("sse_completions.raw"))).await;
    let t = Timeouts::default();
    let client = build_client(&t, 1).unwrap();
    for _ in 0..3 {
        let r = execute(
            &client,
            &fake.url,
            None,
            &probe(Endpoint::Completions),
            &t,
            Instant::now(),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Ok);
    }
    assert_eq!(fake.served.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(fake.conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn itl_samples_are_capped_but_events_counted() {
    use vllm_sentinel::prober::request::MAX_ITL_SAMPLES;
    let n = MAX_ITL_SAMPLES + 100;
    let ev = b"data: {\"choices\":[{\"text\":\"x\"}]}\n\n";
    let mut body = ev.repeat(n);
    body.extend_from_slice(
        b"data: {\"choices\":[{\"text\":\"y\",\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
    );
    let steps = vec![sse_head(), Step::Chunk(body), Step::EndChunks];
    let r = run_script(steps, Endpoint::Completions, Timeouts::default()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_events as usize, n + 1);
    assert_eq!(r.itl.len(), MAX_ITL_SAMPLES);
}

/// A 200 answer that carries no generated output is `empty`, not `ok`.
#[tokio::test]
async fn a_200_without_generated_output_is_empty() {
    let done_only = vec![
        sse_head(),
        Step::Chunk(b"data: [DONE]\n\n".to_vec()),
        Step::EndChunks,
    ];
    let comments_then_done = vec![
        sse_head(),
        Step::Chunk(b": keep-alive\n\nevent: ping\n\n".to_vec()),
        Step::Chunk(b"data: [DONE]\n\n".to_vec()),
        Step::EndChunks,
    ];
    let finish_without_text = vec![
        sse_head(),
        Step::Chunk(
            br#"data: {"id":"x","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"length"}]}

"#
            .to_vec(),
        ),
        Step::Chunk(b"data: [DONE]\n\n".to_vec()),
        Step::EndChunks,
    ];
    let json_without_choices = fixed(200, "application/json", br#"{"id":"x","choices":[]}"#);
    for (name, steps) in [
        ("done only", done_only),
        ("comments then done", comments_then_done),
        ("finish without text", finish_without_text),
        ("json without choices", json_without_choices),
    ] {
        let r = run_script(steps, Endpoint::Completions, Timeouts::default()).await;
        assert_eq!(r.outcome, Outcome::Empty, "{name}: {r:?}");
        assert_eq!(r.outcome.as_str(), "empty");
        assert_eq!(r.http_status, Some(200));
        assert!(r.error.is_some(), "{name}");
    }
    // A model whose first token is end-of-sequence: no text, but the server counts a token.
    let eos_first = vec![
        sse_head(),
        Step::Chunk(
            br#"data: {"id":"x","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"stop"}],"usage":{"prompt_tokens":6,"completion_tokens":1,"total_tokens":7}}

"#
            .to_vec(),
        ),
        Step::Chunk(b"data: [DONE]\n\n".to_vec()),
        Step::EndChunks,
    ];
    let r = run_script(eos_first, Endpoint::Completions, Timeouts::default()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
}

/// `/v1/models` and `/tokenize` answers are read with a cap (`httpcap::MAX_JSON_BODY_BYTES`):
/// a huge body is a classified failure, not an unbounded allocation.
#[tokio::test]
async fn discovery_reads_are_capped() {
    let big = vec![b' '; 5 * 1024 * 1024];
    let chunked = {
        let b = big.clone();
        move || {
            vec![
                Step::Raw(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                        .to_vec(),
                ),
                Step::Chunk(b.clone()),
                Step::EndChunks,
            ]
        }
    };
    let fake = start(move |_, path, _| match path {
        "/v1/models" => chunked(),
        _ => fixed(200, "application/json", &big),
    })
    .await;
    let client = reqwest::Client::new();
    let t = Duration::from_secs(10);
    let err = vllm_sentinel::prober::discovery::list_models(&client, &fake.url, None, t)
        .await
        .expect_err("a 5 MiB body must be refused");
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = vllm_sentinel::prober::discovery::tokenize(
        &client,
        &fake.url,
        None,
        "m",
        vllm_sentinel::prober::discovery::TokenizeInput::Prompt("x"),
        t,
    )
    .await
    .expect_err("a 5 MiB body must be refused");
    assert!(err.to_string().contains("larger than"), "{err}");
}
