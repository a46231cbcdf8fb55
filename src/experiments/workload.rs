//! The experiments' workload flags (`--dataset`, `--dataset-path`, …, named after
//! `vllm bench serve`'s where they mean the same) and the per-turn TTFT summary of multi-turn
//! runs. The sources themselves are [`crate::workload`]'s, shared with the daemon.

use std::path::PathBuf;

use anyhow::Context;

use super::engine::{RequestSpec, Sample, Target};
use super::report::TurnRow;
use super::stats::Summary;
use crate::config::Endpoint;
use crate::config::prober::Length;
use crate::config::workload::{DEFAULT_PREFIX_GROUPS, DEFAULT_TURNS, SourceKind, SourceSettings};
use crate::workload::{Item, Workload, turn_bucket};

/// Flags that choose where requests come from.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct WorkloadArgs {
    /// Where requests come from: random prompts of --prompt-tokens (the default), a ShareGPT
    /// JSON file, a JSON Lines file, prefix groups, multi-turn chat sessions, or LoRA adapters.
    #[arg(long, visible_alias = "dataset-name", value_enum, default_value_t = SourceKind::Random, env = "VLLM_SENTINEL_DATASET")]
    pub dataset: SourceKind,
    /// The dataset file of --dataset sharegpt or jsonl (a local path; read once, before any
    /// request; at most 1 GiB).
    #[arg(long, env = "VLLM_SENTINEL_DATASET_PATH")]
    pub dataset_path: Option<PathBuf>,
    /// sharegpt: max_tokens of every request, instead of the reference answer's length.
    #[arg(long, env = "VLLM_SENTINEL_SHAREGPT_OUTPUT_LEN")]
    pub sharegpt_output_len: Option<u32>,
    /// sharegpt/jsonl: send random prompts of the dataset's (estimated) prompt lengths instead
    /// of its text.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_DATASET_LENGTHS_ONLY")]
    pub dataset_lengths_only: bool,
    /// prefix: number of groups, each with its own shared prefix.
    #[arg(long, default_value_t = DEFAULT_PREFIX_GROUPS, env = "VLLM_SENTINEL_PREFIX_REPETITION_NUM_PREFIXES")]
    pub prefix_repetition_num_prefixes: u32,
    /// prefix: tokens of each group's shared prefix (within --prompt-tokens, which stays the
    /// whole prompt's length).
    #[arg(
        long,
        default_value_t = 0,
        env = "VLLM_SENTINEL_PREFIX_REPETITION_PREFIX_LEN"
    )]
    pub prefix_repetition_prefix_len: u32,
    /// multi-turn: turns per chat session (each turn: the whole history plus a new user message
    /// of --prompt-tokens; answers of --max-tokens).
    #[arg(long, default_value_t = DEFAULT_TURNS, env = "VLLM_SENTINEL_MULTI_TURN_TURNS")]
    pub multi_turn_turns: u32,
    /// lora: the adapters to spread requests over, round-robin (comma-separated; default:
    /// every adapter the server's /v1/models lists, at most 32).
    #[arg(long, value_delimiter = ',', env = "VLLM_SENTINEL_LORA_MODULES")]
    pub lora_modules: Vec<String>,
}

impl WorkloadArgs {
    /// The source settings, with the experiment's prompt length, `max_tokens` and endpoint.
    pub fn settings(
        &self,
        prompt_tokens: u32,
        max_tokens: u32,
        endpoint: Endpoint,
    ) -> SourceSettings {
        SourceSettings {
            kind: self.dataset,
            path: self.dataset_path.clone(),
            prompt_tokens: Length::Fixed(prompt_tokens),
            max_tokens,
            sharegpt_output_len: self.sharegpt_output_len,
            lengths_only: self.dataset_lengths_only,
            prefix_groups: self.prefix_repetition_num_prefixes,
            prefix_tokens: self.prefix_repetition_prefix_len,
            turns: self.multi_turn_turns,
            lora_adapters: self.lora_modules.clone(),
            endpoint,
        }
    }

    /// Checks the flags and reads the dataset (before any request is sent); `None` for
    /// `random`, which keeps the experiments' own prompt path. `seed` fixes the prefixes of
    /// `prefix` groups.
    pub fn load(
        &self,
        prompt_tokens: u32,
        max_tokens: u32,
        endpoint: Endpoint,
        seed: u64,
    ) -> anyhow::Result<Option<Workload>> {
        let settings = self.settings(prompt_tokens, max_tokens, endpoint);
        let problems = settings.problems(&|k| flag(k).to_string());
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        if self.dataset == SourceKind::Random {
            return Ok(None);
        }
        Ok(Some(Workload::load(&settings, seed).with_context(
            || format!("--dataset {}", self.dataset.as_str()),
        )?))
    }
}

