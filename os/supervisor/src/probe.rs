//! Readiness probes: TCP connect, plain HTTP GET, HTTPS GET (rustls with the `ring`
//! provider), exec, or a custom future.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::event::ExitStatusKind;
use crate::process::{self, Launch};

/// A custom readiness check, e.g. an etcd health call.
pub type CustomProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How to decide that a service is ready.
///
/// Non-exhaustive: more kinds of probe may be added.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Probe {
    /// Ready as soon as the process has started.
    #[default]
    None,
    /// Ready when a TCP connection to the address succeeds.
    Tcp(SocketAddr),
    /// Ready when a plain `http://` GET answers 2xx.
    Http { url: String },
    /// Ready when an `https://` GET answers 2xx. The server certificate must chain to
    /// `ca` (PEM) and name the URL's host; `client_cert` is an optional PEM
    /// (certificate, private key) pair presented to the server. The files are read at
    /// every probe, so rotated certificates are picked up.
    Https {
        url: String,
        ca: PathBuf,
        client_cert: Option<(PathBuf, PathBuf)>,
    },
    /// Ready when an `https://` GET to a **loopback IP address** answers 2xx, whatever
    /// certificate the server presents. For health endpoints of components that serve
    /// a self-signed, in-memory certificate on 127.0.0.1 (kube-controller-manager,
    /// kube-scheduler): nothing secret is sent and only the status line is read, so
    /// skipping verification costs nothing there. Any other host is refused before
    /// connecting.
    HttpsLoopbackUnverified { url: String },
    /// Ready when the command exits 0 within the probe timeout. It runs with the
    /// service's environment and working directory, in its own process group, with
    /// stdio on /dev/null.
    Exec { command: PathBuf, args: Vec<String> },
    /// Ready when the future resolves to `Ok`.
    Custom(CustomProbe),
    /// Never ready while running: a one-shot job, which satisfies its dependents
    /// when it exits 0 (use with [`crate::RestartPolicy::OnFailure`] or `Never`).
    Completion,
}

impl Probe {
    /// Runs the probe once, outside a supervisor, bounded by `timeout`: for tools
    /// and test fixtures that wait on the endpoint a service is probed on. An
    /// exec probe needs its service's environment and is refused.
    pub async fn check_once(&self, timeout: Duration) -> Result<(), String> {
        if matches!(self, Probe::Exec { .. }) {
            return Err("an exec probe runs only for its service".to_string());
        }
        let ctx = ProbeContext {
            env: Vec::new(),
            working_dir: None,
            watch: Arc::new(|_| oneshot::channel().1),
        };
        check(self, timeout, &ctx).await
    }

    /// Wraps an async closure as a [`Probe::Custom`].
    pub fn custom<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self::Custom(Arc::new(move || Box::pin(f())))
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Completion => f.write_str("Completion"),
            Self::Tcp(addr) => f.debug_tuple("Tcp").field(addr).finish(),
            Self::Http { url } => f.debug_struct("Http").field("url", url).finish(),
            Self::Https {
                url,
                ca,
                client_cert,
            } => f
                .debug_struct("Https")
                .field("url", url)
                .field("ca", ca)
                .field("client_cert", client_cert)
                .finish(),
            Self::HttpsLoopbackUnverified { url } => f
                .debug_struct("HttpsLoopbackUnverified")
                .field("url", url)
                .finish(),
            Self::Exec { command, args } => f
                .debug_struct("Exec")
                .field("command", command)
                .field("args", args)
                .finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Registers interest in the exit of a pid; the supervisor answers once the reaper
/// reports it. Called while the spawn lock is held, so the exit cannot be missed.
pub(crate) type ExitWatch = Arc<dyn Fn(i32) -> oneshot::Receiver<ExitStatusKind> + Send + Sync>;

/// What an exec probe needs from its service.
pub(crate) struct ProbeContext {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) watch: ExitWatch,
}

/// Runs the probe once, bounded by `timeout`.
pub(crate) async fn check(
    probe: &Probe,
    timeout: Duration,
    ctx: &ProbeContext,
) -> Result<(), String> {
    let attempt = async {
        match probe {
            Probe::None => Ok(()),
            Probe::Completion => Err("a one-shot job is done when it exits 0".to_string()),
            Probe::Tcp(addr) => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect to {addr}: {e}")),
            Probe::Http { url } => http_get(url).await,
            Probe::Https {
                url,
                ca,
                client_cert,
            } => https_get(url, Verify::Ca(ca), client_cert.as_ref()).await,
            Probe::HttpsLoopbackUnverified { url } => {
                https_get(url, Verify::LoopbackOnly, None).await
            }
            Probe::Exec { command, args } => exec(command, args, ctx).await,
            Probe::Custom(f) => f().await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {timeout:?}")),
    }
}

/// Kills the probe's process group if the probe is abandoned before it exits.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn exec(command: &PathBuf, args: &[String], ctx: &ProbeContext) -> Result<(), String> {
    let launch = Launch {
        command,
        args,
        env: &ctx.env,
        working_dir: ctx.working_dir.as_deref(),
        cgroup_procs: None,
        capture_output: false,
    };
    let (pid, exited) = {
        let _guard = process::spawn_lock();
        let spawned = process::spawn(&launch)
            .map_err(|e| format!("exec probe {}: {e}", command.display()))?;
        (spawned.pid, (ctx.watch)(spawned.pid))
    };
    let mut guard = KillOnDrop(Some(pid));
    let status = exited.await.map_err(|_| "supervisor stopped".to_owned())?;
    guard.0 = None;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "exec probe {} exited with {status}",
            command.display()
        ))
    }
}

