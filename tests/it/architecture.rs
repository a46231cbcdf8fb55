//! The module layering of src/lib.rs, checked: the graph of `crate::<module>` references between
//! top-level modules has no cycle, `config` names no module but the leaf utilities, and the leaf
//! utilities name no module at all.
//!
//! Only code counts: comment lines (doc links included) are skipped. A reference is any
//! `crate::name` path, including each name of a `use crate::{a, b::c}` group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that name no other module of the crate; anything may use them.
const LEAVES: &[&str] = &["clock", "httpcap", "process", "shutdown", "units"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under src/ belongs to (`None` for the crate root files).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules named by `crate::...` paths in `code`.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `$crate::` in macros and identifiers ending in `crate` are not paths of this crate.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first name of each item at the group's own depth is a top-level module.
            let mut depth = 0usize;
            let mut item_start = true;
            let chars = group.char_indices();
            for (i, c) in chars {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        item_start = false;
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name != "self" {
                            out.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Top-level module → the top-level modules it names, with one file that does, per edge.
fn module_graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for file in files {
        let Some(from) = top_module(&src, &file) else {
            continue;
        };
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let edges = graph.entry(from.clone()).or_default();
        for to in references(&code) {
            if to != from {
                edges.entry(to).or_insert_with(|| file.clone());
            }
        }
    }
    graph
}

/// A cycle of the graph, if there is one, as the list of modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(node, graph, &mut marks, &mut path) {
            return Some(cycle);
        }
    }
    None
}

fn describe_cycle(cycle: &[String], graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> String {
    let mut out = cycle.join(" -> ");
    for pair in cycle.windows(2) {
        let file = graph
            .get(&pair[0])
            .and_then(|e| e.get(&pair[1]))
            .map_or_else(String::new, |f| f.display().to_string());
        out.push_str(&format!("\n  {} -> {}: e.g. {file}", pair[0], pair[1]));
    }
    out
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = module_graph();
    assert!(
        graph.contains_key("config") && graph.contains_key("prober"),
        "the scan found no modules: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules:\n{}",
            describe_cycle(&cycle, &graph)
        );
    }
}

#[test]
fn config_is_a_leaf_above_the_utilities() {
    let graph = module_graph();
    let config = graph.get("config").cloned().unwrap_or_default();
    let named: Vec<_> = config
        .iter()
        .filter(|(to, _)| !LEAVES.contains(&to.as_str()))
        .map(|(to, file)| format!("{to} (in {})", file.display()))
        .collect();
    assert!(
        named.is_empty(),
        "config must name no subsystem and not the command line, but names: {named:?}"
    );
}

#[test]
fn leaf_utilities_name_no_module() {
    let graph = module_graph();
    for leaf in LEAVES {
        let edges = graph.get(*leaf).cloned().unwrap_or_default();
        assert!(edges.is_empty(), "leaf {leaf} names {edges:?}");
    }
}

#[test]
fn subsystems_do_not_name_the_daemon_or_the_exporter() {
    let graph = module_graph();
    for subsystem in ["prober", "scrape", "gpu", "tap", "status"] {
        let edges = graph.get(subsystem).cloned().unwrap_or_default();
        for above in ["daemon", "exporter", "cli"] {
            assert!(
                !edges.contains_key(above),
                "{subsystem} names {above} (in {:?}); shared runtime state lives in `runtime`",
                edges.get(above)
            );
        }
    }
}

#[test]
fn the_scanner_reads_paths_and_groups() {
    let refs = references(
        "use crate::{config::Config, runtime::{self, X}, shutdown};\nlet a = crate::units::f(); $crate::no; mycrate::no",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec![
            "config".to_string(),
            "runtime".into(),
            "shutdown".into(),
            "units".into()
        ]
    );
}
