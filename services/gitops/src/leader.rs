//! One active reconciler per cluster: an etcd election on a lease. The leader
//! keeps its lease alive; when it dies (or loses etcd for longer than the lease
//! time) the key goes with the lease and the next candidate is elected.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::sync::oneshot;

/// The election's key prefix in etcd, per instance.
pub fn election(name: &str) -> String {
    format!("/cairn/gitops/{name}/leader")
}

/// Where etcd is and the client certificate to reach it with.
#[derive(Debug, Clone)]
pub struct EtcdAccess {
    pub endpoint: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("etcd at {endpoint}: {what}: {message}")]
pub struct LeaderError {
    endpoint: String,
    what: &'static str,
    message: String,
}

/// Held while this process leads; [`Leadership::lost`] resolves when it no longer does.
pub struct Leadership {
    lost: oneshot::Receiver<String>,
}

impl Leadership {
    /// Resolves with the reason once leadership is lost.
    pub async fn lost(&mut self) -> String {
        (&mut self.lost)
            .await
            .unwrap_or_else(|_| "lease keeper stopped".into())
    }
}

async fn connect(access: &EtcdAccess) -> Result<Client, LeaderError> {
    let err = |what, message: String| LeaderError {
        endpoint: access.endpoint.clone(),
        what,
        message,
    };
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| err("reading credentials", format!("{}: {e}", p.display())))
    };
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&access.ca)?))
        .identity(Identity::from_pem(read(&access.cert)?, read(&access.key)?));
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_tls(tls);
    Client::connect([access.endpoint.as_str()], Some(options))
        .await
        .map_err(|e| err("connecting", e.to_string()))
}

/// Blocks until this process (`identity`) is elected, on a lease of `ttl`.
pub async fn campaign(
    access: &EtcdAccess,
    name: &str,
    identity: &str,
    ttl: Duration,
) -> Result<Leadership, LeaderError> {
    let err = |what, e: etcd_client::Error| LeaderError {
        endpoint: access.endpoint.clone(),
        what,
        message: e.to_string(),
    };
    let mut client = connect(access).await?;
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| err("granting the lease", e))?
        .id();
    let (mut keeper, mut responses) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| err("keeping the lease alive", e))?;
    let (tx, rx) = oneshot::channel();
    // Renew at a third of the TTL; a missed renewal or an expired lease ends leadership.
    tokio::spawn(async move {
        let period = Duration::from_secs((ttl_secs as u64 / 3).max(1));
        let reason = loop {
            tokio::time::sleep(period).await;
            if let Err(e) = keeper.keep_alive().await {
                break format!("renewing the lease: {e}");
            }
            match tokio::time::timeout(period, responses.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => break "the lease expired".to_string(),
                Ok(Ok(None)) => break "etcd closed the keep-alive stream".to_string(),
                Ok(Err(e)) => break format!("renewing the lease: {e}"),
                Err(_) => break "etcd did not answer a lease renewal in time".to_string(),
            }
        };
        let _ = tx.send(reason);
    });
    tracing::info!(
        service = "gitops",
        identity,
        lease,
        "campaigning for leadership"
    );
    client
        .campaign(election(name), identity, lease)
        .await
        .map_err(|e| err("campaigning", e))?;
    tracing::info!(service = "gitops", identity, "elected leader");
    Ok(Leadership { lost: rx })
}
