//! `lora`: random prompts spread round-robin over LoRA adapters. The adapters come from the
//! server's `/v1/models`: vLLM lists each adapter loaded with `--lora-modules` as a model whose
//! `parent` is the base model (the base model's own `parent` is `null`). With `lora_adapters`
//! set, only those are used, and each must be listed. At most
//! [`MAX_LORA_ADAPTERS`](crate::config::workload::MAX_LORA_ADAPTERS) adapters are used (the
//! first ones listed), so the `model` label stays bounded.

use std::sync::Arc;

use rand::rngs::SmallRng;

use super::{Item, PromptSpec, SourceSettings, WorkloadError};
use crate::config::workload::MAX_LORA_ADAPTERS;

/// One entry of `/v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    /// The model it adapts (`None`: a base model).
    pub parent: Option<String>,
}

/// The adapters to use: the listed adapters (entries whose `parent` is set to another model),
/// narrowed to `wanted` when it is not empty.
pub fn choose(listed: &[Listed], wanted: &[String]) -> Result<Vec<Arc<str>>, WorkloadError> {
    let adapters: Vec<&str> = listed
        .iter()
        .filter(|m| m.parent.as_deref().is_some_and(|p| p != m.id))
        .map(|m| m.id.as_str())
        .collect();
    let chosen: Vec<Arc<str>> = if wanted.is_empty() {
        adapters
            .iter()
            .take(MAX_LORA_ADAPTERS)
            .map(|a| Arc::from(*a))
            .collect()
    } else {
        let mut v = Vec::new();
        for w in wanted {
            if !adapters.contains(&w.as_str()) {
                return Err(WorkloadError(format!(
                    "lora adapter {w:?} is not listed by the server's /v1/models (adapters: {})",
                    listing(&adapters)
                )));
            }
            if !v.iter().any(|a: &Arc<str>| **a == **w) {
                v.push(Arc::from(w.as_str()));
            }
        }
        v
    };
    if chosen.is_empty() {
        return Err(WorkloadError(format!(
            "source lora: the server's /v1/models lists no LoRA adapter (models: {}); start vLLM with --enable-lora --lora-modules",
            listing(&listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>())
        )));
    }
    Ok(chosen)
}

fn listing(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Round-robin position over the adapters.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Starts at `seed` modulo `n`, so concurrent streams do not move in lockstep.
    pub(super) fn starting_at(seed: u64, n: usize) -> Self {
        Self {
            next: if n == 0 {
                0
            } else {
                (seed % n as u64) as usize
            },
        }
    }
}

/// The next request: a random prompt to the next adapter.
pub(super) fn next(
    s: &SourceSettings,
    adapters: &[Arc<str>],
    rr: &mut RoundRobin,
    rng: &mut SmallRng,
) -> Item {
    let model = if adapters.is_empty() {
        None
    } else {
        let m = adapters[rr.next % adapters.len()].clone();
        rr.next = (rr.next + 1) % adapters.len();
        Some(m)
    };
    Item {
        prompt: PromptSpec::Random {
            tokens: s.prompt_tokens.sample(rng),
        },
        max_tokens: s.max_tokens,
        model,
        turn: None,
        seed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SourceKind, Workload};
    use super::*;

    fn listed() -> Vec<Listed> {
        let m = |id: &str, parent: Option<&str>| Listed {
            id: id.into(),
            parent: parent.map(String::from),
        };
        vec![
            m("base", None),
            m("sql", Some("base")),
            m("chat", Some("base")),
            m("other-base", None),
            m("odd", Some("odd")),
        ]
    }

    #[test]
    fn picks_only_listed_adapters_round_robin() {
        let settings = SourceSettings {
            kind: SourceKind::Lora,
            ..Default::default()
        };
        let mut w = Workload::load(&settings, 0).unwrap();
        assert!(w.needs_adapters());
        w.bind_adapters(&listed()).unwrap();
        let mut s = w.source(0);
        let models: Vec<String> = (0..5)
            .map(|_| s.next_item().model.unwrap().to_string())
            .collect();
        assert_eq!(models, vec!["sql", "chat", "sql", "chat", "sql"]);
    }

    #[test]
    fn a_wanted_adapter_must_be_listed() {
        let got = choose(&listed(), &["chat".into()]).unwrap();
        assert_eq!(got, vec![Arc::<str>::from("chat")]);
        let e = choose(&listed(), &["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("\"nope\" is not listed"), "{e}");
        assert!(e.contains("sql, chat"), "{e}");
        let e = choose(&listed()[..1], &[]).unwrap_err().to_string();
        assert!(e.contains("lists no LoRA adapter (models: base)"), "{e}");
    }

    #[test]
    fn at_most_32_adapters() {
        let mut l = vec![Listed {
            id: "base".into(),
            parent: None,
        }];
        l.extend((0..40).map(|i| Listed {
            id: format!("a{i}"),
            parent: Some("base".into()),
        }));
        let got = choose(&l, &[]).unwrap();
        assert_eq!(got.len(), MAX_LORA_ADAPTERS);
        assert_eq!(&*got[31], "a31");
    }
}
