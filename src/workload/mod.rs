//! Workload sources: what each request of a workload asks for, as plain data.
//!
//! A [`Workload`] is built once from a workload's [`SourceSettings`] (the daemon's
//! `[[targets.workloads]]` or `bench`/`sweep --dataset …`): the dataset file, if any, is read
//! and checked then (start-up, config reload, `check-config`), never while load runs. Each stream
//! of requests then takes its own [`Source`] ([`Workload::source`]), a deterministic generator:
//! the same seed gives the same sequence of [`Item`]s.
//!
//! An [`Item`] describes one request without rendering it: prompt text from a dataset, or a
//! random prompt of a length (with a group's shared prefix), or a chat history of message
//! lengths, plus `max_tokens`, the model (a LoRA adapter) and the turn of a session. The
//! prober's [`crate::prober::prompt::PromptBuilder`] renders it with the server's own
//! vocabulary, using the seeds in the item, so rendering is deterministic too.
//!
//! | source | file | request |
//! |---|---|---|
//! | `random` | [`random`] | a random prompt of `prompt_tokens` (today's behaviour) |
//! | `sharegpt` | [`sharegpt`] | the first human turn of a conversation; `max_tokens` = the reference answer's length |
//! | `jsonl` | [`jsonl`] | `prompt` of a line; `max_tokens` = its `output_tokens`/`max_tokens` |
//! | `prefix` | [`prefix`] | one of N groups' shared prefix + a random suffix |
//! | `multi-turn` | [`multiturn`] | a chat session's whole history + a new user message |
//! | `lora` | [`lora`] | a random prompt to the next adapter the server lists (round-robin) |
//!
//! This module names only [`crate::config`]: the prober and the experiments use it.

pub mod dataset;
pub mod jsonl;
pub mod lora;
pub mod multiturn;
pub mod prefix;
pub mod random;
pub mod sharegpt;

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use crate::config::workload::{SourceKind, SourceSettings};
pub use dataset::{Dataset, Entry};

/// Why a workload cannot be built: the message names the file, the line or entry, and the
/// field (`data.jsonl:7: field "prompt": expected a string`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WorkloadError(pub String);

/// The role of one chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The OpenAI `role` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a generated chat history: `tokens` random words drawn with `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatPart {
    pub role: Role,
    pub tokens: u32,
    pub seed: u64,
}

/// What a request's prompt is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptSpec {
    /// Random, `tokens` long.
    Random { tokens: u32 },
    /// `prefix_tokens` drawn with `prefix_seed` (the same for every request of the group), then
    /// random up to `tokens` in all.
    Prefixed {
        prefix_seed: u64,
        prefix_tokens: u32,
        tokens: u32,
    },
    /// This text, as given (a dataset's prompt).
    Text(Arc<str>),
    /// A chat history: every earlier message of the session, then the new user message.
    Chat(Vec<ChatPart>),
}

impl PromptSpec {
    /// The prompt's length in tokens, as far as it is known before rendering (a text prompt:
    /// the estimate of [`dataset::estimate_tokens`]).
    pub fn approx_tokens(&self) -> u32 {
        match self {
            PromptSpec::Random { tokens } | PromptSpec::Prefixed { tokens, .. } => *tokens,
            PromptSpec::Text(t) => dataset::estimate_tokens(t),
            PromptSpec::Chat(parts) => parts
                .iter()
                .fold(0u32, |n, p| n.saturating_add(p.tokens))
                .max(1),
        }
    }
}

/// One request a source asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub prompt: PromptSpec,
    /// `max_tokens` of the request.
    pub max_tokens: u32,
    /// The model to request (a LoRA adapter); `None`: the target's model.
    pub model: Option<Arc<str>>,
    /// Multi-turn: the turn within its session, from 1.
    pub turn: Option<u32>,
    /// Seed of the request's random words (rendering draws them from it).
    pub seed: u64,
}

/// Turns beyond this fold into one `8+` row (reports) so the turn dimension stays bounded.
pub const TURN_BUCKETS: u32 = 8;

