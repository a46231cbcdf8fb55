//! `bench`: the single-request baseline. After a warm-up, N sequential requests, streaming
//! and/or non-streaming; TTFB, TTFT, inter-token latency, TPOT, end-to-end latency and output
//! tokens per second, each as mean, p50, p90, p99, min and max.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use super::common::{self, CommonArgs, Outputs};
use super::engine::{Outcome, RequestSpec, Sample, Target, choose_model};
use super::goodput::{Goodput, SloArgs};
use super::progress::Progress;
use super::report::{BenchMode, BenchSection, BenchSlo, Report, RequestRow, TargetInfo};
use super::workload::{WorkloadArgs, send};
use crate::workload::Source;

/// Which modes `bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamMode {
    /// Streaming, then non-streaming.
    Both,
    /// Streaming (SSE) only.
    Stream,
    /// Non-streaming only.
    NonStream,
}

/// Flags of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Measured requests per mode (sent one after another).
    #[arg(long, default_value_t = 20, env = "VLLM_SENTINEL_BENCH_REQUESTS")]
    pub requests: u32,
    /// Warm-up requests per mode, not measured.
    #[arg(long, default_value_t = 2, env = "VLLM_SENTINEL_BENCH_WARMUP")]
    pub warmup: u32,
    /// Streaming, non-streaming or both.
    #[arg(long, value_enum, default_value_t = StreamMode::Both, env = "VLLM_SENTINEL_BENCH_STREAM")]
    pub stream: StreamMode,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128, env = "VLLM_SENTINEL_PROMPT_TOKENS")]
    pub prompt_tokens: u32,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 64, env = "VLLM_SENTINEL_MAX_TOKENS")]
    pub max_tokens: u32,
    /// Where requests come from (--dataset …): see docs/experiments.md, "Workload sources".
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Seed of a --dataset other than random: the same seed sends the same requests.
    #[arg(long, default_value_t = 0, env = "VLLM_SENTINEL_SEED")]
    pub seed: u64,
    #[command(flatten)]
    pub slo: SloArgs,
    /// Also write the streaming mode's result as `vllm bench serve --save-result
    /// --save-detailed` writes it (same field names and units; see docs/experiments.md).
    #[arg(long, env = "VLLM_SENTINEL_VLLM_BENCH_JSON")]
    pub vllm_bench_json: Option<PathBuf>,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.requests == 0 {
            bail!("--requests: must be at least 1");
        }
        if self.prompt_tokens == 0 {
            bail!("--prompt-tokens: must be at least 1");
        }
        if self.max_tokens == 0 {
            bail!("--max-tokens: must be at least 1");
        }
        self.slo.validate()?;
        if self.vllm_bench_json.is_some() && self.stream == StreamMode::NonStream {
            bail!("--vllm-bench-json: needs the streaming mode (--stream stream or both)");
        }
        Ok(())
    }
}

