//! Workload sources end to end against the built-in simulator on 127.0.0.1:0: `bench` with a
//! JSON Lines dataset and with multi-turn sessions (the per-turn TTFT section), the daemon's
//! prober with `source = "jsonl"` and `source = "multi-turn"` workloads, LoRA adapters in both
//! (the simulator listing them as vLLM does), and a bad dataset stopping `check-config` with the
//! file, line and field.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vllm_sentinel::cli::{Cli, Command};
use vllm_sentinel::experiments::bench;

use crate::prober_support::harness::{parse_config, start_prober};
use crate::prober_support::metric;

async fn start_sim() -> (String, CancellationToken) {
    start_sim_with(&[]).await
}

/// The simulator, serving `adapters` as LoRA adapters of its model `tiny`.
async fn start_sim_with(adapters: &[&str]) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = vllm_sentinel::sim::SimConfig {
        model: "tiny".into(),
        fixed_timing: Some(vllm_sentinel::sim::parse_fixed_timing("2ms,1ms").unwrap()),
        lora_modules: adapters.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let token = CancellationToken::new();
    tokio::spawn(vllm_sentinel::sim::serve(listener, cfg, token.clone()));
    (url, token)
}

fn cli(args: &[&str]) -> Cli {
    let mut v = vec!["vllm-sentinel"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const JSONL: &str = "{\"prompt\": \"What is a KV cache and why does it fill up?\", \"output_tokens\": 5}\n{\"prompt\": \"Say hello.\", \"output_tokens\": 3}\n\n{\"prompt\": \"Count to three.\", \"max_tokens\": 7}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_a_jsonl_dataset() {
    let (url, sim) = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, JSONL).unwrap();
    let json = dir.path().join("bench.json");
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &url,
        "--dataset",
        "jsonl",
        "--dataset-path",
        data.to_str().unwrap(),
        "--requests",
        "9",
        "--warmup",
        "1",
        "--stream",
        "stream",
        "--json",
        json.to_str().unwrap(),
        "--no-progress",
    ])
    .command
    else {
        unreachable!()
    };
    let code = bench::run_cli(a, CancellationToken::new()).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v = read_json(&json);
    let reqs = v["bench"]["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 9);
    for r in reqs {
        assert_eq!(r["outcome"], "ok", "{r}");
        // every request asks for one of the dataset's output lengths (ignore_eos: exactly)
        let out = r["output_tokens"].as_u64().unwrap();
        assert!([3, 5, 7].contains(&out), "{r}");
    }
    assert!(
        v["bench"].get("turns").is_none(),
        "no turns without sessions"
    );
    assert!(
        v["settings"]["dataset"].as_str().unwrap().contains("jsonl"),
        "{}",
        v["settings"]
    );
    sim.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_multi_turn_reports_ttft_by_turn() {
    let (url, sim) = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &url,
        "--endpoint",
        "chat",
        "--dataset",
        "multi-turn",
        "--multi-turn-turns",
        "3",
        "--prompt-tokens",
        "24",
        "--max-tokens",
        "6",
        "--requests",
        "9",
        "--warmup",
        "0",
        "--stream",
        "stream",
        "--seed",
        "7",
        "--json",
        json.to_str().unwrap(),
        "--no-progress",
    ])
    .command
    else {
        unreachable!()
    };
    let code = bench::run_cli(a, CancellationToken::new()).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v = read_json(&json);
    let errs = crate::experiments_schema::validate(&v);
    assert!(
        errs.is_empty(),
        "the report with turns fits the schema: {errs:#?}"
    );
    assert_eq!(v["bench"]["requests"].as_array().unwrap().len(), 9);
    let turns = v["bench"]["turns"].as_array().unwrap();
    let names: Vec<&str> = turns.iter().map(|t| t["turn"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["1", "2", "3"]);
    for t in turns {
        assert_eq!(
            (t["requests"].as_u64(), t["ok"].as_u64()),
            (Some(3), Some(3))
        );
        assert_eq!(t["ttft_s"]["count"], 3);
        assert!(t["ttft_s"]["p50"].as_f64().unwrap() > 0.0);
    }
    // each turn carries the session's history: the server counts longer prompts
    let p = |i: usize| turns[i]["prompt_tokens"]["p50"].as_f64().unwrap();
    assert!(p(1) > p(0) + 24.0 && p(2) > p(1) + 24.0, "{turns:?}");
    sim.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_workloads_from_a_dataset_and_sessions() {
    let (url, sim) = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"one two three\", \"output_tokens\": 5}\n{\"prompt\": \"four five\", \"output_tokens\": 5}\n",
    )
    .unwrap();
    let text = format!(
        "[prober]\nerror_backoff = \"10ms\"\n[[targets]]\nname = \"sim\"\nurl = \"{url}\"\nendpoint = \"chat\"\n[[targets.workloads]]\nname = \"data\"\nsource = \"jsonl\"\npath = {:?}\n[[targets.workloads]]\nname = \"mt1\"\nsource = \"multi-turn\"\nturns = 1\nprompt_tokens = 16\nmax_tokens = 4\n[[targets.workloads]]\nname = \"mt4\"\nsource = \"multi-turn\"\nturns = 4\nprompt_tokens = 16\nmax_tokens = 4\n[targets.canary]\nenabled = false\n",
        data.to_str().unwrap()
    );
    let h = start_prober(parse_config(&text));
    let req = "vllm_sentinel_probe_requests_total";
    let ok = |w: &'static str| move |t: &str| metric(t, req, &[w, "outcome=\"ok\""]);
    h.wait_for("requests of every workload", |t| {
        ok("workload=\"data\"")(t) >= 4.0
            && ok("workload=\"mt1\"")(t) >= 4.0
            && ok("workload=\"mt4\"")(t) >= 4.0
    })
    .await;
    // The exposition after shutdown: no request is being recorded while it is encoded, so the
    // families agree with each other.
    let t = h.shutdown().await;
    sim.cancel();
    let out = |w: &str| metric(&t, "vllm_sentinel_probe_output_tokens_total", &[w]);
    let n = |w: &'static str| ok(w)(&t);
    assert_eq!(
        out("workload=\"data\"") / n("workload=\"data\""),
        5.0,
        "max_tokens from the dataset"
    );
    let prompt =
        |w: &'static str| metric(&t, "vllm_sentinel_probe_prompt_tokens_total", &[w]) / n(w);
    // mt4's turns 2 to 4 carry the history: on average far longer prompts than mt1's single turn
    assert!(
        prompt("workload=\"mt4\"") > 1.5 * prompt("workload=\"mt1\""),
        "mt4 {} vs mt1 {}",
        prompt("workload=\"mt4\""),
        prompt("workload=\"mt1\"")
    );
    assert_eq!(
        metric(&t, req, &[]),
        metric(&t, req, &["outcome=\"ok\""]) + metric(&t, req, &["outcome=\"cancelled\""]),
        "no failures (requests in flight at shutdown end as cancelled)"
    );
    // TTFT by turn: mt4's third turn was recorded before its fourth request was sent
    let turn = |w: &str, k: &str| {
        let tl = format!("turn=\"{k}\"");
        metric(
            &t,
            "vllm_sentinel_probe_turn_ttft_seconds_count",
            &[w, tl.as_str()],
        )
    };
    for k in ["1", "2", "3"] {
        assert!(turn("workload=\"mt4\"", k) >= 1.0, "mt4 turn {k}");
    }
    assert_eq!(
        turn("workload=\"mt1\"", "2"),
        0.0,
        "mt1 has single-turn sessions"
    );
    assert!(turn("workload=\"mt1\"", "1") >= 1.0);
    assert!(
        !t.lines()
            .any(|l| l.starts_with("vllm_sentinel_probe_turn_ttft_seconds")
                && l.contains("workload=\"data\"")),
        "no turn series for other sources"
    );
}