/// Splits `http://host[:port][/path]` into host, port, authority and path.
fn parse_http_url(url: &str) -> Result<(String, u16, &str, &str), String> {
    parse_url(url, "http://", 80)
}

/// Splits `https://host[:port][/path]` into host, port, authority and path.
fn parse_https_url(url: &str) -> Result<(String, u16, &str, &str), String> {
    parse_url(url, "https://", 443)
}

fn parse_url<'u>(
    url: &'u str,
    scheme: &str,
    default_port: u16,
) -> Result<(String, u16, &'u str, &'u str), String> {
    let rest = url
        .strip_prefix(scheme)
        .ok_or_else(|| format!("unsupported url {url}: expected {scheme}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad = || format!("invalid url {url}");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, port.parse().map_err(|_| bad())?),
            None if after.is_empty() => (host, default_port),
            None => return Err(bad()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port, authority, path))
}

/// A minimal HTTP/1.1 GET: ready on a 2xx status line.
async fn http_get(url: &str) -> Result<(), String> {
    let (host, port, authority, path) = parse_http_url(url)?;
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    get_status(stream, url, authority, path).await
}

/// How an HTTPS probe checks the server.
enum Verify<'a> {
    /// Against this PEM CA bundle, with the URL's host as the expected name.
    Ca(&'a PathBuf),
    /// Not at all, and only to loopback IP addresses.
    LoopbackOnly,
}

/// The same GET over TLS 1.2/1.3 (rustls, `ring` provider).
async fn https_get(
    url: &str,
    verify: Verify<'_>,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> Result<(), String> {
    let (host, port, authority, path) = parse_https_url(url)?;
    if matches!(verify, Verify::LoopbackOnly) {
        let loopback = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "{url}: an unverified https probe may only target a loopback IP address"
            ));
        }
    }
    let config = tls_config(&verify, client_cert).map_err(|e| format!("{url}: {e}"))?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| format!("{url}: invalid server name {host:?}: {e}"))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls handshake with {url}: {e}"))?;
    get_status(tls, url, authority, path).await
}

use crate::tls::provider;

/// Builds the client configuration, reading the PEM files named in `verify` and
/// `client_cert`. Errors name the file, never its contents.
fn tls_config(
    verify: &Verify<'_>,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> Result<rustls::ClientConfig, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let client = match client_cert {
        Some((cert, key)) => Some((read(cert)?, read(key)?, cert)),
        None => None,
    };
    match verify {
        Verify::Ca(ca) => crate::tls::client_config(
            &ca.display().to_string(),
            &read(ca)?,
            client
                .as_ref()
                .map(|(c, k, _)| (c.as_slice(), k.as_slice())),
        ),
        Verify::LoopbackOnly => {
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())));
            match client {
                None => Ok(builder.with_no_client_auth()),
                Some((cert, key, path)) => {
                    let what = path.display().to_string();
                    let chain = crate::tls::certs(&what, "client certificate", &cert)?;
                    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                        format!("{what}: client key: {}", crate::tls::pem_error(&e))
                    })?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| format!("client certificate {what}: {e}"))
                }
            }
        }
    }
}

