//! `get` and `resolve`: the client side of the test workload. Each `get`
//! attempt resolves the host afresh (Service records may appear while a test
//! retries), connects to the addresses in turn and succeeds only on status 200
//! and, with `--expect`, a body containing the text.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::args::GetOptions;
use crate::dns::{self, ResolvConf};
use crate::http::{self, Url};

/// The overall time `resolve` allows for one name (all search domains).
const RESOLVE_BUDGET: Duration = Duration::from_secs(30);
/// How much of a bad response body goes into an error message.
const SNIPPET: usize = 200;

/// `resolve NAME`: the A records on stdout, one a line.
pub fn resolve(name: &str) -> Result<(), String> {
    let conf = ResolvConf::load_default()?;
    let addrs =
        dns::resolve(name, &conf, Instant::now() + RESOLVE_BUDGET).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    for addr in addrs {
        writeln!(out, "{addr}").map_err(|e| format!("writing to stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("writing to stdout: {e}"))
}

/// `get URL`: the body on stdout after a successful attempt; each failed
/// attempt but the last is reported on stderr.
pub fn get(opts: &GetOptions) -> Result<(), String> {
    let url = Url::parse(&opts.url)?;
    let attempts = opts.retries.saturating_add(1);
    let mut n = 1;
    loop {
        match attempt(&url, opts) {
            Ok(body) => {
                let mut out = std::io::stdout().lock();
                return out
                    .write_all(&body)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("writing the body to stdout: {e}"));
            }
            Err(e) if n < attempts => {
                eprintln!(
                    "cairn-webtest: get {}: attempt {n} of {attempts} failed: {e}; retrying in {:?}",
                    opts.url, opts.retry_delay
                );
                std::thread::sleep(opts.retry_delay);
                n += 1;
            }
            Err(e) => return Err(format!("get {} (attempt {n} of {attempts}): {e}", opts.url)),
        }
    }
}

/// One attempt within `opts.timeout`: the body of a 200 response that
/// contains the expected text.
fn attempt(url: &Url, opts: &GetOptions) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + opts.timeout;
    let ips = match url.host.parse::<Ipv4Addr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let conf = ResolvConf::load_default()?;
            dns::resolve(&url.host, &conf, deadline).map_err(|e| e.to_string())?
        }
    };
    let mut failures = Vec::new();
    for ip in ips {
        let addr = SocketAddr::from((ip, url.port));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(format!("no time left to connect to {addr}"));
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return check(fetch(stream, url, deadline), addr, url, opts),
            Err(e) => failures.push(format!("connecting to {addr}: {e}")),
        }
    }
    Err(failures.join("; "))
}

fn check(
    response: Result<http::Response, String>,
    addr: SocketAddr,
    url: &Url,
    opts: &GetOptions,
) -> Result<Vec<u8>, String> {
    let what = format!("GET {} from {addr}", url.path);
    let response = response.map_err(|e| format!("{what}: {e}"))?;
    let snippet = || {
        let end = response.body.len().min(SNIPPET);
        String::from_utf8_lossy(&response.body[..end]).into_owned()
    };
    if response.status != 200 {
        return Err(format!(
            "{what}: status {} {} (body {:?})",
            response.status,
            response.reason,
            snippet()
        ));
    }
    if let Some(expect) = &opts.expect {
        let found = expect.is_empty()
            || response
                .body
                .windows(expect.len())
                .any(|w| w == expect.as_bytes());
        if !found {
            return Err(format!(
                "{what}: status 200 but the body does not contain {expect:?} (body {:?})",
                snippet()
            ));
        }
    }
    Ok(response.body)
}

/// Sends the request and reads the response, all before `deadline`.
fn fetch(mut stream: TcpStream, url: &Url, deadline: Instant) -> Result<http::Response, String> {
    let left = |what: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(format!("timed out {what}"))
        } else {
            Ok(left)
        }
    };
    stream
        .set_write_timeout(Some(left("sending the request")?))
        .map_err(|e| format!("setting the write timeout: {e}"))?;
    stream
        .write_all(&http::request(url))
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let wait = left(&format!("after {} response bytes", buf.len()))?;
        stream
            .set_read_timeout(Some(wait))
            .map_err(|e| format!("setting the read timeout: {e}"))?;
        let eof = match stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("timed out after {} response bytes", buf.len()));
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        };
        if let Some(response) = http::parse_response(&buf, eof)? {
            return Ok(response);
        }
    }
}
