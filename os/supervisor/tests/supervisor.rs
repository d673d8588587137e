//! Integration tests with real processes (/bin/sh, sleep, true, false, python3).
//!
//! Every test runs under one process-wide lock with its own runtime, supervisor and
//! reaper: a reaper calls `waitpid(-1)`, so two of them running at once would steal
//! each other's exits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_supervisor::{
    Backoff, Event, EventKind, ExitStatusKind, Probe, ProbeSettings, RestartPolicy, ServiceSpec,
    Signal, State, Supervisor, SupervisorConfig,
};
use tokio::sync::broadcast;

static SERIAL: Mutex<()> = Mutex::new(());

fn run<F: Future<Output = ()>>(test: F) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    std::sync::LazyLock::force(&CAPTURED);
    // Orphans of services reparent to the test process, as they would to PID 1.
    nix::sys::prctl::set_child_subreaper(true).expect("set_child_subreaper");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test);
}

fn start(config: SupervisorConfig) -> (Supervisor, Events) {
    let sup = cairn_supervisor::spawn(config);
    cairn_supervisor::spawn_reaper(sup.clone());
    let events = Events {
        rx: sup.subscribe(),
        seen: Vec::new(),
        returned: Vec::new(),
    };
    (sup, events)
}

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sh")
        .args(["-c", script])
        .env("PATH", PATH)
}

fn python3() -> PathBuf {
    for candidate in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("python3 not found in /usr/bin or /usr/local/bin");
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn http_server(name: &str, port: u16, dir: &Path) -> ServiceSpec {
    ServiceSpec::new(name, python3())
        .args([
            "-m".to_owned(),
            "http.server".to_owned(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            port.to_string(),
        ])
        .env("PATH", PATH)
        .working_dir(dir)
        .stop_timeout(Duration::from_secs(2))
}

/// Records every event and waits for specific ones with a timeout.
struct Events {
    rx: broadcast::Receiver<Event>,
    seen: Vec<Event>,
    /// Indices into `seen` already returned by `wait_for`.
    returned: Vec<usize>,
}

impl Events {
    async fn wait_for(
        &mut self,
        service: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&EventKind) -> bool,
    ) -> Event {
        // An event recorded while waiting for something else still counts, once.
        let matches = |e: &Event| e.service == service && pred(&e.kind);
        if let Some(i) =
            (0..self.seen.len()).find(|i| !self.returned.contains(i) && matches(&self.seen[*i]))
        {
            self.returned.push(i);
            return self.seen[i].clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Ok(event)) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        self.returned.push(self.seen.len() - 1);
                        return event;
                    }
                }
                Ok(Err(e)) => panic!("event stream broke: {e}"),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {service} {what}; saw:\n{}",
                    self.dump()
                ),
            }
        }
    }

    fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|e| format!("  {} {:?}", e.service, e.kind))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Index of the first recorded event matching.
    fn index(&self, service: &str, pred: impl Fn(&EventKind) -> bool) -> usize {
        self.seen
            .iter()
            .position(|e| e.service == service && pred(&e.kind))
            .unwrap_or_else(|| panic!("no matching event for {service}; saw:\n{}", self.dump()))
    }

    fn count(&self, service: &str, pred: impl Fn(&EventKind) -> bool) -> usize {
        self.seen
            .iter()
            .filter(|e| e.service == service && pred(&e.kind))
            .count()
    }
}

fn is_ready(k: &EventKind) -> bool {
    *k == EventKind::Ready
}
fn is_stopped(k: &EventKind) -> bool {
    *k == EventKind::Stopped
}
fn is_exited(k: &EventKind) -> bool {
    matches!(k, EventKind::Exited { .. })
}

async fn state_of(sup: &Supervisor, name: &str) -> State {
    sup.status()
        .await
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
        .state
}

const LONG: Duration = Duration::from_secs(10);

/// Captures `tracing` output of all tests so the console format can be checked.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

