//! kube-apiserver: the cluster's API, in front of etcd.
//!
//! Configuration: flags only (no config file), rendered from the machine config
//! (service CIDR, DNS domain), the node's advertise address and the cairn-pki
//! secrets bundle: serving certificate `apiserver`, clients verified against `ca`,
//! etcd over mutual TLS with `apiserver-etcd-client`, kubelets dialled with
//! `apiserver-kubelet-client`, service-account tokens signed with `sa.key`, and the
//! aggregation layer's front proxy (`front-proxy-ca`, `front-proxy-client`).
//! Authorization is Node,RBAC and the NodeRestriction admission plugin is on.
//! Ordering: depends on etcd; the controller-manager and scheduler depend on it.
//! Readiness: `GET /readyz` over HTTPS, verifying the server against the cluster CA
//! and presenting the `apiserver-kubelet-client` certificate; `/readyz` only answers
//! 200 once etcd is reachable and the bootstrap post-start hooks (RBAC roles, system
//! namespaces, priority classes) are done.
//! Restart: always, with the supervisor's backoff; SIGTERM and 20 s to drain
//! requests and watches before SIGKILL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use cairn_machine_config::{Cidr, MachineConfig};
use cairn_pki::paths;
use cairn_supervisor::{Probe, ProbeSettings, RestartPolicy, ServiceSpec};

use crate::{Paths, cidr_flag, path_flag};

pub const NAME: &str = "kube-apiserver";
pub const SECURE_PORT: u16 = 6443;

/// Everything that decides how kube-apiserver runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverConfig {
    pub binary: PathBuf,
    /// The node IP published in the `kubernetes` Service's endpoints.
    pub advertise_address: IpAddr,
    /// `0.0.0.0` on a node.
    pub bind_address: IpAddr,
    pub secure_port: u16,
    /// `https://127.0.0.1:2379`.
    pub etcd_servers: Vec<String>,
    pub service_cidr: Cidr,
    /// `https://kubernetes.default.svc.<dns domain>`.
    pub service_account_issuer: String,
    /// Root of the secrets bundle.
    pub secrets: PathBuf,
}

impl ApiserverConfig {
    pub fn from_machine(cfg: &MachineConfig, paths: &Paths, advertise: IpAddr) -> ApiserverConfig {
        ApiserverConfig {
            binary: paths.bin.join("kube-apiserver"),
            advertise_address: advertise,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            secure_port: SECURE_PORT,
            etcd_servers: vec![format!("https://127.0.0.1:{}", crate::etcd::CLIENT_PORT)],
            service_cidr: cfg.cluster.service_cidr,
            service_account_issuer: format!(
                "https://kubernetes.default.svc.{}",
                cfg.cluster.dns_domain
            ),
            secrets: paths.secrets.clone(),
        }
    }

    fn file(&self, rel: &str) -> String {
        path_flag(&self.secrets.join(rel))
    }

    /// Where the readiness probe (and anything else on the node) reaches the API:
    /// loopback when listening on every address, else the bound address.
    pub fn local_url(&self) -> String {
        let host = if self.bind_address.is_unspecified() {
            match self.bind_address {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            }
        } else {
            self.bind_address
        };
        format!("https://{}", SocketAddr::new(host, self.secure_port))
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let f = |rel: &str| self.file(rel);
        vec![
            format!("--advertise-address={}", self.advertise_address),
            format!("--bind-address={}", self.bind_address),
            format!("--secure-port={}", self.secure_port),
            // Storage: etcd over mutual TLS.
            format!("--etcd-servers={}", self.etcd_servers.join(",")),
            format!("--etcd-cafile={}", f(paths::ETCD_CA.crt)),
            format!("--etcd-certfile={}", f(paths::APISERVER_ETCD_CLIENT.crt)),
            format!("--etcd-keyfile={}", f(paths::APISERVER_ETCD_CLIENT.key)),
            // Services (the default would be 10.0.0.0/24).
            format!(
                "--service-cluster-ip-range={}",
                cidr_flag(&self.service_cidr)
            ),
            // Authentication and authorization (the default mode is AlwaysAllow).
            format!("--client-ca-file={}", f(paths::CA.crt)),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            // Serving.
            format!("--tls-cert-file={}", f(paths::APISERVER.crt)),
            format!("--tls-private-key-file={}", f(paths::APISERVER.key)),
            // Kubelets.
            format!(
                "--kubelet-client-certificate={}",
                f(paths::APISERVER_KUBELET_CLIENT.crt)
            ),
            format!(
                "--kubelet-client-key={}",
                f(paths::APISERVER_KUBELET_CLIENT.key)
            ),
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            // Service-account tokens.
            format!("--service-account-issuer={}", self.service_account_issuer),
            format!("--service-account-key-file={}", f(paths::SA_PUB)),
            format!("--service-account-signing-key-file={}", f(paths::SA_KEY)),
            // Aggregation layer: the front proxy authenticates with request headers.
            format!(
                "--requestheader-client-ca-file={}",
                f(paths::FRONT_PROXY_CA.crt)
            ),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!(
                "--proxy-client-cert-file={}",
                f(paths::FRONT_PROXY_CLIENT.crt)
            ),
            format!(
                "--proxy-client-key-file={}",
                f(paths::FRONT_PROXY_CLIENT.key)
            ),
        ]
    }

