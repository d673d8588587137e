//! The service catalog: one module per component cairn supervises, each holding in
//! one place how the component is configured (flags and files rendered from the
//! machine config), what it depends on, how its readiness is probed and how it is
//! restarted and stopped.
//!
//! - [`node_plan`]: what a node runs: the control plane (etcd with TLS,
//!   kube-apiserver, kube-controller-manager, kube-scheduler) configured from a
//!   cairn-pki secrets bundle, containerd, the pod image imports, kubelet and
//!   kube-proxy, and the GitOps reconciler ([`gitops`]) when the machine config
//!   has a `gitops` section; [`cni`] and [`cluster_objects`] are written and
//!   applied by the init once the API server answers.
//!
//! Not for: running anything. The init hands these [`ServiceSpec`]s to the
//! supervisor (`cairn-supervisor`), which owns processes, ordering and restarts.

#![forbid(unsafe_code)]

pub mod apid;
pub mod cluster_objects;
pub mod cni;
mod component;
pub mod containerd;
pub mod coredns;
pub mod etcd;
pub mod files;
pub mod gitops;
pub mod images;
pub mod kube_apiserver;
pub mod kube_controller_manager;
pub mod kube_proxy;
pub mod kube_scheduler;
pub mod kubeapi;
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
            secrets: PathBuf::from(SECRETS_DIR),
        }
    }
}

/// Where a node keeps its secrets bundle: on the STATE partition, with the machine
/// config, not on DATA (which holds only what can be rebuilt).
pub const SECRETS_DIR: &str = "/state/secrets";

/// Everything a node runs this boot: the rendered configurations and the services.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub containerd: containerd::ContainerdConfig,
    pub kubelet: kubelet::KubeletConfig,
    pub kube_proxy: kube_proxy::KubeProxyConfig,
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler (control-plane
    /// nodes only).
    pub control_plane: Vec<ServiceSpec>,
    /// The pod image archives to import before kubelet starts.
    pub image_archives: Vec<PathBuf>,
    /// The GitOps reconciler (control-plane nodes with a `gitops` section).
    pub gitops: Option<gitops::GitopsConfig>,
    paths: Paths,
}

/// The plan for a node whose address is `node_ip` (known only at run time).
pub fn node_plan(
    cfg: &MachineConfig,
    paths: &Paths,
    node_ip: IpAddr,
    image_archives: Vec<PathBuf>,
) -> Result<NodePlan, files::RenderError> {
    let control_plane = if cfg.machine.role == cairn_machine_config::Role::Controlplane {
        control_plane(cfg, paths, &ControlPlaneOptions::new(node_ip))
    } else {
        Vec::new()
    };
    Ok(NodePlan {
        containerd: containerd::ContainerdConfig::from_machine(cfg, paths),
        kubelet: kubelet::KubeletConfig::from_machine(cfg, paths, node_ip)?,
        kube_proxy: kube_proxy::KubeProxyConfig::from_machine(cfg, paths),
        control_plane,
        image_archives,
        gitops: gitops::GitopsConfig::from_machine(cfg, paths),
        paths: paths.clone(),
    })
}

impl NodePlan {
    /// Writes the configuration files the services read; before [`NodePlan::specs`]
    /// are started.
    pub fn write_files(&self) -> Result<(), files::RenderError> {
        self.containerd.write()?;
        self.kubelet.write()?;
        self.kube_proxy.write()?;
        self.gitops
            .as_ref()
            .map_or(Ok(()), gitops::GitopsConfig::write)
    }

    /// Every service, in no particular order (the supervisor orders them by their
    /// dependencies): the control plane, containerd, one image import per archive,
    /// kubelet (after containerd, the imports and the API server), kube-proxy and
    /// the GitOps reconciler if any.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        let imports = images::specs(&self.paths, &self.image_archives);
        let mut kubelet = kubelet::spec(&self.kubelet);
        kubelet
            .depends_on
            .extend(imports.iter().map(|s| s.name.clone()));
        let mut out = self.control_plane.clone();
        out.push(containerd::spec(&self.containerd));
        out.extend(imports);
        out.push(kubelet);
        out.push(kube_proxy::spec(&self.kube_proxy));
        out.extend(self.gitops.as_ref().map(gitops::spec));
        out
    }
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
    etcd.extra_client_address = Some(opts.advertise_ip);

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
        assert!(specs[0].args.contains(
            &"--listen-client-urls=https://127.0.0.1:12379,https://10.0.2.15:12379".into()
        ));
        assert!(
            specs[1]
                .args
                .contains(&"--etcd-servers=https://127.0.0.1:12379".into())
        );
        assert!(specs[1].args.contains(&"--secure-port=16443".into()));
        assert_eq!(specs[1].depends_on, ["etcd"]);
        assert_eq!(specs[2].depends_on, ["kube-apiserver"]);
        assert_eq!(specs[3].depends_on, ["kube-apiserver"]);
    }

    #[test]
    fn node_plan_orders_kubelet_after_imports_and_apiserver() {
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("config");
        let archives = vec![
            PathBuf::from("/usr/share/cairn/images/coredns.oci.tar"),
            PathBuf::from("/usr/share/cairn/images/pause.oci.tar"),
        ];
        let plan = node_plan(
            &mc,
            &Paths::node(),
            "10.0.2.15".parse().expect("ip"),
            archives,
        )
        .expect("plan");
        let specs = plan.specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "containerd",
                "image-import-coredns",
                "image-import-pause",
                "kubelet",
                "kube-proxy"
            ]
        );
        let kubelet = &specs[7];
        for dep in [
            "containerd",
            "kube-apiserver",
            "image-import-coredns",
            "image-import-pause",
        ] {
            assert!(
                kubelet.depends_on.iter().any(|d| d == dep),
                "{dep}: {:?}",
                kubelet.depends_on
            );
        }
        assert!(
            specs[0].args.iter().any(|a| a.contains("https://")),
            "etcd serves TLS"
        );
        for s in &specs {
            s.validate().expect("valid spec");
        }
    }

    #[test]
    fn node_plan_runs_gitops_when_configured() {
        let doc = format!(
            "{}gitops:\n  url: https://git.example/demo.git\n",
            MachineConfig::default_document()
        );
        let mc = MachineConfig::parse("t", &doc).expect("config");
        let plan = node_plan(
            &mc,
            &Paths::node(),
            "10.0.2.15".parse().expect("ip"),
            Vec::new(),
        )
        .expect("plan");
        let specs = plan.specs();
        let last = specs.last().expect("specs");
        assert_eq!(last.name, gitops::NAME);
        assert_eq!(
            plan.gitops.as_ref().map(|g| g.config_file.clone()),
            Some(PathBuf::from("/run/cairn/gitops.yaml"))
        );
    }
}
