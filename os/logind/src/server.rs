//! The listener: binding the socket, accepting connections, serving each one as a
//! peer-to-peer zbus connection, and sending signals to every live connection.

use std::collections::BTreeMap;
use std::fs;
use std::future::poll_fn;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, error, warn};
use zbus::export::futures_core::Stream;
use zbus::{Connection, Message, MessageStream, OwnedGuid};

use crate::bus::Bus;
use crate::inhibitors::Inhibitors;
use crate::manager::Manager;
use crate::{Config, Error};

/// The well-known name and object kubelet talks to.
pub(crate) const LOGIND_NAME: &str = "org.freedesktop.login1";
pub(crate) const LOGIND_PATH: &str = "/org/freedesktop/login1";
pub(crate) const MANAGER_INTERFACE: &str = "org.freedesktop.login1.Manager";
/// The unique name that owns `org.freedesktop.login1`: the sender of our signals.
pub(crate) const LOGIND_UNIQUE_NAME: &str = ":1.0";
/// The bus driver.
pub(crate) const BUS_NAME: &str = "org.freedesktop.DBus";
pub(crate) const BUS_PATH: &str = "/org/freedesktop/DBus";

/// Connections served at once; more are closed right after accept.
const MAX_PEERS: usize = 64;
/// A client must finish the SASL handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a signal may take to reach a peer before we stop waiting for it.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of fds) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// One accepted connection, as the bus and logind objects see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) id: u64,
    pub(crate) uid: u32,
    pub(crate) pid: u32,
}

impl Peer {
    /// The unique name `Hello` hands out.
    pub(crate) fn unique_name(&self) -> String {
        format!(":1.{}", self.id)
    }
}

/// State shared by the accept loop, every connection and the [`crate::Logind`] handle.
pub(crate) struct Shared {
    pub(crate) socket: PathBuf,
    pub(crate) inhibit_delay_max: Duration,
    pub(crate) guid: OwnedGuid,
    pub(crate) inhibitors: Arc<Inhibitors>,
    peers: Mutex<BTreeMap<u64, Connection>>,
    next_peer: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: &Config) -> Self {
        Shared {
            socket: config.socket.clone(),
            inhibit_delay_max: config.inhibit_delay_max,
            guid: zbus::Guid::generate().into(),
            inhibitors: Arc::new(Inhibitors::default()),
            peers: Mutex::new(BTreeMap::new()),
            // :1.0 is logind itself.
            next_peer: AtomicU64::new(1),
        }
    }

    fn peers(&self) -> MutexGuard<'_, BTreeMap<u64, Connection>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `PrepareForShutdown(start)` to every connection; returns how many took it
    /// within [`SEND_TIMEOUT`] (and before `deadline`).
    pub(crate) async fn emit_prepare_for_shutdown(
        &self,
        start: bool,
        deadline: Option<Instant>,
    ) -> usize {
        let msg = match prepare_for_shutdown_signal(start) {
            Ok(msg) => msg,
            Err(e) => {
                error!(service = "logind", error = %e, "building PrepareForShutdown failed");
                return 0;
            }
        };
        let peers: Vec<(u64, Connection)> = self
            .peers()
            .iter()
            .map(|(id, conn)| (*id, conn.clone()))
            .collect();
        let mut sends = JoinSet::new();
        for (id, conn) in peers {
            let msg = msg.clone();
            sends.spawn(async move { (id, conn.send(&msg).await) });
        }
        let send_deadline = Instant::now() + SEND_TIMEOUT;
        let send_deadline = deadline.map_or(send_deadline, |d| d.min(send_deadline));
        let mut reached = 0;
        loop {
            match timeout_at(send_deadline, sends.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok((_, Ok(()))))) => reached += 1,
                Ok(Some(Ok((id, Err(e))))) => warn!(
                    service = "logind",
                    peer = %format_args!(":1.{id}"),
                    error = %e,
                    "sending PrepareForShutdown failed"
                ),
                Ok(Some(Err(e))) => {
                    warn!(service = "logind", error = %e, "a PrepareForShutdown send task failed");
                }
                Err(_) => {
                    warn!(
                        service = "logind",
                        pending = sends.len(),
                        "peers did not take PrepareForShutdown in time; not waiting for them"
                    );
                    // Aborting a half-written message would corrupt those connections;
                    // the sends end when the peer reads or goes away.
                    sends.detach_all();
                    break;
                }
            }
        }
        reached
    }
}

/// `PrepareForShutdown(start)` as logind sends it: from logind's unique name, so bus
/// clients that resolved `org.freedesktop.login1` with `GetNameOwner` accept it.
fn prepare_for_shutdown_signal(start: bool) -> zbus::Result<Message> {
    Message::signal(LOGIND_PATH, MANAGER_INTERFACE, "PrepareForShutdown")?
        .sender(LOGIND_UNIQUE_NAME)?
        .build(&start)
}

/// Binds the listening socket: creates its directory, removes a stale socket (but
/// nothing else), and leaves it accessible to root only.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(|source| Error::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::RemoveStale {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let bind_error = |source| Error::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    UnixListener::from_std(listener).map_err(bind_error)
}

/// Accepts connections until the runtime shuts down, each served on its own task.
pub(crate) async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_PEERS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(service = "logind", error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(
                service = "logind",
                max = MAX_PEERS,
                "too many connections; closing the new one"
            );
            continue;
        };
        tokio::spawn(serve_peer(shared.clone(), stream, permit));
    }
}

/// Authenticates one client, serves the bus and logind objects to it until it goes
/// away, and keeps it in the list of signal receivers meanwhile.
async fn serve_peer(shared: Arc<Shared>, stream: UnixStream, _slot: OwnedSemaphorePermit) {
    let cred = stream.peer_cred().ok();
    let peer = Peer {
        id: shared.next_peer.fetch_add(1, Ordering::Relaxed),
        uid: cred.map_or(u32::MAX, |c| c.uid()),
        pid: cred
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
    };
    let name = peer.unique_name();
    let conn = match timeout(HANDSHAKE_TIMEOUT, connect(stream, &shared, peer)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // Debug, not Display: a handshake error can quote the client's bytes.
            warn!(service = "logind", peer = %name, pid = peer.pid, error = ?e, "connection setup failed");
            return;
        }
        Err(_) => {
            warn!(service = "logind", peer = %name, pid = peer.pid, "client did not finish the handshake in time");
            return;
        }
    };
    debug!(service = "logind", peer = %name, uid = peer.uid, pid = peer.pid, "client connected");
    shared.peers().insert(peer.id, conn.clone());
    wait_closed(&conn).await;
    shared.peers().remove(&peer.id);
    debug!(service = "logind", peer = %name, "client disconnected");
}

/// The server side of the SASL handshake (EXTERNAL, with unix-fd negotiation) and the
/// two objects.
async fn connect(stream: UnixStream, shared: &Shared, peer: Peer) -> zbus::Result<Connection> {
    let bus = Bus::new(peer, shared.guid.to_string());
    let manager = Manager::new(peer, shared.inhibit_delay_max, shared.inhibitors.clone());
    zbus::connection::Builder::unix_stream(stream)
        .server(shared.guid.clone())?
        .p2p()
        .serve_at(BUS_PATH, bus)?
        .serve_at(LOGIND_PATH, manager)?
        .build()
        .await
}

/// Returns once the connection's socket is closed or broken. The object server reads
/// method calls on its own stream; this one only notices the end.
async fn wait_closed(conn: &Connection) {
    let mut messages = MessageStream::from(conn);
    loop {
        match poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                debug!(service = "logind", error = %e, "connection ended");
                return;
            }
            None => return,
        }
    }
}
