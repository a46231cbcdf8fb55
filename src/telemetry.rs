//! Logging through `tracing`: human-readable or JSON, level from `--log-level` or `RUST_LOG`.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::cli::{GlobalArgs, LogFormat};

/// Installs the global subscriber. Logs go to stderr so that reports on stdout stay clean.
pub fn init(args: &GlobalArgs) -> anyhow::Result<()> {
    let filter = filter_from(args.log_level.as_deref(), std::env::var("RUST_LOG").ok())?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests calling run() twice in one process) is harmless.
    let _ = result;
    Ok(())
}

/// The log filter: `--log-level` (or `VLLM_SENTINEL_LOG_LEVEL`), else `RUST_LOG`, else `info`.
/// A filter that does not parse is an error naming where it came from, never silently ignored.
pub fn filter_from(log_level: Option<&str>, rust_log: Option<String>) -> anyhow::Result<EnvFilter> {
    let parse = |s: &str| EnvFilter::builder().parse(s);
    match (log_level, rust_log) {
        (Some(level), _) => parse(level).with_context(|| {
            format!("invalid --log-level / VLLM_SENTINEL_LOG_LEVEL {level:?} (examples: info, vllm_sentinel=debug)")
        }),
        (None, Some(env)) if !env.trim().is_empty() => parse(&env).with_context(|| {
            format!("invalid RUST_LOG {env:?} (examples: info, vllm_sentinel=debug,warn); fix or unset it")
        }),
        _ => Ok(EnvFilter::new("info")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_garbage_rust_log_is_an_error_naming_it() {
        let err = filter_from(None, Some("vllm_sentinel=loud".into()))
            .expect_err("garbage must be refused");
        assert!(format!("{err:#}").contains("invalid RUST_LOG"), "{err:#}");
        let err = filter_from(Some("[=="), None).expect_err("garbage must be refused");
        assert!(format!("{err:#}").contains("--log-level"), "{err:#}");
        assert!(filter_from(None, Some("vllm_sentinel=debug,warn".into())).is_ok());
        assert!(filter_from(None, Some("  ".into())).is_ok());
        assert!(filter_from(None, None).is_ok());
        // --log-level wins, so a bad RUST_LOG under a good --log-level is not consulted.
        assert!(filter_from(Some("info"), Some("vllm_sentinel=loud".into())).is_ok());
    }
}
