//! Orderly shutdown: services stopped in reverse dependency order by the supervisor,
//! every remaining process terminated, filesystems synced and unmounted (or made
//! read-only when busy), then reboot(2) to restart or power off.

use std::time::{Duration, Instant};

use cairn_supervisor::Supervisor;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reboot,
    Poweroff,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::Poweroff => "poweroff",
        }
    }
}

/// Persistent mounts, innermost first.
const UNMOUNT: &[&str] = &["/var", "/state"];

pub async fn run(action: Action, supervisor: &Supervisor) -> ! {
    let start = Instant::now();
    tracing::info!(
        event = "shutdown_start",
        action = action.name(),
        "orderly shutdown"
    );
    supervisor.shutdown().await;
    tracing::info!(
        event = "services_stopped",
        elapsed_ms = start.elapsed().as_millis() as u64,
        "all services stopped"
    );

    // Anything not supervised (strays, orphans): TERM, a grace period, then KILL.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline && others_alive() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(100)).await;

    nix::unistd::sync();
    for m in UNMOUNT {
        if !crate::fsutil::is_mountpoint(m) {
            continue;
        }
        match umount2(*m, MntFlags::empty()) {
            Ok(()) => tracing::info!(event = "unmounted", path = m, "unmounted"),
            Err(e) => {
                let ro = mount(
                    None::<&str>,
                    *m,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                tracing::warn!(event = "unmount_failed", path = m, error = ?e.to_string(), remounted_ro = ro.is_ok(), "could not unmount");
            }
        }
    }
    nix::unistd::sync();
    tracing::info!(
        event = "shutdown_done",
        action = action.name(),
        elapsed_ms = start.elapsed().as_millis() as u64,
        "goodbye"
    );
    let mode = match action {
        Action::Reboot => RebootMode::RB_AUTOBOOT,
        Action::Poweroff => RebootMode::RB_POWER_OFF,
    };
    let err = reboot(mode).unwrap_err();
    crate::fatal::halt(&format!("reboot(2) for {} failed: {err}", action.name()))
}

/// Whether any process other than PID 1 (and kernel threads) still exists.
fn others_alive() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        // Kernel threads have an empty cmdline.
        pid != 1
            && std::fs::read(e.path().join("cmdline"))
                .map(|c| !c.is_empty())
                .unwrap_or(false)
    })
}
