//! `jsonl`: a local JSON Lines file, one request per line:
//! `{"prompt": "…", "output_tokens": 128}`. `prompt` (a non-empty string) is required;
//! `output_tokens` or `max_tokens` (a positive integer; `output_tokens` wins when both are
//! given) sets the request's `max_tokens`, else the workload's `max_tokens` applies. Other
//! fields are ignored; blank lines are skipped. The file is read line by line.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::WorkloadError;
use super::dataset::{Dataset, Entry, open_capped, token_count};

/// Reads a JSON Lines dataset. Errors name the file, the line (from 1) and the field.
pub fn load(path: &Path) -> Result<Dataset, WorkloadError> {
    let file = open_capped(path)?;
    let name = path.display();
    let mut entries = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| WorkloadError(format!("{name}:{n}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| WorkloadError(format!("{name}:{n}: not JSON: {e}")))?;
        entries.push(entry(&v).map_err(|m| WorkloadError(format!("{name}:{n}: {m}")))?);
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        entries,
        skipped: 0,
    })
}

/// One line's request, or what is wrong with it.
fn entry(v: &Value) -> Result<Entry, String> {
    let Value::Object(m) = v else {
        return Err("expected a JSON object".into());
    };
    let prompt = match m.get("prompt") {
        None => return Err("field \"prompt\": missing".into()),
        Some(Value::String(s)) if s.is_empty() => {
            return Err("field \"prompt\": must not be empty".into());
        }
        Some(Value::String(s)) => Arc::from(s.as_str()),
        Some(_) => return Err("field \"prompt\": expected a string".into()),
    };
    let mut output_tokens = None;
    for key in ["max_tokens", "output_tokens"] {
        if let Some(v) = m.get(key).filter(|v| !v.is_null()) {
            output_tokens = Some(token_count(v).map_err(|e| format!("field {key:?}: {e}"))?);
        }
    }
    Ok(Entry {
        prompt,
        output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::super::dataset::tests::file;
    use super::*;

    #[test]
    fn reads_prompts_and_output_lengths() {
        let (_d, p) = file(
            "data.jsonl",
            "{\"prompt\": \"hello there\", \"output_tokens\": 12}\n\n{\"prompt\": \"b\", \"max_tokens\": 3, \"extra\": true}\n{\"prompt\": \"c\"}\n{\"prompt\": \"d\", \"max_tokens\": 9, \"output_tokens\": 4}\n",
        );
        let d = load(&p).unwrap();
        let got: Vec<(&str, Option<u32>)> = d
            .entries
            .iter()
            .map(|e| (&*e.prompt, e.output_tokens))
            .collect();
        assert_eq!(
            got,
            vec![
                ("hello there", Some(12)),
                ("b", Some(3)),
                ("c", None),
                ("d", Some(4))
            ]
        );
    }

    #[test]
    fn bad_lines_name_file_line_and_field() {
        let ok = "{\"prompt\": \"fine\"}\n";
        for (body, want) in [
            (
                format!("{ok}{ok}\n{ok}{ok}{ok}{{\"prompt\": 5}}\n"),
                "data.jsonl:7: field \"prompt\": expected a string",
            ),
            (
                format!("{ok}{{\"output_tokens\": 5}}\n"),
                "data.jsonl:2: field \"prompt\": missing",
            ),
            (
                format!("{ok}{{\"prompt\": \"x\", \"output_tokens\": \"many\"}}\n"),
                "data.jsonl:2: field \"output_tokens\": expected a positive integer",
            ),
            (
                "{\"prompt\": \"x\", \"max_tokens\": 0}\n".to_string(),
                "data.jsonl:1: field \"max_tokens\": expected an integer from 1",
            ),
            (format!("{ok}not json\n"), "data.jsonl:2: not JSON"),
            (
                "[1, 2]\n".to_string(),
                "data.jsonl:1: expected a JSON object",
            ),
            (
                "{\"prompt\": \"\"}\n".to_string(),
                "data.jsonl:1: field \"prompt\": must not be empty",
            ),
        ] {
            let (_d, p) = file("data.jsonl", &body);
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
            assert!(e.starts_with(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_dataset_error() {
        let (_d, p) = file("empty.jsonl", "\n\n");
        let e = super::super::dataset::load(super::super::SourceKind::Jsonl, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.jsonl: the dataset is empty"), "{e}");
    }
}
