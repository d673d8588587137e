//! The single owner of `waitpid`: reaps every child (services, probes, orphans).

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::signal::unix::{SignalKind, signal};

use crate::event::ExitStatusKind;
use crate::process::spawn_lock;
use crate::supervisor::Supervisor;

/// Reaps every exited child without blocking and reports each to the supervisor.
/// Returns how many were reaped.
///
/// This is the only place in the process that may call `waitpid`: anything else that
/// waits for children (tokio::process, `std::process::Child::wait`) races with it.
pub fn reap_all(supervisor: &Supervisor) -> usize {
    let _guard = spawn_lock();
    let mut reaped = 0;
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatusKind::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatusKind::Signal(sig as i32)),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                break;
            }
        };
        reaped += 1;
        supervisor.child_exited(pid.as_raw(), status);
    }
    reaped
}

/// Starts the reaper task on the current tokio runtime: one sweep right away (so an
/// exit that happened before the handler was installed is not lost), then one sweep
/// per SIGCHLD. In PID 1 it also reaps orphans that are not services.
///
/// Must be called from within a tokio runtime. If the SIGCHLD handler cannot be
/// installed the task falls back to sweeping every 100 ms. Returns the task's
/// handle; the task runs for as long as SIGCHLD can be received.
pub fn spawn_reaper(supervisor: Supervisor) -> tokio::task::JoinHandle<()> {
    // Installed before the first sweep, so no SIGCHLD can fall in between.
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGCHLD; polling for exited children");
            None
        }
    };
    tokio::spawn(async move {
        loop {
            reap_all(&supervisor);
            match sigchld.as_mut() {
                Some(s) => {
                    if s.recv().await.is_none() {
                        break;
                    }
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
}
