//! PID 1's control socket, `/run/cairn/control.sock` (root only, 0600).
//!
//! The machine API server (`cairn-apid`) runs as a supervised process; what only
//! PID 1 can do — the supervisor's services and logs, reboot and poweroff — it asks
//! for here. One request per connection, as one JSON line; the answer is one JSON
//! line (`{"ok":...}` or `{"error":{...}}`). A log request's answer is followed by
//! the raw log lines until either side closes.

#![forbid(unsafe_code)]

mod client;
mod server;

use serde::{Deserialize, Serialize};

pub use client::{Client, LogStream};
pub use server::{ServeConfig, serve};

/// Where PID 1 listens on a node.
pub const SOCKET: &str = "/run/cairn/control.sock";

/// What PID 1 is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Services,
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    Signal {
        name: String,
        signal: String,
    },
    Logs {
        name: String,
        /// Last lines to send first; `None` sends everything kept.
        tail_lines: Option<usize>,
        follow: bool,
    },
    Power {
        action: PowerAction,
    },
}

/// An orderly end of this boot, the same path as a signal to PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// One service as the control socket reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// waiting | starting | running | ready | stopping | stopped | exited | failed | backing_off
    pub state: String,
    pub ready: bool,
    pub restarts: u32,
    pub pid: Option<i32>,
    /// The service cgroup's `memory.current`.
    pub memory_bytes: Option<u64>,
    /// Oldest first.
    pub events: Vec<EventInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// snake_case, as in the console's `event=` field.
    pub kind: String,
    pub detail: String,
    /// Milliseconds between the event and the answer.
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(Reply),
    Error(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Done,
    Services(Vec<ServiceInfo>),
    /// Log lines follow on the connection.
    Streaming,
}

/// Why PID 1 said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// No service by that name.
    NotFound,
    /// The request itself is wrong (an unknown signal, bad JSON).
    Invalid,
    /// The supervisor could not do it.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Refusal {
    kind: RefusalKind,
    message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PID 1's control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("PID 1's control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("PID 1 did not answer within {0} s")]
    Timeout(u64),
    #[error("PID 1's control socket: unreadable answer: {0}")]
    Protocol(String),
    #[error("{message}")]
    Refused { kind: RefusalKind, message: String },
}
