//! The listener: TCP, then a TLS 1.3 handshake that requires a client
//! certificate from the machine API's CA, then gRPC (HTTP/2) on the connection.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::proto::machine_server::MachineServer;
use cairn_pki::paths;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::Config;
use crate::machine::MachineApi;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 64;
/// After the shutdown signal, open calls (log streams) get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the machine API's TLS settings: {0}")]
    Tls(cairn_api::TlsError),
    #[error("listening on {addr}: {error}")]
    Bind {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    /// tonic's error says little itself; what went wrong is in its source.
    #[error("the gRPC server failed")]
    Server(#[source] tonic::transport::Error),
}

/// The server's TLS settings from the secrets bundle: `pki/os/server.{crt,key}`,
/// clients verified against `pki/os/ca.crt`.
pub fn tls_acceptor(secrets: &Path) -> Result<TlsAcceptor, ServeError> {
    let read = |rel: &str| {
        let path = secrets.join(rel);
        std::fs::read(&path).map_err(|error| ServeError::Read { path, error })
    };
    let config = cairn_api::server_config(
        &read(paths::OS_SERVER.crt)?,
        &read(paths::OS_SERVER.key)?,
        &read(paths::OS_CA.crt)?,
    )
    .map_err(ServeError::Tls)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds `config.listen` and [`serve`]s it.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| ServeError::Bind {
            addr: config.listen,
            error,
        })?;
    serve(config, listener, shutdown).await
}

/// Serves the machine API on `listener` (`config.listen` is not used) until
/// `shutdown` completes; calls still open then get a few seconds to finish.
/// Fails at once when the TLS settings cannot be read.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let acceptor = tls_acceptor(&config.secrets_dir)?;
    let local = listener.local_addr().ok();
    tracing::info!(
        service = "apid",
        event = "listening",
        addr = %local.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        "machine API listening (TLS 1.3, client certificates required)"
    );
    let (conns_tx, conns_rx) =
        mpsc::channel::<Result<TlsStream<TcpStream>, std::io::Error>>(MAX_HANDSHAKES);
    let accepting = tokio::spawn(accept(listener, acceptor, conns_tx));

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        // Notices clients that vanished (a follow stream otherwise waits forever).
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(MachineServer::new(MachineApi::new(config)))
        .serve_with_incoming_shutdown(ReceiverStream::new(conns_rx), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result.map_err(ServeError::Server),
        () = shutdown => {
            tracing::info!(service = "apid", event = "stopping", "machine API stopping");
            accepting.abort();
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result.map_err(ServeError::Server),
                Err(_) => {
                    tracing::warn!(service = "apid", event = "stopped", "calls still open after {} s were cut", SHUTDOWN_GRACE.as_secs());
                    Ok(())
                }
            }
        }
    };
    accepting.abort();
    result
}

/// Accepts connections and completes their handshakes concurrently; each
/// established connection goes to the gRPC server, each failure is logged with
/// the peer and the reason and dropped.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(service = "apid", error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, conns) = (acceptor.clone(), conns.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = async {
                // A connection closed before its first byte is a TCP probe (the
                // supervisor's readiness check), not a failed handshake.
                if tcp.peek(&mut [0u8; 1]).await? == 0 {
                    return Ok(None);
                }
                acceptor.accept(tcp).await.map(Some)
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(Some(tls))) => {
                    let _ = conns.send(Ok(tls)).await;
                }
                Ok(Ok(None)) => {
                    tracing::debug!(service = "apid", %peer, "connection closed before the TLS handshake");
                }
                Ok(Err(e)) => {
                    tracing::warn!(service = "apid", event = "handshake_refused", %peer, reason = %e, "TLS handshake failed; connection dropped");
                }
                Err(_) => {
                    tracing::warn!(service = "apid", event = "handshake_refused", %peer, reason = "timed out", "no TLS handshake within {} s; connection dropped", HANDSHAKE_TIMEOUT.as_secs());
                }
            }
        });
    }
}
