//! One read of a server's `/metrics`, outside the scrape loops: the same fetch (timeout, body
//! cap, content-type check, no proxy, same-origin redirects only), the same parser and the same
//! normalisation as the daemon, returned as one [`Snapshot`]. The one-shot experiments
//! (`sweep`, `kv-scale`) read the server's gauges through it, so a gauge in their reports is the
//! daemon's gauge, for every engine the alias table knows.

use std::time::Duration;

use reqwest::header::HeaderValue;

use super::expfmt::{self, Exposition, Format};
use super::export::FailReason;
use super::normalize::{self, Engine, ServerSeries};
use super::scraper::{self, Failure};

/// The KV-cache geometry an engine publishes in its cache-config family (vLLM
/// `vllm:cache_config_info` `block_size` × `num_gpu_blocks`, SGLang `sglang:cache_config_info`
/// `page_size` × `num_pages`), of the first engine that gives both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheGeometry {
    /// Tokens per block (page).
    pub block_size: u64,
    /// Blocks (pages) of the cache.
    pub num_blocks: u64,
}

/// One normalised body.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The daemon's normalised series of this body.
    pub series: ServerSeries,
    /// The KV-cache geometry, when the engine publishes it.
    pub cache: Option<CacheGeometry>,
}

/// Fetches `url` once (with `auth` as the whole `Authorization` value, at most `max_body_bytes`,
/// all within `timeout`) and normalises it. Fails as a scrape fails: unreachable, a non-2xx
/// status, a body that is not an exposition, too large.
pub async fn fetch_snapshot(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&HeaderValue>,
    timeout: Duration,
    max_body_bytes: u64,
) -> Result<Snapshot, Failure> {
    let f = scraper::fetch(client, url, auth, timeout, max_body_bytes, true).await?;
    snapshot_of_body(&f.body, f.format).map_err(|kind| Failure {
        reason: FailReason::Parse,
        kinds: vec![(kind, 1)],
        message: format!(
            "GET {}: the body is not a usable exposition ({})",
            crate::config::redact_url(url),
            kind.as_str()
        ),
    })
}

/// Parses and normalises one body; the parser's fatal error when it is not an exposition.
pub fn snapshot_of_body(body: &[u8], format: Format) -> Result<Snapshot, expfmt::ErrorKind> {
    let exp = expfmt::parse_bytes(body, format);
    if let Some(fatal) = exp.fatal() {
        return Err(fatal);
    }
    let series = normalize::normalize(&exp, "unknown");
    let cache = cache_geometry(&exp, series.engine);
    Ok(Snapshot { series, cache })
}

fn cache_geometry(exp: &Exposition<'_>, engine: Engine) -> Option<CacheGeometry> {
    let (family, size, count) = match engine {
        Engine::Vllm => ("vllm:cache_config_info", "block_size", "num_gpu_blocks"),
        Engine::Sglang => ("sglang:cache_config_info", "page_size", "num_pages"),
        _ => return None,
    };
    let f = exp
        .families
        .iter()
        .find(|f| !f.damaged && f.name == family)?;
    exp.family_samples(f).iter().find_map(|s| {
        let num = |k: &str| exp.label(s, k).and_then(|v| v.trim().parse::<u64>().ok());
        match (num(size), num(count)) {
            (Some(b), Some(n)) if b > 0 && n > 0 => Some(CacheGeometry {
                block_size: b,
                num_blocks: n,
            }),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::normalize::Concept;

    #[test]
    fn normalises_and_reads_the_geometry() {
        let body = b"vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n\
vllm:cache_config_info{block_size=\"16\",engine=\"0\",num_gpu_blocks=\"1024\"} 1.0\n";
        let s = snapshot_of_body(body, Format::Prometheus).unwrap();
        assert_eq!(s.series.engine, Engine::Vllm);
        assert_eq!(
            s.series.value(Concept::RequestsRunning, "m", "0"),
            Some(3.0)
        );
        assert_eq!(
            s.cache,
            Some(CacheGeometry {
                block_size: 16,
                num_blocks: 1024
            })
        );
        let html = snapshot_of_body(b"<html>404</html>", Format::Prometheus);
        assert!(html.is_err());
    }
}
