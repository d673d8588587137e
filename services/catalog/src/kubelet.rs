//! kubelet: the node agent; registers the node and runs its pods through containerd.
//!
//! Configuration: a `KubeletConfiguration` (kubelet.config.k8s.io/v1beta1) rendered
//! by [`KubeletConfig::render`] and written to `/run/cairn/kubelet/config.yaml` at
//! every boot (`/etc` is read-only), plus the flags that cannot live in it:
//! `--config`, `--kubeconfig` (the bundle's `kubelet.conf`, CN `system:node:<node>`),
//! `--node-ip` (a run-time value, like the API server's advertise address: kubelet
//! rejects a loopback node IP), `--hostname-override` (the node name, which must
//! match the kubeconfig's CN) and `--root-dir` (`/var/lib/kubelet`).
//! The document: cgroup driver cgroupfs (containerd's runc has `SystemdCgroup =
//! false`), runtime endpoint containerd's socket, no anonymous requests, webhook
//! authentication and authorization, x509 clients verified against the cluster CA;
//! clusterDNS the 10th address of the service CIDR (10.96.0.10, where CoreDNS's
//! Service will be), clusterDomain from the machine config, resolvConf the file cairn
//! writes (`/run/cairn/resolv.conf`); graceful node shutdown 30 s (10 s of it for
//! critical pods); `failCgroupV1`; eviction and image-GC thresholds for small disks
//! (images and pods share the DATA partition); healthz on 127.0.0.1 only; the
//! read-only port off; no static pods; no certificate rotation or serving-cert
//! bootstrap yet (the bundle's certificates are used as they are).
//! Ordering: depends on containerd and, on a control-plane node, on kube-apiserver.
//! Graceful node shutdown: `DBUS_SYSTEM_BUS_ADDRESS` points at the init's logind
//! shim, which kubelet holds a shutdown delay lock on.
//! Readiness: `GET http://127.0.0.1:10248/healthz` ([`Probe::Http`]).
//! Restart: always, with the supervisor's backoff; SIGTERM and 10 s (pods are
//! drained before that, through the graceful-shutdown inhibitor).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use cairn_machine_config::{MachineConfig, Role};
use cairn_pki::paths;
use cairn_supervisor::{Probe, ServiceSpec};
use serde::Serialize;

use crate::files::{RenderError, run_path};
use crate::{Paths, path_flag};

pub const NAME: &str = "kubelet";
pub const HEALTHZ_PORT: u16 = 10248;
/// CoreDNS's Service address is this host of the service CIDR (10.96.0.10).
pub const CLUSTER_DNS_HOST: u32 = 10;

/// The cluster DNS address (`cluster.dnsServiceIp`, by default the
/// [`CLUSTER_DNS_HOST`]th address of the service CIDR).
pub fn cluster_dns(cfg: &MachineConfig) -> Result<Ipv4Addr, RenderError> {
    let cidr = cfg.cluster.service_cidr;
    cfg.cluster.dns_ip().ok_or_else(|| {
        RenderError::new(
            format!("cluster.serviceCidr {cidr}"),
            format!("has no address number {CLUSTER_DNS_HOST} for the cluster DNS"),
        )
    })
}

/// Everything that decides how kubelet runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    pub binary: PathBuf,
    /// Where [`KubeletConfig::render`]'s output is written before start.
    pub config_file: PathBuf,
    /// The bundle's `kubelet.conf`.
    pub kubeconfig: PathBuf,
    /// The cluster CA that client certificates are verified against.
    pub client_ca: PathBuf,
    pub node_name: String,
    pub node_ip: IpAddr,
    /// `/var/lib/kubelet`.
    pub root_dir: PathBuf,
    /// `unix:///run/containerd/containerd.sock`.
    pub runtime_endpoint: String,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    pub resolv_conf: PathBuf,
    pub healthz_port: u16,
    /// A control-plane node runs the API server itself: wait for it.
    pub depends_on_apiserver: bool,
}

impl KubeletConfig {
    /// `node_ip` is the node's address, known at run time (DHCP).
    pub fn from_machine(
        cfg: &MachineConfig,
        paths: &Paths,
        node_ip: IpAddr,
    ) -> Result<KubeletConfig, RenderError> {
        Ok(KubeletConfig {
            binary: paths.bin.join("kubelet"),
            config_file: run_path("kubelet/config.yaml"),
            kubeconfig: paths.secrets.join(paths::KUBELET_CONF),
            client_ca: paths.secrets.join(paths::CA.crt),
            node_name: cfg.machine.hostname.to_string(),
            node_ip,
            root_dir: paths.var_lib.join("kubelet"),
            runtime_endpoint: format!("unix://{}", crate::containerd::SOCKET),
            cluster_dns: cluster_dns(cfg)?,
            cluster_domain: cfg.cluster.dns_domain.clone(),
            resolv_conf: run_path("resolv.conf"),
            healthz_port: HEALTHZ_PORT,
            depends_on_apiserver: cfg.machine.role == Role::Controlplane,
        })
    }

