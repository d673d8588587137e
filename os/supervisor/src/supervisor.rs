//! The supervisor task and its cheap, cloneable handle.
//!
//! One task owns all service state and handles messages one at a time: control calls
//! from handles, exits from the reaper, probe results and timers. Nothing else mutates
//! state, so there are no locks around it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backoff::BackoffState;
use crate::cgroup::{Cgroup, CgroupFs, RealFs};
use crate::error::Error;
use crate::event::{Event, EventKind, ExitStatusKind, ServiceStatus, State};
use crate::logs::{self, LogFollower, LogSink, SharedSink};
use crate::order::DepGraph;
use crate::probe::{self, Probe, ProbeContext};
use crate::process::{self, Launch};
use crate::spec::{RestartPolicy, ServiceSpec};

/// Events kept per service for `status`.
const EVENTS_KEPT: usize = 32;
/// Capacity of the `subscribe` channel; slow subscribers see `Lagged`.
const BROADCAST_CAPACITY: usize = 1024;

/// Where the supervisor puts logs and cgroups.
#[derive(Debug, Clone, Default)]
pub struct SupervisorConfig {
    /// Each service logs to `<dir>/<name>.log`, rotated to `.1`, `.2`, ...
    /// `None`: output is only kept in memory.
    pub log_dir: Option<PathBuf>,
    /// A cgroup v2 directory (e.g. `/sys/fs/cgroup/cairn`) under which each service gets
    /// its own cgroup. The caller must have enabled the controllers in the parent's
    /// `cgroup.subtree_control`. `None`: no cgroups, stop escalation uses the process
    /// group.
    pub cgroup_root: Option<PathBuf>,
}

/// A service's buffered log, and a follower when following was asked for.
type LogsReply = (Vec<u8>, Option<LogFollower>);

