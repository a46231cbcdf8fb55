//! Upstream HTTP/1.1 connections driven by the task that forwards on them, and their idle pool.
//!
//! Why not hyper-util's pooled client: it runs each upstream connection in a task of its own and
//! hands the response body over a one-slot channel, so every upstream chunk costs two task
//! wake-ups and reaches the client alone. When one read from vLLM brings twenty SSE events (a
//! busy server), that client still writes them to the user one syscall each, where nginx writes
//! them in one; at 1,000 streams that was the tap's largest cost (BENCHMARKS.md, "Tap
//! overhead"). Here the request's own task polls the connection (hyper's `client::conn::http1`)
//! before its body, so the chunks already read can be handed on together, with no task hop.
//!
//! The pool keeps idle connections (most recent first) for [`POOL_IDLE`] at most, under the
//! server's keep-alive timeout (uvicorn: 5 s), so a connection is not reused just as the server
//! closes it. A connection is taken only when it is ready for a request after one poll (a closed
//! one is dropped), and it is returned only after its response ended cleanly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::proxy::UpstreamBody;

/// How long an idle upstream connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

/// One upstream connection: the request sender and the connection itself, which must be polled
/// for anything to be read or written.
pub struct UpConn {
    tx: http1::SendRequest<UpstreamBody>,
    conn: http1::Connection<TokioIo<TcpStream>, UpstreamBody>,
    idle_since: Instant,
}

impl UpConn {
    /// Drives the connection (reads, writes). `Ready` once it has ended (closed or failed).
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.conn).poll(cx).map(|_| ())
    }

    /// Whether it can take a request now (after the response before it ended).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> bool {
        matches!(self.tx.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No TCP connection within the connect timeout.
    ConnectTimeout,
    /// The TCP connection or the HTTP/1.1 handshake failed.
    Connect(std::io::Error),
    /// The connection failed or closed before the response head.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::ConnectTimeout => f.write_str("connect timed out"),
            SendError::Connect(e) => write!(f, "connect error: {e}"),
            SendError::Http(e) => write!(f, "{}", crate::errchain::chain(e)),
        }
    }
}

/// Idle upstream connections to one `host:port`.
pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<UpConn>>,
}

impl Pool {
    pub fn new(authority: String, connect_timeout: Duration, max_idle: usize) -> Self {
        Self {
            authority,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The `host:port` connected to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends `req` on an idle connection or a new one, driving the connection until the
    /// response head arrives. Never retries a request that may have been sent. A request that
    /// got no connection at all is handed back with the error.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, UpConn), (SendError, Option<Request<UpstreamBody>>)> {
        let mut up = match self.checkout().await {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return Err((e, Some(req))),
            },
        };
        let mut fut = std::pin::pin!(up.tx.send_request(req));
        let mut conn_done = false;
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if conn_done || up.poll_drive(cx).is_pending() {
                // What the connection read (the response head) reaches the request's future
                // over a channel, which wakes this task: it is taken now, not after another
                // turn through the scheduler's queue (a whole round of the other connections
                // when the tap is busy).
                return fut.as_mut().poll(cx);
            }
            // The connection ended: the request's future resolves (with an error) on the next
            // poll.
            conn_done = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        head.map(|r| (r, up))
            .map_err(|e| (SendError::Http(e), None))
    }

    /// An idle connection that is still usable, most recent first.
    async fn checkout(&self) -> Option<UpConn> {
        loop {
            let mut c = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.pop()?
            };
            if c.idle_since.elapsed() >= POOL_IDLE {
                continue;
            }
            let usable = std::future::poll_fn(|cx| {
                // Let the connection see a close or an error that came while it was idle.
                if c.poll_drive(cx).is_ready() {
                    return Poll::Ready(false);
                }
                Poll::Ready(c.poll_ready(cx))
            })
            .await;
            if usable {
                return Some(c);
            }
        }
    }

    async fn connect(&self) -> Result<UpConn, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| SendError::ConnectTimeout)?
        .map_err(SendError::Connect)?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (tx, conn) = http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(UpConn {
            tx,
            conn,
            idle_since: Instant::now(),
        })
    }

    /// Returns a connection whose response ended cleanly.
    pub fn checkin(&self, mut c: UpConn) {
        c.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Either, Empty};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};

    /// Bytes sent on the IPv4 TCP connection `local` → `peer` and not yet acknowledged
    /// (`tx_queue` in /proc/net/tcp).
    fn unacked(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u64> {
        let hex = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(v4) => format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            ),
            std::net::SocketAddr::V6(_) => String::new(),
        };
        let (l, p) = (hex(local), hex(peer));
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 4 && f[1] == l && f[2] == p)
                .then(|| {
                    f[4].split(':')
                        .next()
                        .and_then(|q| u64::from_str_radix(q, 16).ok())
                })
                .flatten()
        })
    }

    /// Polls `f` once, whatever it returns.
    async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }

    /// The response head is taken in the poll that reads it. hyper's connection hands it to the
    /// request's future over a channel, which wakes the task; answering that wake-up with
    /// another turn through the scheduler's queue is what a busy tap must not do (BENCHMARKS.md,
    /// "Tap overhead", seventh pass). The upstream answers only when told, after the request has
    /// reached it, so the head is in the socket before the one poll that must read it.
    #[tokio::test(flavor = "current_thread")]
    async fn the_response_head_is_taken_in_the_poll_that_reads_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicBool::new(false));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (written_tx, written_rx) = mpsc::channel::<()>();
        let flag = received.clone();
        let upstream = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the tap closed before sending the request");
                head.extend_from_slice(&buf[..n]);
            }
            flag.store(true, Ordering::Release);
            go_rx.recv().unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            // Written is not yet received (the kernel may defer loopback delivery under load):
            // wait until the tap's side has acknowledged every byte.
            let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while unacked(local, peer) != Some(0) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the response was never acknowledged"
                );
                std::thread::yield_now();
            }
            written_tx.send(()).unwrap();
            // Kept open until the test is done with the connection.
            let _ = s.read(&mut buf);
        });

        let pool = Pool::new(addr.to_string(), Duration::from_secs(5), 4);
        let req = Request::get("/v1/models")
            .header("host", addr.to_string())
            .body(Either::Right(Empty::<Bytes>::new()))
            .unwrap();
        let mut send = std::pin::pin!(pool.send(req));
        // Connect and send the request; nothing can be answered yet.
        while !received.load(Ordering::Acquire) {
            assert!(poll_once(send.as_mut()).await.is_pending());
            // Lets the I/O driver turn (the wake-up is deferred until it has).
            tokio::task::yield_now().await;
        }
        go_tx.send(()).unwrap();
        written_rx.recv().unwrap();
        // The head is readable now; the driver sees it on this turn.
        tokio::task::yield_now().await;
        let Poll::Ready(sent) = poll_once(send.as_mut()).await else {
            panic!("the poll that read the response head did not return it");
        };
        let (resp, up) = sent.map_err(|(e, _)| e).unwrap();
        assert_eq!(resp.status(), 200);
        drop((resp, up));
        upstream.join().unwrap();
    }
}
