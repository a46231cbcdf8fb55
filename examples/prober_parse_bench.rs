//! Micro-benchmark of the prober's (and the tap's) per-event work: SSE splitting plus event
//! extraction, on the real vLLM capture `tests/data/vllm-0.32.0-cpu/sse_completions.raw`
//! (docs/bench-prober.md). Runs the reader the prober uses (`event::parse`: the one-pass scanner,
//! serde for other shapes) and, in the same run, serde alone (`event::parse_serde`), and prints
//! the ratio.
//!
//! ```text
//! cargo run --release --example prober_parse_bench
//! ```

use std::time::Instant;

use vllm_sentinel::prober::{event, sse::SseParser};

fn main() {
    let raw = include_bytes!("../tests/data/vllm-0.32.0-cpu/sse_completions.raw");
    let reps = 200_000;
    // One network read per event, as a streaming server sends them.
    let chunks: Vec<&[u8]> = raw
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| {
            let start = c[0].as_ptr() as usize - raw.as_ptr() as usize;
            let len: usize = c.iter().map(|l| l.len()).sum();
            &raw[start..start + len]
        })
        .collect();
    let run = |parse: fn(&[u8]) -> Result<event::EventSummary, event::ParseError>| {
        let mut parser = SseParser::new(256 * 1024);
        let (mut events, mut content) = (0u64, 0u64);
        let t0 = Instant::now();
        for _ in 0..reps {
            for c in &chunks {
                let _ = parser.feed(c, 0, &mut |data, _| {
                    events += 1;
                    if data != b"[DONE]"
                        && let Ok(e) = parse(data)
                    {
                        content += u64::from(e.content);
                    }
                    true
                });
            }
        }
        let ns = t0.elapsed().as_nanos() as f64 / events as f64;
        (events, content, ns)
    };
    // Alternate the two readers (3 rounds each) so drift on a shared machine hits both.
    let (mut fast, mut serde) = (Vec::new(), Vec::new());
    let mut counts = (0, 0);
    for _ in 0..3 {
        let (e, c, ns) = run(event::parse);
        fast.push(ns);
        counts = (e, c);
        let (_, c2, ns) = run(event::parse_serde);
        assert_eq!(c, c2, "both readers see the same content events");
        serde.push(ns);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (f, s) = (best(&fast), best(&serde));
    println!(
        "{} events per round ({} with content); best of 3 rounds, split + parse per event: \
         event::parse {f:.0} ns, serde alone {s:.0} ns (ratio {:.2})",
        counts.0,
        counts.1,
        s / f
    );
}
