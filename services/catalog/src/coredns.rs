//! CoreDNS: the cluster DNS, run as a Deployment + the `kube-dns` Service (not a
//! supervised host process: it serves pods, from a pod).
//!
//! Configuration: the objects of [`objects`], applied by the init with server-side
//! apply once the API server is ready: a ServiceAccount, a ClusterRole reading
//! Services, EndpointSlices, Pods and Namespaces and its binding, the Corefile in a
//! ConfigMap (the `kubernetes` plugin for the cluster domain and reverse zones,
//! `forward` to the node's resolvers for everything else when it has any), a
//! Deployment of one
//! replica of our locally built image [`IMAGE`] (`imagePullPolicy: Never`: it is
//! imported at boot, never pulled), and the Service `kube-dns` at the cluster DNS
//! address kubelet hands to every pod (10.96.0.10 by default).
//! Ordering: after kube-apiserver; its pod starts once the node is Ready.
//! Readiness: the pod's readiness probe is CoreDNS's `ready` plugin (:8181/ready);
//! liveness its `health` plugin (:8080/health).
//! Restart: the Deployment's (kubelet restarts the container, the ReplicaSet the pod).

use cairn_machine_config::MachineConfig;
use serde_json::{Value, json};

use crate::files::RenderError;

/// The image, built by image-build (`cairn_image::oci::COREDNS_IMAGE`; a test keeps
/// the two equal).
pub const IMAGE: &str = "cairn.local/coredns:v1.14.2";
pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "coredns";

/// The Corefile for the machine config's cluster domain. Names outside the cluster
/// are forwarded to the node's resolvers when it has any (`upstream`); CoreDNS
/// refuses to start with a `forward` to an empty resolv.conf.
pub fn corefile(cfg: &MachineConfig, upstream: bool) -> String {
    let domain = &cfg.cluster.dns_domain;
    let forward = if upstream {
        "\n    forward . /etc/resolv.conf"
    } else {
        ""
    };
    format!(
        ".:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}{forward}
    cache 30
    loadbalance
}}
"
    )
}

/// Every object of the cluster DNS; `upstream`: whether the node has resolvers to
/// forward other names to.
pub fn objects(cfg: &MachineConfig, upstream: bool) -> Result<Vec<Value>, RenderError> {
    let ip = cfg.cluster.dns_ip().ok_or_else(|| {
        RenderError::new(
            format!("cluster.serviceCidr {}", cfg.cluster.service_cidr),
            "has no address for the cluster DNS",
        )
    })?;
    let labels = json!({"k8s-app": "kube-dns"});
    Ok(vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": NAMESPACE}
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
            ]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "data": {"Corefile": corefile(cfg, upstream)}
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": NAME,
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                        "containers": [{
                            "name": NAME,
                            "image": IMAGE,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}
                            ],
                            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": true}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 60, "timeoutSeconds": 5}
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": NAME}}]
                    }
                }
            }
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
                ]
            }
        }),
    ])
}
