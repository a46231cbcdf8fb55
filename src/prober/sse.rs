//! An incremental Server-Sent-Events splitter for the probe hot path.
//!
//! Hand-written rather than taken from a crate because the prober needs three things the SSE
//! crates do not give together: (1) no allocation per event once warm (lines are found with
//! `memchr` in the read itself; only an event's data bytes are copied, into a reused buffer),
//! (2) the receive timestamp of the read in which an event's first `data:` line *completed*
//! (not of the read that completed the blank line), and (3) a hard cap on buffered bytes.
//!
//! Supported: `\n` and `\r\n` line ends, lines split across reads (even inside a `\r\n`), comment
//! lines (`:` ping), multi-line `data:` (joined with `\n`), an optional single space after the
//! colon, and other fields (`event:`, `id:`, `retry:`), which are ignored. A lone `\r` as a line
//! end (allowed by the spec, sent by no LLM server we know) is not supported.

/// Why the splitter gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line or an event grew past the configured cap.
    TooLong,
}

/// Incremental splitter; feed it reads with [`SseParser::feed`], then call [`SseParser::finish`].
#[derive(Debug)]
pub struct SseParser {
    /// A line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The data of the event being assembled (only used for multi-line or split events).
    data: Vec<u8>,
    /// Whether an event has at least one `data:` line pending.
    pending: bool,
    /// Receive time of the read that completed the pending event's first `data:` line.
    pending_ns: u64,
    /// The most bytes `partial` + `data` may hold.
    max_event_bytes: usize,
}

