//! A single-pass byte scanner for the common shape of a streamed chunk, tried before the serde
//! reader of [`super::event`].
//!
//! Why by hand: the tap and the prober read every SSE event of every stream, and the profile of
//! the tap at 100 streams (BENCHMARKS.md, "Tap overhead") put serde_json's pass over each chunk at
//! ~18 % of the tap's user-space CPU. This scanner reads the same fields in one pass without
//! serde's visitor dispatch, key allocation-free matching and string re-validation.
//!
//! It is exact by construction: it accepts only a strict subset of JSON it fully understands —
//! an object whose `choices` (null or an array of objects with `text`, `delta`/`message`
//! (`content`, `reasoning_content`, `reasoning`, `tool_calls`) and `finish_reason`), `usage`
//! (null or an object with `prompt_tokens`/`completion_tokens`) and `object` are of the types the
//! serde reader expects, with every other value skipped and validated — and answers `None` for
//! everything else: any error object, `object: "error"`, a duplicate known key, a key or a
//! finish reason with an escape, a `\u` surrogate escape, invalid UTF-8, a value of an
//! unexpected type, deep nesting, or any JSON error. `None` sends the event to the serde reader,
//! so every outcome (including every error message) stays the serde reader's. A test checks,
//! on every event of the real vLLM fixtures and on many thousand seeded mutations of them,
//! that whenever this scanner answers, the serde reader gives the same summary.

use super::event::EventSummary;

/// Nesting deeper than this is left to serde (which allows 128).
const MAX_DEPTH: u32 = 64;

