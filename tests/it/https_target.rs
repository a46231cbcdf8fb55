//! An `https://` target works out of the box (the default build has TLS): `bench` against the
//! simulator behind a TLS terminator, trusting a throwaway CA through `SSL_CERT_FILE`; and
//! without that trust, the request fails with a certificate error that says so.
//!
//! Loopback only; the CA and the server certificate are made here (rcgen), never fetched.

use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_vllm-sentinel");

struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
    }
}

/// The simulator on plain HTTP, and a TLS terminator in front of it; returns the https port.
async fn https_sim(server: rustls::ServerConfig) -> (u16, tokio_util::sync::DropGuard) {
    let sim = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = sim.local_addr().unwrap();
    let token = CancellationToken::new();
    let cfg = vllm_sentinel::sim::SimConfig {
        model: "tiny".into(),
        fixed_timing: Some(vllm_sentinel::sim::parse_fixed_timing("2ms,1ms").unwrap()),
        ..Default::default()
    };
    tokio::spawn(vllm_sentinel::sim::serve(sim, cfg, token.clone()));
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tls.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let t = token.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                _ = t.cancelled() => return,
                r = tls.accept() => r.unwrap(),
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to forward.
                let Ok(mut client) = acceptor.accept(sock).await else {
                    return;
                };
                let mut upstream = TcpStream::connect(sim_addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, token.drop_guard())
}

fn bench(
    port: u16,
    ca_file: Option<&std::path::Path>,
    json: &std::path::Path,
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "bench",
        "--target",
        &format!("https://localhost:{port}"),
        "--requests",
        "3",
        "--warmup",
        "0",
        "--max-tokens",
        "8",
        "--no-progress",
        "--json",
    ])
    .arg(json)
    .env_remove("SSL_CERT_FILE")
    .env_remove("SSL_CERT_DIR")
    .env("RUST_LOG", "warn");
    if let Some(f) = ca_file {
        cmd.env("SSL_CERT_FILE", f);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_an_https_target_trusted_through_ssl_cert_file() {
    let pki = pki();
    let (port, _guard) = https_sim(pki.server).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let json = dir.path().join("bench.json");

    let out = tokio::task::spawn_blocking({
        let (ca, json) = (ca.clone(), json.clone());
        move || bench(port, Some(&ca), &json)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench over https failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Both modes (streamed and not): every request succeeded with its 8 tokens.
    let modes = report["bench"]["modes"].as_array().expect("bench.modes");
    assert_eq!(modes.len(), 2, "{report}");
    for m in modes {
        assert_eq!(m["requests"], 3, "{m}");
        assert_eq!(m["ok"], 3, "{m}");
        assert_eq!(m["latency"]["output_tokens"]["mean"], 8.0, "{m}");
    }

    // The same target without trusting the CA: refused, and the error names the certificate.
    let untrusted = dir.path().join("untrusted.json");
    let out = tokio::task::spawn_blocking(move || bench(port, None, &untrusted))
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "an untrusted https target must fail:\n{all}"
    );
    // The error the user reads (not only a log line) says why: the certificate.
    let error = all
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{all}"));
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error must name the certificate problem: {error}"
    );
}
