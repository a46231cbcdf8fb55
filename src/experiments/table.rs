//! Summary tables printed at the end of each experiment (comfy-table). Latencies are shown in
//! milliseconds, throughput in tokens or requests per second; the JSON keeps base units.
//!
//! A summary is a [`Printed`]: lines of text and tables, drawn with box characters on the
//! terminal and as real `<table>`s in the HTML report.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

use super::report::{BenchSection, KvScaleSection, SweepSection, TurnRow};
use super::stats::Summary;

/// A summary: text lines and tables, in order.
#[derive(Default)]
pub struct Printed(Vec<Block>);

enum Block {
    Line(String),
    Table(Box<Table>),
}

impl Printed {
    fn line(&mut self, s: impl Into<String>) {
        self.0.push(Block::Line(s.into()));
    }

    fn table(&mut self, t: Table) {
        self.0.push(Block::Table(Box::new(t)));
    }

    /// One line of text.
    pub fn text(s: impl Into<String>) -> Printed {
        Printed(vec![Block::Line(s.into())])
    }

    /// This summary followed by `other`.
    pub fn then(mut self, other: Printed) -> Printed {
        self.0.extend(other.0);
        self
    }

    /// The summary as HTML: each line a `<p>`, each table a `<table>` with a header row; every
    /// cell escaped.
    pub fn to_html(&self) -> String {
        use super::html::escape;
        let mut h = String::new();
        for b in &self.0 {
            match b {
                Block::Line(l) => h.push_str(&format!("<p>{}</p>\n", escape(l))),
                Block::Table(t) => {
                    h.push_str("<table>\n<thead><tr>");
                    for c in t.header().into_iter().flat_map(|r| r.cell_iter()) {
                        h.push_str(&format!("<th scope=\"col\">{}</th>", escape(&c.content())));
                    }
                    h.push_str("</tr></thead>\n<tbody>\n");
                    for r in t.row_iter() {
                        h.push_str("<tr>");
                        for c in r.cell_iter() {
                            h.push_str(&format!("<td>{}</td>", escape(&c.content())));
                        }
                        h.push_str("</tr>\n");
                    }
                    h.push_str("</tbody>\n</table>\n");
                }
            }
        }
        h
    }
}

impl std::fmt::Display for Printed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            match b {
                Block::Line(l) => writeln!(f, "{l}")?,
                Block::Table(t) => writeln!(f, "{t}")?,
            }
        }
        Ok(())
    }
}

fn new_table(header: Vec<String>, text_last: bool) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    // numbers right-aligned; the first column (the level) and a text last column left
    let n = t.column_count();
    let last = if text_last { n.saturating_sub(1) } else { n };
    for i in 1..last {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Milliseconds with a precision that suits the magnitude; `-` when absent.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(s) => {
            let m = s * 1000.0;
            if m >= 100.0 {
                format!("{m:.0}")
            } else if m >= 10.0 {
                format!("{m:.1}")
            } else {
                format!("{m:.2}")
            }
        }
    }
}

/// A number with one decimal; `-` when absent.
pub fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

/// A ratio as a percentage; `-` when absent.
pub fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn summary_row(name: &str, s: &Summary, f: fn(Option<f64>) -> String) -> Vec<String> {
    vec![
        name.to_string(),
        s.count.to_string(),
        f(s.mean),
        f(s.p50),
        f(s.p90),
        f(s.p99),
        f(s.min),
        f(s.max),
    ]
}

