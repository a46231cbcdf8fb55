//! Workload sources as plain data: which requests a workload sends (`source = "sharegpt"`,
//! `path = …` on a `[[targets.workloads]]`, or `bench`/`sweep --dataset …`), and the checks that
//! need no file. Reading the files and generating the requests is [`crate::workload`]'s job
//! (this module names no subsystem; see the module doc of [`crate::config`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Endpoint;
use super::prober::Length;

/// Where a workload's requests come from.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Random prompts of the configured length (the default).
    #[default]
    Random,
    /// A local ShareGPT-format JSON file: the first human/gpt pair of each conversation.
    Sharegpt,
    /// A local JSON Lines file: `{"prompt": "…", "output_tokens": 128}` per line.
    Jsonl,
    /// Groups of requests sharing a prefix (each request: its group's prefix + a random suffix).
    Prefix,
    /// Chat sessions whose history grows turn by turn.
    MultiTurn,
    /// Random prompts spread round-robin over the LoRA adapters the server lists.
    Lora,
}

impl SourceKind {
    /// The name in the configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Random => "random",
            SourceKind::Sharegpt => "sharegpt",
            SourceKind::Jsonl => "jsonl",
            SourceKind::Prefix => "prefix",
            SourceKind::MultiTurn => "multi-turn",
            SourceKind::Lora => "lora",
        }
    }

    /// Whether the source reads a file (`path` / `--dataset-path`).
    pub fn needs_path(self) -> bool {
        matches!(self, SourceKind::Sharegpt | SourceKind::Jsonl)
    }
}

/// Largest dataset file read, in bytes (1 GiB, room for the usual ShareGPT dump): a bigger file
/// is refused, so a wrong path cannot exhaust memory. Entries are read one at a time and only
/// their prompts kept.
pub const MAX_DATASET_BYTES: u64 = 1024 * 1024 * 1024;
/// Most turns of one multi-turn session.
pub const MAX_TURNS: u32 = 64;
/// Most prefix groups.
pub const MAX_PREFIX_GROUPS: u32 = 100_000;
/// Most LoRA adapters requests are spread over (the rest of a longer list is not used, which
/// keeps the `model` label bounded).
pub const MAX_LORA_ADAPTERS: usize = 32;

/// Everything a workload source needs, as the configuration or the command line gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    pub kind: SourceKind,
    /// The dataset file (`sharegpt`, `jsonl`).
    pub path: Option<PathBuf>,
    /// Prompt length in tokens (`random`, `prefix`: the whole prompt, prefix included;
    /// `multi-turn`: each new user message; `lora`; `sharegpt` with `lengths_only` ignores it).
    pub prompt_tokens: Length,
    /// `max_tokens` of requests whose dataset entry gives none (and of every generated one).
    pub max_tokens: u32,
    /// `sharegpt`: every request's `max_tokens` is this instead of the reference answer's length.
    pub sharegpt_output_len: Option<u32>,
    /// `sharegpt`/`jsonl`: send random prompts of the dataset's (estimated) prompt lengths
    /// instead of its text.
    pub lengths_only: bool,
    /// `prefix`: number of groups.
    pub prefix_groups: u32,
    /// `prefix`: tokens of each group's shared prefix.
    pub prefix_tokens: u32,
    /// `multi-turn`: turns per session.
    pub turns: u32,
    /// `lora`: the adapters to use (empty: every adapter the server lists).
    pub lora_adapters: Vec<String>,
    /// The endpoint the requests go to.
    pub endpoint: Endpoint,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            kind: SourceKind::Random,
            path: None,
            prompt_tokens: Length::default(),
            max_tokens: 16,
            sharegpt_output_len: None,
            lengths_only: false,
            prefix_groups: DEFAULT_PREFIX_GROUPS,
            prefix_tokens: 0,
            turns: DEFAULT_TURNS,
            lora_adapters: Vec::new(),
            endpoint: Endpoint::Completions,
        }
    }
}

/// Default number of prefix groups.
pub const DEFAULT_PREFIX_GROUPS: u32 = 4;
/// Default turns per multi-turn session.
pub const DEFAULT_TURNS: u32 = 4;

