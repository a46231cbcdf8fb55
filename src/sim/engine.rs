//! The simulated inference engine: pure scheduling logic, no I/O, no clocks of its own.
//!
//! It follows vLLM v1's scheduler in outline: continuous batching in discrete steps, a token
//! budget per step (`max_num_batched_tokens`, chunked prefill), at most `max_num_seqs` running
//! sequences, a FIFO waiting queue, a pool of KV blocks of `block_size` tokens that fill as
//! contexts grow and free when a request ends, preemption by recompute (the newest running
//! sequence loses its blocks and goes back to the front of the waiting queue) when a running
//! sequence needs a block and none is free, and prefix caching by chained hashes of full prompt
//! blocks (hits and queries counted in tokens; freed blocks stay reusable until evicted). As in
//! vLLM, a preemption shows in `num_preemptions` only when the request produces its next token.
//!
//! The caller drives it: [`Engine::schedule`] plans one step at time `now_ns` and returns how
//! long that step takes (`step_base + prefill_per_token × prefilled + decode_per_seq × decoded`);
//! after that time the caller calls [`Engine::finish_step`] with the end time and gets the tokens
//! produced. Tests drive it with a simulated clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::metrics::Histogram;

/// Engine sizing and timing.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks in the pool (one is reserved, as vLLM's null block).
    pub num_gpu_blocks: u32,
    /// Most sequences running at once.
    pub max_num_seqs: u32,
    /// Token budget of one step (prefill chunks + decodes).
    pub max_num_batched_tokens: u32,
    /// Reuse KV blocks of identical prompt prefixes.
    pub enable_prefix_caching: bool,
    /// Fixed cost of a step.
    pub step_base: Duration,
    /// Cost per prompt token prefilled in a step.
    pub prefill_per_token: Duration,
    /// Cost per sequence decoded in a step.
    pub decode_per_seq: Duration,
    /// `max_model_len`, for the request-size histogram buckets.
    pub max_model_len: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_gpu_blocks: 1024,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            enable_prefix_caching: true,
            step_base: Duration::from_millis(2),
            prefill_per_token: Duration::from_micros(20),
            decode_per_seq: Duration::from_micros(100),
            max_model_len: 2048,
        }
    }
}

/// A request handed to the engine (already validated and clamped).
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Caller's id (unique while the request lives).
    pub id: u64,
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (≥ 1).
    pub max_tokens: u32,
    /// Generate this many tokens and finish with `stop` (an EOS), if fewer than `max_tokens`.
    pub stop_after: Option<u32>,
    /// Arrival time, ns on the caller's clock.
    pub arrival_ns: u64,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS token.
    Stop,
    /// `max_tokens` (or the context limit) reached.
    Length,
}

impl FinishReason {
    /// The OpenAI/vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// The request.
    pub id: u64,
    /// 0-based index of the token within the request's output.
    pub index: u32,
    /// Set on the request's last token.
    pub finished: Option<FinishReason>,
}

/// Counters and histograms, as vLLM's `/metrics` exposes them.
#[derive(Debug, Clone)]
pub struct EngineStats {
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    pub prompt_tokens: u64,
    pub prompt_tokens_local_compute: u64,
    pub prompt_tokens_cache_hit: u64,
    pub generation_tokens: u64,
    pub success_stop: u64,
    pub success_length: u64,
    pub admission_rejections: u64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub inference_time: Histogram,
    pub prefill_time: Histogram,
    pub decode_time: Histogram,
    pub prompt_tokens_hist: Histogram,
    pub generation_tokens_hist: Histogram,
    pub max_num_generation_tokens: Histogram,
    pub params_n: Histogram,
    pub params_max_tokens: Histogram,
    pub prefill_kv_computed: Histogram,
    pub num_preemptions_hist: Histogram,
    pub iteration_tokens: Histogram,
    /// Steps run so far.
    pub steps: u64,
}