/// The flag of a source setting.
fn flag(setting: &str) -> &str {
    match setting {
        "path" => "--dataset-path",
        "sharegpt_output_len" => "--sharegpt-output-len",
        "lengths_only" => "--dataset-lengths-only",
        "prefix_groups" => "--prefix-repetition-num-prefixes",
        "prefix_tokens" => "--prefix-repetition-prefix-len",
        "turns" => "--multi-turn-turns",
        "lora_adapters" => "--lora-modules",
        "endpoint" => "--endpoint",
        other => other,
    }
}

/// Sends one request: the source's item, or (`random`) a random prompt of the spec's length,
/// charged from `intended`.
pub async fn send<T: Target>(
    t: &T,
    spec: RequestSpec,
    item: Option<&Item>,
    intended: tokio::time::Instant,
) -> Sample {
    match item {
        Some(i) => t.execute_item(i, spec.stream, intended).await,
        None => t.execute(spec, intended).await,
    }
}

/// The seed of stream `stream` of level `level` (distinct streams, distinct sequences).
pub fn stream_seed(seed: u64, level: u64, stream: u64) -> u64 {
    crate::workload::prefix::group_seed(
        seed ^ level.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        stream as u32,
    )
}

/// `lora`: binds the workload to the adapters the target lists.
pub async fn bind_adapters<T: Target>(t: &T, w: &mut Workload) -> anyhow::Result<()> {
    if w.needs_adapters() {
        let listed = t.listed_models().await?;
        w.bind_adapters(&listed)?;
    }
    Ok(())
}

/// What the report records about the source (its settings, beside the other flags).
pub fn describe(w: Option<&Workload>) -> String {
    match w {
        None => "random".to_string(),
        Some(w) => {
            let mut d = w.settings().describe();
            if let Some(ds) = w.dataset() {
                d = format!("{} ({} requests)", d, ds.entries.len());
            }
            if !w.adapters().is_empty() {
                let names: Vec<&str> = w.adapters().iter().map(|a| &**a).collect();
                d = format!("{d} ({})", names.join(","));
            }
            d
        }
    }
}

/// TTFT by turn (`1` … `7`, `8+`) over multi-turn samples (streaming ones carry a TTFT).
pub fn turn_rows<'a>(samples: impl IntoIterator<Item = (u32, &'a Sample)>) -> Vec<TurnRow> {
    let mut by: std::collections::BTreeMap<u32, Vec<&Sample>> = Default::default();
    for (turn, s) in samples {
        by.entry(turn.clamp(1, crate::workload::TURN_BUCKETS))
            .or_default()
            .push(s);
    }
    by.into_iter()
        .map(|(turn, v)| {
            let ok: Vec<&&Sample> = v.iter().filter(|s| s.ok()).collect();
            TurnRow {
                turn: turn_bucket(turn),
                requests: v.len(),
                ok: ok.len(),
                ttft_s: Summary::of(ok.iter().filter_map(|s| s.ttft_s)),
                prompt_tokens: Summary::of(
                    ok.iter().filter_map(|s| s.prompt_tokens.map(f64::from)),
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::engine::Outcome;

    #[test]
    fn flags_name_themselves_in_errors() {
        let a = WorkloadArgs {
            dataset: SourceKind::MultiTurn,
            multi_turn_turns: 0,
            ..Default::default()
        };
        let e = a
            .load(16, 8, Endpoint::Completions, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--multi-turn-turns: must be 1 to 64"), "{e}");
        assert!(e.contains("--endpoint: source multi-turn"), "{e}");
        let a = WorkloadArgs {
            dataset: SourceKind::Jsonl,
            dataset_path: Some("/no/such.jsonl".into()),
            ..Default::default()
        };
        let e = format!("{:#}", a.load(16, 8, Endpoint::Completions, 0).unwrap_err());
        assert!(
            e.contains("--dataset jsonl: /no/such.jsonl: cannot read"),
            "{e}"
        );
        assert!(
            WorkloadArgs::default()
                .load(16, 8, Endpoint::Completions, 0)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn turns_are_summarised_and_folded() {
        let s = |ttft: f64, ok: bool| Sample {
            outcome: if ok {
                Outcome::Ok
            } else {
                Outcome::ServerError
            },
            ttft_s: Some(ttft),
            ..Default::default()
        };
        let samples = [
            (1, s(0.1, true)),
            (2, s(0.2, true)),
            (1, s(0.3, true)),
            (9, s(0.9, true)),
            (8, s(0.8, false)),
        ];
        let rows = turn_rows(samples.iter().map(|(t, s)| (*t, s)));
        let got: Vec<(&str, usize, usize, Option<f64>)> = rows
            .iter()
            .map(|r| (r.turn.as_str(), r.requests, r.ok, r.ttft_s.max))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1", 2, 2, Some(0.3)),
                ("2", 1, 1, Some(0.2)),
                ("8+", 2, 1, Some(0.9))
            ]
        );
    }
}