/// Runs `bench` from the command line.
pub async fn run_cli(args: BenchArgs, token: CancellationToken) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let outputs = Outputs::prepare(&args.common, "bench")?;
    if let Some(p) = &args.vllm_bench_json {
        common::check_writable("--vllm-bench-json", p)?;
    }
    let target = Arc::new(super::http::HttpTarget::new(&args.common)?);
    let report = measure(&*target, &args, &token).await?;
    if let Some(p) = &args.vllm_bench_json {
        super::vllm_bench_json::write_bench(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    finish(&report, &outputs)
}

/// Prints and writes a finished bench report; fails (after writing) when every request failed.
pub fn finish(report: &Report, outputs: &Outputs) -> anyhow::Result<ExitCode> {
    let b = report.bench.clone().unwrap_or_default();
    let code = common::emit(
        report,
        outputs,
        &super::table::bench(&b).then(super::table::turns(&b.turns)),
        &[(outputs.csv.clone(), super::report::bench_csv(&b))],
        |_| Ok(Vec::new()),
    )?;
    let sent: usize = b.modes.iter().map(|m| m.requests).sum();
    let ok: usize = b.modes.iter().map(|m| m.ok).sum();
    if sent > 0 && ok == 0 {
        let first = b
            .requests
            .iter()
            .find(|r| r.outcome != Outcome::Ok)
            .map(|r| {
                format!(
                    "{}{}: {}",
                    r.outcome,
                    r.status.map(|c| format!(" (HTTP {c})")).unwrap_or_default(),
                    r.error_message.as_deref().unwrap_or("no message")
                )
            })
            .unwrap_or_default();
        bail!("every request failed ({sent} sent); first failure: {first}");
    }
    Ok(code)
}

/// Measures the baseline against `t`. Stops early (a partial report) when `token` is cancelled.
pub async fn measure<T: Target>(
    t: &T,
    args: &BenchArgs,
    token: &CancellationToken,
) -> anyhow::Result<Report> {
    // The dataset is read before the target is contacted: a bad file must not cost a run.
    let mut workload = args.workload.load(
        args.prompt_tokens,
        args.max_tokens,
        args.common.endpoint,
        args.seed,
    )?;
    let mut report = start_report(t, args).await?;
    if let Some(w) = workload.as_mut() {
        super::workload::bind_adapters(t, w).await?;
        report.set("dataset", super::workload::describe(Some(w)));
        report.set("seed", args.seed);
    }
    let mut source = workload.as_ref().map(|w| w.source(args.seed));
    let mut turn_samples: Vec<(u32, Sample)> = Vec::new();
    let modes: Vec<bool> = match args.stream {
        StreamMode::Both => vec![true, false],
        StreamMode::Stream => vec![true],
        StreamMode::NonStream => vec![false],
    };
    let per_mode = u64::from(args.warmup + args.requests);
    let progress = Progress::new(
        !args.common.no_progress,
        per_mode * modes.len() as u64,
        "bench",
    );
    let started = tokio::time::Instant::now();
    let mut section = BenchSection::default();
    'modes: for stream in modes {
        let spec = RequestSpec {
            prompt_tokens: args.prompt_tokens,
            max_tokens: args.max_tokens,
            stream,
        };
        let label = if stream { "streaming" } else { "non-streaming" };
        progress.message(format!("{label} warm-up"));
        for _ in 0..args.warmup {
            let item = source.as_mut().map(Source::next_item);
            tokio::select! {
                _ = send(t, spec, item.as_ref(), tokio::time::Instant::now()) => {}
                _ = token.cancelled() => {
                    report.mark_partial("interrupted during warm-up");
                    break 'modes;
                }
            }
            progress.inc(1);
        }
        progress.message(label);
        let mut samples: Vec<Sample> = Vec::new();
        let mode_started = tokio::time::Instant::now();
        for _ in 0..args.requests {
            let item = source.as_mut().map(Source::next_item);
            let sent = tokio::time::Instant::now();
            let s = tokio::select! {
                s = send(t, spec, item.as_ref(), sent) => s,
                _ = token.cancelled() => {
                    report.mark_partial("interrupted");
                    break;
                }
            };
            let mut row = request_row(section.requests.len(), stream, &s);
            row.start_s = sent.duration_since(started).as_secs_f64();
            section.requests.push(row);
            if let Some(turn) = item.as_ref().and_then(|i| i.turn)
                && stream
            {
                turn_samples.push((turn, s.clone()));
            }
            samples.push(s);
            progress.inc(1);
        }
        let duration_s = mode_started.elapsed().as_secs_f64();
        if !samples.is_empty() {
            let slo = args.slo.slo();
            let g = slo
                .is_set()
                .then(|| Goodput::of(&slo, &samples, duration_s));
            section.modes.push(BenchMode {
                stream,
                requests: samples.len(),
                ok: samples.iter().filter(|s| s.ok()).count(),
                errors_by_class: common::errors_by_class(&samples),
                latency: common::summarize(&samples),
                duration_s,
                slo_attainment: g.map(|g| g.attainment),
                goodput_rps: g.map(|g| g.goodput_rps),
                slo_met: g.map(|g| g.attainment >= args.slo.slo_attainment),
            });
        }
        if report.partial {
            break;
        }
    }
    progress.finish();
    section.turns = super::workload::turn_rows(turn_samples.iter().map(|(t, s)| (*t, s)));
    let slo = args.slo.slo();
    if slo.is_set() {
        section.slo = Some(BenchSlo {
            objectives: slo,
            min_attainment: args.slo.slo_attainment,
        });
    }
    report.duration_s = started.elapsed().as_secs_f64();
    report.bench = Some(section);
    Ok(report)
}

