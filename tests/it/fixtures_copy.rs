//! `tests/data/vllm-0.32.0-cpu/` holds copies of the real vLLM 0.32.0 captures that the project
//! keeps in `shared/fixtures/vllm-0.32.0-cpu/`, so the tests read them from the clone itself.
//! Where `shared/` sits beside the checkout, every copy must still equal its original byte for
//! byte; where it does not, there is nothing to compare and the test says so.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn copies_equal_the_shared_originals() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let copies = root.join("tests/data/vllm-0.32.0-cpu");
    let originals = root.join("../shared/fixtures/vllm-0.32.0-cpu");
    let copied = files(&copies);
    assert!(copied.len() >= 40, "the copies are missing: {copied:?}");
    if !originals.is_dir() {
        eprintln!(
            "no {} beside the checkout: {} copies not compared",
            originals.display(),
            copied.len()
        );
        return;
    }
    for copy in copied {
        let rel = copy.strip_prefix(&copies).unwrap();
        let original = originals.join(rel);
        let a = std::fs::read(&copy).unwrap();
        let b = std::fs::read(&original)
            .unwrap_or_else(|e| panic!("{} has no original: {e}", rel.display()));
        assert!(
            a == b,
            "{} differs from {}",
            copy.display(),
            original.display()
        );
    }
}