static CAPTURED: std::sync::LazyLock<Captured> = std::sync::LazyLock::new(|| {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
    captured
});

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tcp_probe_gates_dependent_and_logs_events() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let (sup, mut events) = start(SupervisorConfig::default());
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        sup.add(vec![
            // Listed first on purpose: order comes from the graph, not the list.
            sh("client", "echo client-ran")
                .depends_on("web")
                .restart(RestartPolicy::Never),
            http_server("web", port, dir.path()).readiness(Probe::Tcp(addr)),
        ])
        .await
        .expect("add");

        events.wait_for("web", "ready", LONG, is_ready).await;
        events.wait_for("client", "exit", LONG, is_exited).await;
        let web_ready = events.index("web", is_ready);
        let client_starting = events.index("client", |k| *k == EventKind::Starting);
        assert!(
            web_ready < client_starting,
            "client started before web was ready:\n{}",
            events.dump()
        );
        assert_eq!(state_of(&sup, "client").await, State::Exited);
        // The dependency keeps running after its dependent exited.
        assert_eq!(state_of(&sup, "web").await, State::Ready);

        sup.shutdown().await;
        assert!(sup.status().await.iter().all(|s| s.pid.is_none()));
    });

    let text = String::from_utf8_lossy(&CAPTURED.0.lock().unwrap_or_else(PoisonError::into_inner))
        .into_owned();
    assert!(
        text.contains("event=ready service=web"),
        "console output:\n{text}"
    );
    assert!(
        text.contains("event=started service=web pid="),
        "console output:\n{text}"
    );
}

#[test]
fn sigkill_restarts_and_is_ready_again_quickly() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![http_server("web", port, dir.path()).readiness(
            Probe::Http {
                url: format!("http://127.0.0.1:{port}/"),
            },
        )])
        .await
        .expect("add");
        events.wait_for("web", "ready", LONG, is_ready).await;
        let first_pid = sup.status().await[0].pid.expect("pid");

        let killed_at = Instant::now();
        sup.signal("web", Signal::SIGKILL).await.expect("signal");
        let exit = events.wait_for("web", "exit", LONG, is_exited).await;
        assert_eq!(
            exit.kind,
            EventKind::Exited {
                status: ExitStatusKind::Signal(9)
            }
        );
        let backoff = events
            .wait_for("web", "backoff", LONG, |k| {
                matches!(k, EventKind::BackingOff { .. })
            })
            .await;
        assert_eq!(
            backoff.kind,
            EventKind::BackingOff {
                delay: Duration::from_millis(100)
            }
        );
        events.wait_for("web", "ready again", LONG, is_ready).await;
        let took = killed_at.elapsed();
        assert!(took < Duration::from_secs(5), "ready again after {took:?}");

        let status = &sup.status().await[0];
        assert_eq!(status.restarts, 1);
        assert_eq!(status.last_exit, Some(ExitStatusKind::Signal(9)));
        assert!(status.ready_since.is_some());
        assert_ne!(status.pid, Some(first_pid));
        assert!(status.events.len() <= 32);

        sup.shutdown().await;
    });
}

#[test]
fn on_failure_backs_off_with_growing_delays() {
    run(async {
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            ServiceSpec::new("fails", "/bin/false").restart(RestartPolicy::OnFailure),
        ])
        .await
        .expect("add");
        let mut delays = Vec::new();
        for _ in 0..4 {
            let e = events
                .wait_for("fails", "backoff", LONG, |k| {
                    matches!(k, EventKind::BackingOff { .. })
                })
                .await;
            if let EventKind::BackingOff { delay } = e.kind {
                delays.push(delay);
            }
        }
        let ms = Duration::from_millis;
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800)]);
        assert!(
            events.count("fails", |k| {
                *k == EventKind::Exited {
                    status: ExitStatusKind::Code(1),
                }
            }) >= 4
        );

        // Stopping while backing off cancels the pending restart.
        sup.stop("fails").await.expect("stop");
        assert_eq!(state_of(&sup, "fails").await, State::Stopped);
        let restarts = sup.status().await[0].restarts;
        tokio::time::sleep(ms(1000)).await;
        assert_eq!(
            sup.status().await[0].restarts,
            restarts,
            "restarted after stop"
        );

        // `start` resets the backoff.
        sup.start("fails").await.expect("start");
        let e = events
            .wait_for("fails", "backoff after start", LONG, |k| {
                matches!(k, EventKind::BackingOff { .. })
            })
            .await;
        assert_eq!(e.kind, EventKind::BackingOff { delay: ms(100) });
        sup.shutdown().await;
        assert_eq!(state_of(&sup, "fails").await, State::Stopped);
    });
}

