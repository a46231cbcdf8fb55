use super::grid::CellEvidence;
use super::held::GroupState;
use super::*;
use crate::experiments::engine::{Sample, ServerSnapshot};
use crate::experiments::fake::{self, FakeServer, common_args};

fn args() -> KvScaleArgs {
    KvScaleArgs {
        common: common_args(),
        lengths: vec![],
        max_tokens: 8,
        max_model_len: None,
        sample_interval: Duration::from_millis(2),
        no_boundary: false,
        no_grid: false,
        grid_contexts: vec![],
        grid_max_tokens: None,
        grid_max_concurrency: 64,
    }
}

#[test]
fn capacity_math() {
    let c = CacheConfig {
        block_size: 128,
        num_gpu_blocks: 128,
    };
    assert_eq!(blocks_for(256, 128), 2);
    assert_eq!(blocks_for(257, 128), 3);
    assert_eq!(blocks_for(1, 128), 1);
    assert_eq!(blocks_for(5, 0), 0);
    assert_eq!(blocks_per_sequence(256, 128), 2);
    assert_eq!(
        blocks_per_sequence(257, 128),
        2,
        "the last token is not cached"
    );
    assert_eq!(blocks_per_sequence(258, 128), 3);
    assert_eq!(blocks_per_sequence(1, 128), 1);
    // 127 usable blocks (one null block)
    assert_eq!(capacity(&c, 256), 63);
    assert_eq!(capacity(&c, 2048), 7);
    assert_eq!(capacity(&c, 1024), 15);
    assert_eq!(capacity(&c, 16_384), 0);
    assert_eq!(grid_concurrencies(Some(8), 64), vec![1, 4, 8, 9, 16]);
    assert_eq!(grid_concurrencies(Some(8), 8), vec![1, 4, 8]);
    assert_eq!(grid_concurrencies(Some(1), 64), vec![1, 2]);
    assert_eq!(grid_concurrencies(Some(0), 64), vec![1, 2]);
    assert_eq!(grid_concurrencies(None, 8), vec![1, 2, 4, 8]);
    assert_eq!(
        default_grid_contexts(2048, Some(128)),
        vec![256, 512, 1024, 2048]
    );
    assert_eq!(default_grid_contexts(100, Some(128)), vec![100]);
}

#[test]
fn ladder_reaches_past_the_limit() {
    let l = default_ladder(2048, 64);
    assert_eq!(
        l,
        vec![64, 128, 256, 512, 1024, 1984, 2016, 2047, 2048, 2049, 4096]
    );
    assert!(default_ladder(10, 64).iter().all(|x| *x >= 1));
}

