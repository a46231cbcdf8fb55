//! Request parsing and validation with vLLM's rules and error bodies, and the JSON the
//! simulator answers with. Pure functions; no I/O.

use std::fmt::Write as _;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::tokenizer;

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`
    Completion,
    /// `/v1/chat/completions`
    Chat,
}

/// An error response: status and the exact JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: String,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"error":{"message":…,"type":…,"param":…,"code":…}}` as vLLM writes it.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: u16) -> String {
    let param = param.map_or_else(|| "null".to_string(), json_str);
    format!(
        "{{\"error\":{{\"message\":{},\"type\":{},\"param\":{param},\"code\":{code}}}}}",
        json_str(message),
        json_str(kind)
    )
}

impl ApiError {
    fn new(status: StatusCode, message: &str, kind: &str, param: Option<&str>) -> Self {
        Self {
            status,
            body: error_body(message, kind, param, status.as_u16()),
        }
    }

    /// 400 `BadRequestError` with vLLM's `(parameter=…, value=…)` suffix.
    pub fn bad_param(message: &str, param: &str, value: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            &format!("{message} (parameter={param}, value={value})"),
            "BadRequestError",
            Some(param),
        )
    }

    /// 400 `"Bad Request"` shaped like a pydantic validation error.
    pub fn validation(
        err_type: &str,
        loc: &str,
        msg: &str,
        input: &str,
        ctx: Option<&str>,
    ) -> Self {
        let mut m = format!(
            "1 validation error:\n  {{'type': '{err_type}', 'loc': '{loc}', 'msg': '{msg}', 'input': {input}"
        );
        if let Some(ctx) = ctx {
            let _ = write!(m, ", 'ctx': {ctx}");
        }
        m.push('}');
        Self::new(StatusCode::BAD_REQUEST, &m, "Bad Request", Some(loc))
    }

    /// 404 for a model that is not served.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            &format!("The model `{asked}` does not exist. Valid aliases: {served}."),
            "NotFoundError",
            Some("model"),
        )
    }

    /// 503 when the waiting queue is full (`--max-queued-requests`).
    pub fn queue_full(limit: u32) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "The server is overloaded: the request queue is full ({limit} requests waiting, max_num_queued_reqs={limit}). Please try again later."
            ),
            "ServiceUnavailableError",
            None,
        )
    }

    /// An injected error response with `status`.
    pub fn injected(status: StatusCode) -> Self {
        let kind = match status.as_u16() {
            400 => "BadRequestError",
            404 => "NotFoundError",
            429 => "RateLimitError",
            503 => "ServiceUnavailableError",
            500..=599 => "InternalServerError",
            _ => status.canonical_reason().unwrap_or("Error"),
        };
        Self::new(
            status,
            "Simulated fault: injected error response",
            kind,
            None,
        )
    }
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub kind: Kind,
    /// Prompt token ids (template included for chat).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most, after clamping to the context.
    pub max_tokens: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub ignore_eos: bool,
}

fn python_repr(v: &Value) -> String {
    match v {
        Value::Object(m) => format!("<dict of {} items>", m.len()),
        Value::String(s) => format!("'{s}'"),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

fn type_error(field: &str, v: &Value, expected: &str, err_type: &str) -> ApiError {
    ApiError::validation(
        err_type,
        &format!("body.{field}"),
        &format!("Input should be {expected}"),
        &python_repr(v),
        None,
    )
}

/// A boolean with pydantic's lax coercions ("yes", "true", 1, … as a real server accepts).
fn get_bool(m: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(false),
        Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(true),
        Some(Value::String(t)) => match t.to_ascii_lowercase().as_str() {
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
            _ => Err(type_error(
                field,
                &Value::String(t.clone()),
                "a valid boolean, unable to interpret input",
                "bool_parsing",
            )),
        },
        Some(v) => Err(type_error(field, v, "a valid boolean", "bool_type")),
    }
}

/// An integer with pydantic's lax coercions (`"5"` and `5.0` are 5).
fn get_int(m: &Map<String, Value>, field: &str) -> Result<Option<i64>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                Some(f) if f.is_finite() && f.fract() != 0.0 => Err(type_error(
                    field,
                    &Value::Number(n.clone()),
                    "a valid integer, got a number with a fractional part",
                    "int_from_float",
                )),
                _ => Err(type_error(
                    field,
                    &Value::Number(n.clone()),
                    "a valid integer",
                    "int_type",
                )),
            }
        }
        Some(Value::String(t)) => t.trim().parse::<i64>().map(Some).map_err(|_| {
            type_error(
                field,
                &Value::String(t.clone()),
                "a valid integer, unable to parse string as an integer",
                "int_parsing",
            )
        }),
        Some(v) => Err(type_error(field, v, "a valid integer", "int_type")),
    }
}

