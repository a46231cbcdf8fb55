//! The simulator's deterministic tokenizer and pseudo-word generator.
//!
//! Tokenizer rule (documented in `docs/sim.md`): the text is split on Unicode whitespace; each
//! word of `n` bytes counts as `ceil(n / 8)` tokens (so one token per ordinary word). A token's
//! id is an FNV-1a hash of its bytes modulo [`VOCAB_SIZE`], so a repeated prefix gives repeated
//! ids (which the prefix cache can hit). Chat requests add a fixed template overhead:
//! [`CHAT_TOKENS_PER_MESSAGE`] per message plus [`CHAT_TOKENS_GENERATION_PROMPT`] once, which
//! makes a one-message chat 11 tokens longer than its content, as the real ChatML template was
//! for the captured model. A completions text prompt (and `/tokenize` of a prompt) starts with
//! one BOS token.

/// Size of the simulated vocabulary; token ids are `0..VOCAB_SIZE`.
pub const VOCAB_SIZE: u32 = 8192;
/// Bytes per token within one long word.
pub const BYTES_PER_TOKEN: usize = 8;
/// Template tokens added per chat message (`<|im_start|>`, role, newline, `<|im_end|>`, newline).
pub const CHAT_TOKENS_PER_MESSAGE: u32 = 5;
/// Template tokens added once per chat request (the generation prompt and a system preamble).
pub const CHAT_TOKENS_GENERATION_PROMPT: u32 = 6;

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Token ids of `text`, at most `limit` of them (tokenization stops early, as vLLM's truncation
/// at `max_model_len + 1` does).
pub fn encode(text: &str, limit: usize, out: &mut Vec<u32>) {
    for word in text.split_whitespace() {
        for piece in word.as_bytes().chunks(BYTES_PER_TOKEN) {
            if out.len() >= limit {
                return;
            }
            out.push((fnv1a(piece, 0) % u64::from(VOCAB_SIZE)) as u32);
        }
    }
}

/// Number of tokens of `text` (no limit).
pub fn count(text: &str) -> usize {
    text.split_whitespace()
        .map(|w| w.len().div_ceil(BYTES_PER_TOKEN))
        .sum()
}

/// Id of the BOS token that starts a completions text prompt (the captured model's tokenizer
/// added one: 1990 words of "the license …" were 1991 prompt tokens on `/v1/completions`).
pub const BOS_TOKEN: u32 = VOCAB_SIZE - 2;

/// Token ids of a completions text prompt: BOS, then [`encode`]; at most `limit` ids.
pub fn encode_prompt(text: &str, limit: usize, out: &mut Vec<u32>) {
    if limit > out.len() {
        out.push(BOS_TOKEN);
    }
    encode(text, limit, out);
}

/// Id used for the chat template's special tokens.
pub const TEMPLATE_TOKEN: u32 = VOCAB_SIZE - 1;

/// Token ids of a chat prompt: the template around each message's text, then the generation
/// prompt; at most `limit` ids.
pub fn encode_chat<'a>(texts: impl IntoIterator<Item = &'a str>, limit: usize, out: &mut Vec<u32>) {
    for t in texts {
        out.extend(std::iter::repeat_n(
            TEMPLATE_TOKEN,
            CHAT_TOKENS_PER_MESSAGE as usize,
        ));
        encode(t, limit, out);
    }
    out.extend(std::iter::repeat_n(
        TEMPLATE_TOKEN,
        CHAT_TOKENS_GENERATION_PROMPT as usize,
    ));
    out.truncate(limit);
}

const WORDS: &[&str] = &[
    "the", "engine", "cache", "block", "token", "stream", "model", "batch", "queue", "prefix",
    "kernel", "memory", "tensor", "layer", "head", "attend", "sample", "decode", "prefill",
    "latency", "server", "request", "signal", "vector", "matrix", "weight", "bias", "state",
    "graph", "node", "edge", "value", "field", "index", "shard", "page", "slot", "frame", "lane",
    "warp", "grid", "core", "clock", "cycle", "phase", "step", "score", "logit", "norm", "scale",
    "shift", "mask", "window", "chunk", "budget", "limit", "spare", "pool", "heap", "list", "map",
    "set", "key", "hash",
];

/// splitmix64: a tiny, well-mixed deterministic generator step.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The text of generated token `index` of the request with `stream_seed`: a leading space and a
/// pseudo-word (one token of the tokenizer above).
pub fn word(stream_seed: u64, index: u32) -> &'static str {
    let h = mix64(stream_seed ^ (u64::from(index) << 32 | u64::from(index)));
    WORDS[(h % WORDS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_per_short_word_and_long_words_split() {
        let mut ids = Vec::new();
        encode("the license  the\nlicense", usize::MAX, &mut ids);
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[0], ids[2]);
        assert_eq!(ids[1], ids[3]);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(count("abcdefghi"), 2);
        assert_eq!(count("  "), 0);
        assert_eq!(count("the license the license"), 4);
    }

    #[test]
    fn encode_stops_at_limit() {
        let mut ids = Vec::new();
        encode(&"w ".repeat(100), 11, &mut ids);
        assert_eq!(ids.len(), 11);
        assert!(ids.iter().all(|&i| i < VOCAB_SIZE));
    }

    #[test]
    fn words_are_deterministic_and_single_tokens() {
        for i in 0..100 {
            assert_eq!(word(7, i), word(7, i));
            assert_eq!(count(word(7, i)), 1);
        }
        let a: Vec<_> = (0..20).map(|i| word(1, i)).collect();
        let b: Vec<_> = (0..20).map(|i| word(2, i)).collect();
        assert_ne!(a, b);
    }
}
