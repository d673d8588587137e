//! Smart HTTP over HTTPS: `git http-backend` as CGI behind a token check.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue,
    WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;

use crate::tls::Tls;

/// Debian's git CGI program.
const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// A git server speaking smart HTTP over HTTPS on 127.0.0.1, serving the bare
/// repositories under a root directory through the real `git http-backend`.
///
/// Every request needs `Authorization: Bearer <token>` or Basic auth whose password
/// is the token (any user name); others get 401. Authenticated clients may fetch
/// and push. The server runs on a thread with a tokio runtime of its own; it stops
/// on [`stop`](Self::stop) or drop and comes back on the same port with the same
/// certificate on [`restart`](Self::restart).
pub struct HttpsGitServer {
    shared: Arc<Shared>,
    port: u16,
    ca_pem: String,
    running: Option<Running>,
}

/// What the request handlers need.
struct Shared {
    root: PathBuf,
    token: String,
    tls: Arc<rustls::ServerConfig>,
    requests: AtomicU64,
}

/// A serving thread.
struct Running {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl HttpsGitServer {
    /// Serves the repositories under `root` on a free port of 127.0.0.1.
    pub fn start(root: &Path, token: &str) -> anyhow::Result<Self> {
        Self::start_on(root, token, 0)
    }

    /// Serves the repositories under `root` on 127.0.0.1:`port` (0: a free port).
    pub fn start_on(root: &Path, token: &str, port: u16) -> anyhow::Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("the git server root {}", root.display()))?;
        let tls = Tls::generate()?;
        let listener = bind(port)?;
        let port = listener
            .local_addr()
            .context("the listener's address")?
            .port();
        let shared = Arc::new(Shared {
            root,
            token: token.to_owned(),
            tls: tls.config,
            requests: AtomicU64::new(0),
        });
        let running = Some(spawn(listener, shared.clone())?);
        Ok(HttpsGitServer {
            shared,
            port,
            ca_pem: tls.ca_pem,
            running,
        })
    }

    /// The clone URL of `repo` (a path relative to the root, like `demo.git`).
    pub fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.port)
    }

    /// The CA certificate (PEM) that the server's certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The port the server listens (or listened) on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The token the server accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// How many HTTP requests arrived so far, refused ones included, across restarts.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Stops listening and drops open connections; connecting is refused afterwards.
    /// Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            // The thread is gone already if sending fails; joining tells.
            let _ = running.stop.send(());
            if running.thread.join().is_err() {
                eprintln!("cairn-testgit: the HTTPS server thread panicked");
            }
        }
    }

    /// Serves again on the same port with the same certificate (stopping first if
    /// still running).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let listener = bind(self.port)?;
        self.running = Some(spawn(listener, self.shared.clone())?);
        Ok(())
    }
}

impl Drop for HttpsGitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Listens on 127.0.0.1:`port`.
fn bind(port: u16) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    Ok(listener)
}

/// Serves `listener` on a new thread with its own runtime until told to stop.
fn spawn(listener: std::net::TcpListener, shared: Arc<Shared>) -> anyhow::Result<Running> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("cairn-testgit-https".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(listener, shared, stop_rx).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
            // Dropping the runtime cancels the connections and kills their CGIs.
        })
        .context("spawning the HTTPS server thread")?;
    ready_rx
        .recv()
        .context("the HTTPS server thread ended before it was ready")?
        .context("starting the HTTPS server's runtime")?;
    Ok(Running {
        stop: stop_tx,
        thread,
    })
}

/// Accepts connections until `stop` fires (or its sender is gone).
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.clone());
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(connection(acceptor.clone(), tcp, peer, shared.clone()));
                }
                Err(e) => {
                    eprintln!("cairn-testgit: accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves HTTP/1.1 on one TLS connection. Failed handshakes (say, a client that
/// does not trust the CA) just end the connection.
async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let service = hyper::service::service_fn(move |request| handle(request, peer, shared.clone()));
    // Errors here are clients going away mid-request.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// Checks the token, then hands the request to `git http-backend`.
async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let Some(user) = authenticate(request.headers(), &shared.token) else {
        let mut response = plain(StatusCode::UNAUTHORIZED, "token required\n");
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cairn-test\""),
        );
        return Ok(response);
    };
    let what = format!("{} {}", request.method(), request.uri());
    Ok(cgi(request, peer, &user, &shared.root)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cairn-testgit: {what}: {e:#}");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git http-backend failed\n",
            )
        }))
}

