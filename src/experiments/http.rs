//! The real [`Target`]: a server over HTTP, measured with the daemon's own paths so that a
//! one-shot number means exactly what the daemon's number means: requests through the prober's
//! single-request engine ([`crate::prober::request`]), models from
//! [`crate::prober::discovery`], prompts from the prober's [`PromptBuilder`] (token-id prompts
//! of exact length where the server has `/tokenize`, random per request so the prefix cache
//! cannot flatter TTFT), `/metrics` through the scrape module's one-shot read
//! ([`crate::scrape::once`]: its caps, parser and normalisation), and GPUs through the GPU
//! module's sampler threads ([`crate::gpu::SamplerThreads`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use super::common::{self, CommonArgs};
use super::engine::{
    GpuSnapshot, ModelInfo, Outcome, RequestSpec, Sample, ServerSnapshot, StreamProgress, Target,
};
use crate::config::{Endpoint, Secret};
use crate::gpu::{GpuSource, SampleOptions, SamplerThreads, SnapshotCell, Timing};
use crate::prober::discovery;
use crate::prober::prompt::{PromptBuilder, SharedPrefix};
use crate::prober::request::{self, ProbeRequest, Timeouts};

/// A server over HTTP.
pub struct HttpTarget {
    client: request::ProbeClient,
    /// The scrape module's client, for `/metrics` (gzip, same-origin redirects only).
    scrape_client: reqwest::Client,
    base_url: String,
    /// The whole `Authorization` value (`Bearer …` or `Basic …`); never logged.
    authorization: Option<Secret>,
    endpoint: Endpoint,
    timeouts: Timeouts,
    /// The model and its prompt builder, set by [`Target::prepare`].
    prepared: OnceCell<(String, PromptBuilder)>,
    /// Every entry of the last `/v1/models` read by [`Target::models`], with its parent: the
    /// `lora` source takes its adapters from it instead of reading the list again.
    listed: Mutex<Option<Vec<crate::workload::lora::Listed>>>,
    rng: Mutex<SmallRng>,
    gpu: GpuReader,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("base_url", &self.base_url)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl HttpTarget {
    /// A target for the common flags (checks the URL and the API key as the daemon does).
    pub fn new(c: &CommonArgs) -> anyhow::Result<Self> {
        let base_url = common::check_target_url(&c.target)?;
        let authorization = common::authorization(c)?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            first_token: c.request_timeout,
            request: c.request_timeout,
        };
        let client = request::build_client(&timeouts, 256).context("building the HTTP client")?;
        let scrape_client = crate::scrape::http_client()?;
        Ok(Self {
            client,
            scrape_client,
            base_url,
            authorization,
            endpoint: c.endpoint,
            timeouts,
            prepared: OnceCell::new(),
            listed: Mutex::new(None),
            rng: Mutex::new(SmallRng::seed_from_u64(crate::clock::monotonic_ns())),
            gpu: if c.no_gpu {
                GpuReader::off()
            } else {
                GpuReader::start(Box::new(crate::gpu::NvmlSource::new(None)))
            },
        })
    }
}

/// Limit for one read of `/metrics`.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpTarget {
    fn auth(&self) -> Option<&str> {
        self.authorization.as_ref().map(Secret::expose)
    }

    /// The connection settings of the prober's engine for this target.
    fn conn<'a>(&'a self, cancel: Option<&'a CancellationToken>) -> request::Conn<'a> {
        request::Conn {
            client: &self.client,
            base_url: &self.base_url,
            authorization: self.auth(),
            timeouts: &self.timeouts,
            cancel,
            max_response_bytes: request::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The probe request for `spec`, with a fresh random prompt of its length; else why not.
    fn probe_request(&self, spec: RequestSpec) -> Result<ProbeRequest, &'static str> {
        let Some((model, builder)) = self.prepared.get() else {
            return Err("internal: target used before prepare()");
        };
        let prompt = match self.rng.lock() {
            Ok(mut rng) => builder.build(
                &mut *rng,
                self.endpoint,
                spec.prompt_tokens,
                &SharedPrefix::default(),
            ),
            Err(_) => return Err("internal: poisoned prompt state"),
        };
        Ok(ProbeRequest {
            endpoint: self.endpoint,
            model: model.clone(),
            prompt,
            max_tokens: spec.max_tokens,
            ignore_eos: true,
            temperature: None,
            stream: spec.stream,
            extra: serde_json::Map::new(),
        })
    }
}

