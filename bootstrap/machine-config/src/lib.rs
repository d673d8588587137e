//! The machine configuration: one versioned YAML document per node saying who the
//! node is (hostname, role), how it reaches the network, and how its cluster is
//! shaped.
//!
//! Every field is a validated type and unknown fields are refused, so a typo is an
//! error that names the field and its line rather than a silently ignored setting.
//! Not for: cluster secrets (they never live in this document) or how components
//! are run (see `cairn-services`).

#![forbid(unsafe_code)]

mod types;

use serde::{Deserialize, Serialize};

pub use types::{Cidr, Hostname, InvalidValue};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "cairn.dev/v1alpha1";
pub const KIND: &str = "MachineConfig";
/// The Kubernetes release this build carries (the lockfile's `kubernetes` version;
/// a test keeps the two equal).
pub const KUBERNETES_VERSION: &str = "v1.36.3";

/// Where a node keeps its last good machine config (the STATE partition); the
/// machine API writes a newly applied config here, read at the next boot.
pub const STATE_PATH: &str = "/state/machine.yaml";

mod durable;
pub use durable::write_durable;

/// A parsed, validated machine configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    pub api_version: String,
    pub kind: String,
    pub machine: Machine,
    #[serde(default)]
    pub cluster: Cluster,
    /// Where the cluster's desired state comes from (the GitOps reconciler).
    #[serde(default)]
    pub gitops: Option<GitSource>,
}

/// A git repository the cluster follows, and how the reconciler treats it.
/// Every field but `url` has a default; see docs/gitops.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitSource {
    /// `https://`, `ssh://` or `file://` URL. An HTTPS token may sit in the
    /// userinfo (`https://x-access-token:TOKEN@host/repo.git`) or in `auth`.
    pub url: String,
    /// A branch (default `main`), a tag or an exact commit; at most one of the three.
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    /// Directory inside the repository holding the manifests (default: the root).
    #[serde(default)]
    pub path: Option<String>,
    /// Seconds between polls (default 30).
    #[serde(default)]
    pub interval_seconds: Option<u32>,
    /// Seconds every network operation may take (default 60).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Credentials: a token or user/password for HTTPS, a private key for SSH.
    #[serde(default)]
    pub auth: GitAuth,
    /// Extra CA (PEM) the HTTPS server's certificate is checked against.
    #[serde(default)]
    pub ca: Option<String>,
    /// `known_hosts` lines; required for `ssh://` URLs.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Commit signatures and history rewrites.
    #[serde(default)]
    pub trust: GitTrust,
    /// The HTTPS receiver that starts a fetch at once (off unless a secret is set).
    #[serde(default)]
    pub webhook: Option<GitWebhook>,
    #[serde(default)]
    pub prune: GitPrune,
    #[serde(default)]
    pub health: GitHealth,
    /// Namespace for namespaced objects that name none (default: refuse them).
    #[serde(default)]
    pub default_namespace: Option<String>,
    /// Largest manifest file accepted, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Objects written at once within a stage (default 16).
    #[serde(default)]
    pub concurrency: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// OpenSSH private key (PEM text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_passphrase: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitTrust {
    /// When any key is set, every commit between the last applied one and the new
    /// head must be signed by one of them. `ssh-ed25519 AAAA...` lines.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// ASCII-armored OpenPGP public keys.
    #[serde(default)]
    pub pgp_keys: Vec<String>,
    /// Accept a new head that does not descend from the last applied commit.
    #[serde(default)]
    pub allow_history_rewrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitWebhook {
    /// TCP port on the node (default 9443).
    #[serde(default = "default_webhook_port")]
    pub port: u16,
    /// The shared secret the git server signs payloads with.
    pub secret: String,
}