#[test]
fn never_stays_exited_and_on_failure_accepts_success() {
    run(async {
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            ServiceSpec::new("never-fail", "/bin/false").restart(RestartPolicy::Never),
            ServiceSpec::new("never-ok", "/bin/true").restart(RestartPolicy::Never),
            ServiceSpec::new("onfail-ok", "/bin/true").restart(RestartPolicy::OnFailure),
        ])
        .await
        .expect("add");
        for name in ["never-fail", "never-ok", "onfail-ok"] {
            events.wait_for(name, "exit", LONG, is_exited).await;
        }
        // Give a wrongly scheduled restart (100 ms backoff) time to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Ok(e) = events.rx.try_recv() {
            events.seen.push(e);
        }
        let dump = events.dump();
        assert_eq!(state_of(&sup, "never-fail").await, State::Failed, "{dump}");
        assert_eq!(state_of(&sup, "never-ok").await, State::Exited, "{dump}");
        assert_eq!(state_of(&sup, "onfail-ok").await, State::Exited, "{dump}");
        for name in ["never-fail", "never-ok", "onfail-ok"] {
            assert_eq!(
                events.count(name, |k| matches!(k, EventKind::Started { .. })),
                1,
                "{name} restarted:\n{}",
                events.dump()
            );
            assert_eq!(
                events.count(name, |k| matches!(k, EventKind::BackingOff { .. })),
                0
            );
        }
        sup.shutdown().await;
    });
}

#[test]
fn spawn_failure_is_an_event_and_backs_off() {
    run(async {
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![ServiceSpec::new(
            "missing",
            "/nonexistent/cairn-test-binary",
        )])
        .await
        .expect("add");
        let e = events
            .wait_for("missing", "spawn failure", LONG, |k| {
                matches!(k, EventKind::SpawnFailed { .. })
            })
            .await;
        if let EventKind::SpawnFailed { error } = &e.kind {
            assert!(error.contains("missing"), "{error}");
            assert!(error.contains("/nonexistent/cairn-test-binary"), "{error}");
        }
        let ms = Duration::from_millis;
        for expected in [ms(100), ms(200)] {
            let e = events
                .wait_for("missing", "backoff", LONG, |k| {
                    matches!(k, EventKind::BackingOff { .. })
                })
                .await;
            assert_eq!(e.kind, EventKind::BackingOff { delay: expected });
        }
        sup.stop("missing").await.expect("stop");
        assert_eq!(state_of(&sup, "missing").await, State::Stopped);
        sup.shutdown().await;
    });
}

#[test]
fn exec_probe_decides_readiness() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("ready-flag");
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            ServiceSpec::new("waits", "/bin/sleep")
                .args(["100"])
                .readiness(Probe::Exec {
                    command: "/bin/sh".into(),
                    args: vec!["-c".into(), format!("test -e {}", flag.display())],
                })
                .probe_settings(ProbeSettings {
                    ready_period: Duration::from_millis(100),
                    ..ProbeSettings::default()
                })
                .stop_timeout(Duration::from_secs(2)),
        ])
        .await
        .expect("add");
        events
            .wait_for("waits", "started", LONG, |k| {
                matches!(k, EventKind::Started { .. })
            })
            .await;
        // Several failing probe rounds (200 ms period) must not make it ready.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(state_of(&sup, "waits").await, State::Starting);
        std::fs::write(&flag, b"").expect("flag");
        let created = Instant::now();
        events.wait_for("waits", "ready", LONG, is_ready).await;
        assert!(created.elapsed() < Duration::from_secs(3));

        // Once ready, probe failures are reported but do not restart the service.
        std::fs::remove_file(&flag).expect("remove flag");
        let e = events
            .wait_for("waits", "not ready", LONG, |k| {
                matches!(k, EventKind::NotReady { .. })
            })
            .await;
        if let EventKind::NotReady { reason } = &e.kind {
            assert!(reason.contains("exited with code 1"), "{reason}");
        }
        assert_eq!(state_of(&sup, "waits").await, State::Running);
        std::fs::write(&flag, b"").expect("flag");
        events
            .wait_for("waits", "ready again", LONG, is_ready)
            .await;
        let status = &sup.status().await[0];
        assert_eq!(status.restarts, 0);
        assert_eq!(status.state, State::Ready);
        sup.shutdown().await;
        assert_eq!(state_of(&sup, "waits").await, State::Stopped);
    });
}

