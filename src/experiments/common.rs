//! What the three experiments share: the common flags, the output files, request summaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

#[cfg(test)]
use super::engine::Outcome;
use super::engine::Sample;
use super::report::{LatencySummaries, Report};
use super::stats::Summary;
use crate::config::{Config, Endpoint, Secret, TargetConfig};

/// Flags every experiment takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Base URL of the server (e.g. http://127.0.0.1:8000).
    #[arg(long, env = "VLLM_SENTINEL_TARGET")]
    pub target: String,
    /// Model to request; default: the first model of the target's /v1/models.
    #[arg(long, env = "VLLM_SENTINEL_MODEL")]
    pub model: Option<String>,
    /// OpenAI endpoint to send requests to.
    #[arg(long, value_enum, default_value_t = Endpoint::Completions, env = "VLLM_SENTINEL_ENDPOINT")]
    pub endpoint: Endpoint,
    /// Environment variable holding the target's API key (sent as a Bearer token).
    #[arg(
        long,
        env = "VLLM_SENTINEL_API_KEY_ENV",
        conflicts_with = "api_key_file"
    )]
    pub api_key_env: Option<String>,
    /// File holding the target's API key (sent as a Bearer token; surrounding whitespace is
    /// trimmed), as the daemon's `api_key_file`.
    #[arg(long, env = "VLLM_SENTINEL_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Give up on one request after this long (e.g. 60s).
    #[arg(long, default_value = "120s", value_parser = crate::units::parse_duration, env = "VLLM_SENTINEL_REQUEST_TIMEOUT")]
    pub request_timeout: Duration,
    /// Write the JSON report here (default with --out-dir: DIR/<experiment>.json).
    #[arg(long, env = "VLLM_SENTINEL_JSON")]
    pub json: Option<PathBuf>,
    /// Write CSV here (default with --out-dir: DIR/<experiment>.csv).
    #[arg(long, env = "VLLM_SENTINEL_CSV")]
    pub csv: Option<PathBuf>,
    /// Write one self-contained HTML report here: settings, the summary table, the plots inlined
    /// as SVG and the JSON report embedded (default with --out-dir: DIR/<experiment>.html).
    #[arg(long, env = "VLLM_SENTINEL_HTML")]
    pub html: Option<PathBuf>,
    /// Directory for the report, CSV and PNG/SVG plots (created if missing).
    #[arg(long, env = "VLLM_SENTINEL_OUT_DIR")]
    pub out_dir: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_NO_PROGRESS")]
    pub no_progress: bool,
    /// Do not sample the GPUs through NVML (the report's GPU columns stay empty). The sampler
    /// runs on threads of its own; on a client pinned to few cores they take CPU from the
    /// sender.
    #[arg(long, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), env = "VLLM_SENTINEL_NO_GPU")]
    pub no_gpu: bool,
}

/// Where an experiment writes its files.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub csv: Option<PathBuf>,
    pub html: Option<PathBuf>,
    /// Plots go here.
    pub plot_dir: Option<PathBuf>,
}

impl Outputs {
    /// Resolves the output paths for experiment `kind` and checks, before any load is sent,
    /// that they can be written (a bad path must not cost a long run).
    pub fn prepare(c: &CommonArgs, kind: &str) -> anyhow::Result<Self> {
        let mut o = Outputs {
            json: c.json.clone(),
            csv: c.csv.clone(),
            html: c.html.clone(),
            plot_dir: None,
        };
        if let Some(dir) = &c.out_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--out-dir: cannot create {}", dir.display()))?;
            o.json
                .get_or_insert_with(|| dir.join(format!("{kind}.json")));
            o.csv.get_or_insert_with(|| dir.join(format!("{kind}.csv")));
            o.html
                .get_or_insert_with(|| dir.join(format!("{kind}.html")));
            o.plot_dir = Some(dir.clone());
        }
        for (flag, p) in [("--json", &o.json), ("--csv", &o.csv), ("--html", &o.html)] {
            if let Some(p) = p {
                check_writable(flag, p)?;
            }
        }
        Ok(o)
    }

    /// Path of a second CSV beside the main one (e.g. `kv-scale-grid.csv`).
    pub fn sibling_csv(&self, suffix: &str) -> Option<PathBuf> {
        let p = self.csv.as_ref()?;
        let stem = p.file_stem()?.to_string_lossy().to_string();
        Some(p.with_file_name(format!("{stem}-{suffix}.csv")))
    }
}

/// Checks, before any load is sent, that the directory `flag`'s file `p` goes into exists.
pub fn check_writable(flag: &str, p: &Path) -> anyhow::Result<()> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = parent
        && !d.is_dir()
    {
        bail!("{flag}: directory {} does not exist", d.display());
    }
    Ok(())
}

/// The `--target` as the daemon's configuration would hold it, with `--api-key-env` or
/// `--api-key-file`: the same URL and API-key rules apply to experiments and daemon.
fn as_target_config(url: &str, c: Option<&CommonArgs>) -> TargetConfig {
    let mut t = TargetConfig::from_url(url.trim());
    if let Some(c) = c {
        t.api_key_env = c.api_key_env.clone();
        t.api_key_file = c.api_key_file.clone();
    }
    t
}

