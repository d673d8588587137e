//! cairn's GitOps reconciler: the cluster continuously equals what a git
//! repository says. It runs on control-plane nodes as a supervised OS process,
//! outside the cluster it manages.
//!
//! The pipeline, one module each:
//! - [`source`]: a git2 mirror on the DATA partition; fetch, resolve the ref,
//!   verify the signed range and refuse history rewrites, read the files under
//!   the configured path straight from the commit's tree.
//! - [`render`]: those files into Kubernetes objects, in a stable order, with
//!   every bad-input case refused with a reason.
//! - [`apply`]: server-side apply in stages, only what changed or drifted.
//! - [`webhook`]: the HTTPS receiver that starts a fetch at once; [`metrics`]:
//!   the Prometheus text served beside it.
//! - [`leader`]: one active reconciler per cluster, by an etcd lease.

pub mod cluster;
pub mod engine;
pub mod health;
pub mod inventory;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod reconciler;
pub mod render;
pub mod source;
pub mod state;
pub mod status;
pub mod webhook;

/// One file of a revision, as read from the commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path relative to the repository root, `/`-separated (e.g. `apps/web.yaml`).
    pub path: String,
    /// The blob's bytes (valid UTF-8: the source refuses anything else).
    pub data: Vec<u8>,
}