impl HttpTarget {
    /// The probe request for a workload item, rendered with the prepared prompt builder.
    fn item_request(
        &self,
        item: &crate::workload::Item,
        stream: bool,
    ) -> Result<ProbeRequest, &'static str> {
        let Some((model, builder)) = self.prepared.get() else {
            return Err("internal: target used before prepare()");
        };
        Ok(ProbeRequest {
            endpoint: self.endpoint,
            model: item.model.as_deref().unwrap_or(model).to_string(),
            prompt: builder.render(
                item,
                self.endpoint,
                crate::config::prober::MAX_TOKENS_CEILING,
            ),
            max_tokens: item.max_tokens,
            ignore_eos: true,
            temperature: None,
            stream,
            extra: serde_json::Map::new(),
        })
    }
}

/// Publishes a held stream's progress: one more output event each time an event carrying
/// generated output arrives (the engine's own reading of the same event decides the record).
struct ProgressObserver<'a> {
    tx: &'a watch::Sender<StreamProgress>,
    events: u32,
}

impl request::ChunkObserver for ProgressObserver<'_> {
    fn on_event(&mut self, _recv_ns: u64, data: &[u8]) {
        if data == b"[DONE]" {
            return;
        }
        if crate::prober::event::parse(data).is_ok_and(|e| e.content) {
            self.events = self.events.saturating_add(1);
            let n = self.events;
            self.tx.send_modify(|p| p.output_events = n);
        }
    }
}

impl Target for HttpTarget {
    async fn models(&self) -> anyhow::Result<Vec<ModelInfo>> {
        let l = discovery::list_with(
            self.client.http(),
            &self.base_url,
            self.auth(),
            self.timeouts.connect.max(Duration::from_secs(10)),
        )
        .await?;
        if let Ok(mut g) = self.listed.lock() {
            *g = Some(l.listed);
        }
        Ok(l.models
            .into_iter()
            .map(|m| ModelInfo {
                id: m.id,
                max_model_len: m.max_model_len,
            })
            .collect())
    }

    async fn prepare(&self, model: &ModelInfo) -> Vec<String> {
        let mut notes = Vec::new();
        let chat = self.endpoint == Endpoint::Chat;
        let builder = match PromptBuilder::calibrate_with(
            self.client.http(),
            &self.base_url,
            self.auth(),
            &model.id,
            chat,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(b) => {
                if chat && b.chat_calibration().is_none() {
                    notes.push("chat prompt lengths are estimates (chat template not calibrated via /tokenize)".into());
                }
                b
            }
            Err(e) => {
                notes.push(format!(
                    "prompt lengths are estimates (one word per token): /tokenize is not usable: {e}"
                ));
                PromptBuilder::uncalibrated()
            }
        };
        let _ = self.prepared.set((model.id.clone(), builder));
        notes
    }

    async fn execute(&self, spec: RequestSpec, intended: tokio::time::Instant) -> Sample {
        let req = match self.probe_request(spec) {
            Ok(r) => r,
            Err(why) => return Sample::failed(Outcome::ClientError, why),
        };
        let intended = intended.into_std();
        let rec = request::execute_with(&self.conn(None), &req, intended, &mut ()).await;
        Sample::from_record(&rec, spec.stream)
    }

    async fn execute_item(
        &self,
        item: &crate::workload::Item,
        stream: bool,
        intended: tokio::time::Instant,
    ) -> Sample {
        let req = match self.item_request(item, stream) {
            Ok(r) => r,
            Err(why) => return Sample::failed(Outcome::ClientError, why),
        };
        let rec = request::execute_with(&self.conn(None), &req, intended.into_std(), &mut ()).await;
        Sample::from_record(&rec, stream)
    }

