//! `multi-turn`: chat sessions of `turns` turns. Turn k sends every earlier message of the
//! session (user messages and the assistant's answers) and a new user message of
//! `prompt_tokens`; then the session's history grows by that message and an answer of
//! `max_tokens`. When a session has had all its turns, the next one starts empty.
//!
//! The assistant messages of the history are generated text of the answer's length, not the
//! server's actual answers: the sequence of requests depends only on the seed (the server's
//! prefix cache still serves every earlier message, which it has seen in the previous turn's
//! prompt; only the previous answer is new to it).

use rand::Rng;
use rand::rngs::SmallRng;

use super::{ChatPart, Item, PromptSpec, Role, SourceSettings};

/// One stream's current session.
#[derive(Debug, Clone, Default)]
pub struct Session {
    history: Vec<ChatPart>,
    turn: u32,
}

impl Session {
    /// The next turn (starting a new session after the last turn).
    pub(super) fn next(&mut self, s: &SourceSettings, rng: &mut SmallRng) -> Item {
        if self.turn >= s.turns.max(1) {
            self.history.clear();
            self.turn = 0;
        }
        self.turn += 1;
        self.history.push(ChatPart {
            role: Role::User,
            tokens: s.prompt_tokens.sample(rng),
            seed: rng.random(),
        });
        let prompt = PromptSpec::Chat(self.history.clone());
        self.history.push(ChatPart {
            role: Role::Assistant,
            tokens: s.max_tokens,
            seed: rng.random(),
        });
        Item {
            prompt,
            max_tokens: s.max_tokens,
            model: None,
            turn: Some(self.turn),
            seed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SourceKind, Workload};
    use super::*;
    use crate::config::Endpoint;
    use crate::config::prober::Length;

    #[test]
    fn history_grows_turn_by_turn_then_restarts() {
        let settings = SourceSettings {
            kind: SourceKind::MultiTurn,
            turns: 3,
            prompt_tokens: Length::Fixed(20),
            max_tokens: 7,
            endpoint: Endpoint::Chat,
            ..Default::default()
        };
        let w = Workload::load(&settings, 0).unwrap();
        let mut src = w.source(5);
        let items: Vec<Item> = (0..7).map(|_| src.next_item()).collect();
        let turns: Vec<u32> = items.iter().map(|i| i.turn.unwrap()).collect();
        assert_eq!(turns, vec![1, 2, 3, 1, 2, 3, 1]);
        let chats: Vec<&Vec<ChatPart>> = items
            .iter()
            .map(|i| match &i.prompt {
                PromptSpec::Chat(c) => c,
                p => panic!("{p:?}"),
            })
            .collect();
        for (k, c) in chats.iter().enumerate().take(3) {
            assert_eq!(c.len(), 2 * k + 1, "turn {} has the whole history", k + 1);
            assert_eq!(c.last().unwrap().role, Role::User);
            for (j, part) in c.iter().enumerate() {
                let (role, tokens) = if j % 2 == 0 {
                    (Role::User, 20)
                } else {
                    (Role::Assistant, 7)
                };
                assert_eq!((part.role, part.tokens), (role, tokens));
            }
        }
        assert_eq!(
            chats[1][..1],
            chats[0][..],
            "turn 2 starts with turn 1's message"
        );
        assert_eq!(chats[2][..3], chats[1][..], "turn 3 repeats all of turn 2");
        assert_eq!(chats[3].len(), 1, "a new session starts empty");
        assert_ne!(chats[3][0], chats[0][0], "with a new first message");
        assert!(items.iter().all(|i| i.max_tokens == 7));
    }
}
