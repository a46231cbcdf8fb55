//! Extracts what the prober needs from one OpenAI-style JSON event (a streamed chunk or a whole
//! non-streamed response, or an error body) without building a `serde_json::Value`.
//!
//! The event is deserialised into small borrowed structs: generated text is never copied (a
//! visitor only notes whether it is non-empty), `choices` is folded while it is read (no `Vec`),
//! and every other field is skipped by serde. So a content chunk costs one pass over its bytes
//! and no allocation.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What one event says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventSummary {
    /// It carries generated output: non-empty `text` (completions), `content`,
    /// `reasoning_content` or `reasoning` (chat), or at least one tool call.
    pub content: bool,
    /// `choices[].finish_reason`, when one is set.
    pub finish_reason: Option<String>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u32>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u32>,
    /// An error object (`{"error": {...}}`, `{"error": "..."}` or `{"object": "error", ...}`).
    pub error: Option<ErrorInfo>,
}

/// An error the server reported in a body or an event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ErrorInfo {
    pub message: String,
    pub param: Option<String>,
    pub kind: Option<String>,
}

impl ErrorInfo {
    /// True for vLLM's context-length rejection: `param` is `input_tokens` or `input_text`, or
    /// the message mentions the maximum context length (older vLLM and other servers).
    pub fn is_context_length(&self) -> bool {
        if matches!(self.param.as_deref(), Some("input_tokens" | "input_text")) {
            return true;
        }
        let m = self.message.to_ascii_lowercase();
        m.contains("maximum context length") || m.contains("context length exceeded")
    }
}

/// Why an event could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

/// Parses one event's JSON: the common chunk shapes through the one-pass scanner
/// ([`super::fastscan`]), everything else (errors included) through serde.
pub fn parse(data: &[u8]) -> Result<EventSummary, ParseError> {
    match super::fastscan::scan(data) {
        Some(summary) => Ok(summary),
        None => parse_serde(data),
    }
}

/// Parses one event's JSON with serde: the reference reader, for any shape.
pub fn parse_serde(data: &[u8]) -> Result<EventSummary, ParseError> {
    let raw: RawEvent<'_> =
        serde_json::from_slice(data).map_err(|e| ParseError(short(&e.to_string())))?;
    let mut out = EventSummary {
        content: raw.choices.content,
        finish_reason: raw.choices.finish_reason,
        prompt_tokens: raw.usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: raw.usage.as_ref().and_then(|u| u.completion_tokens),
        error: None,
    };
    if let Some(e) = raw.error {
        out.error = Some(match e {
            RawError::Text(m) => ErrorInfo {
                message: m,
                ..Default::default()
            },
            RawError::Obj(o) => ErrorInfo {
                message: o.message.unwrap_or_default(),
                param: o.param.and_then(scalar_string),
                kind: o.kind,
            },
        });
    } else if raw.object.as_deref() == Some("error") {
        out.error = Some(ErrorInfo {
            message: raw.message.unwrap_or_default(),
            param: raw.param.and_then(scalar_string),
            kind: raw.kind,
        });
    }
    Ok(out)
}

/// Reads an error body of a non-2xx response; `None` when it is not JSON of a known shape.
pub fn parse_error_body(body: &[u8]) -> Option<ErrorInfo> {
    parse(body).ok().and_then(|e| e.error)
}

/// Shortens a message for a record or a log line (never more than 200 characters).
pub fn short(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn scalar_string(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(default)]
    choices: Choices,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<RawError>,
    #[serde(default, borrow)]
    object: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawError {
    Text(String),
    Obj(RawErrorObj),
}

#[derive(Deserialize)]
struct RawErrorObj {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// `choices`, folded as it is read.
#[derive(Default)]
struct Choices {
    content: bool,
    finish_reason: Option<String>,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of choices or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut out = Choices::default();
                while let Some(c) = seq.next_element::<Choice<'de>>()? {
                    out.content |= c.text.0
                        || c.delta.as_ref().is_some_and(Delta::has_output)
                        || c.message.as_ref().is_some_and(Delta::has_output);
                    if let Some(r) = c.finish_reason {
                        out.finish_reason = Some(r.into_owned());
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    text: NonEmpty,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default, borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: NonEmpty,
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
    #[serde(default)]
    tool_calls: NonEmpty,
}

impl Delta {
    fn has_output(&self) -> bool {
        self.content.0 || self.reasoning_content.0 || self.reasoning.0 || self.tool_calls.0
    }
}

/// True for a non-empty string or a non-empty array; false for null, `""`, `[]` or anything
/// else. Never copies the value.
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!v.is_empty()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_none<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<NonEmpty, D2::Error> {
                NonEmpty::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NonEmpty, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(false))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_chunk() {
        let e = parse(br#"{"id":"x","choices":[{"index":0,"text":"oR","logprobs":null,"finish_reason":null,"stop_reason":null}]}"#).unwrap();
        assert!(e.content);
        assert_eq!(e.finish_reason, None);
        assert_eq!(e.completion_tokens, None);
    }

    #[test]
    fn role_only_and_empty_chunks_are_not_content() {
        let e = parse(br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#).unwrap();
        assert!(!e.content);
        let e = parse(br#"{"choices":[{"index":0,"text":"","finish_reason":null}]}"#).unwrap();
        assert!(!e.content);
        let e = parse(br#"{"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#).unwrap();
        assert!(!e.content);
    }

    #[test]
    fn reasoning_tool_calls_and_escapes_count() {
        for j in [
            r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning":"hm"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"\n\u00e9"}}]}"#,
        ] {
            assert!(parse(j.as_bytes()).unwrap().content, "{j}");
        }
    }

    #[test]
    fn finish_and_usage() {
        let e = parse(br#"{"choices":[],"usage":{"prompt_tokens":6,"total_tokens":14,"completion_tokens":8}}"#).unwrap();
        assert!(!e.content);
        assert_eq!((e.prompt_tokens, e.completion_tokens), (Some(6), Some(8)));
        let e = parse(br#"{"choices":[{"text":"x","finish_reason":"length"}]}"#).unwrap();
        assert_eq!(e.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn errors_in_three_shapes() {
        let e = parse(
            br#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#,
        )
        .unwrap();
        assert_eq!(e.error.unwrap().message, "boom");
        let e = parse(br#"{"error":"plain"}"#).unwrap();
        assert_eq!(e.error.unwrap().message, "plain");
        let e = parse(br#"{"object":"error","message":"old","type":"BadRequestError","param":"input_tokens","code":400}"#).unwrap();
        let err = e.error.unwrap();
        assert!(err.is_context_length());
        assert_eq!(err.message, "old");
    }

    #[test]
    fn malformed() {
        assert!(parse(b"{\"choices\":[").is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"choices":{"a":1}}"#).is_err());
    }

    #[test]
    fn short_keeps_char_boundaries() {
        let s = "é".repeat(300);
        let t = short(&s);
        assert!(t.chars().count() <= 201);
    }
}
