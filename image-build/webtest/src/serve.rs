//! `serve`: the HTTP server, run as PID 1 of a container.
//!
//! The kernel does not apply a default-action signal to a namespace's init, so
//! an init that leaves SIGTERM at its default would ignore `kubectl delete` and
//! be killed after the grace period. Here SIGTERM and SIGINT are blocked in the
//! main thread before any other thread exists (so every thread inherits the
//! mask) and taken synchronously with `sigwait`; blocked signals are queued
//! even for PID 1. That is the same effect as a handler, with no code running
//! in signal context and no `unsafe`. On either signal the termination is
//! recorded in `--term-file` (appended, then the file and its directory
//! fsynced, so the line survives the pod's removal) and the process exits 0.
//!
//! Each connection gets a thread and answers one request (see [`crate::http`]).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

use crate::args::ServeOptions;
use crate::http;

/// How long a connection may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until SIGTERM or SIGINT; `Ok` means a clean exit 0.
pub fn run(opts: &ServeOptions) -> Result<(), String> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| format!("blocking SIGTERM/SIGINT: {e}"))?;

    let hostname = hostname()?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.port));
    let listener = TcpListener::bind(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("reading the listening address: {e}"))?
        .port();
    let shared_name: Arc<str> = Arc::from(hostname.as_str());
    let term_file: Option<Arc<std::path::Path>> = opts.term_file.as_deref().map(Arc::from);
    thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(&listener, &shared_name, term_file))
        .map_err(|e| format!("starting the accept thread: {e}"))?;
    println!(
        "cairn-webtest: serving HTTP on 0.0.0.0:{port} pod={hostname} pid={}",
        std::process::id()
    );

    let signal = signals
        .wait()
        .map_err(|e| format!("waiting for SIGTERM/SIGINT: {e}"))?;
    let name = signal.as_str().trim_start_matches("SIG");
    if let Some(path) = &opts.term_file {
        record_termination(path, &hostname, name)?;
        println!(
            "cairn-webtest: got SIG{name}, recorded in {}; exiting 0",
            path.display()
        );
    } else {
        println!("cairn-webtest: got SIG{name}; exiting 0");
    }
    Ok(())
}

/// The kernel's hostname (the pod's name in Kubernetes).
fn hostname() -> Result<String, String> {
    let name = nix::unistd::gethostname().map_err(|e| format!("reading the hostname: {e}"))?;
    name.into_string()
        .map_err(|n| format!("the hostname {n:?} is not UTF-8"))
}

fn accept_loop(
    listener: &TcpListener,
    hostname: &Arc<str>,
    term_file: Option<Arc<std::path::Path>>,
) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let hostname = Arc::clone(hostname);
                let term_file = term_file.clone();
                let spawned = thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || handle(stream, &hostname, term_file.as_deref()));
                if let Err(e) = spawned {
                    eprintln!("cairn-webtest: no thread for the connection from {peer}: {e}");
                }
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                eprintln!("cairn-webtest: accepting a connection: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request head and answers it. Errors only concern this client,
/// so they are dropped with the connection.
fn handle(mut stream: TcpStream, hostname: &str, term_file: Option<&std::path::Path>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let answer = loop {
        if let Some(end) = http::head_end(&buf) {
            break http::route(&buf[..end], hostname, term_file);
        }
        if buf.len() > http::MAX_HEAD {
            break http::Answer::bad_request();
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let _ = stream.write_all(&answer.to_bytes());
    let _ = stream.flush();
}

/// Appends `graceful-termination pod=<hostname> signal=<NAME> at=<unix seconds>`
/// to `path` and makes it durable: the file, then its directory.
fn record_termination(path: &Path, hostname: &str, signal: &str) -> Result<(), String> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let line = format!("graceful-termination pod={hostname} signal={signal} at={at}\n");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening the term file {}: {e}", path.display()))?;
    file.write_all(line.as_bytes())
        .map_err(|e| format!("appending to the term file {}: {e}", path.display()))?;
    file.sync_all()
        .map_err(|e| format!("fsyncing the term file {}: {e}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsyncing the term file's directory {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_line_is_appended() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("term.log");
        record_termination(&path, "web-0", "TERM").unwrap_or_else(|e| panic!("{e}"));
        record_termination(&path, "web-1", "INT").unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("graceful-termination pod=web-0 signal=TERM at="));
        assert!(lines[1].starts_with("graceful-termination pod=web-1 signal=INT at="));
        let at: u64 = lines[0]
            .rsplit('=')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no time in {text}"));
        assert!(at > 1_700_000_000);
        let missing = record_termination(Path::new("/nonexistent/dir/term.log"), "w", "TERM");
        assert!(missing.is_err_and(|e| e.contains("/nonexistent/dir/term.log")));
    }
}
