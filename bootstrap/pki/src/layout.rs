//! The one table of what a bundle holds — which CAs, which leaves with which names
//! and usages, which kubeconfigs — shared by `generate` and `check`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::paths::{self, CertPaths};
use crate::{ClusterParams, PkiError};

/// A self-signed certificate authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CaSpec {
    pub paths: CertPaths,
    pub common_name: &'static str,
}

pub(crate) const KUBERNETES_CA: CaSpec = CaSpec {
    paths: paths::CA,
    common_name: "kubernetes",
};
pub(crate) const ETCD_CA: CaSpec = CaSpec {
    paths: paths::ETCD_CA,
    common_name: "etcd-ca",
};
pub(crate) const FRONT_PROXY_CA: CaSpec = CaSpec {
    paths: paths::FRONT_PROXY_CA,
    common_name: "front-proxy-ca",
};
pub(crate) const OS_CA: CaSpec = CaSpec {
    paths: paths::OS_CA,
    common_name: "cairn-os-ca",
};

pub(crate) const CAS: [CaSpec; 4] = [KUBERNETES_CA, ETCD_CA, FRONT_PROXY_CA, OS_CA];

/// Extended key usages of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    Server,
    Client,
    ServerAndClient,
}

impl Usage {
    pub fn server(self) -> bool {
        matches!(self, Usage::Server | Usage::ServerAndClient)
    }
    pub fn client(self) -> bool {
        matches!(self, Usage::Client | Usage::ServerAndClient)
    }
}

/// A subject alternative name and why it is there ("node name", "advertise IP").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct San {
    pub value: SanValue,
    pub why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SanValue {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for SanValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanValue::Dns(name) => f.write_str(name),
            SanValue::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

fn dns(name: impl Into<String>, why: &'static str) -> San {
    San {
        value: SanValue::Dns(name.into()),
        why,
    }
}

fn ip(ip: impl Into<IpAddr>, why: &'static str) -> San {
    San {
        value: SanValue::Ip(ip.into()),
        why,
    }
}

/// A certificate signed by one of the CAs. Kubeconfig users are leaves too, with
/// `paths` naming the kubeconfig (both fields) instead of a crt/key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafSpec {
    pub paths: CertPaths,
    pub ca: CaSpec,
    pub common_name: String,
    /// At most one O (rcgen keeps one value per attribute type).
    pub organization: Option<&'static str>,
    pub usage: Usage,
    pub sans: Vec<San>,
}

fn leaf(paths: CertPaths, ca: CaSpec, common_name: impl Into<String>, usage: Usage) -> LeafSpec {
    LeafSpec {
        paths,
        ca,
        common_name: common_name.into(),
        organization: None,
        usage,
        sans: Vec::new(),
    }
}