impl EngineStats {
    fn new(max_model_len: u32) -> Self {
        use super::metrics::buckets;
        let tokens = buckets::request_tokens(max_model_len);
        Self {
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            num_preemptions: 0,
            prompt_tokens: 0,
            prompt_tokens_local_compute: 0,
            prompt_tokens_cache_hit: 0,
            generation_tokens: 0,
            success_stop: 0,
            success_length: 0,
            admission_rejections: 0,
            ttft: Histogram::new(buckets::TTFT.to_vec()),
            itl: Histogram::new(buckets::ITL.to_vec()),
            tpot: Histogram::new(buckets::ITL.to_vec()),
            e2e: Histogram::new(buckets::REQUEST_LATENCY.to_vec()),
            queue_time: Histogram::new(buckets::REQUEST_LATENCY.to_vec()),
            inference_time: Histogram::new(buckets::REQUEST_LATENCY.to_vec()),
            prefill_time: Histogram::new(buckets::REQUEST_LATENCY.to_vec()),
            decode_time: Histogram::new(buckets::REQUEST_LATENCY.to_vec()),
            prompt_tokens_hist: Histogram::new(tokens.clone()),
            generation_tokens_hist: Histogram::new(tokens.clone()),
            max_num_generation_tokens: Histogram::new(tokens.clone()),
            params_n: Histogram::new(buckets::PARAMS_N.to_vec()),
            params_max_tokens: Histogram::new(tokens.clone()),
            prefill_kv_computed: Histogram::new(tokens),
            num_preemptions_hist: Histogram::new(buckets::NUM_PREEMPTIONS.to_vec()),
            iteration_tokens: Histogram::new(buckets::ITERATION_TOKENS.to_vec()),
            steps: 0,
        }
    }
}

/// The KV block pool with a prefix cache.
#[derive(Debug)]
struct BlockPool {
    ref_cnt: Vec<u32>,
    hash: Vec<Option<u64>>,
    generation: Vec<u32>,
    /// Blocks with no references, oldest first (entries whose generation moved on are stale).
    free: VecDeque<(u32, u32)>,
    cached: HashMap<u64, u32>,
    used: u32,
}

impl BlockPool {
    fn new(n: u32) -> Self {
        Self {
            ref_cnt: vec![0; n as usize],
            hash: vec![None; n as usize],
            generation: vec![0; n as usize],
            free: (0..n).map(|b| (b, 0)).collect(),
            cached: HashMap::new(),
            used: 0,
        }
    }

    fn capacity(&self) -> u32 {
        self.ref_cnt.len() as u32
    }

    fn num_free(&self) -> u32 {
        self.capacity() - self.used
    }

    fn allocate(&mut self) -> Option<u32> {
        while let Some((b, generation)) = self.free.pop_front() {
            let i = b as usize;
            if self.generation[i] != generation || self.ref_cnt[i] != 0 {
                continue;
            }
            if let Some(h) = self.hash[i].take()
                && self.cached.get(&h) == Some(&b)
            {
                self.cached.remove(&h);
            }
            self.ref_cnt[i] = 1;
            self.generation[i] = self.generation[i].wrapping_add(1);
            self.used += 1;
            return Some(b);
        }
        None
    }

    fn touch(&mut self, b: u32) {
        let i = b as usize;
        if self.ref_cnt[i] == 0 {
            self.used += 1;
            self.generation[i] = self.generation[i].wrapping_add(1);
        }
        self.ref_cnt[i] += 1;
    }

    fn release(&mut self, b: u32) {
        let i = b as usize;
        if self.ref_cnt[i] == 0 {
            return;
        }
        self.ref_cnt[i] -= 1;
        if self.ref_cnt[i] == 0 {
            self.used -= 1;
            self.generation[i] = self.generation[i].wrapping_add(1);
            self.free.push_back((b, self.generation[i]));
        }
    }

    fn register(&mut self, b: u32, h: u64) {
        if self.hash[b as usize].is_none() {
            self.hash[b as usize] = Some(h);
            self.cached.entry(h).or_insert(b);
        }
    }
}

#[derive(Debug)]
struct Seq {
    req: EngineRequest,
    /// Chained hashes of the prompt's full blocks.
    block_hashes: Vec<u64>,
    blocks: Vec<u32>,
    num_computed: u32,
    generated: u32,
    scheduled: u32,
    first_scheduled_ns: Option<u64>,
    first_token_ns: Option<u64>,
    last_token_ns: u64,
    preemptions: u32,
    /// Preemptions not yet reported (vLLM reports one with the request's next output).
    unreported_preemptions: u32,
    prefill_kv_computed: u32,
    cached_tokens: u32,
}

