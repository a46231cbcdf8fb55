//! The metrics contract, in one place: the registry `/metrics` serves.
//!
//! The test below builds the registry exactly as the daemon does
//! ([`crate::daemon::register_subsystems`]) with two fake GPUs ([`crate::gpu::FakeSource`], as
//! `demo --fake-gpus`), writes one series of every label combination the code can produce (one
//! probe request and one tap request per outcome, every canary result, a scraped vLLM body, an
//! Xid, ...), encodes it as Prometheus scrapes it (text 0.0.4), and compares the result with
//! docs/metrics.md:
//! - the generated reference table (between the `BEGIN GENERATED` and `END GENERATED` markers):
//!   every family with its type, labels and help, regenerated and diffed;
//!   `VLLM_SENTINEL_BLESS=1 cargo test --lib contract` rewrites it;
//! - the hand-written tables above it: the same set of families (a family added to the code
//!   without a row, or a row for a family the code no longer has, fails) with the same types.
//!
//! Pass-through families (upstream names re-exported under their own names) are not part of the
//! contract and are left out.

use std::collections::{BTreeMap, BTreeSet};

/// One family as the exposition shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FamilyDoc {
    pub typ: String,
    pub help: String,
    pub labels: BTreeSet<String>,
}

/// Families of a Prometheus text 0.0.4 exposition: name -> type, help, label names (`le` of
/// histogram buckets left out). Only `vllm_sentinel_*` and `process_*` names.
pub(crate) fn families_of(exposition: &str) -> BTreeMap<String, FamilyDoc> {
    let mut out: BTreeMap<String, FamilyDoc> = BTreeMap::new();
    let ours = |n: &str| n.starts_with("vllm_sentinel_") || n.starts_with("process_");
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if ours(name) {
                out.entry(name.to_string())
                    .or_insert_with(|| FamilyDoc {
                        typ: String::new(),
                        help: String::new(),
                        labels: BTreeSet::new(),
                    })
                    .help = help.replace("\\\\", "\\").replace("\\n", " ");
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, typ) = rest.split_once(' ').unwrap_or((rest, ""));
            if ours(name) {
                out.entry(name.to_string())
                    .or_insert_with(|| FamilyDoc {
                        typ: String::new(),
                        help: String::new(),
                        labels: BTreeSet::new(),
                    })
                    .typ = typ.to_string();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let sample = &line[..end];
            let family = if out.contains_key(sample) {
                sample.to_string()
            } else {
                match ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| sample.strip_suffix(s))
                {
                    Some(base) if out.contains_key(base) => base.to_string(),
                    _ => continue,
                }
            };
            let labels = label_names(&line[end..]);
            if let Some(f) = out.get_mut(&family) {
                f.labels.extend(labels.into_iter().filter(|l| l != "le"));
            }
        }
    }
    out
}

/// Label names of `{a="x",b="y"} 1` (values may hold escaped quotes, commas and braces).
fn label_names(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let Some(body) = rest.strip_prefix('{') else {
        return names;
    };
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim_start_matches(',')
            .trim()
            .to_string();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name);
        // the quoted value
        if chars.next() != Some('"') {
            break;
        }
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => {}
            }
        }
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    names
}

pub(crate) const BEGIN: &str = "<!-- BEGIN GENERATED: the reference table, from the registry (src/contract.rs; VLLM_SENTINEL_BLESS=1 cargo test --lib contract rewrites it) -->";
pub(crate) const END: &str = "<!-- END GENERATED -->";

/// The generated reference table (between the markers).
pub(crate) fn reference_table(families: &BTreeMap<String, FamilyDoc>) -> String {
    let mut s = String::from("| family | type | labels | help |\n|---|---|---|---|\n");
    for (name, f) in families {
        let labels = f.labels.iter().cloned().collect::<Vec<_>>().join(", ");
        let help = f.help.replace('|', "\\|");
        s.push_str(&format!("| `{name}` | {} | {labels} | {help} |\n", f.typ));
    }
    s
}

