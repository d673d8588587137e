//! etcd: the cluster's key-value store.
//!
//! Configuration: a single member named after the node, data in `/var/lib/etcd`,
//! client and peer URLs on 127.0.0.1 only. Plain HTTP until the node has a secrets
//! bundle; with [`EtcdTls`] (the control plane's mode) client and peer URLs are
//! `https://`, served with the bundle's `etcd/server` and `etcd/peer` certificates,
//! and both sides require client certificates signed by `etcd/ca`.
//! Ordering: etcd depends on nothing; the API server depends on it.
//! Readiness: `GET /readyz` on the plain-HTTP metrics listener (127.0.0.1 only),
//! which etcd answers 200 only once the member has a leader and a linearizable
//! read succeeds — not "the port is open". The probe is a small HTTP GET in the
//! supervisor, so PID 1 links no gRPC client and needs no client certificate for
//! it; the client port stays mTLS-only.
//! Restart: always, with the supervisor's backoff; stopped with SIGTERM and given
//! 15 s to close its WAL cleanly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_machine_config::MachineConfig;
use cairn_pki::paths;
use cairn_supervisor::{Probe, ProbeSettings, RestartPolicy, ServiceSpec};

use crate::Paths;

pub const NAME: &str = "etcd";
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const METRICS_PORT: u16 = 2381;

/// Everything that decides how etcd runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub binary: PathBuf,
    pub member_name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    /// `None`: plain HTTP on loopback (a node without a secrets bundle).
    pub tls: Option<EtcdTls>,
    /// Another address clients may reach etcd on besides loopback (the node's, for
    /// the other control-plane nodes and operators' tools); only with TLS, where
    /// every client needs a certificate from the etcd CA.
    pub extra_client_address: Option<std::net::IpAddr>,
}

/// The certificate files etcd serves and is probed with (PEM paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// Trusted CA for clients and peers (`etcd/ca`).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    /// A client certificate for health checks over the client port
    /// (`etcd/healthcheck-client`), for tools and tests.
    pub healthcheck_cert: PathBuf,
    pub healthcheck_key: PathBuf,
}

impl EtcdTls {
    /// The files of a cairn-pki bundle rooted at `secrets`.
    pub fn from_bundle(secrets: &Path) -> EtcdTls {
        EtcdTls {
            ca: secrets.join(paths::ETCD_CA.crt),
            server_cert: secrets.join(paths::ETCD_SERVER.crt),
            server_key: secrets.join(paths::ETCD_SERVER.key),
            peer_cert: secrets.join(paths::ETCD_PEER.crt),
            peer_key: secrets.join(paths::ETCD_PEER.key),
            healthcheck_cert: secrets.join(paths::ETCD_HEALTHCHECK_CLIENT.crt),
            healthcheck_key: secrets.join(paths::ETCD_HEALTHCHECK_CLIENT.key),
        }
    }
}

impl EtcdConfig {
    pub fn from_machine(cfg: &MachineConfig, paths: &Paths) -> EtcdConfig {
        EtcdConfig {
            binary: paths.bin.join("etcd"),
            member_name: cfg.machine.hostname.to_string(),
            data_dir: paths.var_lib.join("etcd"),
            client_port: CLIENT_PORT,
            peer_port: PEER_PORT,
            metrics_port: METRICS_PORT,
            tls: None,
            extra_client_address: None,
        }
    }

    /// The same member serving TLS with the bundle rooted at `secrets`.
    pub fn with_tls(mut self, tls: EtcdTls) -> EtcdConfig {
        self.tls = Some(tls);
        self
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The readiness endpoint on the metrics listener: 200 once the member has a
    /// leader and serves linearizable reads.
    pub fn readyz_url(&self) -> String {
        format!("http://127.0.0.1:{}/readyz", self.metrics_port)
    }

    /// `http://127.0.0.1:2379`, or `https://` with TLS.
    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let peer = format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port);
        let client = self.client_url();
        let mut listen = client.clone();
        if let Some(ip) = self
            .extra_client_address
            .filter(|ip| self.tls.is_some() && !ip.is_loopback())
        {
            let host = std::net::SocketAddr::new(ip, self.client_port);
            listen.push_str(&format!(",https://{host}"));
        }
        let mut args = vec![
            format!("--name={}", self.member_name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={listen}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}={peer}", self.member_name),
            "--initial-cluster-state=new".into(),
            format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ),
            // A small appliance disk: keep the backend bounded and compacted.
            "--quota-backend-bytes=2147483648".into(),
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=1h".into(),
            "--snapshot-count=10000".into(),
            "--log-level=warn".into(),
        ];
        if let Some(tls) = &self.tls {
            let path = |p: &PathBuf| p.display().to_string();
            args.extend([
                format!("--cert-file={}", path(&tls.server_cert)),
                format!("--key-file={}", path(&tls.server_key)),
                format!("--trusted-ca-file={}", path(&tls.ca)),
                "--client-cert-auth=true".into(),
                format!("--peer-cert-file={}", path(&tls.peer_cert)),
                format!("--peer-key-file={}", path(&tls.peer_key)),
                format!("--peer-trusted-ca-file={}", path(&tls.ca)),
                "--peer-client-cert-auth=true".into(),
            ]);
        }
        args
    }
}

