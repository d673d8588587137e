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

/// The longest the init waits for kubelet to drain pods (its shutdownGracePeriod is
/// 30 s; the shim promises 40).
const DRAIN_MAX: Duration = Duration::from_secs(40);

pub async fn run(
    action: Action,
    supervisor: &Supervisor,
    logind: Option<&cairn_logind::Logind>,
) -> ! {
    let start = Instant::now();
    tracing::info!(
        event = "shutdown_start",
        action = action.name(),
        "orderly shutdown"
    );
    // First kubelet stops the pods gracefully (preStop hooks, SIGTERM, grace
    // periods): it holds a delay lock until it is done.
    if let Some(logind) = logind.filter(|l| l.delay_locks() > 0) {
        let outcome = logind.prepare_for_shutdown(DRAIN_MAX).await;
        tracing::info!(
            event = "pods_drained",
            released = outcome.released_all,
            waited_ms = outcome.waited.as_millis() as u64,
            locks_left = outcome.locks_left,
            "kubelet's shutdown lock released"
        );
    }
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
    // Container rootfs overlays, pod volumes and the like first, deepest first.
    for m in UNMOUNT {
        for sub in mounts_below(m) {
            if let Err(e) = umount2(sub.as_str(), MntFlags::MNT_DETACH) {
                tracing::debug!(path = %sub, error = ?e.to_string(), "could not unmount");
            }
        }
    }
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

/// Mount points strictly below `dir`, deepest first (from /proc/self/mountinfo,
/// whose field 5 is the mount point with spaces escaped as `\040`).
fn mounts_below(dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    out.dedup();
    out
}
