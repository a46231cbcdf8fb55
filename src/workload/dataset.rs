//! What the file-backed sources share: the loaded dataset, its cache, the size cap, the token
//! estimate, and the draw of one request from it.
//!
//! Files are read from local paths only and never over
//! [`MAX_DATASET_BYTES`](crate::config::workload::MAX_DATASET_BYTES); entries are read one at a
//! time and only the prompt text and the reference output length are kept. A dataset is loaded
//! once: [`load_cached`] keeps the last parse of each file and parses it again only when its
//! size or modification time changed (so `check-config`, start-up and every reload of an
//! unchanged file cost one parse).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rand::Rng;
use rand::rngs::SmallRng;

use super::{Item, PromptSpec, SourceKind, SourceSettings, WorkloadError};
use crate::config::prober::MAX_TOKENS_CEILING;
use crate::config::workload::MAX_DATASET_BYTES;

/// One request of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The prompt text.
    pub prompt: Arc<str>,
    /// The output length the dataset asks for (tokens), if it gives one.
    pub output_tokens: Option<u32>,
}

/// A loaded dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its requests, in file order (never empty).
    pub entries: Vec<Entry>,
    /// Entries left out (ShareGPT conversations without a human turn followed by a gpt turn).
    pub skipped: usize,
}

impl Dataset {
    /// A one-line summary (`check-config`, reports).
    pub fn describe(&self) -> String {
        let skipped = if self.skipped > 0 {
            format!(", {} skipped", self.skipped)
        } else {
            String::new()
        };
        format!(
            "{}: {} requests{skipped}",
            self.path.display(),
            self.entries.len()
        )
    }
}

/// Tokens of a text, estimated without the server's tokenizer: one per 4 characters (the
/// usual rule for English with BPE vocabularies), at least 1. Used for ShareGPT's reference
/// answers and for `lengths_only`; the server's `usage` reports the real counts.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4).clamp(1, u64::from(MAX_TOKENS_CEILING)) as u32
}

/// Opens `path` for reading after checking its size against the cap.
pub(super) fn open_capped(path: &Path) -> Result<std::fs::File, WorkloadError> {
    open_limited(path, MAX_DATASET_BYTES)
}