/// The bench table: one block of rows per mode.
pub fn bench(b: &BenchSection) -> Printed {
    let mut out = Printed::default();
    for m in &b.modes {
        let mut t = new_table(
            ["metric", "n", "mean", "p50", "p90", "p99", "min", "max"]
                .map(String::from)
                .to_vec(),
            false,
        );
        let l = &m.latency;
        t.add_row(summary_row("TTFB (ms)", &l.ttfb_s, ms));
        if m.stream {
            t.add_row(summary_row("TTFT (ms)", &l.ttft_s, ms));
            t.add_row(summary_row("ITL (ms)", &l.itl_s, ms));
            t.add_row(summary_row("TPOT (ms)", &l.tpot_s, ms));
        }
        t.add_row(summary_row("E2E (ms)", &l.e2e_s, ms));
        t.add_row(summary_row("output tok/s", &l.output_tokens_per_s, num));
        t.add_row(summary_row("output tokens", &l.output_tokens, num));
        let errors = if m.errors_by_class.is_empty() {
            "none".to_string()
        } else {
            m.errors_by_class
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.line(format!(
            "{} — {} requests, {} ok; errors: {}",
            if m.stream {
                "streaming"
            } else {
                "non-streaming"
            },
            m.requests,
            m.ok,
            errors
        ));
        out.table(t);
        if let (Some(a), Some(g), Some(slo)) = (m.slo_attainment, m.goodput_rps, &b.slo) {
            out.line(format!(
                "SLO attainment {} ({} needed: {}), goodput {g:.3} req/s over {:.2} s",
                pct(Some(a)),
                pct(Some(slo.min_attainment)),
                if m.slo_met == Some(true) {
                    "met"
                } else {
                    "NOT met"
                },
                m.duration_s
            ));
        }
    }
    out
}

/// The sweep table: one row per level, the knee and the goodput level marked.
pub fn sweep(s: &SweepSection) -> Printed {
    let load_name = if s.mode == "rate" {
        "rate (req/s)"
    } else {
        "concurrency"
    };
    let mut t = new_table(
        [
            load_name,
            "ok/fail",
            "req/s",
            "out tok/s",
            "TTFT p50",
            "TTFT p99",
            "TPOT p50",
            "E2E p50",
            "E2E p99",
            "KV max",
            "waiting max",
            "goodput",
            "",
        ]
        .map(String::from)
        .to_vec(),
        true,
    );
    let knee = s.knee.as_ref().map(|k| k.level_index);
    let best = s.slo.as_ref().and_then(|g| g.best_level);
    for (i, l) in s.levels.iter().enumerate() {
        let mut mark = Vec::new();
        if knee == Some(i) {
            mark.push("knee");
        }
        if best == Some(i) {
            mark.push("best under SLO");
        }
        if l.partial {
            mark.push("partial");
        }
        t.add_row(vec![
            format!("{}", l.load),
            format!("{}/{}", l.ok, l.failed),
            format!("{:.2}", l.request_throughput_rps),
            format!("{:.1}", l.output_token_throughput_tps),
            ms(l.latency.ttft_s.p50),
            ms(l.latency.ttft_s.p99),
            ms(l.latency.tpot_s.p50),
            ms(l.latency.e2e_s.p50),
            ms(l.latency.e2e_s.p99),
            pct(l.server.kv_cache_usage.max),
            num(l.server.requests_waiting.max),
            l.goodput_rps
                .map(|g| format!("{g:.2}"))
                .unwrap_or_else(|| "-".into()),
            mark.join(", "),
        ]);
    }
    let mut out = Printed::default();
    out.line("latencies in ms");
    out.table(t);
    match &s.knee {
        Some(k) => out.line(format!("saturation knee at {}: {}", k.load, k.explanation)),
        None => out.line("no saturation knee within the levels run"),
    }
    if let Some(r) = &s.stop_reason {
        out.line(format!("stopped early: {r}"));
    }
    if let Some(g) = &s.slo {
        match (g.best_load, g.best_goodput_rps) {
            (Some(load), Some(gp)) => out.line(format!(
                "highest load meeting the SLOs: {load} ({gp:.2} req/s within SLO)"
            )),
            _ => out.line("no level met the SLOs"),
        }
    }
    if let Some(g) = &s.search {
        out = out.then(search_lines(g));
    }
    out
}

/// `--rate-search`: every probe in the order run, then the answer.
fn search_lines(g: &super::report::RateSearch) -> Printed {
    let mut out = Printed::text("rate search (probes in order):");
    let mut t = new_table(
        [
            "probe",
            "rate (req/s)",
            "attainment",
            "goodput (req/s)",
            "verdict",
        ]
        .map(String::from)
        .to_vec(),
        true,
    );
    for (i, p) in g.probes.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            format!("{:.3}", p.rate_rps),
            pct(Some(p.slo_attainment)),
            format!("{:.2}", p.goodput_rps),
            if p.passed { "pass" } else { "FAIL" }.to_string(),
        ]);
    }
    out.table(t);
    let answer = match (g.best_rate_rps, g.lowest_failing_rps) {
        (Some(b), Some(f)) => {
            format!("highest rate meeting the SLOs: {b:.3} req/s ({f:.3} failed)")
        }
        (Some(b), None) => {
            format!("{b:.3} req/s (--rate-max) still meets the SLOs: raise --rate-max")
        }
        (None, _) => "even --rate-min misses the SLOs: lower it".to_string(),
    };
    out.line(format!("{answer}; stopped: {}", g.stop_reason));
    out
}