/// Byte offset of a serde_json error, from its line and column.
fn error_offset(body: &[u8], e: &serde_json::Error) -> usize {
    let mut line = 1;
    let mut off = 0;
    for (i, b) in body.iter().enumerate() {
        if line == e.line() {
            off = i;
            break;
        }
        if *b == b'\n' {
            line += 1;
        }
    }
    (off + e.column().saturating_sub(1)).min(body.len())
}

/// Parses and validates a request body against the served model and the context limit.
pub fn parse(
    kind: Kind,
    body: &[u8],
    served_model: &str,
    max_model_len: u32,
) -> Result<GenRequest, ApiError> {
    let m = parse_object(body)?;
    check_fields(kind, &m, served_model)?;
    let stream = get_bool(&m, "stream")?;
    let ignore_eos = get_bool(&m, "ignore_eos")?;
    let (include_usage, continuous_usage) = match m.get("stream_options") {
        None | Some(Value::Null) => (false, false),
        Some(Value::Object(o)) => (
            get_bool(o, "include_usage")?,
            get_bool(o, "continuous_usage_stats")?,
        ),
        Some(v) => {
            return Err(type_error(
                "stream_options",
                v,
                "a valid dictionary",
                "dict_type",
            ));
        }
    };
    if let Some(n) = get_int(&m, "n")?
        && n != 1
    {
        return Err(ApiError::bad_param(
            "The simulator supports n=1 only.",
            "n",
            n,
        ));
    }
    let mut requested = get_int(&m, "max_tokens")?;
    if kind == Kind::Chat
        && let Some(mct) = get_int(&m, "max_completion_tokens")?
    {
        requested = Some(mct);
    }

    let lim = PromptLimits { max_model_len };
    let mut prompt: Vec<u32> = Vec::new();
    let text_prompt = match kind {
        Kind::Completion => completion_prompt(&m, lim, &mut prompt)?,
        Kind::Chat => {
            chat_prompt(&m, lim, &mut prompt)?;
            true
        }
    };
    let effective = check_lengths(kind, &prompt, text_prompt, requested, max_model_len)?;
    Ok(GenRequest {
        kind,
        prompt,
        max_tokens: effective as u32,
        stream,
        include_usage,
        continuous_usage,
        ignore_eos,
    })
}

/// The body as a JSON object, with FastAPI's errors for invalid JSON and for a non-object.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let off = error_offset(body, &e);
        ApiError::validation(
            "json_invalid",
            &format!("body.{off}"),
            "JSON decode error",
            "'<dict of 0 items>'",
            Some("{'error': 'Expecting value'}"),
        )
    })?;
    let Value::Object(m) = v else {
        return Err(ApiError::validation(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            &python_repr(&v),
            None,
        ));
    };
    Ok(m)
}

/// The required field (`prompt` or `messages`) is there, and `model`, if given, is ours.
fn check_fields(kind: Kind, m: &Map<String, Value>, served_model: &str) -> Result<(), ApiError> {
    let required = match kind {
        Kind::Completion => "prompt",
        Kind::Chat => "messages",
    };
    if kind == Kind::Completion && m.get("prompt").is_none_or(Value::is_null) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
            "BadRequestError",
            Some("prompt"),
        ));
    }
    if m.get(required).is_none_or(Value::is_null) {
        return Err(ApiError::validation(
            "missing",
            &format!("body.{required}"),
            "Field required",
            &format!("'<dict of {} items>'", m.len()),
            None,
        ));
    }
    match m.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == served_model => {}
        Some(Value::String(s)) => return Err(ApiError::unknown_model(s, served_model)),
        Some(v) => return Err(type_error("model", v, "a valid string", "string_type")),
    }
    Ok(())
}

