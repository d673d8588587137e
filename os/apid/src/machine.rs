//! The `Machine` gRPC service: every call is authorized against
//! [`auth::least_role`] first, logged with its caller and outcome, and handed to
//! the module of its area.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use cairn_api::Identity;
use cairn_api::proto::machine_server::Machine;
use cairn_api::proto::{
    ConfigApplyReply, ConfigApplyRequest, ConfigGetReply, DataChunk, DmesgRequest, Empty,
    EtcdMembersReply, EtcdStatusReply, GitOpsStatusReply, GitOpsSuspendRequest, HealthReply,
    KubeconfigReply, LogChunk, LogsRequest, ServiceKillRequest, ServiceListReply, ServiceRequest,
    VersionReply,
};
use cairn_control::PowerAction;
use cairn_pki::paths;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::auth::{self, Method};
use crate::config::{self, ConfigError};
use crate::dmesg::Dmesg;
use crate::etcd::Etcd;
use crate::{Config, node, services};

/// Chunks buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 16;

/// The service's state: where everything is.
#[derive(Debug, Clone)]
pub struct MachineApi {
    config: Arc<Config>,
    control: cairn_control::Client,
    etcd: Etcd,
}

impl MachineApi {
    pub fn new(config: Config) -> MachineApi {
        MachineApi {
            control: cairn_control::Client::new(&config.control_socket),
            etcd: Etcd::new(&config.etcd_endpoint, &config.secrets_dir),
            config: Arc::new(config),
        }
    }