impl SourceSettings {
    /// The problems of these settings that need no file, each as `"<key>: <problem>"` where
    /// `key(name)` spells a setting's name (a config key or a flag).
    pub fn problems(&self, key: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut e = Vec::new();
        let kind = self.kind.as_str();
        match (&self.path, self.kind.needs_path()) {
            (None, true) => e.push(format!("{}: source {kind} needs a file", key("path"))),
            (Some(_), false) => e.push(format!(
                "{}: source {kind} reads no file (only sharegpt and jsonl do)",
                key("path")
            )),
            _ => {}
        }
        if self.sharegpt_output_len == Some(0) {
            e.push(format!(
                "{}: must be at least 1",
                key("sharegpt_output_len")
            ));
        }
        if self.sharegpt_output_len.is_some() && self.kind != SourceKind::Sharegpt {
            e.push(format!(
                "{}: only applies to source sharegpt",
                key("sharegpt_output_len")
            ));
        }
        if self.lengths_only && !self.kind.needs_path() {
            e.push(format!(
                "{}: only applies to sources sharegpt and jsonl",
                key("lengths_only")
            ));
        }
        if self.kind == SourceKind::Prefix {
            if !(1..=MAX_PREFIX_GROUPS).contains(&self.prefix_groups) {
                e.push(format!(
                    "{}: must be 1 to {MAX_PREFIX_GROUPS}",
                    key("prefix_groups")
                ));
            }
            if self.prefix_tokens == 0 || self.prefix_tokens >= self.prompt_tokens.min() {
                e.push(format!(
                    "{}: source prefix needs a prefix of at least 1 token, below the shortest prompt ({} tokens)",
                    key("prefix_tokens"),
                    self.prompt_tokens.min()
                ));
            }
        }
        if self.kind == SourceKind::MultiTurn {
            if !(1..=MAX_TURNS).contains(&self.turns) {
                e.push(format!("{}: must be 1 to {MAX_TURNS}", key("turns")));
            }
            if self.endpoint != Endpoint::Chat {
                e.push(format!(
                    "{}: source multi-turn sends chat sessions; it needs the chat endpoint",
                    key("endpoint")
                ));
            }
        }
        if !self.lora_adapters.is_empty() && self.kind != SourceKind::Lora {
            e.push(format!(
                "{}: only applies to source lora",
                key("lora_adapters")
            ));
        }
        if self.lora_adapters.len() > MAX_LORA_ADAPTERS {
            e.push(format!(
                "{}: at most {MAX_LORA_ADAPTERS} adapters",
                key("lora_adapters")
            ));
        }
        if self.lora_adapters.iter().any(|a| a.trim().is_empty()) {
            e.push(format!(
                "{}: adapter names must not be empty",
                key("lora_adapters")
            ));
        }
        e
    }

    /// A short description (`check-config`, reports).
    pub fn describe(&self) -> String {
        match self.kind {
            SourceKind::Random => "random".to_string(),
            SourceKind::Sharegpt | SourceKind::Jsonl => format!(
                "{} {}{}",
                self.kind.as_str(),
                self.path
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                if self.lengths_only {
                    " (lengths only)"
                } else {
                    ""
                }
            ),
            SourceKind::Prefix => format!(
                "prefix {} groups x {} tokens",
                self.prefix_groups, self.prefix_tokens
            ),
            SourceKind::MultiTurn => format!("multi-turn {} turns", self.turns),
            SourceKind::Lora if self.lora_adapters.is_empty() => {
                "lora (every listed adapter)".to_string()
            }
            SourceKind::Lora => format!("lora {}", self.lora_adapters.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(s: &SourceSettings) -> String {
        s.problems(&|k| format!("w.{k}")).join("\n")
    }

    #[test]
    fn default_is_random_and_clean() {
        assert_eq!(problems(&SourceSettings::default()), "");
        assert_eq!(SourceSettings::default().describe(), "random");
    }

    #[test]
    fn each_source_names_its_missing_or_stray_setting() {
        let s = SourceSettings {
            kind: SourceKind::Jsonl,
            ..Default::default()
        };
        assert!(problems(&s).contains("w.path: source jsonl needs a file"));
        let s = SourceSettings {
            kind: SourceKind::Prefix,
            path: Some("x".into()),
            prompt_tokens: Length::Fixed(32),
            prefix_tokens: 32,
            ..Default::default()
        };
        let p = problems(&s);
        assert!(p.contains("w.path: source prefix reads no file"), "{p}");
        assert!(p.contains("w.prefix_tokens"), "{p}");
        let s = SourceSettings {
            kind: SourceKind::MultiTurn,
            turns: 0,
            ..Default::default()
        };
        let p = problems(&s);
        assert!(p.contains("w.turns: must be 1 to 64"), "{p}");
        assert!(p.contains("w.endpoint"), "{p}");
        let s = SourceSettings {
            lora_adapters: vec!["a".into()],
            sharegpt_output_len: Some(0),
            lengths_only: true,
            ..Default::default()
        };
        let p = problems(&s);
        assert!(
            p.contains("w.lora_adapters: only applies to source lora"),
            "{p}"
        );
        assert!(
            p.contains("w.sharegpt_output_len: must be at least 1"),
            "{p}"
        );
        assert!(p.contains("w.lengths_only"), "{p}");
    }
}