fn default_webhook_port() -> u16 {
    9443
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitPrune {
    /// Delete objects removed from git (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Refuse a revision deleting more than this share of the inventory (default 50).
    #[serde(default = "default_max_delete_percent")]
    pub max_delete_percent: u8,
}

impl Default for GitPrune {
    fn default() -> Self {
        GitPrune {
            enabled: true,
            max_delete_percent: default_max_delete_percent(),
        }
    }
}

fn default_max_delete_percent() -> u8 {
    50
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitHealth {
    /// Seconds a revision has to become healthy (default 120).
    #[serde(default = "default_health_timeout")]
    pub timeout_seconds: u32,
    /// Re-apply the last healthy revision when one fails (default true).
    #[serde(default = "yes")]
    pub auto_rollback: bool,
}

impl Default for GitHealth {
    fn default() -> Self {
        GitHealth {
            timeout_seconds: default_health_timeout(),
            auto_rollback: true,
        }
    }
}

fn default_health_timeout() -> u32 {
    120
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Machine {
    /// Also the Kubernetes node name.
    pub hostname: Hostname,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub network: Network,
    /// Extra sysctls (`net.ipv4.ip_forward: "1"`), applied after cairn's own.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub debug: Debug,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Controlplane,
    Worker,
}

/// How the first network interface is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Interface name; default: the first non-loopback interface.
    #[serde(default)]
    pub interface: Option<String>,
    /// DHCP (default) or a static address.
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Static address with prefix, e.g. `10.0.2.15/24` (requires `dhcp: false`).
    #[serde(default)]
    pub address: Option<Cidr>,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub nameservers: Vec<std::net::Ipv4Addr>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interface: None,
            dhcp: true,
            address: None,
            gateway: None,
            nameservers: Vec::new(),
        }
    }
}

/// Debugging switches; all off in production.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Debug {
    /// On a fatal boot error, stay up showing the error instead of rebooting.
    #[serde(default)]
    pub hold_on_fatal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    #[serde(default = "default_cluster_name")]
    pub name: String,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: Cidr,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Cidr,
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
    /// The cluster DNS Service's address (default: the 10th address of serviceCidr).
    #[serde(default)]
    pub dns_service_ip: Option<std::net::Ipv4Addr>,
    /// The API server URL clients outside the node use (default
    /// `https://<node address>:6443`); its host is added to the serving certificate.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// More names or addresses for the API server's certificate.
    #[serde(default)]
    pub extra_sans: Vec<String>,
    /// If set, must be the release this image carries ([`KUBERNETES_VERSION`]).
    #[serde(default)]
    pub kubernetes_version: Option<String>,
}

impl Cluster {
    /// The cluster DNS Service's address.
    pub fn dns_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.dns_service_ip.or_else(|| self.service_cidr.nth(10))
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            name: default_cluster_name(),
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
            dns_domain: default_dns_domain(),
            dns_service_ip: None,
            api_endpoint: None,
            extra_sans: Vec::new(),
            kubernetes_version: None,
        }
    }
}

fn default_cluster_name() -> String {
    "cairn".into()
}
fn default_pod_cidr() -> Cidr {
    Cidr::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16)
}
fn default_service_cidr() -> Cidr {
    Cidr::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 12)
}
fn default_dns_domain() -> String {
    "cluster.local".into()
}

/// Why a document was refused. The message names the field and, where the YAML
/// parser knows it, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

