//! A small stub resolver for A records: the names of a search (see
//! [`ResolvConf::candidates`]) are queried in order over UDP against each
//! nameserver in turn, `attempts` rounds, each query waiting at most `timeout`
//! and never past the caller's deadline. The first name with A records wins;
//! NXDOMAIN or an empty answer moves on to the next name, as does a name no
//! server answered (the failure is kept for the error message).
//!
//! Not for: TCP fallback on truncated replies, AAAA, caching, DNSSEC.

mod conf;
mod wire;

use std::fmt;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub use conf::ResolvConf;

/// No A record could be found for a name; says what was asked of whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError {
    pub name: String,
    /// What the resolver was configured with, e.g. `/etc/resolv.conf (search ..., ndots 5)`.
    pub config: String,
    /// Each name tried, with what happened to it.
    pub tried: Vec<(String, String)>,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resolving {:?} (with {}): no A record",
            self.name, self.config
        )?;
        for (i, (candidate, what)) in self.tried.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{candidate}: {what}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ResolveError {}

/// The IPv4 addresses of `name`: the address itself for an IPv4 literal,
/// else the A records found through `conf`'s nameservers and search list.
pub fn resolve(
    name: &str,
    conf: &ResolvConf,
    deadline: Instant,
) -> Result<Vec<Ipv4Addr>, ResolveError> {
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(vec![ip]);
    }
    let mut tried = Vec::new();
    for candidate in conf.candidates(name) {
        match lookup(&candidate, conf, deadline) {
            Lookup::Found(addrs) => return Ok(addrs),
            Lookup::Missing(what) => tried.push((candidate, what)),
            Lookup::Failed(errors) => tried.push((candidate, errors.join(", "))),
        }
    }
    let servers: Vec<String> = conf.nameservers.iter().map(ToString::to_string).collect();
    Err(ResolveError {
        name: name.to_string(),
        config: format!(
            "{}: nameservers {}, search [{}], ndots {}",
            conf.path.display(),
            servers.join(" "),
            conf.search.join(" "),
            conf.ndots
        ),
        tried,
    })
}

/// What became of one fully qualified name.
enum Lookup {
    Found(Vec<Ipv4Addr>),
    /// A server said the name has no A record (NXDOMAIN or an empty answer).
    Missing(String),
    /// No server gave a usable answer; the reasons.
    Failed(Vec<String>),
}

fn lookup(fqdn: &str, conf: &ResolvConf, deadline: Instant) -> Lookup {
    let query = match wire::encode_query(0, fqdn) {
        Ok(q) => q,
        Err(e) => return Lookup::Failed(vec![format!("cannot be queried: {e}")]),
    };
    let mut errors: Vec<String> = Vec::new();
    let mut note = |e: String| {
        if !errors.contains(&e) {
            errors.push(e);
        }
    };
    for _round in 0..conf.attempts {
        for &server in &conf.nameservers {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                note("the time budget ran out".into());
                return Lookup::Failed(errors);
            }
            match exchange(server, &query, fqdn, conf.timeout.min(left)) {
                Ok(reply) if !reply.addrs.is_empty() => return Lookup::Found(reply.addrs),
                Ok(reply) if reply.rcode == wire::RCODE_NXDOMAIN => {
                    return Lookup::Missing(format!("NXDOMAIN from {server}"));
                }
                Ok(reply) if reply.truncated => note(format!(
                    "{server}: reply truncated without A records (no TCP fallback)"
                )),
                Ok(reply) if reply.rcode == wire::RCODE_NOERROR => {
                    return Lookup::Missing(format!("no A record (empty answer) from {server}"));
                }
                Ok(reply) => note(format!("{} from {server}", wire::rcode_name(reply.rcode))),
                Err(e) => note(format!("{server}: {e}")),
            }
        }
    }
    Lookup::Failed(errors)
}

/// One query to one server over UDP; replies with another id or question are
/// ignored (stale or forged) until `wait` is over.
fn exchange(
    server: SocketAddr,
    query: &[u8],
    fqdn: &str,
    wait: Duration,
) -> Result<wire::Reply, String> {
    let id = random_id();
    let mut query = query.to_vec();
    query[..2].copy_from_slice(&id.to_be_bytes());
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("binding a UDP socket: {e}"))?;
    // Connected: the kernel drops datagrams from other sources and reports
    // ICMP port-unreachable as ECONNREFUSED.
    socket
        .connect(server)
        .map_err(|e| format!("connecting the UDP socket: {e}"))?;
    socket
        .send(&query)
        .map_err(|e| format!("sending the query: {e}"))?;
    let until = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no reply within {wait:?}"));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("setting the UDP read timeout: {e}"))?;
        match socket.recv(&mut buf) {
            Ok(n) => match wire::decode_reply(&buf[..n], fqdn) {
                Ok(reply) if reply.id == id => return Ok(reply),
                Ok(_) | Err(wire::WireError::NotOurs { .. }) => {}
                Err(e) => return Err(format!("malformed reply: {e}")),
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no reply within {wait:?}"));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return Err("connection refused (no DNS server listening)".into());
            }
            Err(e) => return Err(format!("receiving the reply: {e}")),
        }
    }
}

