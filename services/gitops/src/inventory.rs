//! What a revision applied: the key, apiVersion and desired-state hash of every
//! object. Pruning deletes what the last inventory has and the new one lacks; the
//! hashes tell which objects' desired state changed. Kept on the node (the DATA
//! partition) and in the cluster (a ConfigMap in `cairn-system`), so a restarted
//! or failed-over reconciler resumes without re-applying anything.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::objects::ObjKey;

pub const NAMESPACE: &str = "cairn-system";
/// The ConfigMap holding instance `name`'s inventory.
pub fn configmap(name: &str) -> String {
    format!("gitops-inventory-{name}")
}
const DATA_KEY: &str = "inventory.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(flatten)]
    pub key: ObjKey,
    pub api_version: String,
    pub hash: String,
}

/// The objects one revision applied, in apply order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    pub revision: String,
    pub entries: Vec<Entry>,
}

impl Inventory {
    pub fn hashes(&self) -> BTreeMap<&ObjKey, &str> {
        self.entries
            .iter()
            .map(|e| (&e.key, e.hash.as_str()))
            .collect()
    }

    /// Reads the node's copy; a missing file is an empty inventory.
    pub fn load(path: &Path) -> Result<Inventory, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("inventory {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Inventory::default()),
            Err(e) => Err(format!("reading inventory {}: {e}", path.display())),
        }
    }

    /// Writes the node's copy durably (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        crate::state::write_durable(path, &text)
    }

    /// The cluster's copy, if there is one.
    pub async fn fetch(
        client: &kube::Client,
        name: &str,
    ) -> Result<Option<Inventory>, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
        let Some(cm) = api.get_opt(&configmap(name)).await? else {
            return Ok(None);
        };
        Ok(cm
            .data
            .and_then(|d| d.get(DATA_KEY).cloned())
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub async fn store(&self, client: &kube::Client, name: &str) -> Result<(), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
        let cm = configmap(name);
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm, "namespace": NAMESPACE},
            "data": {DATA_KEY: serde_json::to_string(self).unwrap_or_default()},
        });
        api.patch(
            &cm,
            &PatchParams::apply(crate::objects::FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let inv = Inventory {
            revision: "abc".into(),
            entries: vec![
                Entry {
                    key: ObjKey {
                        group: "".into(),
                        kind: "Namespace".into(),
                        namespace: "".into(),
                        name: "n".into(),
                    },
                    api_version: "v1".into(),
                    hash: "h1".into(),
                },
                Entry {
                    key: ObjKey {
                        group: "apps".into(),
                        kind: "Deployment".into(),
                        namespace: "n".into(),
                        name: "d".into(),
                    },
                    api_version: "apps/v1".into(),
                    hash: "h2".into(),
                },
            ],
        };
        let text = serde_json::to_string(&inv).expect("json");
        let back: Inventory = serde_json::from_str(&text)
            .map_err(|e| format!("{e}: {text}"))
            .expect("back");
        assert_eq!(back, inv);
    }
}
