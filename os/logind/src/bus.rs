//! `org.freedesktop.DBus` at `/org/freedesktop/DBus`: the bits of the bus driver a bus
//! client (godbus, zbus) calls before talking to logind.
//!
//! There is no routing behind it: each connection only ever sees the logind object,
//! so match rules are accepted and ignored and the only names are the driver's,
//! logind's and the caller's own.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, trace};
use zbus::{fdo, interface};

use crate::server::{BUS_NAME, LOGIND_NAME, LOGIND_UNIQUE_NAME, Peer};

/// The driver as one connection sees it.
pub(crate) struct Bus {
    peer: Peer,
    unique_name: String,
    guid: String,
    said_hello: AtomicBool,
}

impl Bus {
    pub(crate) fn new(peer: Peer, guid: String) -> Self {
        Bus {
            peer,
            unique_name: peer.unique_name(),
            guid,
            said_hello: AtomicBool::new(false),
        }
    }

    /// Who owns `name`, if anyone.
    fn owner(&self, name: &str) -> Option<&str> {
        match name {
            BUS_NAME => Some(BUS_NAME),
            LOGIND_NAME | LOGIND_UNIQUE_NAME => Some(LOGIND_UNIQUE_NAME),
            own if own == self.unique_name => Some(&self.unique_name),
            _ => None,
        }
    }
}

#[interface(name = "org.freedesktop.DBus")]
impl Bus {
    /// Hands the client its unique name; once per connection, like dbus-daemon.
    fn hello(&self) -> fdo::Result<String> {
        if self.said_hello.swap(true, Ordering::Relaxed) {
            return Err(fdo::Error::Failed(
                "Already handled an Hello message".into(),
            ));
        }
        debug!(
            service = "logind",
            peer = %self.unique_name,
            pid = self.peer.pid,
            "Hello"
        );
        Ok(self.unique_name.clone())
    }

    /// Accepted and ignored: every signal goes to every connection anyway.
    fn add_match(&self, rule: String) {
        trace!(service = "logind", peer = %self.unique_name, rule = ?rule, "AddMatch");
    }

    /// Accepted and ignored, like [`Self::add_match`].
    fn remove_match(&self, rule: String) {
        trace!(service = "logind", peer = %self.unique_name, rule = ?rule, "RemoveMatch");
    }

    fn get_name_owner(&self, name: String) -> fdo::Result<String> {
        self.owner(&name).map(str::to_string).ok_or_else(|| {
            fdo::Error::NameHasNoOwner(format!(
                "Could not get owner of name '{name}': no such name"
            ))
        })
    }

    fn name_has_owner(&self, name: String) -> bool {
        self.owner(&name).is_some()
    }

    fn list_names(&self) -> Vec<String> {
        [BUS_NAME, LOGIND_NAME, LOGIND_UNIQUE_NAME, &self.unique_name]
            .map(str::to_string)
            .to_vec()
    }

    /// The bus GUID, the one the SASL handshake announced.
    fn get_id(&self) -> String {
        self.guid.clone()
    }
}
