//! Supervises long-running services: ordering, readiness, restarts, cgroups, logs.
//!
//! `cairn-supervisor` runs inside `cairn-init` (PID 1) and starts etcd,
//! kube-apiserver, containerd, ... as child processes. It
//!
//! - validates a set of [`ServiceSpec`]s (names, dependency graph without cycles),
//! - starts each service once everything it `depends_on` is ready, judged by a
//!   [`Probe`] (TCP, plain HTTP, HTTPS with a CA and client certificate, exec or a
//!   custom future),
//! - restarts exited services according to their [`RestartPolicy`] with exponential
//!   [`Backoff`],
//! - puts each service in its own session/process group and, optionally, its own
//!   cgroup v2 with [`Resources`] limits,
//! - keeps output in a bounded in-memory ring and optionally a rotated log file,
//! - reports every state change as an [`Event`] (broadcast and `tracing`),
//! - shuts down in reverse dependency order, escalating to SIGKILL.
//!
//! It is **not** a general init system: it does not mount filesystems, manage
//! users, handle PID 1 duties other than reaping, or speak any IPC protocol; the
//! embedding program does that and drives the supervisor through [`Supervisor`].
//!
//! # Reaping
//! The supervisor never waits for its children itself (no `tokio::process`, no
//! `Child::wait`). Exactly one reaper per process calls `waitpid(-1)` and forwards each
//! exit to [`Supervisor::child_exited`]; [`spawn_reaper`] is that reaper. Nothing else
//! in the process may wait for children.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_supervisor::Error> {
//! use cairn_supervisor::{Probe, ServiceSpec, SupervisorConfig};
//! let sup = cairn_supervisor::spawn(SupervisorConfig::default());
//! cairn_supervisor::spawn_reaper(sup.clone());
//! sup.add(vec![
//!     ServiceSpec::new("etcd", "/usr/bin/etcd")
//!         .readiness(Probe::Tcp("127.0.0.1:2379".parse().expect("address"))),
//!     ServiceSpec::new("kube-apiserver", "/usr/bin/kube-apiserver").depends_on("etcd"),
//! ])
//! .await?;
//! // ... later
//! sup.shutdown().await;
//! # Ok(()) }
//! ```

// Unit tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod backoff;
mod cgroup;
mod error;
mod event;
mod logs;
mod order;
mod probe;
mod process;
mod reaper;
mod spec;
mod supervisor;
pub mod tls;

pub use backoff::Backoff;
pub use error::Error;
pub use event::{Event, EventKind, ExitStatusKind, ServiceStatus, State};
pub use logs::LogFollower;
pub use nix::sys::signal::Signal;
pub use probe::{CustomProbe, Probe};
pub use reaper::{reap_all, spawn_reaper};
pub use spec::{
    LogSettings, MAX_NAME_LEN, ProbeSettings, Resources, RestartPolicy, ServiceSpec, validate_name,
};
pub use supervisor::{Supervisor, SupervisorConfig, spawn, spawn_watched};
