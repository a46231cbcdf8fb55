//! Reads the few vLLM gauges the experiments watch from a `/metrics` body: KV-cache usage,
//! running and waiting requests, preemptions and the KV-cache geometry.
//!
//! Parsing is the scrape module's ([`crate::scrape::expfmt`]); this is the one place that knows
//! which vLLM families the experiments read.
//! Families are summed over engines (data-parallel ranks) except KV usage, which is averaged.
//! Older vLLM names (`vllm:gpu_cache_usage_perc`) are accepted as a fallback.

use super::engine::{CacheConfig, ServerSnapshot};
use crate::scrape::expfmt::{self, Format, Suffix};

/// Parses a `/metrics` body (Prometheus text or OpenMetrics, by its `Content-Type`) with the
/// scrape module's parser and extracts the watched gauges. Fails when the body is not an
/// exposition at all (an HTML or JSON error page).
pub fn snapshot_from_body(
    body: &str,
    content_type: Option<&str>,
) -> anyhow::Result<ServerSnapshot> {
    let exp = expfmt::parse(body, Format::from_content_type(content_type));
    if let Some(kind) = exp.fatal() {
        anyhow::bail!(
            "/metrics is not a Prometheus exposition ({})",
            kind.as_str()
        );
    }
    Ok(snapshot(&exp))
}

/// Extracts the watched gauges from a Prometheus or OpenMetrics text body (lenient: an
/// unreadable body gives an empty snapshot).
pub fn snapshot_from_exposition(body: &str) -> ServerSnapshot {
    snapshot(&expfmt::parse(body, Format::Prometheus))
}

fn snapshot(exp: &expfmt::Exposition<'_>) -> ServerSnapshot {
    let mut kv_new: Vec<f64> = Vec::new();
    let mut kv_old: Vec<f64> = Vec::new();
    let mut running: Option<f64> = None;
    let mut waiting: Option<f64> = None;
    let mut preempt: Option<f64> = None;
    let mut generated: Option<f64> = None;
    let mut cache = None;
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for f in exp.families.iter().filter(|f| !f.damaged) {
        let name = f.base_name();
        let name = name.strip_suffix("_total").unwrap_or(name);
        for s in exp.family_samples(f) {
            if matches!(s.suffix, Suffix::Created) || !s.value.is_finite() {
                continue;
            }
            match name {
                "vllm:kv_cache_usage_perc" => kv_new.push(s.value),
                "vllm:gpu_cache_usage_perc" => kv_old.push(s.value),
                "vllm:num_requests_running" => add(&mut running, s.value),
                "vllm:num_requests_waiting" => add(&mut waiting, s.value),
                "vllm:num_preemptions" => add(&mut preempt, s.value),
                "vllm:generation_tokens" => add(&mut generated, s.value),
                "vllm:cache_config_info" if cache.is_none() => {
                    let get = |k: &str| exp.label(s, k).and_then(|v| v.parse::<u64>().ok());
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
    }
    let kv = if kv_new.is_empty() { kv_old } else { kv_new };
    ServerSnapshot {
        kv_usage: (!kv.is_empty()).then(|| kv.iter().sum::<f64>() / kv.len() as f64),
        running,
        waiting,
        preemptions_total: preempt,
        generation_tokens_total: generated,
        cache,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_html_page_is_not_metrics() {
        let e = snapshot_from_body("<html>404</html>", Some("text/html")).unwrap_err();
        assert!(e.to_string().contains("not a Prometheus exposition"), "{e}");
        let ok = snapshot_from_body("vllm:num_requests_waiting 2\n", Some("text/plain")).unwrap();
        assert_eq!(ok.waiting, Some(2.0));
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