/// The crt/key leaves, kubeadm's table plus the machine API's admin.
pub(crate) fn leaves(p: &ClusterParams) -> Result<Vec<LeafSpec>, PkiError> {
    let node = p.node_name.as_str();
    let mut apiserver = leaf(
        paths::APISERVER,
        KUBERNETES_CA,
        "kube-apiserver",
        Usage::Server,
    );
    apiserver.sans = vec![
        dns(node, "node name"),
        dns("kubernetes", "service name"),
        dns("kubernetes.default", "service name"),
        dns("kubernetes.default.svc", "service name"),
        dns(
            format!("kubernetes.default.svc.{}", p.dns_domain),
            "service name",
        ),
        ip(p.first_service_ip()?, "first service IP"),
        ip(p.advertise_ip, "advertise IP"),
        ip(Ipv4Addr::LOCALHOST, "loopback"),
        dns("localhost", "loopback"),
    ];
    for extra in &p.extra_sans {
        apiserver.sans.push(match extra.parse::<IpAddr>() {
            Ok(addr) => ip(addr, "extra SAN"),
            Err(_) => dns(extra.as_str(), "extra SAN"),
        });
    }
    dedup_sans(&mut apiserver.sans);

    let etcd_sans = || {
        let mut sans = vec![
            dns(node, "node name"),
            dns("localhost", "loopback"),
            ip(p.advertise_ip, "advertise IP"),
            ip(Ipv4Addr::LOCALHOST, "loopback"),
            ip(Ipv6Addr::LOCALHOST, "loopback"),
        ];
        dedup_sans(&mut sans);
        sans
    };
    let mut etcd_server = leaf(paths::ETCD_SERVER, ETCD_CA, node, Usage::ServerAndClient);
    etcd_server.sans = etcd_sans();
    let mut etcd_peer = leaf(paths::ETCD_PEER, ETCD_CA, node, Usage::ServerAndClient);
    etcd_peer.sans = etcd_sans();

    let mut kubelet_client = leaf(
        paths::APISERVER_KUBELET_CLIENT,
        KUBERNETES_CA,
        "kube-apiserver-kubelet-client",
        Usage::Client,
    );
    kubelet_client.organization = Some("kubeadm:cluster-admins");
    let mut os_admin = leaf(paths::OS_ADMIN, OS_CA, "os:admin", Usage::Client);
    os_admin.organization = Some("os:admin");
    let mut os_server = leaf(paths::OS_SERVER, OS_CA, node, Usage::Server);
    os_server.sans = etcd_sans();
    for extra in &p.extra_sans {
        os_server.sans.push(match extra.parse::<IpAddr>() {
            Ok(addr) => ip(addr, "extra SAN"),
            Err(_) => dns(extra.as_str(), "extra SAN"),
        });
    }
    dedup_sans(&mut os_server.sans);

    Ok(vec![
        apiserver,
        kubelet_client,
        leaf(
            paths::APISERVER_ETCD_CLIENT,
            ETCD_CA,
            "kube-apiserver-etcd-client",
            Usage::Client,
        ),
        etcd_server,
        etcd_peer,
        leaf(
            paths::ETCD_HEALTHCHECK_CLIENT,
            ETCD_CA,
            "kube-etcd-healthcheck-client",
            Usage::Client,
        ),
        leaf(
            paths::FRONT_PROXY_CLIENT,
            FRONT_PROXY_CA,
            "front-proxy-client",
            Usage::Client,
        ),
        os_admin,
        os_server,
    ])
}

fn dedup_sans(sans: &mut Vec<San>) {
    let mut seen = Vec::new();
    sans.retain(|s| {
        let new = !seen.contains(&s.value);
        if new {
            seen.push(s.value.clone());
        }
        new
    });
}

/// A kubeconfig: a client certificate signed by the Kubernetes CA, plus the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KubeconfigSpec {
    pub file: &'static str,
    pub user: LeafSpec,
    pub server: String,
}

pub(crate) fn kubeconfigs(p: &ClusterParams) -> Vec<KubeconfigSpec> {
    let conf = |file: &'static str, cn: String, org: Option<&'static str>, server: &String| {
        let mut user = leaf(
            CertPaths {
                crt: file,
                key: file,
            },
            KUBERNETES_CA,
            cn,
            Usage::Client,
        );
        user.organization = org;
        KubeconfigSpec {
            file,
            user,
            server: server.clone(),
        }
    };
    let (local, external) = (&p.local_server, &p.external_server);
    vec![
        conf(
            paths::ADMIN_CONF,
            "kubernetes-admin".into(),
            Some("kubeadm:cluster-admins"),
            external,
        ),
        conf(
            paths::SUPER_ADMIN_CONF,
            "kubernetes-super-admin".into(),
            Some("system:masters"),
            external,
        ),
        conf(
            paths::CONTROLLER_MANAGER_CONF,
            "system:kube-controller-manager".into(),
            None,
            local,
        ),
        conf(
            paths::SCHEDULER_CONF,
            "system:kube-scheduler".into(),
            None,
            local,
        ),
        conf(
            paths::KUBELET_CONF,
            format!("system:node:{}", p.node_name),
            Some("system:nodes"),
            local,
        ),
        conf(
            paths::KUBE_PROXY_CONF,
            "system:kube-proxy".into(),
            None,
            local,
        ),
    ]
}
