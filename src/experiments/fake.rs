//! An in-process fake server for the experiments' unit tests, on tokio's clock (tests run
//! with a paused clock, so its service times are exact and cost no wall time).
//!
//! It runs at most `max_seqs` requests at once and holds `ceil((prompt + output − 1) / 16)` KV
//! blocks of a 64-block cache (63 usable, as vLLM keeps a null block) for each; the rest wait.
//! A request takes 10 ms of prefill, then 5 ms per further token. A held stream
//! ([`Target::stream_held`]) holds blocks as vLLM does while it grows, `ceil((prompt + k − 1) /
//! 16)` after its k-th token, counts every token in `generation_tokens_total` in the same
//! update, and frees everything when it is closed.
//! Failures are the prober's own outcomes (`server_error`, `context_length`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::CommonArgs;
use super::engine::{
    CacheConfig, GpuSnapshot, ModelInfo, Outcome, RequestSpec, Sample, ServerSnapshot,
    StreamProgress, Target,
};

pub const BLOCK_SIZE: u64 = 16;
pub const NUM_BLOCKS: u64 = 64;
pub const MAX_MODEL_LEN: u32 = 512;

#[derive(Debug, Default)]
struct State {
    running: f64,
    waiting: f64,
    blocks: u64,
    generated: f64,
}

/// What one held stream contributes to the fake's gauges; taken back when dropped (the
/// stream ended or was closed).
struct Residency<'a> {
    fake: &'a FakeServer,
    waiting: bool,
    running: bool,
    blocks: u64,
}

impl Drop for Residency<'_> {
    fn drop(&mut self) {
        let (w, r, b) = (self.waiting, self.running, self.blocks);
        self.fake.update(|s| {
            if w {
                s.waiting -= 1.0;
            }
            if r {
                s.running -= 1.0;
            }
            s.blocks -= b;
        });
    }
}

/// The fake.
#[derive(Debug, Clone)]
pub struct FakeServer {
    slots: Arc<Semaphore>,
    kv: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
    seen: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    no_metrics: Arc<AtomicBool>,
}

/// Common flags for tests.
pub fn common_args() -> CommonArgs {
    CommonArgs {
        target: "http://127.0.0.1:9".into(),
        model: None,
        endpoint: crate::config::Endpoint::Completions,
        api_key_env: None,
        api_key_file: None,
        request_timeout: Duration::from_secs(30),
        json: None,
        csv: None,
        html: None,
        out_dir: None,
        no_progress: true,
        no_gpu: true,
    }
}

