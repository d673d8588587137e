//! kube-scheduler: assigns pods to nodes.
//!
//! Configuration: flags only, from the cairn-pki secrets bundle: `scheduler.conf`
//! for the API and for delegated authentication/authorization of its own endpoint.
//! The secure port listens on 127.0.0.1 only; leader election is on.
//! Ordering: depends on kube-apiserver.
//! Readiness: `GET https://127.0.0.1:<port>/healthz`. Like the controller-manager
//! it serves a self-signed in-memory certificate, so the probe is
//! [`Probe::HttpsLoopbackUnverified`] (loopback only, nothing secret sent).
//! Restart: always, with the supervisor's backoff; SIGTERM and 10 s.

use std::path::PathBuf;

use cairn_machine_config::MachineConfig;
use cairn_pki::paths;
use cairn_supervisor::{Probe, ServiceSpec};

use crate::{Paths, path_flag};

pub const NAME: &str = "kube-scheduler";
pub const SECURE_PORT: u16 = 10259;

/// Everything that decides how kube-scheduler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub binary: PathBuf,
    /// Listens on 127.0.0.1 only.
    pub secure_port: u16,
    /// Root of the secrets bundle.
    pub secrets: PathBuf,
}

impl SchedulerConfig {
    pub fn from_machine(_cfg: &MachineConfig, paths: &Paths) -> SchedulerConfig {
        SchedulerConfig {
            binary: paths.bin.join("kube-scheduler"),
            secure_port: SECURE_PORT,
            secrets: paths.secrets.clone(),
        }
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let kubeconfig = path_flag(&self.secrets.join(paths::SCHEDULER_CONF));
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.secure_port),
            "--leader-elect=true".into(),
        ]
    }

    /// `GET https://127.0.0.1:<port>/healthz`, certificate not verified (self-signed).
    pub fn readiness(&self) -> Probe {
        crate::component::loopback_healthz(self.secure_port)
    }
}

/// The supervised service.
pub fn spec(cfg: &SchedulerConfig) -> ServiceSpec {
    crate::component::apiserver_client_spec(NAME, &cfg.binary, cfg.args(), cfg.secure_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SchedulerConfig {
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("config");
        SchedulerConfig::from_machine(&mc, &Paths::node())
    }

    #[test]
    fn flags_from_the_design() {
        let args = cfg().args();
        let s = "/state/secrets";
        for flag in [
            format!("--kubeconfig={s}/scheduler.conf"),
            format!("--authentication-kubeconfig={s}/scheduler.conf"),
            format!("--authorization-kubeconfig={s}/scheduler.conf"),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=10259".into(),
            "--leader-elect=true".into(),
        ] {
            assert!(args.contains(&flag), "{flag} missing from {args:?}");
        }
    }

    #[test]
    fn probe_and_ordering() {
        let mut c = cfg();
        c.secure_port = 20259;
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(s.depends_on, [crate::kube_apiserver::NAME]);
        match &s.readiness {
            Probe::HttpsLoopbackUnverified { url } => {
                assert_eq!(url, "https://127.0.0.1:20259/healthz");
            }
            other => panic!("unexpected probe {other:?}"),
        }
    }
}
