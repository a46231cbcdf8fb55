//! `random`: a random prompt of `prompt_tokens` (drawn from its distribution) and the
//! workload's `max_tokens`. The prober and `bench` keep their own path for this source, so
//! their requests are exactly what they were before sources existed; this generator serves the
//! callers that take every source through [`super::Source`].

use rand::rngs::SmallRng;

use super::{Item, PromptSpec, SourceSettings};

/// The next random request.
pub(super) fn next(s: &SourceSettings, rng: &mut SmallRng) -> Item {
    Item {
        prompt: PromptSpec::Random {
            tokens: s.prompt_tokens.sample(rng),
        },
        max_tokens: s.max_tokens,
        model: None,
        turn: None,
        seed: 0,
    }
}