impl SseParser {
    /// A splitter that fails with [`SseError::TooLong`] once one event needs more than
    /// `max_event_bytes` of buffer.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            partial: Vec::new(),
            data: Vec::new(),
            pending: false,
            pending_ns: 0,
            max_event_bytes,
        }
    }

    /// Splits one network read received at `recv_ns`. `on_event(data, ns)` is called for each
    /// complete event, with the event's data and the receive time of its first data line; it
    /// returns `false` to stop early (the rest of the read is then not looked at).
    /// Returns `Ok(false)` when `on_event` asked to stop.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        recv_ns: u64,
        on_event: &mut impl FnMut(&[u8], u64) -> bool,
    ) -> Result<bool, SseError> {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line_part, tail) = (&rest[..pos], &rest[pos + 1..]);
            rest = tail;
            let keep_going = if self.partial.is_empty() {
                self.line(strip_cr(line_part), recv_ns, on_event)?
            } else {
                self.partial.extend_from_slice(line_part);
                if self.partial.len() + self.data.len() > self.max_event_bytes {
                    return Err(SseError::TooLong);
                }
                let line = std::mem::take(&mut self.partial);
                let r = self.line(strip_cr(&line), recv_ns, on_event);
                // Keep the allocation for the next split line.
                self.partial = line;
                self.partial.clear();
                r?
            };
            if !keep_going {
                return Ok(false);
            }
        }
        if !rest.is_empty() {
            self.partial.extend_from_slice(rest);
            if self.partial.len() + self.data.len() > self.max_event_bytes {
                return Err(SseError::TooLong);
            }
        }
        Ok(true)
    }

    /// At the end of the body: dispatches an event whose data lines are complete but whose
    /// closing blank line never came (lenient, as the common clients are). Returns `true` when
    /// the body ended in the middle of a line (a truncated stream).
    pub fn finish(&mut self, on_event: &mut impl FnMut(&[u8], u64) -> bool) -> bool {
        let cut_mid_line = !self.partial.is_empty();
        if self.pending {
            self.pending = false;
            on_event(&self.data, self.pending_ns);
            self.data.clear();
        }
        self.partial.clear();
        cut_mid_line
    }

    fn line(
        &mut self,
        line: &[u8],
        recv_ns: u64,
        on_event: &mut impl FnMut(&[u8], u64) -> bool,
    ) -> Result<bool, SseError> {
        if line.is_empty() {
            if self.pending {
                self.pending = false;
                let go = on_event(&self.data, self.pending_ns);
                self.data.clear();
                return Ok(go);
            }
            return Ok(true);
        }
        if line[0] == b':' {
            return Ok(true); // comment / keep-alive ping
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[..0]),
        };
        if field != b"data" {
            return Ok(true);
        }
        if self.pending {
            self.data.push(b'\n');
        } else {
            self.pending = true;
            self.pending_ns = recv_ns;
        }
        self.data.extend_from_slice(value);
        if self.data.len() > self.max_event_bytes {
            return Err(SseError::TooLong);
        }
        Ok(true)
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<(String, u64)>, bool) {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            p.feed(c, i as u64, &mut |d, ns| {
                out.push((String::from_utf8_lossy(d).into_owned(), ns));
                true
            })
            .unwrap();
        }
        let cut = p.finish(&mut |d, ns| {
            out.push((String::from_utf8_lossy(d).into_owned(), ns));
            true
        });
        (out, cut)
    }

    #[test]
    fn whole_events_in_one_read() {
        let (ev, cut) = split_all(&[b"data: a\n\ndata: b\n\n"]);
        assert_eq!(ev, vec![("a".into(), 0), ("b".into(), 0)]);
        assert!(!cut);
    }

    #[test]
    fn crlf_comments_and_other_fields() {
        let (ev, _) = split_all(&[b": ping\r\nevent: x\r\nid: 3\r\ndata:a\r\n\r\n"]);
        assert_eq!(ev, vec![("a".into(), 0)]);
    }

    #[test]
    fn multi_line_data_joined() {
        let (ev, _) = split_all(&[b"data: a\ndata: b\n\n"]);
        assert_eq!(ev, vec![("a\nb".into(), 0)]);
    }

    #[test]
    fn split_lines_keep_first_line_time() {
        // The data line completes in read 1; the blank line arrives in read 2.
        let (ev, _) = split_all(&[b"da", b"ta: hello\r", b"\n", b"\r\n"]);
        assert_eq!(ev, vec![("hello".into(), 2)]);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let raw = b"data: {\"a\":1}\r\n\r\n: c\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        let (whole, _) = split_all(&[raw]);
        for i in 0..raw.len() {
            for j in i..raw.len() {
                let (ev, cut) = split_all(&[&raw[..i], &raw[i..j], &raw[j..]]);
                let got: Vec<_> = ev.iter().map(|e| e.0.clone()).collect();
                let want: Vec<_> = whole.iter().map(|e| e.0.clone()).collect();
                assert_eq!(got, want, "split at {i},{j}");
                assert!(!cut);
            }
        }
    }

    #[test]
    fn cut_mid_line_is_reported() {
        let (ev, cut) = split_all(&[b"data: a\n\ndata: {\"tru"]);
        assert_eq!(ev.len(), 1);
        assert!(cut);
    }

    #[test]
    fn pending_event_without_blank_line_is_dispatched_at_eof() {
        let (ev, cut) = split_all(&[b"data: [DONE]\n"]);
        assert_eq!(ev, vec![("[DONE]".into(), 0)]);
        assert!(!cut);
    }

    #[test]
    fn cap_on_line_length() {
        let mut p = SseParser::new(16);
        let r = p.feed(&[b'x'; 40], 0, &mut |_, _| true);
        assert_eq!(r, Err(SseError::TooLong));
        let mut p = SseParser::new(16);
        let mut r = Ok(true);
        for _ in 0..10 {
            r = p.feed(b"data: 0123456\n", 0, &mut |_, _| true);
        }
        assert_eq!(r, Err(SseError::TooLong));
    }

    #[test]
    fn stop_early() {
        let mut p = SseParser::new(1024);
        let mut n = 0;
        let r = p.feed(b"data: a\n\ndata: b\n\n", 0, &mut |_, _| {
            n += 1;
            false
        });
        assert_eq!(r, Ok(false));
        assert_eq!(n, 1);
    }
}