/// Accepts any server certificate but still checks the handshake signatures (so the
/// connection is at least with the holder of the presented key). Used only for
/// loopback health endpoints; see [`Probe::HttpsLoopbackUnverified`].
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends the GET on an open connection and judges the status line.
async fn get_status<S>(mut stream: S, url: &str, authority: &str, path: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: cairn-supervisor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send to {url}: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("send to {url}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read from {url}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|_| version.starts_with("HTTP/"))
        .ok_or_else(|| format!("{url}: malformed response {line:?}"))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("{url}: http status {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:2379/health").unwrap(),
            ("127.0.0.1".into(), 2379, "127.0.0.1:2379", "/health")
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost".into(), 80, "localhost", "/")
        );
        assert_eq!(
            parse_http_url("http://[::1]:8080/x?y=1").unwrap(),
            ("::1".into(), 8080, "[::1]:8080", "/x?y=1")
        );
        assert!(parse_http_url("https://x/").is_err());
        assert_eq!(
            parse_https_url("https://127.0.0.1:6443/readyz").unwrap(),
            ("127.0.0.1".into(), 6443, "127.0.0.1:6443", "/readyz")
        );
        assert_eq!(parse_https_url("https://k8s").unwrap().1, 443);
        assert!(parse_https_url("http://x/").is_err());
        assert!(parse_http_url("http://x:notaport/").is_err());
        assert!(parse_http_url("http:///").is_err());
    }

    fn ctx() -> ProbeContext {
        ProbeContext {
            env: Vec::new(),
            working_dir: None,
            watch: Arc::new(|_| oneshot::channel().1),
        }
    }

    async fn serve_once(response: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn http_status_decides() {
        let addr = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let probe = Probe::Http {
            url: format!("http://{addr}/healthz"),
        };
        check(&probe, Duration::from_secs(2), &ctx()).await.unwrap();

        let addr = serve_once("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
        let probe = Probe::Http {
            url: format!("http://{addr}/"),
        };
        let err = check(&probe, Duration::from_secs(2), &ctx())
            .await
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_and_custom() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        check(&Probe::Tcp(addr), Duration::from_secs(2), &ctx())
            .await
            .unwrap();
        drop(listener);
        assert!(
            check(&Probe::Tcp(addr), Duration::from_secs(2), &ctx())
                .await
                .is_err()
        );
        let probe = Probe::custom(|| async { Err("etcd unhealthy".to_owned()) });
        assert_eq!(
            check(&probe, Duration::from_secs(1), &ctx()).await,
            Err("etcd unhealthy".to_owned())
        );
        let slow = Probe::custom(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        });
        let err = check(&slow, Duration::from_millis(50), &ctx())
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM
    /// files in `dir`.
    struct TestPki {
        dir: tempfile::TempDir,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
        ca_der: CertificateDer<'static>,
    }

    impl TestPki {
        fn new() -> TestPki {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let dir = tempfile::tempdir().unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let issuer = Issuer::from_params(&ca_params, &ca_key);
            let server_key = KeyPair::generate().unwrap();
            let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&server_key, &issuer)
                .unwrap();
            let client_key = KeyPair::generate().unwrap();
            let client = CertificateParams::new(vec!["client".to_owned()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            let write =
                |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
            write("ca.crt", ca.pem());
            write("client.crt", client.pem());
            write("client.key", client_key.serialize_pem());
            // A second, unrelated CA.
            let other_key = KeyPair::generate().unwrap();
            write(
                "other.crt",
                ca_params.self_signed(&other_key).unwrap().pem(),
            );
            TestPki {
                server_chain: vec![server.der().clone()],
                server_key: PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
                ca_der: ca.der().clone(),
                dir,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Serves `connections` TLS connections answering 200; with `require_client`
        /// only clients with a certificate of the CA get through the handshake.
        async fn serve(&self, require_client: bool, connections: usize) -> SocketAddr {
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = if require_client {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(self.ca_der.clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            let config = builder
                .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                for _ in 0..connections {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(mut tls) = acceptor.accept(tcp).await {
                            let mut buf = [0u8; 1024];
                            let _ = tls.read(&mut buf).await;
                            let _ = tls
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            let _ = tls.shutdown().await;
                        }
                    });
                }
            });
            addr
        }
    }

    #[tokio::test]
    async fn https_verifies_the_server_and_presents_a_client_cert() {
        let pki = TestPki::new();
        let addr = pki.serve(true, 4).await;
        let url = format!("https://{addr}/readyz");
        let client = Some((pki.path("client.crt"), pki.path("client.key")));
        let probe = Probe::Https {
            url: url.clone(),
            ca: pki.path("ca.crt"),
            client_cert: client.clone(),
        };
        check(&probe, Duration::from_secs(5), &ctx()).await.unwrap();

        // Another CA: the server is not trusted.
        let probe = Probe::Https {
            url: url.clone(),
            ca: pki.path("other.crt"),
            client_cert: client.clone(),
        };
        let err = check(&probe, Duration::from_secs(5), &ctx())
            .await
            .unwrap_err();
        assert!(err.contains("tls handshake"), "{err}");

        // No client certificate: the server refuses the handshake.
        let probe = Probe::Https {
            url: url.clone(),
            ca: pki.path("ca.crt"),
            client_cert: None,
        };
        assert!(check(&probe, Duration::from_secs(5), &ctx()).await.is_err());

        // A missing file is named.
        let probe = Probe::Https {
            url,
            ca: pki.path("missing.crt"),
            client_cert: None,
        };
        let err = check(&probe, Duration::from_secs(5), &ctx())
            .await
            .unwrap_err();
        assert!(err.contains("missing.crt"), "{err}");
    }

    #[tokio::test]
    async fn unverified_https_is_for_loopback_only() {
        let pki = TestPki::new();
        let addr = pki.serve(false, 1).await;
        let probe = Probe::HttpsLoopbackUnverified {
            url: format!("https://{addr}/healthz"),
        };
        check(&probe, Duration::from_secs(5), &ctx()).await.unwrap();

        for url in [
            "https://localhost:1/healthz",
            "https://192.0.2.1:443/healthz",
        ] {
            let probe = Probe::HttpsLoopbackUnverified { url: url.into() };
            let err = check(&probe, Duration::from_secs(5), &ctx())
                .await
                .unwrap_err();
            assert!(err.contains("loopback"), "{err}");
        }
    }
}
