//! The tap (`serve --tap-listen`): forwarding fidelity, streaming without buffering, keep-alive,
//! upgrades, upstream failures, client disconnects, framing attacks, and the measurement of
//! users' requests against the simulator and against real vLLM 0.32 bytes.
//!
//! Loopback only. Ordering is established with the sockets themselves (a test writes the next
//! upstream chunk only after the client has read the previous one), never with sleeps; every
//! blocking wait has a generous deadline that only turns a hang into a failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use vllm_sentinel::config::prober::Buckets;
use vllm_sentinel::tap::models::ModelInfo;
use vllm_sentinel::tap::{ModelSet, Settings, TrafficMetrics};

const DEADLINE: Duration = Duration::from_secs(10);
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vllm-0.32.0-cpu");

struct Tap {
    addr: SocketAddr,
    registry: Arc<Registry>,
    _token: tokio_util::sync::DropGuard,
}

impl Tap {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }

    /// Polls the registry until `pred` holds (records land when the server side finishes).
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let t = self.text();
            if pred(&t) {
                return t;
            }
            if tokio::time::Instant::now() > end {
                panic!("timed out waiting for {what}; registry:\n{t}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Starts a tap in front of `upstream`. `models`: a fixed model list (no `/v1/models` reads),
/// or `None` to let the tap read the upstream's list.
async fn start_tap(
    upstream: &str,
    models: Option<Vec<&str>>,
    tweak: impl FnOnce(&mut Settings),
) -> Tap {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut registry = Registry::default();
    let metrics = TrafficMetrics::register(&mut registry, &Buckets::default());
    let mut settings = Settings::for_upstream(upstream);
    settings.models_refresh = Some(Duration::from_millis(200));
    let set = match models {
        Some(list) => {
            settings.models_refresh = None;
            ModelSet::with(
                list.into_iter()
                    .map(|m| ModelInfo {
                        id: m.to_string(),
                        max_model_len: Some(2048),
                    })
                    .collect(),
            )
        }
        None => ModelSet::default(),
    };
    tweak(&mut settings);
    let token = CancellationToken::new();
    tokio::spawn(vllm_sentinel::tap::serve(
        listener,
        settings,
        metrics,
        set,
        token.clone(),
    ));
    Tap {
        addr,
        registry: Arc::new(registry),
        _token: token.drop_guard(),
    }
}

/// A tap in front of a listener the test answers on by hand, with a fixed model list.
async fn tap_before_listener(
    models: &[&str],
    tweak: impl FnOnce(&mut Settings),
) -> (TcpListener, Tap) {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tap = start_tap(
        &format!("http://{}", up.local_addr().unwrap()),
        Some(models.to_vec()),
        tweak,
    )
    .await;
    (up, tap)
}

async fn start_sim() -> (String, tokio_util::sync::DropGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = vllm_sentinel::sim::SimConfig {
        model: "tiny".into(),
        fixed_timing: Some(vllm_sentinel::sim::parse_fixed_timing("5ms,1ms").unwrap()),
        ..Default::default()
    };
    let token = CancellationToken::new();
    tokio::spawn(vllm_sentinel::sim::serve(listener, cfg, token.clone()));
    (url, token.drop_guard())
}

/// Sum of the samples of `name` whose line contains every label fragment.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Reads from `s` into `buf` until `buf` contains `needle`; returns the index after it.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> usize {
    guard(
        &format!("reading until {:?}", String::from_utf8_lossy(needle)),
        async {
            loop {
                if let Some(p) = buf.windows(needle.len()).position(|w| w == needle) {
                    return p + needle.len();
                }
                let mut chunk = vec![0u8; 8192];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "EOF before {:?}; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        },
    )
    .await
}

/// [`read_until`] on the read half of a split stream.
async fn read_until_half(s: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>, needle: &[u8]) {
    guard("reading until a needle", async {
        loop {
            if buf.windows(needle.len()).any(|w| w == needle) {
                return;
            }
            let mut chunk = vec![0u8; 8192];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF; got {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Reads until the peer closes (or resets) the connection.
async fn read_to_close(s: &mut TcpStream, buf: &mut Vec<u8>) {
    guard("reading until the connection closes", async {
        let mut chunk = vec![0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// A request as the upstream received it: the head (lower-cased header lines kept as sent)
/// and the body (Content-Length or chunked, decoded).
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Received {
    let end = read_until(s, buf, b"\r\n\r\n").await;
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    buf.drain(..end);
    let mut r = Received {
        head,
        body: Vec::new(),
    };
    if let Some(cl) = r.header("content-length") {
        let n: usize = cl.parse().unwrap();
        guard("request body", async {
            while buf.len() < n {
                let mut chunk = vec![0u8; 65536];
                let k = s.read(&mut chunk).await.unwrap();
                assert!(k > 0, "EOF in the request body");
                buf.extend_from_slice(&chunk[..k]);
            }
        })
        .await;
        r.body = buf.drain(..n).collect();
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let e = read_until(s, buf, b"\r\n").await;
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..e - 2])
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            buf.drain(..e);
            if size == 0 {
                read_until(s, buf, b"\r\n").await;
                let e = buf.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
                buf.drain(..e);
                break;
            }
            guard("chunk", async {
                while buf.len() < size + 2 {
                    let mut chunk = vec![0u8; 65536];
                    let k = s.read(&mut chunk).await.unwrap();
                    assert!(k > 0);
                    buf.extend_from_slice(&chunk[..k]);
                }
            })
            .await;
            r.body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    }
    r
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

// ---------------------------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forwards_everything_unchanged_and_streams_chunk_by_chunk() {
    let (up, tap) = tap_before_listener(&[], |_| {}).await;
    let mut client = TcpStream::connect(tap.addr).await.unwrap();
    client
        .write_all(
            b"PUT /some/route?x=1&y=%20z&x=2 HTTP/1.1\r\nHost: my-service:8000\r\nX-Custom: A\r\nX-Custom: B\r\n\
              Connection: keep-alive, X-Hop\r\nX-Hop: gone\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
              Authorization: Bearer sk-forwarded\r\nTE: trailers\r\nContent-Length: 11\r\n\r\nhello world",
        )
        .await
        .unwrap();
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    let req = read_request(&mut us, &mut ubuf).await;
    assert!(
        req.head
            .starts_with("PUT /some/route?x=1&y=%20z&x=2 HTTP/1.1\r\n"),
        "{}",
        req.head
    );
    assert_eq!(req.body, b"hello world");
    assert_eq!(req.header("host").as_deref(), Some("my-service:8000"));
    assert_eq!(
        req.header("authorization").as_deref(),
        Some("Bearer sk-forwarded")
    );
    assert_eq!(req.header("content-length").as_deref(), Some("11"));
    assert_eq!(req.header("te").as_deref(), Some("trailers"));
    assert_eq!(
        req.head.matches("X-Custom: ").count(),
        2,
        "repeated headers and their case are kept: {}",
        req.head
    );
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "via",
        "x-forwarded-for",
    ] {
        assert!(req.header(gone).is_none(), "{gone} forwarded: {}", req.head);
    }
    assert!(
        req.header("connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("x-hop")),
        "{}",
        req.head
    );

    us.write_all(
        b"HTTP/1.1 201 Created\r\nX-Resp: 1\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: gone\r\n\
          Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n",
    )
    .await
    .unwrap();
    us.write_all(&chunk(b"first")).await.unwrap();
    // The client gets the first chunk while the upstream has not sent the second one yet.
    let mut cbuf = Vec::new();
    let head_end = read_until(&mut client, &mut cbuf, b"first").await;
    let head = String::from_utf8_lossy(&cbuf[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-resp: 1\r\n"),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("x-resp-hop"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("\r\ndate:"),
        "no Date added: {head}"
    );
    us.write_all(&chunk(b"second")).await.unwrap();
    read_until(&mut client, &mut cbuf, b"second").await;
    us.write_all(b"0\r\nX-Checksum: abc\r\n\r\n").await.unwrap();
    let all = read_until(&mut client, &mut cbuf, b"abc\r\n\r\n").await;
    let text = String::from_utf8_lossy(&cbuf[..all]).to_ascii_lowercase();
    let body_start = text.find("\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &text[body_start..],
        "5\r\nfirst\r\n6\r\nsecond\r\n0\r\nx-checksum: abc\r\n\r\n",
        "chunks and the trailer passed through"
    );
    assert_eq!(
        metric(
            &tap.text(),
            "vllm_sentinel_traffic_passthrough_requests_total",
            &["result=\"2xx\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn keep_alive_on_both_legs() {
    let (up, tap) = tap_before_listener(&[], |_| {}).await;
    let mut client = TcpStream::connect(tap.addr).await.unwrap();
    let mut cbuf = Vec::new();
    let mut ubuf = Vec::new();
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let r = read_request(&mut us, &mut ubuf).await;
    assert!(r.head.starts_with("GET /a "));
    us.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        .await
        .unwrap();
    read_until(&mut client, &mut cbuf, b"one").await;
    // Second request on the same client connection, arriving on the same upstream connection.
    client
        .write_all(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let r = read_request(&mut us, &mut ubuf).await;
    assert!(r.head.starts_with("GET /b "), "{}", r.head);
    us.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        .await
        .unwrap();
    read_until(&mut client, &mut cbuf, b"two").await;
    assert_eq!(
        String::from_utf8_lossy(&cbuf)
            .matches("HTTP/1.1 200 OK")
            .count(),
        2
    );
}

#[tokio::test]
async fn upgrade_requests_get_a_501_json_error() {
    let (_up, tap) = tap_before_listener(&[], |_| {}).await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/realtime", tap.url()))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "NotImplementedError");
    assert_eq!(v["error"]["code"], 501);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not proxied")
    );
    assert_eq!(
        metric(
            &tap.text(),
            "vllm_sentinel_traffic_passthrough_requests_total",
            &["result=\"upgrade_refused\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_silent_upstream_is_504() {
    // Down: a port nobody listens on.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let tap = start_tap(&format!("http://{dead}"), Some(vec!["tiny"]), |_| {}).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v1/completions", tap.url()))
        .body(r#"{"model":"tiny","prompt":"x","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 502);
    assert_eq!(v["error"]["type"], "BadGateway");
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &[
                "outcome=\"upstream_unreachable\"",
                "model=\"tiny\"",
                "stream=\"true\""
            ]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_upstream_errors_total",
            &["kind=\"unreachable\""]
        ),
        1.0
    );

    // Silent: accepts, reads, never answers.
    let (up, tap) = tap_before_listener(&["tiny"], |s| {
        s.header_timeout = Duration::from_millis(200);
    })
    .await;
    let send = tokio::spawn(
        c.post(format!("{}/v1/chat/completions", tap.url()))
            .body(r#"{"model":"tiny","messages":[]}"#)
            .send(),
    );
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    read_request(&mut us, &mut ubuf).await;
    let r = guard("504", send).await.unwrap().unwrap();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 504);
    // The tap gave up on the upstream request: its connection is closed (never retried).
    let mut rest = Vec::new();
    read_to_close(&mut us, &mut rest).await;
    assert!(
        rest.is_empty(),
        "no second request: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["outcome=\"upstream_timeout\"", "endpoint=\"chat\""]
        ),
        1.0,
        "{t}"
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_closes_the_upstream_connection() {
    let (up, tap) = tap_before_listener(&["tiny"], |_| {}).await;
    let mut client = TcpStream::connect(tap.addr).await.unwrap();
    let body = br#"{"model":"tiny","prompt":"hi","stream":true}"#;
    client
        .write_all(
            format!(
                "POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    client.write_all(body).await.unwrap();
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    read_request(&mut us, &mut ubuf).await;
    us.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    us.write_all(&chunk(
        br#"data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}

"#,
    ))
    .await
    .unwrap();
    let mut cbuf = Vec::new();
    read_until(&mut client, &mut cbuf, b"\"text\":\"a\"").await;
    drop(client);
    // The upstream sees its connection closed (EOF or reset), without writing anything more.
    let mut rest = Vec::new();
    read_to_close(&mut us, &mut rest).await;
    assert!(rest.is_empty());
    let t = tap
        .wait_for("client_disconnected", |t| {
            metric(
                t,
                "vllm_sentinel_traffic_requests_total",
                &["outcome=\"client_disconnected\""],
            ) == 1.0
        })
        .await;
    assert_eq!(metric(&t, "vllm_sentinel_traffic_in_flight", &[]), 0.0);
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["outcome=\"ok\""]
        ),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// Framing and bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn framing_attacks_are_rejected_or_neutralised() {
    let (up, tap) = tap_before_listener(&[], |_| {}).await;

    // Two different Content-Length values: 400 from the tap, nothing forwarded.
    let mut c = TcpStream::connect(tap.addr).await.unwrap();
    c.write_all(
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await
    .unwrap();
    let mut b = Vec::new();
    read_to_close(&mut c, &mut b).await;
    assert!(
        b.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&b)
    );

    // A Transfer-Encoding that does not end in chunked, with a Content-Length: 400.
    let mut c = TcpStream::connect(tap.addr).await.unwrap();
    c.write_all(
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await
    .unwrap();
    let mut b = Vec::new();
    read_to_close(&mut c, &mut b).await;
    assert!(
        b.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&b)
    );

    // CL + TE: chunked, with a request smuggled behind the chunked body. RFC 9112 §6.3: the
    // chunked framing wins and the connection is closed after the response, so the smuggled
    // request is never read as a request; upstream gets one re-framed request, no CL/TE pair.
    let mut c = TcpStream::connect(tap.addr).await.unwrap();
    c.write_all(
        b"POST /first HTTP/1.1\r\nHost: h\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    let r = read_request(&mut us, &mut ubuf).await;
    assert!(r.head.starts_with("POST /first "), "{}", r.head);
    assert_eq!(r.body, b"abc");
    assert!(
        !(r.header("content-length").is_some() && r.header("transfer-encoding").is_some()),
        "{}",
        r.head
    );
    us.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let mut b = Vec::new();
    read_to_close(&mut c, &mut b).await;
    let s = String::from_utf8_lossy(&b);
    assert_eq!(
        s.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {s}"
    );
    assert!(!s.contains("smuggled"));
    assert!(ubuf.is_empty(), "nothing more reached the upstream");
}

/// A request head up to the tap's buffer is forwarded; a larger one is answered 431, nothing
/// reaches the upstream, and the tap serves the next connection.
#[tokio::test]
async fn request_heads_over_the_limit_get_431() {
    let (up, tap) = tap_before_listener(&[], |_| {}).await;
    let limit = vllm_sentinel::tap::MAX_CLIENT_BUF;

    let big = "a".repeat(limit + 1);
    let mut c = TcpStream::connect(tap.addr).await.unwrap();
    c.write_all(format!("GET /x HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut b = Vec::new();
    read_to_close(&mut c, &mut b).await;
    assert!(
        b.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&b)
    );

    let fits = "b".repeat(limit / 2);
    let mut c = TcpStream::connect(tap.addr).await.unwrap();
    c.write_all(format!("GET /y HTTP/1.1\r\nHost: h\r\nX-Big: {fits}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    let r = read_request(&mut us, &mut ubuf).await;
    assert!(
        r.head.starts_with("GET /y "),
        "only the second request arrives: {}",
        &r.head[..40]
    );
    assert_eq!(r.header("x-big").map(|v| v.len()), Some(limit / 2));
}

#[tokio::test]
async fn slow_request_headers_close_the_connection() {
    let (_up, tap) = tap_before_listener(&[], |s| {
        s.client_header_timeout = Duration::from_millis(200);
    })
    .await;
    let mut c = TcpStream::connect(tap.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let mut b = Vec::new();
    // The tap closes the connection (hyper may answer 408 first); nothing reached the upstream.
    read_to_close(&mut c, &mut b).await;
    assert!(
        b.is_empty() || b.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&b)
    );
}

#[tokio::test]
async fn large_bodies_stream_through_with_a_bounded_hold() {
    let (up, tap) = tap_before_listener(&["tiny"], |s| {
        s.max_body_bytes = 64 * 1024;
    })
    .await;
    // 1 MiB prompt, model first: forwarded before the client has sent it all, model found.
    let prompt = "x".repeat(1024 * 1024);
    let body = format!(r#"{{"model":"tiny","stream":false,"prompt":"{prompt}"}}"#);
    let (first, second) = body.as_bytes().split_at(128 * 1024);
    let c = TcpStream::connect(tap.addr).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let (sent_first_tx, sent_first_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (head_s, first_v, second_v) = (
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
        first.to_vec(),
        second.to_vec(),
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head_s.as_bytes()).await.unwrap();
        wr.write_all(&first_v).await.unwrap();
        let _ = sent_first_tx.send(());
        // The rest only once the upstream has seen the first part.
        go_rx.await.unwrap();
        wr.write_all(&second_v).await.unwrap();
        wr
    });
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    let end = read_until(&mut us, &mut ubuf, b"\r\n\r\n").await;
    ubuf.drain(..end);
    // The upstream gets the start of the body while the client still holds the rest.
    guard("first part upstream", async {
        while ubuf.len() < first.len() {
            let mut ch = vec![0u8; 65536];
            let n = us.read(&mut ch).await.unwrap();
            assert!(n > 0);
            ubuf.extend_from_slice(&ch[..n]);
        }
    })
    .await;
    assert_eq!(
        ubuf.len(),
        first.len(),
        "nothing of the second part was sent yet"
    );
    guard("client wrote the first part", sent_first_rx)
        .await
        .unwrap();
    go_tx.send(()).unwrap();
    guard("whole body upstream", async {
        while ubuf.len() < body.len() {
            let mut ch = vec![0u8; 65536];
            let n = us.read(&mut ch).await.unwrap();
            assert!(n > 0);
            ubuf.extend_from_slice(&ch[..n]);
        }
    })
    .await;
    let mut wr = guard("writer", writer).await.unwrap();
    assert_eq!(ubuf, body.as_bytes(), "body bytes unchanged");
    let resp = br#"{"choices":[{"text":"ok","finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":1}}"#;
    us.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            resp.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    us.write_all(resp).await.unwrap();
    let mut cbuf = Vec::new();
    read_until_half(&mut rd, &mut cbuf, b"\"completion_tokens\":1}}").await;
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["model=\"tiny\"", "stream=\"false\"", "outcome=\"ok\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_prompt_tokens_total",
            &["model=\"tiny\""]
        ),
        1000.0
    );

    // Model only after the held prefix: `other`.
    let body = format!(r#"{{"prompt":"{prompt}","model":"tiny"}}"#);
    let head_s = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let body2 = body.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(head_s.as_bytes()).await.unwrap();
        wr.write_all(body2.as_bytes()).await.unwrap();
        wr
    });
    let r = read_request(&mut us, &mut Vec::new()).await;
    assert_eq!(r.body.len(), body.len());
    let _wr = guard("writer", writer).await.unwrap();
    us.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    read_until_half(&mut rd, &mut cbuf, b"\r\n\r\n{}").await;
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["model=\"other\"", "outcome=\"ok\""]
        ),
        1.0,
        "{t}"
    );
}

// ---------------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn measures_streams_from_the_simulator_and_bounds_the_model_label() {
    let (sim, _g) = start_sim().await;
    let tap = start_tap(&sim, None, |_| {}).await;
    tap.wait_for("the model list", |t| {
        metric(t, "vllm_sentinel_traffic_models_known", &[]) == 1.0
    })
    .await;
    let c = reqwest::Client::new();
    let resp = c
        .post(format!("{}/v1/completions", tap.url()))
        .header("authorization", "Bearer sk-SECRET-KEY-123")
        .json(&serde_json::json!({
            "model": "tiny", "prompt": "SECRET PROMPT TEXT", "max_tokens": 8, "ignore_eos": true,
            "stream": true, "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let mut content_events = 0;
    let mut usage = None;
    for line in text.lines() {
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            continue;
        }
        let e = vllm_sentinel::prober::event::parse(d.as_bytes()).unwrap();
        content_events += u32::from(e.content);
        if let Some(ct) = e.completion_tokens {
            usage = Some((e.prompt_tokens.unwrap(), ct));
        }
    }
    let (pt, ot) = usage.expect("usage in the stream");
    assert_eq!(ot, 8);
    let t = tap.text();
    let l = [
        "model=\"tiny\"",
        "endpoint=\"completions\"",
        "stream=\"true\"",
    ];
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &[l[0], l[1], l[2], "outcome=\"ok\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_output_tokens_total",
            &[l[0], "source=\"usage\""]
        ),
        8.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_traffic_prompt_tokens_total", &l),
        f64::from(pt)
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_traffic_ttft_seconds_count", &l),
        1.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_traffic_tpot_seconds_count", &l),
        1.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_traffic_itl_seconds_count", &l),
        f64::from(content_events - 1)
    );
    assert!(
        metric(&t, "vllm_sentinel_traffic_ttft_seconds_sum", &l) >= 0.005,
        "fixed 5 ms first token"
    );

    // Non-streamed chat; an unknown model (404 from the server) and an unlisted one: `other`.
    let r = c
        .post(format!("{}/v1/chat/completions", tap.url()))
        .json(&serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    for i in 0..5 {
        let r = c
            .post(format!("{}/v1/completions", tap.url()))
            .json(&serde_json::json!({"model": format!("secret-model-name-{i}"), "prompt": "x", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        r.bytes().await.unwrap();
    }
    // Bad input: malformed JSON (400), and a body without a model (served with the default
    // model, labelled `other`).
    for body in [
        "{\"model\": \"tiny\", \"prompt\": ",
        r#"{"prompt":"x","max_tokens":2}"#,
    ] {
        let r = c
            .post(format!("{}/v1/completions", tap.url()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 400 || r.status() == 200,
            "{body}: {}",
            r.status()
        );
        r.bytes().await.unwrap();
    }
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &[
                "endpoint=\"chat\"",
                "stream=\"false\"",
                "model=\"tiny\"",
                "outcome=\"ok\""
            ]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["model=\"other\"", "outcome=\"client_error\""]
        ),
        5.0,
        "{t}"
    );
    // The malformed body still names its model before the point where it breaks.
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["model=\"tiny\"", "outcome=\"client_error\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["model=\"other\"", "outcome=\"ok\""]
        ),
        1.0,
        "{t}"
    );
    for secret in ["SECRET", "sk-", "secret-model-name", "Bearer"] {
        assert!(!t.contains(secret), "{secret} in the registry output");
    }
    let models: std::collections::HashSet<&str> = t
        .lines()
        .filter(|l| l.starts_with("vllm_sentinel_traffic_"))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        models,
        ["tiny", "other"].into_iter().collect(),
        "bounded model label"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (sim, _g) = start_sim().await;
    let tap = start_tap(&sim, Some(vec!["tiny"]), |_| {}).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/v1/completions", tap.url()))
        .json(&serde_json::json!({"model": "tiny", "prompt": "x", "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let t = tap
        .wait_for("the h2 request", |t| {
            metric(
                t,
                "vllm_sentinel_traffic_requests_total",
                &["outcome=\"ok\""],
            ) == 1.0
        })
        .await;
    // No stream_options in the request: counted by events, flagged.
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_output_tokens_total",
            &["source=\"events\""]
        ),
        3.0,
        "{t}"
    );
}

/// Serves one raw response (head + body) from the capture files on the next connection,
/// body split at event boundaries into separate writes; returns the bytes it sent.
async fn replay(up: &TcpListener, head: &str, body: &[u8]) {
    let (mut us, _) = guard("upstream accept", up.accept()).await.unwrap();
    let mut ubuf = Vec::new();
    read_request(&mut us, &mut ubuf).await;
    us.write_all(head.as_bytes()).await.unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if chunked {
        for ev in body.split_inclusive(|b| *b == b'\n') {
            us.write_all(&chunk(ev)).await.unwrap();
        }
        us.write_all(b"0\r\n\r\n").await.unwrap();
    } else {
        us.write_all(body).await.unwrap();
    }
    us.flush().await.unwrap();
}

fn capture_head(name: &str) -> String {
    let h = std::fs::read_to_string(format!("{DATA}/{name}.headers")).unwrap();
    let h = h.replace("\r\n", "\n");
    let mut out = String::new();
    for line in h.lines().filter(|l| !l.is_empty()) {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

async fn through_tap(tap: &Tap, path: &str, req: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", tap.url()))
        .header("content-type", "application/json")
        .body(req.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn measures_real_vllm_bytes_byte_for_byte() {
    let (up, tap) = tap_before_listener(&["tiny"], |_| {}).await;
    let stream_req = r#"{"model":"tiny","prompt":"p","max_tokens":8,"stream":true}"#;

    // Completions with usage.
    let raw = std::fs::read(format!("{DATA}/sse_completions.raw")).unwrap();
    let head = capture_head("sse_completions");
    let ((), (status, got)) = tokio::join!(
        replay(&up, &head, &raw),
        through_tap(&tap, "/v1/completions", stream_req)
    );
    assert_eq!(status, 200);
    assert_eq!(got, raw, "SSE bytes unchanged");
    let content: u32 = raw
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"data: "))
        .filter(|d| *d != b"[DONE]")
        .map(|d| u32::from(vllm_sentinel::prober::event::parse(d).unwrap().content))
        .sum();
    let t = tap.text();
    let l = ["endpoint=\"completions\"", "model=\"tiny\""];
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &[l[0], "outcome=\"ok\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_output_tokens_total",
            &[l[0], "source=\"usage\""]
        ),
        8.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_traffic_prompt_tokens_total", &l),
        6.0
    );
    assert_eq!(
        metric(&t, "vllm_sentinel_traffic_itl_seconds_count", &l),
        f64::from(content - 1)
    );

    // Chat with usage (the role-only first event is not a token).
    let raw = std::fs::read(format!("{DATA}/sse_chat.raw")).unwrap();
    let head = capture_head("sse_chat");
    let chat_req = r#"{"model":"tiny","messages":[{"role":"user","content":"p"}],"stream":true}"#;
    let (_, (status, got)) = tokio::join!(
        replay(&up, &head, &raw),
        through_tap(&tap, "/v1/chat/completions", chat_req)
    );
    assert_eq!((status, got == raw), (200, true));
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_output_tokens_total",
            &["endpoint=\"chat\"", "source=\"usage\""]
        ),
        8.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_ttft_seconds_count",
            &["endpoint=\"chat\""]
        ),
        1.0
    );

    // No stream_options: no usage, tokens estimated from content-bearing events.
    let raw = std::fs::read(format!("{DATA}/sse_completions_no_stream_options.raw")).unwrap();
    let (_, (status, got)) = tokio::join!(
        replay(&up, &head, &raw),
        through_tap(&tap, "/v1/completions", stream_req)
    );
    assert_eq!((status, got == raw), (200, true));
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_output_tokens_total",
            &[l[0], "source=\"events\""]
        ),
        3.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &[l[0], "outcome=\"ok\""]
        ),
        2.0
    );

    // Context-length rejection (a 400 to a streamed request): counted with its ratio.
    let body = std::fs::read(format!("{DATA}/ctx_stream_prompt_too_long.body")).unwrap();
    let head = capture_head("ctx_stream_prompt_too_long");
    let (_, (status, got)) = tokio::join!(
        replay(&up, &head, &body),
        through_tap(&tap, "/v1/completions", stream_req)
    );
    assert_eq!((status, got == body), (400, true));
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &[l[0], "outcome=\"context_length\""]
        ),
        1.0,
        "{t}"
    );
    let h = "vllm_sentinel_traffic_context_length_ratio_bucket";
    assert_eq!(metric(&t, h, &["le=\"1.0\""]), 0.0);
    assert_eq!(
        metric(&t, h, &["le=\"1.05\""]),
        1.0,
        "2049/2048 in (1, 1.05]: {t}"
    );
    let sum = metric(&t, "vllm_sentinel_traffic_context_length_ratio_sum", &[]);
    assert!((sum - 2049.0 / 2048.0).abs() < 1e-9, "{sum}");

    // A truncated stream (no [DONE], no finish reason) and an error event.
    let sse_head = capture_head("sse_completions");
    let cut = &raw[..raw.len() / 2];
    let cut = &cut[..cut.iter().rposition(|b| *b == b'\n').unwrap() + 1];
    let (_, (status, got)) = tokio::join!(
        replay(&up, &sse_head, cut),
        through_tap(&tap, "/v1/completions", stream_req)
    );
    assert_eq!((status, got.as_slice() == cut), (200, true));
    let err = b"data: {\"error\":{\"message\":\"boom\",\"type\":\"InternalServerError\",\"code\":500}}\n\ndata: [DONE]\n\n";
    let (_, (status, _)) = tokio::join!(
        replay(&up, &sse_head, err),
        through_tap(&tap, "/v1/completions", stream_req)
    );
    assert_eq!(status, 200);
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["outcome=\"truncated\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["outcome=\"stream_error\""]
        ),
        1.0,
        "{t}"
    );
    assert_eq!(metric(&t, "vllm_sentinel_traffic_in_flight", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------------------------

/// Decodes a chunked body from `raw` (after the response head); `None` until it is complete.
fn dechunk(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let line_end = i + raw.get(i..)?.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[i..line_end]).ok()?.trim(), 16).ok()?;
        i = line_end + 2;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(i..i + size)?);
        i += size + 2;
    }
}

/// A client that stops reading: the tap stops reading the upstream (nothing is queued in the
/// tap), so the bytes the upstream managed to write never run ahead of what the client read by
/// more than the sockets' kernel buffers; then, read to the end, the stream is intact.
#[tokio::test]
async fn a_slow_reader_backpressures_the_upstream_and_gets_every_byte() {
    // Event i is `data: {"choices":[{"text":"<i, 8 digits><pad>"}]}\n\n`, 64 KiB each.
    const EVENT: usize = 64 * 1024;
    const EVENTS: usize = 1024; // 64 MiB in all
    // Kernel buffers between the upstream's writes and the client's reads: the upstream's send
    // buffer (tcp_wmem max 4 MiB), the tap's receive buffer from it (tcp_rmem max 32 MiB here),
    // the tap's send buffer (4 MiB), the client's receive buffer (set to 16 KiB), plus hyper's
    // read buffer and one frame in flight. An unbounded queue in the tap lets the upstream
    // write all 64 MiB while the client reads nothing.
    const BOUND: u64 = 44 * 1024 * 1024;
    let event = |i: usize| {
        let head = format!(r#"data: {{"choices":[{{"index":0,"text":"{i:08}"#);
        let tail = "\"}]}\n\n";
        let pad = "x".repeat(EVENT - head.len() - tail.len());
        format!("{head}{pad}{tail}").into_bytes()
    };

    let (up, tap) = tap_before_listener(&["tiny"], |_| {}).await;
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Set when a write of the upstream could not complete at once: its buffers are full.
    let blocked = Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let (written, blocked) = (written.clone(), blocked.clone());
        tokio::spawn(async move {
            let (mut us, _) = up.accept().await.unwrap();
            let mut buf = Vec::new();
            let _req = read_request(&mut us, &mut buf).await;
            us.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            for i in 0..EVENTS {
                let c = chunk(&event(i));
                let mut off = 0;
                while off < c.len() {
                    match us.try_write(&c[off..]) {
                        Ok(n) => {
                            off += n;
                            written.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            blocked.notify_one();
                            us.writable().await.unwrap();
                        }
                        Err(e) => panic!("upstream write: {e}"),
                    }
                }
            }
            us.write_all(b"0\r\n\r\n").await.unwrap();
        })
    };

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut c = sock.connect(tap.addr).await.unwrap();
    let body = r#"{"model":"tiny","stream":true,"prompt":"p"}"#;
    c.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let head_end = read_until(&mut c, &mut got, b"\r\n\r\n").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got[..head_end])
    );

    // The client reads nothing more until the upstream's writes block.
    guard(
        "the upstream blocking on a client that does not read",
        blocked.notified(),
    )
    .await;
    let w = written.load(std::sync::atomic::Ordering::SeqCst);
    let r = got.len() as u64;
    assert!(
        w < r + BOUND,
        "the upstream wrote {w} bytes while the client had read {r}: the tap queued {} bytes",
        w - r
    );

    // Read to the end, checking the bound all along.
    let total = (EVENTS * (EVENT + format!("{EVENT:x}").len() + 4)) as u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut worst = 0u64;
    tokio::time::timeout(Duration::from_secs(120), async {
        // The stream ends with the last chunk, `0\r\n\r\n` (no event ends in "0\r\n").
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF before the end of the stream");
            got.extend_from_slice(&buf[..n]);
            let w = written.load(std::sync::atomic::Ordering::SeqCst);
            worst = worst.max(w.saturating_sub(got.len() as u64));
        }
    })
    .await
    .expect("reading the whole stream");
    assert!(
        worst < BOUND,
        "the upstream ran {worst} bytes ahead of the client"
    );
    guard("upstream done", upstream).await.unwrap();
    assert_eq!(written.load(std::sync::atomic::Ordering::SeqCst), total);

    // Every event, in order, intact.
    let data = dechunk(&got[head_end..]).unwrap();
    assert_eq!(data.len(), EVENTS * EVENT);
    for (i, ev) in data.chunks(EVENT).enumerate() {
        assert_eq!(ev, &event(i)[..], "event {i} differs");
    }
    // And it was measured as one streamed request with one output event per upstream event.
    let text = tap
        .wait_for("the slow stream's record", |t| {
            metric(t, "vllm_sentinel_traffic_requests_total", &[]) >= 1.0
        })
        .await;
    assert_eq!(
        metric(
            &text,
            "vllm_sentinel_traffic_requests_total",
            &["stream=\"true\""]
        ),
        1.0,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------------------------

/// Kills the child process when dropped (a failed assertion must not leave a daemon behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request on an already open connection; returns the status line's code and the body.
async fn request_on(s: &mut TcpStream, req: &str) -> (u16, String) {
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = read_until(s, &mut buf, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    guard("response body", async {
        while buf.len() < end + len {
            let mut chunk = vec![0u8; 8192];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF in the body");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    (
        code,
        String::from_utf8_lossy(&buf[end..end + len]).to_string(),
    )
}

/// 10,000 idle client connections (connected, nothing sent) do not stop the tap: a streamed
/// request on a new connection is served and measured, idle connections picked from the start,
/// middle and end are all served when they finally send a request, and `/metrics` answers.
/// The tap runs as its own process (`serve --tap-listen`): the two ends of 10,000 connections
/// would not fit in one process's descriptor limit here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_stop_the_tap() {
    const IDLE: usize = 10_000;
    let (sim, _sim) = start_sim().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-sentinel"))
        .args([
            "serve",
            "--no-gpu",
            "--target",
            &sim,
            "--listen",
            "127.0.0.1:0",
            "--tap-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _child = KillOnDrop(child);
    // The bound addresses, from the start-up log lines.
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            for (msg, key) in [("exporter listening", "addr"), ("tap listening", "listen")] {
                if f["message"] == msg {
                    let _ = tx.send((msg.to_string(), f[key].as_str().unwrap_or("").to_string()));
                }
            }
        }
    });
    let (mut exporter, mut tap) = (None, None);
    while exporter.is_none() || tap.is_none() {
        let (msg, addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon's start-up log lines");
        let addr: SocketAddr = addr.parse().unwrap();
        if msg == "exporter listening" {
            exporter = Some(addr);
        } else {
            tap = Some(addr);
        }
    }
    let (exporter, tap) = (exporter.unwrap(), tap.unwrap());

    // Open the idle connections, 200 at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..IDLE {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            (i, TcpStream::connect(tap).await.unwrap())
        });
    }
    let mut idle: Vec<Option<TcpStream>> = (0..IDLE).map(|_| None).collect();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = set.join_next().await {
            let (i, s) = r.unwrap();
            idle[i] = Some(s);
        }
    })
    .await
    .expect("opening the idle connections");

    // A streamed completion on a new connection is served, to its end.
    let body = r#"{"model":"tiny","prompt":"hello","max_tokens":8,"stream":true}"#;
    let mut c = TcpStream::connect(tap).await.unwrap();
    c.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until(&mut c, &mut got, b"data: [DONE]").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Idle connections from the start, the middle and the end are served when they speak.
    for i in [0, IDLE / 2, IDLE - 1] {
        let s = idle[i].as_mut().unwrap();
        let (code, body) = request_on(s, "GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(code, 200, "idle connection {i}: {body}");
        assert!(body.contains("\"tiny\""), "idle connection {i}: {body}");
    }

    // The exporter answers, and the tap measured the stream.
    let mut m = TcpStream::connect(exporter).await.unwrap();
    let (code, text) = request_on(&mut m, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &text,
            "vllm_sentinel_traffic_requests_total",
            &["outcome=\"ok\"", "stream=\"true\""]
        ),
        1.0,
        "{text}"
    );
    drop(idle);
}

/// The request body goes upstream as the client sends it: the upstream has its first bytes
/// while the client still holds the rest (nothing is read ahead to find `model`), and the
/// labels still come from it.
#[tokio::test]
async fn a_request_body_goes_upstream_as_it_arrives() {
    const WAIT: Duration = Duration::from_secs(20);
    let (up, tap) = tap_before_listener(&["tiny"], |_| {}).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let url = format!("{}/v1/completions", tap.url());
    let client = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
    });
    tx.send(bytes::Bytes::from_static(
        br#"{"model":"tiny","prompt":"first"#,
    ))
    .await
    .unwrap();
    let (mut s, _) = tokio::time::timeout(WAIT, up.accept())
        .await
        .expect("the tap opened no upstream connection while the body was incomplete")
        .unwrap();
    let mut got = Vec::new();
    let has = |got: &[u8], what: &[u8]| got.windows(what.len()).any(|w| w == what);
    while !has(&got, b"first") {
        let n = tokio::time::timeout(WAIT, s.read_buf(&mut got))
            .await
            .expect("the tap held the body's first bytes back")
            .unwrap();
        assert!(n > 0, "upstream connection closed early");
    }
    // Only now does the client send the rest.
    tx.send(bytes::Bytes::from_static(br#"","stream":false}"#))
        .await
        .unwrap();
    drop(tx);
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read_buf(&mut got))
            .await
            .expect("the body's end did not arrive")
            .unwrap();
        assert!(n > 0, "upstream connection closed early");
    }
    assert!(has(&got, br#""stream":false}"#));
    s.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let r = client.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");
    let t = tap.text();
    assert_eq!(
        metric(
            &t,
            "vllm_sentinel_traffic_requests_total",
            &["model=\"tiny\"", "stream=\"false\""]
        ),
        1.0,
        "{t}"
    );
}

/// `tap.threads = 3`: the tap runs on threads of its own (named `tap-0` … `tap-2`), connections
/// are handed to them in turn, every request on every connection is forwarded and measured, and
/// cancelling the token ends the tap (the future `start` returned completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tap_threads_serve_every_connection() {
    let (sim, _sim) = start_sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut registry = Registry::default();
    let metrics = TrafficMetrics::register(&mut registry, &Buckets::default());
    let mut settings = Settings::for_upstream(&sim);
    settings.models_refresh = None;
    settings.threads = 3;
    let models = ModelSet::with(vec![ModelInfo {
        id: "tiny".into(),
        max_model_len: Some(2048),
    }]);
    let token = CancellationToken::new();
    let ended = vllm_sentinel::tap::start(listener, settings, metrics, models, token.clone())
        .expect("the tap starts");
    let body = r#"{"model":"tiny","prompt":"hi","max_tokens":3}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    // Two requests on each connection (keep-alive on whichever thread took it).
    for round in 0..2 {
        for (i, s) in conns.iter_mut().enumerate() {
            let (code, text) = request_on(s, &req).await;
            assert_eq!(code, 200, "connection {i}, round {round}: {text}");
            assert!(text.contains("\"usage\""), "connection {i}: {text}");
        }
    }
    // Read after the requests: each thread names itself when it starts, and every one has
    // served a connection by now.
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    for want in ["tap-0", "tap-1", "tap-2"] {
        assert!(
            names.iter().any(|n| n == want),
            "no thread {want}: {names:?}"
        );
    }
    let registry = Arc::new(registry);
    let text = guard("12 records", async {
        loop {
            let mut t = String::new();
            prometheus_client::encoding::text::encode(&mut t, &registry).unwrap();
            if metric(
                &t,
                "vllm_sentinel_traffic_requests_total",
                &[r#"outcome="ok""#],
            ) >= 12.0
            {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        metric(&text, "vllm_sentinel_traffic_requests_total", &[]),
        12.0,
        "{text}"
    );
    drop(conns);
    token.cancel();
    guard("the tap ends", ended)
        .await
        .expect("the tap ended cleanly");
}
