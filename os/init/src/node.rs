//! Bringing the Kubernetes node up: the secrets bundle, the services of
//! `cairn_services::node_plan`, the CNI config once the node has a pod subnet, and
//! the cluster's built-in objects once the API server answers.
//!
//! The secrets bundle comes from QEMU fw_cfg `opt/cairn/secrets` (how tests and VMs
//! hand it over; later the machine API) and is kept on STATE; with none anywhere,
//! or one that does not fit this node (another node's name, another address), the
//! console says exactly why and no Kubernetes service starts, while the init stays
//! up. Secrets never reach the console: errors name files and problems only.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use cairn_machine_config::MachineConfig;
use cairn_pki::{Bundle, ClusterParams, Existing, OffsetDateTime, paths};
use cairn_services::kubeapi::{ApiClient, describe};
use cairn_services::{Paths, cni, images, kube_apiserver, kubelet};
use cairn_supervisor::{State, Supervisor};
use tokio::sync::watch;

use crate::tasks::Tasks;

pub const SECRETS_FW_CFG: &str = "opt/cairn/secrets";
/// The node's resolvers (written by the network setup).
const RESOLV_CONF: &str = "/run/cairn/resolv.conf";

/// Takes a bundle handed over through fw_cfg onto STATE (when it differs from the
/// kept one) and returns the bundle on STATE, or why there is none.
pub fn take_secrets(fw_cfg: &Path, state: &Path) -> Result<Bundle, String> {
    match std::fs::read_to_string(fw_cfg) {
        Ok(text) => match Bundle::from_document(&text) {
            Ok(bundle) => {
                let kept = Bundle::load(state).ok();
                if kept.as_ref() != Some(&bundle) {
                    if let Err(e) = bundle.write_to(state, Existing::Replace) {
                        tracing::error!(event = "secrets_not_saved", error = ?e.to_string(), "could not keep the secrets bundle on STATE");
                        return Ok(bundle);
                    }
                    tracing::info!(event = "secrets_installed", source = "fw_cfg", files = bundle.len(), dir = %state.display(), "secrets bundle installed");
                }
            }
            Err(e) => {
                tracing::error!(event = "secrets_rejected", source = "fw_cfg", error = ?e.to_string(), "secrets bundle from fw_cfg refused; keeping the one on STATE if any");
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(event = "secrets_unreadable", source = "fw_cfg", error = ?e.to_string(), "could not read fw_cfg");
        }
    }
    match Bundle::load(state) {
        Ok(b) if !b.is_empty() => Ok(b),
        Ok(_) => Err(format!(
            "the secrets bundle in {} is empty",
            state.display()
        )),
        Err(e) if !state.exists() => Err(format!(
            "no secrets bundle: none in fw_cfg {SECRETS_FW_CFG} and none on STATE ({}); generate one with `cairnctl gen config` ({e})",
            state.display()
        )),
        Err(e) => Err(format!("the secrets bundle on STATE is unreadable: {e}")),
    }
}

/// Runs until the node's services are registered with the supervisor, then keeps
/// two background jobs going (the CNI config and the cluster objects).
pub async fn run(
    cfg: MachineConfig,
    supervisor: Supervisor,
    tasks: Tasks,
    bundle: Result<Bundle, String>,
    mut address: watch::Receiver<Option<Ipv4Addr>>,
) {
    let bundle = match bundle {
        Ok(b) => b,
        Err(message) => {
            tracing::error!(event = "kubernetes_not_started", error = ?message, "Kubernetes is not started");
            return;
        }
    };
    let ip = loop {
        if let Some(ip) = *address.borrow_and_update() {
            break IpAddr::V4(ip);
        }
        if address.changed().await.is_err() {
            return;
        }
    };
    let params = ClusterParams::from_machine_config(&cfg, ip, OffsetDateTime::now_utc());
    if let Err(e) = cairn_pki::check(&bundle, &params) {
        tracing::error!(event = "kubernetes_not_started", node = %cfg.machine.hostname, address = %ip, error = ?e.to_string(), "the secrets bundle does not fit this node");
        return;
    }
    let node_paths = Paths::node();
    let archives = match images::archives(Path::new(images::DIR)) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(event = "images_missing", dir = images::DIR, error = ?e.to_string(), "no pod images to import");
            Vec::new()
        }
    };
    let plan = match cairn_services::node_plan(&cfg, &node_paths, ip, archives) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(event = "kubernetes_not_started", error = ?e.to_string(), "rendering the node's configuration failed");
            return;
        }
    };
    if let Err(e) = plan.write_files() {
        tracing::error!(event = "kubernetes_not_started", error = ?e.to_string(), "writing the node's configuration failed");
        return;
    }
    #[cfg(feature = "bench-plain")]
    if crate::bench::plain_launch_requested() {
        match local_client(&node_paths.secrets, paths::SUPER_ADMIN_CONF) {
            Ok(api) => crate::bench::plain_launch(plan.specs(), api),
            Err(e) => tracing::error!(error = ?e, "plain launch: no API client"),
        }
        return;
    }
    if let Err(e) = supervisor.add(plan.specs()).await {
        tracing::error!(event = "kubernetes_not_started", error = ?e.to_string(), "registering the node's services failed");
        return;
    }
    tracing::info!(event = "kubernetes_starting", node = %cfg.machine.hostname, address = %ip, uptime_ms = crate::console::uptime().as_millis() as u64, "node services registered");
    let secrets = node_paths.secrets.clone();
    tasks.until_done(
        "cluster objects",
        apply_cluster_objects(cfg.clone(), supervisor.clone(), secrets.clone()),
    );
    tasks.until_done("CNI config", configure_cni(cfg, supervisor, secrets));
}

