//! The end of every unrecoverable boot error: show the reason on the console, keep
//! reaping children, and reboot after a countdown — or hold forever when
//! `cairn.hold` is on the kernel command line or `machine.debug.holdOnFatal` is set.
//! PID 1 never exits: this function does not return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};

static HOLD: AtomicBool = AtomicBool::new(false);
const COUNTDOWN_SECS: u64 = 10;

/// Asks fatal errors to hold instead of rebooting.
pub fn set_hold(hold: bool) {
    if hold {
        HOLD.store(true, Ordering::SeqCst);
    }
}

pub fn halt(reason: &str) -> ! {
    let hold = HOLD.load(Ordering::SeqCst) || crate::cmdline::Cmdline::read().flag("cairn.hold");
    for line in reason.lines() {
        tracing::error!(event = "fatal", error = ?line, "boot failed");
    }
    tracing::error!(
        event = "fatal",
        "cairn cannot continue: {}",
        reason.lines().next().unwrap_or(reason)
    );
    if hold {
        tracing::error!(
            event = "holding",
            "holding (cairn.hold): the machine stays up so the error can be read"
        );
        loop {
            reap_and_sleep(Duration::from_secs(5));
        }
    }
    for left in (1..=COUNTDOWN_SECS).rev() {
        tracing::error!(event = "countdown", seconds = left, "rebooting in {left} s");
        reap_and_sleep(Duration::from_secs(1));
    }
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(event = "reboot_failed", error = ?err, "reboot(2) failed; holding");
    loop {
        reap_and_sleep(Duration::from_secs(5));
    }
}

/// PID 1 keeps reaping even while it waits to reboot.
fn reap_and_sleep(d: Duration) {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
    std::thread::sleep(d);
}