/// Checks the target and starts the report with the run's parameters.
async fn start_report<T: Target>(t: &T, args: &BenchArgs) -> anyhow::Result<Report> {
    let url = common::check_target_url(&args.common.target)?;
    let models = t
        .models()
        .await
        .with_context(|| format!("cannot reach the target at {url}"))?;
    let model = choose_model(&models, args.common.model.as_deref())?;
    let mut report = Report::new(
        "bench",
        TargetInfo {
            url,
            model: model.id.clone(),
            endpoint: args.common.endpoint.as_str().to_string(),
            max_model_len: model.max_model_len,
        },
    );
    report.notes.extend(t.prepare(&model).await);
    report.set("requests", args.requests);
    report.set("warmup", args.warmup);
    report.set("stream", args.stream);
    report.set("prompt_tokens", args.prompt_tokens);
    report.set("max_tokens", args.max_tokens);
    report.set(
        "request_timeout_s",
        args.common.request_timeout.as_secs_f64(),
    );
    if let Some(m) = model.max_model_len
        && u64::from(args.prompt_tokens) + u64::from(args.max_tokens) > u64::from(m)
    {
        report.notes.push(format!(
            "prompt_tokens + max_tokens = {} exceeds max_model_len {m}: expect clamped or rejected requests",
            args.prompt_tokens + args.max_tokens
        ));
    }
    Ok(report)
}