fn open_limited(path: &Path, limit: u64) -> Result<std::fs::File, WorkloadError> {
    let name = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| WorkloadError(format!("{name}: cannot read the dataset: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| WorkloadError(format!("{name}: cannot read the dataset: {e}")))?;
    if !meta.is_file() {
        return Err(WorkloadError(format!("{name}: not a regular file")));
    }
    if meta.len() > limit {
        return Err(WorkloadError(format!(
            "{name}: {} bytes is over the {limit}-byte limit of a dataset file",
            meta.len()
        )));
    }
    Ok(file)
}

/// A positive token count from a JSON value, or what is wrong with it.
pub(super) fn token_count(v: &serde_json::Value) -> Result<u32, &'static str> {
    match v.as_u64() {
        Some(n) if n >= 1 && n <= u64::from(MAX_TOKENS_CEILING) => Ok(n as u32),
        Some(_) => Err("expected an integer from 1 to 10000000"),
        None => Err("expected a positive integer"),
    }
}

/// Parses `path` as a `kind` dataset (uncached).
pub fn load(kind: SourceKind, path: &Path) -> Result<Dataset, WorkloadError> {
    let d = match kind {
        SourceKind::Sharegpt => super::sharegpt::load(path)?,
        SourceKind::Jsonl => super::jsonl::load(path)?,
        other => {
            return Err(WorkloadError(format!(
                "source {} reads no dataset file",
                other.as_str()
            )));
        }
    };
    if d.entries.is_empty() {
        let why = if d.skipped > 0 {
            format!(
                " ({} conversations without a human turn followed by a gpt turn)",
                d.skipped
            )
        } else {
            String::new()
        };
        return Err(WorkloadError(format!(
            "{}: the dataset is empty: no usable entries{why}",
            path.display()
        )));
    }
    Ok(d)
}

type Stamp = (u64, Option<SystemTime>);
type Cache = Mutex<HashMap<(SourceKind, PathBuf), (Stamp, Arc<Dataset>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// [`load`], keeping the result: an unchanged file (same size and modification time) is not
/// parsed again. Errors are not cached.
pub fn load_cached(kind: SourceKind, path: &Path) -> Result<Arc<Dataset>, WorkloadError> {
    let stamp: Option<Stamp> = std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    let key = (kind, path.to_path_buf());
    if let Some(stamp) = stamp
        && let Ok(c) = cache().lock()
        && let Some((s, d)) = c.get(&key)
        && *s == stamp
        && stamp.1.is_some()
    {
        return Ok(d.clone());
    }
    let d = Arc::new(load(kind, path)?);
    if let (Some(stamp), Ok(mut c)) = (stamp, cache().lock()) {
        c.insert(key, (stamp, d.clone()));
    }
    Ok(d)
}

/// The next request of a dataset: a uniformly drawn entry.
pub(super) fn next(d: &Dataset, s: &SourceSettings, rng: &mut SmallRng) -> Item {
    let e = &d.entries[rng.random_range(0..d.entries.len())];
    let max_tokens = s
        .sharegpt_output_len
        .or(e.output_tokens)
        .unwrap_or(s.max_tokens);
    let prompt = if s.lengths_only {
        PromptSpec::Random {
            tokens: estimate_tokens(&e.prompt),
        }
    } else {
        PromptSpec::Text(e.prompt.clone())
    };
    Item {
        prompt,
        max_tokens,
        model: None,
        turn: None,
        seed: 0,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Writes `text` to `name` in a fresh temporary directory.
    pub fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn estimate_is_a_quarter_of_the_characters() {
        assert_eq!(estimate_tokens(""), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens(&"x".repeat(400)), 100);
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = load(SourceKind::Jsonl, Path::new("/no/such/data.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/no/such/data.jsonl: cannot read"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = load(SourceKind::Sharegpt, d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_unread() {
        let (_d, p) = file("big.jsonl", &"x".repeat(11));
        let e = open_limited(&p, 10).unwrap_err().to_string();
        assert!(
            e.contains("big.jsonl: 11 bytes is over the 10-byte limit"),
            "{e}"
        );
        assert!(open_limited(&p, 11).is_ok());
    }

    #[test]
    fn cache_parses_again_only_when_the_file_changes() {
        let (_d, p) = file("a.jsonl", "{\"prompt\": \"one\"}\n");
        let a = load_cached(SourceKind::Jsonl, &p).unwrap();
        let b = load_cached(SourceKind::Jsonl, &p).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "an unchanged file is not parsed again");
        std::fs::write(&p, "{\"prompt\": \"one\"}\n{\"prompt\": \"two\"}\n").unwrap();
        let c = load_cached(SourceKind::Jsonl, &p).unwrap();
        assert_eq!(c.entries.len(), 2, "a changed size means a new parse");
        std::fs::write(&p, "{\"prompt\": 1}\n").unwrap();
        assert!(load_cached(SourceKind::Jsonl, &p).is_err());
    }

    #[test]
    fn draws_use_the_entry_lengths_or_the_overrides() {
        let d = Dataset {
            path: "x".into(),
            entries: vec![Entry {
                prompt: Arc::from("a".repeat(40)),
                output_tokens: Some(33),
            }],
            skipped: 0,
        };
        let mut rng = rand::SeedableRng::seed_from_u64(1);
        let mut s = SourceSettings::default();
        let i = next(&d, &s, &mut rng);
        assert_eq!(i.max_tokens, 33);
        assert_eq!(i.prompt, PromptSpec::Text(Arc::from("a".repeat(40))));
        s.lengths_only = true;
        s.sharegpt_output_len = Some(5);
        let i = next(&d, &s, &mut rng);
        assert_eq!(i.max_tokens, 5);
        assert_eq!(i.prompt, PromptSpec::Random { tokens: 10 });
    }
}