/// A query id that is hard to guess: std's per-process random hash keys mixed
/// with the time (std has no public random number generator).
fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    (h.finish() & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::thread;

    /// A fake server on 127.0.0.1 that answers each query with `answer(query)`
    /// for up to `n` queries; returns its address.
    fn fake_server(n: usize, answer: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..n {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                if let Some(reply) = answer(&buf[..len]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        addr
    }

    /// A reply to `query`: for `web.test` the A record 10.1.2.3, for other
    /// names NXDOMAIN.
    fn answer_web(query: &[u8]) -> Option<Vec<u8>> {
        reply_web(query, 3)
    }

    /// Like [`answer_web`], but other names get SERVFAIL.
    fn answer_web_or_servfail(query: &[u8]) -> Option<Vec<u8>> {
        reply_web(query, 2)
    }

    fn reply_web(query: &[u8], miss_rcode: u8) -> Option<Vec<u8>> {
        let mut reply = query.to_vec();
        let name_is_web = query.get(12..22) == Some(b"\x03web\x04test\x00".as_slice());
        reply[2] = 0x81;
        reply[3] = 0x80 | if name_is_web { 0 } else { miss_rcode };
        if name_is_web {
            reply[7] = 1;
            reply.extend_from_slice(
                b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x0a\x01\x02\x03",
            );
        }
        Some(reply)
    }

    fn conf(text: &str) -> ResolvConf {
        ResolvConf::parse(Path::new("/test/resolv.conf"), text)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn literal_needs_no_server() {
        let c = conf("nameserver 127.0.0.1:1\n");
        assert_eq!(
            resolve("10.0.0.7", &c, soon()),
            Ok(vec![Ipv4Addr::new(10, 0, 0, 7)])
        );
    }

    /// NXDOMAIN for the first search domain, or SERVFAIL from it, moves on to
    /// the next name.
    #[test]
    fn walks_the_search_list_until_a_name_has_records() {
        for answer in [answer_web, answer_web_or_servfail] {
            let server = fake_server(10, answer);
            let c = conf(&format!(
                "nameserver {server}\nsearch miss.example test\noptions ndots:3 attempts:1\n"
            ));
            assert_eq!(
                resolve("web", &c, soon()),
                Ok(vec![Ipv4Addr::new(10, 1, 2, 3)])
            );
        }
        let server = fake_server(10, answer_web_or_servfail);
        let c = conf(&format!("nameserver {server}\noptions attempts:2\n"));
        let err = resolve("db.", &c, soon()).map(|_| ()).err();
        let err = err.unwrap_or_else(|| panic!("db resolved"));
        assert_eq!(
            err.tried,
            vec![("db".to_string(), format!("SERVFAIL from {server}"))]
        );
    }

    #[test]
    fn error_names_every_candidate_and_server() {
        let server = fake_server(3, answer_web);
        let c = conf(&format!(
            "nameserver {server}\nsearch a.example b.example\n"
        ));
        let err = resolve("db", &c, soon()).map(|_| ()).err();
        let err = err.unwrap_or_else(|| panic!("db resolved"));
        assert_eq!(
            err.tried,
            vec![
                (
                    "db.a.example".to_string(),
                    format!("NXDOMAIN from {server}")
                ),
                (
                    "db.b.example".to_string(),
                    format!("NXDOMAIN from {server}")
                ),
                ("db".to_string(), format!("NXDOMAIN from {server}")),
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with("resolving \"db\" (with /test/resolv.conf"),
            "{text}"
        );
        assert!(
            text.contains("search [a.example b.example], ndots 1"),
            "{text}"
        );
    }

    #[test]
    fn silent_server_times_out_and_says_so() {
        let server = fake_server(10, |_| None);
        let c = conf(&format!(
            "nameserver {server}\noptions timeout:1 attempts:1\n"
        ));
        let start = Instant::now();
        let err = resolve("web.", &c, Instant::now() + Duration::from_millis(300))
            .map(|_| ())
            .err()
            .unwrap_or_else(|| panic!("resolved without a server"));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(err.tried.len(), 1);
        assert_eq!(err.tried[0].0, "web");
        assert!(err.tried[0].1.contains("no reply within"), "{err}");
    }
}
