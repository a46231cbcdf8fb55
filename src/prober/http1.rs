//! The prober's own HTTP/1.1 client for plain-TCP targets: the streaming hot path.
//!
//! Why by hand: hyper's client (under reqwest) drives every connection in a task of its own
//! and hands each body frame to the request task through a channel, so every SSE event costs
//! two task wake-ups and a hand-off, and each pooled connection carries tens of KiB of buffers
//! and state. At 1,000 streams of 100 tokens/s that was 1.7 µs of CPU per token over the floor
//! of loopback TCP itself and most of the prober's memory (`BENCHMARKS.md`). Here the request
//! task reads its socket itself, stamps each read before any parsing, and decodes the chunked
//! framing in place in a 4 KiB buffer: one wake-up per read, a few KiB per connection.
//!
//! It does only what a probe needs, strictly: one `POST` with a `Content-Length` body; the
//! response head parsed by `httparse` (interim 1xx responses skipped); a body framed by
//! chunked encoding, `Content-Length`, or the end of the connection (RFC 9112 §6.3); keep-alive
//! reuse from a small idle pool. A pooled connection that the server closed while idle is
//! detected when it is taken, and a request that finds its reused connection closed before any
//! byte of a response is retried once on a fresh one (what hyper's pool does too). Anything
//! else a server does wrong is an error that names it. TLS targets (the `tls` feature, on by default) keep
//! reqwest.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::monotonic_ns;

/// Initial (and usual) read buffer of a connection.
const BUF_SIZE: usize = 4096;
/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect error: {0}")]
    Connect(io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection error before the response: {0}")]
    Io(io::Error),
    #[error("connection closed before the response head")]
    Closed,
    #[error("malformed response head: {0}")]
    BadHead(String),
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("connection error mid-body: {0}")]
    Io(io::Error),
    #[error("connection closed before the end of the body")]
    Closed,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

/// Where a pool connects: parsed once from the target's base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `host:port` for connect.
    connect_to: String,
    /// The `Host` header.
    host_header: String,
    /// The base URL's path, without a trailing slash ("" for none).
    path_prefix: String,
}

impl Origin {
    /// Parses an `http://` base URL; `None` for any other scheme, or a URL with credentials,
    /// a query or a fragment (those go through reqwest).
    pub fn parse(base_url: &str) -> Option<Origin> {
        let url = reqwest::Url::parse(base_url).ok()?;
        if url.scheme() != "http"
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        // `host_str` keeps IPv6 brackets, which connect wants too.
        Some(Origin {
            connect_to: format!("{host}:{port}"),
            host_header,
            path_prefix: url.path().trim_end_matches('/').to_string(),
        })
    }
}

/// One target's connections: an idle pool and the settings to open more.
#[derive(Debug)]
pub struct Pool {
    origin: Origin,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    user_agent: &'static str,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

/// A request's head fields beyond the fixed ones.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    /// Path below the base URL, starting with `/`.
    pub path: &'a str,
    /// The whole `Authorization` value (`Bearer …`, `Basic …`); must be a valid header value
    /// (checked by the caller). Never printed: `Debug` shows `<redacted>`.
    pub authorization: Option<&'a str>,
}

impl std::fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHead")
            .field("path", &self.path)
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .finish()
    }
}

