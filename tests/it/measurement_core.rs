//! The one-shot experiments and the daemon share one measurement path: the same simulator
//! (deterministic: no EOS, fixed faults) measured once by the prober's request engine (what the
//! daemon's workloads call) and once through the experiments' HTTP target gives the same
//! per-request record — outcome, status, token counts, finish reason. Timings differ from run
//! to run and are not compared.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vllm_sentinel::config::Endpoint;
use vllm_sentinel::experiments::common::CommonArgs;
use vllm_sentinel::experiments::engine::{RequestSpec, Sample, Target};
use vllm_sentinel::experiments::http::HttpTarget;
use vllm_sentinel::prober::prompt::{PromptBuilder, SharedPrefix};
use vllm_sentinel::prober::request::{self, Outcome, ProbeRequest, RequestRecord, Timeouts};
use vllm_sentinel::sim::{self, SimConfig};

struct Sim {
    url: String,
    token: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn start(cfg: SimConfig) -> Sim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    tokio::spawn(sim::serve(listener, cfg, token.clone()));
    Sim { url, token }
}

fn sim_config() -> SimConfig {
    let mut c = SimConfig {
        max_model_len: 256,
        eos_probability: 0.0,
        ..SimConfig::default()
    };
    c.engine.step_base = Duration::from_millis(1);
    c.engine.prefill_per_token = Duration::ZERO;
    c.engine.decode_per_seq = Duration::ZERO;
    c
}

fn common(url: &str) -> CommonArgs {
    CommonArgs {
        target: url.to_string(),
        model: None,
        endpoint: Endpoint::Completions,
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

/// The daemon's path: the prober's engine with a prompt from the prober's builder.
async fn daemon_record(url: &str, spec: RequestSpec) -> RequestRecord {
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        first_token: Duration::from_secs(30),
        request: Duration::from_secs(30),
    };
    let client = request::build_client(&timeouts, 4).unwrap();
    let builder = PromptBuilder::calibrate(
        client.http(),
        url,
        None,
        "sim-model",
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
    let req = ProbeRequest {
        endpoint: Endpoint::Completions,
        model: "sim-model".into(),
        prompt: builder.build(
            &mut rng,
            Endpoint::Completions,
            spec.prompt_tokens,
            &SharedPrefix::default(),
        ),
        max_tokens: spec.max_tokens,
        ignore_eos: true,
        temperature: None,
        stream: spec.stream,
        extra: serde_json::Map::new(),
    };
    request::execute(&client, url, None, &req, &timeouts, Instant::now()).await
}

/// The experiments' path: their HTTP target, as `bench`, `sweep` and `kv-scale` use it.
async fn experiments_sample(target: &HttpTarget, spec: RequestSpec) -> Sample {
    target.execute(spec, tokio::time::Instant::now()).await
}

fn assert_same(rec: &RequestRecord, s: &Sample, what: &str) {
    let from_daemon = Sample::from_record(rec, true);
    assert_eq!(s.outcome, rec.outcome, "{what}: {s:?} vs {rec:?}");
    assert_eq!(s.status, rec.http_status, "{what}");
    assert_eq!(s.prompt_tokens, rec.prompt_tokens, "{what}");
    assert_eq!(s.output_tokens, rec.output_tokens, "{what}");
    assert_eq!(s.finish_reason, rec.finish_reason, "{what}");
    assert_eq!(s.ok(), from_daemon.ok(), "{what}");
    assert_eq!(
        s.ttft_s.is_some(),
        rec.ttft.is_some(),
        "{what}: both have a first token or neither"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_and_daemon_record_a_request_alike() {
    let s = start(sim_config()).await;
    let target = HttpTarget::new(&common(&s.url)).unwrap();
    let models = target.models().await.unwrap();
    assert_eq!(models[0].id, "sim-model");
    target.prepare(&models[0]).await;
    let cases = [
        (
            "a streamed request",
            RequestSpec {
                prompt_tokens: 32,
                max_tokens: 8,
                stream: true,
            },
            Outcome::Ok,
        ),
        (
            "a prompt over max_model_len",
            RequestSpec {
                prompt_tokens: 300,
                max_tokens: 8,
                stream: true,
            },
            Outcome::ContextLength,
        ),
    ];
    for (what, spec, want) in cases {
        let rec = daemon_record(&s.url, spec).await;
        let sample = experiments_sample(&target, spec).await;
        assert_eq!(rec.outcome, want, "{what}: {rec:?}");
        assert_same(&rec, &sample, what);
        if want == Outcome::Ok {
            assert_eq!(sample.prompt_tokens, Some(spec.prompt_tokens));
            assert_eq!(sample.output_tokens, Some(spec.max_tokens));
            assert_eq!(sample.finish_reason.as_deref(), Some("length"));
            assert_eq!(sample.itl_s.len(), rec.itl.len(), "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_and_daemon_classify_a_server_error_alike() {
    let mut c = sim_config();
    c.faults.error_status = 500;
    c.faults.error_every = 1;
    let s = start(c).await;
    let target = HttpTarget::new(&common(&s.url)).unwrap();
    let models = target.models().await.unwrap();
    target.prepare(&models[0]).await;
    let spec = RequestSpec {
        prompt_tokens: 16,
        max_tokens: 4,
        stream: true,
    };
    let rec = daemon_record(&s.url, spec).await;
    let sample = experiments_sample(&target, spec).await;
    assert_eq!(rec.outcome, Outcome::ServerError, "{rec:?}");
    assert_same(&rec, &sample, "a 500");
}