/// The summary of `data`, when it is of the shape this scanner reads; `None` otherwise.
pub fn scan(data: &[u8]) -> Option<EventSummary> {
    // UTF-8 is checked where it can be broken: the grammar outside strings is ASCII only, and
    // a string with a byte over 0x7f is validated on its own ([`Scanner::string`]).
    let mut s = Scanner { b: data, i: 0 };
    let out = s.root()?;
    s.ws();
    (s.i == s.b.len()).then_some(out)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// Which known keys an object has had (serde rejects a duplicate field).
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn first(&mut self, bit: u8) -> Option<()> {
        if self.0 & bit != 0 {
            return None;
        }
        self.0 |= bit;
        Some(())
    }
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// `null` (true) or not (false, nothing consumed).
    fn null(&mut self) -> bool {
        self.ws();
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            true
        } else {
            false
        }
    }

    /// Iterates the members of an object: calls `f(key)` with the raw key bytes (no escapes)
    /// positioned before the value; `f` must consume the value.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.plain_string()?;
            self.eat(b':')?;
            f(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Iterates the elements of an array: `f` must consume each element.
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            f(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes; its bytes.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let (raw, escaped) = self.string()?;
        (!escaped).then_some(raw)
    }

    /// A string (positioned at its opening quote, after whitespace): its raw bytes between the
    /// quotes and whether it had an escape. Control characters, bad escapes and `\u` surrogates
    /// give `None`.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        let b = self.b;
        if b.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            let c = *b.get(self.i)?;
            match c {
                b'"' => {
                    let raw = &b[start..self.i];
                    if !ascii {
                        std::str::from_utf8(raw).ok()?;
                    }
                    self.i += 1;
                    return Some((raw, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match *b.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = b.get(self.i + 2..self.i + 6)?;
                            let s = std::str::from_utf8(hex).ok()?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            let v = u16::from_str_radix(s, 16).ok()?;
                            if (0xD800..=0xDFFF).contains(&v) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                0x80.. => {
                    ascii = false;
                    self.i += 1;
                }
                _ => self.i += 1,
            }
        }
    }

    /// A JSON number (strict grammar); whether it is a plain unsigned integer and its value
    /// when that fits a `u64`.
    fn number(&mut self) -> Option<Option<u64>> {
        let start = self.i;
        let mut plain = true;
        if self.peek() == Some(b'-') {
            self.i += 1;
            plain = false;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            plain = false;
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        if !plain {
            return Some(None);
        }
        // Plain digits only here; `None` when the value does not fit a `u64`.
        Some(self.b[start..self.i].iter().try_fold(0u64, |v, d| {
            v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }))
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    /// Skips any JSON value, validating it.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(|s, _| s.skip(depth + 1)),
            b'[' => self.array(|s| s.skip(depth + 1)),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A string-or-null field that only matters for being non-empty (`text`, `content`, …).
    /// Other types are left to serde.
    fn non_empty(&mut self) -> Option<bool> {
        if self.null() {
            return Some(false);
        }
        let (raw, _) = self.string()?;
        Some(!raw.is_empty())
    }

    /// `tool_calls`: null or an array (non-empty counts).
    fn non_empty_array(&mut self, depth: u32) -> Option<bool> {
        if self.null() {
            return Some(false);
        }
        let mut any = false;
        self.array(|s| {
            any = true;
            s.skip(depth + 1)
        })?;
        Some(any)
    }

    /// An `Option<u32>` field.
    fn opt_u32(&mut self) -> Option<Option<u32>> {
        if self.null() {
            return Some(None);
        }
        let v = self.number()??;
        Some(Some(u32::try_from(v).ok()?))
    }

    fn root(&mut self) -> Option<EventSummary> {
        let mut out = EventSummary::default();
        let mut seen = Seen::default();
        self.object(|s, key| match key {
            b"choices" => {
                seen.first(1)?;
                s.choices(&mut out)
            }
            b"usage" => {
                seen.first(2)?;
                s.usage(&mut out)
            }
            b"object" => {
                seen.first(4)?;
                if s.null() {
                    return Some(());
                }
                let v = s.plain_string()?;
                (v != b"error").then_some(())
            }
            // An error (or fields only an error uses): the serde reader's job.
            b"error" | b"message" | b"param" | b"type" => None,
            _ => s.skip(1),
        })?;
        Some(out)
    }

    fn choices(&mut self, out: &mut EventSummary) -> Option<()> {
        if self.null() {
            return Some(());
        }
        self.array(|s| {
            let mut seen = Seen::default();
            s.object(|s, key| match key {
                b"text" => {
                    seen.first(1)?;
                    out.content |= s.non_empty()?;
                    Some(())
                }
                b"delta" | b"message" => {
                    seen.first(if key == b"delta" { 2 } else { 4 })?;
                    out.content |= s.delta()?;
                    Some(())
                }
                b"finish_reason" => {
                    seen.first(8)?;
                    if !s.null() {
                        let r = s.plain_string()?;
                        out.finish_reason = Some(std::str::from_utf8(r).ok()?.to_string());
                    }
                    Some(())
                }
                _ => s.skip(3),
            })
        })
    }

    /// A `delta` or `message`: whether it carries output.
    fn delta(&mut self) -> Option<bool> {
        if self.null() {
            return Some(false);
        }
        let mut any = false;
        let mut seen = Seen::default();
        self.object(|s, key| {
            let (bit, v) = match key {
                b"content" => (1, s.non_empty()?),
                b"reasoning_content" => (2, s.non_empty()?),
                b"reasoning" => (4, s.non_empty()?),
                b"tool_calls" => (8, s.non_empty_array(4)?),
                _ => return s.skip(4),
            };
            seen.first(bit)?;
            any |= v;
            Some(())
        })?;
        Some(any)
    }

    fn usage(&mut self, out: &mut EventSummary) -> Option<()> {
        if self.null() {
            return Some(());
        }
        let mut seen = Seen::default();
        self.object(|s, key| match key {
            b"prompt_tokens" => {
                seen.first(1)?;
                out.prompt_tokens = s.opt_u32()?;
                Some(())
            }
            b"completion_tokens" => {
                seen.first(2)?;
                out.completion_tokens = s.opt_u32()?;
                Some(())
            }
            _ => s.skip(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::event::parse_serde;
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vllm-0.32.0-cpu");

    /// Every `data:` event of vLLM's recorded streams, its non-streamed answers and its error
    /// bodies.
    fn vllm_events() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(FIXTURES)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for p in names {
            let Ok(text) = std::fs::read(&p) else {
                continue;
            };
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if text.starts_with(b"data: ") {
                for line in text.split(|b| *b == b'\n') {
                    if let Some(d) = line.strip_prefix(b"data: ")
                        && d != b"[DONE]"
                    {
                        out.push(d.to_vec());
                    }
                }
            } else if name.starts_with("nonstream_") || name.ends_with(".body") {
                out.push(text);
            }
        }
        out
    }

    /// Whenever the scanner answers, serde agrees.
    fn agrees(data: &[u8]) -> bool {
        match scan(data) {
            Some(fast) => {
                assert_eq!(
                    Ok(fast),
                    parse_serde(data),
                    "{:?}",
                    String::from_utf8_lossy(data)
                );
                true
            }
            None => false,
        }
    }

    #[test]
    fn every_vllm_chunk_takes_the_fast_path_and_agrees() {
        let events = vllm_events();
        assert!(events.len() >= 30, "fixtures: {} events", events.len());
        let mut sse = 0;
        for e in &events {
            let taken = agrees(e);
            let chunk = parse_serde(e).is_ok_and(|s| s.error.is_none());
            // Every chunk and answer is read by the scanner; only error bodies go to serde.
            assert_eq!(taken, chunk, "{:?}", String::from_utf8_lossy(e));
            sse += usize::from(taken);
        }
        assert!(sse >= 25, "{sse} events took the fast path");
    }

    #[test]
    fn edge_cases_agree_or_fall_back() {
        let cases: &[(&str, bool)] = &[
            (r#"{"choices":[{"text":"a"}]}"#, true),
            (r#" {"choices":null,"usage":null} "#, true),
            (
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"tool_calls":[]}}],"x":[1,-2.5e3,true,false,null,{}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"text":"\n\"\u00e9\\"}],"usage":{"prompt_tokens":0,"completion_tokens":4294967295}}"#,
                true,
            ),
            (
                r#"{"choices":[{"text":"a","finish_reason":"stop"},{"text":"","finish_reason":null}]}"#,
                true,
            ),
            (r#"{"object":"chat.completion.chunk","choices":[]}"#, true),
            // left to serde:
            (r#"{"choices":[{"text":"a"}],"choices":[]}"#, false),
            (r#"{"choices":[{"text":"a","text":"b"}]}"#, false),
            (r#"{"usage":{"prompt_tokens":4294967296}}"#, false),
            (r#"{"usage":{"prompt_tokens":6.0}}"#, false),
            (r#"{"usage":{"prompt_tokens":-1}}"#, false),
            (r#"{"choices":[{"text":"\ud800"}]}"#, false),
            (r#"{"choices":[{"t\u0065xt":"a"}]}"#, false),
            (r#"{"choices":[{"finish_reason":"st\u006fp"}]}"#, false),
            (r#"{"error":{"message":"boom"}}"#, false),
            (r#"{"object":"error","message":"old"}"#, false),
            (r#"{"choices":[{"text":3}]}"#, false),
            (r#"{"choices":{"a":1}}"#, false),
            (r#"[[]]"#, false),
            (r#"{"choices":[],}"#, false),
            (r#"{"a":01}"#, false),
            (r#"{"a":1.}"#, false),
            (r#"{"a":"x"} x"#, false),
            ("{\"a\":\"\u{1}\"}", false),
            ("", false),
        ];
        for (c, fast) in cases {
            assert_eq!(agrees(c.as_bytes()), *fast, "{c}");
        }
        // UTF-8 is checked inside strings (keys too), and nothing but ASCII is read outside them.
        assert!(!agrees(b"{\"a\":\"\xff\"}"), "invalid UTF-8 goes to serde");
        assert!(
            !agrees(b"{\"choices\":[{\"text\":\"\xc3\"}]}"),
            "a cut sequence"
        );
        assert!(
            !agrees(b"{\"choices\":[{\"text\":\"\xc0\xafx\"}]}"),
            "overlong"
        );
        assert!(
            !agrees(b"{\"choices\":[{\"text\":\"\xed\xa0\x80\"}]}"),
            "a surrogate"
        );
        assert!(!agrees(b"{\"\xff\":1,\"choices\":[]}"), "in a key");
        assert!(!agrees(b"{\"choices\":[]}\xc3\xa9"), "after the value");
        assert!(agrees("{\"choices\":[{\"text\":\"é 字 🎉\"}]}".as_bytes()));
        assert!(agrees(
            "{\"é\":\"字\",\"choices\":[{\"text\":\"a\"}]}".as_bytes()
        ));
        // Token counts at and over the limits of the integer types.
        for n in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
        ] {
            let c = format!(r#"{{"usage":{{"prompt_tokens":{n}}}}}"#);
            assert!(!agrees(c.as_bytes()), "{c}");
            let c = format!(r#"{{"choices":[],"x":{n}}}"#);
            assert!(agrees(c.as_bytes()), "{c}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(!agrees(deep.as_bytes()));
    }

    /// Seeded mutations of the real chunks (bytes deleted, inserted, replaced, cut, a span
    /// copied elsewhere): the scanner never answers differently from serde, and it still reads
    /// a good share of them (so the check is not vacuous).
    #[test]
    fn mutated_chunks_never_disagree() {
        const ALPHABET: &[u8] = b"{}[]\":,\\ \t\n0123456789-+.eEnultrfasx\x01\xc3\xa9u";
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        let seeds = vllm_events();
        let (mut total, mut taken) = (0usize, 0usize);
        for seed in &seeds {
            for _ in 0..400 {
                let mut m = seed.clone();
                for _ in 0..1 + next(3) {
                    let at = next(m.len() + 1);
                    match next(5) {
                        0 if at < m.len() => {
                            m.remove(at);
                        }
                        1 => m.insert(at, ALPHABET[next(ALPHABET.len())]),
                        2 if at < m.len() => m[at] = ALPHABET[next(ALPHABET.len())],
                        3 => m.truncate(at),
                        _ => {
                            let from = next(m.len() + 1);
                            let to = (from + next(24)).min(m.len());
                            let span = m[from..to].to_vec();
                            let at = at.min(m.len());
                            m.splice(at..at, span);
                        }
                    }
                }
                total += 1;
                taken += usize::from(agrees(&m));
            }
        }
        assert!(
            taken * 10 > total,
            "only {taken} of {total} mutations took the fast path"
        );
    }
}
