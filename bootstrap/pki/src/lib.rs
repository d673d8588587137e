//! A cluster's secrets bundle: generating, storing and checking the CAs, certificates,
//! keys and kubeconfigs a single-control-plane Kubernetes node needs, in kubeadm's
//! layout (`pki/ca.crt`, `pki/etcd/server.key`, `admin.conf`, ...; see [`paths`]).
//!
//! - [`generate`] builds a fresh [`Bundle`] for [`ClusterParams`]: CAs (`ca`,
//!   `etcd/ca`, `front-proxy-ca`, and `os/ca` for the machine API), the leaves
//!   kube-apiserver and etcd serve and dial with, the service-account key pair, and
//!   the admin, super-admin, controller-manager, scheduler, kubelet and kube-proxy
//!   kubeconfigs. All keys are ECDSA P-256 (Kubernetes signs service-account tokens
//!   with ES256 when `sa.key` is an EC key).
//! - [`Bundle::write_to`] puts it on disk atomically with 0600 keys and kubeconfigs,
//!   refusing to replace an existing bundle unless asked; [`Bundle::load`] reads it back.
//! - [`check`] verifies a bundle fits this node (chains, names, SANs, expiry) so boot
//!   can refuse one made for another node, naming the file and the problem.
//!
//! Not for: distributing secrets to other machines, joining nodes, rotating or
//! renewing certificates, kubelet serving certificates, or encryption at rest — those
//! come later. Key material never appears in errors or `Debug` output.

#![forbid(unsafe_code)]

mod bundle;
mod check;
mod client;
mod document;
mod error;
mod generate;
mod issue;
mod kubeconfig;
mod layout;
mod params;
pub mod paths;
mod store;

pub use bundle::{Bundle, PRIVATE_MODE, PUBLIC_MODE, Secret};
pub use check::check;
pub use client::{ClientCert, issue_os_client};
pub use document::{DOCUMENT_API_VERSION, DOCUMENT_KIND, is_private};
pub use error::{PkiError, Problem};
pub use generate::generate;
pub use params::{API_PORT, ClusterParams, server_url};
pub use store::Existing;

/// Re-exported so callers can build [`ClusterParams`] without naming the crates.
pub use cairn_machine_config::{Cidr, Hostname};
pub use time::{Duration, OffsetDateTime};
