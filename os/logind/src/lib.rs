//! A tiny system bus that plays `systemd-logind` for kubelet's graceful node shutdown.
//!
//! A cairn node has no systemd and no dbus-daemon, yet kubelet (with
//! `shutdownGracePeriod > 0`) wants the system bus: it connects to
//! `/run/dbus/system_bus_socket`, reads `InhibitDelayMaxUSec` from
//! `org.freedesktop.login1`, takes a "shutdown" delay inhibitor (a file descriptor it
//! closes to release the lock) and waits for the signal `PrepareForShutdown(true)`, on
//! which it kills pods and closes the fd.
//!
//! This crate is "a small bus of our own": [`serve`] listens on a unix socket and serves
//! every accepted connection as a peer-to-peer zbus connection exposing
//!
//! - `org.freedesktop.DBus` at `/org/freedesktop/DBus`: just enough of the bus driver
//!   for a bus client (`Hello`, `AddMatch`, `RemoveMatch`, `GetNameOwner`,
//!   `NameHasOwner`, `ListNames`, `GetId`). Match rules are accepted and ignored:
//!   every signal goes to every peer.
//! - `org.freedesktop.login1.Manager` at `/org/freedesktop/login1`: the property
//!   `InhibitDelayMaxUSec`, `Inhibit`, `ListInhibitors` and the signal
//!   `PrepareForShutdown`.
//!
//! PID 1 calls [`Logind::prepare_for_shutdown`] before it stops kubelet: that emits
//! `PrepareForShutdown(true)` to every connection and waits until every "shutdown"
//! delay lock is released, or the wait runs out.
//!
//! It is **not** a message bus (peers cannot call each other, own names or see each
//! other's messages) and **not** logind (no sessions, seats, power keys, and it never
//! powers anything off: PID 1 does). `InhibitDelayMaxUSec` must be at least kubelet's
//! `shutdownGracePeriod`, otherwise kubelet tries to rewrite logind.conf and restart
//! logind through `org.freedesktop.systemd1`, which does not exist here.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_logind::Error> {
//! use std::time::Duration;
//! let logind = cairn_logind::serve(cairn_logind::Config {
//!     socket: cairn_logind::DEFAULT_SOCKET.into(),
//!     inhibit_delay_max: Duration::from_secs(60),
//! })
//! .await?;
//! // ... later, on poweroff:
//! let outcome = logind.prepare_for_shutdown(Duration::from_secs(60)).await;
//! # let _ = outcome;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod bus;
mod inhibitors;
mod manager;
mod server;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

/// Where kubelet (godbus) looks for the system bus unless `DBUS_SYSTEM_BUS_ADDRESS` says
/// otherwise.
pub const DEFAULT_SOCKET: &str = "/run/dbus/system_bus_socket";

/// How the shim is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The unix socket to listen on, e.g. [`DEFAULT_SOCKET`]. Its directory is created
    /// if missing and a stale socket there is removed first; the socket is made mode
    /// 0600, so only our own user (root in PID 1) can take locks.
    pub socket: PathBuf,
    /// Answered as `InhibitDelayMaxUSec`: must be at least kubelet's
    /// `shutdownGracePeriod`.
    pub inhibit_delay_max: Duration,
}

/// Why the shim could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("logind: creating the socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("logind: {path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("logind: removing the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("logind: listening on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("logind: serve() must be called on a tokio runtime")]
    NoRuntime,
}

/// What [`Logind::prepare_for_shutdown`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// Every "shutdown" delay lock was released before `max_wait` ran out.
    pub released_all: bool,
    /// From emitting the signal until the last lock went away (or the wait ran out).
    pub waited: Duration,
    /// Delay locks still held when the wait ended.
    pub locks_left: usize,
}

/// The running shim; cheap to clone. The listener lives as long as the tokio runtime
/// that [`serve`] ran on.
#[derive(Clone)]
pub struct Logind {
    shared: Arc<server::Shared>,
}

/// Binds `config.socket` (removing a stale socket first) and spawns the accept loop on
/// the current tokio runtime.
pub async fn serve(config: Config) -> Result<Logind, Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let listener = server::bind(&config.socket)?;
    let shared = Arc::new(server::Shared::new(&config));
    runtime.spawn(server::accept_loop(listener, shared.clone()));
    info!(
        service = "logind",
        socket = %config.socket.display(),
        inhibit_delay_max = ?config.inhibit_delay_max,
        "listening as org.freedesktop.login1"
    );
    Ok(Logind { shared })
}

impl Logind {
    /// How many "shutdown" delay inhibitors are held right now.
    pub fn delay_locks(&self) -> usize {
        self.shared.inhibitors.delay_locks()
    }

    /// Emits `PrepareForShutdown(true)` to every connection and waits until every
    /// "shutdown" delay lock is released or `max_wait` passes.
    pub async fn prepare_for_shutdown(&self, max_wait: Duration) -> ShutdownOutcome {
        let started = tokio::time::Instant::now();
        if tokio::runtime::Handle::try_current().is_err() {
            error!(
                service = "logind",
                "prepare_for_shutdown called outside a tokio runtime; not waiting"
            );
            return ShutdownOutcome {
                released_all: false,
                waited: Duration::ZERO,
                locks_left: self.delay_locks(),
            };
        }
        // `None`: a wait too long to represent, i.e. wait for the locks alone.
        let deadline = started.checked_add(max_wait);
        info!(
            service = "logind",
            delay_locks = self.delay_locks(),
            ?max_wait,
            "emitting PrepareForShutdown(true)"
        );
        let reached = self.shared.emit_prepare_for_shutdown(true, deadline).await;
        let released_all = self.shared.inhibitors.wait_released(deadline).await;
        let outcome = ShutdownOutcome {
            released_all,
            waited: started.elapsed(),
            locks_left: self.delay_locks(),
        };
        if released_all {
            info!(
                service = "logind",
                peers = reached,
                waited = ?outcome.waited,
                "every shutdown delay lock was released"
            );
        } else {
            warn!(
                service = "logind",
                peers = reached,
                waited = ?outcome.waited,
                locks_left = outcome.locks_left,
                "shutdown delay locks still held after the maximum wait; going ahead"
            );
        }
        outcome
    }
}

impl fmt::Debug for Logind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logind")
            .field("socket", &self.shared.socket)
            .field("delay_locks", &self.delay_locks())
            .finish_non_exhaustive()
    }
}
