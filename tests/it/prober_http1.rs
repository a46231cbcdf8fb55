//! The prober's own HTTP/1.1 client: every framing a server may use, every way it can break
//! HTTP/1.1, keep-alive reuse and stale connections, and parity with reqwest on the same bytes.

use crate::prober_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prober_support::{Step, fixture, split_events, sse_head, sse_script, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vllm_sentinel::prober::request::{
    Endpoint, Outcome, ProbeRequest, Prompt, RequestRecord, Timeouts, build_client, execute,
};

fn probe() -> ProbeRequest {
    ProbeRequest {
        endpoint: Endpoint::Completions,
        model: "tiny".into(),
        prompt: Prompt::TokenIds(vec![1574, 8147, 2713, 2224, 275, 7949]),
        max_tokens: 8,
        ignore_eos: true,
        temperature: None,
        stream: true,
        extra: Default::default(),
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_token: Duration::from_secs(5),
        request: Duration::from_secs(10),
    }
}

async fn once(steps: Vec<Step>) -> RequestRecord {
    let fake = start(move |_, _, _| steps.clone()).await;
    let t = timeouts();
    let client = build_client(&t, 2).unwrap();
    assert!(client.own_http1());
    execute(&client, &fake.url, None, &probe(), &t, Instant::now()).await
}

/// The SSE body of the real completions capture, as one byte string.
fn sse_body() -> Vec<u8> {
    fixture("sse_completions.raw")
}

/// Only what a transport cannot change: outcome, status, tokens, events, finish reason.
fn essentials(r: &RequestRecord) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        r.outcome,
        r.http_status,
        r.prompt_tokens,
        r.output_tokens,
        r.output_events,
        r.itl.len(),
        r.finish_reason.clone(),
        r.response_bytes,
        r.tpot.is_some(),
    )
}

#[tokio::test]
async fn same_record_as_reqwest_on_the_same_bytes() {
    let fake = start(|_, _, _| sse_script(&sse_body())).await;
    let t = timeouts();
    let own = build_client(&t, 2).unwrap();
    let hyper = build_client(&t, 2).unwrap().with_reqwest_probes();
    assert!(!hyper.own_http1());
    let a = execute(&own, &fake.url, None, &probe(), &t, Instant::now()).await;
    let b = execute(&hyper, &fake.url, None, &probe(), &t, Instant::now()).await;
    assert_eq!(a.outcome, Outcome::Ok, "{a:?}");
    assert_eq!(essentials(&a), essentials(&b));
}

#[tokio::test]
async fn chunked_framing_split_at_every_boundary() {
    // The whole chunked response written a few bytes at a time: size lines, data and CRLFs
    // split across reads in every way.
    let mut wire = Vec::new();
    for ev in split_events(&sse_body()) {
        wire.extend_from_slice(format!("{:x};ext=1\r\n", ev.len()).as_bytes());
        wire.extend_from_slice(&ev);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\ntrailer: x\r\n\r\n");
    for piece in [1usize, 2, 3, 7, 64] {
        let mut steps = vec![sse_head()];
        for p in wire.chunks(piece) {
            steps.push(Step::Raw(p.to_vec()));
        }
        let r = once(steps).await;
        assert_eq!(r.outcome, Outcome::Ok, "pieces of {piece}: {r:?}");
        assert_eq!(r.output_events, 7, "pieces of {piece}");
        assert_eq!(r.output_tokens, Some(8));
    }
}

#[tokio::test]
async fn content_length_and_close_delimited_bodies() {
    let body = sse_body();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&body);
    let r = once(vec![Step::Raw(raw)]).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_events, 7);

    // No length, no chunking: the body ends when the server closes.
    let mut raw =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_vec();
    raw.extend_from_slice(&body);
    let r = once(vec![Step::Raw(raw), Step::Close]).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.output_events, 7);
}

#[tokio::test]
async fn interim_100_continue_is_skipped() {
    let mut steps = vec![Step::Raw(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())];
    steps.extend(sse_script(&sse_body()));
    let r = once(steps).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.http_status, Some(200));
}

