//! The kv-scale plots.

use super::*;

/// Writes the kv-scale plots into `dir`.
pub fn plots(dir: &std::path::Path, k: &KvScaleSection) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let answered: Vec<&LadderRung> = k
        .ladder
        .iter()
        .filter(|r| matches!(r.feasibility.as_str(), "accepted" | "clamped"))
        .collect();
    let x = |r: &LadderRung| f64::from(r.prompt_tokens.unwrap_or(r.prompt_tokens_requested));
    let marker = k
        .max_model_len
        .map(|m| (f64::from(m), format!("max_model_len {m}")));
    let mut files = plot::line_chart(
        dir,
        "kv-ttft",
        &LineChart {
            title: "Time to first token against prompt length (prefill cost)".into(),
            x_label: "prompt tokens".into(),
            y_label: "TTFT (ms)".into(),
            x_log: false,
            series: vec![Series {
                name: "TTFT".into(),
                points: answered
                    .iter()
                    .filter_map(|r| r.ttft_s.map(|v| (x(r), v * 1000.0)))
                    .collect(),
                color: 0,
                width: 3,
            }],
            marker: marker.clone(),
        },
    )?;
    files.extend(plot::line_chart(
        dir,
        "kv-usage",
        &LineChart {
            title: "KV-cache usage of one request against prompt length".into(),
            x_label: "prompt tokens".into(),
            y_label: "KV-cache usage (%)".into(),
            x_log: false,
            series: vec![
                Series {
                    name: "expected from cache_config_info".into(),
                    points: answered
                        .iter()
                        .filter_map(|r| r.kv_usage_expected.map(|v| (x(r), v * 100.0)))
                        .collect(),
                    color: 5,
                    width: 7,
                },
                Series {
                    name: "measured (peak − before)".into(),
                    points: k
                        .ladder
                        .iter()
                        .filter_map(|r| r.kv_usage_delta.map(|v| (x(r), v * 100.0)))
                        .collect(),
                    color: 1,
                    width: 2,
                },
            ],
            marker,
        },
    )?);
    if !k.grid.is_empty() {
        let rows: Vec<GridRowPlot> = k
            .grid
            .iter()
            .map(|g| GridRowPlot {
                label: format!(
                    "{} tokens, capacity {}",
                    g.context_tokens,
                    g.capacity_computed
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
                cells: g.cells.iter().map(|c| (c.concurrency, c.fits)).collect(),
                capacity: g.capacity_computed,
            })
            .collect();
        files.extend(plot::grid_chart(
            dir,
            "kv-grid",
            "Concurrent sequences that fit, by sequence length",
            &rows,
        )?);
    }
    Ok(files)
}
