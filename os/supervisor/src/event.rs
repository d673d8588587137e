//! What the supervisor reports: events, states and status snapshots.

use std::fmt;
use std::time::{Duration, Instant};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatusKind {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatusKind {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

impl fmt::Display for ExitStatusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "code {c}"),
            Self::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "signal {sig}"),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// One state change of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// About to spawn the process.
    Starting,
    /// The process is running.
    Started { pid: i32 },
    /// The readiness probe passed (first time, or again after `NotReady`).
    Ready,
    /// The probe failed after the service had been ready.
    NotReady { reason: String },
    /// The main process exited.
    Exited { status: ExitStatusKind },
    /// Waiting this long before the next start.
    BackingOff { delay: Duration },
    /// The stop signal was sent.
    Stopping,
    /// Stopped on request; not restarted until started again.
    Stopped,
    /// The process could not be spawned.
    SpawnFailed { error: String },
}

impl EventKind {
    /// Short snake_case name, used as the `event` tracing field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Started { .. } => "started",
            Self::Ready => "ready",
            Self::NotReady { .. } => "not_ready",
            Self::Exited { .. } => "exited",
            Self::BackingOff { .. } => "backing_off",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::SpawnFailed { .. } => "spawn_failed",
        }
    }
}

/// An event with the service it concerns and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub service: String,
    pub at: Instant,
    pub kind: EventKind,
}

impl Event {
    /// Logs the event. `event` comes first and `service` second, both as Display
    /// values, so console output reads `event=ready service=etcd` (unquoted), which the
    /// end-to-end harness greps for.
    pub(crate) fn trace(&self) {
        let service = self.service.as_str();
        let event = self.kind.name();
        match &self.kind {
            EventKind::Started { pid } => {
                tracing::info!(event = %event, service = %service, pid, "service started");
            }
            EventKind::Ready => tracing::info!(event = %event, service = %service, "service ready"),
            EventKind::NotReady { reason } => {
                tracing::warn!(event = %event, service = %service, reason = %reason, "service not ready");
            }
            EventKind::Exited { status } => match status {
                ExitStatusKind::Code(0) => {
                    tracing::info!(event = %event, service = %service, status = %status, "service exited");
                }
                _ => {
                    tracing::warn!(event = %event, service = %service, status = %status, "service exited")
                }
            },
            EventKind::BackingOff { delay } => {
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(event = %event, service = %service, delay_ms, "service backing off");
            }
            EventKind::SpawnFailed { error } => {
                tracing::error!(event = %event, service = %service, error = %error, "service spawn failed");
            }
            EventKind::Starting => {
                tracing::info!(event = %event, service = %service, "service starting")
            }
            EventKind::Stopping => {
                tracing::info!(event = %event, service = %service, "service stopping")
            }
            EventKind::Stopped => {
                tracing::info!(event = %event, service = %service, "service stopped")
            }
        }
    }
}

/// Where a service is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for its dependencies to become ready.
    Waiting,
    /// Spawned, not ready yet.
    Starting,
    /// Alive but failing its probe after having been ready.
    Running,
    /// Alive and passing its probe.
    Ready,
    /// Stop signal sent, waiting for the exit.
    Stopping,
    /// Stopped on request (or never started because of a stop/shutdown).
    Stopped,
    /// Exited with code 0 and will not be restarted.
    Exited,
    /// Exited with a failure (or could not be spawned) and will not be restarted.
    Failed,
    /// Waiting out the restart delay.
    BackingOff,
}

/// Snapshot of one service, as returned by `Supervisor::status`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    /// Main pid while a process is alive.
    pub pid: Option<i32>,
    /// Number of spawns after the first one.
    pub restarts: u32,
    /// Since when the service has been continuously ready.
    pub ready_since: Option<Instant>,
    pub last_exit: Option<ExitStatusKind>,
    /// The most recent events, oldest first (at most 32).
    pub events: Vec<Event>,
}