impl MachineConfig {
    /// Parses and validates a document; `source_name` (a path or "fw_cfg") prefixes errors.
    pub fn parse(source_name: &str, text: &str) -> Result<MachineConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            message,
        };
        let cfg: MachineConfig =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|e| invalid(path_message(&e)))?;
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.api_version != API_VERSION {
            return Err(format!(
                "apiVersion: `{}` is not supported (this build reads `{API_VERSION}`)",
                self.api_version
            ));
        }
        if self.kind != KIND {
            return Err(format!("kind: `{}` is not `{KIND}`", self.kind));
        }
        let net = &self.machine.network;
        match (net.dhcp, &net.address) {
            (true, Some(_)) => return Err("machine.network: `address` is set but `dhcp` is true; set `dhcp: false` for a static address".into()),
            (false, None) => return Err("machine.network: `dhcp: false` needs an `address`".into()),
            _ => {}
        }
        if let (Some(addr), Some(gw)) = (&net.address, &net.gateway)
            && !addr.contains(*gw)
        {
            return Err(format!("machine.network.gateway: {gw} is outside {addr}"));
        }
        if self.cluster.pod_cidr.overlaps(&self.cluster.service_cidr) {
            return Err(format!(
                "cluster: podCidr {} overlaps serviceCidr {}",
                self.cluster.pod_cidr, self.cluster.service_cidr
            ));
        }
        let svc = self.cluster.service_cidr;
        if svc.prefix() > 28 {
            return Err(format!(
                "cluster.serviceCidr: {svc} is too small (at most /28)"
            ));
        }
        match self.cluster.dns_service_ip {
            Some(ip) if !svc.contains(ip) => {
                return Err(format!(
                    "cluster.dnsServiceIp: {ip} is outside serviceCidr {svc}"
                ));
            }
            Some(ip) if Some(ip) == svc.nth(1) => {
                return Err(format!(
                    "cluster.dnsServiceIp: {ip} is the `kubernetes` Service's address"
                ));
            }
            _ => {}
        }
        if self.cluster.pod_cidr.prefix() > 24 {
            return Err(format!(
                "cluster.podCidr: {} is smaller than one node's /24",
                self.cluster.pod_cidr
            ));
        }
        if let Some(url) = &self.cluster.api_endpoint {
            let host = url.strip_prefix("https://").unwrap_or("");
            if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
                return Err(format!(
                    "cluster.apiEndpoint: `{url}` is not an https://host[:port] URL"
                ));
            }
        }
        if let Some(v) = &self.cluster.kubernetes_version
            && v != KUBERNETES_VERSION
        {
            return Err(format!(
                "cluster.kubernetesVersion: `{v}` is not the release this image carries ({KUBERNETES_VERSION})"
            ));
        }
        if let Some(git) = &self.gitops {
            let refs = [&git.branch, &git.tag, &git.commit]
                .iter()
                .filter(|r| r.is_some())
                .count();
            if refs > 1 {
                return Err("gitops: set at most one of `branch`, `tag` and `commit`".into());
            }
            git.validate()?;
        }
        for key in self.machine.sysctls.keys() {
            let ok = !key.is_empty()
                && key.split('.').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if !ok {
                return Err(format!("machine.sysctls: `{key}` is not a sysctl name"));
            }
        }
        Ok(())
    }

    /// The embedded default: a single control-plane node named `cairn` on DHCP.
    pub fn default_document() -> &'static str {
        DEFAULT_DOCUMENT
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

impl GitSource {
    /// The checks a `gitops` section must pass (also run by the reconciler on its own file).
    pub fn validate(&self) -> Result<(), String> {
        let u = self.url.as_str();
        if !(u.starts_with("https://") || u.starts_with("ssh://") || u.starts_with("file://")) {
            return Err(format!(
                "gitops.url: `{u}` is not an https://, ssh:// or file:// URL"
            ));
        }
        if u.starts_with("ssh://") && self.known_hosts.is_none() {
            return Err(
                "gitops.knownHosts: an ssh:// URL needs the server's known_hosts lines".into(),
            );
        }
        if self.interval_seconds == Some(0) {
            return Err("gitops.intervalSeconds: must be at least 1".into());
        }
        if self.timeout_seconds == Some(0) {
            return Err("gitops.timeoutSeconds: must be at least 1".into());
        }
        if self.health.timeout_seconds == 0 {
            return Err("gitops.health.timeoutSeconds: must be at least 1".into());
        }
        if self.prune.max_delete_percent > 100 {
            return Err("gitops.prune.maxDeletePercent: at most 100".into());
        }
        if self.concurrency == Some(0) {
            return Err("gitops.concurrency: must be at least 1".into());
        }
        let a = &self.auth;
        if a.token.is_some() && (a.username.is_some() || a.password.is_some()) {
            return Err("gitops.auth: set `token` or `username`/`password`, not both".into());
        }
        if a.ssh_key.is_some() && !u.starts_with("ssh://") {
            return Err("gitops.auth.sshKey: only for ssh:// URLs".into());
        }
        if let Some(path) = &self.path
            && (path.starts_with('/') || path.split('/').any(|p| p == ".."))
        {
            return Err(format!(
                "gitops.path: `{path}` must be relative and stay inside the repository"
            ));
        }
        if let Some(c) = &self.commit
            && (c.len() != 40 || !c.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(format!(
                "gitops.commit: `{c}` is not a full 40-digit commit id"
            ));
        }
        if let Some(w) = &self.webhook
            && w.secret.len() < 16
        {
            return Err("gitops.webhook.secret: use at least 16 characters".into());
        }
        Ok(())
    }
}