/// The report's line for one request.
fn request_row(index: usize, stream: bool, s: &Sample) -> RequestRow {
    RequestRow {
        index,
        stream,
        outcome: s.outcome,
        status: s.status,
        ttfb_s: s.ttfb_s,
        ttft_s: s.ttft_s,
        tpot_s: s.tpot_s,
        e2e_s: s.e2e_s,
        prompt_tokens: s.prompt_tokens,
        output_tokens: s.output_tokens,
        finish_reason: s.finish_reason.clone(),
        error_message: s.error_message.clone(),
        itl_s: s.itl_s.clone(),
        start_s: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::fake::FakeServer;

    fn args(requests: u32, stream: StreamMode) -> BenchArgs {
        BenchArgs {
            common: crate::experiments::fake::common_args(),
            requests,
            warmup: 1,
            stream,
            prompt_tokens: 16,
            max_tokens: 8,
            workload: WorkloadArgs::default(),
            seed: 0,
            slo: SloArgs {
                slo_attainment: 0.9,
                ..SloArgs::default()
            },
            vllm_bench_json: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn both_modes_measured() {
        let f = FakeServer::new(4);
        let r = measure(&f, &args(5, StreamMode::Both), &CancellationToken::new())
            .await
            .unwrap();
        let b = r.bench.unwrap();
        assert!(!r.partial);
        assert_eq!(b.modes.len(), 2);
        assert_eq!(b.requests.len(), 10);
        let s = &b.modes[0];
        assert!(s.stream);
        assert_eq!((s.requests, s.ok), (5, 5));
        // the fake: prefill 10 ms, then 7 more tokens 5 ms apart
        let ttft = s.latency.ttft_s.p50.unwrap();
        assert!((ttft - 0.010).abs() < 1e-3, "{ttft}");
        let e2e = s.latency.e2e_s.p50.unwrap();
        assert!((e2e - 0.045).abs() < 1e-3, "{e2e}");
        assert!(!b.modes[1].stream);
        assert!(b.modes[1].latency.ttft_s.count == 0);
        assert_eq!(f.requests_seen(), 12, "1 warm-up + 5 per mode");
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_is_an_error_after_the_report() {
        let f = FakeServer::new(4);
        f.fail_all();
        let r = measure(&f, &args(3, StreamMode::Stream), &CancellationToken::new())
            .await
            .unwrap();
        let b = r.bench.as_ref().unwrap();
        assert_eq!(b.modes[0].ok, 0);
        assert_eq!(b.modes[0].errors_by_class.get("server_error"), Some(&3));
        let dir = tempfile::tempdir().unwrap();
        let out = Outputs {
            json: Some(dir.path().join("b.json")),
            ..Default::default()
        };
        let err = finish(&r, &out).unwrap_err().to_string();
        assert!(err.contains("every request failed"), "{err}");
        assert!(err.contains("HTTP 500"), "{err}");
        assert!(
            dir.path().join("b.json").exists(),
            "the report is written anyway"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_run_is_partial() {
        let f = FakeServer::new(4);
        let token = CancellationToken::new();
        token.cancel();
        let r = measure(&f, &args(3, StreamMode::Both), &token)
            .await
            .unwrap();
        assert!(r.partial);
        let out = Outputs::default();
        assert_eq!(
            finish(&r, &out).unwrap(),
            ExitCode::from(common::EXIT_INTERRUPTED)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_target_is_a_clear_error() {
        let f = FakeServer::new(4);
        f.go_down();
        let err = measure(&f, &args(3, StreamMode::Both), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot reach the target"),
            "{err:#}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn multi_turn_reports_ttft_by_turn() {
        let f = FakeServer::new(4);
        let mut a = args(7, StreamMode::Stream);
        a.warmup = 0;
        a.common.endpoint = crate::config::Endpoint::Chat;
        a.workload.dataset = crate::config::workload::SourceKind::MultiTurn;
        a.workload.multi_turn_turns = 3;
        let r = measure(&f, &a, &CancellationToken::new()).await.unwrap();
        let b = r.bench.unwrap();
        assert_eq!(b.requests.len(), 7);
        let rows: Vec<(&str, usize)> = b
            .turns
            .iter()
            .map(|t| (t.turn.as_str(), t.requests))
            .collect();
        assert_eq!(rows, vec![("1", 3), ("2", 2), ("3", 2)]);
        // the fake counts the whole history: 16, then 16 + 8 + 16, then 64 prompt tokens
        let p50: Vec<Option<f64>> = b.turns.iter().map(|t| t.prompt_tokens.p50).collect();
        assert_eq!(p50, vec![Some(16.0), Some(40.0), Some(64.0)]);
        assert!(b.turns.iter().all(|t| t.ttft_s.count == t.ok && t.ok > 0));
        assert!(
            r.settings["dataset"]
                .as_str()
                .unwrap()
                .contains("multi-turn 3 turns")
        );
        let table = crate::experiments::table::turns(&b.turns).to_string();
        assert!(table.contains("TTFT by turn"), "{table}");
    }

    #[tokio::test(start_paused = true)]
    async fn jsonl_requests_take_their_output_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\": \"a b c d e f g h\", \"output_tokens\": 5}\n",
        )
        .unwrap();
        let f = FakeServer::new(4);
        let mut a = args(3, StreamMode::Stream);
        a.workload.dataset = crate::config::workload::SourceKind::Jsonl;
        a.workload.dataset_path = Some(p.clone());
        let r = measure(&f, &a, &CancellationToken::new()).await.unwrap();
        let b = r.bench.unwrap();
        assert!(b.turns.is_empty());
        assert!(b.requests.iter().all(|q| q.output_tokens == Some(5)));
        std::fs::write(&p, "{\"prompt\": 3}\n").unwrap();
        let e = format!(
            "{:#}",
            measure(&f, &a, &CancellationToken::new())
                .await
                .unwrap_err()
        );
        assert!(e.contains("d.jsonl:1: field \"prompt\""), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn lora_needs_adapters_from_the_server() {
        let f = FakeServer::new(4);
        let mut a = args(1, StreamMode::Stream);
        a.workload.dataset = crate::config::workload::SourceKind::Lora;
        let e = format!(
            "{:#}",
            measure(&f, &a, &CancellationToken::new())
                .await
                .unwrap_err()
        );
        assert!(e.contains("lists no LoRA adapter"), "{e}");
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let mut a = args(0, StreamMode::Both);
        assert!(a.validate().unwrap_err().to_string().contains("--requests"));
        a.requests = 1;
        a.max_tokens = 0;
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-tokens")
        );
    }
}