impl Pool {
    pub fn new(
        origin: Origin,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        user_agent: &'static str,
    ) -> Pool {
        Pool {
            origin,
            connect_timeout,
            idle_timeout,
            max_idle: max_idle.max(1),
            user_agent,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends a JSON `POST` and reads the response head.
    pub async fn send(
        &self,
        head: RequestHead<'_>,
        body: &[u8],
    ) -> Result<Response<'_>, SendError> {
        let req = self.encode(head, body);
        // A write error on a kept-alive connection means the server closed it under us before
        // the request got through: nothing was processed, so a fresh connection gets the
        // request. Once it is written, a close is the server's failure and is reported (as
        // hyper does).
        if let Some(mut conn) = self.checkout()
            && conn.stream.write_all(&req).await.is_ok()
        {
            return self.exchange(conn).await;
        }
        let mut conn = self.connect().await?;
        conn.stream.write_all(&req).await.map_err(SendError::Io)?;
        self.exchange(conn).await
    }

    fn encode(&self, head: RequestHead<'_>, body: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut req = Vec::with_capacity(256 + body.len());
        // Writing into a Vec cannot fail.
        let _ = write!(
            req,
            "POST {}{} HTTP/1.1\r\nhost: {}\r\nuser-agent: {}\r\naccept: */*\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.origin.path_prefix,
            head.path,
            self.origin.host_header,
            self.user_agent,
            body.len()
        );
        if let Some(value) = head.authorization {
            let _ = write!(req, "authorization: {value}\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        req
    }

    /// An idle connection the server has not closed, if any.
    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Connection, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.origin.connect_to.as_str()),
        )
        .await
        .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
        .map_err(SendError::Connect)?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        Ok(Connection {
            stream,
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
        })
    }

    /// Reads the response head of the request just written on `conn`.
    async fn exchange(&self, mut conn: Connection) -> Result<Response<'_>, SendError> {
        loop {
            let head = conn.read_head().await?;
            // Interim responses (100 Continue, 103 Early Hints) precede the real one.
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            if head.status == 101 {
                return Err(SendError::BadHead(
                    "unexpected 101 Switching Protocols".into(),
                ));
            }
            let framing = if head.status == 204 || head.status == 304 {
                Framing::Length(0)
            } else if let Some(chunked) = head.chunked {
                if chunked {
                    Framing::Chunked(Chunk::Size)
                } else {
                    Framing::Close
                }
            } else if let Some(n) = head.content_length {
                Framing::Length(n)
            } else {
                Framing::Close
            };
            let keep_alive = head.keep_alive && !matches!(framing, Framing::Close);
            return Ok(Response {
                pool: self,
                conn: Some(conn),
                status: head.status,
                content_type: head.content_type,
                framing,
                keep_alive,
                read_ns: head.read_ns,
            });
        }
    }
}

/// One TCP connection and its read buffer (`buf[start..end]` is unread).
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Why [`Connection::fill`] read nothing.
enum Fill {
    /// The buffer is at its limit and holds no complete unit.
    Full,
    Io(io::Error),
}

struct Head {
    status: u16,
    content_type: Option<String>,
    content_length: Option<u64>,
    /// `Some(true)`: chunked is the final coding; `Some(false)`: another transfer coding.
    chunked: Option<bool>,
    keep_alive: bool,
    read_ns: u64,
}

impl Connection {
    /// Whether an idle connection is still usable: no EOF, no error, no stray bytes. Asks the
    /// kernel (a non-blocking peek, one system call per request) rather than the runtime's
    /// cached readiness, which can lag behind a close the server made while we were busy.
    fn is_open(&self) -> bool {
        use rustix::net::{RecvFlags, recv};
        let mut probe = [0u8; 1];
        matches!(
            recv(
                &self.stream,
                &mut probe[..],
                RecvFlags::PEEK | RecvFlags::DONTWAIT
            ),
            Err(rustix::io::Errno::AGAIN)
        )
    }

    /// Reads more bytes after `end`, compacting or growing the buffer up to `limit`. Returns
    /// the bytes read (0 at EOF) and the read's time.
    async fn fill(&mut self, limit: usize) -> Result<(usize, u64), Fill> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(limit.max(BUF_SIZE));
            if grown <= self.buf.len() {
                return Err(Fill::Full);
            }
            self.buf.resize(grown, 0);
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(Fill::Io)?;
        let ns = monotonic_ns();
        self.end += n;
        Ok((n, ns))
    }

    async fn read_head(&mut self) -> Result<Head, SendError> {
        let mut read_ns = monotonic_ns();
        loop {
            if self.end > self.start {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = Head::from_parsed(&resp, read_ns)?;
                        self.start += len;
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(SendError::BadHead(e.to_string())),
                }
            }
            if self.end - self.start >= MAX_HEAD {
                return Err(SendError::BadHead(format!("longer than {MAX_HEAD} bytes")));
            }
            match self.fill(MAX_HEAD).await {
                Ok((0, _)) if self.end == self.start => return Err(SendError::Closed),
                Ok((0, _)) => return Err(SendError::BadHead("connection closed mid-head".into())),
                Ok((_, ns)) => read_ns = ns,
                Err(Fill::Full) => {
                    return Err(SendError::BadHead(format!("longer than {MAX_HEAD} bytes")));
                }
                Err(Fill::Io(e)) => return Err(SendError::Io(e)),
            }
        }
    }
}