/// vLLM's prompt limits: text longer than 49 chars per allowed token is refused before
/// tokenizing; tokenization stops at max_model_len + 1.
#[derive(Debug, Clone, Copy)]
struct PromptLimits {
    max_model_len: u32,
}

impl PromptLimits {
    /// Tokens encoded at most.
    fn tokens(self) -> usize {
        self.max_model_len as usize + 1
    }

    fn check_chars(self, chars: u64) -> Result<(), ApiError> {
        let max_model_len = self.max_model_len;
        let char_limit = 49u64 * u64::from(max_model_len);
        if chars > char_limit {
            return Err(ApiError::bad_param(
                &format!(
                    "This model's maximum context length is {max_model_len} tokens. However, your prompt contains {chars} characters (more than {char_limit} characters, which is the upper bound for {max_model_len} input tokens). Please reduce the length of the input prompt."
                ),
                "input_text",
                chars,
            ));
        }
        Ok(())
    }
}

/// A completion's `prompt` (text, or token ids) into `prompt`; whether it was text.
fn completion_prompt(
    m: &Map<String, Value>,
    lim: PromptLimits,
    prompt: &mut Vec<u32>,
) -> Result<bool, ApiError> {
    let mut text = true;
    let p = &m["prompt"];
    let single = match p {
        Value::Array(a) if a.len() == 1 && !a[0].is_number() => &a[0],
        other => other,
    };
    match single {
        Value::String(s) => {
            lim.check_chars(s.chars().count() as u64)?;
            tokenizer::encode_prompt(s, lim.tokens(), prompt);
        }
        Value::Array(a) if a.iter().all(Value::is_number) => {
            text = false;
            for t in a {
                match t.as_u64() {
                    Some(id) if id < u64::from(tokenizer::VOCAB_SIZE) => prompt.push(id as u32),
                    _ => {
                        return Err(ApiError::bad_param(
                            &format!(
                                "Token id {t} is out of vocabulary (vocab size {}).",
                                tokenizer::VOCAB_SIZE
                            ),
                            "prompt",
                            t,
                        ));
                    }
                }
            }
        }
        v => {
            return Err(type_error(
                "prompt",
                v,
                "a valid string or a list of token ids (one prompt)",
                "string_type",
            ));
        }
    }
    Ok(text)
}

/// A chat's `messages` (their text content, joined by the chat template) into `prompt`.
fn chat_prompt(
    m: &Map<String, Value>,
    lim: PromptLimits,
    prompt: &mut Vec<u32>,
) -> Result<(), ApiError> {
    let Value::Array(msgs) = &m["messages"] else {
        return Err(type_error(
            "messages",
            &m["messages"],
            "a valid list",
            "list_type",
        ));
    };
    let mut chars = 0u64;
    let mut texts = Vec::with_capacity(msgs.len());
    for (i, msg) in msgs.iter().enumerate() {
        let content = msg.get("content").unwrap_or(&Value::Null);
        let mut t = String::new();
        match content {
            Value::String(s) => t.push_str(s),
            Value::Array(parts) => {
                for part in parts {
                    if let Some(s) = part.get("text").and_then(Value::as_str) {
                        t.push_str(s);
                        t.push(' ');
                    }
                }
            }
            Value::Null => {}
            v => {
                return Err(type_error(
                    &format!("messages.{i}.content"),
                    v,
                    "a valid string",
                    "string_type",
                ));
            }
        }
        if msg.get("role").and_then(Value::as_str).is_none() {
            return Err(ApiError::validation(
                "missing",
                &format!("body.messages.{i}.role"),
                "Field required",
                &python_repr(msg),
                None,
            ));
        }
        chars += t.chars().count() as u64;
        texts.push(t);
    }
    lim.check_chars(chars)?;
    tokenizer::encode_chat(texts.iter().map(String::as_str), lim.tokens(), prompt);
    Ok(())
}

