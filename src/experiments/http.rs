//! The real [`Target`]: a server over HTTP. (Interim: the request engine arrives with the
//! prober; until then requests fail with a clear message.)

use std::time::Duration;

use anyhow::Context;

use super::common::{self, CommonArgs};
use super::engine::{ModelInfo, RequestSpec, Sample, ServerSnapshot, Target};

/// A server over HTTP.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl HttpTarget {
    /// A target for the common flags (checks the URL and the API key variable).
    pub fn new(c: &CommonArgs) -> anyhow::Result<Self> {
        let base_url = common::check_target_url(&c.target)?;
        let api_key = common::api_key(c)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base_url,
            api_key,
            timeout: c.request_timeout,
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut b = self
            .client
            .get(format!("{}{path}", self.base_url))
            .timeout(self.timeout.min(Duration::from_secs(10)));
        if let Some(k) = &self.api_key {
            b = b.bearer_auth(k);
        }
        let resp = b.send().await.with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!("GET {path}: HTTP {}", status.as_u16());
        }
        resp.text()
            .await
            .with_context(|| format!("GET {path}: reading the body"))
    }
}

impl Target for HttpTarget {
    async fn models(&self) -> anyhow::Result<Vec<ModelInfo>> {
        let body = self.get("/v1/models").await?;
        let v: serde_json::Value = serde_json::from_str(&body).context("/v1/models: not JSON")?;
        Ok(v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some(ModelInfo {
                            id: m["id"].as_str()?.to_string(),
                            max_model_len: m["max_model_len"]
                                .as_u64()
                                .map(|n| n.min(u64::from(u32::MAX)) as u32),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn execute(&self, _spec: RequestSpec, _late_by_s: f64) -> Sample {
        Sample::failed(
            "client_error",
            "the request engine is not available in this build",
        )
    }

    async fn metrics(&self) -> anyhow::Result<ServerSnapshot> {
        let body = self.get("/metrics").await?;
        Ok(super::servermetrics::snapshot_from_exposition(&body))
    }
}