#[test]
fn logs_go_to_ring_and_file() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sup, mut events) = start(SupervisorConfig {
            log_dir: Some(dir.path().join("log")),
            cgroup_root: None,
        });
        sup.add(vec![
            sh("echo", "echo one; echo two >&2; echo three").restart(RestartPolicy::Never),
        ])
        .await
        .expect("add");
        events.wait_for("echo", "exit", LONG, is_exited).await;
        let deadline = Instant::now() + LONG;
        let logs = loop {
            let logs = String::from_utf8(sup.logs("echo").await.expect("logs")).expect("utf8");
            if logs.lines().count() >= 3 || Instant::now() > deadline {
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut lines: Vec<&str> = logs.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, vec!["one", "three", "two"], "ring: {logs:?}");
        let file = dir.path().join("log/echo.log");
        let text = std::fs::read_to_string(&file).expect("log file");
        assert_eq!(text.lines().count(), 3, "file: {text:?}");
        assert!(matches!(
            sup.logs("nope").await,
            Err(cairn_supervisor::Error::UnknownService { .. })
        ));
        sup.shutdown().await;
    });
}

#[test]
fn shutdown_stops_in_reverse_order_and_escalates() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("trap-set");
        let stop_timeout = Duration::from_millis(700);
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            sh("base", "exec sleep 100"),
            sh("mid", "exec sleep 100").depends_on("base"),
            sh(
                "stubborn",
                &format!("trap '' TERM; touch {}; sleep 100", flag.display()),
            )
            .depends_on("mid")
            .stop_timeout(stop_timeout)
            .readiness(Probe::Exec {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), format!("test -e {}", flag.display())],
            }),
            sh("side", "exec sleep 100").depends_on("base"),
        ])
        .await
        .expect("add");
        for name in ["base", "mid", "side", "stubborn"] {
            events.wait_for(name, "ready", LONG, is_ready).await;
        }

        let began = Instant::now();
        sup.shutdown().await;
        let took = began.elapsed();
        assert!(
            took >= stop_timeout && took < stop_timeout + Duration::from_secs(3),
            "shutdown took {took:?}"
        );
        while let Ok(e) = events.rx.try_recv() {
            events.seen.push(e);
        }
        // stubborn ignored SIGTERM and was killed.
        assert_eq!(
            events.index("stubborn", is_exited),
            events.index("stubborn", |k| {
                *k == EventKind::Exited {
                    status: ExitStatusKind::Signal(9),
                }
            })
        );
        // Each service is told to stop only after its dependents are down.
        let stopping = |name| events.index(name, |k| *k == EventKind::Stopping);
        let exited = |name| events.index(name, is_exited);
        assert!(exited("stubborn") < stopping("mid"), "{}", events.dump());
        assert!(exited("mid") < stopping("base"), "{}", events.dump());
        assert!(exited("side") < stopping("base"), "{}", events.dump());
        let stopped = |name| events.index(name, is_stopped);
        assert!(stopped("stubborn") < stopped("mid"));
        assert!(stopped("mid") < stopped("base"));
        for status in sup.status().await {
            assert_eq!(status.state, State::Stopped, "{}", status.name);
            assert_eq!(status.pid, None);
        }
    });
}

#[test]
fn stop_start_restart_control() {
    run(async {
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            ServiceSpec::new("svc", "/bin/sleep").args(["100"]),
            sh("dep", "exec sleep 100").depends_on("svc"),
        ])
        .await
        .expect("add");
        events.wait_for("dep", "ready", LONG, is_ready).await;

        sup.stop("svc").await.expect("stop");
        assert_eq!(state_of(&sup, "svc").await, State::Stopped);
        // The dependent keeps running.
        assert_eq!(state_of(&sup, "dep").await, State::Ready);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            state_of(&sup, "svc").await,
            State::Stopped,
            "restarted after stop"
        );

        sup.start("svc").await.expect("start");
        events.wait_for("svc", "ready", LONG, is_ready).await;
        let pid = sup.status().await[0].pid;

        sup.restart("svc").await.expect("restart");
        let after = &sup.status().await[0];
        assert!(after.pid.is_some() && after.pid != pid);
        assert_eq!(after.restarts, 2);

        assert!(matches!(
            sup.stop("nope").await,
            Err(cairn_supervisor::Error::UnknownService { .. })
        ));
        sup.shutdown().await;
        assert!(matches!(
            sup.signal("svc", Signal::SIGTERM).await,
            Err(cairn_supervisor::Error::NotRunning { .. })
        ));
    });
}