/// Checks a target with the daemon's own validation ([`crate::config::validate`]), naming the
/// flags in its messages instead of the configuration keys.
fn validate_target(t: &TargetConfig) -> anyhow::Result<()> {
    let cfg = Config {
        targets: vec![t.clone()],
        ..Config::default()
    };
    crate::config::validate(&cfg).map_err(|e| {
        let msg = e.to_string();
        let problems: Vec<String> = msg
            .lines()
            .skip(1)
            .map(|l| {
                l.trim()
                    .replace("targets[0].url", "--target")
                    .replace("targets[0]: ", "")
            })
            .collect();
        anyhow::anyhow!("{}", problems.join("; "))
    })
}

/// Validates the base URL of `--target` (as the daemon validates a target's `url`) and returns
/// it without credentials or a trailing slash.
pub fn check_target_url(url: &str) -> anyhow::Result<String> {
    let t = as_target_config(url, None);
    validate_target(&t)?;
    Ok(t.base_url())
}

/// The `Authorization` value of every request: `Bearer` with the key of `--api-key-env` or
/// `--api-key-file` (read and checked as the daemon reads a target's key), or `Basic` from
/// credentials in the `--target` URL.
pub fn authorization(c: &CommonArgs) -> anyhow::Result<Option<Secret>> {
    if c.api_key_env.is_some() && c.api_key_file.is_some() {
        bail!("--api-key-env and --api-key-file: give one of the two");
    }
    let t = as_target_config(&c.target, Some(c));
    validate_target(&t)?;
    t.authorization()
}

/// Summaries of the successful samples among `samples`.
pub fn summarize<'a>(samples: impl IntoIterator<Item = &'a Sample> + Clone) -> LatencySummaries {
    let ok: Vec<&Sample> = samples.into_iter().filter(|s| s.ok()).collect();
    LatencySummaries {
        ttfb_s: Summary::of(ok.iter().filter_map(|s| s.ttfb_s)),
        ttft_s: Summary::of(ok.iter().filter_map(|s| s.ttft_s)),
        itl_s: Summary::of(ok.iter().flat_map(|s| s.itl_s.iter().copied())),
        tpot_s: Summary::of(ok.iter().filter_map(|s| s.tpot_s)),
        e2e_s: Summary::of(ok.iter().map(|s| s.e2e_s)),
        output_tokens_per_s: Summary::of(ok.iter().filter_map(|s| {
            let t = f64::from(s.output_tokens?);
            (s.e2e_s > 0.0).then(|| t / s.e2e_s)
        })),
        output_tokens: Summary::of(ok.iter().filter_map(|s| s.output_tokens.map(f64::from))),
        prompt_tokens: Summary::of(ok.iter().filter_map(|s| s.prompt_tokens.map(f64::from))),
    }
}

/// Failures by class.
pub fn errors_by_class<'a>(
    samples: impl IntoIterator<Item = &'a Sample>,
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in samples.into_iter().filter(|s| !s.ok()) {
        *m.entry(s.outcome.as_str().to_string()).or_insert(0) += 1;
    }
    m
}

/// The most frequent failure, for error messages: `class: message`.
pub fn first_failure<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> String {
    samples
        .into_iter()
        .find(|s| !s.ok())
        .map(|s| {
            format!(
                "{}{}: {}",
                s.outcome,
                s.status.map(|c| format!(" (HTTP {c})")).unwrap_or_default(),
                s.error_message.as_deref().unwrap_or("no message")
            )
        })
        .unwrap_or_else(|| "no request was sent".to_string())
}

