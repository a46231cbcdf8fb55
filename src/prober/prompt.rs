//! Prompt construction: exact-length token-id prompts for completions, calibrated text prompts
//! for chat, each with a random part so the server's prefix cache cannot flatter TTFT.
//!
//! The vocabulary is the server's own: [`PromptBuilder::calibrate`] tokenises a list of common
//! English words through the target's `/tokenize` once and keeps the ids, so every id sent is a
//! real, ordinary token of the served model (random ids could hit special tokens or lie beyond
//! a small vocabulary). For chat it also measures the chat template's overhead and the tokens
//! per word, so a text prompt lands within a token or two of the requested length. Without
//! `/tokenize` (another server, or disabled), prompts fall back to text with one word per token
//! as the estimate; `usage.prompt_tokens` then reports the real length.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::discovery::{self, DiscoveryError, TokenizeInput};
use super::request::{ChatMessage, Endpoint, Prompt};
use crate::workload::{Item, PromptSpec};

/// Common English words that are one token each in the usual BPE vocabularies.
pub const WORDS: &[&str] = &[
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
];

/// How chat prompts map words to tokens on one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatCalibration {
    /// Template tokens around the user message (at zero words).
    pub overhead: f64,
    /// Tokens per word.
    pub per_word: f64,
}

/// Builds prompts for one target. Cheap to clone (the vocabulary is shared).
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    /// Token ids of ordinary words; empty when the server has no `/tokenize`.
    vocab: Arc<[u32]>,
    chat: Option<ChatCalibration>,
}

impl Default for PromptBuilder {
    fn default() -> Self {
        Self::uncalibrated()
    }
}

impl PromptBuilder {
    /// A builder without server calibration: text prompts, one word per token (estimate).
    pub fn uncalibrated() -> Self {
        Self {
            vocab: Arc::from(Vec::new()),
            chat: None,
        }
    }

    /// A builder that draws token-id prompts from `vocab`.
    pub fn with_vocab(vocab: Vec<u32>, chat: Option<ChatCalibration>) -> Self {
        let mut v = vocab;
        v.sort_unstable();
        v.dedup();
        Self {
            vocab: Arc::from(v),
            chat,
        }
    }

    /// Calibrates against the target's `/tokenize` (two or three small requests). Chat
    /// calibration is attempted only when `chat` is set; its failure leaves the estimate.
    pub async fn calibrate(
        client: &reqwest::Client,
        base_url: &str,
        api_key: Option<&str>,
        model: &str,
        chat: bool,
        timeout: Duration,
    ) -> Result<Self, DiscoveryError> {
        let authorization = discovery::bearer(api_key);
        Self::calibrate_with(
            client,
            base_url,
            authorization.as_deref(),
            model,
            chat,
            timeout,
        )
        .await
    }

    /// [`PromptBuilder::calibrate`] with a whole `Authorization` value (`Bearer …`, `Basic …`).
    pub async fn calibrate_with(
        client: &reqwest::Client,
        base_url: &str,
        authorization: Option<&str>,
        model: &str,
        chat: bool,
        timeout: Duration,
    ) -> Result<Self, DiscoveryError> {
        let api_key = authorization;
        let text: String = WORDS.iter().map(|w| format!(" {w}")).collect();
        let t = discovery::tokenize(
            client,
            base_url,
            api_key,
            model,
            TokenizeInput::Prompt(&text),
            timeout,
        )
        .await?;
        if t.tokens.is_empty() {
            return Err(DiscoveryError::BadResponse {
                path: "/tokenize",
                message: "no token ids in the answer".into(),
            });
        }
        let mut cal = None;
        if chat {
            let n1 = 32usize;
            let n2 = 96usize;
            let a = words_text(n1);
            let b = words_text(n2);
            let ra = discovery::tokenize(
                client,
                base_url,
                api_key,
                model,
                TokenizeInput::ChatUser(&a),
                timeout,
            )
            .await;
            let rb = discovery::tokenize(
                client,
                base_url,
                api_key,
                model,
                TokenizeInput::ChatUser(&b),
                timeout,
            )
            .await;
            if let (Ok(ra), Ok(rb)) = (ra, rb) {
                let per_word = (f64::from(rb.count) - f64::from(ra.count)) / (n2 - n1) as f64;
                if per_word > 0.0 {
                    cal = Some(ChatCalibration {
                        overhead: (f64::from(ra.count) - per_word * n1 as f64).max(0.0),
                        per_word,
                    });
                }
            }
        }
        Ok(Self::with_vocab(t.tokens, cal))
    }

