//! The exporter's accept loop: axum's [`Router`] served through hyper's HTTP/1.1 connection
//! builder, with the limits `axum::serve` cannot set.
//!
//! * `header_read_timeout`: from the first byte of a request to its complete head. A client
//!   that trickles a head (slowloris) is disconnected.
//! * `idle_timeout`: a connection with no request in the handler and no byte moved in either
//!   direction for this long is closed: an idle keep-alive connection, one that never sends a
//!   byte, a client that stopped reading its response.
//! * `max_connections`: open connections at most. When a new connection arrives at the cap, or
//!   when `accept` fails for want of file descriptors, the longest-idle connection (no request
//!   in progress) is closed to make room, so a real scrape is served even while idle sockets
//!   fill every slot. When every connection is busy, new ones wait in the listen backlog until
//!   one ends (at the latest after `idle_timeout` without progress).
//!
//! Shutdown (the `stop` token): the listener closes, idle connections are closed at once, and
//! a connection with a request in progress finishes that response (hyper's graceful shutdown).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::web_config::WebHandle;

/// The limits of [`serve_router`] (`[server]` keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
}

impl Limits {
    pub fn from_config(s: &crate::config::ServerConfig) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections.max(1),
        }
    }
}

/// What one connection is doing, shared by its I/O wrapper, its service and its watchdog.
struct Activity {
    epoch: Instant,
    /// Last byte read or written, µs since `epoch`.
    last_us: AtomicU64,
    /// 1 + µs since `epoch` of the first byte of a request head not yet handed to the handler;
    /// 0 when none.
    head_us: AtomicU64,
    /// Requests in the handler.
    busy: AtomicU32,
    /// Wakes the watchdog when a head starts (its deadline moves earlier).
    changed: Notify,
    /// Closes the connection at once (eviction).
    close: CancellationToken,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_us: AtomicU64::new(0),
            head_us: AtomicU64::new(0),
            busy: AtomicU32::new(0),
            changed: Notify::new(),
            close: CancellationToken::new(),
        }
    }
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
    fn on_read(&self) {
        let now = self.now_us();
        self.last_us.store(now, Ordering::Relaxed);
        if self.busy.load(Ordering::Acquire) == 0
            && self
                .head_us
                .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }
    fn on_write(&self) {
        self.last_us.store(self.now_us(), Ordering::Relaxed);
    }
    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && self.head_us.load(Ordering::Acquire) == 0
    }
    /// When the connection is to be closed if nothing changes (`None`: busy).
    fn deadline_us(&self, limits: &Limits) -> Option<u64> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_us.load(Ordering::Acquire) {
            0 => {
                Some(self.last_us.load(Ordering::Relaxed) + limits.idle_timeout.as_micros() as u64)
            }
            h => Some(h - 1 + limits.header_read_timeout.as_micros() as u64),
        }
    }
}

/// Marks a request in the handler; its drop marks the end.
struct BusyGuard(Arc<Activity>);

impl BusyGuard {
    fn new(a: Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::AcqRel);
        a.head_us.store(0, Ordering::Release);
        Self(a)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.on_write();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream that reports every byte moved to its [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections, for eviction.
#[derive(Default)]
struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Conns {
    fn insert(&self, a: Arc<Activity>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.open.lock() {
            m.insert(id, a);
        }
        id
    }
    fn remove(&self, id: u64) {
        if let Ok(mut m) = self.open.lock() {
            m.remove(&id);
        }
    }
    /// Closes the idle connection that has been quiet longest; false when none is idle.
    fn evict_longest_idle(&self) -> bool {
        let Ok(m) = self.open.lock() else {
            return false;
        };
        let victim = m
            .values()
            .filter(|a| a.is_idle() && !a.close.is_cancelled())
            .min_by_key(|a| {
                // Compare absolute times: each connection has its own epoch.
                a.epoch + Duration::from_micros(a.last_us.load(Ordering::Relaxed))
            });
        match victim {
            Some(a) => {
                a.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `stop` is cancelled; returns once every connection has
/// ended.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    web: WebHandle,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let conns = Arc::new(Conns::default());
    let tracker = TaskTracker::new();
    let service = TowerToHyperService::new(router);
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or similar: make room by closing
                    // the longest-idle connection; with none idle, back off briefly.
                    if !conns.evict_longest_idle() {
                        tracing::warn!(error = %e, "exporter: accept failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                conns.evict_longest_idle();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let id = conns.insert(activity.clone());
        let (conns, stop, service) = (conns.clone(), stop.clone(), service.clone());
        // TLS: the web config in force when the connection arrives; basic auth: the one in
        // force at each request (a reload applies to open keep-alive connections too).
        let web = web.clone();
        let tls = web.get().tls.clone();
        tracker.spawn(async move {
            let io = Tracked {
                inner: stream,
                activity: activity.clone(),
            };
            match tls {
                None => serve_conn(io, activity, service, web, limits, stop).await,
                Some(tls) => {
                    // The handshake counts as reading the request head: it has
                    // `header_read_timeout`.
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    let hs = tokio::select! {
                        r = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io)) => r,
                        _ = activity.close.cancelled() => Ok(Err(std::io::Error::other("evicted"))),
                        _ = stop.cancelled() => Ok(Err(std::io::Error::other("stopping"))),
                    };
                    match hs {
                        Ok(Ok(tls_io)) => {
                            // The handshake's bytes are not a request head.
                            activity.head_us.store(0, Ordering::Release);
                            serve_conn(tls_io, activity, service, web, limits, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "exporter: TLS handshake failed"),
                        Err(_) => tracing::debug!("exporter: TLS handshake timed out"),
                    }
                }
            }
            conns.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_conn<I>(
    io: I,
    activity: Arc<Activity>,
    service: TowerToHyperService<Router>,
    web: WebHandle,
    limits: Limits,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let a = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = BusyGuard::new(a.clone());
        let service = service.clone();
        let auth = web.get().auth.clone();
        async move {
            if let Some(auth) = auth {
                let given = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                if !auth.check(given).await {
                    drop(guard);
                    return Ok(unauthorized());
                }
            }
            let r = hyper::service::Service::call(&service, req).await;
            drop(guard);
            r
        }
    });
    let io = TokioIo::new(io);
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let watchdog = watchdog(&activity, &limits);
    let mut watchdog = std::pin::pin!(watchdog);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "exporter connection ended with an error");
                }
                return;
            }
            _ = activity.close.cancelled() => return,
            _ = &mut watchdog => return,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                if activity.is_idle() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Completes when the connection has been idle for `idle_timeout` or a request head has taken
/// longer than `header_read_timeout`.
async fn watchdog(a: &Activity, limits: &Limits) {
    loop {
        let wait = match a.deadline_us(limits) {
            None => limits.idle_timeout,
            Some(d) => {
                let now = a.now_us();
                if now >= d {
                    tracing::debug!(
                        header = a.head_us.load(Ordering::Acquire) != 0,
                        "exporter: closing a connection past its timeout"
                    );
                    return;
                }
                Duration::from_micros(d - now)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = a.changed.notified() => {}
        }
    }
}

/// 401 with a Basic challenge (as exporter-toolkit).
fn unauthorized() -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::from("Unauthorized\n"));
    *r.status_mut() = http::StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic"),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
