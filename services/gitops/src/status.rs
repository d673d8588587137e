//! Status where users look: a small custom resource of cairn's own
//! (`kubectl get gitops` shows the applied and seen revisions, health and the
//! last error; `-o yaml` the history), and Kubernetes Events for applied,
//! pruned and failed objects.

use std::collections::VecDeque;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::objects::ObjKey;

pub const GROUP: &str = "gitops.cairn.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "Sync";
pub const PLURAL: &str = "syncs";
/// The status object's name of the default instance (cluster-scoped).
pub const DEFAULT_NAME: &str = "cairn";
/// On the status object: the revision (or its prefix) allowed to prune more
/// than the configured share of the inventory.
pub const ALLOW_MASS_PRUNE: &str = "gitops.cairn.dev/allow-mass-prune";
const HISTORY: usize = 10;
const STATUS_MANAGER: &str = "cairn-status";

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: String,
    /// applied, healthy, failed, refused, rolled-back
    pub result: String,
    pub time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What `kubectl get gitops -o yaml` shows under `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SyncStatus {
    pub url: String,
    pub applied_revision: String,
    pub seen_revision: String,
    pub last_healthy_revision: String,
    /// Healthy, Progressing, Failed, Unknown
    pub health: String,
    pub last_error: String,
    pub last_applied_time: String,
    pub objects: u64,
    pub leader: String,
    /// `spec.suspend` is set: nothing is fetched, applied or reverted.
    pub suspended: bool,
    pub history: VecDeque<HistoryEntry>,
}

impl SyncStatus {
    pub fn record(&mut self, revision: &str, result: &str, message: impl Into<String>) {
        self.history.push_front(HistoryEntry {
            revision: revision.to_string(),
            result: result.to_string(),
            time: now(),
            message: message.into(),
        });
        self.history.truncate(HISTORY);
    }
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn column(name: &str, path: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "jsonPath": path, "priority": priority})
}

/// The status kind's definition, applied by the reconciler at start.
pub fn definition() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"kind": KIND, "plural": PLURAL, "singular": "sync", "shortNames": ["gitops"]},
            "versions": [{
                "name": VERSION, "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object",
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
                "additionalPrinterColumns": [
                    column("Applied", ".status.appliedRevision", 0),
                    column("Seen", ".status.seenRevision", 0),
                    column("Health", ".status.health", 0),
                    column("Error", ".status.lastError", 0),
                    {"name": "Suspended", "type": "boolean", "jsonPath": ".status.suspended", "priority": 1},
                    column("URL", ".status.url", 1),
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    })
}

fn resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

/// Writes the status kind and the `cairn-system` namespace, then the status
/// object `name` itself; waits until the kind is served.
pub async fn install(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(crate::objects::FIELD_MANAGER).force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = format!("{PLURAL}.{GROUP}");
    crds.patch(&crd, &pp, &Patch::Apply(definition())).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = crate::inventory::NAMESPACE;
    namespaces
        .patch(
            ns,
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let body = json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": KIND, "metadata": {"name": name}, "spec": {}});
    let mut tries = 0;
    loop {
        match api.patch(name, &pp, &Patch::Apply(&body)).await {
            Ok(_) => return Ok(()),
            // The kind is not served until the CRD is Established.
            Err(kube::Error::Api(s)) if s.code == 404 && tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `status` to the status object `name`.
pub async fn publish(
    client: &kube::Client,
    name: &str,
    status: &SyncStatus,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let body = json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": KIND, "metadata": {"name": name}, "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// The status last published on the status object `name`, if any.
pub async fn fetch(client: &kube::Client, name: &str) -> Option<SyncStatus> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let o = api.get_opt(name).await.ok()??;
    serde_json::from_value(o.data.get("status")?.clone()).ok()
}

/// The `allow-mass-prune` annotation on the status object, if set.
pub async fn mass_prune_allowance(client: &kube::Client, name: &str) -> Option<String> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let o = api.get_opt(name).await.ok()??;
    o.metadata.annotations?.get(ALLOW_MASS_PRUNE).cloned()
}

/// Kubernetes Events, sent in the background so they never slow an apply.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    name: String,
}

impl Events {
    /// Events by `instance` (the node), about the status object `name`.
    pub fn new(client: kube::Client, instance: &str, name: &str) -> Events {
        let reporter = Reporter {
            controller: "cairn-gitops".into(),
            instance: Some(instance.to_string()),
        };
        Events {
            recorder: Recorder::new(client, reporter),
            name: name.to_string(),
        }
    }

    fn send(&self, reference: ObjectReference, warning: bool, reason: &str, note: String) {
        let recorder = self.recorder.clone();
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.to_string(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(service = "gitops", error = %e, "event not recorded");
            }
        });
    }

    /// An event on one managed object.
    pub fn object(
        &self,
        key: &ObjKey,
        api_version: &str,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let reference = ObjectReference {
            api_version: Some(api_version.to_string()),
            kind: Some(key.kind.clone()),
            name: Some(key.name.clone()),
            namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
            ..Default::default()
        };
        self.send(reference, warning, reason, note);
    }

    /// An event on the status object (a revision's outcome).
    pub fn sync(&self, warning: bool, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some(format!("{GROUP}/{VERSION}")),
            kind: Some(KIND.into()),
            name: Some(self.name.clone()),
            ..Default::default()
        };
        self.send(reference, warning, reason, note);
    }
}

/// On the status object: any new value asks for a fetch and reconcile now
/// (`kubectl annotate gitops cairn gitops.cairn.dev/sync-requested-at="$(date)" --overwrite`).
pub const SYNC_REQUEST: &str = "gitops.cairn.dev/sync-requested-at";

/// What users ask of a reconciler through its status object: `spec.suspend`
/// and the sync-request annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub suspend: bool,
    pub sync_requested: Option<String>,
}

/// Watches the status object `name` for [`Requests`].
pub fn watch_requests(client: &kube::Client, name: &str) -> tokio::sync::watch::Receiver<Requests> {
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let (tx, rx) = tokio::sync::watch::channel(Requests::default());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut objects = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(o) = objects.next().await {
            let Ok(o) = o else { continue };
            let requests = Requests {
                suspend: o
                    .data
                    .pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                sync_requested: o
                    .metadata
                    .annotations
                    .and_then(|a| a.get(SYNC_REQUEST).cloned()),
            };
            tx.send_if_modified(|r| std::mem::replace(r, requests.clone()) != requests);
        }
    });
    rx
}