/// The bounded name of a turn: `1` … `7`, then `8+`.
pub fn turn_bucket(turn: u32) -> String {
    if turn >= TURN_BUCKETS {
        format!("{TURN_BUCKETS}+")
    } else {
        turn.max(1).to_string()
    }
}

/// A workload's source, built and checked: shared (cheaply cloned) by every stream.
#[derive(Debug, Clone)]
pub struct Workload {
    settings: SourceSettings,
    dataset: Option<Arc<Dataset>>,
    adapters: Arc<[Arc<str>]>,
    /// Seed of what must be the same on every stream (prefix groups).
    stable_seed: u64,
}

impl Workload {
    /// Builds the workload, reading its dataset file (through [`dataset::load_cached`]: a file
    /// unchanged since its last read is not parsed again). `stable_seed` fixes what every
    /// stream shares (the prefixes of `prefix` groups).
    pub fn load(settings: &SourceSettings, stable_seed: u64) -> Result<Self, WorkloadError> {
        let problems = settings.problems(&|k| k.to_string());
        if !problems.is_empty() {
            return Err(WorkloadError(problems.join("; ")));
        }
        let dataset = match (settings.kind, &settings.path) {
            (SourceKind::Sharegpt | SourceKind::Jsonl, Some(p)) => {
                Some(dataset::load_cached(settings.kind, p)?)
            }
            _ => None,
        };
        Ok(Self {
            settings: settings.clone(),
            dataset,
            adapters: Arc::from(Vec::new()),
            stable_seed,
        })
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &SourceSettings {
        &self.settings
    }

    /// The dataset, for the file-backed sources.
    pub fn dataset(&self) -> Option<&Dataset> {
        self.dataset.as_deref()
    }

    /// Whether it needs the server's adapter list ([`Workload::bind_adapters`]) before use.
    pub fn needs_adapters(&self) -> bool {
        self.settings.kind == SourceKind::Lora
    }

    /// The adapters requests go to (`lora`, after [`Workload::bind_adapters`]).
    pub fn adapters(&self) -> &[Arc<str>] {
        &self.adapters
    }

    /// `lora`: chooses the adapters from the server's `/v1/models` (see [`lora::choose`]).
    pub fn bind_adapters(&mut self, listed: &[lora::Listed]) -> Result<(), WorkloadError> {
        let chosen = lora::choose(listed, &self.settings.lora_adapters)?;
        self.adapters = Arc::from(chosen);
        Ok(())
    }

    /// A fresh generator for one stream of requests, deterministic given `seed`.
    pub fn source(&self, seed: u64) -> Source {
        let state = match self.settings.kind {
            SourceKind::Random => State::Random,
            SourceKind::Sharegpt | SourceKind::Jsonl => State::Dataset,
            SourceKind::Prefix => State::Prefix,
            SourceKind::MultiTurn => State::MultiTurn(multiturn::Session::default()),
            SourceKind::Lora => {
                State::Lora(lora::RoundRobin::starting_at(seed, self.adapters.len()))
            }
        };
        Source {
            workload: self.clone(),
            rng: SmallRng::seed_from_u64(seed),
            state,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Random,
    Dataset,
    Prefix,
    MultiTurn(multiturn::Session),
    Lora(lora::RoundRobin),
}

/// One stream's generator of [`Item`]s.
#[derive(Debug, Clone)]
pub struct Source {
    workload: Workload,
    rng: SmallRng,
    state: State,
}

impl Source {
    /// The next request.
    pub fn next_item(&mut self) -> Item {
        let w = &self.workload;
        let s = &w.settings;
        let rng = &mut self.rng;
        let mut item = match &mut self.state {
            State::Random => random::next(s, rng),
            State::Dataset => match &w.dataset {
                Some(d) => dataset::next(d, s, rng),
                None => random::next(s, rng),
            },
            State::Prefix => prefix::next(s, w.stable_seed, rng),
            State::MultiTurn(session) => session.next(s, rng),
            State::Lora(rr) => lora::next(s, &w.adapters, rr, rng),
        };
        item.seed = rng.random();
        item
    }
}

/// Reads and checks the dataset of every workload of `cfg` that has one (start-up, every
/// reload, `check-config`), so a bad file stops them with a message naming the workload's key,
/// the file, the line or entry, and the field. The datasets stay cached for the prober.
pub fn check_config(cfg: &crate::config::Config) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for (ti, t) in cfg.targets.iter().enumerate() {
        for (wi, w) in t.workloads.iter().enumerate() {
            if let (true, Some(p)) = (w.source.needs_path(), &w.path)
                && let Err(e) = dataset::load_cached(w.source, p)
            {
                errors.push(format!("targets[{ti}].workloads[{wi}].path: {e}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("invalid workload dataset:\n  {}", errors.join("\n  "))
    }
}

/// One line per workload dataset of `cfg` (for `check-config`); empty without any.
pub fn describe_datasets(cfg: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for t in &cfg.targets {
        for (wi, w) in t.workloads.iter().enumerate() {
            if let (true, Some(p)) = (w.source.needs_path(), &w.path)
                && let Ok(d) = dataset::load_cached(w.source, p)
            {
                out.push(format!(
                    "dataset of {} workload {}: {} {}",
                    t.label(),
                    w.label(wi),
                    w.source.as_str(),
                    d.describe()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_names_the_workload_and_the_line() {
        let (_d, p) = dataset::tests::file("bad.jsonl", "{\"prompt\": \"ok\"}\n{\"prompt\": []}\n");
        let cfg = crate::config::from_toml(&format!(
            "[[targets]]\nurl = \"http://127.0.0.1:8000\"\n[[targets.workloads]]\n[[targets.workloads]]\nname = \"d\"\nsource = \"jsonl\"\npath = {:?}\n",
            p.display().to_string()
        ))
        .unwrap();
        let e = check_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "targets[0].workloads[1].path: {}:2: field \"prompt\": expected a string",
                p.display()
            )),
            "{e}"
        );
        std::fs::write(&p, "{\"prompt\": \"ok\"}\n").unwrap();
        check_config(&cfg).unwrap();
        let d = describe_datasets(&cfg).join("\n");
        assert!(
            d.contains("workload d: jsonl") && d.contains("1 requests"),
            "{d}"
        );
    }

    #[test]
    fn turns_fold_into_eight_plus() {
        assert_eq!(turn_bucket(1), "1");
        assert_eq!(turn_bucket(7), "7");
        assert_eq!(turn_bucket(8), "8+");
        assert_eq!(turn_bucket(40), "8+");
    }

    #[test]
    fn random_source_is_deterministic_given_the_seed() {
        let settings = SourceSettings {
            prompt_tokens: crate::config::prober::Length::Uniform { min: 10, max: 500 },
            ..Default::default()
        };
        let w = Workload::load(&settings, 0).unwrap();
        let a: Vec<Item> = {
            let mut s = w.source(7);
            (0..20).map(|_| s.next_item()).collect()
        };
        let b: Vec<Item> = {
            let mut s = w.source(7);
            (0..20).map(|_| s.next_item()).collect()
        };
        let c: Vec<Item> = {
            let mut s = w.source(8);
            (0..20).map(|_| s.next_item()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        for i in &a {
            let PromptSpec::Random { tokens } = i.prompt else {
                panic!("{i:?}")
            };
            assert!((10..=500).contains(&tokens));
            assert_eq!(i.max_tokens, 16);
            assert_eq!((i.model.as_ref(), i.turn), (None, None));
        }
    }

    #[test]
    fn bad_settings_are_refused_before_any_file() {
        let settings = SourceSettings {
            kind: SourceKind::Sharegpt,
            ..Default::default()
        };
        let e = Workload::load(&settings, 0).unwrap_err().to_string();
        assert!(e.contains("path: source sharegpt needs a file"), "{e}");
    }
}