    /// Whether token-id prompts are available.
    pub fn has_vocab(&self) -> bool {
        !self.vocab.is_empty()
    }

    /// The chat calibration, if measured.
    pub fn chat_calibration(&self) -> Option<ChatCalibration> {
        self.chat
    }

    /// A prompt of `len` tokens for `endpoint`: the first `shared.len()` tokens are `shared`
    /// (a fixed prefix that the prefix cache may serve), the rest random.
    pub fn build(
        &self,
        rng: &mut impl Rng,
        endpoint: Endpoint,
        len: u32,
        shared: &SharedPrefix,
    ) -> Prompt {
        match endpoint {
            Endpoint::Completions if self.has_vocab() => {
                let len = len as usize;
                let mut ids = Vec::with_capacity(len);
                ids.extend(shared.ids.iter().take(len).copied());
                while ids.len() < len {
                    ids.push(self.vocab[rng.random_range(0..self.vocab.len())]);
                }
                Prompt::TokenIds(ids)
            }
            _ => {
                let words = match (endpoint, self.chat) {
                    (Endpoint::Chat, Some(c)) => ((f64::from(len) - c.overhead) / c.per_word)
                        .round()
                        .max(1.0) as usize,
                    _ => len.max(1) as usize,
                };
                let mut s = String::with_capacity(words * 8);
                let shared_words = shared.words.len().min(words);
                for w in &shared.words[..shared_words] {
                    s.push_str(w);
                    s.push(' ');
                }
                for _ in shared_words..words {
                    s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                    s.push(' ');
                }
                s.pop();
                Prompt::Text(s)
            }
        }
    }

    /// The prompt a workload source's [`Item`] describes, its random parts drawn from the
    /// item's seeds (the same item always renders the same prompt). Random lengths are capped
    /// at `max_tokens` (the prober's `max_model_len + 1`).
    pub fn render(&self, item: &Item, endpoint: Endpoint, max_tokens: u32) -> Prompt {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(item.seed);
        match &item.prompt {
            PromptSpec::Random { tokens } => self.build(
                &mut rng,
                endpoint,
                (*tokens).clamp(1, max_tokens.max(1)),
                &SharedPrefix::default(),
            ),
            PromptSpec::Prefixed {
                prefix_seed,
                prefix_tokens,
                tokens,
            } => {
                let shared = self.shared_prefix(*prefix_tokens, *prefix_seed);
                self.build(
                    &mut rng,
                    endpoint,
                    (*tokens).clamp(1, max_tokens.max(1)),
                    &shared,
                )
            }
            PromptSpec::Text(t) => Prompt::Text(t.to_string()),
            PromptSpec::Chat(parts) => Prompt::Messages(
                parts
                    .iter()
                    .map(|p| ChatMessage {
                        role: p.role.as_str(),
                        content: self.message_text(p.tokens, p.seed),
                    })
                    .collect(),
            ),
        }
    }

    /// Random words for one chat message of about `tokens` tokens (the calibrated tokens per
    /// word when known, else one word per token), drawn with `seed`.
    fn message_text(&self, tokens: u32, seed: u64) -> String {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let per_word = self.chat.map_or(1.0, |c| c.per_word);
        let words = (f64::from(tokens.max(1)) / per_word).round().max(1.0) as usize;
        let mut s = String::with_capacity(words * 8);
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        s
    }

    /// A fixed shared prefix of `len` tokens drawn with `seed` (the same on every call).
    pub fn shared_prefix(&self, len: u32, seed: u64) -> SharedPrefix {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let len = len as usize;
        let ids = if self.has_vocab() {
            (0..len)
                .map(|_| self.vocab[rng.random_range(0..self.vocab.len())])
                .collect()
        } else {
            Vec::new()
        };
        let words = (0..len)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        SharedPrefix { ids, words }
    }
}

/// A workload's fixed prompt prefix (empty: every prompt fully random).
#[derive(Debug, Clone, Default)]
pub struct SharedPrefix {
    ids: Vec<u32>,
    words: Vec<&'static str>,
}

