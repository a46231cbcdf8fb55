//! The real [`Target`]: a server over HTTP, measured with the prober's single-request engine
//! ([`crate::prober::request::execute`]) so that a one-shot number means exactly what the
//! daemon's number means. Models come from [`crate::prober::discovery`], prompts from the
//! prober's [`PromptBuilder`] (token-id prompts of exact length where the server has
//! `/tokenize`, random per request so the prefix cache cannot flatter TTFT), `/metrics` is
//! parsed by [`crate::scrape::expfmt`], and GPUs are read through [`crate::gpu`]'s NVML source
//! on a thread of their own (NVML calls may block).

use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::config::Endpoint;
use crate::prober::discovery;
use crate::prober::prompt::{PromptBuilder, SharedPrefix};
use crate::prober::request::{self, ProbeRequest, Timeouts};

/// A server over HTTP.
pub struct HttpTarget {
    client: request::ProbeClient,
    base_url: String,
    api_key: Option<String>,
    endpoint: Endpoint,
    timeouts: Timeouts,
    /// The model and its prompt builder, set by [`Target::prepare`].
    prepared: OnceCell<(String, PromptBuilder)>,
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
    /// A target for the common flags (checks the URL and the API key variable).
    pub fn new(c: &CommonArgs) -> anyhow::Result<Self> {
        let base_url = common::check_target_url(&c.target)?;
        let api_key = common::api_key(c)?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            first_token: c.request_timeout,
            request: c.request_timeout,
        };
        let client = request::build_client(&timeouts, 256).context("building the HTTP client")?;
        Ok(Self {
            client,
            base_url,
            api_key,
            endpoint: c.endpoint,
            timeouts,
            prepared: OnceCell::new(),
            rng: Mutex::new(SmallRng::seed_from_u64(crate::clock::monotonic_ns())),
            gpu: GpuReader::start(),
        })
    }
}

impl HttpTarget {
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
        let ms = discovery::list_models(
            self.client.http(),
            &self.base_url,
            self.api_key.as_deref(),
            self.timeouts.connect.max(Duration::from_secs(10)),
        )
        .await?;
        Ok(ms
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
        let builder = match PromptBuilder::calibrate(
            self.client.http(),
            &self.base_url,
            self.api_key.as_deref(),
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
        let rec = request::execute(
            &self.client,
            &self.base_url,
            self.api_key.as_deref(),
            &req,
            &self.timeouts,
            intended,
        )
        .await;
        Sample::from_record(&rec, spec.stream)
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
                let authorization = discovery::bearer(self.api_key.as_deref());
                let conn = request::Conn {
                    client: &self.client,
                    base_url: &self.base_url,
                    authorization: authorization.as_deref(),
                    timeouts: &self.timeouts,
                    cancel: Some(&close),
                    max_response_bytes: request::DEFAULT_MAX_RESPONSE_BYTES,
                };
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
        let mut b = self
            .client
            .http()
            .get(format!("{}/metrics", self.base_url))
            .timeout(Duration::from_secs(10));
        if let Some(k) = &self.api_key {
            b = b.bearer_auth(k);
        }
        let resp = b.send().await.context("GET /metrics")?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!("GET /metrics: HTTP {}", status.as_u16());
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = crate::httpcap::read_capped(resp, 64 * 1024 * 1024)
            .await
            .context("GET /metrics: reading the body")?;
        let body = String::from_utf8_lossy(&body);
        super::servermetrics::snapshot_from_body(&body, ct.as_deref())
    }

    fn gpu(&self) -> Result<GpuSnapshot, String> {
        self.gpu.latest()
    }
}

/// Reads GPU utilisation and memory every 250 ms on its own thread, through the GPU module's
/// NVML source; the latest reading (or why there is none) is kept for [`Target::gpu`].
struct GpuReader {
    latest: Arc<Mutex<Result<GpuSnapshot, String>>>,
    stop: Arc<AtomicBool>,
}

impl GpuReader {
    fn start() -> Self {
        let latest = Arc::new(Mutex::new(Err("not available (starting)".to_string())));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (latest.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("experiments-gpu".into())
            .spawn(move || gpu_loop(&l, &s));
        if let Err(e) = spawned
            && let Ok(mut g) = latest.lock()
        {
            *g = Err(format!("not available: {e}"));
        }
        Self { latest, stop }
    }

    fn latest(&self) -> Result<GpuSnapshot, String> {
        self.latest
            .lock()
            .map_err(|_| "not available".to_string())?
            .clone()
    }
}

impl Drop for GpuReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn gpu_loop(latest: &Mutex<Result<GpuSnapshot, String>>, stop: &AtomicBool) {
    use crate::gpu::source::{Field, GpuSource, Value};
    let set = |v: Result<GpuSnapshot, String>| {
        if let Ok(mut g) = latest.lock() {
            *g = v;
        }
    };
    let mut source = crate::gpu::NvmlSource::new(None);
    let mut session = match source.open() {
        Ok(s) => s,
        Err(e) => {
            set(Err(format!("not available ({e})")));
            return;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let n = session.device_count().unwrap_or(0);
        let (mut util, mut mem, mut seen) = (0.0, 0.0, 0u32);
        for i in 0..n {
            let Ok(mut d) = session.device(i) else {
                continue;
            };
            if let Ok(Value::Utilization { gpu, .. }) = d.read(Field::Utilization) {
                util += f64::from(gpu) / 100.0;
                seen += 1;
            }
            if let Ok(Value::Memory(m)) = d.read(Field::Memory) {
                mem += m.used as f64;
            }
        }
        if seen == 0 {
            set(Err("not available (no GPU answered)".into()));
        } else {
            set(Ok(GpuSnapshot {
                utilization: util / f64::from(seen),
                memory_used_bytes: mem,
            }));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
