//! `sharegpt`: a local ShareGPT-format JSON file, a JSON array of
//! `{"id": …, "conversations": [{"from": "human", "value": …}, {"from": "gpt", "value": …}, …]}`.
//!
//! Each conversation gives one request: its first human turn (`from` = `human` or `user`) is the
//! prompt, and the turn right after it, when it is the model's (`gpt`, `assistant`, `chatgpt`,
//! `bard`), is the reference answer, whose estimated length
//! ([`estimate_tokens`](super::dataset::estimate_tokens)) becomes `max_tokens` (unless
//! `sharegpt_output_len` sets one for all). Conversations without such a pair, or with an empty
//! prompt, are skipped and counted. The array is read one entry at a time, so only the prompts
//! are held in memory.

use std::path::Path;
use std::sync::Arc;

use serde::Deserializer as _;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde_json::Value;

use super::WorkloadError;
use super::dataset::{Dataset, Entry, estimate_tokens, open_capped};

/// Reads a ShareGPT dataset. Errors name the file, the entry (from 0) and the field.
pub fn load(path: &Path) -> Result<Dataset, WorkloadError> {
    let file = open_capped(path)?;
    let name = path.display();
    let mut entries = Vec::new();
    let mut skipped = 0usize;
    let mut problem = None;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
    let read = de
        .deserialize_seq(Conversations {
            entries: &mut entries,
            skipped: &mut skipped,
            problem: &mut problem,
        })
        .and_then(|()| de.end());
    if let Err(e) = read {
        return Err(WorkloadError(match problem {
            Some(p) => format!("{name}: {p}"),
            None => format!("{name}: not a ShareGPT JSON array: {e}"),
        }));
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        entries,
        skipped,
    })
}

struct Conversations<'a> {
    entries: &'a mut Vec<Entry>,
    skipped: &'a mut usize,
    problem: &'a mut Option<String>,
}

impl<'de> Visitor<'de> for Conversations<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of conversations")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        while let Some(v) = seq.next_element::<Value>()? {
            match conversation(&v) {
                Ok(Some(e)) => self.entries.push(e),
                Ok(None) => *self.skipped += 1,
                Err(m) => {
                    *self.problem = Some(format!("entry {index}: {m}"));
                    return Err(A::Error::custom("bad entry"));
                }
            }
            index += 1;
        }
        Ok(())
    }
}

const HUMAN: &[&str] = &["human", "user"];
const MODEL: &[&str] = &["gpt", "assistant", "chatgpt", "bard"];

/// One conversation's request (`None`: no usable pair), or what is wrong with it.
fn conversation(v: &Value) -> Result<Option<Entry>, String> {
    let Value::Object(m) = v else {
        return Err("expected a JSON object".into());
    };
    let turns = match m.get("conversations") {
        None => return Err("field \"conversations\": missing".into()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("field \"conversations\": expected an array".into()),
    };
    let mut parsed = Vec::with_capacity(turns.len());
    for (k, t) in turns.iter().enumerate() {
        let Value::Object(t) = t else {
            return Err(format!("field \"conversations[{k}]\": expected an object"));
        };
        let field = |f: &str| match t.get(f) {
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(format!(
                "field \"conversations[{k}].{f}\": expected a string"
            )),
            None => Err(format!("field \"conversations[{k}].{f}\": missing")),
        };
        let from = field("from")?;
        let value = field("value")?;
        parsed.push((from, value));
    }
    // Only the first human turn counts: one that is not answered, or empty, skips the
    // conversation.
    let Some(h) = parsed.iter().position(|(f, _)| HUMAN.contains(f)) else {
        return Ok(None);
    };
    match parsed.get(h + 1) {
        Some((from, answer)) if MODEL.contains(from) && !parsed[h].1.trim().is_empty() => {
            Ok(Some(Entry {
                prompt: Arc::from(parsed[h].1),
                output_tokens: Some(estimate_tokens(answer)),
            }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::super::dataset::tests::file;
    use super::*;

    const GOOD: &str = r#"[
  {"id": "a", "conversations": [
    {"from": "human", "value": "What is a KV cache?"},
    {"from": "gpt", "value": "It keeps the keys and values of earlier tokens."},
    {"from": "human", "value": "And?"}]},
  {"id": "b", "conversations": [{"from": "gpt", "value": "hello"}]},
  {"id": "c", "conversations": [
    {"from": "system", "value": "be brief"},
    {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello!"}]},
  {"id": "d", "conversations": []}
]"#;

    #[test]
    fn takes_the_first_human_gpt_pair() {
        let (_d, p) = file("sg.json", GOOD);
        let d = load(&p).unwrap();
        assert_eq!(d.entries.len(), 2);
        assert_eq!(&*d.entries[0].prompt, "What is a KV cache?");
        assert_eq!(
            d.entries[0].output_tokens,
            Some(estimate_tokens(
                "It keeps the keys and values of earlier tokens."
            ))
        );
        assert_eq!(&*d.entries[1].prompt, "Hi");
        assert_eq!(d.entries[1].output_tokens, Some(2));
        assert_eq!(d.skipped, 2, "b has no human turn, d is empty");
        assert!(d.describe().contains("2 requests, 2 skipped"));
    }

    #[test]
    fn bad_entries_name_file_entry_and_field() {
        for (body, want) in [
            ("{\"a\": 1}", "not a ShareGPT JSON array"),
            ("[{\"conversations\": []}, ", "not a ShareGPT JSON array"),
            ("not json", "not a ShareGPT JSON array"),
            (
                "[{\"conversations\": []}, {\"id\": 2}]",
                "entry 1: field \"conversations\": missing",
            ),
            (
                "[{\"conversations\": {}}]",
                "entry 0: field \"conversations\": expected an array",
            ),
            (
                "[{\"conversations\": []}, {\"conversations\": []}, {\"conversations\": [{\"from\": \"human\", \"value\": 3}]}]",
                "entry 2: field \"conversations[0].value\": expected a string",
            ),
            (
                "[{\"conversations\": [{\"value\": \"x\"}]}]",
                "entry 0: field \"conversations[0].from\": missing",
            ),
            ("[7]", "entry 0: expected a JSON object"),
        ] {
            let (_d, p) = file("sg.json", body);
            let e = load(&p).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        }
    }

    #[test]
    fn no_usable_pair_is_an_empty_dataset() {
        let (_d, p) = file(
            "sg.json",
            "[{\"conversations\": [{\"from\": \"gpt\", \"value\": \"x\"}]}]",
        );
        let e = super::super::dataset::load(super::super::SourceKind::Sharegpt, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the dataset is empty"), "{e}");
        assert!(e.contains("1 conversations without"), "{e}");
    }
}
