//! `--web.config.file` (exporter-toolkit's format): TLS, client certificates, HTTP Basic auth
//! with bcrypt, and reloads of the file (on `POST /-/reload` and when it changes), against the
//! daemon as it runs (`daemon::serve_on` on 127.0.0.1:0). The CA and certificates are made here
//! (rcgen), the bcrypt hashes too (cost 4: fast).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;
use vllm_sentinel::daemon;
use vllm_sentinel::runtime::Reloader;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }
    fn pem(&self) -> String {
        self.issuer.pem()
    }
    /// (cert PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Setup {
    /// A CA, and `server.crt`/`server.key` for localhost and 127.0.0.1, `ca.crt`, in a temp dir.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (crt, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("server.crt"), crt).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Self { dir, ca }
    }
    fn web(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }
    fn write_web(&self, text: &str) {
        // Write then rename, so the watcher never reads half a file.
        let tmp = self.dir.path().join("web.yml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.web()).unwrap();
    }
    fn ca_cert(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap()
    }
}

struct Daemon {
    addr: SocketAddr,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// The daemon with a config file naming `web` (relative paths in it: its own directory),
    /// `POST /-/reload` on, and a reloader that re-reads both.
    async fn start(dir: &Path, web: &Path) -> Self {
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nenable_lifecycle = true\nshutdown_linger = \"0s\"\nweb_config_file = {:?}\n[gpu]\nenabled = false\n",
                web.display().to_string()
            ),
        )
        .unwrap();
        let args = vllm_sentinel::cli::ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let global = vllm_sentinel::cli::GlobalArgs {
            log_level: None,
            log_format: vllm_sentinel::cli::LogFormat::Text,
        };
        let cfg = vllm_sentinel::cli::load_config(&global, &args).unwrap();
        let reloader: Reloader = Arc::new(move || vllm_sentinel::cli::load_config(&global, &args));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(daemon::serve_on(
            listener,
            cfg,
            token.clone(),
            Some(reloader),
        ));
        Self { addr, token, task }
    }
    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://localhost:{}{path}", self.addr.port())
    }
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("daemon did not stop")
            .unwrap()
            .unwrap();
    }
}

