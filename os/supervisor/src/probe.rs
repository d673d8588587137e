//! Readiness probes: TCP connect, plain HTTP GET, exec, or a custom future.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::event::ExitStatusKind;
use crate::process::{self, Launch};

/// A custom readiness check, e.g. an etcd health call.
pub type CustomProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How to decide that a service is ready.
///
/// Non-exhaustive: an `Https` variant (CA + client certificate) is planned.
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
    /// Ready when the command exits 0 within the probe timeout. It runs with the
    /// service's environment and working directory, in its own process group, with
    /// stdio on /dev/null.
    Exec { command: PathBuf, args: Vec<String> },
    /// Ready when the future resolves to `Ok`.
    Custom(CustomProbe),
}

impl Probe {
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
            Self::Tcp(addr) => f.debug_tuple("Tcp").field(addr).finish(),
            Self::Http { url } => f.debug_struct("Http").field("url", url).finish(),
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
            Probe::Tcp(addr) => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect to {addr}: {e}")),
            Probe::Http { url } => http_get(url).await,
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
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported url {url}: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad = || format!("invalid url {url}");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, port.parse().map_err(|_| bad())?),
            None if after.is_empty() => (host, 80),
            None => return Err(bad()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
            None => (authority, 80),
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
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: cairn-supervisor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
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
}
