//! A stable-Rust fuzz harness for the exposition parser (cargo-fuzz needs nightly).
//!
//! It mutates real and hand-written bodies with a seeded RNG (byte flips, deletions,
//! insertions of the characters the grammar cares about, line duplication, splicing,
//! truncation, CRLF) and checks, for every mutant, that nothing panics and that the parse
//! result is consistent: families tile the samples, label ranges are in bounds, every sample
//! name starts with its family's name, error counts add up, an error-free parse renders and
//! parses back to the same samples, and normalising, pass-through and our own encoding of the
//! result never fail and always produce an exposition our parser accepts without error.
//!
//! Bounded by default (CI): `SCRAPE_FUZZ_ITERS` (default 400) and `SCRAPE_FUZZ_SECS` (default
//! 20). Run longer with, e.g.:
//!
//! ```text
//! SCRAPE_FUZZ_ITERS=10000000 SCRAPE_FUZZ_SECS=3600 SCRAPE_FUZZ_SEED=7 \
//!   cargo test --release --test scrape_fuzz -- --nocapture
//! ```
//!
//! A failing input is written to `target/scrape-fuzz-crash-<seed>-<iteration>.txt`; keep it in
//! `tests/data/scrape/regressions/`, where [`regressions_stay_fixed`] replays every file.

use crate::scrape_support;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use scrape_support::*;
use vllm_sentinel::scrape::expfmt::{self, Format};
use vllm_sentinel::scrape::export::{Board, TargetView};
use vllm_sentinel::scrape::{normalize, passthrough};

const SPECIALS: &[u8] = b"{}\"\\=,# \n\r\t:_+-.eE0123456789NaInf\xff";

fn corpus() -> Vec<Vec<u8>> {
    let mut c: Vec<Vec<u8>> = [
        "vllm_0_10_multiprocess.txt",
        "sglang.txt",
        "tgi.txt",
        "llamacpp.txt",
        "trtllm_triton.txt",
        "trtllm_serve.txt",
    ]
    .iter()
    .map(|n| data(n).into_bytes())
    .collect();
    // A clean OpenMetrics body: its unit is the family name's suffix (else a `metadata` error).
    c.push(b"# TYPE foo_seconds counter\n# UNIT foo_seconds seconds\nfoo_seconds_total{a=\"x\"} 1.5 # {trace_id=\"abc\"} 0.5 123.25\nfoo_seconds_created{a=\"x\"} 1.7e9\n# TYPE bar info\nbar_info{version=\"1\"} 1\n# EOF\n".to_vec());
    // Pieces of the real body keep mutants fast in debug builds.
    let busy = fixture("metrics_busy.txt");
    let lines: Vec<&str> = busy.lines().collect();
    for chunk in lines.chunks(60) {
        c.push(format!("{}\n", chunk.join("\n")).into_bytes());
    }
    c
}

fn mutate(rng: &mut SmallRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = corpus[rng.random_range(0..corpus.len())].clone();
    for _ in 0..rng.random_range(1..6) {
        if b.is_empty() {
            b.push(b'a');
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..8) {
            0 => b[at] = SPECIALS[rng.random_range(0..SPECIALS.len())],
            1 => {
                b.insert(at, SPECIALS[rng.random_range(0..SPECIALS.len())]);
            }
            2 => {
                let end = (at + rng.random_range(1..20)).min(b.len());
                b.drain(at..end);
            }
            3 => b.truncate(at),
            4 => {
                // Duplicate a line.
                let start = b[..at]
                    .iter()
                    .rposition(|c| *c == b'\n')
                    .map_or(0, |i| i + 1);
                let end = b[at..]
                    .iter()
                    .position(|c| *c == b'\n')
                    .map_or(b.len(), |i| at + i + 1);
                let line = b[start..end].to_vec();
                b.splice(end..end, line);
            }
            5 => {
                // Splice a random slice of another body.
                let o = &corpus[rng.random_range(0..corpus.len())];
                if !o.is_empty() {
                    let s = rng.random_range(0..o.len());
                    let e = (s + rng.random_range(1..200)).min(o.len());
                    b.splice(at..at, o[s..e].iter().copied());
                }
            }
            6 => {
                b = String::from_utf8_lossy(&b)
                    .replace('\n', "\r\n")
                    .into_bytes();
            }
            _ => b[at] ^= 1 << rng.random_range(0..8),
        }
    }
    b
}

