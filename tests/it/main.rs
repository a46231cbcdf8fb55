//! The integration tests, one binary (as ripgrep's `tests/tests.rs`): one link of the crate
//! instead of one per file, and one place that lists them. Each module is one concern; run one
//! with `cargo test --test it <module>::` (e.g. `cargo test --test it tap::`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod architecture;
mod cli_binary;
mod config_files;
mod experiments_schema;
mod experiments_sim;
mod exporter_server;
mod exporter_web_config;
mod fixtures_copy;
mod gpu_daemon;
mod gpu_sampler;
mod https_target;
mod measurement_core;
mod ops_e2e;
mod ops_static;
mod prober_daemon;
mod prober_http1;
mod prober_request;
mod prober_sim;
mod prober_support;
mod scrape_conformance;
mod scrape_engines;
mod scrape_fixtures;
mod scrape_fuzz;
mod scrape_roundtrip;
mod scrape_server;
mod scrape_support;
mod sim_bench;
mod sim_wire;
mod tap;
mod workloads;
