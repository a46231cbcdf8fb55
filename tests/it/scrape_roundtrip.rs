//! Round trips: our own /metrics (prometheus-client's encoders) parses back to what was
//! registered, and generated bodies parse back to the model they were rendered from.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use std::sync::atomic::AtomicU64;
use vllm_sentinel::scrape::expfmt::{self, ErrorKind, Exposition, Format, MetricType, Suffix};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L {
    target: String,
    outcome: String,
}

fn registry() -> Registry {
    let mut r = Registry::default();
    vllm_sentinel::exporter::register_common(&mut r);
    let c: Family<L, Counter> = Family::default();
    c.get_or_create(&L {
        target: "a".into(),
        outcome: "ok".into(),
    })
    .inc_by(41);
    c.get_or_create(&L {
        target: "we\"ird\\ \nname,{x}".into(),
        outcome: "timeout".into(),
    })
    .inc();
    r.register("vllm_sentinel_probe_requests", "Probe requests", c.clone());
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(0.503_937_007_874_015_7);
    r.register("vllm_sentinel_server_kv_cache_usage_ratio", "KV", g);
    let nan: Gauge<f64, AtomicU64> = Gauge::default();
    nan.set(f64::NAN);
    r.register("nan_gauge", "NaN", nan);
    let h = Histogram::new([0.01, 0.1, 1.0]);
    for v in [0.005, 0.05, 0.05, 0.5, 5.0] {
        h.observe(v);
    }
    r.register("vllm_sentinel_probe_ttft_seconds", "TTFT", h);
    r.register(
        "thing",
        "An info",
        Info::new(vec![("version", "1.2.3".to_string())]),
    );
    r
}

fn find<'a>(e: &'a Exposition<'a>, name: &str) -> &'a expfmt::Family<'a> {
    e.families
        .iter()
        .find(|f| f.name == name || f.base_name() == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

fn check_own(e: &Exposition<'_>, om: bool) {
    assert_eq!(e.error_total(), 0, "{:?}", e.errors);
    assert!(e.families.iter().all(|f| f.typed && !f.damaged));
    let c = find(e, "vllm_sentinel_probe_requests");
    assert_eq!(c.typ, MetricType::Counter);
    assert_eq!(c.base_name(), "vllm_sentinel_probe_requests");
    let samples = e.family_samples(c);
    assert_eq!(samples.len(), 2);
    assert!(
        samples
            .iter()
            .all(|s| s.name == "vllm_sentinel_probe_requests_total")
    );
    let weird = samples.iter().find(|s| s.value == 1.0).unwrap();
    assert_eq!(e.label(weird, "target"), Some("we\"ird\\ \nname,{x}"));
    assert_eq!(
        samples
            .iter()
            .find(|s| s.value == 41.0)
            .map(|s| e.label(s, "outcome")),
        Some(Some("ok"))
    );
    let g = find(e, "vllm_sentinel_server_kv_cache_usage_ratio");
    assert_eq!(e.family_samples(g)[0].value, 0.503_937_007_874_015_7);
    assert!(e.family_samples(find(e, "nan_gauge"))[0].value.is_nan());
    let h = find(e, "vllm_sentinel_probe_ttft_seconds");
    let hs = expfmt::group_histograms(e, h).unwrap();
    assert_eq!(
        hs[0].buckets,
        vec![(0.01, 1.0), (0.1, 3.0), (1.0, 4.0), (f64::INFINITY, 5.0)]
    );
    assert_eq!(
        (hs[0].count, hs[0].sum),
        (Some(5.0), Some(0.005 + 0.05 + 0.05 + 0.5 + 5.0))
    );
    let info = e
        .families
        .iter()
        .find(|f| f.name.starts_with("thing"))
        .unwrap();
    if om {
        assert_eq!(info.typ, MetricType::Info);
        assert_eq!(e.family_samples(info)[0].suffix, Suffix::Info);
    } else {
        assert_eq!((info.name, info.typ), ("thing_info", MetricType::Gauge));
    }
    assert_eq!(
        e.label(&e.family_samples(info)[0], "version"),
        Some("1.2.3")
    );
}

#[test]
fn our_own_metrics_parse_back_in_both_formats() {
    let r = registry();
    let (text, _) = vllm_sentinel::exporter::encode(&r, None).unwrap();
    let e = expfmt::parse(&text, Format::Prometheus);
    check_own(&e, false);
    let (om, ct) =
        vllm_sentinel::exporter::encode(&r, Some("application/openmetrics-text")).unwrap();
    let e = expfmt::parse(&om, Format::from_content_type(Some(ct)));
    assert!(e.saw_eof);
    check_own(&e, true);
    // Rendering what we parsed and parsing it again reproduces it.
    for (body, fmt) in [(&text, Format::Prometheus), (&om, Format::OpenMetrics)] {
        let e = expfmt::parse(body, fmt);
        let again = expfmt::render(&e);
        let e2 = expfmt::parse(&again, fmt);
        assert_eq!(e.families.len(), e2.families.len());
        for (a, b) in e.families.iter().zip(&e2.families) {
            assert_eq!(
                (a.name, a.typ, &a.help, a.unit),
                (b.name, b.typ, &b.help, b.unit)
            );
        }
        for (a, b) in e.samples.iter().zip(&e2.samples) {
            assert_eq!(a.name, b.name);
            assert!(
                a.value.to_bits() == b.value.to_bits() || (a.value.is_nan() && b.value.is_nan())
            );
            assert_eq!(e.sample_labels(a), e2.sample_labels(b));
        }
    }
}

// ---- property test: render a generated model, parse, compare.

#[derive(Debug, Clone)]
enum Kind {
    Gauge,
    Counter,
    Untyped,
    Histogram(Vec<f64>),
}

/// One generated series: labels, value, optional timestamp.
type GenSeries = (Vec<(String, String)>, f64, Option<i64>);

#[derive(Debug, Clone)]
struct Fam {
    name: String,
    help: String,
    kind: Kind,
    series: Vec<GenSeries>,
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        (0u32..100_000).prop_map(f64::from),
    ]
}

