//! Model discovery (`GET /v1/models`) and the server's tokenizer (`POST /tokenize`).

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use super::event;

/// One model the server advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    /// vLLM's `max_model_len` (absent on servers that do not publish it).
    pub max_model_len: Option<u32>,
}

/// Why discovery or tokenisation failed. Messages never hold the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("HTTP {status} from {path}: {message}")]
    Http {
        status: u16,
        path: &'static str,
        message: String,
    },
    #[error("unexpected response from {path}: {message}")]
    BadResponse { path: &'static str, message: String },
    #[error("the server lists no models")]
    NoModels,
    #[error("model {wanted:?} is not served (served: {served})")]
    ModelNotFound { wanted: String, served: String },
}

/// Every value of [`DiscoveryError::reason`], plus `config` (the target's own settings are
/// unusable, e.g. an unreadable API key): the `reason` label of
/// `vllm_sentinel_target_discovery_failures_total`.
pub const FAILURE_REASONS: [&str; 7] = [
    "connect",
    "timeout",
    "http_status",
    "malformed",
    "no_models",
    "model_not_found",
    "config",
];

impl DiscoveryError {
    /// The bounded failure class (one of [`FAILURE_REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            DiscoveryError::Unreachable(_) => "connect",
            DiscoveryError::Timeout(_) => "timeout",
            DiscoveryError::Http { .. } => "http_status",
            DiscoveryError::BadResponse { .. } => "malformed",
            DiscoveryError::NoModels => "no_models",
            DiscoveryError::ModelNotFound { .. } => "model_not_found",
        }
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    max_model_len: Option<u64>,
    /// vLLM: the base model of a LoRA adapter (`null` for a base model).
    #[serde(default)]
    parent: Option<String>,
}

/// `Bearer <key>` for an API key.
pub fn bearer(api_key: Option<&str>) -> Option<String> {
    api_key.map(|k| format!("Bearer {k}"))
}

fn auth(b: reqwest::RequestBuilder, authorization: Option<&str>) -> reqwest::RequestBuilder {
    match authorization.and_then(|v| HeaderValue::from_str(v).ok()) {
        Some(mut v) => {
            v.set_sensitive(true);
            b.header(AUTHORIZATION, v)
        }
        None => b,
    }
}