#[tokio::test(start_paused = true)]
async fn ladder_boundary_and_grid_against_the_fake() {
    let f = Arc::new(FakeServer::new(64));
    let r = measure(f, &args(), &CancellationToken::new())
        .await
        .unwrap();
    assert!(!r.partial, "{:?}", r.partial_reason);
    let k = r.kv_scale.unwrap();
    let m = fake::MAX_MODEL_LEN;
    assert_eq!(k.max_model_len, Some(m));
    let by = |p: u32| {
        k.ladder
            .iter()
            .find(|r| r.prompt_tokens_requested == p)
            .unwrap()
    };
    assert_eq!(by(64).feasibility, "accepted");
    assert_eq!(by(m - 8).feasibility, "accepted");
    assert_eq!(by(m - 4).feasibility, "accepted");
    assert_eq!(by(m - 4).output_tokens, Some(4), "the whole context left");
    assert_eq!(by(m).feasibility, "rejected");
    assert!(
        by(m)
            .reason
            .as_deref()
            .unwrap()
            .contains("maximum context length")
    );
    assert_eq!(by(m).kv_usage_delta, Some(0.0));
    // A held rung: all the context left as its budget, read twice while resident, its
    // expectation from the generated tokens in the same body, closed and released.
    let r64 = by(64);
    assert_eq!(r64.max_tokens, m - 64);
    assert_eq!(r64.resident_samples, 2);
    let tokens = r64.kv_tokens_at_sample.unwrap();
    assert!(tokens >= 64, "{tokens}");
    let blocks = tokens.div_ceil(16);
    assert_eq!(r64.kv_blocks_expected, Some(blocks));
    assert_eq!(r64.kv_usage_expected, Some(blocks as f64 / 63.0));
    assert_eq!(r64.kv_usage_delta, Some(blocks as f64 / 63.0));
    assert_eq!(r64.kv_within_one_block, Some(true));
    assert_eq!(r64.released_after_close, Some(true));
    assert!(r64.kv_note.is_none());
    assert!(r64.ttft_s.unwrap() > 0.0);
    // Every rung with room to be held was measured and matched.
    for r in k.ladder.iter().filter(|r| r.feasibility == "accepted") {
        if m - r.prompt_tokens_requested >= MIN_HOLD_TOKENS {
            assert_eq!(r.kv_within_one_block, Some(true), "{r:?}");
        } else {
            assert!(r.kv_note.as_deref().unwrap().contains("too few"), "{r:?}");
            assert_eq!(r.kv_usage_delta, None, "not measured is not 0");
        }
    }
    let b = k.boundary.unwrap();
    assert_eq!(b.max_accepted_prompt_tokens, m - 1);
    assert_eq!(b.min_rejected_prompt_tokens, m);
    assert_eq!(b.consistent_with_max_model_len, Some(true));
    // grid: 63 usable blocks of 16; 256 tokens → 16 blocks → 3 sequences
    let g256 = k.grid.iter().find(|g| g.context_tokens == 256).unwrap();
    assert_eq!((g256.prompt_tokens, g256.max_tokens), (241, 15));
    assert_eq!(g256.capacity_computed, Some(3));
    assert_eq!(g256.max_fitting_observed, Some(3));
    let g64 = k.grid.iter().find(|g| g.context_tokens == 64).unwrap();
    assert_eq!(g64.capacity_computed, Some(15));
    assert_eq!(g64.max_fitting_observed, Some(15));
    for g in &k.grid {
        for c in &g.cells {
            let expect = if u64::from(c.concurrency) <= g.capacity_computed.unwrap() {
                "fits"
            } else {
                "queues"
            };
            assert_eq!(
                c.verdict, expect,
                "{} × {}",
                c.concurrency, g.context_tokens
            );
            assert_eq!(c.attempts, 1);
        }
    }
    let over = g64.cells.iter().find(|c| c.concurrency == 16).unwrap();
    assert!(!over.fits);
    assert!(over.waiting_peak.unwrap() >= 1.0);
    assert!(
        r.notes.iter().any(|n| n.contains("before any GPU work")),
        "{:?}",
        r.notes
    );
}