/// A text response.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The user name when the request carries the token (Bearer, or as the Basic
/// password), `None` otherwise.
fn authenticate(headers: &HeaderMap, token: &str) -> Option<String> {
    let (scheme, credentials) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("Bearer") {
        return (credentials == token).then(|| "token".to_owned());
    }
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    (password == token).then(|| if user.is_empty() { "token" } else { user }.to_owned())
}

/// Runs `git http-backend` for an authenticated request: the request body goes to
/// its stdin, its CGI output becomes the response. Setting `REMOTE_USER` enables
/// pushing (receive-pack).
async fn cgi(
    request: Request<Incoming>,
    peer: SocketAddr,
    user: &str,
    root: &Path,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let mut cmd = Command::new(HTTP_BACKEND);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", peer.ip().to_string());
    for (header, var) in [
        (CONTENT_TYPE.as_str(), "CONTENT_TYPE"),
        (CONTENT_LENGTH.as_str(), "CONTENT_LENGTH"),
        (CONTENT_ENCODING.as_str(), "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = parts.headers.get(header).and_then(|v| v.to_str().ok()) {
            cmd.env(var, value);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {HTTP_BACKEND}"))?;
    let stdin = child.stdin.take().context("git http-backend's stdin")?;
    let (fed, output) = tokio::join!(feed(body, stdin), child.wait_with_output());
    let output = output.context("waiting for git http-backend")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("cairn-testgit: git http-backend: {}", stderr.trim());
    }
    if output.stdout.is_empty() {
        fed?;
        bail!("git http-backend wrote nothing ({})", output.status);
    }
    // A backend that answers before reading all the body (an error) breaks the
    // pipe; its answer still counts.
    parse_cgi(Bytes::from(output.stdout))
}

/// Streams the request body to the CGI's stdin, closing it at the end.
async fn feed(mut body: Incoming, mut stdin: ChildStdin) -> anyhow::Result<()> {
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the request body")?;
        if let Some(data) = frame.data_ref() {
            stdin
                .write_all(data)
                .await
                .context("writing the request body to git http-backend")?;
        }
    }
    Ok(())
}

/// Turns CGI output (headers, `Status:` among them, a blank line, the body) into a
/// response.
fn parse_cgi(output: Bytes) -> anyhow::Result<Response<Full<Bytes>>> {
    let mut response = Response::builder();
    let mut at = 0;
    loop {
        let end = output[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|n| at + n)
            .context("git http-backend's output ended inside its headers")?;
        let line = std::str::from_utf8(&output[at..end])
            .context("a CGI header line that is not UTF-8")?
            .trim_end_matches('\r');
        at = end + 1;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code: u16 = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse().ok())
                .with_context(|| format!("bad CGI status {value:?}"))?;
            response = response.status(code);
        } else {
            response = response.header(name, value);
        }
    }
    response
        .body(Full::new(output.slice(at..)))
        .context("building the response from git http-backend's headers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            authenticate(&headers, "s3cret")
        };
        assert_eq!(with("Bearer s3cret").as_deref(), Some("token"));
        assert_eq!(with("bearer s3cret").as_deref(), Some("token"));
        assert_eq!(with("Bearer wrong"), None);
        // alice:s3cret, :s3cret, alice:wrong
        assert_eq!(with("Basic YWxpY2U6czNjcmV0").as_deref(), Some("alice"));
        assert_eq!(with("Basic OnMzY3JldA==").as_deref(), Some("token"));
        assert_eq!(with("Basic YWxpY2U6d3Jvbmc="), None);
        assert_eq!(with("Digest s3cret"), None);
        assert_eq!(authenticate(&HeaderMap::new(), "s3cret"), None);
    }

    #[test]
    fn cgi_output_is_parsed() {
        let out = "Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope\n";
        let response = parse_cgi(Bytes::from(out)).unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(
            hyper::body::Body::size_hint(response.body()).exact(),
            Some(5)
        );

        let response = parse_cgi(Bytes::from("Expires: never\n\nbody")).unwrap();
        assert_eq!(response.status(), 200);
        assert!(parse_cgi(Bytes::from("Status: 200\r\n")).is_err());
    }
}
