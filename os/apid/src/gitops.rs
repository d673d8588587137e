//! The GitOps reconciler through the machine API: its status object
//! (`syncs.gitops.cairn.dev`, see docs/gitops.md) read and nudged with the
//! node's admin kubeconfig. The reconciler watches that object, so a sync
//! request or a suspend takes effect at once.

use std::path::Path;

use cairn_api::proto::{GitOpsHistoryEntry, GitOpsStatusReply};
use cairn_pki::paths;
use cairn_services::kubeapi::ApiClient;
use serde_json::{Value, json};
use tonic::Status;

/// The status object of the node's reconciler (its default instance).
const PATH: &str = "/apis/gitops.cairn.dev/v1alpha1/syncs/cairn";
/// The annotation the reconciler takes as "fetch and reconcile now".
const SYNC_REQUEST: &str = "gitops.cairn.dev/sync-requested-at";
const MANAGER: &str = "cairn-apid";

async fn client(secrets: &Path) -> Result<ApiClient, Status> {
    let kubeconfig = secrets.join(paths::ADMIN_CONF);
    let text = tokio::fs::read_to_string(&kubeconfig).await.map_err(|e| {
        Status::failed_precondition(format!("cannot read {}: {e}", kubeconfig.display()))
    })?;
    ApiClient::from_kubeconfig(paths::ADMIN_CONF, &text, None)
        .map_err(|e| Status::internal(e.to_string()))
}

fn api_status(e: cairn_services::kubeapi::ApiError) -> Status {
    match e.status() {
        Some(404) => Status::failed_precondition(
            "no GitOps reconciler has reported on this cluster (no gitops section in the machine config?)",
        ),
        Some(_) => Status::internal(e.to_string()),
        None => Status::unavailable(e.to_string()),
    }
}

fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_string()
}

pub async fn status(secrets: &Path) -> Result<GitOpsStatusReply, Status> {
    let object = client(secrets).await?.get(PATH).await.map_err(api_status)?;
    let s = &object["status"];
    Ok(GitOpsStatusReply {
        url: text(s, "url"),
        applied_revision: text(s, "appliedRevision"),
        seen_revision: text(s, "seenRevision"),
        last_healthy_revision: text(s, "lastHealthyRevision"),
        health: text(s, "health"),
        last_error: text(s, "lastError"),
        suspended: s["suspended"].as_bool().unwrap_or(false),
        objects: s["objects"].as_u64().unwrap_or(0),
        leader: text(s, "leader"),
        history: s["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|e| GitOpsHistoryEntry {
                        revision: text(e, "revision"),
                        result: text(e, "result"),
                        time: text(e, "time"),
                        message: text(e, "message"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Asks for a fetch and reconcile now.
pub async fn sync(secrets: &Path) -> Result<(), Status> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    patch(
        secrets,
        json!({"metadata": {"annotations": {SYNC_REQUEST: now.to_string()}}}),
    )
    .await
}

pub async fn suspend(secrets: &Path, suspend: bool) -> Result<(), Status> {
    patch(secrets, json!({"spec": {"suspend": suspend}})).await
}

async fn patch(secrets: &Path, patch: Value) -> Result<(), Status> {
    client(secrets)
        .await?
        .merge_patch(PATH, &patch, MANAGER)
        .await
        .map_err(api_status)?;
    Ok(())
}
