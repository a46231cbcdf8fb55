//! A raw HTTP/1.1 fake server for the prober tests: it replays exact bytes (the real vLLM
//! captures under `tests/data/vllm-0.32.0-cpu/`) on a script of writes, pauses, stalls and closes, so
//! every wire-level failure can be produced on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One step of a response script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes as they are.
    Raw(Vec<u8>),
    /// Write these bytes as one HTTP chunk (chunked transfer encoding).
    Chunk(Vec<u8>),
    /// Write the terminating zero-length chunk.
    EndChunks,
    /// Pause.
    Sleep(Duration),
    /// Never write again (until the client goes away).
    Stall,
    /// Close the connection now (a reset mid-response when chunks are still due).
    Close,
    /// Wait until the test adds a permit to this semaphore (the permit is consumed).
    Gate(Arc<tokio::sync::Semaphore>),
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/vllm-0.32.0-cpu/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn sse_head() -> Step {
    Step::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
    )
}

/// A complete chunked SSE response replaying `body` one event per chunk.
pub fn sse_script(body: &[u8]) -> Vec<Step> {
    let mut steps = vec![sse_head()];
    for ev in split_events(body) {
        steps.push(Step::Chunk(ev));
    }
    steps.push(Step::EndChunks);
    steps
}

/// Splits a raw SSE body into its events (each with its trailing blank line).
pub fn split_events(body: &[u8]) -> Vec<Vec<u8>> {
    let s = String::from_utf8_lossy(body);
    s.split_inclusive("\n\n")
        .map(|e| e.as_bytes().to_vec())
        .collect()
}

/// A complete response with a fixed body.
pub fn fixed(status: u16, content_type: &str, body: &[u8]) -> Vec<Step> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(body);
    vec![Step::Raw(head)]
}

/// As [`vllm_like`], but `/v1/models` also lists `sql`, a LoRA adapter of `tiny` (its `parent`),
/// as vLLM lists `--lora-modules`.
pub fn vllm_with_adapter(n: usize, path: &str, body: &[u8]) -> Vec<Step> {
    if path == "/v1/models" {
        return fixed(
            200,
            "application/json",
            br#"{"object":"list","data":[{"id":"tiny","object":"model","parent":null,"max_model_len":1024},{"id":"sql","object":"model","parent":"tiny","max_model_len":null}]}"#,
        );
    }
    vllm_like(n, path, body)
}

/// The fake: serves `script(n, path, body)` to the n-th request (0-based).
pub struct Fake {
    pub url: String,
    pub requests: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    pub served: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
}

impl Fake {
    /// How many of the requests received so far (each is recorded before it is answered) were
    /// for `path`; drains the record.
    pub fn count(&mut self, path: &str) -> usize {
        let mut n = 0;
        while let Ok((head, _)) = self.requests.try_recv() {
            n += usize::from(head.split('\n').next() == Some(path));
        }
        n
    }
}

pub async fn start(
    script: impl Fn(usize, &str, &[u8]) -> Vec<Step> + Send + Sync + 'static,
) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let served = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let s2 = served.clone();
    let conns = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let _ = sock.set_nodelay(true);
            let script = script.clone();
            let tx = tx.clone();
            let served = s2.clone();
            tokio::spawn(async move { serve_conn(sock, script, tx, served).await });
        }
    });
    Fake {
        url,
        requests: rx,
        served,
        conns,
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    script: Arc<impl Fn(usize, &str, &[u8]) -> Vec<Step> + Send + Sync>,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    served: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request: headers, then content-length bytes.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut tmp = [0u8; 8192];
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut tmp = [0u8; 8192];
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let n = served.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send((format!("{}\n{}", path, head), body.clone()));
        for step in script(n, &path, &body) {
            let r = match step {
                Step::Raw(b) => sock.write_all(&b).await,
                Step::Chunk(b) => {
                    let mut c = format!("{:x}\r\n", b.len()).into_bytes();
                    c.extend_from_slice(&b);
                    c.extend_from_slice(b"\r\n");
                    sock.write_all(&c).await
                }
                Step::EndChunks => sock.write_all(b"0\r\n\r\n").await,
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Step::Stall => {
                    // Wait until the client closes its side.
                    let mut tmp = [0u8; 1024];
                    loop {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                }
                Step::Close => return,
                Step::Gate(g) => match g.acquire().await {
                    Ok(p) => {
                        p.forget();
                        Ok(())
                    }
                    Err(_) => return,
                },
            };
            if r.is_err() {
                return;
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A port with nothing listening on it.
pub async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

/// A vLLM-like fake: `/v1/models` and `/tokenize` from the captures, completions streamed
/// from `sse_completions.raw`, and vLLM's 400 for a prompt over 2048 tokens.
pub fn vllm_like(_n: usize, path: &str, body: &[u8]) -> Vec<Step> {
    match path {
        "/v1/models" => fixed(200, "application/json", &fixture("v1_models.body")),
        "/tokenize" => fixed(200, "application/json", &fixture("tokenize.json")),
        _ => {
            if prompt_len(body) > 2048 {
                fixed(
                    400,
                    "application/json",
                    &fixture("ctx_prompt_too_long.body"),
                )
            } else {
                sse_script(&fixture("sse_completions.raw"))
            }
        }
    }
}

/// The prompt length of a completions body (token ids, or words of a text prompt).
pub fn prompt_len(body: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match &v["prompt"] {
        serde_json::Value::Array(a) => a.len(),
        serde_json::Value::String(s) => s.split_whitespace().count(),
        _ => 0,
    }
}

/// The value of the series `name{...}` whose labels contain every `labels` fragment, summed
/// over matching series (0 when none).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