/// Families of the hand-written tables of docs/metrics.md (outside the generated block):
/// name -> type cell. A row's first cell lists one or more backticked names; an abbreviated
/// name such as `_used_bytes` after `vllm_sentinel_gpu_memory_total_bytes` replaces as many
/// trailing words of the row's first name as the first abbreviation has (the rule of
/// scripts/ops/opslib.py `parse_contract`).
pub(crate) fn hand_tables(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        if !line.starts_with('|') || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 2 || cells[0].trim() == "family" {
            continue;
        }
        let names: Vec<&str> = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| !n.is_empty())
            .collect();
        let Some(first) = names.first() else {
            continue;
        };
        let typ = cells[1].trim().to_string();
        let mut prefix: Option<String> = None;
        for n in &names {
            if let Some(abbr) = n.strip_prefix('_') {
                let p = prefix.get_or_insert_with(|| {
                    let words: Vec<&str> = first.split('_').collect();
                    let k = abbr.split('_').count();
                    words[..words.len().saturating_sub(k)].join("_")
                });
                out.insert(format!("{p}_{abbr}"), typ.clone());
            } else {
                out.insert((*n).to_string(), typ.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::{Config, TargetConfig};
    use crate::prober::metrics::{CanaryLabels, CanaryProbeLabels, ProbeLabels};
    use crate::prober::request::{Outcome, RequestRecord};
    use crate::tap::metrics::{TrafficOutcome, TrafficRecord};
    use prometheus_client::registry::Registry;
    use std::time::{Duration, Instant};

    /// The registry of a daemon with one target, the tap, two fake GPUs with every optional
    /// field on, and one series of every label combination the code writes.
    async fn full_exposition() -> String {
        let mut cfg = Config::default();
        let mut target = TargetConfig::from_url("http://127.0.0.1:8000");
        target.name = Some("sim".into());
        cfg.targets.push(target);
        cfg.tap.enabled = true;
        cfg.scrape.passthrough = true;
        cfg.gpu.enabled = true;
        cfg.gpu.pcie_throughput = true;
        cfg.gpu.processes = true;
        cfg.gpu.xid_events = true;
        cfg.gpu.interval = Duration::from_millis(50);
        let (source, control) = crate::gpu::FakeSource::with_gpus(2);
        control
            .state()
            .xid_queue
            .push(crate::gpu::source::XidEvent {
                index: 0,
                xid: Some(79),
            });
        let mut registry = Registry::default();
        let subs = crate::daemon::register_subsystems(&cfg, &mut registry, Some(Box::new(source)))
            .expect("register");

        record_prober(subs.prober.metrics());
        record_tap(subs.tap.metrics());

        // The scraper: a real vLLM body, with the client/server join means.
        let run = crate::scrape::target_runs(&cfg).remove(0);
        let mut ts = crate::scrape::scraper::TargetScraper::new(
            run,
            crate::scrape::http_client().expect("client"),
        );
        let body = include_bytes!("../tests/data/vllm-0.32.0-cpu/metrics_busy.txt");
        let mut view = ts
            .process(
                body,
                crate::scrape::expfmt::Format::Prometheus,
                Instant::now(),
            )
            .await;
        for wc in crate::scrape::export::WindowConcept::ALL {
            view.window.insert((wc, "m".into(), "0".into()), 0.1);
        }
        subs.scraper.board().publish(std::sync::Arc::new(view));

        // The GPUs: the first complete sample.
        let cell = subs.gpu.snapshots();
        let threads = subs.gpu.start(None).expect("start").expect("enabled");
        let (_, ok) = cell.wait_until(Duration::from_secs(20), |s| {
            s.devices.len() == 2 && s.devices.iter().any(|d| !d.xid_counts.is_empty())
        });
        assert!(ok, "no complete GPU sample with the Xid within 20 s");
        let (text, _) = crate::exporter::encode(&registry, None).expect("encode");
        threads.stop();
        text
    }

    /// The prober: one request per outcome, every canary probe and result, discovery.
    fn record_prober(pm: &crate::prober::metrics::ProberMetrics) {
        let l = ProbeLabels {
            target: "sim".into(),
            model: "m".into(),
            workload: "default".into(),
            endpoint: crate::config::Endpoint::Completions,
        };
        let w = pm.workload(&l);
        for o in Outcome::ALL {
            let mut r = RequestRecord::new(0, 0);
            r.outcome = o;
            r.ttfb = Some(Duration::from_millis(10));
            r.ttft = Some(Duration::from_millis(20));
            r.itl = vec![Duration::from_millis(5)];
            r.tpot = Some(Duration::from_millis(5));
            r.e2e = Duration::from_millis(100);
            r.prompt_tokens = Some(10);
            r.output_tokens = Some(3);
            r.finish_reason = Some("stop".into());
            w.record(&r);
        }
        let c = CanaryLabels {
            target: "sim".into(),
            model: "m".into(),
        };
        pm.canary_max_model_len.get_or_create(&c).set(1);
        pm.canary_max_served.get_or_create(&c).set(1);
        pm.canary_honoured.get_or_create(&c).set(1);
        for probe in ["inside", "over"] {
            for result in ["served", "rejected", "error"] {
                pm.canary_probes
                    .get_or_create(&CanaryProbeLabels {
                        target: "sim".into(),
                        model: "m".into(),
                        probe: probe.into(),
                        result: result.into(),
                    })
                    .inc();
            }
        }
        pm.target_configured("sim");
        let mut r = RequestRecord::new(0, 0);
        r.ttft = Some(Duration::from_millis(20));
        pm.turn_ttft("sim", "chat").record(2, &r);
    }

    /// The tap: one request per outcome, streamed and not, passthrough, upstream errors.
    fn record_tap(tm: &crate::tap::TrafficMetrics) {
        for outcome in TrafficOutcome::ALL {
            for (stream, estimated) in [(true, true), (false, false)] {
                let mut rec = RequestRecord::new(0, 0);
                rec.ttft = Some(Duration::from_millis(20));
                rec.itl = vec![Duration::from_millis(5)];
                rec.tpot = Some(Duration::from_millis(5));
                rec.e2e = Duration::from_millis(100);
                rec.prompt_tokens = Some(10);
                rec.output_tokens = Some(3);
                tm.record(
                    "sim",
                    &TrafficRecord {
                        model: "m".into(),
                        endpoint: crate::config::Endpoint::Chat,
                        stream,
                        outcome,
                        rec,
                        tokens_estimated: estimated,
                        context_ratio: Some(1.5),
                    },
                );
            }
        }
        tm.passthrough("sim", "2xx");
        tm.upstream_error("sim", "timeout");
        tm.models_known
            .get_or_create(&crate::tap::metrics::TargetLabels {
                target: "sim".into(),
            })
            .set(1);
        tm.in_flight
            .get_or_create(&crate::tap::metrics::TargetLabels {
                target: "sim".into(),
            })
            .set(0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn docs_metrics_md_is_the_registry() {
        let text = full_exposition().await;
        let fams = families_of(&text);
        for (name, f) in &fams {
            assert!(!f.typ.is_empty(), "{name}: no TYPE line");
            assert!(!f.help.is_empty(), "{name}: no HELP text");
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
        let doc = std::fs::read_to_string(&path).expect("read docs/metrics.md");
        let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
            panic!("docs/metrics.md lacks the markers {BEGIN} ... {END}");
        };
        let generated = format!("{BEGIN}\n{}{END}", reference_table(&fams));
        let current = &doc[b..e + END.len()];
        if current != generated {
            if std::env::var("VLLM_SENTINEL_BLESS").as_deref() == Ok("1") {
                let new = format!("{}{generated}{}", &doc[..b], &doc[e + END.len()..]);
                std::fs::write(&path, new).expect("write docs/metrics.md");
            } else {
                let old: BTreeSet<&str> = current.lines().collect();
                let new: BTreeSet<&str> = generated.lines().collect();
                let gone: Vec<_> = old.difference(&new).collect();
                let added: Vec<_> = new.difference(&old).collect();
                panic!(
                    "the reference table of docs/metrics.md is not the registry's \
                     (VLLM_SENTINEL_BLESS=1 cargo test --lib contract rewrites it; then describe \
                     any new family in the hand-written tables)\n- in the doc only: {gone:#?}\n\
                     + in the registry only: {added:#?}"
                );
            }
        }

        // The hand-written tables name the same families, with the same types.
        let hand = hand_tables(&format!("{}{}", &doc[..b], &doc[e + END.len()..]));
        let missing: Vec<_> = fams.keys().filter(|n| !hand.contains_key(*n)).collect();
        let stale: Vec<_> = hand.keys().filter(|n| !fams.contains_key(*n)).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/metrics.md hand-written tables: families of the registry without a row: \
             {missing:?}; rows for families the registry does not have: {stale:?}"
        );
        for (name, f) in &fams {
            let cell = &hand[name];
            assert!(
                cell.starts_with(&f.typ),
                "docs/metrics.md: {name} is a {} in the registry, the table says {cell:?}",
                f.typ
            );
        }
    }

    #[test]
    fn label_names_are_read_through_escapes() {
        assert_eq!(
            label_names(r#"{a="x,\"}y",b="",c="\\"} 1"#),
            vec!["a", "b", "c"]
        );
        assert!(label_names(" 1").is_empty());
    }

    #[test]
    fn abbreviated_names_expand() {
        let h = hand_tables(
            "| `vllm_sentinel_gpu_sm_clock_hertz`, `_memory_clock_hertz` | gauge | | |\n",
        );
        assert!(
            h.contains_key("vllm_sentinel_gpu_memory_clock_hertz"),
            "{h:?}"
        );
    }
}
