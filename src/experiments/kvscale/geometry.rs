//! The arithmetic of the KV cache: ladders, blocks per sequence, capacity, grid shapes.

use crate::experiments::engine::CacheConfig;

/// The default ladder for a server of context `m` and requests of `out` output tokens.
pub fn default_ladder(m: u32, out: u32) -> Vec<u32> {
    let mut v = Vec::new();
    let fit = m.saturating_sub(out);
    let mut p = 64u32;
    while p < fit {
        v.push(p);
        p = p.saturating_mul(2);
    }
    v.extend([
        fit,
        m.saturating_sub(out / 2),
        m.saturating_sub(1),
        m,
        m.saturating_add(1),
        m.saturating_mul(2),
    ]);
    v.retain(|x| *x >= 1);
    v.sort_unstable();
    v.dedup();
    v
}

/// KV blocks a sequence of `tokens` tokens holds.
pub fn blocks_for(tokens: u64, block_size: u64) -> u64 {
    if block_size == 0 {
        0
    } else {
        tokens.div_ceil(block_size)
    }
}

/// KV blocks a sequence of `tokens` tokens (prompt + output) holds at its end: the last output
/// token is sampled but never written to the cache, so `ceil((tokens − 1) / block_size)`.
pub fn blocks_per_sequence(tokens: u64, block_size: u64) -> u64 {
    blocks_for(tokens.saturating_sub(1).max(1), block_size)
}

/// Sequences of `tokens` tokens (prompt + output) the cache holds at once:
/// `floor((num_gpu_blocks − 1) / blocks_per_sequence)` (one block is vLLM's null block).
pub fn capacity(cache: &CacheConfig, tokens: u64) -> u64 {
    match blocks_per_sequence(tokens, cache.block_size) {
        0 => 0,
        b => cache.usable_blocks() / b,
    }
}

/// Concurrencies to try for a computed capacity: around it, so the edge is observed.
pub fn grid_concurrencies(cap: Option<u64>, max: u32) -> Vec<u32> {
    let mut v: Vec<u32> = match cap {
        Some(0) => vec![1, 2],
        Some(c) => {
            let c = c.min(u64::from(u32::MAX / 2)) as u32;
            vec![1, c / 2, c, c + 1, c * 2]
        }
        None => (0..16).map(|i| 1u32 << i).collect(),
    };
    v.retain(|x| *x >= 1 && *x <= max);
    v.sort_unstable();
    v.dedup();
    v
}

/// Default grid lengths: `m/8, m/4, m/2, m`, whole blocks, at least one block.
pub fn default_grid_contexts(m: u32, block_size: Option<u64>) -> Vec<u32> {
    let bs = block_size.unwrap_or(1).clamp(1, u64::from(u32::MAX)) as u32;
    let mut v: Vec<u32> = [m / 8, m / 4, m / 2, m]
        .iter()
        .map(|x| ((x / bs) * bs).max(bs).min(m))
        .filter(|x| *x >= 2)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Prompt and output tokens of a grid row of sequences of `ctx` tokens: with the cache's
/// geometry, a prompt of `(B − 1) · block_size + 1` tokens so that each sequence holds exactly
/// `B = ceil((ctx − 1) / block_size)` blocks from its prefill to its end; else (or with
/// `--grid-max-tokens`) a quarter of the length as output.
pub fn grid_shape(ctx: u32, block_size: Option<u64>, max_tokens: Option<u32>) -> (u32, u32) {
    if let (Some(bs), None) = (block_size, max_tokens)
        && bs >= 1
        && ctx >= 2
    {
        let b = blocks_per_sequence(u64::from(ctx), bs);
        let prompt = (b.saturating_sub(1) * bs + 1).min(u64::from(ctx - 1)) as u32;
        return (prompt, ctx - prompt);
    }
    let out = max_tokens
        .unwrap_or((ctx / 4).max(1))
        .clamp(1, ctx.saturating_sub(1).max(1));
    (ctx.saturating_sub(out).max(1), out)
}