enum Msg {
    Add {
        specs: Vec<ServiceSpec>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Status {
        reply: oneshot::Sender<Vec<ServiceStatus>>,
    },
    Start {
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Stop {
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Restart {
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Signal {
        name: String,
        signal: Signal,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Logs {
        name: String,
        follow: bool,
        reply: oneshot::Sender<Result<LogsReply, Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    ChildExited {
        pid: i32,
        status: ExitStatusKind,
    },
    WatchPid {
        pid: i32,
        reply: oneshot::Sender<ExitStatusKind>,
    },
    ProbeResult {
        name: String,
        generation: u64,
        result: Result<(), String>,
    },
    BackoffElapsed {
        name: String,
        token: u64,
    },
    StopTimeout {
        name: String,
        token: u64,
    },
}

/// Handle to the supervisor task. Cheap to clone; all clones talk to the same task.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

/// Starts the supervisor task on the current tokio runtime.
///
/// Exits are only noticed when something reports them through
/// [`Supervisor::child_exited`]; normally that is [`crate::spawn_reaper`].
///
/// # Panics
/// Panics if called outside a tokio runtime (like `tokio::spawn`).
pub fn spawn(config: SupervisorConfig) -> Supervisor {
    spawn_with_fs(config, Arc::new(RealFs)).0
}

/// [`spawn`], also returning the supervisor task's handle, for a caller that
/// must notice the task ending (PID 1 watches it: the task runs until every
/// handle is dropped, so its end or panic there is a failure).
pub fn spawn_watched(config: SupervisorConfig) -> (Supervisor, tokio::task::JoinHandle<()>) {
    spawn_with_fs(config, Arc::new(RealFs))
}

pub(crate) fn spawn_with_fs(
    config: SupervisorConfig,
    fs: Arc<dyn CgroupFs>,
) -> (Supervisor, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let actor = Actor {
        config,
        fs,
        graph: DepGraph::new(),
        services: HashMap::new(),
        tx: tx.clone(),
        events: events.clone(),
        pid_watch: HashMap::new(),
        shutting_down: false,
        shutdown_waiters: Vec::new(),
        next_token: 0,
    };
    let task = tokio::spawn(actor.run(rx));
    (Supervisor { tx, events }, task)
}

impl Supervisor {
    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| Error::SupervisorGone)?;
        rx.await.map_err(|_| Error::SupervisorGone)
    }

    /// Validates and adds services, then starts each as soon as its dependencies are
    /// ready. Nothing is added if any spec is invalid, a name is taken, a dependency is
    /// unknown or the graph would have a cycle.
    pub async fn add(&self, specs: Vec<ServiceSpec>) -> Result<(), Error> {
        self.request(|reply| Msg::Add { specs, reply }).await?
    }

    /// A snapshot of every service, dependencies first.
    pub async fn status(&self) -> Vec<ServiceStatus> {
        self.request(|reply| Msg::Status { reply })
            .await
            .unwrap_or_default()
    }

    /// Starts a stopped, exited or failed service (once its dependencies are ready) and
    /// resets its backoff. No-op for a running service.
    pub async fn start(&self, name: &str) -> Result<(), Error> {
        let name = name.to_owned();
        self.request(|reply| Msg::Start { name, reply }).await?
    }

    /// Stops a service and keeps it stopped until `start`. Returns once its process has
    /// exited (after `stop_signal`, then SIGKILL after `stop_timeout`).
    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        let name = name.to_owned();
        self.request(|reply| Msg::Stop { name, reply }).await?
    }

    /// Stops the service if it runs, then starts it again without backoff. Returns once
    /// the old process has exited and the new one has been spawned.
    pub async fn restart(&self, name: &str) -> Result<(), Error> {
        let name = name.to_owned();
        self.request(|reply| Msg::Restart { name, reply }).await?
    }

    /// Sends `sig` to the main process only. An exit this causes is handled like any
    /// other: the restart policy applies.
    pub async fn signal(&self, name: &str, sig: Signal) -> Result<(), Error> {
        let name = name.to_owned();
        self.request(|reply| Msg::Signal {
            name,
            signal: sig,
            reply,
        })
        .await?
    }

    /// The current contents of the service's in-memory log ring.
    pub async fn logs(&self, name: &str) -> Result<Vec<u8>, Error> {
        let name = name.to_owned();
        let (contents, _) = self
            .request(|reply| Msg::Logs {
                name,
                follow: false,
                reply,
            })
            .await??;
        Ok(contents)
    }

    /// The ring's contents and, atomically with them, a receiver of every line the
    /// service writes afterwards (across restarts). A follower that falls more than
    /// 1024 lines behind gets `RecvError::Lagged`.
    pub async fn follow_logs(&self, name: &str) -> Result<(Vec<u8>, LogFollower), Error> {
        let name = name.to_owned();
        let (contents, follower) = self
            .request(|reply| Msg::Logs {
                name: name.clone(),
                follow: true,
                reply,
            })
            .await??;
        follower
            .map(|f| (contents, f))
            .ok_or_else(|| unknown(&name))
    }

    /// Every event from now on. A receiver that falls more than 1024 events behind
    /// gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Stops everything in reverse dependency order: a service gets its stop signal
    /// only after all its dependents have exited. Returns when every process is down.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Msg::Shutdown { reply }).await;
    }

    /// Reports a reaped child. Callable from synchronous code (a signal loop); pids
    /// that are not services are ignored.
    pub fn child_exited(&self, pid: i32, status: ExitStatusKind) {
        let _ = self.tx.send(Msg::ChildExited { pid, status });
    }
}

struct Service {
    spec: ServiceSpec,
    state: State,
    /// False after `stop`/`shutdown`, true after `add`/`start`/`restart`.
    want_running: bool,
    pid: Option<i32>,
    /// Bumped on every spawn; stale probe results are dropped.
    generation: u64,
    /// The pending backoff or stop timer; any other token is stale.
    timer_token: u64,
    spawned_once: bool,
    restarts: u32,
    ready_since: Option<Instant>,
    last_exit: Option<ExitStatusKind>,
    events: VecDeque<Event>,
    backoff: BackoffState,
    probe_task: Option<JoinHandle<()>>,
    cgroup: Option<Cgroup>,
    sink: SharedSink,
    stop_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
}

struct Actor {
    config: SupervisorConfig,
    fs: Arc<dyn CgroupFs>,
    graph: DepGraph,
    services: HashMap<String, Service>,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<Event>,
    pid_watch: HashMap<i32, oneshot::Sender<ExitStatusKind>>,
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    next_token: u64,
}

fn unknown(name: &str) -> Error {
    Error::UnknownService {
        name: name.to_owned(),
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Add { specs, reply } => {
                let _ = reply.send(self.add(specs));
            }
            Msg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Msg::Start { name, reply } => {
                let _ = reply.send(self.start(&name));
            }
            Msg::Stop { name, reply } => self.stop(&name, reply),
            Msg::Restart { name, reply } => self.restart(&name, reply),
            Msg::Signal {
                name,
                signal,
                reply,
            } => {
                let _ = reply.send(self.signal(&name, signal));
            }
            Msg::Logs {
                name,
                follow,
                reply,
            } => {
                let result = self
                    .services
                    .get(&name)
                    .map(|s| {
                        let sink = logs::lock(&s.sink);
                        (sink.contents(), follow.then(|| sink.follow()))
                    })
                    .ok_or_else(|| unknown(&name));
                let _ = reply.send(result);
            }
            Msg::Shutdown { reply } => self.shutdown(reply),
            Msg::ChildExited { pid, status } => self.child_exited(pid, status),
            Msg::WatchPid { pid, reply } => {
                self.pid_watch.insert(pid, reply);
            }
            Msg::ProbeResult {
                name,
                generation,
                result,
            } => self.probe_result(&name, generation, result),
            Msg::BackoffElapsed { name, token } => self.backoff_elapsed(&name, token),
            Msg::StopTimeout { name, token } => self.stop_timeout(&name, token),
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn emit(&mut self, name: &str, kind: EventKind) {
        let event = Event {
            service: name.to_owned(),
            at: Instant::now(),
            kind,
        };
        event.trace();
        if let Some(svc) = self.services.get_mut(name) {
            if svc.events.len() >= EVENTS_KEPT {
                svc.events.pop_front();
            }
            svc.events.push_back(event.clone());
        }
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    fn set_state(&mut self, name: &str, state: State) {
        if let Some(svc) = self.services.get_mut(name) {
            svc.state = state;
        }
    }

    // ---- control calls ----

    fn add(&mut self, specs: Vec<ServiceSpec>) -> Result<(), Error> {
        for spec in &specs {
            spec.validate()?;
        }
        self.graph.extend(
            specs
                .iter()
                .map(|s| (s.name.clone(), s.depends_on.clone()))
                .collect(),
        )?;
        for spec in specs {
            let sink = LogSink::new(&spec.name, &spec.log, self.config.log_dir.as_deref());
            self.services.insert(
                spec.name.clone(),
                Service {
                    spec,
                    state: State::Waiting,
                    want_running: true,
                    pid: None,
                    generation: 0,
                    timer_token: 0,
                    spawned_once: false,
                    restarts: 0,
                    ready_since: None,
                    last_exit: None,
                    events: VecDeque::new(),
                    backoff: BackoffState::default(),
                    probe_task: None,
                    cgroup: None,
                    sink,
                    stop_waiters: Vec::new(),
                },
            );
        }
        self.start_waiting();
        Ok(())
    }

    fn status(&self) -> Vec<ServiceStatus> {
        self.graph
            .start_order()
            .into_iter()
            .filter_map(|name| self.services.get(&name))
            .map(|svc| ServiceStatus {
                name: svc.spec.name.clone(),
                state: svc.state,
                pid: svc.pid,
                restarts: svc.restarts,
                ready_since: svc.ready_since,
                last_exit: svc.last_exit,
                events: svc.events.iter().cloned().collect(),
            })
            .collect()
    }

    fn start(&mut self, name: &str) -> Result<(), Error> {
        let token = self.token();
        let svc = self.services.get_mut(name).ok_or_else(|| unknown(name))?;
        svc.want_running = true;
        if svc.pid.is_some() {
            // Running, or stopping: `child_exited` starts it again.
            return Ok(());
        }
        svc.backoff.reset();
        svc.timer_token = token;
        self.try_start(name);
        Ok(())
    }

    fn stop(&mut self, name: &str, reply: oneshot::Sender<Result<(), Error>>) {
        let token = self.token();
        let Some(svc) = self.services.get_mut(name) else {
            let _ = reply.send(Err(unknown(name)));
            return;
        };
        svc.want_running = false;
        if svc.pid.is_some() {
            svc.stop_waiters.push(reply);
            if svc.state != State::Stopping {
                self.begin_stop(name);
            }
            return;
        }
        if matches!(svc.state, State::Waiting | State::BackingOff) {
            svc.timer_token = token;
            svc.state = State::Stopped;
            self.emit(name, EventKind::Stopped);
        }
        let _ = reply.send(Ok(()));
    }

    fn restart(&mut self, name: &str, reply: oneshot::Sender<Result<(), Error>>) {
        let Some(svc) = self.services.get_mut(name) else {
            let _ = reply.send(Err(unknown(name)));
            return;
        };
        svc.want_running = true;
        if svc.pid.is_some() {
            svc.stop_waiters.push(reply);
            if svc.state != State::Stopping {
                self.begin_stop(name);
            }
        } else {
            let _ = reply.send(self.start(name));
        }
    }

    fn signal(&mut self, name: &str, sig: Signal) -> Result<(), Error> {
        let svc = self.services.get(name).ok_or_else(|| unknown(name))?;
        let pid = svc.pid.ok_or_else(|| Error::NotRunning {
            service: name.to_owned(),
        })?;
        signal::kill(Pid::from_raw(pid), sig).map_err(|source| Error::Signal {
            service: name.to_owned(),
            signal: sig,
            source,
        })
    }

    fn shutdown(&mut self, reply: oneshot::Sender<()>) {
        self.shutting_down = true;
        self.shutdown_waiters.push(reply);
        let idle: Vec<String> = self
            .services
            .iter_mut()
            .filter_map(|(name, svc)| {
                svc.want_running = false;
                let idle = svc.pid.is_none()
                    && matches!(
                        svc.state,
                        State::Waiting | State::BackingOff | State::Starting
                    );
                idle.then(|| name.clone())
            })
            .collect();
        for name in idle {
            let token = self.token();
            if let Some(svc) = self.services.get_mut(&name) {
                svc.timer_token = token;
                svc.state = State::Stopped;
            }
            self.emit(&name, EventKind::Stopped);
        }
        self.advance_shutdown();
    }

    /// Stops every running service whose dependents are all down; finishes the
    /// shutdown once nothing runs.
    fn advance_shutdown(&mut self) {
        if !self.shutting_down {
            return;
        }
        for name in self.graph.stop_order() {
            let Some(svc) = self.services.get(&name) else {
                continue;
            };
            if svc.pid.is_none() || svc.state == State::Stopping {
                continue;
            }
            let dependents_down = self
                .graph
                .dependents(&name)
                .all(|d| self.services.get(d).is_none_or(|s| s.pid.is_none()));
            if dependents_down {
                self.begin_stop(&name);
            }
        }
        if self.services.values().all(|s| s.pid.is_none()) {
            self.shutting_down = false;
            for svc in self.services.values() {
                logs::lock(&svc.sink).close_file();
            }
            tracing::info!(event = "shutdown_complete", "all services are down");
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    // ---- life cycle ----

    /// A dependency is satisfied by a ready service, or by one that exited cleanly
    /// and will not be restarted (a one-shot job).
    fn dependency_satisfied(&self, name: &str) -> bool {
        self.services
            .get(name)
            .is_some_and(|s| matches!(s.state, State::Ready | State::Exited))
    }

    /// Spawns now if every dependency is satisfied, else parks the service in `Waiting`.
    fn try_start(&mut self, name: &str) {
        if self.shutting_down {
            return;
        }
        let ready = self
            .graph
            .deps(name)
            .iter()
            .all(|d| self.dependency_satisfied(d));
        if ready {
            self.spawn_service(name);
        } else {
            self.set_state(name, State::Waiting);
        }
    }

    /// Starts every waiting service whose dependencies have become satisfied.
    fn start_waiting(&mut self) {
        for name in self.graph.start_order() {
            let waiting = self
                .services
                .get(&name)
                .is_some_and(|s| s.want_running && s.state == State::Waiting);
            if waiting {
                self.try_start(&name);
            }
        }
    }

    fn spawn_service(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        svc.state = State::Starting;
        self.emit(name, EventKind::Starting);
        match self.spawn_process(name) {
            Ok(()) => {}
            Err(e) => {
                self.emit(
                    name,
                    EventKind::SpawnFailed {
                        error: e.to_string(),
                    },
                );
                self.after_failure(name, false);
            }
        }
    }

    fn spawn_process(&mut self, name: &str) -> Result<(), Error> {
        let Some(svc) = self.services.get_mut(name) else {
            return Ok(());
        };
        if let Some(root) = &self.config.cgroup_root {
            svc.cgroup = Some(Cgroup::prepare(
                self.fs.as_ref(),
                root,
                name,
                &svc.spec.resources,
            )?);
        }
        let cgroup_procs = svc.cgroup.as_ref().map(Cgroup::procs_path).transpose()?;
        let spec = &svc.spec;
        let launch = Launch {
            command: &spec.command,
            args: &spec.args,
            env: &spec.env,
            working_dir: spec.working_dir.as_deref(),
            cgroup_procs,
            capture_output: true,
        };
        let spawned = {
            let _guard = process::spawn_lock();
            process::spawn(&launch)
        }
        .map_err(|source| Error::Spawn {
            service: name.to_owned(),
            command: spec.command.clone(),
            source,
        })?;

        if svc.spawned_once {
            svc.restarts += 1;
        }
        svc.spawned_once = true;
        svc.pid = Some(spawned.pid);
        svc.generation += 1;
        svc.ready_since = None;
        for rx in [spawned.stdout, spawned.stderr].into_iter().flatten() {
            tokio::spawn(logs::pump(rx, svc.sink.clone()));
        }
        let immediate = matches!(svc.spec.readiness, Probe::None);
        let completion = matches!(svc.spec.readiness, Probe::Completion);
        self.emit(name, EventKind::Started { pid: spawned.pid });
        if immediate {
            self.become_ready(name);
        } else if !completion {
            self.start_probe(name);
        }
        Ok(())
    }

    fn start_probe(&mut self, name: &str) {
        let tx = self.tx.clone();
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let watch_tx = tx.clone();
        let ctx = ProbeContext {
            env: svc.spec.env.clone(),
            working_dir: svc.spec.working_dir.clone(),
            watch: Arc::new(move |pid| {
                let (reply, rx) = oneshot::channel();
                let _ = watch_tx.send(Msg::WatchPid { pid, reply });
                rx
            }),
        };
        let probe = svc.spec.readiness.clone();
        let settings = svc.spec.probe;
        let generation = svc.generation;
        let service = name.to_owned();
        if let Some(old) = svc.probe_task.take() {
            old.abort();
        }
        svc.probe_task = Some(tokio::spawn(async move {
            let mut ever_ready = false;
            loop {
                let result = probe::check(&probe, settings.timeout, &ctx).await;
                ever_ready |= result.is_ok();
                let msg = Msg::ProbeResult {
                    name: service.clone(),
                    generation,
                    result,
                };
                if tx.send(msg).is_err() {
                    break;
                }
                let period = if ever_ready {
                    settings.ready_period
                } else {
                    settings.initial_period
                };
                tokio::time::sleep(period).await;
            }
        }));
    }

    fn become_ready(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        svc.state = State::Ready;
        svc.ready_since = Some(Instant::now());
        self.emit(name, EventKind::Ready);
        self.start_waiting();
    }

    fn probe_result(&mut self, name: &str, generation: u64, result: Result<(), String>) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        if svc.generation != generation || svc.pid.is_none() {
            return;
        }
        match (result, svc.state) {
            (Ok(()), State::Starting | State::Running) => self.become_ready(name),
            (Err(reason), State::Ready) => {
                svc.state = State::Running;
                svc.ready_since = None;
                self.emit(name, EventKind::NotReady { reason });
            }
            (Err(reason), State::Starting) => {
                tracing::debug!(service = %name, reason = %reason, "not ready yet");
            }
            _ => {}
        }
    }

    fn child_exited(&mut self, pid: i32, status: ExitStatusKind) {
        if let Some(reply) = self.pid_watch.remove(&pid) {
            let _ = reply.send(status);
            return;
        }
        let Some(name) = self
            .services
            .iter()
            .find(|(_, s)| s.pid == Some(pid))
            .map(|(n, _)| n.clone())
        else {
            tracing::debug!(pid, status = %status, "reaped a process that is not a service");
            return;
        };
        let token = self.token();
        let Some(svc) = self.services.get_mut(&name) else {
            return;
        };
        svc.pid = None;
        svc.last_exit = Some(status);
        svc.timer_token = token;
        if let Some(task) = svc.probe_task.take() {
            task.abort();
        }
        let ready_for = svc.ready_since.take().map(|t| t.elapsed());
        svc.backoff.note_ready_for(&svc.spec.backoff, ready_for);
        let was_stopping = svc.state == State::Stopping;
        self.emit(&name, EventKind::Exited { status });

        if was_stopping || !self.services.get(&name).is_some_and(|s| s.want_running) {
            self.kill_leftovers(&name, pid);
            self.finish_stop(&name);
        } else {
            self.after_failure(&name, status.success());
        }
        self.advance_shutdown();
    }

    /// After a requested stop, nothing of the service may survive its main process:
    /// SIGKILL whatever is left in its cgroup, or else in its process group. (A pgid
    /// is not reused while the group has members, so this cannot hit a stranger.)
    fn kill_leftovers(&mut self, name: &str, pid: i32) {
        let Some(svc) = self.services.get(name) else {
            return;
        };
        let killed_cgroup = svc
            .cgroup
            .as_ref()
            .is_some_and(|cg| cg.kill(self.fs.as_ref()).unwrap_or(false));
        if !killed_cgroup {
            // ESRCH (the usual case: nothing left) is fine.
            let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// The process is down after a stop request: report it, start again if a
    /// `start`/`restart` came in meanwhile, then wake `stop`/`restart` callers.
    fn finish_stop(&mut self, name: &str) {
        self.set_state(name, State::Stopped);
        self.emit(name, EventKind::Stopped);
        let restart = self
            .services
            .get_mut(name)
            .map(|svc| {
                if svc.want_running {
                    svc.backoff.reset();
                }
                svc.want_running
            })
            .unwrap_or(false);
        if restart {
            self.try_start(name);
        }
        if let Some(svc) = self.services.get_mut(name) {
            for waiter in svc.stop_waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
        }
    }

    /// The process ended on its own (or could not be spawned): apply the restart policy.
    fn after_failure(&mut self, name: &str, success: bool) {
        let token = self.token();
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let restart = svc.want_running
            && !self.shutting_down
            && match svc.spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
        if !restart {
            svc.state = if success {
                State::Exited
            } else {
                State::Failed
            };
            if success {
                // A finished one-shot job satisfies its dependents.
                self.start_waiting();
            }
            return;
        }
        let delay = svc.backoff.next_delay(&svc.spec.backoff);
        svc.state = State::BackingOff;
        svc.timer_token = token;
        self.emit(name, EventKind::BackingOff { delay });
        let tx = self.tx.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Msg::BackoffElapsed { name, token });
        });
    }

    fn backoff_elapsed(&mut self, name: &str, token: u64) {
        let current = self.services.get(name).is_some_and(|s| {
            s.timer_token == token && s.state == State::BackingOff && s.want_running
        });
        if current {
            self.try_start(name);
        }
    }

    /// Sends the stop signal to the process group and arms the SIGKILL timer.
    fn begin_stop(&mut self, name: &str) {
        let token = self.token();
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let Some(pid) = svc.pid else {
            return;
        };
        svc.state = State::Stopping;
        svc.timer_token = token;
        let sig = svc.spec.stop_signal;
        let timeout = svc.spec.stop_timeout;
        self.emit(name, EventKind::Stopping);
        send_to_group(name, pid, sig);
        let tx = self.tx.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = tx.send(Msg::StopTimeout { name, token });
        });
    }

    /// `stop_timeout` elapsed: SIGKILL the whole cgroup, or else the process group.
    fn stop_timeout(&mut self, name: &str, token: u64) {
        let Some(svc) = self.services.get(name) else {
            return;
        };
        let Some(pid) = svc.pid else {
            return;
        };
        if svc.timer_token != token || svc.state != State::Stopping {
            return;
        }
        tracing::warn!(
            event = "killing",
            service = %name,
            pid,
            timeout_ms = u64::try_from(svc.spec.stop_timeout.as_millis()).unwrap_or(u64::MAX),
            "stop timeout elapsed, sending SIGKILL"
        );
        let killed_cgroup = match &svc.cgroup {
            Some(cg) => cg.kill(self.fs.as_ref()).unwrap_or_else(|e| {
                tracing::warn!(service = %name, error = %e, "cgroup.kill failed");
                false
            }),
            None => false,
        };
        if !killed_cgroup {
            send_to_group(name, pid, Signal::SIGKILL);
        }
    }
}

/// Signals the process group led by `pid` (every service is a session leader), or
/// just `pid` if the group is gone.
fn send_to_group(name: &str, pid: i32, sig: Signal) {
    let pid = Pid::from_raw(pid);
    if signal::killpg(pid, sig).is_err()
        && let Err(e) = signal::kill(pid, sig)
    {
        tracing::debug!(service = %name, pid = pid.as_raw(), error = %e, "signal not delivered");
    }
}
