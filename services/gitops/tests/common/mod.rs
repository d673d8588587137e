//! The reconciler's host tests share this: the real `cairn-gitops` binary run
//! against the shared real API server (tests/kube) and real git repositories
//! (tests/gitserver), observed only through what users see (kubectl, the
//! status object, the logs). The process and the manifests are
//! `cairn_testkube::gitops`, shared with `cairn-bench-gitops`.

#![allow(dead_code, unused_imports)] // each test file uses a part

use std::time::{Duration, Instant};

use cairn_testkube::KubeFixture;
pub use cairn_testkube::gitops::{
    Options, Reconciler, configmap, deployment, file_config, namespace, tail, widget, widget_crd,
};
use serde_json::Value;

pub fn fixture() -> &'static KubeFixture {
    cairn_testkube::shared()
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