async fn get_json(
    b: reqwest::RequestBuilder,
    path: &'static str,
    timeout: Duration,
) -> Result<Vec<u8>, DiscoveryError> {
    let resp = b.timeout(timeout).send().await.map_err(|e| {
        let timeout = e.is_timeout();
        let m = event::short(&crate::errchain::reqwest(&e));
        if timeout {
            DiscoveryError::Timeout(m)
        } else {
            DiscoveryError::Unreachable(m)
        }
    })?;
    let status = resp.status().as_u16();
    let body = crate::httpcap::read_capped(resp, crate::httpcap::MAX_JSON_BODY_BYTES)
        .await
        .map_err(|e| match e {
            crate::httpcap::CapError::TooLarge { .. } => DiscoveryError::BadResponse {
                path,
                message: e.to_string(),
            },
            crate::httpcap::CapError::Body(m) => DiscoveryError::Unreachable(event::short(&m)),
        })?;
    if !(200..300).contains(&status) {
        let message = event::parse_error_body(&body)
            .map(|e| e.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(DiscoveryError::Http {
            status,
            path,
            message: event::short(&message),
        });
    }
    Ok(body)
}

/// `GET {base}/v1/models` with an API key (sent as a Bearer token).
pub async fn list_models(
    client: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<Vec<ModelInfo>, DiscoveryError> {
    Ok(
        list_with(client, base_url, bearer(api_key).as_deref(), timeout)
            .await?
            .models,
    )
}

/// One read of `/v1/models`: the models with their limits, and every entry with its `parent`
/// (LoRA adapters have one), both from the same body.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub models: Vec<ModelInfo>,
    pub listed: Vec<crate::workload::lora::Listed>,
}

/// `GET {base}/v1/models` with a whole `Authorization` value (`Bearer …`, `Basic …`), read once.
pub async fn list_with(
    client: &reqwest::Client,
    base_url: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<Listing, DiscoveryError> {
    let b = auth(client.get(format!("{base_url}/v1/models")), authorization);
    let body = get_json(b, "/v1/models", timeout).await?;
    parse_listing(&body)
}

/// Parses a `/v1/models` body into its models and its entries with their parents.
pub fn parse_listing(body: &[u8]) -> Result<Listing, DiscoveryError> {
    let list: ModelList =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::BadResponse {
            path: "/v1/models",
            message: event::short(&e.to_string()),
        })?;
    let mut out = Listing::default();
    for m in list.data {
        out.models.push(ModelInfo {
            id: m.id.clone(),
            max_model_len: m.max_model_len.map(|n| n.min(u64::from(u32::MAX)) as u32),
        });
        out.listed.push(crate::workload::lora::Listed {
            id: m.id,
            parent: m.parent,
        });
    }
    Ok(out)
}

/// The model to probe: `wanted` when given (it must be listed, unless the server lists none
/// of that name but the caller insists — then its limit is unknown), else the first listed.
/// `authorization` is the whole `Authorization` value (`Bearer …`, `Basic …`).
pub async fn discover_model(
    client: &reqwest::Client,
    base_url: &str,
    authorization: Option<&str>,
    wanted: Option<&str>,
    timeout: Duration,
) -> Result<ModelInfo, DiscoveryError> {
    Ok(
        discover_listed(client, base_url, authorization, wanted, timeout)
            .await?
            .0,
    )
}

/// [`discover_model`], with every entry of the same read and its parent (for the `lora` source).
pub async fn discover_listed(
    client: &reqwest::Client,
    base_url: &str,
    authorization: Option<&str>,
    wanted: Option<&str>,
    timeout: Duration,
) -> Result<(ModelInfo, Vec<crate::workload::lora::Listed>), DiscoveryError> {
    let l = list_with(client, base_url, authorization, timeout).await?;
    Ok((pick_model(l.models, wanted)?, l.listed))
}

/// Chooses from a model list (see [`discover_model`]).
pub fn pick_model(
    models: Vec<ModelInfo>,
    wanted: Option<&str>,
) -> Result<ModelInfo, DiscoveryError> {
    match wanted {
        Some(w) => match models.iter().find(|m| m.id == w) {
            Some(m) => Ok(m.clone()),
            None => Err(DiscoveryError::ModelNotFound {
                wanted: w.to_string(),
                served: models
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        },
        None => models.into_iter().next().ok_or(DiscoveryError::NoModels),
    }
}

/// What to tokenise.
#[derive(Debug, Clone)]
pub enum TokenizeInput<'a> {
    /// A plain prompt (completions).
    Prompt(&'a str),
    /// One user message, with the chat template and generation prompt applied.
    ChatUser(&'a str),
}

/// The answer of `/tokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Tokenized {
    pub count: u32,
    #[serde(default)]
    pub max_model_len: Option<u32>,
    #[serde(default)]
    pub tokens: Vec<u32>,
}

/// `POST {base}/tokenize` (vLLM); `authorization` is the whole `Authorization` value.
pub async fn tokenize(
    client: &reqwest::Client,
    base_url: &str,
    authorization: Option<&str>,
    model: &str,
    input: TokenizeInput<'_>,
    timeout: Duration,
) -> Result<Tokenized, DiscoveryError> {
    let body = match input {
        TokenizeInput::Prompt(p) => serde_json::json!({"model": model, "prompt": p}),
        TokenizeInput::ChatUser(t) => serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": t}],
            "add_generation_prompt": true,
        }),
    };
    let b = auth(client.post(format!("{base_url}/tokenize")), authorization).json(&body);
    let body = get_json(b, "/tokenize", timeout).await?;
    serde_json::from_slice(&body).map_err(|e| DiscoveryError::BadResponse {
        path: "/tokenize",
        message: event::short(&e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_reads_as_a_sentence() {
        let e =
            DiscoveryError::Unreachable("connect error: Connection refused (os error 111)".into());
        assert_eq!(
            e.to_string(),
            "cannot reach the server: connect error: Connection refused (os error 111)"
        );
        assert_eq!(e.reason(), "connect");
    }

    #[test]
    fn lists_lora_adapters_with_their_parent() {
        use crate::workload::lora::Listed;
        let base = parse_listing(include_bytes!(
            "../../tests/data/vllm-0.32.0-cpu/v1_models.body"
        ))
        .unwrap()
        .listed;
        assert_eq!(
            base,
            vec![Listed {
                id: "tiny".into(),
                parent: None
            }]
        );
        // vLLM lists an adapter of --lora-modules as a model whose parent is the base model.
        let body = br#"{"object":"list","data":[{"id":"tiny","object":"model","root":"/models/tiny","parent":null,"max_model_len":2048},{"id":"sql-lora","object":"model","root":"/adapters/sql","parent":"tiny","max_model_len":null}]}"#;
        let l = parse_listing(body).unwrap().listed;
        assert_eq!(l[1].parent.as_deref(), Some("tiny"));
        assert_eq!(
            crate::workload::lora::choose(&l, &[]).unwrap(),
            vec![std::sync::Arc::<str>::from("sql-lora")]
        );
        assert!(parse_listing(b"{}").is_err());
    }

    #[test]
    fn parses_vllm_models_and_tokenize() {
        let m = parse_listing(include_bytes!(
            "../../tests/data/vllm-0.32.0-cpu/v1_models.body"
        ))
        .unwrap()
        .models;
        assert_eq!(
            m,
            vec![ModelInfo {
                id: "tiny".into(),
                max_model_len: Some(2048)
            }]
        );
        let t: Tokenized = serde_json::from_slice(include_bytes!(
            "../../tests/data/vllm-0.32.0-cpu/tokenize.json"
        ))
        .unwrap();
        assert_eq!(t.count, 6);
        assert_eq!(t.tokens.len(), 6);
        assert_eq!(t.max_model_len, Some(2048));
    }

    #[test]
    fn pick() {
        let ms = vec![
            ModelInfo {
                id: "a".into(),
                max_model_len: None,
            },
            ModelInfo {
                id: "b".into(),
                max_model_len: Some(4),
            },
        ];
        assert_eq!(pick_model(ms.clone(), None).unwrap().id, "a");
        assert_eq!(
            pick_model(ms.clone(), Some("b")).unwrap().max_model_len,
            Some(4)
        );
        assert!(matches!(
            pick_model(ms, Some("c")),
            Err(DiscoveryError::ModelNotFound { .. })
        ));
        assert_eq!(pick_model(vec![], None), Err(DiscoveryError::NoModels));
        assert!(parse_listing(b"{}").is_err());
    }
}
