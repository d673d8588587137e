//! Bundle-relative file names, kubeadm's layout: `pki/...` holds certificates and
//! keys, kubeconfigs sit at the top. Components' flags are built from these.

/// A certificate and its private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertPaths {
    pub crt: &'static str,
    pub key: &'static str,
}

const fn pair(crt: &'static str, key: &'static str) -> CertPaths {
    CertPaths { crt, key }
}

// Certificate authorities.
pub const CA: CertPaths = pair("pki/ca.crt", "pki/ca.key");
pub const ETCD_CA: CertPaths = pair("pki/etcd/ca.crt", "pki/etcd/ca.key");
pub const FRONT_PROXY_CA: CertPaths = pair("pki/front-proxy-ca.crt", "pki/front-proxy-ca.key");
/// The future machine API's CA.
pub const OS_CA: CertPaths = pair("pki/os/ca.crt", "pki/os/ca.key");

// Leaves.
pub const APISERVER: CertPaths = pair("pki/apiserver.crt", "pki/apiserver.key");
pub const APISERVER_KUBELET_CLIENT: CertPaths = pair(
    "pki/apiserver-kubelet-client.crt",
    "pki/apiserver-kubelet-client.key",
);
pub const APISERVER_ETCD_CLIENT: CertPaths = pair(
    "pki/apiserver-etcd-client.crt",
    "pki/apiserver-etcd-client.key",
);
pub const ETCD_SERVER: CertPaths = pair("pki/etcd/server.crt", "pki/etcd/server.key");
pub const ETCD_PEER: CertPaths = pair("pki/etcd/peer.crt", "pki/etcd/peer.key");
pub const ETCD_HEALTHCHECK_CLIENT: CertPaths = pair(
    "pki/etcd/healthcheck-client.crt",
    "pki/etcd/healthcheck-client.key",
);
pub const FRONT_PROXY_CLIENT: CertPaths =
    pair("pki/front-proxy-client.crt", "pki/front-proxy-client.key");
/// The machine API server's certificate (node name, addresses, loopback).
pub const OS_SERVER: CertPaths = pair("pki/os/server.crt", "pki/os/server.key");
/// Client certificate of the machine API's administrator.
pub const OS_ADMIN: CertPaths = pair("pki/os/admin.crt", "pki/os/admin.key");

// Service-account token signing.
pub const SA_KEY: &str = "pki/sa.key";
pub const SA_PUB: &str = "pki/sa.pub";

// Kubeconfigs.
pub const ADMIN_CONF: &str = "admin.conf";
pub const SUPER_ADMIN_CONF: &str = "super-admin.conf";
pub const CONTROLLER_MANAGER_CONF: &str = "controller-manager.conf";
pub const SCHEDULER_CONF: &str = "scheduler.conf";
pub const KUBELET_CONF: &str = "kubelet.conf";
pub const KUBE_PROXY_CONF: &str = "kube-proxy.conf";