#[tokio::test]
async fn broken_http_is_malformed_and_named() {
    let cases: Vec<(&str, Vec<Step>, Outcome)> = vec![
        (
            "not HTTP at all",
            vec![Step::Raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()), Step::Close],
            Outcome::Malformed,
        ),
        (
            "bad content-length",
            vec![Step::Raw(
                b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n".to_vec(),
            )],
            Outcome::Malformed,
        ),
        (
            "conflicting content-lengths",
            vec![Step::Raw(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
            )],
            Outcome::Malformed,
        ),
        (
            "head over 64 KiB",
            vec![Step::Raw(
                format!("HTTP/1.1 200 OK\r\nx-pad: {}\r\n", "a".repeat(70_000)).into_bytes(),
            )],
            Outcome::Malformed,
        ),
        (
            "bad chunk size",
            vec![sse_head(), Step::Raw(b"zz\r\ndata: x\r\n".to_vec())],
            Outcome::Malformed,
        ),
        (
            "no CRLF after a chunk",
            vec![sse_head(), Step::Raw(b"3\r\nabcXY".to_vec())],
            Outcome::Malformed,
        ),
        (
            "endless chunk-size line",
            vec![sse_head(), Step::Raw(vec![b'1'; 10_000])],
            Outcome::Malformed,
        ),
        (
            "closed mid-head",
            vec![Step::Raw(b"HTTP/1.1 200 OK\r\ncontent-ty".to_vec()), Step::Close],
            Outcome::Malformed,
        ),
        (
            "closed mid-chunk",
            vec![sse_head(), Step::Raw(b"40\r\ndata: {".to_vec()), Step::Close],
            Outcome::Truncated,
        ),
        (
            "closed short of content-length",
            vec![
                Step::Raw(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 100\r\n\r\ndata: "
                        .to_vec(),
                ),
                Step::Close,
            ],
            Outcome::Truncated,
        ),
        (
            "closed before any response",
            vec![Step::Close],
            Outcome::Connect,
        ),
    ];
    for (what, steps, want) in cases {
        let r = once(steps).await;
        assert_eq!(r.outcome, want, "{what}: {r:?}");
        assert!(r.error.as_deref().is_some_and(|e| !e.is_empty()), "{what}");
    }
}

#[tokio::test]
async fn keep_alive_unless_the_server_says_close() {
    let fake = start(|_, _, _| sse_script(&sse_body())).await;
    let t = timeouts();
    let client = build_client(&t, 4).unwrap();
    for _ in 0..5 {
        let r = execute(&client, &fake.url, None, &probe(), &t, Instant::now()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    }
    assert_eq!(fake.conns.load(Ordering::SeqCst), 1);

    let body = sse_body();
    let fake = start(move |_, _, _| {
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        vec![Step::Raw(raw), Step::Close]
    })
    .await;
    for _ in 0..3 {
        let r = execute(&client, &fake.url, None, &probe(), &t, Instant::now()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    }
    assert_eq!(fake.conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_not_a_failure() {
    // A server that closes each connection after its response without saying so (as a
    // keep-alive timeout does): the next request must find out before sending, not fail.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let body = sse_body();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            // Read the head and the (small) body.
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let mut raw = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            raw.extend_from_slice(&body);
            let _ = sock.write_all(&raw).await;
            drop(sock);
            let _ = closed_tx.send(());
        }
    });
    let t = timeouts();
    let client = build_client(&t, 4).unwrap();
    for i in 0..3 {
        let r = execute(&client, &url, None, &probe(), &t, Instant::now()).await;
        assert_eq!(r.outcome, Outcome::Ok, "request {i}: {r:?}");
        // The server has closed this connection; the pool holds it as idle.
        closed_rx.recv().await.unwrap();
    }
}

#[tokio::test]
async fn path_prefix_and_authorization_on_the_wire() {
    let mut fake = start(|_, _, _| sse_script(&sse_body())).await;
    let t = timeouts();
    let client = build_client(&t, 1).unwrap();
    let base = format!("{}/gateway/", fake.url);
    let r = execute(
        &client,
        base.trim_end_matches('/'),
        Some("sekret"),
        &probe(),
        &t,
        Instant::now(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let (head, body) = fake.requests.recv().await.unwrap();
    assert!(head.starts_with("/gateway/v1/completions\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("authorization: bearer sekret"), "{head}");
    assert!(lower.contains("content-type: application/json"), "{head}");
    assert!(
        lower.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let host = fake.url.trim_start_matches("http://");
    assert!(lower.contains(&format!("host: {host}")), "{head}");
}

#[tokio::test]
async fn a_key_that_is_not_a_header_value_is_refused_before_sending() {
    let mut fake = start(|_, _, _| sse_script(&sse_body())).await;
    let t = timeouts();
    let client = build_client(&t, 1).unwrap();
    let r = execute(
        &client,
        &fake.url,
        Some("abc\r\nx-injected: 1"),
        &probe(),
        &t,
        Instant::now(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::ClientError, "{r:?}");
    assert!(!r.error.unwrap().contains("abc"));
    assert!(fake.requests.try_recv().is_err(), "nothing was sent");
}