    /// `GET /readyz`, verifying the cluster CA, as `apiserver-kubelet-client`.
    pub fn readiness(&self) -> Probe {
        Probe::Https {
            url: format!("{}/readyz", self.local_url()),
            ca: self.secrets.join(paths::CA.crt),
            client_cert: Some((
                self.secrets.join(paths::APISERVER_KUBELET_CLIENT.crt),
                self.secrets.join(paths::APISERVER_KUBELET_CLIENT.key),
            )),
        }
    }
}

/// The supervised service.
pub fn spec(cfg: &ApiserverConfig) -> ServiceSpec {
    ServiceSpec::new(NAME, &cfg.binary)
        .args(cfg.args())
        .env("PATH", "/usr/bin:/bin")
        .depends_on(crate::etcd::NAME)
        .readiness(cfg.readiness())
        .probe_settings(ProbeSettings {
            initial_period: Duration::from_millis(500),
            ready_period: Duration::from_secs(5),
            // /readyz checks etcd itself; give a slow disk some room.
            timeout: Duration::from_secs(5),
        })
        .restart(RestartPolicy::Always)
        .stop_timeout(Duration::from_secs(20))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(doc: &str) -> MachineConfig {
        MachineConfig::parse("t", doc).expect("config")
    }

    fn cfg() -> ApiserverConfig {
        let mc = mc(MachineConfig::default_document());
        ApiserverConfig::from_machine(&mc, &Paths::node(), "10.0.2.15".parse().expect("ip"))
    }

    fn has(args: &[String], flag: &str) {
        assert!(
            args.iter().any(|a| a == flag),
            "{flag} missing from {args:?}"
        );
    }

    #[test]
    fn flags_from_the_design() {
        let args = cfg().args();
        let s = "/state/secrets";
        for flag in [
            "--advertise-address=10.0.2.15".to_string(),
            "--bind-address=0.0.0.0".into(),
            "--secure-port=6443".into(),
            "--etcd-servers=https://127.0.0.1:2379".into(),
            format!("--etcd-cafile={s}/pki/etcd/ca.crt"),
            format!("--etcd-certfile={s}/pki/apiserver-etcd-client.crt"),
            format!("--etcd-keyfile={s}/pki/apiserver-etcd-client.key"),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--client-ca-file={s}/pki/ca.crt"),
            format!("--tls-cert-file={s}/pki/apiserver.crt"),
            format!("--tls-private-key-file={s}/pki/apiserver.key"),
            format!("--kubelet-client-certificate={s}/pki/apiserver-kubelet-client.crt"),
            format!("--kubelet-client-key={s}/pki/apiserver-kubelet-client.key"),
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={s}/pki/sa.pub"),
            format!("--service-account-signing-key-file={s}/pki/sa.key"),
            "--allow-privileged=true".into(),
            format!("--requestheader-client-ca-file={s}/pki/front-proxy-ca.crt"),
            "--requestheader-allowed-names=front-proxy-client".into(),
            format!("--proxy-client-cert-file={s}/pki/front-proxy-client.crt"),
            format!("--proxy-client-key-file={s}/pki/front-proxy-client.key"),
        ] {
            has(&args, &flag);
        }
        // Every flag is given once.
        let mut names: Vec<&str> = args
            .iter()
            .map(|a| a.split('=').next().unwrap_or(a))
            .collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "{args:?}");
    }

    #[test]
    fn cidrs_and_domain_follow_the_machine_config() {
        let doc = format!(
            "{}  serviceCidr: 10.100.0.0/16\n  dnsDomain: lab.internal\n",
            MachineConfig::default_document()
        );
        let c = ApiserverConfig::from_machine(
            &mc(&doc),
            &Paths::node(),
            "192.0.2.10".parse().expect("ip"),
        );
        let args = c.args();
        has(&args, "--service-cluster-ip-range=10.100.0.0/16");
        has(
            &args,
            "--service-account-issuer=https://kubernetes.default.svc.lab.internal",
        );
        has(&args, "--advertise-address=192.0.2.10");
    }

    #[test]
    fn probe_and_ordering() {
        let mut c = cfg();
        assert_eq!(c.local_url(), "https://127.0.0.1:6443");
        c.bind_address = "127.0.0.1".parse().expect("ip");
        c.secure_port = 16443;
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(s.depends_on, [crate::etcd::NAME]);
        assert_eq!(s.stop_timeout, Duration::from_secs(20));
        assert_eq!(s.restart, RestartPolicy::Always);
        match &s.readiness {
            Probe::Https {
                url,
                ca,
                client_cert,
            } => {
                assert_eq!(url, "https://127.0.0.1:16443/readyz");
                assert!(ca.ends_with("pki/ca.crt"));
                let (crt, _) = client_cert.as_ref().expect("client cert");
                assert!(crt.ends_with("pki/apiserver-kubelet-client.crt"));
            }
            other => panic!("unexpected probe {other:?}"),
        }
    }
}
