//! Every config validation rule has a bad-config case in `tests/data/config/bad-*.toml`; each file's
//! first line is `# expect: <text the error must contain>`. Good configs (`good-*.toml` and the
//! documented example `examples/vllm-sentinel.toml`) must load.

use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config")
}

fn load(path: &Path) -> anyhow::Result<vllm_sentinel::config::Config> {
    let args = vllm_sentinel::cli::ServeArgs {
        config: Some(path.to_path_buf()),
        ..Default::default()
    };
    let global = vllm_sentinel::cli::GlobalArgs {
        log_level: None,
        log_format: vllm_sentinel::cli::LogFormat::Text,
    };
    vllm_sentinel::cli::load_config(&global, &args)
}

#[test]
fn every_bad_config_fails_with_its_message() {
    let mut seen = 0;
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("bad-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: ...`"));
        let err = match load(&path) {
            Ok(_) => panic!("{name}: loaded, but should fail with {expect:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(expect),
            "{name}: error {err:?} does not contain {expect:?}"
        );
        assert!(
            err.contains(&name),
            "{name}: error {err:?} does not name the file"
        );
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} bad-config cases found");
}

#[test]
fn good_configs_and_the_documented_example_load() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("good-")
        })
        .collect();
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vllm-sentinel.toml"));
    for f in files {
        let cfg = load(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        assert_eq!(cfg.source.as_deref(), Some(f.as_path()));
    }
}

#[test]
fn flags_override_the_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vllm-sentinel.toml");
    let args = vllm_sentinel::cli::ServeArgs {
        config: Some(path),
        listen: Some("127.0.0.1:1234".parse().unwrap()),
        target: Some("http://127.0.0.1:9999".into()),
        no_gpu: true,
        ..Default::default()
    };
    let global = vllm_sentinel::cli::GlobalArgs {
        log_level: None,
        log_format: vllm_sentinel::cli::LogFormat::Text,
    };
    let cfg = vllm_sentinel::cli::load_config(&global, &args).unwrap();
    assert_eq!(cfg.server.listen.port(), 1234);
    assert_eq!(cfg.targets.len(), 1);
    assert_eq!(cfg.targets[0].url, "http://127.0.0.1:9999");
    assert!(!cfg.gpu.enabled);
}

#[test]
fn api_key_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-secret-value\n").unwrap();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[[targets]]\nurl = \"http://127.0.0.1:8000\"\napi_key_file = {:?}\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let cfg = load(&cfg_path).unwrap();
    assert_eq!(
        cfg.targets[0].api_key().unwrap().as_deref(),
        Some("sk-secret-value")
    );
    let described = vllm_sentinel::config::describe(&cfg);
    assert!(!described.contains("sk-secret"), "{described}");
    assert!(!format!("{cfg:?}").contains("sk-secret"));
}

#[test]
fn an_api_key_with_a_line_break_is_refused_at_load_naming_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-secret\r\nX-Injected: 1\n").unwrap();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[[targets]]\nurl = \"http://127.0.0.1:8000\"\napi_key_file = {:?}\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let err = format!("{:#}", load(&cfg_path).expect_err("must be refused"));
    assert!(
        err.contains("targets[0]") && err.contains("api_key_file"),
        "{err}"
    );
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains("line break"), "{err}");
    assert!(!err.contains("sk-secret"), "{err}");
}
