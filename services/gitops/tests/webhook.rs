//! The webhook receiver over real HTTPS on 127.0.0.1: a signed call wakes the
//! loop, an unsigned or badly signed one does not, and /metrics counts both.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_gitops::metrics::Metrics;
use hmac::{Hmac, Mac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

const SECRET: &[u8] = b"webhook test secret";

/// A self-signed P-256 certificate for 127.0.0.1, made by the `openssl` CLI.
fn self_signed(dir: &std::path::Path) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    (
        CertificateDer::from_pem_file(&cert).unwrap(),
        PrivateKeyDer::from_pem_file(&key).unwrap(),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Server {
    addr: std::net::SocketAddr,
    client: tokio_rustls::TlsConnector,
    trigger: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let trigger = Arc::new(Notify::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(cairn_gitops::webhook::serve(
        listener,
        Arc::new(tls),
        Arc::new(SECRET.to_vec()),
        trigger.clone(),
        Arc::new(Metrics::new()),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        client: tokio_rustls::TlsConnector::from(Arc::new(client)),
        trigger,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl Server {
    /// One HTTP/1.1 request over a fresh TLS connection; the status and body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::IpAddress(self.addr.ip().into());
        let mut tls = self.client.connect(name, tcp).await.expect("TLS handshake");
        // With a Transfer-Encoding header the body goes as one chunk, else with its length.
        let chunked = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if !chunked {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        if chunked {
            bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            bytes.extend_from_slice(body);
            bytes.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            bytes.extend_from_slice(body);
        }
        // A server refusing a large body may close before reading it all.
        let _ = tls.write_all(&bytes).await;
        let mut response = Vec::new();
        // The server closes after the response; a missing close_notify is no test failure.
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
            .await
            .unwrap();
        let response = String::from_utf8(response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Whether the trigger fires within `wait`.
    async fn fired(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.trigger.notified())
            .await
            .is_ok()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        result.expect("serve stops on shutdown").unwrap().unwrap();
    }
}

fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_trigger_and_others_do_not() {
    let server = start().await;
    let body = br#"{"ref":"refs/heads/main","after":"1a2b3c"}"#;

    // A good GitHub signature: 202, and the loop is woken.
    let signature = github_signature(SECRET, body);
    let (status, reply) = server
        .request(
            "POST",
            "/hook",
            &[("X-Hub-Signature-256", &signature)],
            body,
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    assert!(reply.contains("fetch started"), "{reply}");
    assert!(
        server.fired(Duration::from_secs(5)).await,
        "a verified call must wake the loop"
    );

    // A bad signature (wrong secret) on a path under /hook/: 401, no wake-up.
    let wrong = github_signature(b"not the secret", body);
    let (status, reply) = server
        .request(
            "POST",
            "/hook/github",
            &[("X-Hub-Signature-256", &wrong)],
            body,
        )
        .await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("bad signature"), "{reply}");
    // Unsigned: 401 as well.
    let (status, reply) = server.request("POST", "/hook", &[], body).await;
    assert_eq!((status, reply.contains("unsigned")), (401, true), "{reply}");
    // A GitLab token that matches: 202.
    let token = std::str::from_utf8(SECRET).unwrap();
    let (status, _) = server
        .request("POST", "/hook/gitlab", &[("X-Gitlab-Token", token)], body)
        .await;
    assert_eq!(status, 202);
    assert!(server.fired(Duration::from_secs(5)).await);
    assert!(
        !server.fired(Duration::from_millis(500)).await,
        "refused calls must not wake the loop"
    );

    // Too large a body: 413 before any verification.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let (status, _) = server
        .request("POST", "/hook", &[("X-Gitlab-Token", token)], &big)
        .await;
    assert_eq!(status, 413);
    // The same without a declared length: the bounded read refuses it.
    let headers = [("X-Gitlab-Token", token), ("Transfer-Encoding", "chunked")];
    let (status, _) = server.request("POST", "/hook", &headers, &big).await;
    assert_eq!(status, 413);
    assert!(!server.fired(Duration::from_millis(300)).await);

    // Other routes.
    assert_eq!(
        server.request("GET", "/healthz", &[], b"").await,
        (200, "ok".to_owned())
    );
    assert_eq!(server.request("GET", "/nope", &[], b"").await.0, 404);
    assert_eq!(server.request("GET", "/hook", &[], b"").await.0, 405);
    let (status, metrics) = server.request("GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("cairn_gitops_webhook_requests_total{result=\"accepted\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_gitops_webhook_requests_total{result=\"rejected\"} 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cairn_gitops_reconcile_duration_seconds histogram\n"),
        "{metrics}"
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_content_type_and_shutdown_with_an_idle_connection() {
    let server = start().await;
    // An idle TLS connection must not keep serve from stopping.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let _idle = server.client.connect(name, tcp).await.unwrap();

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let mut tls = server.client.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8(response).unwrap().to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4"),
        "{response}"
    );
    server.stop().await;
}