/// The prompt within `max_model_len`, and the effective `max_tokens` (at least 1, within the
/// room the prompt leaves).
fn check_lengths(
    kind: Kind,
    prompt: &[u32],
    text_prompt: bool,
    requested: Option<i64>,
    max_model_len: u32,
) -> Result<i64, ApiError> {
    let plen = prompt.len() as u64;
    let max_len = u64::from(max_model_len);
    if plen > max_len {
        let shown = if text_prompt { max_len + 1 } else { plen };
        return Err(ApiError::bad_param(
            &format!(
                "This model's maximum context length is {max_model_len} tokens. However, your prompt contains at least {shown} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt."
            ),
            "input_tokens",
            shown,
        ));
    }
    if let Some(r) = requested
        && r > max_len as i64
    {
        return Err(ApiError::bad_param(
            &format!(
                "max_tokens={r} cannot be greater than max_model_len={max_model_len}. Please request fewer output tokens."
            ),
            "max_tokens",
            r,
        ));
    }
    let room = (max_len - plen) as i64;
    let default = match kind {
        Kind::Completion => 16,
        Kind::Chat => room,
    };
    let effective = requested.unwrap_or(default).min(room);
    if effective < 1 {
        return Err(ApiError::bad_param(
            &format!("max_tokens must be at least 1, got {effective}."),
            "max_tokens",
            effective,
        ));
    }
    if prompt.is_empty() {
        return Err(ApiError::bad_param(
            "The prompt must contain at least one token.",
            "prompt",
            0,
        ));
    }
    Ok(effective)
}

/// The per-response constants of a reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: Kind,
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    pub prompt_tokens: u32,
    pub include_usage: bool,
    pub continuous_usage: bool,
    /// Seed of the generated words.
    pub text_seed: u64,
}

/// Where the `sim_sent_ns` stamp goes, if any.
pub type Stamp = Option<u64>;

impl Reply {
    fn head(&self, out: &mut String) {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        let _ = write!(
            out,
            "{{\"id\":\"{}\",\"object\":\"{object}\",\"created\":{},\"model\":{},",
            self.id,
            self.created,
            json_str(&self.model)
        );
    }

    fn usage(&self, out: &mut String, completion: u32, details: bool) {
        let _ = write!(
            out,
            "\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{completion}{}}}",
            self.prompt_tokens,
            self.prompt_tokens + completion,
            if details {
                ",\"completion_tokens_details\":null"
            } else {
                ""
            }
        );
    }

    fn tail(out: &mut String, stamp: Stamp) {
        if let Some(ns) = stamp {
            let _ = write!(out, ",\"sim_sent_ns\":{ns}");
        }
        out.push_str("}\n\n");
    }

    /// Appends the chat role chunk (`delta: {role, content: ""}`).
    pub fn role_event(&self, out: &mut String, stamp: Stamp) {
        out.push_str("data: ");
        self.head(out);
        out.push_str("\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]");
        if self.continuous_usage {
            out.push(',');
            self.usage(out, 0, true);
        }
        out.push_str(",\"prompt_token_ids\":null,\"prompt_text\":null");
        Self::tail(out, stamp);
    }

    /// Appends the event of token `index` (0-based); `finish` on the last one.
    pub fn token_event(&self, out: &mut String, index: u32, finish: Option<&str>, stamp: Stamp) {
        out.push_str("data: ");
        self.head(out);
        let word = tokenizer::word(self.text_seed, index);
        let fr = finish.map_or_else(|| "null".to_string(), |f| format!("\"{f}\""));
        match self.kind {
            Kind::Completion => {
                let _ = write!(
                    out,
                    "\"choices\":[{{\"index\":0,\"text\":\" {word}\",\"logprobs\":null,\"finish_reason\":{fr},\"stop_reason\":null,\"prompt_token_ids\":null,\"token_ids\":null}}]"
                );
            }
            Kind::Chat => {
                let _ = write!(
                    out,
                    "\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" {word}\"}},\"logprobs\":null,\"finish_reason\":{fr},{}\"token_ids\":null}}]",
                    if finish.is_some() {
                        "\"stop_reason\":null,"
                    } else {
                        ""
                    }
                );
            }
        }
        if self.continuous_usage {
            // chat chunks carry `completion_tokens_details: null`, completions chunks do not
            // (both as a real 0.32 server sends them)
            out.push(',');
            self.usage(out, index + 1, self.kind == Kind::Chat);
        }
        if finish.is_some() && !self.include_usage {
            let _ = write!(out, ",\"system_fingerprint\":\"{}\"", self.fingerprint);
        }
        Self::tail(out, stamp);
    }