    /// Authorizes, runs `handler` on the request's message, logs the outcome.
    /// A refused call does nothing.
    async fn call<T, R, Fut>(
        &self,
        method: Method,
        request: Request<T>,
        handler: impl FnOnce(T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, Status>>,
    {
        let peer = request.remote_addr();
        let identity = match auth::authorize(&request, method) {
            Ok(identity) => identity,
            Err((who, denied)) => {
                let status = Status::from(denied);
                log_call(peer, who.as_ref(), method, &status);
                return Err(status);
            }
        };
        let result = handler(request.into_inner()).await;
        match &result {
            Ok(_) => log_call(peer, Some(&identity), method, &Status::ok("")),
            Err(status) => log_call(peer, Some(&identity), method, status),
        }
        result.map(Response::new)
    }
}

/// One line per call: `service="apid"`, the caller's CN and role, the method and
/// the outcome code (and, on failure, the status message — which never carries
/// keys, kubeconfigs or config secrets).
fn log_call(peer: Option<SocketAddr>, who: Option<&Identity>, method: Method, status: &Status) {
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let caller = who.map_or("-", |i| i.name.as_str());
    let role = who.map_or("-", |i| i.role.organization());
    let code = status.code();
    if code == Code::Ok {
        tracing::info!(service = "apid", %peer, caller, role, method = method.name(), code = ?code, "call");
    } else {
        tracing::warn!(
            service = "apid",
            %peer,
            caller,
            role,
            method = method.name(),
            code = ?code,
            error = status.message(),
            "call"
        );
    }
}

fn config_status(e: ConfigError) -> Status {
    match e {
        ConfigError::Invalid(message) => Status::invalid_argument(message),
        e @ (ConfigError::Read { .. } | ConfigError::Write { .. }) => {
            Status::internal(e.to_string())
        }
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Machine for MachineApi {
    async fn version(&self, request: Request<Empty>) -> Result<Response<VersionReply>, Status> {
        self.call(Method::Version, request, |_| async move {
            Ok(node::version(&self.config))
        })
        .await
    }

    async fn health(&self, request: Request<Empty>) -> Result<Response<HealthReply>, Status> {
        self.call(Method::Health, request, |_| async move {
            Ok(node::health(&self.config, &self.control).await)
        })
        .await
    }

    async fn service_list(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<ServiceListReply>, Status> {
        self.call(Method::ServiceList, request, |_| async move {
            Ok(ServiceListReply {
                services: services::list(&self.control).await?,
            })
        })
        .await
    }

    async fn service_start(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.call(Method::ServiceStart, request, |r| async move {
            self.control
                .start(services::name(&r.name)?)
                .await
                .map_err(services::status)?;
            Ok(Empty {})
        })
        .await
    }

    async fn service_stop(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.call(Method::ServiceStop, request, |r| async move {
            self.control
                .stop(services::name(&r.name)?)
                .await
                .map_err(services::status)?;
            Ok(Empty {})
        })
        .await
    }

    async fn service_restart(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.call(Method::ServiceRestart, request, |r| async move {
            self.control
                .restart(services::name(&r.name)?)
                .await
                .map_err(services::status)?;
            Ok(Empty {})
        })
        .await
    }

    async fn service_kill(
        &self,
        request: Request<ServiceKillRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.call(Method::ServiceKill, request, |r| async move {
            let signal = if r.signal.is_empty() {
                "KILL"
            } else {
                r.signal.as_str()
            };
            self.control
                .signal(services::name(&r.name)?, signal)
                .await
                .map_err(services::status)?;
            Ok(Empty {})
        })
        .await
    }

    type LogsStream = Stream<LogChunk>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.call(Method::Logs, request, |r| async move {
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            let pump =
                services::logs(&self.control, &r.service, r.tail_lines, r.follow, tx).await?;
            tokio::spawn(pump);
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    type DmesgStream = Stream<LogChunk>;

    async fn dmesg(
        &self,
        request: Request<DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        self.call(Method::Dmesg, request, |r| async move {
            let kmsg =
                Dmesg::open(&self.config.kmsg).map_err(|e| Status::unavailable(e.to_string()))?;
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            tokio::spawn(kmsg.send(r.tail_lines as usize, r.follow, tx));
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn reboot(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.call(Method::Reboot, request, |_| async move {
            services::power(&self.control, PowerAction::Reboot).await?;
            Ok(Empty {})
        })
        .await
    }

    async fn shutdown(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.call(Method::Shutdown, request, |_| async move {
            services::power(&self.control, PowerAction::Poweroff).await?;
            Ok(Empty {})
        })
        .await
    }

    async fn kubeconfig(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<KubeconfigReply>, Status> {
        self.call(Method::Kubeconfig, request, |_| async move {
            let path = self.config.secrets_dir.join(paths::ADMIN_CONF);
            match tokio::fs::read(&path).await {
                Ok(kubeconfig) => Ok(KubeconfigReply { kubeconfig }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(Status::failed_precondition(format!(
                        "this node has no admin kubeconfig ({} is missing)",
                        path.display()
                    )))
                }
                Err(e) => Err(Status::internal(format!("reading {}: {e}", path.display()))),
            }
        })
        .await
    }

    async fn etcd_members(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<EtcdMembersReply>, Status> {
        self.call(Method::EtcdMembers, request, |_| self.etcd.members())
            .await
    }

    async fn etcd_status(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<EtcdStatusReply>, Status> {
        self.call(Method::EtcdStatus, request, |_| self.etcd.status_reply())
            .await
    }

    async fn etcd_defragment(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.call(Method::EtcdDefragment, request, |_| async move {
            self.etcd.defragment().await?;
            Ok(Empty {})
        })
        .await
    }

    type EtcdSnapshotStream = Stream<DataChunk>;

    async fn etcd_snapshot(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        self.call(Method::EtcdSnapshot, request, |_| async move {
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            let pump = self.etcd.snapshot(tx).await?;
            tokio::spawn(pump);
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn config_get(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<ConfigGetReply>, Status> {
        self.call(Method::ConfigGet, request, |_| async move {
            let path = self.config.machine_config.clone();
            let text = tokio::task::spawn_blocking(move || config::get(&path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(config_status)?;
            Ok(ConfigGetReply { config_yaml: text })
        })
        .await
    }

    async fn config_apply(
        &self,
        request: Request<ConfigApplyRequest>,
    ) -> Result<Response<ConfigApplyReply>, Status> {
        self.call(Method::ConfigApply, request, |r| async move {
            let path = self.config.machine_config.clone();
            let text = r.config_yaml;
            let dry_run = r.dry_run;
            let applied = tokio::task::spawn_blocking(move || config::apply(&path, &text, dry_run))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(config_status)?;
            let path = self.config.machine_config.display();
            let only_secrets = if applied.changed && applied.diff.is_empty() {
                " (only redacted values differ)"
            } else {
                ""
            };
            let message = if r.dry_run {
                if applied.changed {
                    format!("dry run: the config is valid and differs from {path}{only_secrets}; nothing was changed")
                } else {
                    format!("dry run: the config is valid and the same as {path}; nothing was changed")
                }
            } else {
                let kept = if applied.written {
                    format!("kept in {path}{only_secrets}")
                } else {
                    format!("unchanged: {path} already holds this config")
                };
                if r.reboot {
                    services::power(&self.control, PowerAction::Reboot).await?;
                    format!("{kept}; the node is rebooting to apply it")
                } else if applied.written {
                    format!("{kept}; it takes effect at the next boot")
                } else {
                    kept
                }
            };
            Ok(ConfigApplyReply {
                diff: applied.diff,
                changed: applied.changed,
                message,
            })
        })
        .await
    }

    async fn git_ops_status(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<GitOpsStatusReply>, Status> {
        self.call(Method::GitOpsStatus, request, |_| {
            crate::gitops::status(&self.config.secrets_dir)
        })
        .await
    }

    async fn git_ops_sync(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.call(Method::GitOpsSync, request, |_| async move {
            crate::gitops::sync(&self.config.secrets_dir).await?;
            Ok(Empty {})
        })
        .await
    }

    async fn git_ops_suspend(
        &self,
        request: Request<GitOpsSuspendRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.call(Method::GitOpsSuspend, request, |r| async move {
            crate::gitops::suspend(&self.config.secrets_dir, r.suspend).await?;
            Ok(Empty {})
        })
        .await
    }
}
