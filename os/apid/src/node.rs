//! What the node is (version, names, uptime) and whether it is healthy.

use std::path::Path;

use cairn_api::proto::{HealthCheck, HealthReply, VersionReply};
use cairn_machine_config::MachineConfig;
use cairn_pki::paths;
use cairn_services::kubeapi::ApiClient;

use crate::Config;

/// The name of the Kubernetes node check in `Health`.
pub const NODE_CHECK: &str = "kubernetes node Ready";

/// A one-line file's trimmed content, when present.
fn read_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// The kept machine config, parsed; `None` when it cannot be read or parsed (the
/// node booted with something else then, and the run directory says what).
fn machine_config(config: &Config) -> Option<MachineConfig> {
    let text = crate::config::read_kept(&config.machine_config).ok()?;
    MachineConfig::parse(&config.machine_config.display().to_string(), &text).ok()
}

/// The node's name: PID 1's `hostname` file, else the machine config's.
fn hostname(config: &Config, mc: Option<&MachineConfig>) -> String {
    read_line(&config.run_dir.join("hostname"))
        .or_else(|| mc.map(|m| m.machine.hostname.to_string()))
        .or_else(|| read_line(Path::new("/proc/sys/kernel/hostname")))
        .unwrap_or_default()
}

fn uptime_seconds() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| s as u64)
}

pub fn version(config: &Config) -> VersionReply {
    let mc = machine_config(config);
    VersionReply {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: hostname(config, mc.as_ref()),
        kernel: read_line(Path::new("/proc/sys/kernel/osrelease")).unwrap_or_default(),
        machine_id: read_line(&config.run_dir.join("machine-id")).unwrap_or_default(),
        uptime_seconds: uptime_seconds(),
        kubernetes_version: cairn_machine_config::KUBERNETES_VERSION.to_owned(),
        role: mc
            .map(|m| match m.machine.role {
                cairn_machine_config::Role::Controlplane => "controlplane",
                cairn_machine_config::Role::Worker => "worker",
            })
            .unwrap_or_default()
            .to_owned(),
        node_ip: read_line(&config.run_dir.join("node-ip")).unwrap_or_default(),
        init_rss_bytes: init_rss_bytes().unwrap_or(0),
    }
}

/// One check per service (ok when ready, or a one-shot that exited) and the
/// Kubernetes node's Ready condition.
pub async fn health(config: &Config, control: &cairn_control::Client) -> HealthReply {
    let mut checks = match control.services().await {
        Ok(services) => services
            .into_iter()
            .map(|s| {
                let ok = s.ready || s.state == "exited";
                let last = s.events.last().map(|e| {
                    if e.detail.is_empty() {
                        e.kind.clone()
                    } else {
                        format!("{}: {}", e.kind, e.detail)
                    }
                });
                HealthCheck {
                    name: format!("service {}", s.name),
                    ok,
                    detail: match last {
                        Some(last) if !ok => format!("{} (last event {last})", s.state),
                        _ => s.state,
                    },
                }
            })
            .collect(),
        Err(e) => vec![HealthCheck {
            name: "services".into(),
            ok: false,
            detail: e.to_string(),
        }],
    };
    let node = hostname(config, machine_config(config).as_ref());
    checks.push(match node_ready(&config.secrets_dir, &node).await {
        Ok(detail) => HealthCheck {
            name: NODE_CHECK.into(),
            ok: true,
            detail,
        },
        Err(detail) => HealthCheck {
            name: NODE_CHECK.into(),
            ok: false,
            detail,
        },
    });
    HealthReply {
        healthy: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Reads the Node through admin.conf: `Ok` with a detail when its Ready
/// condition is True, else why not.
async fn node_ready(secrets: &Path, node: &str) -> Result<String, String> {
    if node.is_empty() {
        return Err("the node's name is unknown".into());
    }
    let kubeconfig = secrets.join(paths::ADMIN_CONF);
    let text = tokio::fs::read_to_string(&kubeconfig)
        .await
        .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    let client =
        ApiClient::from_kubeconfig(paths::ADMIN_CONF, &text, None).map_err(|e| e.to_string())?;
    let object = client
        .get(&format!("/api/v1/nodes/{node}"))
        .await
        .map_err(|e| format!("the API server did not answer for node {node}: {e}"))?;
    let ready = object["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"));
    let Some(ready) = ready else {
        return Err(format!("node {node} has no Ready condition yet"));
    };
    if ready["status"] == "True" {
        Ok(format!("node {node} is Ready"))
    } else {
        Err(format!(
            "node {node} is not Ready: {} {}",
            ready["reason"].as_str().unwrap_or("?"),
            ready["message"].as_str().unwrap_or("")
        )
        .trim_end()
        .to_owned())
    }
}

/// PID 1's VmRSS from /proc/1/status, in bytes.
fn init_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/1/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