    async fn listed_models(&self) -> anyhow::Result<Vec<crate::workload::lora::Listed>> {
        if let Some(l) = self.listed.lock().ok().and_then(|g| g.clone()) {
            return Ok(l);
        }
        Ok(discovery::list_with(
            self.client.http(),
            &self.base_url,
            self.auth(),
            self.timeouts.connect.max(Duration::from_secs(10)),
        )
        .await?
        .listed)
    }

    async fn stream_held(
        &self,
        spec: RequestSpec,
        progress: watch::Sender<StreamProgress>,
        close: CancellationToken,
    ) -> Sample {
        let spec = RequestSpec {
            stream: true,
            ..spec
        };
        let s = match self.probe_request(spec) {
            Ok(req) => {
                let conn = self.conn(Some(&close));
                let mut observer = ProgressObserver {
                    tx: &progress,
                    events: 0,
                };
                let rec = request::execute_with(&conn, &req, Instant::now(), &mut observer).await;
                Sample::from_record(&rec, true)
            }
            Err(why) => Sample::failed(Outcome::ClientError, why),
        };
        progress.send_modify(|p| p.ended = true);
        s
    }

    async fn metrics(&self) -> anyhow::Result<ServerSnapshot> {
        let auth = match self.auth() {
            Some(a) => Some(
                reqwest::header::HeaderValue::from_str(a)
                    .map_err(|_| anyhow::anyhow!("the API key is not a valid header value"))?,
            ),
            None => None,
        };
        let snap = crate::scrape::once::fetch_snapshot(
            &self.scrape_client,
            &format!("{}/metrics", self.base_url),
            auth.as_ref(),
            METRICS_TIMEOUT,
            crate::scrape::ScrapeConfig::default().max_body_bytes,
        )
        .await
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
        Ok(ServerSnapshot::from_scrape(&snap))
    }

    fn gpu(&self) -> Result<GpuSnapshot, String> {
        self.gpu.latest()
    }
}

/// The GPU module's sampler threads ([`SamplerThreads`], the daemon's), sampling every 250 ms;
/// [`Target::gpu`] reads their latest snapshot. Stopped (without waiting on the driver) when
/// dropped.
struct GpuReader {
    threads: Result<SamplerThreads, String>,
}

impl GpuReader {
    fn start(source: Box<dyn GpuSource>) -> Self {
        let timing = Timing {
            interval: Duration::from_millis(250),
            sample_timeout: Duration::from_millis(125),
            max_backoff: Duration::from_secs(5),
        };
        let opts = SampleOptions {
            pcie_throughput: false,
            processes: false,
            xid_events: false,
        };
        let cell = Arc::new(SnapshotCell::default());
        let threads = SamplerThreads::start(source, opts, timing, cell, None)
            .map_err(|e| format!("not available: {e}"));
        Self { threads }
    }

    /// No sampling (`--no-gpu`).
    fn off() -> Self {
        Self {
            threads: Err("not available (--no-gpu)".into()),
        }
    }

    fn latest(&self) -> Result<GpuSnapshot, String> {
        let t = self.threads.as_ref().map_err(Clone::clone)?;
        GpuSnapshot::from_sampled(&t.snapshots().load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_come_from_the_gpu_modules_sampler() {
        let (source, _ctl) = crate::gpu::FakeSource::with_gpus(2);
        let r = GpuReader::start(Box::new(source));
        let cell = r.threads.as_ref().unwrap().snapshots();
        let (_, up) = cell.wait_until(Duration::from_secs(10), |s| s.up);
        assert!(up, "the fake GPUs were never sampled");
        let g = r.latest().unwrap();
        assert!((0.0..=1.0).contains(&g.utilization), "{g:?}");
        assert!(g.memory_used_bytes > 0.0, "{g:?}");
        let (source, _ctl) = crate::gpu::FakeSource::unavailable("no driver");
        let r = GpuReader::start(Box::new(source));
        let cell = r.threads.as_ref().unwrap().snapshots();
        cell.wait_until(Duration::from_secs(10), |s| s.attempts > 0);
        assert!(r.latest().unwrap_err().contains("not available"));
    }
}
