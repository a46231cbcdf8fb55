//! One-shot serving experiments: `bench` (single-request baseline), `sweep` (throughput and
//! latency under load, saturation knee, SLO goodput) and `kv-scale` (context length against
//! KV cache and feasibility). Each writes a summary table, and on request a versioned JSON
//! report, CSV and PNG/SVG plots (see `docs/experiments.md`).

pub mod bench;
pub mod common;
pub mod engine;
pub mod goodput;
pub mod html;
pub mod http;
pub mod knee;
pub mod kvscale;
pub mod plot;
pub mod progress;
pub mod report;
pub mod stats;
pub mod sweep;
pub mod table;
pub mod vllm_bench_json;
pub mod workload;

#[cfg(test)]
pub(crate) mod fake;