/// The kv-scale tables: the ladder, the boundary and the grid.
pub fn kv_scale(k: &KvScaleSection) -> Printed {
    let mut t = new_table(
        [
            "prompt",
            "max_tokens",
            "feasibility",
            "TTFT (ms)",
            "out tokens",
            "KV peak",
            "KV by request",
            "KV expected",
            "reason",
        ]
        .map(String::from)
        .to_vec(),
        true,
    );
    for r in &k.ladder {
        t.add_row(vec![
            r.prompt_tokens_requested.to_string(),
            r.max_tokens.to_string(),
            r.feasibility.clone(),
            ms(r.ttft_s),
            r.output_tokens
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            pct(r.kv_usage_peak),
            pct(r.kv_usage_delta),
            pct(r.kv_usage_expected),
            r.reason
                .as_deref()
                .or(r.kv_note.as_deref())
                .map(|s| s.chars().take(60).collect::<String>())
                .unwrap_or_default(),
        ]);
    }
    let mut out = Printed::default();
    out.table(t);
    if let Some(b) = &k.boundary {
        out.line(format!(
            "context boundary: longest accepted prompt {} tokens, shortest rejected {} (max_model_len {}), {} probes",
            b.max_accepted_prompt_tokens,
            b.min_rejected_prompt_tokens,
            k.max_model_len
                .map(|m| m.to_string())
                .unwrap_or_else(|| "unknown".into()),
            b.probes
        ));
    }
    if !k.grid.is_empty() {
        let mut g = new_table(
            [
                "context",
                "blocks/seq",
                "capacity (computed)",
                "fits (observed)",
                "cells (concurrency: verdict)",
            ]
            .map(String::from)
            .to_vec(),
            true,
        );
        for row in &k.grid {
            g.add_row(vec![
                row.context_tokens.to_string(),
                row.blocks_per_sequence
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                row.capacity_computed
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                row.max_fitting_observed
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                row.cells
                    .iter()
                    .map(|c| {
                        let v = match c.verdict.as_str() {
                            "" if c.fits => "fits",
                            "" => "no",
                            v => v,
                        };
                        format!("{}:{v}", c.concurrency)
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
        }
        out.table(g);
    }
    out.line(k.gpu_memory_note.clone());
    out
}

/// Multi-turn runs: TTFT by turn of the sessions (empty without turns).
pub fn turns(rows: &[TurnRow]) -> Printed {
    let mut out = Printed::default();
    if rows.is_empty() {
        return out;
    }
    let mut t = new_table(
        [
            "turn",
            "requests",
            "ok",
            "TTFT p50 (ms)",
            "TTFT p90 (ms)",
            "TTFT p99 (ms)",
            "prompt tokens p50",
        ]
        .map(String::from)
        .to_vec(),
        false,
    );
    for r in rows {
        t.add_row(vec![
            r.turn.clone(),
            r.requests.to_string(),
            r.ok.to_string(),
            ms(r.ttft_s.p50),
            ms(r.ttft_s.p90),
            ms(r.ttft_s.p99),
            num(r.prompt_tokens.p50),
        ]);
    }
    out.line("TTFT by turn (multi-turn sessions)");
    out.table(t);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::report::{BenchMode, LatencySummaries, SweepLevel};

    #[test]
    fn formats() {
        assert_eq!(ms(Some(0.0123)), "12.3");
        assert_eq!(ms(Some(1.5)), "1500");
        assert_eq!(ms(Some(0.0012)), "1.20");
        assert_eq!(ms(None), "-");
        assert_eq!(pct(Some(0.5)), "50.0%");
    }

    #[test]
    fn bench_table_lists_streaming_metrics() {
        let b = BenchSection {
            turns: vec![],
            modes: vec![BenchMode {
                stream: true,
                requests: 3,
                ok: 3,
                latency: LatencySummaries {
                    ttft_s: Summary::of([0.01, 0.02, 0.03]),
                    ..Default::default()
                },
                duration_s: 2.0,
                slo_attainment: Some(2.0 / 3.0),
                goodput_rps: Some(1.0),
                slo_met: Some(false),
                ..Default::default()
            }],
            requests: vec![],
            slo: Some(crate::experiments::report::BenchSlo {
                objectives: Default::default(),
                min_attainment: 0.9,
            }),
        };
        let s = bench(&b).to_string();
        assert!(s.contains("TTFT (ms)"), "{s}");
        assert!(s.contains("20.0"), "{s}");
        assert!(s.contains("errors: none"), "{s}");
        assert!(
            s.contains("SLO attainment 66.7% (90.0% needed: NOT met), goodput 1.000 req/s"),
            "{s}"
        );
    }

    #[test]
    fn search_lists_probes_and_answer() {
        use crate::experiments::sweep::search::{RateSearch, SearchProbe};
        let probe = |r: f64, passed: bool| SearchProbe {
            rate_rps: r,
            slo_attainment: if passed { 0.95 } else { 0.5 },
            goodput_rps: r / 2.0,
            passed,
        };
        let mut g = RateSearch {
            probes: vec![probe(1.0, true), probe(16.0, false), probe(4.0, true)],
            best_rate_rps: Some(4.0),
            lowest_failing_rps: Some(16.0),
            stop_reason: "max_probes".into(),
            ..Default::default()
        };
        let printed = search_lines(&g);
        let t = printed.to_string();
        let html = printed.to_html();
        assert!(
            html.contains(
                "<tr><td>2</td><td>16.000</td><td>50.0%</td><td>8.00</td><td>FAIL</td></tr>"
            ),
            "{html}"
        );
        assert!(
            t.contains(
                "highest rate meeting the SLOs: 4.000 req/s (16.000 failed); stopped: max_probes"
            ),
            "{t}"
        );
        g.best_rate_rps = None;
        assert!(
            search_lines(&g)
                .to_string()
                .contains("even --rate-min misses")
        );
    }

    #[test]
    fn sweep_table_marks_knee() {
        let s = SweepSection {
            mode: "concurrency".into(),
            levels: vec![
                SweepLevel {
                    load: 1.0,
                    ..Default::default()
                },
                SweepLevel {
                    load: 2.0,
                    ..Default::default()
                },
            ],
            knee: Some(crate::experiments::knee::Knee {
                level_index: 1,
                load: 2.0,
                next_step_efficiency: 0.0,
                next_step_latency_growth: 1.0,
                explanation: "flat".into(),
            }),
            ..Default::default()
        };
        let printed = sweep(&s);
        let text = printed.to_string();
        assert!(text.contains("knee"), "{text}");
        assert!(text.contains("saturation knee at 2: flat"), "{text}");
        let html = printed.to_html();
        assert!(
            html.contains("<th scope=\"col\">concurrency</th>"),
            "{html}"
        );
        assert!(html.contains("<td>knee</td>"), "{html}");
        assert!(html.contains("<p>saturation knee at 2: flat</p>"), "{html}");
        assert!(!html.contains('│'), "no box drawing in HTML: {html}");
    }
}