/// Waits until `service` is ready (polling the supervisor's status).
async fn until_ready(supervisor: &Supervisor, service: &str) {
    loop {
        let ready = supervisor
            .status()
            .await
            .iter()
            .any(|s| s.name == service && s.state == State::Ready);
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn local_client(secrets: &Path, kubeconfig: &str) -> Result<ApiClient, String> {
    let path = secrets.join(kubeconfig);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let server = format!("https://127.0.0.1:{}", kube_apiserver::SECURE_PORT);
    ApiClient::from_kubeconfig(&path.display().to_string(), &text, Some(&server))
        .map_err(|e| e.to_string())
}

/// Applies `cairn_services::cluster_objects` with the bundle's super-admin
/// identity, retrying (with backoff up to 10 s) until every object is accepted.
async fn apply_cluster_objects(
    cfg: MachineConfig,
    supervisor: Supervisor,
    secrets: std::path::PathBuf,
) {
    let upstream_dns = std::fs::read_to_string(RESOLV_CONF)
        .is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("nameserver")));
    let objects = match cairn_services::cluster_objects::objects(&cfg, upstream_dns) {
        Ok(o) => o,
        Err(e) => {
            return tracing::error!(event = "cluster_objects_failed", error = ?e.to_string(), "rendering the cluster objects failed");
        }
    };
    let mut delay = Duration::from_millis(500);
    loop {
        until_ready(&supervisor, kube_apiserver::NAME).await;
        let result = async {
            let client = local_client(&secrets, paths::SUPER_ADMIN_CONF)?;
            for o in &objects {
                client
                    .apply(o)
                    .await
                    .map_err(|e| format!("{}: {e}", describe(o)))?;
            }
            Ok::<(), String>(())
        }
        .await;
        match result {
            Ok(()) => {
                return tracing::info!(
                    event = "cluster_objects_applied",
                    count = objects.len(),
                    "cluster objects applied"
                );
            }
            Err(e) => {
                tracing::warn!(event = "cluster_objects_retry", error = ?e, retry_ms = delay.as_millis() as u64, "applying the cluster objects failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Once kubelet has registered the node and the controller-manager has given it a
/// pod subnet, writes the CNI conflist for that subnet (the node turns Ready).
async fn configure_cni(cfg: MachineConfig, supervisor: Supervisor, secrets: std::path::PathBuf) {
    let node = cfg.machine.hostname.to_string();
    let path = format!("/api/v1/nodes/{node}");
    let mut last_error = String::new();
    loop {
        until_ready(&supervisor, kubelet::NAME).await;
        let subnet = async {
            let client = local_client(&secrets, paths::KUBELET_CONF)?;
            let obj = client.get(&path).await.map_err(|e| e.to_string())?;
            let cidr = obj["spec"]["podCIDR"]
                .as_str()
                .ok_or_else(|| format!("node {node} has no pod subnet yet"))?;
            cidr.parse::<cairn_machine_config::Cidr>()
                .map_err(|e| format!("node {node}: podCIDR: {e}"))
        }
        .await;
        match subnet.and_then(|s| {
            cni::CniConfig::new(&cfg, s)
                .map_err(|e| e.to_string())
                .map(|c| (s, c))
        }) {
            Ok((s, conf)) => match conf.write() {
                Ok(()) => {
                    return tracing::info!(event = "cni_configured", pod_subnet = %s, file = %conf.conf_file().display(), "pod network configured");
                }
                Err(e) => {
                    return tracing::error!(event = "cni_failed", error = ?e.to_string(), "writing the CNI config failed");
                }
            },
            Err(e) => {
                if e != last_error {
                    tracing::debug!(event = "cni_waiting", reason = ?e, "waiting for the node's pod subnet");
                    last_error = e;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
