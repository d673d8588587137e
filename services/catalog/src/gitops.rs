//! The GitOps reconciler (`cairn-gitops`): keeps the cluster equal to the git
//! repository of the machine config's `gitops` section.
//!
//! Configuration: that section, written as YAML to `/run/cairn/gitops.yaml` at
//! every boot (mode 0600: it may hold a token, an SSH key or the webhook secret),
//! plus flags: the bundle's `admin.conf`, its mirror and inventory on DATA
//! (`/var/lib/cairn/gitops`), the node name as its identity, etcd for the leader
//! election with the API server's etcd client certificate, and the machine API's
//! server certificate for its HTTPS webhook/metrics listener.
//! Runs on control-plane nodes whose machine config has a `gitops` section.
//! Ordering: depends on kube-apiserver.
//! Readiness: `GET /healthz` on the webhook port (loopback, unverified).
//! Restart: always, with backoff (it exits when it loses the leadership).

use std::path::PathBuf;

use cairn_machine_config::{GitSource, MachineConfig, Role};
use cairn_pki::paths;
use cairn_supervisor::ServiceSpec;

use crate::files::{RenderError, run_path};
use crate::{Paths, path_flag};

pub const NAME: &str = "gitops";
/// The webhook port when the section sets none (as `cairn-gitops` assumes).
pub const DEFAULT_WEBHOOK_PORT: u16 = 9443;

/// Everything that decides how the reconciler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitopsConfig {
    pub binary: PathBuf,
    /// The machine config's `gitops` section.
    pub source: GitSource,
    /// Where [`GitopsConfig::write`] puts `source` (`/run/cairn/gitops.yaml`).
    pub config_file: PathBuf,
    /// Mirror, inventory and last applied revision (on DATA).
    pub state_dir: PathBuf,
    /// The node name: the reconciler's name in the election and its events.
    pub identity: String,
    /// `https://127.0.0.1:2379`.
    pub etcd_endpoint: String,
    /// Root of the secrets bundle.
    pub secrets: PathBuf,
}

impl GitopsConfig {
    /// The reconciler of a control-plane node with a `gitops` section; `None` for
    /// any other node.
    pub fn from_machine(cfg: &MachineConfig, paths: &Paths) -> Option<GitopsConfig> {
        let source = cfg.gitops.clone()?;
        (cfg.machine.role == Role::Controlplane).then(|| GitopsConfig {
            binary: paths.bin.join("cairn-gitops"),
            source,
            config_file: run_path("gitops.yaml"),
            state_dir: paths.var_lib.join("cairn/gitops"),
            identity: cfg.machine.hostname.to_string(),
            etcd_endpoint: format!("https://127.0.0.1:{}", crate::etcd::CLIENT_PORT),
            secrets: paths.secrets.clone(),
        })
    }

    /// The webhook/metrics listener's port.
    pub fn port(&self) -> u16 {
        self.source
            .webhook
            .as_ref()
            .map_or(DEFAULT_WEBHOOK_PORT, |w| w.port)
    }

    fn file(&self, rel: &str) -> String {
        path_flag(&self.secrets.join(rel))
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let f = |rel: &str| self.file(rel);
        vec![
            "--config".into(),
            path_flag(&self.config_file),
            "--kubeconfig".into(),
            f(paths::ADMIN_CONF),
            "--state-dir".into(),
            path_flag(&self.state_dir),
            "--identity".into(),
            self.identity.clone(),
            "--etcd-endpoint".into(),
            self.etcd_endpoint.clone(),
            "--etcd-ca".into(),
            f(paths::ETCD_CA.crt),
            "--etcd-cert".into(),
            f(paths::APISERVER_ETCD_CLIENT.crt),
            "--etcd-key".into(),
            f(paths::APISERVER_ETCD_CLIENT.key),
            "--tls-cert".into(),
            f(paths::OS_SERVER.crt),
            "--tls-key".into(),
            f(paths::OS_SERVER.key),
        ]
    }

    /// Writes the `gitops` section to [`GitopsConfig::config_file`] (mode 0600).
    pub fn write(&self) -> Result<(), RenderError> {
        let path = &self.config_file;
        let what = || format!("writing {}", path.display());
        let text = serde_yaml::to_string(&self.source).map_err(|e| RenderError::new(what(), e))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RenderError::new(format!("creating {}", dir.display()), e))?;
        }
        cairn_machine_config::write_durable(path, text.as_bytes())
            .map_err(|e| RenderError::new(what(), e))
    }
}

/// The supervised service: after the API server, probed on its `/healthz`.
pub fn spec(cfg: &GitopsConfig) -> ServiceSpec {
    crate::component::apiserver_client_spec(NAME, &cfg.binary, cfg.args(), cfg.port())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const DOC: &str = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: node-1\ngitops:\n  url: https://git.example/demo.git\n  auth:\n    token: t0ken\n  webhook:\n    port: 9555\n    secret: s3cret-s3cret-s3cret-s3cret-0000\n";

    #[test]
    fn only_on_control_planes_with_a_section() {
        let mc = MachineConfig::parse("t", DOC).expect("config");
        let c = GitopsConfig::from_machine(&mc, &Paths::node()).expect("gitops");
        let args = c.args();
        for pair in [
            ["--config", "/run/cairn/gitops.yaml"],
            ["--kubeconfig", "/state/secrets/admin.conf"],
            ["--state-dir", "/var/lib/cairn/gitops"],
            ["--identity", "node-1"],
            ["--etcd-endpoint", "https://127.0.0.1:2379"],
            [
                "--etcd-cert",
                "/state/secrets/pki/apiserver-etcd-client.crt",
            ],
            ["--tls-cert", "/state/secrets/pki/os/server.crt"],
        ] {
            assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
        }
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(s.depends_on, [crate::kube_apiserver::NAME]);
        assert_eq!(c.port(), 9555);

        let worker = DOC.replace("hostname: node-1\n", "hostname: node-1\n  role: worker\n");
        let mc = MachineConfig::parse("t", &worker).expect("config");
        assert!(GitopsConfig::from_machine(&mc, &Paths::node()).is_none());
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("config");
        assert!(GitopsConfig::from_machine(&mc, &Paths::node()).is_none());
    }

    #[test]
    fn writes_the_section_private_and_readable_back() {
        let mc = MachineConfig::parse("t", DOC).expect("config");
        let mut c = GitopsConfig::from_machine(&mc, &Paths::node()).expect("gitops");
        let dir = tempfile::tempdir().expect("tempdir");
        c.config_file = dir.path().join("run/gitops.yaml");
        c.write().expect("write");
        let meta = std::fs::metadata(&c.config_file).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&c.config_file).expect("read");
        let back: GitSource = serde_yaml::from_str(&text).expect("parse");
        assert_eq!(back, c.source);
    }
}