#[tokio::test]
async fn check_config_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"prompt\": \"ok\"}\n{\"prompt\": 7}\n").unwrap();
    let cfg = dir.path().join("sentinel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[targets]]\nurl = \"http://127.0.0.1:9\"\n[[targets.workloads]]\nsource = \"jsonl\"\npath = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let c = cli(&["check-config", "--config", cfg.to_str().unwrap()]);
    let e = format!("{:#}", vllm_sentinel::run_async(c).await.unwrap_err());
    assert!(
        e.contains(&format!(
            "targets[0].workloads[0].path: {}:2: field \"prompt\": expected a string",
            data.display()
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_requests_go_round_robin_to_the_listed_adapters() {
    let (url, sim) = start_sim_with(&["sql", "chat"]).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &url,
        "--dataset",
        "lora",
        "--requests",
        "4",
        "--stream",
        "stream",
        "--json",
        json.to_str().unwrap(),
        "--no-progress",
    ])
    .command
    else {
        unreachable!()
    };
    let code = bench::run_cli(a, CancellationToken::new()).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v = read_json(&json);
    let reqs = v["bench"]["requests"].as_array().unwrap();
    assert!(reqs.iter().all(|r| r["outcome"] == "ok"), "{reqs:?}");
    let d = v["settings"]["dataset"].as_str().unwrap();
    assert!(d.contains("(sql,chat)"), "{d}");

    // an adapter the server does not list is refused before any request
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &url,
        "--dataset",
        "lora",
        "--lora-modules",
        "sql,nope",
        "--no-progress",
    ])
    .command
    else {
        unreachable!()
    };
    let e = format!(
        "{:#}",
        bench::run_cli(a, CancellationToken::new())
            .await
            .unwrap_err()
    );
    assert!(e.contains("\"nope\" is not listed"), "{e}");

    // the daemon: one series per adapter under the `model` label
    let text = format!(
        "[[targets]]\nname = \"sim\"\nurl = \"{url}\"\n[[targets.workloads]]\nname = \"l\"\nsource = \"lora\"\nprompt_tokens = 8\nmax_tokens = 2\n[targets.canary]\nenabled = false\n"
    );
    let h = start_prober(parse_config(&text));
    let req = "vllm_sentinel_probe_requests_total";
    let t = h
        .wait_for("requests to both adapters", |t| {
            metric(t, req, &["model=\"sql\"", "outcome=\"ok\""]) >= 2.0
                && metric(t, req, &["model=\"chat\"", "outcome=\"ok\""]) >= 2.0
        })
        .await;
    assert_eq!(
        metric(&t, req, &["model=\"tiny\""]),
        0.0,
        "no request to the base model"
    );
    h.shutdown().await;
    sim.cancel();
}

/// `bench --dataset lora` takes the adapters from the `/v1/models` read that found the model:
/// the list is read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_lora_reads_the_model_list_once() {
    let mut fake = crate::prober_support::start(crate::prober_support::vllm_with_adapter).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let Command::Bench(a) = cli(&[
        "bench",
        "--target",
        &fake.url,
        "--dataset",
        "lora",
        "--requests",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--no-progress",
        "--no-gpu",
    ])
    .command
    else {
        unreachable!()
    };
    let code = bench::run_cli(a, CancellationToken::new()).await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let d = read_json(&json)["settings"]["dataset"].to_string();
    assert!(d.contains("(sql)"), "{d}");
    assert_eq!(fake.count("/v1/models"), 1, "reads of /v1/models");
}
