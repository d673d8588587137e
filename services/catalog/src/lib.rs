//! The service catalog: one module per component cairn supervises, each holding in
//! one place how the component is configured (flags and files rendered from the
//! machine config), what it depends on, how its readiness is probed and how it is
//! restarted and stopped.
//!
//! - [`node_services`]: what a node runs today (etcd without TLS).
//! - [`control_plane`]: etcd with TLS, kube-apiserver, kube-controller-manager and
//!   kube-scheduler, configured from a cairn-pki secrets bundle. Not yet part of
//!   [`node_services`]: the node runs it once it has a secrets bundle.
//!
//! Not for: running anything. The init hands these [`ServiceSpec`]s to the
//! supervisor (`cairn-supervisor`), which owns processes, ordering and restarts.

pub mod cni;
mod component;
pub mod containerd;
pub mod etcd;
pub mod files;
pub mod kube_apiserver;
pub mod kube_controller_manager;
pub mod kube_proxy;
pub mod kube_scheduler;
pub mod kubelet;

use std::net::IpAddr;
use std::path::PathBuf;

use cairn_machine_config::{Cidr, MachineConfig};
use cairn_supervisor::ServiceSpec;

/// Where things live on a node; tests point these at temporary directories.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Directory of the upstream binaries (`/usr/bin` on a node).
    pub bin: PathBuf,
    /// Root of persistent state (`/var/lib` on a node; the DATA partition).
    pub var_lib: PathBuf,
    /// Root of the cluster's secrets bundle in cairn-pki's (kubeadm's) layout:
    /// `pki/ca.crt`, `pki/etcd/server.key`, `admin.conf`, ... (see `cairn_pki::paths`).
    pub secrets: PathBuf,
}

impl Paths {
    pub fn node() -> Paths {
        Paths {
            bin: PathBuf::from("/usr/bin"),
            var_lib: PathBuf::from("/var/lib"),
            secrets: PathBuf::from("/var/lib/cairn/secrets"),
        }
    }
}

/// Every service a node of this configuration runs, in no particular order (the
/// supervisor orders them by their dependencies).
pub fn node_services(cfg: &MachineConfig, paths: &Paths) -> Vec<ServiceSpec> {
    vec![etcd::spec(&etcd::EtcdConfig::from_machine(cfg, paths))]
}

/// The ports of the control plane; all but the API server's listen on 127.0.0.1 only.
/// Tests pick free ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub etcd_metrics: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

impl Default for Ports {
    /// The upstream defaults: 2379, 2380, 2381, 6443, 10257, 10259.
    fn default() -> Self {
        Ports {
            etcd_client: etcd::CLIENT_PORT,
            etcd_peer: etcd::PEER_PORT,
            etcd_metrics: etcd::METRICS_PORT,
            apiserver: kube_apiserver::SECURE_PORT,
            controller_manager: kube_controller_manager::SECURE_PORT,
            scheduler: kube_scheduler::SECURE_PORT,
        }
    }
}

/// What the control plane needs beyond the machine config and the paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneOptions {
    /// The address the API server advertises to the cluster (the node IP; with DHCP
    /// only known at run time, hence not from the machine config).
    pub advertise_ip: IpAddr,
    /// The address the API server listens on (`0.0.0.0` on a node).
    pub apiserver_bind: IpAddr,
    pub ports: Ports,
}

impl ControlPlaneOptions {
    /// Upstream ports, the API server on every address.
    pub fn new(advertise_ip: IpAddr) -> ControlPlaneOptions {
        ControlPlaneOptions {
            advertise_ip,
            apiserver_bind: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            ports: Ports::default(),
        }
    }
}

/// etcd (TLS), kube-apiserver, kube-controller-manager and kube-scheduler, all reading
/// their certificates and kubeconfigs from `paths.secrets`. The kubeconfigs in the
/// bundle must point at `https://127.0.0.1:<ports.apiserver>`.
pub fn control_plane(
    cfg: &MachineConfig,
    paths: &Paths,
    opts: &ControlPlaneOptions,
) -> Vec<ServiceSpec> {
    let mut etcd = etcd::EtcdConfig::from_machine(cfg, paths)
        .with_tls(etcd::EtcdTls::from_bundle(&paths.secrets));
    etcd.client_port = opts.ports.etcd_client;
    etcd.peer_port = opts.ports.etcd_peer;
    etcd.metrics_port = opts.ports.etcd_metrics;

    let mut apiserver =
        kube_apiserver::ApiserverConfig::from_machine(cfg, paths, opts.advertise_ip);
    apiserver.bind_address = opts.apiserver_bind;
    apiserver.secure_port = opts.ports.apiserver;
    apiserver.etcd_servers = vec![etcd.client_url()];

    let mut controller_manager =
        kube_controller_manager::ControllerManagerConfig::from_machine(cfg, paths);
    controller_manager.secure_port = opts.ports.controller_manager;

    let mut scheduler = kube_scheduler::SchedulerConfig::from_machine(cfg, paths);
    scheduler.secure_port = opts.ports.scheduler;

    vec![
        etcd::spec(&etcd),
        kube_apiserver::spec(&apiserver),
        kube_controller_manager::spec(&controller_manager),
        kube_scheduler::spec(&scheduler),
    ]
}

/// `10.96.0.0/12` with the host bits cleared, as components expect a CIDR flag.
pub(crate) fn cidr_flag(cidr: &Cidr) -> String {
    format!("{}/{}", cidr.network(), cidr.prefix())
}

/// A path as a flag value.
pub(crate) fn path_flag(path: &std::path::Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_is_ordered_and_consistent() {
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("config");
        let mut opts = ControlPlaneOptions::new("10.0.2.15".parse().expect("ip"));
        opts.ports.etcd_client = 12379;
        opts.ports.apiserver = 16443;
        let specs = control_plane(&mc, &Paths::node(), &opts);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler"
            ]
        );
        for s in &specs {
            s.validate().expect("valid spec");
        }
        assert!(
            specs[0]
                .args
                .contains(&"--listen-client-urls=https://127.0.0.1:12379".into())
        );
        assert!(
            specs[1]
                .args
                .contains(&"--etcd-servers=https://127.0.0.1:12379".into())
        );
        assert!(specs[1].args.contains(&"--secure-port=16443".into()));
        assert_eq!(specs[1].depends_on, ["etcd"]);
        assert_eq!(specs[2].depends_on, ["kube-apiserver"]);
        assert_eq!(specs[3].depends_on, ["kube-apiserver"]);
        // node_services is unchanged: etcd alone, without TLS.
        let node = node_services(&mc, &Paths::node());
        assert_eq!(node.len(), 1);
        assert!(node[0].args.iter().all(|a| !a.contains("https")));
    }
}