impl Head {
    fn from_parsed(resp: &httparse::Response<'_, '_>, read_ns: u64) -> Result<Head, SendError> {
        let bad = |m: &str| SendError::BadHead(m.to_string());
        let status = resp.code.ok_or_else(|| bad("no status code"))?;
        let mut head = Head {
            status,
            content_type: None,
            content_length: None,
            chunked: None,
            keep_alive: resp.version == Some(1),
            read_ns,
        };
        for h in resp.headers.iter() {
            let value = std::str::from_utf8(h.value).map_err(|_| bad("a non-UTF-8 header value"));
            if h.name.eq_ignore_ascii_case("content-type") {
                head.content_type = Some(value?.trim().to_string());
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value?
                    .trim()
                    .parse()
                    .map_err(|_| bad("an invalid content-length"))?;
                if head.content_length.is_some_and(|m| m != n) {
                    return Err(bad("conflicting content-length headers"));
                }
                head.content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value?.rsplit(',').next().unwrap_or("").trim();
                head.chunked = Some(last.eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value?.split(',') {
                    let t = token.trim();
                    if t.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if t.eq_ignore_ascii_case("keep-alive") && resp.version == Some(0) {
                        head.keep_alive = true;
                    }
                }
            }
        }
        Ok(head)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked(Chunk),
    /// Body bytes still due.
    Length(u64),
    /// Until the server closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Data bytes of the current chunk still due.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A response whose head has been read; the body is read with [`Response::chunk`]. Dropping
/// it before the end closes the connection; reading it to the end returns a reusable
/// connection to the pool.
#[derive(Debug)]
pub struct Response<'p> {
    pool: &'p Pool,
    conn: Option<Connection>,
    status: u16,
    content_type: Option<String>,
    framing: Framing,
    keep_alive: bool,
    read_ns: u64,
}

impl Response<'_> {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// `CLOCK_MONOTONIC` ns of the read that completed the head.
    pub fn head_ns(&self) -> u64 {
        self.read_ns
    }

    /// The next piece of the decoded body and the time of the read that brought it; `None`
    /// at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<(&[u8], u64)>, BodyError> {
        let range = loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            match decode(&mut self.framing, conn)? {
                Decoded::Data(range) => break range,
                Decoded::End => {
                    if let Some(conn) = self.conn.take()
                        && self.keep_alive
                        && conn.start == conn.end
                    {
                        self.pool.checkin(conn);
                    }
                    return Ok(None);
                }
                Decoded::NeedMore => match conn.fill(MAX_LINE).await {
                    Ok((0, _)) if self.framing == Framing::Close => self.framing = Framing::Done,
                    Ok((0, _)) => return Err(BodyError::Closed),
                    Ok((_, ns)) => self.read_ns = ns,
                    Err(Fill::Full) => return Err(BodyError::BadChunk(LINE_TOO_LONG)),
                    Err(Fill::Io(e)) => return Err(BodyError::Io(e)),
                },
            }
        };
        match &self.conn {
            Some(conn) => Ok(Some((&conn.buf[range], self.read_ns))),
            None => Ok(None),
        }
    }
}

const LINE_TOO_LONG: &str = "a chunk-size or trailer line too long";