/// Exit code of an interrupted run (the shell convention for SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Prints the table, writes the report, CSV files and plots, and returns the exit code.
pub fn emit(
    report: &Report,
    outputs: &Outputs,
    table: &super::table::Printed,
    csvs: &[(Option<PathBuf>, String)],
    plots: impl FnOnce(&Path) -> anyhow::Result<Vec<PathBuf>>,
) -> anyhow::Result<ExitCode> {
    println!("{table}");
    for n in &report.notes {
        println!("note: {n}");
    }
    let mut written = Vec::new();
    if let Some(p) = &outputs.json {
        report.write_json(p)?;
        written.push(p.clone());
    }
    for (path, text) in csvs {
        if let Some(p) = path {
            super::report::write_text(p, text)?;
            written.push(p.clone());
        }
    }
    // The HTML report inlines the SVG plots: without --out-dir they are drawn into a scratch
    // directory that is removed afterwards.
    let scratch = match (&outputs.plot_dir, &outputs.html) {
        (None, Some(_)) => Some(scratch_dir()?),
        _ => None,
    };
    let mut svgs = Vec::new();
    if let Some(dir) = outputs.plot_dir.as_ref().or(scratch.as_ref()) {
        match plots(dir) {
            Ok(files) => {
                svgs = read_svgs(&files);
                if outputs.plot_dir.is_some() {
                    written.extend(files);
                }
            }
            Err(e) => eprintln!("warning: plots not written: {e:#}"),
        }
    }
    if let Some(d) = &scratch {
        let _ = std::fs::remove_dir_all(d);
    }
    if let Some(p) = &outputs.html {
        super::report::write_text(p, &super::html::render(report, table, &svgs))?;
        written.push(p.clone());
    }
    for w in &written {
        eprintln!("wrote {}", w.display());
    }
    if report.partial {
        eprintln!(
            "partial report: {}",
            report.partial_reason.as_deref().unwrap_or("interrupted")
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// A fresh, private scratch directory under the system's temporary directory.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!(
        "vllm-sentinel-plots-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir(&d)
        .with_context(|| format!("creating a scratch directory {}", d.display()))?;
    Ok(d)
}

/// The SVG files among `files`, as (file stem, SVG text); unreadable ones are skipped.
fn read_svgs(files: &[PathBuf]) -> Vec<(String, String)> {
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        .filter_map(|f| {
            let name = f.file_stem()?.to_string_lossy().to_string();
            Some((name, std::fs::read_to_string(f).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(out: Option<PathBuf>) -> CommonArgs {
        CommonArgs {
            target: "http://127.0.0.1:1".into(),
            model: None,
            endpoint: Endpoint::Completions,
            api_key_env: None,
            api_key_file: None,
            request_timeout: Duration::from_secs(1),
            json: None,
            csv: None,
            html: None,
            out_dir: out,
            no_progress: true,
            no_gpu: true,
        }
    }

    #[test]
    fn outputs_default_into_out_dir() {
        let d = tempfile::tempdir().unwrap();
        let o = Outputs::prepare(&common(Some(d.path().join("new"))), "sweep").unwrap();
        assert_eq!(o.json.unwrap(), d.path().join("new/sweep.json"));
        assert!(d.path().join("new").is_dir());
        let c = o.csv.unwrap();
        assert_eq!(c, d.path().join("new/sweep.csv"));
        let o = Outputs {
            csv: Some(c),
            ..Default::default()
        };
        assert_eq!(
            o.sibling_csv("grid").unwrap(),
            d.path().join("new/sweep-grid.csv")
        );
    }

    #[test]
    fn bad_output_path_fails_before_running() {
        let mut c = common(None);
        c.json = Some("/no/such/dir/x.json".into());
        let e = Outputs::prepare(&c, "bench").unwrap_err().to_string();
        assert!(e.contains("--json") && e.contains("/no/such/dir"), "{e}");
        c.json = Some("x.json".into());
        assert!(
            Outputs::prepare(&c, "bench").is_ok(),
            "a bare file name is fine"
        );
    }

    #[test]
    fn target_url_checked() {
        assert_eq!(check_target_url("http://h:8000/").unwrap(), "http://h:8000");
        assert!(check_target_url("h:8000").is_err());
        assert!(check_target_url("http://").is_err());
    }

    #[test]
    fn api_key_from_env() {
        let mut c = common(None);
        assert_eq!(authorization(&c).unwrap(), None);
        c.api_key_env = Some("VLLM_SENTINEL_TEST_SURELY_UNSET_VAR".into());
        assert!(
            authorization(&c)
                .unwrap_err()
                .to_string()
                .contains("not set")
        );
    }

    #[test]
    fn api_key_from_file_and_url_credentials() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("key");
        std::fs::write(&key, "sk-test\n").unwrap();
        let mut c = common(None);
        c.api_key_file = Some(key.clone());
        let a = authorization(&c).unwrap().unwrap();
        assert_eq!(a.expose(), "Bearer sk-test");
        std::fs::write(&key, "two\nlines\n").unwrap();
        assert!(
            authorization(&c)
                .unwrap_err()
                .to_string()
                .contains("line break")
        );
        c.api_key_env = Some("X".into());
        assert!(authorization(&c).is_err(), "both at once");
        let mut c = common(None);
        c.target = "http://u:p@127.0.0.1:1/".into();
        assert!(
            authorization(&c)
                .unwrap()
                .unwrap()
                .expose()
                .starts_with("Basic ")
        );
        assert_eq!(check_target_url(&c.target).unwrap(), "http://127.0.0.1:1");
    }

    #[test]
    fn summaries_use_only_successes() {
        let ok = Sample {
            outcome: Outcome::Ok,
            e2e_s: 2.0,
            ttft_s: Some(0.5),
            output_tokens: Some(10),
            itl_s: vec![0.1, 0.2],
            ..Default::default()
        };
        let bad = Sample {
            outcome: Outcome::ServerError,
            status: Some(500),
            e2e_s: 99.0,
            ..Default::default()
        };
        let v = vec![ok.clone(), bad.clone(), ok];
        let s = summarize(&v);
        assert_eq!(s.e2e_s.count, 2);
        assert_eq!(s.e2e_s.max, Some(2.0));
        assert_eq!(s.output_tokens_per_s.p50, Some(5.0));
        assert_eq!(s.itl_s.count, 4);
        let e = errors_by_class(&v);
        assert_eq!(e.get("server_error"), Some(&1));
        assert!(first_failure(&v).contains("HTTP 500"));
        assert_eq!(first_failure(&[]), "no request was sent");
    }
}
