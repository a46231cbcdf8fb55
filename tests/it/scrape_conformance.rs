//! Our own conformance corpus for the exposition parser (`tests/data/expfmt-conformance/`):
//! every valid body parses without an error, every invalid body yields an error of the kind
//! `expect.tsv` names, and the valid lines of an invalid body (`good_total 1`) are kept unless
//! the error is body-level by design.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vllm_sentinel::scrape::expfmt::{self, ErrorKind, Format};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/expfmt-conformance")
}

/// (file, expected kind or None for valid, rule).
fn expectations() -> Vec<(String, Option<ErrorKind>, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("expect.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 3, "expect.tsv line {l:?}");
            let kind = match cols[1] {
                "-" => None,
                k => Some(
                    *ErrorKind::ALL
                        .iter()
                        .find(|e| e.as_str() == k)
                        .unwrap_or_else(|| panic!("unknown kind {k}")),
                ),
            };
            (cols[0].to_string(), kind, cols[2].to_string())
        })
        .collect()
}

fn files_under(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), &rel, out);
        } else if name.ends_with(".txt") {
            out.insert(rel);
        }
    }
}

#[test]
fn scrape_conformance_every_file_is_listed() {
    let mut on_disk = BTreeSet::new();
    files_under(&corpus_dir(), "", &mut on_disk);
    let listed: BTreeSet<String> = expectations().into_iter().map(|(f, _, _)| f).collect();
    assert_eq!(on_disk, listed);
    let valid = listed
        .iter()
        .filter(|f| f.contains("valid/") && !f.contains("invalid/"))
        .count();
    assert!(
        valid >= 40 && listed.len() - valid >= 60,
        "{valid} valid of {}",
        listed.len()
    );
}

#[test]
fn scrape_conformance_corpus() {
    let mut failures = Vec::new();
    for (file, expect, rule) in expectations() {
        let body = std::fs::read(corpus_dir().join(&file)).unwrap();
        let format = if file.starts_with("prometheus/") {
            Format::Prometheus
        } else {
            Format::OpenMetrics
        };
        let exp = expfmt::parse_bytes(&body, format);
        let kinds: Vec<ErrorKind> = exp.error_counts().map(|(k, _)| k).collect();
        match expect {
            None => {
                if exp.error_total() != 0 || exp.fatal().is_some() {
                    failures.push(format!("{file} ({rule}): valid but got {:?}", exp.errors));
                }
            }
            Some(kind) => {
                if !kinds.contains(&kind) {
                    failures.push(format!(
                        "{file} ({rule}): want {kind:?}, got {:?}",
                        exp.errors
                    ));
                    continue;
                }
                if kind.is_fatal() {
                    continue;
                }
                if let Some(f) = exp.fatal() {
                    failures.push(format!("{file} ({rule}): fatal {f:?} for a line error"));
                    continue;
                }
                let kept = exp.families.iter().any(|f| {
                    !f.damaged
                        && exp
                            .family_samples(f)
                            .iter()
                            .any(|s| s.name == "good_total" && s.value == 1.0)
                });
                if !kept {
                    failures.push(format!("{file} ({rule}): good_total 1 was not kept"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