#[test]
fn add_rejects_bad_graphs() {
    run(async {
        let (sup, _events) = start(SupervisorConfig::default());
        let err = sup
            .add(vec![ServiceSpec::new("a", "/bin/true").depends_on("ghost")])
            .await
            .expect_err("unknown dep");
        assert_eq!(
            err.to_string(),
            "service a depends on unknown service ghost"
        );
        let err = sup
            .add(vec![
                ServiceSpec::new("x", "/bin/true").depends_on("y"),
                ServiceSpec::new("y", "/bin/true").depends_on("x"),
            ])
            .await
            .expect_err("cycle");
        assert_eq!(err.to_string(), "dependency cycle: x -> y -> x");
        let err = sup
            .add(vec![
                ServiceSpec::new("d", "/bin/true"),
                ServiceSpec::new("d", "/bin/true"),
            ])
            .await
            .expect_err("duplicate");
        assert_eq!(err.to_string(), "duplicate service d");
        let err = sup
            .add(vec![ServiceSpec::new("Bad_Name", "/bin/true")])
            .await
            .expect_err("name");
        assert!(err.to_string().contains("Bad_Name"));
        assert!(sup.status().await.is_empty());
    });
}

#[test]
fn orphaned_grandchild_is_reaped() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            sh(
                "forker",
                &format!(
                    "sleep 1 >/dev/null 2>&1 & echo $! > {}.tmp; mv {0}.tmp {0}; exit 0",
                    pidfile.display()
                ),
            )
            .restart(RestartPolicy::Never),
        ])
        .await
        .expect("add");
        events.wait_for("forker", "exit", LONG, is_exited).await;
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        let stat_path = format!("/proc/{pid}/stat");

        // While it runs, the orphan belongs to us (the subreaper), as it would to PID 1.
        if let Ok(stat) = std::fs::read_to_string(&stat_path) {
            let after_comm = &stat[stat.rfind(')').expect("stat") + 2..];
            let mut fields = after_comm.split_whitespace();
            let state = fields.next().expect("state");
            let ppid: u32 = fields.next().expect("ppid").parse().expect("ppid");
            if state != "Z" {
                assert_eq!(ppid, std::process::id(), "orphan not reparented to us");
            }
        }

        // Once it exits, the reaper must collect it: no zombie may remain.
        let deadline = Instant::now() + LONG;
        loop {
            match std::fs::read_to_string(&stat_path) {
                Err(_) => break,
                Ok(stat) => {
                    let state = stat[stat.rfind(')').expect("stat") + 2..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    assert!(
                        Instant::now() < deadline,
                        "process {pid} still present in state {state}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sup.shutdown().await;
    });
}

#[test]
fn backoff_settings_are_used() {
    run(async {
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![ServiceSpec::new("quick", "/bin/true").backoff(
            Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(50),
                multiplier: 3,
                reset_after: Duration::from_secs(10),
            },
        )])
        .await
        .expect("add");
        let mut delays = Vec::new();
        for _ in 0..3 {
            if let EventKind::BackingOff { delay } = events
                .wait_for("quick", "backoff", LONG, |k| {
                    matches!(k, EventKind::BackingOff { .. })
                })
                .await
                .kind
            {
                delays.push(delay.as_millis());
            }
        }
        assert_eq!(delays, vec![20, 50, 50]);
        sup.shutdown().await;
    });
}

/// Waits until `/proc/<pid>` is gone (exited and reaped), panicking after `timeout`.
async fn wait_gone(pid: i32, timeout: Duration) {
    let stat_path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + timeout;
    while let Ok(stat) = std::fs::read_to_string(&stat_path) {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        assert!(
            Instant::now() < deadline,
            "process {pid} still present in state {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn stop_kills_leftovers_in_the_process_group() {
    run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("helper.pid");
        let (sup, mut events) = start(SupervisorConfig::default());
        sup.add(vec![
            sh(
                "leaves-helper",
                &format!(
                    "(trap '' TERM; exec sleep 100) & echo $! > {0}.tmp; mv {0}.tmp {0}; exec sleep 100",
                    pidfile.display()
                ),
            )
            // Long enough that only the leftover cleanup can explain a quick exit.
            .stop_timeout(Duration::from_secs(30)),
        ])
        .await
        .expect("add");
        events
            .wait_for("leaves-helper", "ready", LONG, is_ready)
            .await;
        let deadline = Instant::now() + LONG;
        let helper: i32 = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                break text.trim().parse().expect("pid");
            }
            assert!(Instant::now() < deadline, "helper pid never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let began = Instant::now();
        sup.stop("leaves-helper").await.expect("stop");
        // The helper ignores SIGTERM; it must still be gone (killed and reaped) quickly.
        wait_gone(helper, Duration::from_secs(5)).await;
        assert!(began.elapsed() < Duration::from_secs(10));
        assert_eq!(state_of(&sup, "leaves-helper").await, State::Stopped);
        sup.shutdown().await;
    });
}