impl Seq {
    fn total_len(&self) -> u32 {
        self.req.prompt.len() as u32 + self.generated
    }
    fn target(&self) -> u32 {
        match self.req.stop_after {
            Some(s) if s < self.req.max_tokens => s.max(1),
            _ => self.req.max_tokens,
        }
    }
}

/// What [`Engine::schedule`] planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// How long the step takes.
    pub duration: Duration,
    /// Prompt tokens computed in this step.
    pub prefill_tokens: u32,
    /// Sequences decoding one token in this step.
    pub decode_seqs: u32,
    /// Sequences preempted while planning.
    pub preempted: u32,
}

impl StepPlan {
    /// True when nothing was scheduled (the engine is idle).
    pub fn is_empty(&self) -> bool {
        self.prefill_tokens == 0 && self.decode_seqs == 0
    }
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    pool: BlockPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    stats: EngineStats,
}

fn hash_block(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = super::tokenizer::mix64(parent);
    for t in tokens {
        h = super::tokenizer::mix64(h ^ u64::from(*t));
    }
    h
}

impl Engine {
    /// A new, idle engine.
    pub fn new(mut cfg: EngineConfig) -> Self {
        cfg.block_size = cfg.block_size.max(1);
        cfg.num_gpu_blocks = cfg.num_gpu_blocks.max(2);
        cfg.max_num_seqs = cfg.max_num_seqs.max(1);
        cfg.max_num_batched_tokens = cfg.max_num_batched_tokens.max(1);
        let pool = BlockPool::new(cfg.num_gpu_blocks - 1);
        let stats = EngineStats::new(cfg.max_model_len);
        Self {
            cfg,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Queues a request.
    pub fn add(&mut self, req: EngineRequest) {
        let bs = self.cfg.block_size as usize;
        let mut block_hashes = Vec::with_capacity(req.prompt.len() / bs);
        let mut parent = 0u64;
        for chunk in req.prompt.chunks_exact(bs) {
            parent = hash_block(parent, chunk);
            block_hashes.push(parent);
        }
        self.waiting.push_back(Seq {
            last_token_ns: req.arrival_ns,
            req,
            block_hashes,
            blocks: Vec::new(),
            num_computed: 0,
            generated: 0,
            scheduled: 0,
            first_scheduled_ns: None,
            first_token_ns: None,
            preemptions: 0,
            unreported_preemptions: 0,
            prefill_kv_computed: 0,
            cached_tokens: 0,
        });
    }

    /// Counts a request refused by the queue limit.
    pub fn count_rejection(&mut self) {
        self.stats.admission_rejections += 1;
    }

    /// Drops a request (client gone); frees its blocks. Not counted as finished, like vLLM.
    pub fn abort(&mut self, id: u64) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.req.id == id) {
            let seq = self.running.remove(i);
            self.free_seq(&seq);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.req.id == id) {
            if let Some(seq) = self.waiting.remove(i) {
                self.free_seq(&seq);
            }
            return true;
        }
        false
    }

    fn free_seq(&mut self, seq: &Seq) {
        for &b in seq.blocks.iter().rev() {
            self.pool.release(b);
        }
    }

    /// Requests running (scheduled in the batch).
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True when no request is queued or running.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Blocks in use.
    pub fn used_blocks(&self) -> u32 {
        self.pool.used
    }

    /// KV-cache usage, 0–1 (used blocks over `num_gpu_blocks - 1`, as vLLM reports it).
    pub fn kv_usage(&self) -> f64 {
        f64::from(self.pool.used) / f64::from(self.pool.capacity())
    }