fn words_text(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(i * 7) % WORDS.len()]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn token_prompts_are_exact_and_random() {
        let b = PromptBuilder::with_vocab((100..200).collect(), None);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let none = SharedPrefix::default();
        let Prompt::TokenIds(a) = b.build(&mut rng, Endpoint::Completions, 64, &none) else {
            panic!("expected token ids")
        };
        let Prompt::TokenIds(c) = b.build(&mut rng, Endpoint::Completions, 64, &none) else {
            panic!("expected token ids")
        };
        assert_eq!(a.len(), 64);
        assert!(a.iter().all(|t| (100..200).contains(t)));
        assert_ne!(a[..8], c[..8], "random prefixes must differ");
    }

    #[test]
    fn shared_prefix_is_shared() {
        let b = PromptBuilder::with_vocab((100..200).collect(), None);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let sp = b.shared_prefix(16, 7);
        let Prompt::TokenIds(a) = b.build(&mut rng, Endpoint::Completions, 32, &sp) else {
            panic!()
        };
        let Prompt::TokenIds(c) = b.build(&mut rng, Endpoint::Completions, 32, &sp) else {
            panic!()
        };
        assert_eq!(a[..16], c[..16]);
        assert_ne!(a[16..], c[16..]);
    }

    #[test]
    fn rendering_is_deterministic_and_prefixes_are_shared() {
        use crate::workload::{ChatPart, Role};
        let b = PromptBuilder::with_vocab((100..200).collect(), None);
        let item = |prompt, seed| Item {
            prompt,
            max_tokens: 4,
            model: None,
            turn: None,
            seed,
        };
        let pre = |seed| {
            item(
                PromptSpec::Prefixed {
                    prefix_seed: 9,
                    prefix_tokens: 8,
                    tokens: 24,
                },
                seed,
            )
        };
        let Prompt::TokenIds(a) = b.render(&pre(1), Endpoint::Completions, 1000) else {
            panic!()
        };
        let Prompt::TokenIds(a2) = b.render(&pre(1), Endpoint::Completions, 1000) else {
            panic!()
        };
        let Prompt::TokenIds(c) = b.render(&pre(2), Endpoint::Completions, 1000) else {
            panic!()
        };
        assert_eq!(a, a2, "same item, same prompt");
        assert_eq!(a.len(), 24);
        assert_eq!(a[..8], c[..8], "the group's prefix is shared");
        assert_ne!(a[8..], c[8..], "the suffix is not");
        let Prompt::TokenIds(capped) = b.render(
            &item(PromptSpec::Random { tokens: 500 }, 3),
            Endpoint::Completions,
            100,
        ) else {
            panic!()
        };
        assert_eq!(capped.len(), 100);
        let chat = item(
            PromptSpec::Chat(vec![
                ChatPart {
                    role: Role::User,
                    tokens: 5,
                    seed: 1,
                },
                ChatPart {
                    role: Role::Assistant,
                    tokens: 3,
                    seed: 2,
                },
            ]),
            0,
        );
        let Prompt::Messages(ms) = b.render(&chat, Endpoint::Chat, 1000) else {
            panic!()
        };
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[0].role, ms[1].role), ("user", "assistant"));
        assert_eq!(ms[0].content.split(' ').count(), 5);
        assert_eq!(ms[1].content.split(' ').count(), 3);
        let text = item(PromptSpec::Text("hello".into()), 0);
        assert_eq!(
            b.render(&text, Endpoint::Chat, 1000),
            Prompt::Text("hello".into())
        );
    }

    #[test]
    fn chat_text_uses_calibration() {
        let b = PromptBuilder::with_vocab(
            vec![1],
            Some(ChatCalibration {
                overhead: 10.0,
                per_word: 2.0,
            }),
        );
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let Prompt::Text(t) = b.build(&mut rng, Endpoint::Chat, 110, &SharedPrefix::default())
        else {
            panic!()
        };
        assert_eq!(t.split(' ').count(), 50);
        let u = PromptBuilder::uncalibrated();
        let Prompt::Text(t) = u.build(
            &mut rng,
            Endpoint::Completions,
            20,
            &SharedPrefix::default(),
        ) else {
            panic!()
        };
        assert_eq!(t.split(' ').count(), 20);
    }
}
