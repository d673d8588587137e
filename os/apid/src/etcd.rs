//! etcd's members, status, defragmentation and snapshots, over TLS with the API
//! server's etcd client certificate (verified against the etcd CA).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_api::proto::{DataChunk, EtcdMember, EtcdMembersReply, EtcdStatusReply};
use cairn_pki::paths;
use tokio::sync::mpsc;
use tonic::{Code, Status};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For unary calls; a defragmentation of a large database takes a while.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where etcd is and how to reach it.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoint: String,
    secrets: PathBuf,
}

impl Etcd {
    pub fn new(endpoint: &str, secrets: &Path) -> Etcd {
        Etcd {
            endpoint: endpoint.to_owned(),
            secrets: secrets.to_path_buf(),
        }
    }

    async fn client(&self, timeout: Option<Duration>) -> Result<etcd_client::Client, Status> {
        let read = |rel: &'static str| {
            let path = self.secrets.join(rel);
            async move {
                tokio::fs::read(&path).await.map_err(|e| {
                    Status::failed_precondition(format!(
                        "etcd client credentials: reading {}: {e}",
                        path.display()
                    ))
                })
            }
        };
        let ca = read(paths::ETCD_CA.crt).await?;
        let cert = read(paths::APISERVER_ETCD_CLIENT.crt).await?;
        let key = read(paths::APISERVER_ETCD_CLIENT.key).await?;
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca))
            .identity(etcd_client::Identity::from_pem(cert, key));
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_tls(tls);
        if let Some(t) = timeout {
            options = options.with_timeout(t);
        }
        etcd_client::Client::connect([self.endpoint.as_str()], Some(options))
            .await
            .map_err(|e| self.status("connecting", e))
    }

    /// An etcd error as the caller's status: unreachable → `Unavailable`, naming
    /// the endpoint.
    fn status(&self, what: &str, e: etcd_client::Error) -> Status {
        use etcd_client::Error;
        let endpoint = &self.endpoint;
        match e {
            Error::GRpcStatus(s) => {
                let code = match s.code() {
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Unknown => Code::Unavailable,
                    other => other,
                };
                Status::new(code, format!("etcd at {endpoint}: {what}: {}", s.message()))
            }
            e @ (Error::TransportError(_) | Error::IoError(_) | Error::EndpointError(_)) => {
                Status::unavailable(format!("etcd at {endpoint}: {what}: {e}"))
            }
            e => Status::internal(format!("etcd at {endpoint}: {what}: {e}")),
        }
    }

    pub async fn members(&self) -> Result<EtcdMembersReply, Status> {
        let mut client = self.client(Some(CALL_TIMEOUT)).await?;
        let reply = client
            .member_list()
            .await
            .map_err(|e| self.status("listing members", e))?;
        Ok(EtcdMembersReply {
            members: reply
                .members()
                .iter()
                .map(|m| EtcdMember {
                    id: m.id(),
                    name: m.name().to_owned(),
                    peer_urls: m.peer_urls().to_vec(),
                    client_urls: m.client_urls().to_vec(),
                    is_learner: m.is_learner(),
                })
                .collect(),
        })
    }

    pub async fn status_reply(&self) -> Result<EtcdStatusReply, Status> {
        let mut client = self.client(Some(CALL_TIMEOUT)).await?;
        let s = client
            .status()
            .await
            .map_err(|e| self.status("reading the status", e))?;
        Ok(EtcdStatusReply {
            member_id: s.header().map_or(0, |h| h.member_id()),
            version: s.version().to_owned(),
            db_size: s.db_size(),
            db_size_in_use: s.raft_used_db_size(),
            leader: s.leader(),
            raft_index: s.raft_index(),
            raft_term: s.raft_term(),
            errors: s.errors().to_vec(),
        })
    }

    pub async fn defragment(&self) -> Result<(), Status> {
        let mut client = self.client(Some(CALL_TIMEOUT)).await?;
        client
            .defragment()
            .await
            .map_err(|e| self.status("defragmenting", e))?;
        Ok(())
    }

    /// Starts a snapshot (so that an unreachable etcd is the call's error) and
    /// returns a task that streams it into `tx` until it ends or the receiver is
    /// gone.
    pub async fn snapshot(
        &self,
        tx: mpsc::Sender<Result<DataChunk, Status>>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, Status> {
        // No call timeout: the stream lasts as long as the database takes to send.
        let mut client = self.client(None).await?;
        let mut stream = client
            .snapshot()
            .await
            .map_err(|e| self.status("starting a snapshot", e))?;
        let this = self.clone();
        Ok(async move {
            // The client owns the connection the stream runs on.
            let _client = client;
            loop {
                let message = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                match message {
                    Ok(Some(m)) => {
                        if m.blob().is_empty() {
                            continue;
                        }
                        let chunk = DataChunk {
                            data: m.blob().to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(this.status("streaming a snapshot", e))).await;
                        return;
                    }
                }
            }
        })
    }
}