fn fam() -> impl Strategy<Value = Fam> {
    let name = "[a-zA-Z_:][a-zA-Z0-9_:]{0,10}";
    let help = "[ -~\\\\\n]{0,30}";
    let kind = prop_oneof![
        Just(Kind::Gauge),
        Just(Kind::Counter),
        Just(Kind::Untyped),
        prop::collection::vec(0.001f64..1000.0, 1..5).prop_map(Kind::Histogram),
    ];
    let labels = prop::collection::vec(
        (
            "[a-zA-Z_][a-zA-Z0-9_]{0,6}",
            "\\PC{0,8}|[\"\\\\\n,{}= ]{0,4}",
        ),
        0..4,
    );
    let series = prop::collection::vec(
        (labels, value(), prop::option::of(0i64..2_000_000_000_000)),
        1..4,
    );
    (name, help, kind, series).prop_map(|(name, help, kind, series)| Fam {
        name,
        help,
        kind,
        series,
    })
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Unique names per family (suffixed so no name ends in a reserved suffix), unique label names
/// per series, unique label sets per family.
fn tidy(mut fams: Vec<Fam>) -> Vec<Fam> {
    for (i, f) in fams.iter_mut().enumerate() {
        f.name = format!("{}_f{i}", f.name);
        for (j, s) in f.series.iter_mut().enumerate() {
            let mut seen = std::collections::HashSet::new();
            s.0.retain(|(k, _)| k != "le" && seen.insert(k.clone()));
            s.0.push(("series".into(), j.to_string()));
        }
    }
    fams
}

fn render(fams: &[Fam], om: bool) -> String {
    let mut out = String::new();
    for f in fams {
        let (decl, typ) = match (&f.kind, om) {
            (Kind::Counter, false) => (format!("{}_total", f.name), "counter"),
            (Kind::Counter, true) => (f.name.clone(), "counter"),
            (Kind::Gauge, _) => (f.name.clone(), "gauge"),
            (Kind::Untyped, false) => (f.name.clone(), "untyped"),
            (Kind::Untyped, true) => (f.name.clone(), "unknown"),
            (Kind::Histogram(_), _) => (f.name.clone(), "histogram"),
        };
        out.push_str(&format!(
            "# HELP {decl} {}\n# TYPE {decl} {typ}\n",
            f.help.replace('\\', "\\\\").replace('\n', "\\n")
        ));
        for (labels, v, ts) in &f.series {
            let ls: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
                .collect();
            let lstr = |extra: Option<String>| {
                let mut l = ls.clone();
                l.extend(extra);
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", l.join(","))
                }
            };
            let val = |x: f64| {
                let mut s = String::new();
                expfmt::write_value(&mut s, x);
                s
            };
            let ts = ts
                .map(|t| {
                    if om {
                        format!(" {}", t as f64 / 1000.0)
                    } else {
                        format!(" {t}")
                    }
                })
                .unwrap_or_default();
            match &f.kind {
                Kind::Histogram(bounds) => {
                    let mut b = bounds.clone();
                    b.sort_by(f64::total_cmp);
                    b.dedup();
                    for (i, le) in b.iter().enumerate() {
                        out.push_str(&format!(
                            "{}_bucket{} {}{ts}\n",
                            f.name,
                            lstr(Some(format!("le=\"{}\"", val(*le)))),
                            i
                        ));
                    }
                    out.push_str(&format!(
                        "{}_bucket{} {}{ts}\n",
                        f.name,
                        lstr(Some("le=\"+Inf\"".into())),
                        b.len()
                    ));
                    out.push_str(&format!("{}_sum{} {}{ts}\n", f.name, lstr(None), val(*v)));
                    out.push_str(&format!("{}_count{} {}{ts}\n", f.name, lstr(None), b.len()));
                }
                Kind::Counter => {
                    out.push_str(&format!("{}_total{} {}{ts}\n", f.name, lstr(None), val(*v)));
                }
                _ => out.push_str(&format!("{}{} {}{ts}\n", f.name, lstr(None), val(*v))),
            }
        }
    }
    if om {
        out.push_str("# EOF\n");
    }
    out
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn generated_bodies_parse_back(fams in prop::collection::vec(fam(), 1..6), om in any::<bool>(), crlf in any::<bool>()) {
        let fams = tidy(fams);
        let mut body = render(&fams, om);
        if crlf {
            body = body.replace('\n', "\r\n");
        }
        let e = expfmt::parse(&body, if om { Format::OpenMetrics } else { Format::Prometheus });
        // OpenMetrics forbids a negative or NaN counter total: each such line is one `value`
        // error that damages its family and is left out; 0.0.4 has no such rule.
        let forbidden =
            |f: &Fam, v: f64| om && matches!(f.kind, Kind::Counter) && (v.is_nan() || v < 0.0);
        let bad_lines: u32 = fams
            .iter()
            .map(|f| f.series.iter().filter(|s| forbidden(f, s.1)).count() as u32)
            .sum();
        let want_errors: Vec<(ErrorKind, u32)> = if bad_lines > 0 {
            vec![(ErrorKind::Value, bad_lines)]
        } else {
            Vec::new()
        };
        prop_assert_eq!(e.error_counts().collect::<Vec<_>>(), want_errors, "{:?}\n{}", e.errors, body);
        prop_assert_eq!(e.families.len(), fams.len());
        for (f, pf) in fams.iter().zip(&e.families) {
            prop_assert_eq!(pf.base_name(), f.name.as_str());
            prop_assert_eq!(pf.help.as_deref(), Some(f.help.as_str()));
            // What the parse keeps of the family: its allowed lines.
            let kept = Fam {
                series: f.series.iter().filter(|s| !forbidden(f, s.1)).cloned().collect(),
                ..f.clone()
            };
            prop_assert_eq!(pf.damaged, kept.series.len() < f.series.len());
            let f = &kept;
            let samples = e.family_samples(pf);
            match &f.kind {
                Kind::Histogram(_) => {
                    let hs = expfmt::group_histograms(&e, pf).unwrap();
                    prop_assert_eq!(hs.len(), f.series.len());
                    for ((labels, v, _), h) in f.series.iter().zip(&hs) {
                        let mut want: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        want.sort_unstable();
                        prop_assert_eq!(&h.labels, &want);
                        prop_assert!(same(h.sum.unwrap(), *v));
                        prop_assert_eq!(h.buckets.last().unwrap().0, f64::INFINITY);
                    }
                }
                _ => {
                    prop_assert_eq!(samples.len(), f.series.len());
                    for ((labels, v, ts), s) in f.series.iter().zip(samples) {
                        prop_assert!(same(s.value, *v), "{} vs {}", s.value, v);
                        let got: Vec<(&str, &str)> = e.sample_labels(s).iter().map(|l| (l.name, l.value.as_ref())).collect();
                        let want: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        prop_assert_eq!(got, want);
                        let want_ts = ts.map(|t| if om { t as f64 / 1000.0 } else { t as f64 });
                        prop_assert_eq!(s.timestamp, want_ts);
                    }
                }
            }
        }
    }
}
