//! kube-proxy: programs Service virtual IPs into the kernel (nftables).
//!
//! Configuration: a `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1)
//! rendered by [`KubeProxyConfig::render`] and written to
//! `/run/cairn/kube-proxy/config.yaml` at every boot (`/etc` is read-only); the only
//! flag is `--config`. Mode nftables (GA since 1.33; needs the `nft` binary on
//! `PATH` and kernel >= 5.13), the API through the bundle's `kube-proxy.conf`
//! (CN `system:kube-proxy`), hostnameOverride the node name, clusterCIDR the
//! cluster's pod CIDR (traffic from it is "local"); healthz and metrics on 127.0.0.1
//! only.
//! Ordering: depends on kube-apiserver on a control-plane node (a worker's API
//! server is elsewhere).
//! Readiness: `GET http://127.0.0.1:10256/healthz` ([`Probe::Http`]), which answers
//! 200 once the proxier has synced its rules.
//! Restart: always, with the supervisor's backoff; SIGTERM and 10 s. The rules stay
//! in the kernel while it is down.

use std::path::PathBuf;

use cairn_machine_config::{Cidr, MachineConfig, Role};
use cairn_pki::paths;
use cairn_supervisor::{Probe, ServiceSpec};
use serde::Serialize;

use crate::files::{RenderError, run_path};
use crate::{Paths, cidr_flag, path_flag};

pub const NAME: &str = "kube-proxy";
pub const HEALTHZ_PORT: u16 = 10256;
pub const METRICS_PORT: u16 = 10249;

/// Everything that decides how kube-proxy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeProxyConfig {
    pub binary: PathBuf,
    /// Where [`KubeProxyConfig::render`]'s output is written before start.
    pub config_file: PathBuf,
    /// The bundle's `kube-proxy.conf`.
    pub kubeconfig: PathBuf,
    pub node_name: String,
    /// The cluster's pod CIDR.
    pub cluster_cidr: Cidr,
    pub healthz_port: u16,
    pub metrics_port: u16,
    /// A control-plane node runs the API server itself: wait for it.
    pub depends_on_apiserver: bool,
}

impl KubeProxyConfig {
    pub fn from_machine(cfg: &MachineConfig, paths: &Paths) -> KubeProxyConfig {
        KubeProxyConfig {
            binary: paths.bin.join("kube-proxy"),
            config_file: run_path("kube-proxy/config.yaml"),
            kubeconfig: paths.secrets.join(paths::KUBE_PROXY_CONF),
            node_name: cfg.machine.hostname.to_string(),
            cluster_cidr: cfg.cluster.pod_cidr,
            healthz_port: HEALTHZ_PORT,
            metrics_port: METRICS_PORT,
            depends_on_apiserver: cfg.machine.role == Role::Controlplane,
        }
    }

    /// The configuration file's text (YAML).
    pub fn render(&self) -> Result<String, RenderError> {
        let doc = Document {
            api_version: "kubeproxy.config.k8s.io/v1alpha1",
            kind: "KubeProxyConfiguration",
            mode: "nftables",
            client_connection: ClientConnection {
                kubeconfig: path_flag(&self.kubeconfig),
            },
            hostname_override: self.node_name.clone(),
            cluster_cidr: cidr_flag(&self.cluster_cidr),
            healthz_bind_address: format!("127.0.0.1:{}", self.healthz_port),
            metrics_bind_address: format!("127.0.0.1:{}", self.metrics_port),
        };
        serde_yaml::to_string(&doc)
            .map_err(|e| RenderError::new("rendering the kube-proxy configuration", e))
    }

    /// Writes [`KubeProxyConfig::render`] to `config_file`.
    pub fn write(&self) -> Result<(), RenderError> {
        crate::files::write_atomic(&self.config_file, &self.render()?)
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        vec![format!("--config={}", path_flag(&self.config_file))]
    }

    /// `GET http://127.0.0.1:<healthz_port>/healthz`.
    pub fn readiness(&self) -> Probe {
        Probe::Http {
            url: format!("http://127.0.0.1:{}/healthz", self.healthz_port),
        }
    }
}

/// The supervised service. The config file must have been written first
/// ([`KubeProxyConfig::write`]).
pub fn spec(cfg: &KubeProxyConfig) -> ServiceSpec {
    let deps: &[&str] = if cfg.depends_on_apiserver {
        &[crate::kube_apiserver::NAME]
    } else {
        &[]
    };
    // nft is in /usr/sbin.
    crate::component::kubernetes_component(
        NAME,
        &cfg.binary,
        cfg.args(),
        "/usr/bin:/usr/sbin:/bin:/sbin",
        deps,
        cfg.readiness(),
    )
}

/// `KubeProxyConfiguration`: only what cairn sets; kube-proxy defaults the rest.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: &'static str,
    kind: &'static str,
    mode: &'static str,
    client_connection: ClientConnection,
    hostname_override: String,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: String,
    healthz_bind_address: String,
    metrics_bind_address: String,
}

#[derive(Serialize)]
struct ClientConnection {
    kubeconfig: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KubeProxyConfig {
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("config");
        KubeProxyConfig::from_machine(&mc, &Paths::node())
    }

    #[test]
    fn document_from_the_design() {
        let d: serde_yaml::Value =
            serde_yaml::from_str(&cfg().render().expect("render")).expect("valid YAML");
        let s = |k: &str| d[k].as_str().map(str::to_owned);
        assert_eq!(
            s("apiVersion").as_deref(),
            Some("kubeproxy.config.k8s.io/v1alpha1")
        );
        assert_eq!(s("kind").as_deref(), Some("KubeProxyConfiguration"));
        assert_eq!(s("mode").as_deref(), Some("nftables"));
        assert_eq!(
            d["clientConnection"]["kubeconfig"].as_str(),
            Some("/state/secrets/kube-proxy.conf")
        );
        assert_eq!(s("hostnameOverride").as_deref(), Some("cairn"));
        assert_eq!(s("clusterCIDR").as_deref(), Some("10.244.0.0/16"));
        assert_eq!(s("healthzBindAddress").as_deref(), Some("127.0.0.1:10256"));
        assert_eq!(s("metricsBindAddress").as_deref(), Some("127.0.0.1:10249"));
    }

    #[test]
    fn flags_probe_and_ordering() {
        let c = cfg();
        assert_eq!(c.args(), ["--config=/run/cairn/kube-proxy/config.yaml"]);
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(s.depends_on, [crate::kube_apiserver::NAME]);
        match &s.readiness {
            Probe::Http { url } => assert_eq!(url, "http://127.0.0.1:10256/healthz"),
            other => panic!("unexpected probe {other:?}"),
        }
        let mut worker = c.clone();
        worker.depends_on_apiserver = false;
        assert!(spec(&worker).depends_on.is_empty());
    }
}
