//! kube-controller-manager: the control loops (service accounts, node CIDRs,
//! certificate signing, garbage collection, ...).
//!
//! Configuration: flags only, rendered from the machine config (pod and service
//! CIDRs, cluster name) and the cairn-pki secrets bundle: `controller-manager.conf`
//! for the API and for delegated authentication/authorization of its own endpoint,
//! `sa.key` to sign service-account tokens, `ca` to sign CSRs and as the root CA
//! published in pods, `front-proxy-ca` for request-header authentication. Every
//! controller uses its own service account; each node gets a /24 from the pod CIDR.
//! The secure port listens on 127.0.0.1 only; leader election is on (one member
//! today, but it keeps a restarted process from running beside a stuck one).
//! Ordering: depends on kube-apiserver.
//! Readiness: `GET https://127.0.0.1:<port>/healthz`. The endpoint serves a
//! self-signed certificate generated in memory at start, so there is no CA to verify
//! it against: the probe is [`Probe::HttpsLoopbackUnverified`], which refuses any
//! non-loopback address and sends nothing secret (`/healthz` is always allowed
//! without credentials).
//! Restart: always, with the supervisor's backoff; SIGTERM and 10 s.

use std::path::PathBuf;

use cairn_machine_config::{Cidr, MachineConfig};
use cairn_pki::paths;
use cairn_supervisor::{Probe, ServiceSpec};

use crate::{Paths, cidr_flag, path_flag};

pub const NAME: &str = "kube-controller-manager";
pub const SECURE_PORT: u16 = 10257;
/// Each node's pod CIDR is a /24 of the cluster's pod CIDR.
pub const NODE_CIDR_MASK_SIZE: u8 = 24;

/// Everything that decides how kube-controller-manager runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerManagerConfig {
    pub binary: PathBuf,
    pub cluster_name: String,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    /// Listens on 127.0.0.1 only.
    pub secure_port: u16,
    /// Root of the secrets bundle.
    pub secrets: PathBuf,
}

impl ControllerManagerConfig {
    pub fn from_machine(cfg: &MachineConfig, paths: &Paths) -> ControllerManagerConfig {
        ControllerManagerConfig {
            binary: paths.bin.join("kube-controller-manager"),
            cluster_name: cfg.cluster.name.clone(),
            pod_cidr: cfg.cluster.pod_cidr,
            service_cidr: cfg.cluster.service_cidr,
            secure_port: SECURE_PORT,
            secrets: paths.secrets.clone(),
        }
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let f = |rel: &str| path_flag(&self.secrets.join(rel));
        let kubeconfig = f(paths::CONTROLLER_MANAGER_CONF);
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.secure_port),
            "--leader-elect=true".into(),
            "--use-service-account-credentials=true".into(),
            format!("--cluster-name={}", self.cluster_name),
            format!("--root-ca-file={}", f(paths::CA.crt)),
            format!("--service-account-private-key-file={}", f(paths::SA_KEY)),
            format!("--cluster-signing-cert-file={}", f(paths::CA.crt)),
            format!("--cluster-signing-key-file={}", f(paths::CA.key)),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", cidr_flag(&self.pod_cidr)),
            format!("--node-cidr-mask-size={NODE_CIDR_MASK_SIZE}"),
            format!(
                "--service-cluster-ip-range={}",
                cidr_flag(&self.service_cidr)
            ),
            format!("--client-ca-file={}", f(paths::CA.crt)),
            format!(
                "--requestheader-client-ca-file={}",
                f(paths::FRONT_PROXY_CA.crt)
            ),
        ]
    }

    /// `GET https://127.0.0.1:<port>/healthz`, certificate not verified (self-signed).
    pub fn readiness(&self) -> Probe {
        crate::component::loopback_healthz(self.secure_port)
    }
}

/// The supervised service.
pub fn spec(cfg: &ControllerManagerConfig) -> ServiceSpec {
    crate::component::apiserver_client_spec(NAME, &cfg.binary, cfg.args(), cfg.secure_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(doc: &str) -> MachineConfig {
        MachineConfig::parse("t", doc).expect("config")
    }

    fn has(args: &[String], flag: &str) {
        assert!(
            args.iter().any(|a| a == flag),
            "{flag} missing from {args:?}"
        );
    }

    #[test]
    fn flags_from_the_design() {
        let c = ControllerManagerConfig::from_machine(
            &mc(MachineConfig::default_document()),
            &Paths::node(),
        );
        let args = c.args();
        let s = "/state/secrets";
        for flag in [
            format!("--kubeconfig={s}/controller-manager.conf"),
            format!("--authentication-kubeconfig={s}/controller-manager.conf"),
            format!("--authorization-kubeconfig={s}/controller-manager.conf"),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=10257".into(),
            "--leader-elect=true".into(),
            "--use-service-account-credentials=true".into(),
            format!("--root-ca-file={s}/pki/ca.crt"),
            format!("--service-account-private-key-file={s}/pki/sa.key"),
            format!("--cluster-signing-cert-file={s}/pki/ca.crt"),
            format!("--cluster-signing-key-file={s}/pki/ca.key"),
            "--allocate-node-cidrs=true".into(),
            "--cluster-cidr=10.244.0.0/16".into(),
            "--node-cidr-mask-size=24".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            format!("--client-ca-file={s}/pki/ca.crt"),
            format!("--requestheader-client-ca-file={s}/pki/front-proxy-ca.crt"),
        ] {
            has(&args, &flag);
        }
        for a in args.iter().filter(|a| a.contains("address")) {
            assert!(a.ends_with("127.0.0.1"), "{a}");
        }
    }

    #[test]
    fn cidrs_follow_the_machine_config() {
        let doc = format!(
            "{}  podCidr: 10.50.0.0/16\n  serviceCidr: 10.100.0.0/16\n",
            MachineConfig::default_document()
        );
        let args = ControllerManagerConfig::from_machine(&mc(&doc), &Paths::node()).args();
        has(&args, "--cluster-cidr=10.50.0.0/16");
        has(&args, "--service-cluster-ip-range=10.100.0.0/16");
    }

    #[test]
    fn probe_and_ordering() {
        let mut c = ControllerManagerConfig::from_machine(
            &mc(MachineConfig::default_document()),
            &Paths::node(),
        );
        c.secure_port = 20257;
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(s.depends_on, [crate::kube_apiserver::NAME]);
        assert!(s.args.contains(&"--secure-port=20257".to_string()));
        match &s.readiness {
            Probe::HttpsLoopbackUnverified { url } => {
                assert_eq!(url, "https://127.0.0.1:20257/healthz");
            }
            other => panic!("unexpected probe {other:?}"),
        }
    }
}
