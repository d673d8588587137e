//! What the reconciler knows about one desired object without asking the API
//! server: its identity, the stage it is applied in, whether it may be pruned,
//! the hash of its desired state, and whether a live copy already holds it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The label every object cairn applies carries; pruning deletes only objects
/// that still carry it, and the watches select on it.
pub const OWNER_LABEL: &str = "gitops.cairn.dev/managed";
pub const OWNER_VALUE: &str = "cairn";
/// `allow` on a Namespace, CRD, PersistentVolume or PVC lets pruning delete it.
pub const PRUNE_ANNOTATION: &str = "gitops.cairn.dev/prune";
/// `allow` lets an immutable-field change delete and re-create the object.
pub const RECREATE_ANNOTATION: &str = "gitops.cairn.dev/recreate";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "cairn";

/// An object's identity across revisions (the version is not part of it: the
/// same object may be written at another version).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjKey {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        if self.namespace.is_empty() {
            write!(f, "{kind}/{}", self.name)
        } else {
            write!(f, "{kind} {}/{}", self.namespace, self.name)
        }
    }
}

/// The stages of an apply, in order. Within a stage objects are written in
/// parallel; a stage starts when the one before it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// CRDs and Namespaces; CRDs are then waited on until Established and
    /// discovery runs again.
    Definitions,
    /// Other cluster-scoped objects (ClusterRoles, StorageClasses, ...).
    Cluster,
    /// What workloads refer to: ServiceAccounts, RBAC, ConfigMaps, Secrets,
    /// quotas, PVCs, Services.
    Config,
    /// Workloads and everything else, custom resources included.
    Workloads,
    /// Admission webhooks last, so they never block the objects before them.
    Webhooks,
}

impl Stage {
    pub fn of(group: &str, kind: &str, namespaced: bool) -> Stage {
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") | ("", "Namespace") => {
                Stage::Definitions
            }
            (
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration",
            ) => Stage::Webhooks,
            _ if !namespaced => Stage::Cluster,
            (
                "",
                "ServiceAccount"
                | "ConfigMap"
                | "Secret"
                | "LimitRange"
                | "ResourceQuota"
                | "PersistentVolumeClaim"
                | "Service"
                | "Endpoints",
            )
            | ("rbac.authorization.k8s.io", "Role" | "RoleBinding")
            | ("networking.k8s.io", "NetworkPolicy")
            | ("policy", "PodDisruptionBudget") => Stage::Config,
            _ => Stage::Workloads,
        }
    }
}

/// Kinds that are never pruned unless the live object carries
/// `gitops.cairn.dev/prune: allow`: deleting them takes data or whole apps with them.
pub fn protected(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        (
            "",
            "Namespace" | "PersistentVolume" | "PersistentVolumeClaim"
        ) | ("apiextensions.k8s.io", "CustomResourceDefinition")
    )
}

/// Puts cairn's owner label on a desired body and turns a Secret's write-only
/// `stringData` into `data`, so the body can be compared with live objects.
pub fn normalize(kind: &str, group: &str, body: &mut Value) {
    use base64::Engine as _;
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if !labels.is_object() {
            *labels = Value::Object(Default::default());
        }
        if let Some(l) = labels.as_object_mut() {
            l.insert(OWNER_LABEL.into(), Value::String(OWNER_VALUE.into()));
        }
    }
    if group.is_empty()
        && kind == "Secret"
        && let Some(Value::Object(string_data)) =
            body.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        let data = body.as_object_mut().map(|o| {
            o.entry("data")
                .or_insert_with(|| Value::Object(Default::default()))
        });
        if let Some(Value::Object(data)) = data {
            for (k, v) in string_data {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                data.insert(
                    k,
                    Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
}

/// The hash of a desired body (canonical JSON: serde_json's maps are sorted).
pub fn hash(body: &Value) -> String {
    let mut h = Sha256::new();
    h.update(body.to_string().as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Does `live` already hold everything `desired` says? Maps: every desired key
/// matches (live may have more: defaults, other managers' fields). Lists: same
/// length, element by element. Empty desired values match absent live ones.
pub fn holds(desired: &Value, live: Option<&Value>) -> bool {
    match (desired, live) {
        (Value::Null, None | Some(Value::Null)) => true,
        (Value::Object(d), None) => d.is_empty(),
        (Value::Array(d), None) => d.is_empty(),
        (_, None) => false,
        (Value::Object(d), Some(Value::Object(l))) => d.iter().all(|(k, v)| holds(v, l.get(k))),
        (Value::Array(d), Some(Value::Array(l))) => {
            d.len() == l.len() && d.iter().zip(l).all(|(a, b)| holds(a, Some(b)))
        }
        (Value::Number(a), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (a, Some(b)) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_with_defaults_and_other_managers_holds_the_desired_state() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}, "data": {}});
        let live = json!({"spec": {"replicas": 2, "paused": false, "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}]}}}});
        assert!(holds(&desired, Some(&live)));
        let edited = json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(!holds(&desired, Some(&edited)));
        let extra_container = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}}});
        assert!(!holds(&desired, Some(&extra_container)));
        assert!(!holds(&desired, None));
    }

    #[test]
    fn secrets_string_data_becomes_data_and_the_owner_label_is_set() {
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}});
        normalize("Secret", "", &mut s);
        assert_eq!(s["data"]["k"], "dg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["metadata"]["labels"][OWNER_LABEL], OWNER_VALUE);
    }

    #[test]
    fn stages_and_protection() {
        assert_eq!(
            Stage::of("apiextensions.k8s.io", "CustomResourceDefinition", false),
            Stage::Definitions
        );
        assert_eq!(
            Stage::of("rbac.authorization.k8s.io", "ClusterRole", false),
            Stage::Cluster
        );
        assert_eq!(Stage::of("", "ConfigMap", true), Stage::Config);
        assert_eq!(Stage::of("apps", "Deployment", true), Stage::Workloads);
        assert_eq!(Stage::of("example.com", "Widget", true), Stage::Workloads);
        assert!(Stage::Definitions < Stage::Cluster && Stage::Config < Stage::Workloads);
        assert!(protected("", "PersistentVolumeClaim") && !protected("", "ConfigMap"));
    }
}