impl FakeServer {
    pub fn new(max_seqs: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_seqs)),
            kv: Arc::new(Semaphore::new(NUM_BLOCKS as usize - 1)),
            state: Arc::default(),
            seen: Arc::default(),
            fail: Arc::default(),
            down: Arc::default(),
            no_metrics: Arc::default(),
        }
    }
    pub fn fail_all(&self) {
        self.fail.store(true, Ordering::SeqCst);
    }
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }
    pub fn without_metrics(&self) {
        self.no_metrics.store(true, Ordering::SeqCst);
    }
    pub fn requests_seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
    /// The answer to a request the fake refuses outright, as the prober classifies it.
    fn refusal(&self, spec: RequestSpec) -> Option<Sample> {
        if self.fail.load(Ordering::SeqCst) {
            return Some(Sample {
                outcome: Outcome::ServerError,
                status: Some(500),
                error_message: Some("internal error".into()),
                ..Default::default()
            });
        }
        (spec.prompt_tokens >= MAX_MODEL_LEN).then(|| Sample {
            outcome: Outcome::ContextLength,
            status: Some(400),
            error_message: Some(format!(
                "This model's maximum context length is {MAX_MODEL_LEN} tokens."
            )),
            ..Default::default()
        })
    }

    /// The body of a held stream: admission, prefill, then one token every 5 ms, growing its
    /// blocks as it goes. Dropping the future (a close) frees what it holds.
    async fn run_held(
        &self,
        spec: RequestSpec,
        progress: &watch::Sender<StreamProgress>,
        t0: Instant,
        first_token: &std::sync::OnceLock<f64>,
    ) -> Sample {
        let out = spec
            .max_tokens
            .min(MAX_MODEL_LEN.saturating_sub(spec.prompt_tokens));
        let mut res = Residency {
            fake: self,
            waiting: true,
            running: false,
            blocks: 0,
        };
        self.update(|s| s.waiting += 1.0);
        let _slot = self.slots.acquire().await;
        let first = u64::from(spec.prompt_tokens).div_ceil(BLOCK_SIZE);
        let mut permits = match self.kv.acquire_many(first as u32).await {
            Ok(p) => p,
            Err(_) => return Sample::failed(Outcome::ServerError, "closed"),
        };
        self.update(|s| {
            s.waiting -= 1.0;
            s.running += 1.0;
            s.blocks += first;
        });
        res.waiting = false;
        res.running = true;
        res.blocks = first;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let ttft = t0.elapsed().as_secs_f64();
        let _ = first_token.set(ttft);
        for k in 1..=out {
            if k > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let need = u64::from(spec.prompt_tokens + k - 1).div_ceil(BLOCK_SIZE);
            if need > res.blocks {
                match self.kv.acquire_many((need - res.blocks) as u32).await {
                    Ok(p) => permits.merge(p),
                    Err(_) => return Sample::failed(Outcome::ServerError, "closed"),
                }
                let more = need - res.blocks;
                self.update(|s| s.blocks += more);
                res.blocks = need;
            }
            self.update(|s| s.generated += 1.0);
            progress.send_modify(|p| p.output_events = k);
        }
        Sample {
            outcome: Outcome::Ok,
            status: Some(200),
            ttfb_s: Some(ttft),
            ttft_s: Some(ttft),
            e2e_s: t0.elapsed().as_secs_f64(),
            prompt_tokens: Some(spec.prompt_tokens),
            output_tokens: Some(out),
            finish_reason: Some("length".into()),
            ..Default::default()
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

impl Target for FakeServer {
    async fn models(&self) -> anyhow::Result<Vec<ModelInfo>> {
        if self.down.load(Ordering::SeqCst) {
            anyhow::bail!("connection refused");
        }
        Ok(vec![ModelInfo {
            id: "fake".into(),
            max_model_len: Some(MAX_MODEL_LEN),
        }])
    }

    async fn prepare(&self, _model: &ModelInfo) -> Vec<String> {
        Vec::new()
    }

    async fn execute(&self, spec: RequestSpec, intended: Instant) -> Sample {
        self.seen.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        let late_by_s = t0.saturating_duration_since(intended).as_secs_f64();
        if let Some(s) = self.refusal(spec) {
            return s;
        }
        let out = spec.max_tokens.min(MAX_MODEL_LEN - spec.prompt_tokens);
        let blocks = u64::from(spec.prompt_tokens + out - 1).div_ceil(BLOCK_SIZE);
        self.update(|s| s.waiting += 1.0);
        let slot = self.slots.acquire().await;
        let kv = self.kv.acquire_many(blocks as u32).await;
        self.update(|s| {
            s.waiting -= 1.0;
            s.running += 1.0;
            s.blocks += blocks;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let ttft = t0.elapsed().as_secs_f64();
        let mut itl = Vec::new();
        for _ in 1..out {
            let a = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            itl.push(a.elapsed().as_secs_f64());
        }
        drop(kv);
        drop(slot);
        self.update(|s| {
            s.running -= 1.0;
            s.blocks -= blocks;
            s.generated += f64::from(out);
        });
        let e2e = t0.elapsed().as_secs_f64() + late_by_s;
        Sample {
            outcome: Outcome::Ok,
            status: Some(200),
            ttfb_s: Some(ttft),
            ttft_s: spec.stream.then_some(ttft + late_by_s),
            tpot_s: (out > 1).then(|| (e2e - ttft - late_by_s) / f64::from(out - 1)),
            itl_s: if spec.stream { itl } else { Vec::new() },
            e2e_s: e2e,
            prompt_tokens: Some(spec.prompt_tokens),
            output_tokens: Some(out),
            finish_reason: Some("length".into()),
            error_message: None,
        }
    }

    async fn stream_held(
        &self,
        spec: RequestSpec,
        progress: watch::Sender<StreamProgress>,
        close: CancellationToken,
    ) -> Sample {
        self.seen.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        let first_token = std::sync::OnceLock::new();
        let s = match self.refusal(spec) {
            Some(s) => s,
            None => tokio::select! {
                s = self.run_held(spec, &progress, t0, &first_token) => s,
                _ = close.cancelled() => {
                    Sample {
                        outcome: Outcome::Cancelled,
                        status: Some(200),
                        error_message: Some("closed by the caller".into()),
                        ttft_s: first_token.get().copied(),
                        e2e_s: t0.elapsed().as_secs_f64(),
                        ..Default::default()
                    }
                }
            },
        };
        progress.send_modify(|p| p.ended = true);
        s
    }

    async fn metrics(&self) -> anyhow::Result<ServerSnapshot> {
        if self.no_metrics.load(Ordering::SeqCst) {
            anyhow::bail!("GET /metrics: HTTP 404");
        }
        let s = self.state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(ServerSnapshot {
            kv_usage: Some(s.blocks as f64 / (NUM_BLOCKS - 1) as f64),
            running: Some(s.running),
            waiting: Some(s.waiting),
            preemptions_total: Some(0.0),
            generation_tokens_total: Some(s.generated),
            cache: Some(CacheConfig {
                block_size: BLOCK_SIZE,
                num_gpu_blocks: NUM_BLOCKS,
            }),
        })
    }

    fn gpu(&self) -> Result<GpuSnapshot, String> {
        Err("not available (fake)".into())
    }
}
