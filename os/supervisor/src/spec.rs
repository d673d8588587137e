//! Typed, validated description of one service.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::probe::Probe;

/// Longest accepted service name (it becomes a cgroup directory and a log file name).
pub const MAX_NAME_LEN: usize = 63;

/// What to do when the process of a service exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Restart after every exit.
    #[default]
    Always,
    /// Restart after a non-zero exit code or death by signal.
    OnFailure,
    /// Never restart; the service stays `Exited` (code 0) or `Failed`.
    Never,
}

/// How often and how long the readiness probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Period between probes until the service is ready for the first time (default 200 ms).
    pub initial_period: Duration,
    /// Period between probes once the service has been ready (default 5 s).
    pub ready_period: Duration,
    /// A probe not finished within this time counts as failed (default 2 s).
    pub timeout: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            initial_period: Duration::from_millis(200),
            ready_period: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// cgroup v2 limits; only applied when the supervisor has a `cgroup_root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `cpu.max` as (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
    /// `cpu.weight`, 1..=10000.
    pub cpu_weight: Option<u16>,
}

/// Where the output of a service is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Size of the in-memory ring returned by `Supervisor::logs` (default 256 KiB).
    pub ring_bytes: usize,
    /// The log file is rotated when it would grow past this size (default 4 MiB).
    pub file_max_bytes: u64,
    /// Number of rotated files kept: `<name>.log.1` ... `<name>.log.N` (default 2).
    pub files_kept: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            ring_bytes: 256 * 1024,
            file_max_bytes: 4 * 1024 * 1024,
            files_kept: 2,
        }
    }
}

/// One supervised service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unique name, `[a-z0-9-]`, 1..=63 characters.
    pub name: String,
    /// Executable to run (an absolute path is recommended; there is no `PATH` lookup
    /// beyond what `execvp` does with the child's own environment).
    pub command: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// The child's complete environment; nothing is inherited from the supervisor.
    pub env: Vec<(String, String)>,
    /// Working directory of the child (default: the supervisor's).
    pub working_dir: Option<PathBuf>,
    /// Services that must be ready before this one starts.
    pub depends_on: Vec<String>,
    /// How readiness is decided.
    pub readiness: Probe,
    /// Probe periods and timeout.
    pub probe: ProbeSettings,
    /// What happens when the process exits on its own.
    pub restart: RestartPolicy,
    /// Delay between restarts.
    pub backoff: Backoff,
    /// First signal sent on stop (default SIGTERM).
    pub stop_signal: Signal,
    /// Time between `stop_signal` and SIGKILL (default 10 s).
    pub stop_timeout: Duration,
    /// cgroup limits.
    pub resources: Resources,
    /// Output retention.
    pub log: LogSettings,
}

impl ServiceSpec {
    /// A spec with every optional field at its default.
    pub fn new(name: impl Into<String>, command: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            depends_on: Vec::new(),
            readiness: Probe::None,
            probe: ProbeSettings::default(),
            restart: RestartPolicy::default(),
            backoff: Backoff::default(),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            resources: Resources::default(),
            log: LogSettings::default(),
        }
    }

    /// Replaces the arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Adds one dependency.
    pub fn depends_on(mut self, service: impl Into<String>) -> Self {
        self.depends_on.push(service.into());
        self
    }

    /// Sets the readiness probe.
    pub fn readiness(mut self, probe: Probe) -> Self {
        self.readiness = probe;
        self
    }

    /// Sets probe periods and timeout.
    pub fn probe_settings(mut self, settings: ProbeSettings) -> Self {
        self.probe = settings;
        self
    }

    /// Sets the restart policy.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Sets the restart backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the first signal sent on stop.
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Sets the time between the stop signal and SIGKILL.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Sets cgroup limits.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Sets output retention.
    pub fn log(mut self, log: LogSettings) -> Self {
        self.log = log;
        self
    }

    /// Checks every field; dependencies are checked separately against the whole set.
    pub fn validate(&self) -> Result<(), Error> {
        validate_name(&self.name)?;
        let invalid = |reason: String| Error::InvalidSpec {
            service: self.name.clone(),
            reason,
        };
        if self.command.as_os_str().is_empty() {
            return Err(invalid("command is empty".into()));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("an argument contains a NUL byte".into()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(invalid(format!("invalid environment variable {key:?}")));
            }
        }
        for dep in &self.depends_on {
            validate_name(dep)?;
            if dep == &self.name {
                return Err(Error::DependencyCycle {
                    cycle: vec![self.name.clone(), self.name.clone()],
                });
            }
        }
        if self.probe.initial_period.is_zero()
            || self.probe.ready_period.is_zero()
            || self.probe.timeout.is_zero()
        {
            return Err(invalid("probe periods and timeout must be non-zero".into()));
        }
        self.backoff.validate().map_err(|r| invalid(r.into()))?;
        if let Some((quota, period)) = self.resources.cpu_max
            && (quota == 0 || !(1_000..=1_000_000).contains(&period))
        {
            return Err(invalid(
                "cpu_max needs quota > 0 and a period of 1000..=1000000 us".into(),
            ));
        }
        if let Some(weight) = self.resources.cpu_weight
            && !(1..=10_000).contains(&weight)
        {
            return Err(invalid("cpu_weight must be 1..=10000".into()));
        }
        if self.resources.memory_max == Some(0) {
            return Err(invalid("memory_max must be non-zero".into()));
        }
        if self.log.ring_bytes == 0 || self.log.file_max_bytes == 0 {
            return Err(invalid("log sizes must be non-zero".into()));
        }
        Ok(())
    }
}

/// Checks that `name` is 1..=63 characters of `[a-z0-9-]`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("only a-z, 0-9 and '-' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("etcd").is_ok());
        assert!(validate_name("kube-apiserver-2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Etcd").is_err());
        assert!(validate_name("a_b").is_err());
        assert!(validate_name(&"a".repeat(63)).is_ok());
        let err = validate_name(&"a".repeat(64)).unwrap_err().to_string();
        assert!(err.contains("longer than 63"), "{err}");
    }

    #[test]
    fn spec_validation() {
        assert!(ServiceSpec::new("ok", "/bin/true").validate().is_ok());
        let err = ServiceSpec::new("bad", "/bin/true")
            .env("A=B", "c")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("service bad"), "{err}");
        let err = ServiceSpec::new("self", "/bin/true")
            .depends_on("self")
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(err, "dependency cycle: self -> self");
        let mut spec = ServiceSpec::new("cpu", "/bin/true");
        spec.resources.cpu_weight = Some(0);
        assert!(spec.validate().is_err());
    }
}
