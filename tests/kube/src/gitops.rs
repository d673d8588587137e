//! The GitOps reconciler (`cairn-gitops`) run as a process against the shared
//! fixture ([`crate::shared`]), observed only through what users see (kubectl,
//! the status object, the logs); and the manifests its tests and benchmark
//! commit. Shared by services/gitops's tests and `cairn-bench-gitops`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A manifest document: a ConfigMap.
pub fn configmap(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n"
    )
}

pub fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// A Deployment with `replicas` (0 is healthy without a kubelet; more never is).
pub fn deployment(ns: &str, name: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: main\n        image: {image}\n"
    )
}

pub fn secret(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  value: \"{value}\"\n"
    )
}

/// A ClusterIP Service on port 80 selecting `app: <name>`.
pub fn service(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n    targetPort: 8080\n"
    )
}

pub fn service_account(ns: &str, name: &str) -> String {
    format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {ns}\n")
}

/// The CustomResourceDefinition of the namespaced kind `Widget` (`widgets.<group>`,
/// version v1, any fields).
pub fn widget_crd(group: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names:\n    kind: Widget\n    plural: widgets\n    singular: widget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n"
    )
}

/// A `Widget` of [`widget_crd`]`(group)`.
pub fn widget(group: &str, ns: &str, name: &str, size: usize) -> String {
    format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  size: {size}\n"
    )
}

/// The basic `gitops` section for a file:// repository.
pub fn file_config(url: &str, extra: &str) -> String {
    format!("url: {url}\nbranch: main\nintervalSeconds: 1\n{extra}")
}

/// One running reconciler process.
pub struct Reconciler {
    child: Child,
    pub name: String,
    pub log: PathBuf,
    pub state: PathBuf,
}

pub struct Options<'a> {
    pub identity: &'a str,
    pub etcd: bool,
    /// `--tls-cert`/`--tls-key` (the webhook and /metrics listener, on 127.0.0.1).
    pub tls: Option<(&'a Path, &'a Path)>,
    /// The binary; default [`default_binary`].
    pub binary: Option<&'a Path>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            identity: "node-1",
            etcd: false,
            tls: None,
            binary: None,
        }
    }
}

/// `cairn-gitops` beside the running executable: in `target/<profile>/`, also
/// for a test running from `target/<profile>/deps/` (where cargo builds it for
/// the package's tests).
pub fn default_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable");
    let mut dir = exe.parent().expect("its directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("cairn-gitops")
}

impl Reconciler {
    /// Starts `cairn-gitops` as instance `name` with the `gitops` section `config`;
    /// its files live under `dir`, its output goes to `<dir>/<identity>.log`.
    pub fn start(name: &str, dir: &Path, config: &str, opts: Options<'_>) -> Reconciler {
        let fx = crate::shared();
        std::fs::create_dir_all(dir).expect("dir");
        let config_path = dir.join("gitops.yaml");
        std::fs::write(&config_path, config).expect("config");
        let state = dir.join("state");
        let log = dir.join(format!("{}.log", opts.identity));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let binary = opts.binary.map_or_else(default_binary, Path::to_path_buf);
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--kubeconfig")
            .arg(fx.kubeconfig_path())
            .arg("--state-dir")
            .arg(&state)
            .args(["--identity", opts.identity, "--name", name]);
        if opts.etcd {
            let tls = fx.etcd_tls();
            cmd.args([
                "--etcd-endpoint",
                &fx.etcd_endpoint(),
                "--lease-seconds",
                "6",
            ])
            .arg("--etcd-ca")
            .arg(&tls.ca)
            .arg("--etcd-cert")
            .arg(&tls.cert)
            .arg("--etcd-key")
            .arg(&tls.key);
        }
        if let Some((cert, key)) = opts.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            cmd.args(["--listen-address", "127.0.0.1"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Reconciler {
            child,
            name: name.to_string(),
            log,
            state,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The status object's `status`, or Null before it has one.
    pub fn status(&self) -> Value {
        crate::shared()
            .kubectl(&["get", "syncs.gitops.cairn.dev", &self.name, "-o", "json"])
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| v["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until `check` holds on the status; panics with the status and log otherwise.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline || !self.running() {
                panic!(
                    "waiting for {what}: status {}\n--- reconciler log ---\n{}",
                    serde_json::to_string_pretty(&s).unwrap_or_default(),
                    tail(&self.log_text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    pub fn wait_applied(&mut self, revision: &str, timeout: Duration) -> Value {
        self.wait_status(&format!("revision {revision} applied"), timeout, |s| {
            s["appliedRevision"] == revision
        })
    }

    pub fn wait_error(&mut self, contains: &str, timeout: Duration) -> Value {
        self.wait_status(&format!("an error containing {contains:?}"), timeout, |s| {
            s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(contains))
        })
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
