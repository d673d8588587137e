//! `org.freedesktop.login1.Manager` at `/org/freedesktop/login1`: the part of logind
//! kubelet's node shutdown manager uses (`InhibitDelayMaxUSec`, `Inhibit`, the signal
//! `PrepareForShutdown`), plus `ListInhibitors` for people debugging a node.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;
use zbus::zvariant::OwnedFd;
use zbus::{fdo, interface};

use crate::inhibitors::{Inhibitor, Inhibitors, TakeError};
use crate::server::Peer;

/// The lock kinds logind knows; anything else is refused as logind does.
const WHATS: &[&str] = &[
    "shutdown",
    "sleep",
    "idle",
    "handle-power-key",
    "handle-suspend-key",
    "handle-hibernate-key",
    "handle-lid-switch",
    "handle-reboot-key",
];
const MODES: &[&str] = &["block", "delay", "block-weak"];
/// Longest `who`/`why` kept, in bytes.
const MAX_TEXT: usize = 256;

/// The manager as one connection sees it.
pub(crate) struct Manager {
    peer: Peer,
    inhibit_delay_max: Duration,
    inhibitors: Arc<Inhibitors>,
}

impl Manager {
    pub(crate) fn new(
        peer: Peer,
        inhibit_delay_max: Duration,
        inhibitors: Arc<Inhibitors>,
    ) -> Self {
        Manager {
            peer,
            inhibit_delay_max,
            inhibitors,
        }
    }
}

#[interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    /// The longest a delay lock may hold up shutdown, in microseconds.
    #[zbus(property(emits_changed_signal = "const"), name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> u64 {
        u64::try_from(self.inhibit_delay_max.as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes a lock; the returned fd holds it until the client closes it.
    fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
    ) -> fdo::Result<OwnedFd> {
        check_inhibit(&what, &mode)?;
        let inhibitor = Inhibitor {
            what,
            who: clip(who),
            why: clip(why),
            mode,
            uid: self.peer.uid,
            pid: self.peer.pid,
        };
        match self.inhibitors.take(inhibitor) {
            Ok(fd) => Ok(fd.into()),
            Err(e) => {
                warn!(service = "logind", peer = %self.peer.unique_name(), error = %e, "Inhibit refused");
                Err(match e {
                    TakeError::TooMany => fdo::Error::LimitsExceeded(e.to_string()),
                    TakeError::Pipe(_) | TakeError::NoRuntime => fdo::Error::Failed(e.to_string()),
                })
            }
        }
    }

    /// Every held lock as (what, who, why, mode, uid, pid).
    fn list_inhibitors(&self) -> Vec<(String, String, String, String, u32, u32)> {
        self.inhibitors
            .list()
            .into_iter()
            .map(|i| (i.what, i.who, i.why, i.mode, i.uid, i.pid))
            .collect()
    }

    /// Sent by `Logind::prepare_for_shutdown` (built by hand there, to carry logind's
    /// unique name as sender); declared here so introspection shows it.
    #[zbus(signal)]
    async fn prepare_for_shutdown(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        start: bool,
    ) -> zbus::Result<()>;
}

/// Refuses what logind refuses: unknown lock kinds or modes, and delay locks on
/// anything but shutdown and sleep.
fn check_inhibit(what: &str, mode: &str) -> fdo::Result<()> {
    if what.is_empty() || what.split(':').any(|w| !WHATS.contains(&w)) {
        return Err(fdo::Error::InvalidArgs(format!(
            "Invalid what specification {what:?}"
        )));
    }
    if !MODES.contains(&mode) {
        return Err(fdo::Error::InvalidArgs(format!("Unknown mode {mode:?}")));
    }
    if mode == "delay" && what.split(':').any(|w| w != "shutdown" && w != "sleep") {
        return Err(fdo::Error::InvalidArgs(
            "Delay inhibitors only supported for shutdown and sleep".into(),
        ));
    }
    Ok(())
}

/// Keeps at most [`MAX_TEXT`] bytes of a client-supplied text, cut at a char boundary.
fn clip(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_request_is_accepted() {
        assert!(check_inhibit("shutdown", "delay").is_ok());
        assert!(check_inhibit("sleep:shutdown", "delay").is_ok());
        assert!(check_inhibit("idle", "block").is_ok());
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(check_inhibit("", "delay").is_err());
        assert!(check_inhibit("shutdown:reboot", "delay").is_err());
        assert!(check_inhibit("shutdown", "forever").is_err());
        assert!(check_inhibit("idle", "delay").is_err());
    }

    #[test]
    fn clip_cuts_at_a_char_boundary() {
        assert_eq!(clip("kubelet".into()), "kubelet");
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(long);
        assert!(clipped.len() <= MAX_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
