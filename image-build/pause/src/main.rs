//! cairn's pause program: PID 1 of every pod sandbox, our own build of what
//! Kubernetes' `pause.c` does (not upstream's binary or image).
//!
//! It holds the pod's namespaces open by doing nothing: it blocks forever, reaps
//! any child that ends up parented to it (it is PID 1 of the pod's PID namespace
//! when the pod shares one), and exits 0 on SIGINT or SIGTERM. `-v` prints the
//! version. It is shipped as a static executable in a `FROM scratch`-style OCI
//! image (see `cairn_image::oci::pause_image`), so it must be built with
//! `RUSTFLAGS="-C target-feature=+crt-static"` for the gnu target:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p cairn-pause \
//!     --target x86_64-unknown-linux-gnu --target-dir target/static
//! ```
//!
//! Signals are not handled by handlers: SIGINT, SIGTERM and SIGCHLD are blocked
//! and taken synchronously with `sigwait`, so no code runs in signal context and
//! no `unsafe` is needed. Blocked signals are queued even for a PID 1 (the kernel
//! only drops default-disposition signals to a namespace's init when they are
//! not blocked), so SIGTERM from inside the pod still works.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// `-v`: print the version and exit.
    Version,
    /// Pause; before that, spawn this many short-lived children and leave them
    /// unwaited (hidden `--cairn-test-spawn N`, for the zombie-reaping test only).
    Pause { spawn_for_test: u32 },
}

/// Like `pause.c`, only exactly `-v` is a flag; other arguments are ignored
/// (the container runtime passes none). The hidden test flag is
/// `--cairn-test-spawn N`.
fn parse(args: &[OsString]) -> Result<Mode, String> {
    match args {
        [v] if v == "-v" => Ok(Mode::Version),
        [flag, n] if flag == "--cairn-test-spawn" => {
            let n = n
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| format!("--cairn-test-spawn wants a count, got {n:?}"))?;
            Ok(Mode::Pause { spawn_for_test: n })
        }
        _ => Ok(Mode::Pause { spawn_for_test: 0 }),
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match parse(&args) {
        Ok(Mode::Version) => {
            println!(
                "cairn-pause v{} (pause.c compatible)",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Ok(Mode::Pause { spawn_for_test }) => pause(spawn_for_test),
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Blocks until SIGINT or SIGTERM, reaping children on every SIGCHLD.
fn pause(spawn_for_test: u32) -> ExitCode {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    // Block before anything else so no SIGTERM or SIGCHLD can be lost between
    // start-up and the first wait: pending blocked signals stay queued.
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        eprintln!("Error: blocking SIGINT/SIGTERM/SIGCHLD: {e}");
        return ExitCode::from(1);
    }
    if getpid() != Pid::from_raw(1) {
        eprintln!("Warning: pause should be the first process");
    }
    if spawn_for_test > 0 {
        spawn_unwaited(spawn_for_test);
    }
    loop {
        reap_all();
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig @ (Signal::SIGINT | Signal::SIGTERM)) => {
                eprintln!("Shutting down, got signal: {}", sig.as_str());
                return ExitCode::SUCCESS;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("Error: sigwait: {e}");
                // pause.c's code when its infinite loop ends.
                return ExitCode::from(42);
            }
        }
    }
}

/// Collects every child that has exited, without blocking. Several exits can
/// coalesce into one SIGCHLD, so this loops until none is left.
fn reap_all() {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            // ECHILD: no children at all.
            Err(_) => return,
        }
    }
}

/// Test hook: starts `n` copies of this program with `-v` (they exit at once)
/// and drops their handles, so only `reap_all` can collect them. Prints
/// `spawned <pid>` per child on stdout for the test to watch.
fn spawn_unwaited(n: u32) {
    let mut out = std::io::stdout().lock();
    for _ in 0..n {
        match Command::new("/proc/self/exe")
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(child) => {
                let _ = writeln!(out, "spawned {}", child.id());
            }
            Err(e) => eprintln!("Error: spawning a test child: {e}"),
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_like_pause_c() {
        assert_eq!(parse(&os(&["-v"])), Ok(Mode::Version));
        assert_eq!(parse(&os(&[])), Ok(Mode::Pause { spawn_for_test: 0 }));
        assert_eq!(
            parse(&os(&["-v", "x"])),
            Ok(Mode::Pause { spawn_for_test: 0 })
        );
        assert_eq!(
            parse(&os(&["--whatever"])),
            Ok(Mode::Pause { spawn_for_test: 0 })
        );
        assert_eq!(
            parse(&os(&["--cairn-test-spawn", "3"])),
            Ok(Mode::Pause { spawn_for_test: 3 })
        );
        assert!(parse(&os(&["--cairn-test-spawn", "x"])).is_err());
    }
}
