//! Reads the few vLLM gauges the experiments watch from a `/metrics` body: KV-cache usage,
//! running and waiting requests, preemptions and the KV-cache geometry.
//!
//! Everything goes through [`snapshot_from_exposition`], the one place that knows metric names.
//! Families are summed over engines (data-parallel ranks) except KV usage, which is averaged.
//! Older vLLM names (`vllm:gpu_cache_usage_perc`) are accepted as a fallback.

use super::engine::{CacheConfig, ServerSnapshot};

/// One sample line of an exposition: name, labels and value.
#[derive(Debug, Clone, PartialEq)]
struct Line<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// Parses one sample line; `None` for comments, blanks and lines it cannot read.
fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, other)) => val.push(other),
                        None => return None,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => val.push(c),
                }
            }
            let end = end?;
            labels.push((key, val));
            rest = &after[end + 1..];
        }
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line {
        name,
        labels,
        value,
    })
}

/// Extracts the watched gauges from a Prometheus or OpenMetrics text body.
pub fn snapshot_from_exposition(body: &str) -> ServerSnapshot {
    let mut kv_new: Vec<f64> = Vec::new();
    let mut kv_old: Vec<f64> = Vec::new();
    let mut running: Option<f64> = None;
    let mut waiting: Option<f64> = None;
    let mut preempt: Option<f64> = None;
    let mut cache = None;
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for l in body.lines().filter_map(parse_line) {
        match l.name {
            "vllm:kv_cache_usage_perc" => kv_new.push(l.value),
            "vllm:gpu_cache_usage_perc" => kv_old.push(l.value),
            "vllm:num_requests_running" => add(&mut running, l.value),
            "vllm:num_requests_waiting" => add(&mut waiting, l.value),
            "vllm:num_preemptions_total" | "vllm:num_preemptions" => add(&mut preempt, l.value),
            "vllm:cache_config_info" if cache.is_none() => {
                let get = |k: &str| {
                    l.labels
                        .iter()
                        .find(|(n, _)| *n == k)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                };
                if let (Some(b), Some(n)) = (get("block_size"), get("num_gpu_blocks"))
                    && b > 0
                    && n > 0
                {
                    cache = Some(CacheConfig {
                        block_size: b,
                        num_gpu_blocks: n,
                    });
                }
            }
            _ => {}
        }
    }
    let kv = if kv_new.is_empty() { kv_old } else { kv_new };
    ServerSnapshot {
        kv_usage: (!kv.is_empty()).then(|| kv.iter().sum::<f64>() / kv.len() as f64),
        running,
        waiting,
        preemptions_total: preempt,
        cache,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_labels_and_escapes() {
        let l = parse_line(r#"x{a="1",b="q\"z, y"} 2.5 1700000000"#).unwrap();
        assert_eq!(l.name, "x");
        assert_eq!(
            l.labels,
            vec![("a", "1".to_string()), ("b", "q\"z, y".to_string())]
        );
        assert_eq!(l.value, 2.5);
        assert_eq!(parse_line("y 3").unwrap().value, 3.0);
        assert!(parse_line("# HELP y").is_none());
        assert!(parse_line("broken{a=\"1\" 3").is_none());
        assert!(parse_line("z{a=\"1\"} notanumber").is_none());
    }

    #[test]
    fn reads_the_watched_gauges() {
        let body = r#"
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:num_requests_running{engine="0"} 3
vllm:num_requests_running{engine="1"} 2
vllm:num_requests_waiting{engine="0"} 1
vllm:num_preemptions_total{engine="0"} 7
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1024"} 1.0
"#;
        let s = snapshot_from_exposition(body);
        assert_eq!(s.kv_usage, Some(0.5));
        assert_eq!(s.running, Some(5.0));
        assert_eq!(s.waiting, Some(1.0));
        assert_eq!(s.preemptions_total, Some(7.0));
        assert_eq!(
            s.cache,
            Some(CacheConfig {
                block_size: 16,
                num_gpu_blocks: 1024
            })
        );
        let empty = snapshot_from_exposition("# nothing\n");
        assert_eq!(empty, ServerSnapshot::default());
        let old = snapshot_from_exposition("vllm:gpu_cache_usage_perc 0.1\n");
        assert_eq!(old.kv_usage, Some(0.1));
    }

    /// Lines of a real vLLM 0.32.0 (CPU) capture, busy with 16 requests.
    const REAL: &str = r#"# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5039370078740157
vllm:num_preemptions_total{engine="0",model_name="tiny"} 0.0
vllm:cache_config_info{_block_size_resolved="True",block_size="128",cache_dtype="auto",cache_hit_alignment_tokens="None",effective_attention_block_size="128",enable_mamba_shared_prefix_checkpoint="False",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.92",hash_block_size="None",is_attention_free="False",kv_cache_dtype_skip_layers="[]",kv_cache_layout="None",kv_cache_max_concurrency="8.0",kv_cache_memory_bytes="33554432",kv_cache_size_tokens="16384",kv_offloading_backend="native",kv_offloading_size="None",kv_sharing_fast_prefill="False",mamba_block_size="None",mamba_cache_dtype="auto",mamba_cache_mode="none",mamba_page_size_padded="None",mamba_ssm_cache_dtype="float32",num_cpu_blocks="None",num_gpu_blocks="128",num_gpu_blocks_override="None",prefix_cache_retention_interval="0",prefix_caching_hash_algo="sha256",prefix_match_unit="None",replayssm_buffer_len="16",skip_page_size_padded="None",sliding_window="None",swa_bounded_replay="True",use_kda_recoverssm="False",use_replayssm="False",user_specified_block_size="False"} 1.0
"#;

    #[test]
    fn reads_a_real_vllm_capture() {
        let s = snapshot_from_exposition(REAL);
        assert_eq!(s.kv_usage, Some(0.5039370078740157));
        assert_eq!(
            s.waiting,
            Some(0.0),
            "waiting_by_reason is a different family"
        );
        assert_eq!(s.preemptions_total, Some(0.0));
        assert_eq!(
            s.cache,
            Some(CacheConfig {
                block_size: 128,
                num_gpu_blocks: 128
            })
        );
    }
}
