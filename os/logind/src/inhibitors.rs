//! The inhibitor locks: who holds what, the pipe behind each lock, and the count of
//! "shutdown" delay locks that [`crate::Logind::prepare_for_shutdown`] waits on.
//!
//! Like logind, a lock is a pipe: the client gets the write end and we keep the read
//! end, which reports end-of-file once every copy of the write end is closed, whether
//! the client closed it on purpose, died, or never received it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tracing::{info, warn};

/// At most this many locks are held at once, so a looping client cannot use up our fds.
pub(crate) const MAX_INHIBITORS: usize = 128;

/// One lock, as `ListInhibitors` reports it.
#[derive(Debug, Clone)]
pub(crate) struct Inhibitor {
    /// Colon-separated, e.g. "shutdown" or "sleep:shutdown".
    pub(crate) what: String,
    pub(crate) who: String,
    pub(crate) why: String,
    /// "block", "delay" or "block-weak".
    pub(crate) mode: String,
    pub(crate) uid: u32,
    pub(crate) pid: u32,
}

impl Inhibitor {
    /// The kind of lock shutdown waits for.
    fn delays_shutdown(&self) -> bool {
        self.mode == "delay" && self.what.split(':').any(|w| w == "shutdown")
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TakeError {
    #[error("too many inhibitors (at most {MAX_INHIBITORS})")]
    TooMany,
    #[error("creating the inhibitor pipe")]
    Pipe(#[source] io::Error),
    #[error("no tokio runtime to watch the inhibitor pipe on")]
    NoRuntime,
}

/// Every lock currently held.
pub(crate) struct Inhibitors {
    held: Mutex<BTreeMap<u64, Inhibitor>>,
    next_id: AtomicU64,
    /// How many held locks delay shutdown.
    delay_locks: watch::Sender<usize>,
}

impl Default for Inhibitors {
    fn default() -> Self {
        Inhibitors {
            held: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            delay_locks: watch::Sender::new(0),
        }
    }
}

impl Inhibitors {
    fn held(&self) -> MutexGuard<'_, BTreeMap<u64, Inhibitor>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recounts the shutdown delay locks; called with `held` locked.
    fn publish(&self, held: &BTreeMap<u64, Inhibitor>) {
        let n = held.values().filter(|i| i.delays_shutdown()).count();
        self.delay_locks.send_replace(n);
    }

    /// Takes a lock and returns the fd that holds it: the lock lasts until every copy of
    /// that fd is closed.
    pub(crate) fn take(self: &Arc<Self>, inhibitor: Inhibitor) -> Result<OwnedFd, TakeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TakeError::NoRuntime)?;
        if self.held().len() >= MAX_INHIBITORS {
            return Err(TakeError::TooMany);
        }
        let (writer, reader) = pipe::pipe().map_err(TakeError::Pipe)?;
        // The client gets an ordinary blocking fd, as from logind.
        let fd = writer.into_blocking_fd().map_err(TakeError::Pipe)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        info!(
            service = "logind",
            inhibitor = id,
            what = ?inhibitor.what,
            who = ?inhibitor.who,
            why = ?inhibitor.why,
            mode = ?inhibitor.mode,
            pid = inhibitor.pid,
            "inhibitor taken"
        );
        {
            let mut held = self.held();
            held.insert(id, inhibitor);
            self.publish(&held);
        }
        runtime.spawn(watch_release(self.clone(), id, reader));
        Ok(fd)
    }

    fn release(&self, id: u64) {
        let mut held = self.held();
        if let Some(gone) = held.remove(&id) {
            self.publish(&held);
            // The details were logged when it was taken.
            info!(service = "logind", inhibitor = id, who = ?gone.who, "inhibitor released");
        }
    }

    /// The held locks, oldest first.
    pub(crate) fn list(&self) -> Vec<Inhibitor> {
        self.held().values().cloned().collect()
    }

    /// How many held locks delay shutdown.
    pub(crate) fn delay_locks(&self) -> usize {
        *self.delay_locks.borrow()
    }

    /// Waits until no lock delays shutdown; `false` if `deadline` came first.
    pub(crate) async fn wait_released(&self, deadline: Option<Instant>) -> bool {
        let mut count = self.delay_locks.subscribe();
        let released = count.wait_for(|n| *n == 0);
        match deadline {
            Some(deadline) => matches!(timeout_at(deadline, released).await, Ok(Ok(_))),
            None => released.await.is_ok(),
        }
    }
}

/// Waits for end-of-file on the lock's read end, then releases the lock.
async fn watch_release(inhibitors: Arc<Inhibitors>, id: u64, reader: pipe::Receiver) {
    let mut scratch = [0u8; 64];
    loop {
        if let Err(e) = reader.readable().await {
            warn!(service = "logind", inhibitor = id, error = %e, "watching an inhibitor pipe failed; releasing the lock");
            break;
        }
        match reader.try_read(&mut scratch) {
            // Every copy of the write end is closed.
            Ok(0) => break,
            // The client wrote into its lock fd: drain and ignore.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!(service = "logind", inhibitor = id, error = %e, "reading an inhibitor pipe failed; releasing the lock");
                break;
            }
        }
    }
    inhibitors.release(id);
}