    /// Counters and histograms.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.cfg.block_size)
    }

    /// Preempts the newest running sequence; returns false when none is left.
    fn preempt_last(&mut self) -> bool {
        let Some(mut seq) = self.running.pop() else {
            return false;
        };
        self.free_seq(&seq);
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.scheduled = 0;
        seq.preemptions += 1;
        seq.unreported_preemptions += 1;
        self.waiting.push_front(seq);
        true
    }

    /// Plans one step at `now_ns`: picks the batch, allocates blocks, preempts when they run out.
    pub fn schedule(&mut self, now_ns: u64) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        self.schedule_running(&mut plan, &mut budget);
        self.admit_waiting(&mut plan, &mut budget, now_ns);
        let c = &self.cfg;
        plan.duration = c.step_base
            + c.prefill_per_token * plan.prefill_tokens
            + c.decode_per_seq * plan.decode_seqs;
        if plan.is_empty() {
            plan.duration = Duration::ZERO;
        }
        plan
    }

    /// Running sequences first, in arrival order: each gets the tokens it needs within the
    /// budget, preempting the newest when blocks run out.
    fn schedule_running(&mut self, plan: &mut StepPlan, budget: &mut u32) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let (need, have) = {
                let s = &self.running[i];
                (s.total_len() - s.num_computed, s.blocks.len() as u32)
            };
            let n = need.min(*budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let want = self.blocks_for(self.running[i].num_computed + n);
            let extra = want.saturating_sub(have);
            let mut ok = true;
            while self.pool.num_free() < extra {
                // Preempt the newest; if that is this sequence itself, stop here.
                let last = self.running.len() - 1;
                self.preempt_last();
                plan.preempted += 1;
                if last == i {
                    ok = false;
                    break;
                }
            }
            if !ok {
                break;
            }
            for _ in 0..extra {
                if let Some(b) = self.pool.allocate() {
                    self.running[i].blocks.push(b);
                }
            }
            let s = &mut self.running[i];
            if s.generated > 0 && need == 1 && s.num_computed + 1 == s.total_len() {
                plan.decode_seqs += 1;
            } else {
                plan.prefill_tokens += n;
            }
            s.scheduled = n;
            s.num_computed += n;
            *budget -= n;
            i += 1;
        }
    }

    /// Then waiting ones, unless this step had to preempt: admitted in arrival order while the
    /// budget, `max_num_seqs` and free blocks allow, reusing cached prefix blocks.
    fn admit_waiting(&mut self, plan: &mut StepPlan, budget: &mut u32, now_ns: u64) {
        let bs = self.cfg.block_size;
        while plan.preempted == 0
            && *budget > 0
            && (self.running.len() as u32) < self.cfg.max_num_seqs
            && !self.waiting.is_empty()
        {
            let (hit_blocks, hit_ref0, total) = {
                let s = &self.waiting[0];
                let total = s.total_len();
                let mut hits = Vec::new();
                if self.cfg.enable_prefix_caching {
                    let max_hit_blocks = ((total - 1) / bs) as usize;
                    for h in s.block_hashes.iter().take(max_hit_blocks) {
                        match self.pool.cached.get(h) {
                            Some(&b) => hits.push(b),
                            None => break,
                        }
                    }
                }
                let ref0 = hits
                    .iter()
                    .filter(|&&b| self.pool.ref_cnt[b as usize] == 0)
                    .count() as u32;
                (hits, ref0, total)
            };
            let hit_tokens = hit_blocks.len() as u32 * bs;
            let n = (total - hit_tokens).min(*budget);
            let want = self.blocks_for(hit_tokens + n);
            let extra = want - hit_blocks.len() as u32;
            if self.pool.num_free() < extra + hit_ref0 {
                break;
            }
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            for &b in &hit_blocks {
                self.pool.touch(b);
            }
            s.blocks = hit_blocks;
            for _ in 0..extra {
                if let Some(b) = self.pool.allocate() {
                    s.blocks.push(b);
                }
            }
            self.stats.prefix_cache_queries += u64::from(total);
            self.stats.prefix_cache_hits += u64::from(hit_tokens);
            if s.first_scheduled_ns.is_none() {
                s.first_scheduled_ns = Some(now_ns);
                s.cached_tokens = hit_tokens;
            }
            s.num_computed = hit_tokens + n;
            s.prefill_kv_computed += n;
            s.scheduled = n;
            plan.prefill_tokens += n;
            *budget -= n;
            self.running.push(s);
        }
    }

    /// Ends the step planned last at `end_ns`: samples a token for every sequence whose context
    /// is fully computed, finishes those that reached their length, frees their blocks.
    pub fn finish_step(&mut self, plan: &StepPlan, end_ns: u64, out: &mut Vec<Output>) {
        if plan.is_empty() {
            return;
        }
        self.stats.steps += 1;
        self.stats
            .iteration_tokens
            .observe(f64::from(plan.prefill_tokens + plan.decode_seqs));
        let bs = self.cfg.block_size as usize;
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            if s.scheduled == 0 {
                i += 1;
                continue;
            }
            s.scheduled = 0;
            // Register newly filled prompt blocks in the prefix cache.
            if self.cfg.enable_prefix_caching {
                let full = (s.num_computed as usize / bs).min(s.block_hashes.len());
                for k in 0..full.min(s.blocks.len()) {
                    self.pool.register(s.blocks[k], s.block_hashes[k]);
                }
            }
            if s.num_computed < s.total_len() {
                i += 1;
                continue; // a prefill chunk, no token yet
            }
            let index = s.generated;
            s.generated += 1;
            self.stats.num_preemptions += u64::from(std::mem::take(&mut s.unreported_preemptions));
            self.stats.generation_tokens += 1;
            let sec = |ns: u64| ns as f64 / 1e9;
            if s.first_token_ns.is_none() {
                s.first_token_ns = Some(end_ns);
                let p = s.req.prompt.len() as u64;
                self.stats.prompt_tokens += p;
                let cached = u64::from(s.cached_tokens).min(p);
                self.stats.prompt_tokens_cache_hit += cached;
                self.stats.prompt_tokens_local_compute += p - cached;
                self.stats
                    .ttft
                    .observe(sec(end_ns.saturating_sub(s.req.arrival_ns)));
            } else {
                self.stats
                    .itl
                    .observe(sec(end_ns.saturating_sub(s.last_token_ns)));
            }
            s.last_token_ns = end_ns;
            let target = s.target();
            let finished = if s.generated >= target {
                Some(if s.req.stop_after.is_some_and(|a| a < s.req.max_tokens) {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                })
            } else {
                None
            };
            out.push(Output {
                id: s.req.id,
                index,
                finished,
            });
            if let Some(reason) = finished {
                let seq = self.running.remove(i);
                self.free_seq(&seq);
                self.record_finish(&seq, reason, end_ns);
                continue;
            }
            i += 1;
        }
    }

    fn record_finish(&mut self, s: &Seq, reason: FinishReason, end_ns: u64) {
        let st = &mut self.stats;
        let sec = |ns: u64| ns as f64 / 1e9;
        match reason {
            FinishReason::Stop => st.success_stop += 1,
            FinishReason::Length => st.success_length += 1,
        }
        let first_sched = s.first_scheduled_ns.unwrap_or(s.req.arrival_ns);
        let first_tok = s.first_token_ns.unwrap_or(end_ns);
        st.e2e.observe(sec(end_ns.saturating_sub(s.req.arrival_ns)));
        st.queue_time
            .observe(sec(first_sched.saturating_sub(s.req.arrival_ns)));
        st.inference_time
            .observe(sec(end_ns.saturating_sub(first_sched)));
        st.prefill_time
            .observe(sec(first_tok.saturating_sub(first_sched)));
        let decode = end_ns.saturating_sub(first_tok);
        st.decode_time.observe(sec(decode));
        let tpot = if s.generated > 1 {
            sec(decode) / f64::from(s.generated - 1)
        } else {
            0.0
        };
        st.tpot.observe(tpot);
        st.prompt_tokens_hist.observe(s.req.prompt.len() as f64);
        st.generation_tokens_hist.observe(f64::from(s.generated));
        st.max_num_generation_tokens
            .observe(f64::from(s.req.max_tokens));
        st.params_n.observe(1.0);
        st.params_max_tokens.observe(f64::from(s.req.max_tokens));
        st.prefill_kv_computed
            .observe(f64::from(s.prefill_kv_computed));
        st.num_preemptions_hist.observe(f64::from(s.preemptions));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EngineConfig {
        EngineConfig {
            block_size: 4,
            num_gpu_blocks: 65,
            max_num_seqs: 4,
            max_num_batched_tokens: 64,
            enable_prefix_caching: true,
            step_base: Duration::from_millis(1),
            prefill_per_token: Duration::from_micros(10),
            decode_per_seq: Duration::from_micros(100),
            max_model_len: 256,
        }
    }

    fn req(id: u64, prompt_len: u32, max_tokens: u32, salt: u32) -> EngineRequest {
        EngineRequest {
            id,
            prompt: (0..prompt_len).map(|t| t * 7 + salt).collect(),
            max_tokens,
            stop_after: None,
            arrival_ns: 0,
        }
    }

    /// Runs until idle; returns the outputs and the end time.
    fn run(e: &mut Engine, mut now: u64, mut each: impl FnMut(&Engine)) -> (Vec<Output>, u64) {
        let mut all = Vec::new();
        for _ in 0..100_000 {
            if e.is_idle() {
                break;
            }
            let plan = e.schedule(now);
            assert!(!plan.is_empty(), "engine stuck");
            now += plan.duration.as_nanos() as u64;
            e.finish_step(&plan, now, &mut all);
            each(e);
        }
        (all, now)
    }

    #[test]
    fn single_request_generates_max_tokens_then_frees_blocks() {
        let mut e = Engine::new(cfg());
        e.add(req(1, 10, 5, 0));
        let mut peak = 0;
        let (out, _) = run(&mut e, 0, |e| peak = peak.max(e.used_blocks()));
        assert_eq!(out.len(), 5);
        assert_eq!(
            out.iter().map(|o| o.index).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(out[4].finished, Some(FinishReason::Length));
        assert!(out[..4].iter().all(|o| o.finished.is_none()));
        assert_eq!(peak, 4, "15 tokens of context need 4 blocks of 4"); // 10 + 4 computed
        assert_eq!(e.used_blocks(), 0);
        assert_eq!(e.kv_usage(), 0.0);
        let st = e.stats();
        assert_eq!(st.generation_tokens, 5);
        assert_eq!(st.prompt_tokens, 10);
        assert_eq!(st.success_length, 1);
        assert_eq!(st.ttft.count(), 1);
        assert_eq!(st.itl.count(), 4);
        assert_eq!(st.e2e.count(), 1);
    }

    #[test]
    fn stop_after_finishes_with_stop() {
        let mut e = Engine::new(cfg());
        let mut r = req(1, 4, 50, 0);
        r.stop_after = Some(3);
        e.add(r);
        let (out, _) = run(&mut e, 0, |_| {});
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].finished, Some(FinishReason::Stop));
        assert_eq!(e.stats().success_stop, 1);
    }

    #[test]
    fn queueing_when_concurrency_exceeds_max_num_seqs() {
        let mut e = Engine::new(cfg());
        for id in 0..10 {
            e.add(req(id, 8, 20, id as u32 * 1000));
        }
        let plan = e.schedule(0);
        assert_eq!(e.num_running(), 4);
        assert_eq!(e.num_waiting(), 6);
        let mut out = Vec::new();
        e.finish_step(&plan, plan.duration.as_nanos() as u64, &mut out);
        let mut max_wait = 0;
        let (rest, _) = run(&mut e, plan.duration.as_nanos() as u64, |e| {
            assert!(e.num_running() <= 4);
            max_wait = max_wait.max(e.num_waiting());
        });
        assert_eq!(out.len() + rest.len(), 200);
        let st = e.stats();
        assert_eq!(st.queue_time.count(), 10);
        // The last requests waited for earlier ones: queue time sum is positive.
        assert!(st.queue_time.sum() > 0.0);
        assert_eq!(e.num_waiting(), 0);
    }

    #[test]
    fn kv_usage_grows_with_context_and_returns_to_zero() {
        let mut e = Engine::new(cfg());
        e.add(req(1, 4, 40, 0));
        let mut usages = Vec::new();
        run(&mut e, 0, |e| usages.push(e.kv_usage()));
        assert!(usages.windows(2).take(38).all(|w| w[1] >= w[0]));
        let max = usages.iter().cloned().fold(0.0, f64::max);
        assert!((max - 11.0 / 64.0).abs() < 1e-9, "max {max}"); // 43 tokens -> 11 blocks
        assert_eq!(*usages.last().unwrap(), 0.0);
    }

    #[test]
    fn preemption_when_blocks_run_out() {
        let mut c = cfg();
        c.num_gpu_blocks = 17; // 16 usable blocks = 64 tokens
        let mut e = Engine::new(c);
        for id in 0..4 {
            e.add(req(id, 8, 24, id as u32 * 1000)); // 32 tokens each at the end: 128 > 64
        }
        let mut saw_waiting_with_running = false;
        let mut saw_lag = false;
        let (out, _) = run(&mut e, 0, |e| {
            if e.num_waiting() > 0 && e.num_running() > 0 {
                saw_waiting_with_running = true;
            }
            // a preempted request is waiting but its preemption is not reported yet
            if e.num_waiting() > 0 && e.stats().num_preemptions == 0 {
                saw_lag = true;
            }
            assert!(e.used_blocks() <= 16);
        });
        assert!(saw_lag);
        assert!(e.stats().num_preemptions > 0);
        assert!(saw_waiting_with_running);
        // Every request still completes all its tokens, in order.
        for id in 0..4 {
            let idx: Vec<u32> = out.iter().filter(|o| o.id == id).map(|o| o.index).collect();
            assert_eq!(idx, (0..24).collect::<Vec<_>>());
        }
        assert_eq!(e.used_blocks(), 0);
        assert!(e.stats().num_preemptions_hist.sum() > 0.0);
    }

    #[test]
    fn chunked_prefill_respects_budget() {
        let mut c = cfg();
        c.max_num_batched_tokens = 16;
        let mut e = Engine::new(c);
        e.add(req(1, 40, 2, 0));
        let p1 = e.schedule(0);
        assert_eq!(p1.prefill_tokens, 16);
        let mut out = Vec::new();
        e.finish_step(&p1, 1, &mut out);
        assert!(out.is_empty(), "no token before the prompt is computed");
        let p2 = e.schedule(1);
        assert_eq!(p2.prefill_tokens, 16);
        e.finish_step(&p2, 2, &mut out);
        let p3 = e.schedule(2);
        assert_eq!(p3.prefill_tokens, 8);
        e.finish_step(&p3, 3, &mut out);
        assert_eq!(out.len(), 1);
        // step time model: base + per prefill token
        assert_eq!(
            p1.duration,
            Duration::from_millis(1) + Duration::from_micros(160)
        );
        let p4 = e.schedule(3);
        assert_eq!((p4.prefill_tokens, p4.decode_seqs), (0, 1));
        assert_eq!(
            p4.duration,
            Duration::from_millis(1) + Duration::from_micros(100)
        );
    }

    #[test]
    fn prefix_cache_hits_repeated_prompt_in_whole_blocks() {
        let mut e = Engine::new(cfg());
        e.add(req(1, 10, 2, 0));
        run(&mut e, 0, |_| {});
        assert_eq!(e.stats().prefix_cache_hits, 0);
        assert_eq!(e.stats().prefix_cache_queries, 10);
        e.add(req(2, 10, 2, 0));
        run(&mut e, 0, |_| {});
        // 10 tokens = 2 full blocks of 4 cached.
        assert_eq!(e.stats().prefix_cache_hits, 8);
        assert_eq!(e.stats().prefix_cache_queries, 20);
        assert_eq!(e.stats().prompt_tokens_cache_hit, 8);
        // A different prompt misses.
        e.add(req(3, 10, 2, 99));
        run(&mut e, 0, |_| {});
        assert_eq!(e.stats().prefix_cache_hits, 8);
        assert_eq!(e.used_blocks(), 0);
    }

    #[test]
    fn abort_frees_blocks_and_is_not_counted() {
        let mut e = Engine::new(cfg());
        e.add(req(1, 10, 100, 0));
        let p = e.schedule(0);
        e.finish_step(&p, 10, &mut Vec::new());
        assert!(e.used_blocks() > 0);
        assert!(e.abort(1));
        assert!(!e.abort(1));
        assert_eq!(e.used_blocks(), 0);
        assert!(e.is_idle());
        assert_eq!(e.stats().success_length + e.stats().success_stop, 0);
    }
}