#[test]
fn verdicts_come_only_from_known_states() {
    let st = |started, ended| GroupState { started, ended };
    let snap = |running: f64, waiting: f64, generated: f64| ServerSnapshot {
        running: Some(running),
        waiting: Some(waiting),
        generation_tokens_total: Some(generated),
        ..Default::default()
    };
    let mut e = CellEvidence::default();
    // before every sequence started, all running proves nothing
    e.add(4, st(3, 0), &snap(4.0, 0.0, 10.0));
    assert_eq!(e, CellEvidence::default());
    // after one ended, nothing counts
    e.add(4, st(4, 1), &snap(4.0, 0.0, 10.0));
    assert_eq!(e, CellEvidence::default());
    // waiting while a sequence was still being prefilled: not known to be waiting
    e.add(4, st(2, 0), &snap(3.0, 1.0, 10.0));
    assert_eq!(e, CellEvidence::default());
    e.add(4, st(4, 0), &snap(4.0, 0.0, 10.0));
    assert!(e.all_resident && !e.one_waiting);
    // one waiting while the rest decode: known only once more than one step has passed
    let mut q = CellEvidence::default();
    q.add(4, st(3, 0), &snap(3.0, 1.0, 30.0));
    assert!(!q.one_waiting, "it may have arrived during the step");
    q.add(4, st(3, 0), &snap(3.0, 1.0, 33.0));
    assert!(
        !q.one_waiting,
        "one step: it may not have had its chance yet"
    );
    q.add(4, st(3, 0), &snap(3.0, 1.0, 34.0));
    assert!(q.one_waiting && !q.all_resident);
    // a new start in between, or no generation counter: nothing is known
    let mut q = CellEvidence::default();
    q.add(4, st(2, 0), &snap(2.0, 2.0, 30.0));
    q.add(4, st(3, 0), &snap(3.0, 1.0, 40.0));
    assert!(!q.one_waiting);
    let mut q = CellEvidence::default();
    q.add(4, st(3, 0), &snap(3.0, 1.0, 30.0));
    q.add(
        4,
        st(3, 0),
        &ServerSnapshot {
            running: Some(3.0),
            waiting: Some(1.0),
            ..Default::default()
        },
    );
    q.add(4, st(3, 0), &snap(3.0, 1.0, 40.0));
    assert!(!q.one_waiting);
    assert_eq!(cell_verdict(4, 4, true, false, Some(0.0)), "fits");
    assert_eq!(cell_verdict(4, 4, true, false, Some(1.0)), "queues");
    assert_eq!(cell_verdict(4, 4, false, true, Some(0.0)), "queues");
    assert_eq!(cell_verdict(4, 3, true, false, Some(0.0)), "failed");
    assert_eq!(cell_verdict(4, 4, false, false, None), "undecided");
    // the grid's shape keeps each sequence at exactly B blocks
    assert_eq!(grid_shape(1024, Some(128), None), (897, 127));
    assert_eq!(grid_shape(100, Some(128), None), (1, 99));
    assert_eq!(grid_shape(1000, Some(16), None), (993, 7));
    assert_eq!(grid_shape(256, None, None), (192, 64));
    assert_eq!(grid_shape(256, Some(16), Some(10)), (246, 10));
    for (ctx, bs) in [
        (1024u32, 128u64),
        (100, 128),
        (1000, 16),
        (257, 16),
        (2, 16),
    ] {
        let (p, out) = grid_shape(ctx, Some(bs), None);
        let b = blocks_per_sequence(u64::from(ctx), bs);
        for k in 1..=u64::from(out) {
            assert_eq!(
                blocks_for(u64::from(p) + k - 1, bs),
                b,
                "{ctx}/{bs} at token {k}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_rung_that_ends_before_it_is_seen_is_not_reported_as_zero() {
    // The default stream_held reports progress only at the end: never seen resident.
    struct Opaque(FakeServer);
    impl Target for Opaque {
        async fn models(&self) -> anyhow::Result<Vec<super::super::engine::ModelInfo>> {
            self.0.models().await
        }
        async fn prepare(&self, m: &super::super::engine::ModelInfo) -> Vec<String> {
            self.0.prepare(m).await
        }
        async fn execute(&self, spec: RequestSpec, intended: Instant) -> Sample {
            self.0.execute(spec, intended).await
        }
        async fn metrics(&self) -> anyhow::Result<ServerSnapshot> {
            self.0.metrics().await
        }
    }
    let f = Opaque(FakeServer::new(64));
    let mut a = args();
    a.lengths = vec![64];
    a.no_grid = true;
    a.no_boundary = true;
    let r = measure(Arc::new(f), &a, &CancellationToken::new())
        .await
        .unwrap();
    let rung = &r.kv_scale.unwrap().ladder[0];
    assert_eq!(rung.attempts, ATTEMPTS);
    assert_eq!(rung.kv_usage_delta, None);
    assert_eq!(rung.kv_within_one_block, None);
    assert!(rung.kv_note.as_deref().unwrap().contains("ended before"));
}

#[tokio::test(start_paused = true)]
async fn explicit_lengths_bisect_the_boundary() {
    let f = Arc::new(FakeServer::new(64));
    let mut a = args();
    a.lengths = vec![10, 1000];
    a.no_grid = true;
    let r = measure(f, &a, &CancellationToken::new()).await.unwrap();
    let b = r.kv_scale.unwrap().boundary.unwrap();
    assert_eq!(b.max_accepted_prompt_tokens, fake::MAX_MODEL_LEN - 1);
    assert!(b.probes >= 7 && b.probes <= 10, "{}", b.probes);
}

#[tokio::test(start_paused = true)]
async fn no_metrics_is_an_error_and_interrupt_is_partial() {
    let f = Arc::new(FakeServer::new(64));
    f.without_metrics();
    let e = measure(f, &args(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no readable /metrics"), "{e:#}");
    let f = Arc::new(FakeServer::new(64));
    let token = CancellationToken::new();
    token.cancel();
    let r = measure(f, &args(), &token).await.unwrap();
    assert!(r.partial);
}

#[test]
fn bad_arguments() {
    let mut a = args();
    a.lengths = vec![0];
    assert!(a.validate().unwrap_err().to_string().contains("--lengths"));
    let mut a = args();
    a.grid_contexts = vec![1];
    assert!(a.validate().is_err());
}

/// One body suffices when it is of a step after the held request's prefill: it shows a token
/// generated since the reading before the request. Without both counters, it does not.
#[test]
fn one_body_past_the_prefill_is_a_known_instant() {
    use super::ladder::decoded_since;
    let snap = |g: Option<f64>| ServerSnapshot {
        generation_tokens_total: g,
        ..Default::default()
    };
    assert!(decoded_since(Some(&snap(Some(10.0))), &snap(Some(11.0))));
    assert!(!decoded_since(Some(&snap(Some(10.0))), &snap(Some(10.0))));
    assert!(!decoded_since(None, &snap(Some(11.0))));
    assert!(!decoded_since(Some(&snap(None)), &snap(Some(11.0))));
    assert!(!decoded_since(Some(&snap(Some(10.0))), &snap(None)));
}