    /// The configuration file's text (YAML).
    pub fn render(&self) -> Result<String, RenderError> {
        serde_yaml::to_string(&self.document())
            .map_err(|e| RenderError::new("rendering the kubelet configuration", e))
    }

    /// Writes [`KubeletConfig::render`] to `config_file`.
    pub fn write(&self) -> Result<(), RenderError> {
        crate::files::write_atomic(&self.config_file, &self.render()?)
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--config={}", path_flag(&self.config_file)),
            format!("--kubeconfig={}", path_flag(&self.kubeconfig)),
            format!("--node-ip={}", self.node_ip),
            format!("--hostname-override={}", self.node_name),
            format!("--root-dir={}", path_flag(&self.root_dir)),
        ]
    }

    /// `GET http://127.0.0.1:<healthz_port>/healthz`.
    pub fn readiness(&self) -> Probe {
        Probe::Http {
            url: format!("http://127.0.0.1:{}/healthz", self.healthz_port),
        }
    }

    fn document(&self) -> Document {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Document {
            api_version: "kubelet.config.k8s.io/v1beta1",
            kind: "KubeletConfiguration",
            cgroup_driver: "cgroupfs",
            container_runtime_endpoint: self.runtime_endpoint.clone(),
            fail_cgroup_v1: true,
            authentication: Authentication {
                anonymous: Enabled { enabled: false },
                webhook: Enabled { enabled: true },
                x509: X509 {
                    client_ca_file: path_flag(&self.client_ca),
                },
            },
            authorization: Authorization { mode: "Webhook" },
            read_only_port: 0,
            healthz_bind_address: "127.0.0.1",
            healthz_port: self.healthz_port,
            cluster_dns: vec![self.cluster_dns.to_string()],
            cluster_domain: self.cluster_domain.clone(),
            resolv_conf: path_flag(&self.resolv_conf),
            shutdown_grace_period: "30s",
            shutdown_grace_period_critical_pods: "10s",
            rotate_certificates: false,
            server_tls_bootstrap: false,
            // Images and pods share the DATA partition (imagefs = nodefs): image GC
            // starts at 80% used and frees down to 70%, well before eviction at 90%.
            eviction_hard: map(&[
                ("memory.available", "100Mi"),
                ("nodefs.available", "10%"),
                ("nodefs.inodesFree", "5%"),
                ("imagefs.available", "10%"),
                ("imagefs.inodesFree", "5%"),
            ]),
            eviction_minimum_reclaim: map(&[
                ("nodefs.available", "256Mi"),
                ("imagefs.available", "256Mi"),
            ]),
            image_gc_high_threshold_percent: 80,
            image_gc_low_threshold_percent: 70,
            container_log_max_size: "5Mi",
            container_log_max_files: 3,
            // The default (/usr/libexec/...) is on the read-only system image.
            volume_plugin_dir: path_flag(&self.root_dir.join("volumeplugins")),
        }
    }
}

/// The supervised service. The config file must have been written first
/// ([`KubeletConfig::write`]).
pub fn spec(cfg: &KubeletConfig) -> ServiceSpec {
    let mut deps = vec![crate::containerd::NAME];
    if cfg.depends_on_apiserver {
        deps.push(crate::kube_apiserver::NAME);
    }
    crate::component::kubernetes_component(
        NAME,
        &cfg.binary,
        cfg.args(),
        "/usr/bin:/usr/sbin:/bin:/sbin",
        &deps,
        cfg.readiness(),
    )
    // Graceful node shutdown: the init's logind shim is the system bus.
    .env("DBUS_SYSTEM_BUS_ADDRESS", SYSTEM_BUS_ADDRESS)
}

/// Where kubelet finds logind (`cairn_logind::DEFAULT_SOCKET`).
pub const SYSTEM_BUS_ADDRESS: &str = "unix:path=/run/dbus/system_bus_socket";

/// `KubeletConfiguration`: only what cairn sets; kubelet defaults the rest.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: &'static str,
    kind: &'static str,
    cgroup_driver: &'static str,
    container_runtime_endpoint: String,
    fail_cgroup_v1: bool,
    authentication: Authentication,
    authorization: Authorization,
    read_only_port: u16,
    healthz_bind_address: &'static str,
    healthz_port: u16,
    #[serde(rename = "clusterDNS")]
    cluster_dns: Vec<String>,
    cluster_domain: String,
    resolv_conf: String,
    shutdown_grace_period: &'static str,
    shutdown_grace_period_critical_pods: &'static str,
    rotate_certificates: bool,
    #[serde(rename = "serverTLSBootstrap")]
    server_tls_bootstrap: bool,
    eviction_hard: BTreeMap<String, String>,
    eviction_minimum_reclaim: BTreeMap<String, String>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: u8,
    #[serde(rename = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: u8,
    container_log_max_size: &'static str,
    container_log_max_files: u8,
    volume_plugin_dir: String,
}

#[derive(Serialize)]
struct Authentication {
    anonymous: Enabled,
    webhook: Enabled,
    x509: X509,
}

