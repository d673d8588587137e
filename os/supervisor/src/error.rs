//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when configuring or controlling services.
///
/// Messages are lowercase and always name the service, dependency or path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A service name is not `[a-z0-9-]{1,63}`.
    #[error("invalid service name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A field of a service spec is out of range or malformed.
    #[error("invalid spec for service {service}: {reason}")]
    InvalidSpec { service: String, reason: String },

    /// Two services share a name (within one `add` call or with an existing service).
    #[error("duplicate service {name}")]
    DuplicateService { name: String },

    /// `depends_on` names a service that does not exist.
    #[error("service {service} depends on unknown service {dependency}")]
    UnknownDependency { service: String, dependency: String },

    /// The dependency graph has a cycle; `cycle` lists it with the first name repeated at the end.
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    DependencyCycle { cycle: Vec<String> },

    /// A control call named a service the supervisor does not know.
    #[error("unknown service {name}")]
    UnknownService { name: String },

    /// `signal` was called on a service that has no running process.
    #[error("service {service} is not running")]
    NotRunning { service: String },

    /// Delivering a signal failed.
    #[error("signalling service {service} with {signal}: {source}")]
    Signal {
        service: String,
        signal: nix::sys::signal::Signal,
        #[source]
        source: nix::Error,
    },

    /// A cgroup file could not be created, read or written.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The log file of a service could not be opened, written or rotated.
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Starting the process of a service failed.
    #[error("spawning service {service} ({command}): {source}")]
    Spawn {
        service: String,
        command: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The supervisor task is gone (its runtime shut down).
    #[error("supervisor task is not running")]
    SupervisorGone,
}
