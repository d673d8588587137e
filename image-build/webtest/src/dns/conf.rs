//! `resolv.conf` as glibc reads it, and the list of names a search tries.
//!
//! Read: `nameserver` lines (in order), `search`/`domain` (the last one wins),
//! `options ndots:N timeout:N attempts:N`; comments start with `#` or `;`, other
//! lines are ignored. Without a `nameserver` line the server is 127.0.0.1, as in
//! glibc. One extension, for tests: `nameserver 127.0.0.1:5353` (an address
//! with a port; `[::1]:5353` for IPv6).
//!
//! Not read: `sortlist`, `rotate` and the other options; the local domain is not
//! derived from the hostname when there is no search list.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming another resolv.conf (for tests).
pub const RESOLV_CONF_ENV: &str = "CAIRN_RESOLV_CONF";
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// glibc's limits for the options.
const MAX_NDOTS: usize = 15;
const MAX_TIMEOUT_S: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Where it was read from (for error messages).
    pub path: PathBuf,
    pub nameservers: Vec<SocketAddr>,
    /// Domains without a trailing dot.
    pub search: Vec<String>,
    pub ndots: usize,
    /// Per query and server.
    pub timeout: Duration,
    /// Rounds over all servers.
    pub attempts: u32,
}

impl ResolvConf {
    /// `$CAIRN_RESOLV_CONF`, else `/etc/resolv.conf`.
    pub fn load_default() -> Result<ResolvConf, String> {
        let path = std::env::var_os(RESOLV_CONF_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RESOLV_CONF));
        ResolvConf::load(&path)
    }

    pub fn load(path: &Path) -> Result<ResolvConf, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading resolver configuration {}: {e}", path.display()))?;
        Ok(ResolvConf::parse(path, &text))
    }

    /// Parses leniently, like glibc: a line it does not understand is skipped.
    pub fn parse(path: &Path, text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            path: path.to_path_buf(),
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(server) = words.next().and_then(parse_server) {
                        conf.nameservers.push(server);
                    }
                }
                Some("search" | "domain") => {
                    conf.search = words
                        .map(|d| d.trim_end_matches('.').to_string())
                        .filter(|d| !d.is_empty())
                        .collect();
                }
                Some("options") => {
                    for option in words {
                        conf.option(option);
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers
                .push(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)));
        }
        conf
    }

    fn option(&mut self, option: &str) {
        let Some((key, value)) = option.split_once(':') else {
            return;
        };
        let Ok(n) = value.parse::<u64>() else {
            return;
        };
        match key {
            "ndots" => self.ndots = usize::try_from(n).unwrap_or(MAX_NDOTS).min(MAX_NDOTS),
            "timeout" => self.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_S)),
            "attempts" => {
                self.attempts = u32::try_from(n)
                    .unwrap_or(MAX_ATTEMPTS)
                    .clamp(1, MAX_ATTEMPTS);
            }
            _ => {}
        }
    }

    /// The fully qualified names to query for `name`, in order (without
    /// trailing dots). An absolute name (trailing dot) is only itself. Otherwise
    /// a name with at least `ndots` dots is tried as given first, then with each
    /// search domain; one with fewer dots the other way round.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let as_given = self.ndots <= name.matches('.').count();
        let mut out = Vec::with_capacity(self.search.len() + 1);
        if as_given {
            out.push(name.to_string());
        }
        out.extend(self.search.iter().map(|domain| format!("{name}.{domain}")));
        if !as_given {
            out.push(name.to_string());
        }
        out
    }
}

fn parse_server(word: &str) -> Option<SocketAddr> {
    word.parse::<SocketAddr>().ok().or_else(|| {
        word.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "# written by the kubelet\n\
        search default.svc.cluster.local svc.cluster.local cluster.local\n\
        nameserver 10.96.0.10\n\
        options ndots:5\n";

    fn conf(text: &str) -> ResolvConf {
        ResolvConf::parse(Path::new("/test/resolv.conf"), text)
    }

    #[test]
    fn parses_a_kubernetes_pod_resolv_conf() {
        let c = conf(POD);
        assert_eq!(
            c.nameservers,
            vec!["10.96.0.10:53".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
        assert_eq!(
            c.search,
            vec![
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(c.ndots, 5);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.attempts, 2);
    }

    #[test]
    fn parses_like_glibc() {
        let c = conf(
            "nameserver 127.0.0.1:5353\n\
             nameserver ::1 ; a comment\n\
             nameserver [::1]:54\n\
             nameserver not-an-address\n\
             search a.example b.example.\n\
             domain last.example\n\
             options timeout:99 attempts:0 ndots:40 rotate\n\
             sortlist 10.0.0.0\n",
        );
        let addrs: Vec<String> = c.nameservers.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, vec!["127.0.0.1:5353", "[::1]:53", "[::1]:54"]);
        assert_eq!(c.search, vec!["last.example"]);
        assert_eq!(c.ndots, 15);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.attempts, 1);

        let empty = conf("");
        assert_eq!(empty.nameservers.len(), 1);
        assert_eq!(empty.nameservers[0].to_string(), "127.0.0.1:53");
        assert!(empty.search.is_empty());
        assert_eq!(empty.ndots, 1);
    }

    #[test]
    fn search_list_expansion_with_ndots_5() {
        let c = conf(POD);
        assert_eq!(
            c.candidates("web"),
            vec![
                "web.default.svc.cluster.local",
                "web.svc.cluster.local",
                "web.cluster.local",
                "web"
            ]
        );
        // Fewer than 5 dots: still searched first.
        assert_eq!(
            c.candidates("web.other"),
            vec![
                "web.other.default.svc.cluster.local",
                "web.other.svc.cluster.local",
                "web.other.cluster.local",
                "web.other"
            ]
        );
        // Absolute: only itself.
        assert_eq!(
            c.candidates("web.default.svc.cluster.local."),
            vec!["web.default.svc.cluster.local"]
        );
        // Enough dots: as given first.
        let many = "a.b.c.d.e.f";
        assert_eq!(c.candidates(many)[0], many);
        assert_eq!(c.candidates(many).len(), 4);
    }

    #[test]
    fn search_list_expansion_with_default_ndots() {
        let c = conf("search corp.example\n");
        assert_eq!(c.candidates("host"), vec!["host.corp.example", "host"]);
        assert_eq!(
            c.candidates("www.example.com"),
            vec!["www.example.com", "www.example.com.corp.example"]
        );
        assert_eq!(conf("").candidates("host"), vec!["host"]);
    }
}
