//! Micro-benchmark of the prober's per-event work: SSE splitting plus event extraction, on the
//! real vLLM capture `tests/data/vllm-0.32.0-cpu/sse_completions.raw` (docs/bench-prober.md).
//!
//! ```text
//! cargo run --release --example prober_parse_bench
//! ```

use std::time::Instant;

use vllm_sentinel::prober::{event, sse::SseParser};

fn main() {
    let raw = include_bytes!("../tests/data/vllm-0.32.0-cpu/sse_completions.raw");
    let reps = 200_000;
    let mut events = 0u64;
    let mut content = 0u64;
    let mut parser = SseParser::new(256 * 1024);
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
    let t0 = Instant::now();
    for _ in 0..reps {
        for c in &chunks {
            let _ = parser.feed(c, 0, &mut |data, _| {
                events += 1;
                if data != b"[DONE]"
                    && let Ok(e) = event::parse(data)
                {
                    content += u64::from(e.content);
                }
                true
            });
        }
    }
    let dt = t0.elapsed();
    println!(
        "{events} events ({content} with content) in {:.3} s: {:.0} ns per event (split + parse)",
        dt.as_secs_f64(),
        dt.as_nanos() as f64 / events as f64
    );
}