/// Every invariant for one input. Panics (caught by the caller) on a violation.
fn check(input: &[u8], encode: bool) {
    for fmt in [Format::Prometheus, Format::OpenMetrics] {
        let e = expfmt::parse_bytes(input, fmt);
        let mut at = None::<u32>;
        let mut total = 0usize;
        for f in &e.families {
            assert!(f.samples.0 <= f.samples.1 && (f.samples.1 as usize) <= e.samples.len());
            if let Some(prev) = at {
                assert!(f.samples.0 >= prev, "families overlap");
            }
            at = Some(f.samples.1);
            total += f.len();
            for s in e.family_samples(f) {
                assert!(s.name.starts_with(f.name), "{} in {}", s.name, f.name);
            }
        }
        assert_eq!(total, e.samples.len(), "every sample in exactly one family");
        for s in &e.samples {
            assert!(s.labels.0 <= s.labels.1 && (s.labels.1 as usize) <= e.labels.len());
            if let Some(x) = s.exemplar {
                assert!((x.labels.1 as usize) <= e.labels.len());
            }
        }
        let counted: u32 = e.error_counts().map(|(_, n)| n).sum();
        assert_eq!(counted, e.error_total());
        assert!(e.errors.len() <= expfmt::MAX_KEPT_ERRORS);
        if e.error_total() == 0 {
            let again = expfmt::render(&e);
            let e2 = expfmt::parse(&again, fmt);
            assert_eq!(
                e2.error_total(),
                0,
                "render of a clean parse is clean: {:?}",
                e2.errors
            );
            assert_eq!(e2.samples.len(), e.samples.len());
        }
        if e.fatal().is_some() {
            continue;
        }
        let n = normalize::normalize(&e, "m");
        let p = passthrough::build(&e, "t", 1000);
        if encode {
            let view = TargetView {
                target: "t".into(),
                server: Some(n),
                info: Some(("vllm", "x".into())),
                passthrough: Some(Arc::new(p)),
                passthrough_enabled: true,
                ..Default::default()
            };
            let board = Arc::new(Board::default());
            board.publish(Arc::new(view));
            let reg = registry(&board);
            let (text, _) = vllm_sentinel::exporter::encode(&reg, None).expect("encode 0.0.4");
            let out = expfmt::parse(&text, Format::Prometheus);
            assert_eq!(
                out.error_total(),
                0,
                "our output must parse: {:?}\n{text}",
                out.errors
            );
            let (om, _) =
                vllm_sentinel::exporter::encode(&reg, Some("application/openmetrics-text"))
                    .expect("encode OpenMetrics");
            let out = expfmt::parse(&om, Format::OpenMetrics);
            assert_eq!(
                out.error_total(),
                0,
                "our OpenMetrics must parse: {:?}\n{om}",
                out.errors
            );
        }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_bodies_never_panic_and_stay_consistent() {
    let seed = env_num("SCRAPE_FUZZ_SEED", 0x5c4a9e);
    let iters = env_num("SCRAPE_FUZZ_ITERS", 400);
    let budget = Duration::from_secs(env_num("SCRAPE_FUZZ_SECS", 20));
    let corpus = corpus();
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < iters && t0.elapsed() < budget {
        let input = mutate(&mut rng, &corpus);
        let encode = done.is_multiple_of(8);
        if std::panic::catch_unwind(AssertUnwindSafe(|| check(&input, encode))).is_err() {
            let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("target/scrape-fuzz-crash-{seed}-{done}.txt"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "iteration {done} (seed {seed}) failed; input saved to {}",
                path.display()
            );
        }
        done += 1;
    }
    eprintln!(
        "scrape fuzz: {done} inputs in {:?} (seed {seed})",
        t0.elapsed()
    );
    assert!(done >= iters.min(50), "ran only {done} inputs");
}

#[test]
fn regressions_stay_fixed() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/scrape/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "txt") {
            check(&std::fs::read(&path).unwrap(), true);
            n += 1;
        }
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
