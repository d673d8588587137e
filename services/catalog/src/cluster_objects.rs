//! The objects every cairn cluster has from its first boot, applied by the init as
//! soon as the API server is ready (server-side apply, field manager `cairn`):
//! - the ClusterRoleBinding that makes the `kubeadm:cluster-admins` group (the admin
//!   kubeconfig's organisation) cluster-admin; the bundle's `super-admin.conf`
//!   (group `system:masters`) is only used to apply these;
//! - access for the API server's kubelet client (`kube-apiserver-kubelet-client`)
//!   to kubelet's API (logs, exec, port-forward, metrics), through the built-in
//!   `system:kubelet-api-admin` role;
//! - the cluster DNS ([`crate::coredns`]).
//!
//! Everything else in the cluster comes from git (the GitOps reconciler).

use cairn_machine_config::MachineConfig;
use serde_json::{Value, json};

use crate::files::RenderError;

/// In the order they are applied; `upstream_dns`: whether the node has resolvers
/// (see [`crate::coredns::corefile`]).
pub fn objects(cfg: &MachineConfig, upstream_dns: bool) -> Result<Vec<Value>, RenderError> {
    let mut out = vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeadm:cluster-admins"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "kubeadm:cluster-admins"}]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "cairn:apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}]
        }),
    ];
    out.extend(crate::coredns::objects(cfg, upstream_dns)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_has_a_path() {
        let cfg = MachineConfig::parse("default", MachineConfig::default_document())
            .expect("default config");
        let objects = objects(&cfg, false).expect("objects");
        assert!(objects.len() >= 8);
        for o in &objects {
            crate::kubeapi::object_path(o).expect("a REST path");
        }
        let svc = objects
            .iter()
            .find(|o| o["metadata"]["name"] == "kube-dns")
            .expect("kube-dns");
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    }
}
