//! The reconciler's host tests share this: the real `cairn-gitops` binary run
//! against the shared real API server (tests/kube) and real git repositories
//! (tests/gitserver), observed only through what users see (kubectl, the
//! status object, the logs).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_testkube::KubeFixture;
use serde_json::Value;

pub fn fixture() -> &'static KubeFixture {
    cairn_testkube::shared()
}

/// A manifest document: a ConfigMap.
pub fn configmap(ns: &str, name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n")
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

/// One running reconciler process.
pub struct Reconciler {
    child: Child,
    pub name: String,
    pub log: PathBuf,
    pub state: PathBuf,
    config: PathBuf,
}

pub struct Options<'a> {
    pub identity: &'a str,
    pub etcd: bool,
    pub tls: Option<(&'a Path, &'a Path)>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            identity: "node-1",
            etcd: false,
            tls: None,
        }
    }
}

impl Reconciler {
    /// Starts `cairn-gitops` as instance `name` with the `gitops` section `config`;
    /// its files live under `dir`.
    pub fn start(name: &str, dir: &Path, config: &str, opts: Options<'_>) -> Reconciler {
        let fx = fixture();
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-gitops"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--kubeconfig")
            .arg(fx.kubeconfig_path())
            .arg("--state-dir")
            .arg(&state)
            .args(["--identity", opts.identity, "--name", name]);
        if opts.etcd {
            let tls = fx.etcd_tls();
            cmd.args(["--etcd-endpoint", &fx.etcd_endpoint(), "--lease-seconds", "6"])
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
            .expect("starting cairn-gitops");
        Reconciler {
            child,
            name: name.to_string(),
            log,
            state,
            config: config_path,
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
        fixture()
            .kubectl(&["get", "syncs.gitops.cairn.dev", &self.name, "-o", "json"])
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| v["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until `check` holds on the status; panics with the status and log otherwise.
    pub fn wait_status(&mut self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
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
            s["lastError"].as_str().is_some_and(|e| e.contains(contains))
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

/// `kubectl get` of one object as JSON, None if absent.
pub fn get(args: &[&str]) -> Option<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    fixture()
        .kubectl(&full)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Polls until `f` returns Some, or panics naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The basic `gitops` section for a file:// repository.
pub fn file_config(url: &str, extra: &str) -> String {
    format!("url: {url}\nbranch: main\nintervalSeconds: 1\n{extra}")
}
