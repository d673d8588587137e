//! Spawning children without ever waiting for them: the reaper owns `waitpid`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::net::unix::pipe;

/// Held while spawning and while reaping.
///
/// `std::process::Command::spawn` calls `waitpid` on the child itself when `exec` (or
/// `pre_exec`) fails; a concurrent `waitpid(-1)` could steal that status and make std
/// panic. Holding this lock around both makes them exclusive. It also lets a caller
/// register interest in a pid before the reaper can report its exit.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn spawn_lock() -> MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What to run.
pub(crate) struct Launch<'a> {
    pub(crate) command: &'a Path,
    pub(crate) args: &'a [String],
    pub(crate) env: &'a [(String, String)],
    pub(crate) working_dir: Option<&'a Path>,
    /// `<cgroup>/cgroup.procs` to join before `exec`.
    pub(crate) cgroup_procs: Option<CString>,
    /// Pipe stdout/stderr back (otherwise /dev/null).
    pub(crate) capture_output: bool,
}

/// A running child. Its exit is reported by the reaper, never waited for here.
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
}

/// Spawns the child in its own session and process group. The caller must hold
/// [`spawn_lock`].
pub(crate) fn spawn(launch: &Launch<'_>) -> io::Result<Spawned> {
    let mut cmd = Command::new(launch.command);
    cmd.args(launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if launch.capture_output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    if let Some(dir) = launch.working_dir {
        cmd.current_dir(dir);
    }
    let procs = launch.cgroup_procs.clone();
    // SAFETY: the closure runs in the forked child before exec; `child_setup` only makes
    // async-signal-safe libc calls and does not allocate (the C string was built before
    // the fork and is only borrowed).
    unsafe {
        cmd.pre_exec(move || child_setup(procs.as_deref()));
    }
    let mut child = cmd.spawn()?;
    let pid = i32::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid out of range"))?;
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    // Dropping a std Child neither waits nor kills; the reaper collects the exit.
    drop(child);
    let receivers = stdout
        .map(pipe::Receiver::from_owned_fd)
        .transpose()
        .and_then(|out| Ok((out, stderr.map(pipe::Receiver::from_owned_fd).transpose()?)));
    let (stdout, stderr) = match receivers {
        Ok(r) => r,
        Err(e) => {
            // The child is untracked if we fail here; do not leave it running.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
    };
    Ok(Spawned {
        pid,
        stdout,
        stderr,
    })
}

/// Runs in the child between fork and exec: new session, cgroup, clean signal state.
fn child_setup(cgroup_procs: Option<&CStr>) -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions; it is async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(path) = cgroup_procs {
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and the buffer is a static 1-byte slice.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let err = io::Error::last_os_error();
        // SAFETY: `fd` is owned here and closed exactly once.
        unsafe { libc::close(fd) };
        if written != 1 {
            return Err(err);
        }
    }
    // SAFETY: `sigset_t` is plain data; zeroed and then initialised by sigemptyset
    // before use. sigemptyset, sigprocmask and sigaction are async-signal-safe, and the
    // sigaction struct is fully initialised (SIG_DFL handler, empty mask, no flags).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // Errors (signals reserved by libc) are irrelevant here.
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    Ok(())
}
