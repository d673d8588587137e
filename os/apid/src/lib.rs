//! `cairn-apid`, the machine API server: the `Machine` gRPC service of
//! `cairn-api`, over TLS 1.3 with mutual TLS, on every node.
//!
//! It runs as a supervised process (not PID 1). What only PID 1 can do — the
//! supervisor's services and logs, reboot and poweroff — it asks for on PID 1's
//! control socket; etcd it reaches with the API server's etcd client certificate;
//! the machine config it reads and (for `ConfigApply`) rewrites on STATE.
//!
//! Every call is authorized by the role in the client certificate's Organization
//! against one table ([`auth::least_role`]) before anything is done, and logged
//! with the caller, the method and the outcome.
//!
//! Modules, one per area:
//! - [`serve`]: the listener, the TLS handshakes and the gRPC server;
//! - [`auth`]: who may call what;
//! - `machine`: the gRPC service, dispatching to the modules below;
//! - `services`: PID 1's services, their logs and the power actions;
//! - [`dmesg`]: the kernel's log;
//! - `etcd`: etcd's members, status, defragmentation and snapshots;
//! - [`config`]: the machine config (redaction, diff, durable apply);
//! - `node`: version and health.

// Unit tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod config;
pub mod diff;
pub mod dmesg;
mod etcd;
mod gitops;
mod machine;
mod node;
pub mod serve;
mod services;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use serve::{ServeError, run, serve};

/// Where the server listens and where it finds everything it serves. Every path
/// is configurable so tests run against temporary directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The address [`run`] binds (default `0.0.0.0:50000`).
    pub listen: SocketAddr,
    /// The secrets bundle (cairn-pki's layout): `pki/os/ca.crt`,
    /// `pki/os/server.{crt,key}`, `pki/etcd/ca.crt`,
    /// `pki/apiserver-etcd-client.{crt,key}`, `admin.conf`.
    pub secrets_dir: PathBuf,
    /// PID 1's control socket.
    pub control_socket: PathBuf,
    /// The machine config kept on STATE.
    pub machine_config: PathBuf,
    /// PID 1's runtime directory: `machine-id`, `hostname`, and `node-ip` once the
    /// network is up; each is read when present.
    pub run_dir: PathBuf,
    /// The kernel log device.
    pub kmsg: PathBuf,
    /// etcd's client URL.
    pub etcd_endpoint: String,
}

impl Default for Config {
    /// A node's paths.
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], cairn_api::DEFAULT_PORT)),
            secrets_dir: PathBuf::from(cairn_services::SECRETS_DIR),
            control_socket: PathBuf::from(cairn_control::SOCKET),
            machine_config: PathBuf::from(DEFAULT_MACHINE_CONFIG),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            kmsg: PathBuf::from(DEFAULT_KMSG),
            etcd_endpoint: DEFAULT_ETCD_ENDPOINT.to_owned(),
        }
    }
}

/// Where a node keeps its machine config.
pub const DEFAULT_MACHINE_CONFIG: &str = "/state/machine.yaml";
/// PID 1's runtime directory.
pub const DEFAULT_RUN_DIR: &str = "/run/cairn";
pub const DEFAULT_KMSG: &str = "/dev/kmsg";
pub const DEFAULT_ETCD_ENDPOINT: &str = "https://127.0.0.1:2379";