#[derive(Serialize)]
struct Enabled {
    enabled: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct X509 {
    #[serde(rename = "clientCAFile")]
    client_ca_file: String,
}

#[derive(Serialize)]
struct Authorization {
    mode: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(doc: &str) -> MachineConfig {
        MachineConfig::parse("t", doc).expect("config")
    }

    fn cfg() -> KubeletConfig {
        KubeletConfig::from_machine(
            &mc(MachineConfig::default_document()),
            &Paths::node(),
            "10.0.2.15".parse().expect("ip"),
        )
        .expect("kubelet config")
    }

    fn doc(c: &KubeletConfig) -> serde_yaml::Value {
        serde_yaml::from_str(&c.render().expect("render")).expect("valid YAML")
    }

    #[test]
    fn document_from_the_design() {
        let d = doc(&cfg());
        let s = |k: &str| d[k].as_str().map(str::to_owned);
        assert_eq!(
            s("apiVersion").as_deref(),
            Some("kubelet.config.k8s.io/v1beta1")
        );
        assert_eq!(s("kind").as_deref(), Some("KubeletConfiguration"));
        assert_eq!(s("cgroupDriver").as_deref(), Some("cgroupfs"));
        assert_eq!(
            s("containerRuntimeEndpoint").as_deref(),
            Some("unix:///run/containerd/containerd.sock")
        );
        assert_eq!(d["failCgroupV1"].as_bool(), Some(true));
        assert_eq!(
            d["authentication"]["anonymous"]["enabled"].as_bool(),
            Some(false)
        );
        assert_eq!(
            d["authentication"]["webhook"]["enabled"].as_bool(),
            Some(true)
        );
        assert_eq!(
            d["authentication"]["x509"]["clientCAFile"].as_str(),
            Some("/state/secrets/pki/ca.crt")
        );
        assert_eq!(d["authorization"]["mode"].as_str(), Some("Webhook"));
        assert_eq!(d["clusterDNS"][0].as_str(), Some("10.96.0.10"));
        assert_eq!(s("clusterDomain").as_deref(), Some("cluster.local"));
        assert_eq!(s("resolvConf").as_deref(), Some("/run/cairn/resolv.conf"));
        assert_eq!(s("shutdownGracePeriod").as_deref(), Some("30s"));
        assert_eq!(s("shutdownGracePeriodCriticalPods").as_deref(), Some("10s"));
        assert_eq!(d["rotateCertificates"].as_bool(), Some(false));
        assert_eq!(d["serverTLSBootstrap"].as_bool(), Some(false));
        assert_eq!(d["readOnlyPort"].as_u64(), Some(0));
        assert_eq!(s("healthzBindAddress").as_deref(), Some("127.0.0.1"));
        assert_eq!(d["healthzPort"].as_u64(), Some(10248));
        assert_eq!(d["evictionHard"]["nodefs.available"].as_str(), Some("10%"));
        assert_eq!(d["imageGCHighThresholdPercent"].as_u64(), Some(80));
        assert_eq!(d["imageGCLowThresholdPercent"].as_u64(), Some(70));
        assert!(d.get("staticPodPath").is_none());
        assert!(d.get("kubeletCgroups").is_none() && d.get("systemCgroups").is_none());
        assert_eq!(
            s("volumePluginDir").as_deref(),
            Some("/var/lib/kubelet/volumeplugins")
        );
    }

    #[test]
    fn dns_follows_the_machine_config() {
        let text = format!(
            "{}  serviceCidr: 10.100.0.0/16\n  dnsDomain: lab.internal\n",
            MachineConfig::default_document()
        );
        let c = KubeletConfig::from_machine(
            &mc(&text),
            &Paths::node(),
            "192.0.2.7".parse().expect("ip"),
        )
        .expect("config");
        let d = doc(&c);
        assert_eq!(d["clusterDNS"][0].as_str(), Some("10.100.0.10"));
        assert_eq!(d["clusterDomain"].as_str(), Some("lab.internal"));
        assert!(c.args().contains(&"--node-ip=192.0.2.7".to_string()));
    }

    #[test]
    fn flags_probe_and_ordering() {
        let c = cfg();
        assert_eq!(
            c.args(),
            [
                "--config=/run/cairn/kubelet/config.yaml",
                "--kubeconfig=/state/secrets/kubelet.conf",
                "--node-ip=10.0.2.15",
                "--hostname-override=cairn",
                "--root-dir=/var/lib/kubelet",
            ]
        );
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(
            s.depends_on,
            [crate::containerd::NAME, crate::kube_apiserver::NAME]
        );
        match &s.readiness {
            Probe::Http { url } => assert_eq!(url, "http://127.0.0.1:10248/healthz"),
            other => panic!("unexpected probe {other:?}"),
        }
        let mut worker = c.clone();
        worker.depends_on_apiserver = false;
        assert_eq!(spec(&worker).depends_on, [crate::containerd::NAME]);
    }
}
