//! The SSE body of a streaming reply: tokens from the engine (or from fixed deadlines), vLLM's
//! event framing, and the stream faults.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::api::{self, Kind, Reply};
use super::engine::{FinishReason, Output};
use super::faults::Faults;
use super::server::{EngineHandle, LoadGuard, Shared};

/// Where a reply's tokens come from.
pub(super) enum Source {
    /// The engine delivers them through a channel.
    Engine {
        rx: mpsc::UnboundedReceiver<Output>,
        #[allow(dead_code)] // held for its Drop (aborts the request in the engine)
        handle: EngineHandle,
    },
    /// Fixed timing: token `i` is due at `next` + `i × every` (absolute deadlines).
    Fixed {
        next: Instant,
        every: Duration,
        total: u32,
        finish: &'static str,
        emitted: u32,
    },
}

impl Source {
    /// The next token: its index and, on the last one, the finish reason. `None` when the
    /// source is gone.
    pub async fn next(&mut self) -> Option<(u32, Option<&'static str>)> {
        match self {
            Source::Engine { rx, .. } => {
                let o = rx.recv().await?;
                Some((o.index, o.finished.map(FinishReason::as_str)))
            }
            Source::Fixed {
                next,
                every,
                total,
                finish,
                emitted,
            } => {
                if *emitted >= *total {
                    return None;
                }
                tokio::time::sleep_until(*next).await;
                *next += *every;
                let i = *emitted;
                *emitted += 1;
                Some((i, (*emitted == *total).then_some(*finish)))
            }
        }
    }

    fn is_fixed(&self) -> bool {
        matches!(self, Source::Fixed { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tokens,
    Usage,
    Done,
    End,
}

/// One streaming reply in progress.
pub(super) struct StreamState {
    shared: Arc<Shared>,
    reply: Reply,
    source: Source,
    faults: Option<Faults>,
    stamp: bool,
    emitted: u32,
    events: u32,
    phase: Phase,
    stalled: bool,
    malformed_sent: bool,
    buf: String,
    _load: LoadGuard,
}

type Item = Result<Bytes, std::io::Error>;

impl StreamState {
    pub fn new(
        shared: Arc<Shared>,
        reply: Reply,
        source: Source,
        faults: Option<Faults>,
        load: LoadGuard,
    ) -> Self {
        let stamp = source.is_fixed();
        Self {
            shared,
            reply,
            source,
            faults,
            stamp,
            emitted: 0,
            events: 0,
            phase: Phase::Tokens,
            stalled: false,
            malformed_sent: false,
            buf: String::with_capacity(512),
            _load: load,
        }
    }

    fn cut(&mut self, why: &str) -> Item {
        self.phase = Phase::End;
        Err(std::io::Error::other(why.to_string()))
    }

    fn take(&mut self) -> Item {
        Ok(Bytes::from(std::mem::replace(
            &mut self.buf,
            String::with_capacity(512),
        )))
    }

    /// A send-time stamp for the next event (fixed timing only), logged.
    fn stamp(&mut self) -> Option<u64> {
        if !self.stamp {
            return None;
        }
        let ns = crate::clock::monotonic_ns();
        self.shared.log_send(&self.reply.id, self.events, ns);
        self.events += 1;
        Some(ns)
    }

    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.shared.token.cancelled() => false,
        }
    }

    async fn next_item(&mut self) -> Option<Item> {
        match self.phase {
            Phase::End => None,
            Phase::Done => {
                self.phase = Phase::End;
                Some(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            }
            Phase::Usage => {
                let s = self.stamp();
                self.reply.usage_event(&mut self.buf, self.emitted, s);
                self.phase = Phase::Done;
                Some(self.take())
            }
            Phase::Tokens => Some(self.next_token().await),
        }
    }

    async fn next_token(&mut self) -> Item {
        let k = self.emitted;
        if let Some(f) = self.faults.clone() {
            if f.stall_after_tokens == Some(k) && !self.stalled {
                self.stalled = true;
                let alive = match f.stall_for {
                    Some(d) => self.sleep(d).await,
                    None => {
                        self.shared.token.cancelled().await;
                        false
                    }
                };
                if !alive {
                    return self.cut("server shutting down");
                }
            }
            if f.cut_after_tokens == Some(k) {
                // Pause first so the events already sent leave the server's write buffer
                // (an error from the body makes hyper drop the connection at once).
                self.sleep(Duration::from_millis(20)).await;
                return self.cut("simulated connection cut");
            }
            if f.error_event_after_tokens == Some(k) {
                api::error_event(
                    &mut self.buf,
                    "Simulated fault: engine error mid-stream",
                    500,
                );
                self.buf.push_str("data: [DONE]\n\n");
                self.phase = Phase::End;
                return self.take();
            }
            if f.malformed_after_tokens == Some(k) && !self.malformed_sent {
                self.malformed_sent = true;
                self.buf.push_str("data: {\"id\":\"");
                self.buf.push_str(&self.reply.id);
                self.buf.push_str("\",\"choices\":[{\"index\":0,\"text\n\n");
                return self.take();
            }
        }
        let next = tokio::select! {
            t = self.source.next() => t,
            _ = self.shared.token.cancelled() => None,
        };
        let Some((index, finish)) = next else {
            return self.cut("token source ended");
        };
        if let Some(f) = &self.faults
            && f.spike_every_tokens > 0
            && (k + 1).is_multiple_of(f.spike_every_tokens)
            && let Some(d) = f.spike_delay
            && !self.sleep(d).await
        {
            return self.cut("server shutting down");
        }
        if k == 0 && self.reply.kind == Kind::Chat {
            let s = self.stamp();
            self.reply.role_event(&mut self.buf, s);
        }
        let s = self.stamp();
        self.reply.token_event(&mut self.buf, index, finish, s);
        self.emitted += 1;
        if finish.is_some() {
            self.phase = if self.reply.include_usage {
                Phase::Usage
            } else {
                Phase::Done
            };
        }
        self.take()
    }
}

/// The body stream of `state`.
pub(super) fn into_stream(state: StreamState) -> impl Stream<Item = Item> + Send + 'static {
    futures_util::stream::unfold(state, |mut s| async move {
        let item = s.next_item().await?;
        Some((item, s))
    })
}
