//! Runs the built pause binary: version flag, SIGTERM/SIGINT exit 0 promptly,
//! and children it leaves unwaited are reaped on SIGCHLD (no zombie remains).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PAUSE: &str = env!("CARGO_BIN_EXE_cairn-pause");

/// Kills the child by its pid if a test ends without it having exited.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start(args: &[&str]) -> Guard {
    let child = Command::new(PAUSE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {PAUSE}: {e}"));
    Guard(child)
}

/// Waits until pause has blocked its signals: it blocks them first, then warns
/// on stderr that it is not PID 1 (never PID 1 here), so once that line is read
/// a signal is sure to be waited for rather than killing it with the default
/// action. Returns the rest of stderr as a reader.
fn wait_until_blocking(guard: &mut Guard) -> BufReader<std::process::ChildStderr> {
    let stderr = guard
        .0
        .stderr
        .take()
        .unwrap_or_else(|| panic!("no stderr pipe"));
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading pause's stderr: {e}"));
    assert_eq!(
        line.trim_end(),
        "Warning: pause should be the first process"
    );
    reader
}

fn wait_exit(guard: &mut Guard, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = guard
            .0
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for pause: {e}"))
        {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "pause did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rest_of(mut reader: BufReader<std::process::ChildStderr>) -> String {
    let mut s = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut s);
    s
}

#[test]
fn version_flag() {
    let out = Command::new(PAUSE)
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("{PAUSE} -v: {e}"));
    assert!(out.status.success(), "{:?}", out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cairn-pause v"), "{text:?}");
}

fn exits_zero_on(sig: Signal) {
    let mut guard = start(&[]);
    let pid = guard.0.id();
    let stderr = wait_until_blocking(&mut guard);
    // It must still be running: pausing, not exiting on its own.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        matches!(guard.0.try_wait(), Ok(None)),
        "pause exited before any signal"
    );
    let sent = Instant::now();
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill {pid} {sig}: {e}"));
    let status = wait_exit(&mut guard, Duration::from_secs(2));
    let took = sent.elapsed();
    let err = rest_of(stderr);
    assert_eq!(
        status.code(),
        Some(0),
        "pause after {sig}: {status:?}; stderr: {err}"
    );
    assert!(
        err.contains(&format!("got signal: {}", sig.as_str())),
        "stderr: {err}"
    );
    eprintln!("pause exited 0 {took:?} after {sig}");
}

#[test]
fn sigterm_exits_zero_promptly() {
    exits_zero_on(Signal::SIGTERM);
}

#[test]
fn sigint_exits_zero_promptly() {
    exits_zero_on(Signal::SIGINT);
}

/// The state letter of /proc/<pid>/stat (after the parenthesised comm), or None
/// when the process is gone (reaped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn reaps_children_no_zombie_remains() {
    const N: usize = 5;
    let mut guard = start(&["--cairn-test-spawn", &N.to_string()]);
    let pid = guard.0.id();
    let _stderr = wait_until_blocking(&mut guard);
    let stdout = guard
        .0
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no stdout pipe"));
    let mut children = Vec::new();
    for line in BufReader::new(stdout).lines().take(N) {
        let line = line.unwrap_or_else(|e| panic!("reading pause's stdout: {e}"));
        let child: u32 = line
            .strip_prefix("spawned ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line from pause: {line:?}"));
        children.push(child);
    }
    assert_eq!(children.len(), N, "pause reported {children:?}");
    // Each child exits at once; pause must collect it, so /proc/<child> goes away.
    // A zombie would stay in state Z with pause as its parent.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<(u32, Option<char>)> = children
            .iter()
            .filter(|c| ppid(**c) == Some(pid))
            .map(|c| (*c, state(*c)))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children of pause {pid} still there after 5 s (Z = zombie, not reaped): {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And pause itself keeps running after reaping.
    assert!(
        matches!(guard.0.try_wait(), Ok(None)),
        "pause exited after reaping"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap_or_else(|e| panic!("kill {pid}: {e}"));
    let status = wait_exit(&mut guard, Duration::from_secs(2));
    assert_eq!(status.code(), Some(0));
}