const DEFAULT_DOCUMENT: &str = "\
apiVersion: cairn.dev/v1alpha1
kind: MachineConfig
machine:
  hostname: cairn
  role: controlplane
  network:
    dhcp: true
cluster:
  name: cairn
";

/// The full field path (`cluster.podCidr`) in front of serde_yaml's message, which
/// carries the line; serde_yaml alone names only the enclosing field for values that
/// fail validation.
fn path_message(e: &serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let inner = yaml_message(e.inner());
    let path = e.path().to_string();
    if path == "." || inner.starts_with(&path) {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

/// serde_yaml's message already carries the field path and `at line L column C`.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("line") => {
            format!("{msg} (line {}, column {})", loc.line(), loc.column())
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_document_parses() {
        let cfg =
            MachineConfig::parse("default", MachineConfig::default_document()).expect("valid");
        assert_eq!(cfg.machine.hostname.as_str(), "cairn");
        assert_eq!(cfg.machine.role, Role::Controlplane);
        assert!(cfg.machine.network.dhcp);
        assert_eq!(cfg.cluster.service_cidr.to_string(), "10.96.0.0/12");
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let text = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostnme: x\n";
        let err = MachineConfig::parse("machine.yaml", text)
            .expect_err("unknown field")
            .to_string();
        assert!(err.starts_with("machine.yaml: "), "{err}");
        assert!(err.contains("hostnme"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn garbled_yaml_names_the_line() {
        let text =
            "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine: [\n  hostname: {\n";
        let err = MachineConfig::parse("fw_cfg", text)
            .expect_err("garbled")
            .to_string();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_hostname_names_field_and_line() {
        let text =
            "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: Bad_Name\n";
        let err = MachineConfig::parse("m.yaml", text)
            .expect_err("bad hostname")
            .to_string();
        assert!(
            err.contains("hostname") && err.contains("Bad_Name") && err.contains("line 4"),
            "{err}"
        );
    }

    #[test]
    fn bad_cidr_is_refused() {
        let text = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: a\ncluster:\n  podCidr: 10.244.0.0/33\n";
        let err = MachineConfig::parse("m.yaml", text)
            .expect_err("bad cidr")
            .to_string();
        assert!(
            err.contains("cluster.podCidr") && err.contains("/33") && err.contains("line"),
            "{err}"
        );
    }

    #[test]
    fn static_network_rules() {
        let base = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: a\n  network:\n";
        let ok =
            format!("{base}    dhcp: false\n    address: 10.0.2.15/24\n    gateway: 10.0.2.2\n");
        let cfg = MachineConfig::parse("m", &ok).expect("static ok");
        assert_eq!(
            cfg.machine.network.address.map(|a| a.to_string()),
            Some("10.0.2.15/24".into())
        );
        let no_addr = format!("{base}    dhcp: false\n");
        assert!(
            MachineConfig::parse("m", &no_addr)
                .expect_err("no address")
                .to_string()
                .contains("needs an `address`")
        );
        let far_gw =
            format!("{base}    dhcp: false\n    address: 10.0.2.15/24\n    gateway: 10.9.9.9\n");
        assert!(
            MachineConfig::parse("m", &far_gw)
                .expect_err("gw")
                .to_string()
                .contains("outside")
        );
    }

    #[test]
    fn wrong_version_and_overlap_are_refused() {
        let v = MachineConfig::default_document().replace("v1alpha1", "v9");
        assert!(
            MachineConfig::parse("m", &v)
                .expect_err("version")
                .to_string()
                .contains("apiVersion")
        );
        let overlap = format!(
            "{}  podCidr: 10.96.0.0/16\n",
            MachineConfig::default_document()
        );
        assert!(
            MachineConfig::parse("m", &overlap)
                .expect_err("overlap")
                .to_string()
                .contains("overlaps")
        );
    }

    #[test]
    fn cluster_fields_are_checked() {
        let base = MachineConfig::default_document();
        for (extra, want) in [
            ("  dnsServiceIp: 10.200.0.10\n", "dnsServiceIp"),
            ("  apiEndpoint: http://x:6443\n", "apiEndpoint"),
            ("  kubernetesVersion: v1.20.0\n", "kubernetesVersion"),
            ("  serviceCidr: 10.96.0.0/30\n", "too small"),
            ("  podCidr: 10.244.0.0/25\n", "podCidr"),
        ] {
            let err = MachineConfig::parse("m", &format!("{base}{extra}"))
                .expect_err(extra)
                .to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let ok = format!(
            "{base}  dnsServiceIp: 10.96.0.53\n  apiEndpoint: https://127.0.0.1:6443\n  kubernetesVersion: {KUBERNETES_VERSION}\n"
        );
        let cfg = MachineConfig::parse("m", &ok).expect("valid");
        assert_eq!(
            cfg.cluster.dns_ip(),
            Some(std::net::Ipv4Addr::new(10, 96, 0, 53))
        );
        let default = MachineConfig::parse("m", base).expect("valid");
        assert_eq!(
            default.cluster.dns_ip(),
            Some(std::net::Ipv4Addr::new(10, 96, 0, 10))
        );
    }

    #[test]
    fn gitops_source_is_checked() {
        let base = MachineConfig::default_document();
        let ok = format!(
            "{base}gitops:\n  url: https://git.example/repo.git\n  branch: main\n  path: clusters/a\n"
        );
        let cfg = MachineConfig::parse("m", &ok).expect("valid");
        assert_eq!(cfg.gitops.map(|g| g.path), Some(Some("clusters/a".into())));
        let two = format!("{base}gitops:\n  url: file:///r\n  branch: a\n  tag: b\n");
        assert!(
            MachineConfig::parse("m", &two)
                .expect_err("two refs")
                .to_string()
                .contains("at most one")
        );
        let rel = format!("{base}gitops:\n  url: file:///r\n  path: ../up\n");
        assert!(
            MachineConfig::parse("m", &rel)
                .expect_err("escaping path")
                .to_string()
                .contains("gitops.path")
        );
        let ssh = format!("{base}gitops:\n  url: ssh://git@h/r.git\n");
        assert!(
            MachineConfig::parse("m", &ssh)
                .expect_err("ssh without known hosts")
                .to_string()
                .contains("knownHosts")
        );
        let full = format!(
            "{base}gitops:\n  url: https://h/r.git\n  auth:\n    token: t\n  webhook:\n    secret: 0123456789abcdef\n  prune:\n    maxDeletePercent: 30\n  health:\n    autoRollback: false\n"
        );
        let g = MachineConfig::parse("m", &full)
            .expect("full")
            .gitops
            .expect("gitops");
        assert_eq!((g.prune.max_delete_percent, g.prune.enabled), (30, true));
        assert_eq!(
            (g.health.auto_rollback, g.health.timeout_seconds),
            (false, 120)
        );
        assert_eq!(g.webhook.map(|w| w.port), Some(9443));
        let bad = format!("{base}gitops:\n  url: ftp://x/r\n");
        assert!(
            MachineConfig::parse("m", &bad)
                .expect_err("scheme")
                .to_string()
                .contains("gitops.url")
        );
        let typo = format!("{base}gitops:\n  url: file:///r\n  brnch: a\n");
        let err = MachineConfig::parse("m", &typo)
            .expect_err("typo")
            .to_string();
        assert!(err.contains("brnch") && err.contains("line"), "{err}");
    }

    #[test]
    fn kubernetes_version_matches_the_lockfile() {
        let lock = include_str!("../../../image-build/components.toml");
        let k8s = lock
            .split("[[go]]")
            .find(|block| block.contains("name = \"kubernetes\""))
            .expect("kubernetes in the lockfile");
        assert!(
            k8s.contains(&format!("version = \"{KUBERNETES_VERSION}\"")),
            "KUBERNETES_VERSION {KUBERNETES_VERSION} differs from the lockfile"
        );
    }

    #[test]
    fn round_trips() {
        let cfg =
            MachineConfig::parse("default", MachineConfig::default_document()).expect("valid");
        let again = MachineConfig::parse("again", &cfg.to_yaml()).expect("round trip");
        assert_eq!(cfg, again);
    }
}
