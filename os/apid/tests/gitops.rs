//! The GitOps calls against a REAL API server (tests/kube): status comes from the
//! reconciler's status object, sync and suspend land on it (where the reconciler
//! watches), and the role table holds.

mod common;

use cairn_api::proto::Empty;
use cairn_api::proto::GitOpsSuspendRequest;
use cairn_pki::Bundle;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_status_sync_and_suspend_reach_the_reconcilers_status_object() {
    let fx = tokio::task::spawn_blocking(cairn_testkube::shared)
        .await
        .expect("fixture");
    let bundle = Bundle::load(&fx.secrets()).expect("the fixture's bundle");
    let root = tempfile::tempdir().expect("tmp");
    let addr = start_server(config(root.path(), &fx.secrets())).await;
    let mut reader = connect(
        addr,
        client_tls(&bundle, &client_cert(&bundle, "rita", "os:reader")),
    )
    .await;
    let mut operator = connect(
        addr,
        client_tls(&bundle, &client_cert(&bundle, "otto", "os:operator")),
    )
    .await;

    // No reconciler has reported yet: a clear precondition, not an internal error.
    let err = reader
        .git_ops_status(Empty {})
        .await
        .expect_err("no status object yet");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let kube = cairn_gitops::cluster::client(&fx.kubeconfig_path())
        .await
        .expect("kube client");
    cairn_gitops::status::install(&kube, "cairn")
        .await
        .expect("status kind");
    let mut status = cairn_gitops::status::SyncStatus {
        url: "https://git.example/r.git".into(),
        applied_revision: "a".repeat(40),
        health: "Healthy".into(),
        objects: 7,
        ..Default::default()
    };
    status.record(&"a".repeat(40), "applied", "");
    cairn_gitops::status::publish(&kube, "cairn", &status)
        .await
        .expect("publish");

    let s = reader
        .git_ops_status(Empty {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (s.applied_revision.as_str(), s.health.as_str(), s.objects),
        (&*"a".repeat(40), "Healthy", 7)
    );
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.history[0].result, "applied");

    let denied = reader
        .git_ops_sync(Empty {})
        .await
        .expect_err("readers may not sync");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let object = || -> serde_json::Value {
        serde_json::from_str(
            &fx.kubectl(&["get", "gitops", "cairn", "-o", "json"])
                .expect("kubectl"),
        )
        .expect("json")
    };
    assert!(object()["metadata"]["annotations"]["gitops.cairn.dev/sync-requested-at"].is_null());
    operator.git_ops_sync(Empty {}).await.expect("sync");
    let first = object()["metadata"]["annotations"]["gitops.cairn.dev/sync-requested-at"].clone();
    assert!(first.is_string(), "the request is on the object");
    operator.git_ops_sync(Empty {}).await.expect("sync again");
    assert_ne!(
        object()["metadata"]["annotations"]["gitops.cairn.dev/sync-requested-at"],
        first,
        "each request is new"
    );

    operator
        .git_ops_suspend(GitOpsSuspendRequest { suspend: true })
        .await
        .expect("suspend");
    assert_eq!(object()["spec"]["suspend"], true);
    operator
        .git_ops_suspend(GitOpsSuspendRequest { suspend: false })
        .await
        .expect("resume");
    assert_eq!(object()["spec"]["suspend"], false);
    // The reconciler re-installing its kind and object keeps the user's spec.
    cairn_gitops::status::install(&kube, "cairn")
        .await
        .expect("install again");
    assert_eq!(object()["spec"]["suspend"], false);
}