fn client(b: reqwest::ClientBuilder, addr: SocketAddr) -> reqwest::Client {
    b.resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[tokio::test]
async fn tls_without_client_auth() {
    let s = Setup::new();
    s.write_web(TLS);
    let d = Daemon::start(s.dir.path(), &s.web()).await;
    let c = client(
        reqwest::Client::builder().tls_certs_only([s.ca_cert()]),
        d.addr,
    );
    let r = c.get(d.url("https", "/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("vllm_sentinel_build_info"));
    // Plain HTTP on the TLS port gets no answer.
    let plain = client(reqwest::Client::builder(), d.addr);
    let r = plain.get(d.url("http", "/metrics")).send().await;
    assert!(r.is_err() || r.unwrap().status() != 200);
    d.stop().await;
}

#[tokio::test]
async fn require_and_verify_client_cert() {
    let s = Setup::new();
    s.write_web(&format!(
        "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\n"
    ));
    let d = Daemon::start(s.dir.path(), &s.web()).await;
    // No client certificate: the handshake fails.
    let c = client(
        reqwest::Client::builder().tls_certs_only([s.ca_cert()]),
        d.addr,
    );
    assert!(c.get(d.url("https", "/metrics")).send().await.is_err());
    // A certificate from the CA: served.
    let (crt, key) = s.ca.leaf(&["client"]);
    let id = reqwest::Identity::from_pem(format!("{crt}{key}").as_bytes()).unwrap();
    let c = client(
        reqwest::Client::builder()
            .tls_certs_only([s.ca_cert()])
            .identity(id),
        d.addr,
    );
    let r = c.get(d.url("https", "/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A certificate from another CA: refused.
    let (crt, key) = Ca::new().leaf(&["client"]);
    let id = reqwest::Identity::from_pem(format!("{crt}{key}").as_bytes()).unwrap();
    let c = client(
        reqwest::Client::builder()
            .tls_certs_only([s.ca_cert()])
            .identity(id),
        d.addr,
    );
    assert!(c.get(d.url("https", "/healthz")).send().await.is_err());
    d.stop().await;
}

fn users(pairs: &[(&str, &str)]) -> String {
    let mut s = "basic_auth_users:\n".to_string();
    for (u, p) in pairs {
        s.push_str(&format!("  {u}: {}\n", bcrypt::hash(p, 4).unwrap()));
    }
    s
}

/// Polls `f` until it is true or 20 s have passed.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn basic_auth_over_tls_and_reloads() {
    let s = Setup::new();
    s.write_web(&format!("{TLS}{}", users(&[("alice", "s3cret")])));
    let d = Daemon::start(s.dir.path(), &s.web()).await;
    let c = client(
        reqwest::Client::builder().tls_certs_only([s.ca_cert()]),
        d.addr,
    );
    let status = |user: Option<(&'static str, &'static str)>, path: &'static str| {
        let mut rq = c.get(d.url("https", path));
        if let Some((u, p)) = user {
            rq = rq.basic_auth(u, Some(p));
        }
        async move { rq.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    for path in ["/metrics", "/healthz", "/", "/api/v1/status"] {
        let r = c.get(d.url("https", path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Basic");
    }
    assert_eq!(status(Some(("alice", "wrong")), "/metrics").await, 401);
    assert_eq!(status(Some(("mallory", "s3cret")), "/metrics").await, 401);
    assert_eq!(status(Some(("alice", "s3cret")), "/metrics").await, 200);
    assert_eq!(status(Some(("alice", "s3cret")), "/metrics").await, 200);

    // The file changes (a new user): picked up without a restart or a reload call.
    s.write_web(&format!(
        "{TLS}{}",
        users(&[("alice", "s3cret"), ("bob", "hunter2")])
    ));
    eventually("bob to be accepted", || async {
        status(Some(("bob", "hunter2")), "/metrics").await == 200
    })
    .await;

    // A broken file: the running config stays, and the failure is counted.
    s.write_web("basic_auth_users:\n  carol: not-a-bcrypt-hash\n");
    let r = c
        .post(d.url("https", "/-/reload"))
        .basic_auth("bob", Some("hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("basic_auth_users.carol"), "{body}");
    // And the watcher sees it too; still served with the old file.
    eventually("the failure to be counted twice", || async {
        let r = c
            .get(d.url("https", "/metrics"))
            .basic_auth("alice", Some("s3cret"))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => r
                .text()
                .await
                .unwrap_or_default()
                .lines()
                .any(|l| l == "vllm_sentinel_web_config_reload_failures_total 2"),
            _ => false,
        }
    })
    .await;
    assert_eq!(status(Some(("bob", "hunter2")), "/healthz").await, 200);
    assert_eq!(status(None, "/healthz").await, 401);

    // A good file again, through POST /-/reload: bob is gone.
    s.write_web(&format!("{TLS}{}", users(&[("alice", "s3cret")])));
    let r = c
        .post(d.url("https", "/-/reload"))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(status(Some(("bob", "hunter2")), "/metrics").await, 401);
    d.stop().await;
}

#[test]
fn check_config_validates_the_web_config_without_printing_secrets() {
    let s = Setup::new();
    let hash = bcrypt::hash("pw", 4).unwrap();
    s.write_web(&format!("{TLS}basic_auth_users:\n  alice: {hash}\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-sentinel"))
        .args(["check-config", "--no-gpu", "--web.config.file"])
        .arg(s.web())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tls: on"), "{text}");
    assert!(text.contains("alice"), "{text}");
    assert!(!text.contains(&hash), "{text}");
    std::fs::write(s.dir.path().join("server.key"), "nope").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-sentinel"))
        .args(["check-config", "--no-gpu", "--web.config.file"])
        .arg(s.web())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("key_file"), "{err}");
}

/// `scripts/ops/e2e-web-config.sh`: curl with and without a client certificate and a password,
/// and a real Prometheus scraping over TLS with basic auth (`up == 1` through its API).
#[test]
fn curl_and_prometheus_scrape_over_tls_with_basic_auth() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/ops/e2e-web-config.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_vllm-sentinel")])
        .env("E2E_WEB_PASS", "e2e-pass")
        .env("E2E_WEB_HASH", bcrypt::hash("e2e-pass", 4).unwrap())
        .current_dir(root)
        .output()
        .expect("run scripts/ops/e2e-web-config.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "e2e-web-config.sh failed:\n{text}");
    assert!(text.contains("e2e-web-config: OK"), "{text}");
}