/// The supervised service.
pub fn spec(cfg: &EtcdConfig) -> ServiceSpec {
    ServiceSpec::new(NAME, &cfg.binary)
        .args(cfg.args())
        .env("PATH", "/usr/bin:/bin")
        .env("GOMAXPROCS", "2")
        .readiness(Probe::Http {
            url: cfg.readyz_url(),
        })
        .probe_settings(ProbeSettings {
            initial_period: Duration::from_millis(100),
            ..ProbeSettings::default()
        })
        .restart(RestartPolicy::Always)
        .stop_timeout(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EtcdConfig {
        let mc =
            MachineConfig::parse("t", MachineConfig::default_document()).expect("default config");
        EtcdConfig::from_machine(&mc, &Paths::node())
    }

    #[test]
    fn listens_on_loopback_only() {
        let args = cfg().args();
        for a in args.iter().filter(|a| a.contains("urls")) {
            assert!(a.contains("127.0.0.1"), "{a}");
        }
        assert!(args.contains(&"--name=cairn".to_string()));
        assert!(args.contains(&"--data-dir=/var/lib/etcd".to_string()));
        assert!(args.contains(&"--initial-cluster=cairn=http://127.0.0.1:2380".to_string()));
    }

    #[test]
    fn the_node_address_is_served_only_with_tls() {
        let mut plain = cfg();
        plain.extra_client_address = Some("10.0.2.15".parse().expect("ip"));
        assert!(
            plain
                .args()
                .contains(&"--listen-client-urls=http://127.0.0.1:2379".to_string())
        );
        let tls = plain.with_tls(EtcdTls::from_bundle(Path::new("/s")));
        assert!(tls.args().contains(
            &"--listen-client-urls=https://127.0.0.1:2379,https://10.0.2.15:2379".to_string()
        ));
    }

    #[test]
    fn plain_mode_has_no_tls_flags() {
        let args = cfg().args();
        assert!(
            args.iter()
                .all(|a| !a.contains("https") && !a.contains("cert")),
            "{args:?}"
        );
        assert_eq!(cfg().client_url(), "http://127.0.0.1:2379");
    }

    #[test]
    fn tls_mode_uses_the_bundle() {
        let c = cfg().with_tls(EtcdTls::from_bundle(Path::new("/s")));
        let args = c.args();
        assert_eq!(c.client_url(), "https://127.0.0.1:2379");
        for a in args
            .iter()
            .filter(|a| a.contains("urls") && !a.contains("metrics"))
        {
            assert!(a.contains("https://127.0.0.1:"), "{a}");
        }
        for flag in [
            "--cert-file=/s/pki/etcd/server.crt",
            "--key-file=/s/pki/etcd/server.key",
            "--trusted-ca-file=/s/pki/etcd/ca.crt",
            "--client-cert-auth=true",
            "--peer-cert-file=/s/pki/etcd/peer.crt",
            "--peer-key-file=/s/pki/etcd/peer.key",
            "--peer-trusted-ca-file=/s/pki/etcd/ca.crt",
            "--peer-client-cert-auth=true",
            "--initial-cluster=cairn=https://127.0.0.1:2380",
        ] {
            assert!(
                args.contains(&flag.to_string()),
                "{flag} missing from {args:?}"
            );
        }
        spec(&c).validate().expect("valid spec");
    }

    #[test]
    fn spec_is_valid() {
        let s = spec(&cfg());
        s.validate().expect("valid spec");
        assert_eq!(s.name, NAME);
        assert!(s.depends_on.is_empty());
    }
}
