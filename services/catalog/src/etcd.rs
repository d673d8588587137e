//! etcd: the cluster's key-value store.
//!
//! Configuration: a single member named after the node, data in `/var/lib/etcd`,
//! client and peer URLs on 127.0.0.1 only (TLS arrives with the control plane).
//! Ordering: etcd depends on nothing; the API server depends on it.
//! Readiness: a linearizable read through `etcd-client`, which only succeeds once
//! the member has a leader and has applied its log — not "the port is open".
//! Restart: always, with the supervisor's backoff; stopped with SIGTERM and given
//! 15 s to close its WAL cleanly.

use std::path::PathBuf;
use std::time::Duration;

use cairn_machine_config::MachineConfig;
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
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.client_url();
        vec![
            format!("--name={}", self.member_name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}={peer}", self.member_name),
            "--initial-cluster-state=new".into(),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", self.metrics_port),
            // A small appliance disk: keep the backend bounded and compacted.
            "--quota-backend-bytes=2147483648".into(),
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=1h".into(),
            "--snapshot-count=10000".into(),
            "--log-level=warn".into(),
        ]
    }
}

/// The supervised service.
pub fn spec(cfg: &EtcdConfig) -> ServiceSpec {
    let endpoint = format!("127.0.0.1:{}", cfg.client_port);
    ServiceSpec::new(NAME, &cfg.binary)
        .args(cfg.args())
        .env("PATH", "/usr/bin:/bin")
        .env("GOMAXPROCS", "2")
        .readiness(Probe::custom(move || health(endpoint.clone())))
        .probe_settings(ProbeSettings {
            initial_period: Duration::from_millis(100),
            ..ProbeSettings::default()
        })
        .restart(RestartPolicy::Always)
        .stop_timeout(Duration::from_secs(15))
}

/// Healthy when a linearizable read succeeds (it needs a leader and an applied log).
pub async fn health(endpoint: String) -> Result<(), String> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let mut client = etcd_client::Client::connect([endpoint.as_str()], Some(opts))
        .await
        .map_err(|e| format!("connecting to etcd at {endpoint}: {e}"))?;
    client
        .get("/cairn/health", None)
        .await
        .map_err(|e| format!("linearizable read from etcd at {endpoint}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EtcdConfig {
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("default config");
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
    fn spec_is_valid() {
        let s = spec(&cfg());
        s.validate().expect("valid spec");
        assert_eq!(s.name, NAME);
        assert!(s.depends_on.is_empty());
    }
}
