//! `prefix`: `prefix_groups` groups, each with its own shared prefix of `prefix_tokens`; every
//! request draws a group uniformly and is that group's prefix followed by a random suffix up to
//! `prompt_tokens` in all, so the server's prefix cache can serve the prefix and the suffix must
//! be computed. The prefixes depend only on the workload's stable seed and the group, never on
//! the stream, so every stream of the workload shares them.

use rand::Rng;
use rand::rngs::SmallRng;

use super::{Item, PromptSpec, SourceSettings};

/// The seed of group `group`'s prefix.
pub fn group_seed(stable_seed: u64, group: u32) -> u64 {
    // SplitMix64 of the pair: distinct groups get unrelated prefixes.
    let mut z = stable_seed ^ u64::from(group).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The next request of a prefix group.
pub(super) fn next(s: &SourceSettings, stable_seed: u64, rng: &mut SmallRng) -> Item {
    let group = rng.random_range(0..s.prefix_groups.max(1));
    let tokens = s
        .prompt_tokens
        .sample(rng)
        .max(s.prefix_tokens.saturating_add(1));
    Item {
        prompt: PromptSpec::Prefixed {
            prefix_seed: group_seed(stable_seed, group),
            prefix_tokens: s.prefix_tokens,
            tokens,
        },
        max_tokens: s.max_tokens,
        model: None,
        turn: None,
        seed: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::{SourceKind, Workload};
    use super::*;
    use crate::config::prober::Length;

    fn settings(groups: u32) -> SourceSettings {
        SourceSettings {
            kind: SourceKind::Prefix,
            prefix_groups: groups,
            prefix_tokens: 32,
            prompt_tokens: Length::Fixed(96),
            ..Default::default()
        }
    }

    #[test]
    fn streams_share_exactly_the_group_prefixes() {
        let w = Workload::load(&settings(3), 42).unwrap();
        let mut seeds = BTreeSet::new();
        for stream in 0..4 {
            let mut s = w.source(stream);
            for _ in 0..50 {
                let i = s.next_item();
                let PromptSpec::Prefixed {
                    prefix_seed,
                    prefix_tokens,
                    tokens,
                } = i.prompt
                else {
                    panic!("{i:?}")
                };
                assert_eq!((prefix_tokens, tokens), (32, 96));
                seeds.insert(prefix_seed);
            }
        }
        let want: BTreeSet<u64> = (0..3).map(|g| group_seed(42, g)).collect();
        assert_eq!(seeds, want, "3 groups, the same on every stream");
        let other = Workload::load(&settings(3), 43).unwrap();
        let PromptSpec::Prefixed { prefix_seed, .. } = other.source(0).next_item().prompt else {
            panic!()
        };
        assert!(
            !want.contains(&prefix_seed),
            "another stable seed, other prefixes"
        );
    }
}