    /// Appends the `choices: []` usage event.
    pub fn usage_event(&self, out: &mut String, completion: u32, stamp: Stamp) {
        out.push_str("data: ");
        self.head(out);
        out.push_str("\"choices\":[],");
        self.usage(out, completion, false);
        let _ = write!(out, ",\"system_fingerprint\":\"{}\"", self.fingerprint);
        Self::tail(out, stamp);
    }

    /// The whole non-streaming body for `completion` tokens ending with `finish`.
    pub fn full_body(&self, completion: u32, finish: &str) -> String {
        let mut text = String::with_capacity(completion as usize * 8);
        for i in 0..completion {
            text.push(' ');
            text.push_str(tokenizer::word(self.text_seed, i));
        }
        let usage = format!(
            "\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{completion},\"prompt_tokens_details\":null,\"completion_tokens_details\":null}}",
            self.prompt_tokens,
            self.prompt_tokens + completion
        );
        let mut out = String::with_capacity(text.len() + 800);
        match self.kind {
            Kind::Completion => {
                let _ = write!(
                    out,
                    "{{\"id\":\"{}\",\"object\":\"text_completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"text\":{},\"logprobs\":null,\"finish_reason\":\"{finish}\",\"stop_reason\":null,\"token_ids\":null,\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"routed_experts\":null}}],\"service_tier\":null,\"system_fingerprint\":\"{}\",{usage},\"kv_transfer_params\":null,\"ec_transfer_params\":null,\"metrics\":null}}",
                    self.id,
                    self.created,
                    json_str(&self.model),
                    json_str(&text),
                    self.fingerprint
                );
            }
            Kind::Chat => {
                let _ = write!(
                    out,
                    "{{\"id\":\"{}\",\"object\":\"chat.completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{},\"refusal\":null,\"annotations\":null,\"audio\":null,\"function_call\":null,\"reasoning\":null}},\"logprobs\":null,\"finish_reason\":\"{finish}\",\"stop_reason\":null,\"token_ids\":null,\"routed_experts\":null}}],\"service_tier\":null,\"system_fingerprint\":\"{}\",{usage},\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"prompt_text\":null,\"kv_transfer_params\":null,\"ec_transfer_params\":null,\"metrics\":null}}",
                    self.id,
                    self.created,
                    json_str(&self.model),
                    json_str(&text),
                    self.fingerprint
                );
            }
        }
        out
    }
}