enum Decoded {
    /// Body bytes at this range of the buffer.
    Data(std::ops::Range<usize>),
    End,
    /// The buffer holds no complete unit: read more.
    NeedMore,
}

/// One step of body decoding over the buffered bytes.
fn decode(framing: &mut Framing, conn: &mut Connection) -> Result<Decoded, BodyError> {
    loop {
        let avail = conn.end - conn.start;
        match *framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::Length(0) => *framing = Framing::Done,
            Framing::Length(n) | Framing::Chunked(Chunk::Data(n)) if avail > 0 => {
                let take = avail.min(usize::try_from(n).unwrap_or(usize::MAX));
                let s = conn.start;
                conn.start += take;
                let left = n - take as u64;
                *framing = match *framing {
                    Framing::Length(_) => Framing::Length(left),
                    _ if left == 0 => Framing::Chunked(Chunk::DataEnd),
                    _ => Framing::Chunked(Chunk::Data(left)),
                };
                return Ok(Decoded::Data(s..s + take));
            }
            Framing::Close if avail > 0 => {
                let s = conn.start;
                conn.start = conn.end;
                return Ok(Decoded::Data(s..s + avail));
            }
            Framing::Chunked(Chunk::DataEnd) if avail >= 2 => {
                if &conn.buf[conn.start..conn.start + 2] != b"\r\n" {
                    return Err(BodyError::BadChunk("no CRLF after a chunk's data"));
                }
                conn.start += 2;
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(state @ (Chunk::Size | Chunk::Trailers)) => {
                let Some(nl) = memchr::memchr(b'\n', &conn.buf[conn.start..conn.end]) else {
                    if avail >= MAX_LINE {
                        return Err(BodyError::BadChunk(LINE_TOO_LONG));
                    }
                    return Ok(Decoded::NeedMore);
                };
                let line = &conn.buf[conn.start..conn.start + nl];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                *framing = if state == Chunk::Trailers {
                    if line.is_empty() {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailers)
                    }
                } else {
                    match parse_chunk_size(line)? {
                        0 => Framing::Chunked(Chunk::Trailers),
                        n => Framing::Chunked(Chunk::Data(n)),
                    }
                };
                conn.start += nl + 1;
            }
            _ => return Ok(Decoded::NeedMore),
        }
    }
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .is_none_or(|p| rest[p] == b';');
    if digits == 0 || digits > 15 || !rest_ok {
        return Err(BodyError::BadChunk("an invalid chunk size"));
    }
    line[..digits].iter().try_fold(0u64, |acc, &b| {
        let d = (b as char)
            .to_digit(16)
            .ok_or(BodyError::BadChunk("an invalid chunk size"))?;
        Ok(acc * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"FF;name=value").unwrap(), 255);
        assert_eq!(parse_chunk_size(b"10 ; x").unwrap(), 16);
        for bad in [&b""[..], b"x1", b"1x", b"-1", b"1 2", b"ffffffffffffffff0"] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let head = RequestHead {
            path: "/v1/completions",
            authorization: Some("Bearer sekret-key"),
        };
        let shown = format!("{head:?}");
        assert!(!shown.contains("sekret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn origins() {
        let o = Origin::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(o.connect_to, "127.0.0.1:8000");
        assert_eq!(o.host_header, "127.0.0.1:8000");
        assert_eq!(o.path_prefix, "");
        let o = Origin::parse("http://vllm.internal/serve/").unwrap();
        assert_eq!(o.connect_to, "vllm.internal:80");
        assert_eq!(o.host_header, "vllm.internal");
        assert_eq!(o.path_prefix, "/serve");
        let o = Origin::parse("http://[::1]:9000").unwrap();
        assert_eq!(o.connect_to, "[::1]:9000");
        for other in [
            "https://127.0.0.1:8000",
            "http://user:pw@127.0.0.1:8000",
            "http://127.0.0.1:8000/?q=1",
            "not a url",
        ] {
            assert_eq!(Origin::parse(other), None, "{other}");
        }
    }
}