/// vLLM's in-stream error event (`json.dumps` spacing), then nothing else but `[DONE]`.
pub fn error_event(out: &mut String, message: &str, code: u16) {
    let _ = write!(
        out,
        "data: {{\"error\": {{\"message\": {}, \"type\": \"InternalServerError\", \"param\": null, \"code\": {code}}}}}\n\n",
        json_str(message)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> String {
        let v: Vec<String> = (0..n).map(|i| (i % 100).to_string()).collect();
        v.join(",")
    }

    #[test]
    fn context_rules_match_vllm() {
        let p = |body: String| parse(Kind::Completion, body.as_bytes(), "m", 2048);
        // exactly max_model_len with the completions default of 16 -> clamp to 0 -> 400
        let e = p(format!("{{\"prompt\":[{}]}}", ids(2048))).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.body.contains("max_tokens must be at least 1, got 0."),
            "{}",
            e.body
        );
        let ok = p(format!("{{\"prompt\":[{}]}}", ids(2047))).unwrap();
        assert_eq!(ok.max_tokens, 1);
        let e = p(format!("{{\"prompt\":[{}]}}", ids(2049))).unwrap_err();
        assert!(e.body.contains("at least 2049 input tokens"), "{}", e.body);
        let e = p(format!("{{\"prompt\":\"{}\"}}", "w ".repeat(3000))).unwrap_err();
        assert!(
            e.body.contains("(parameter=input_tokens, value=2049)"),
            "{}",
            e.body
        );
        let e = p(format!("{{\"prompt\":\"{}\"}}", "x".repeat(200_000))).unwrap_err();
        assert!(
            e.body
                .contains("contains 200000 characters (more than 100352"),
            "{}",
            e.body
        );
        let e = p("{\"prompt\":\"hi\",\"max_tokens\":5000}".into()).unwrap_err();
        assert!(
            e.body
                .contains("max_tokens=5000 cannot be greater than max_model_len=2048")
        );
        let e = p("{\"prompt\":\"hi\",\"max_tokens\":-1}".into()).unwrap_err();
        assert!(
            e.body
                .contains("at least 1, got -1. (parameter=max_tokens, value=-1)")
        );
        let ok = p(format!("{{\"prompt\":[{}],\"max_tokens\":100}}", ids(1991))).unwrap();
        assert_eq!(ok.max_tokens, 57);
    }

    #[test]
    fn bad_requests_are_shaped_like_pydantic() {
        let e = parse(Kind::Chat, b"{\"model\":\"m\",\"max_tokens\":3}", "m", 64).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(
            e.body,
            "{\"error\":{\"message\":\"1 validation error:\\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', 'input': '<dict of 2 items>'}\",\"type\":\"Bad Request\",\"param\":\"body.messages\",\"code\":400}}"
        );
        let e = parse(Kind::Chat, b"{\"model\": \"m\", \"messages\": [", "m", 64).unwrap_err();
        assert!(e.body.contains("json_invalid"), "{}", e.body);
        assert!(e.body.contains("\"type\":\"Bad Request\""));
        let e = parse(
            Kind::Completion,
            b"{\"model\":\"nope\",\"prompt\":\"x\"}",
            "m",
            64,
        )
        .unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(
            e.body,
            "{\"error\":{\"message\":\"The model `nope` does not exist. Valid aliases: m.\",\"type\":\"NotFoundError\",\"param\":\"model\",\"code\":404}}"
        );
        // pydantic's lax coercions, as a live 0.32 server showed
        let r = parse(
            Kind::Completion,
            br#"{"prompt":"x","stream":"yes","max_tokens":"3"}"#,
            "m",
            64,
        )
        .unwrap();
        assert!(r.stream);
        assert_eq!(r.max_tokens, 3);
        let e = parse(
            Kind::Completion,
            br#"{"prompt":"hi","max_tokens":"abc"}"#,
            "m",
            64,
        )
        .unwrap_err();
        assert_eq!(
            e.body,
            r#"{"error":{"message":"1 validation error:\n  {'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': 'Input should be a valid integer, unable to parse string as an integer', 'input': 'abc'}","type":"Bad Request","param":"body.max_tokens","code":400}}"#
        );
        let e = parse(
            Kind::Completion,
            br#"{"prompt":"x","stream":"maybe"}"#,
            "m",
            64,
        )
        .unwrap_err();
        assert!(e.body.contains("body.stream"));
        let e = parse(Kind::Completion, br#"{"max_tokens":2}"#, "m", 64).unwrap_err();
        assert_eq!(
            e.body,
            r#"{"error":{"message":"Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)","type":"BadRequestError","param":"prompt","code":400}}"#
        );
    }

    #[test]
    fn chat_template_overhead_is_eleven_for_one_message() {
        let r = parse(
            Kind::Chat,
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"a b c\"}],\"max_tokens\":4}",
            "m",
            64,
        )
        .unwrap();
        assert_eq!(r.prompt.len(), 14);
        let r = parse(
            Kind::Chat,
            b"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a b\"}]}]}",
            "m",
            64,
        )
        .unwrap();
        assert_eq!(r.prompt.len(), 13);
        assert_eq!(r.max_tokens, 64 - 13, "chat default fills the context");
    }
}
