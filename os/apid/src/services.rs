//! PID 1's services, their logs and the power actions, through the control socket.

use cairn_api::proto::{LogChunk, ServiceEvent, ServiceInfo};
use cairn_control::{Client, PowerAction, RefusalKind};
use tokio::sync::mpsc;
use tonic::Status;

/// A control-socket error as the gRPC status the caller sees.
pub fn status(e: cairn_control::Error) -> Status {
    use cairn_control::Error;
    match e {
        Error::Refused { kind, message } => match kind {
            RefusalKind::NotFound => Status::not_found(message),
            RefusalKind::Invalid => Status::invalid_argument(message),
            RefusalKind::Failed => Status::internal(message),
        },
        e @ (Error::Connect { .. } | Error::Io(_)) => Status::unavailable(e.to_string()),
        e @ Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        e @ Error::Protocol(_) => Status::internal(e.to_string()),
    }
}

/// The proto's view of one service.
pub fn info(s: cairn_control::ServiceInfo) -> ServiceInfo {
    ServiceInfo {
        name: s.name,
        state: s.state,
        ready: s.ready,
        restarts: s.restarts,
        pid: s.pid.unwrap_or(0),
        memory_bytes: s.memory_bytes.unwrap_or(0),
        events: s
            .events
            .into_iter()
            .map(|e| ServiceEvent {
                kind: e.kind,
                detail: e.detail,
                age_ms: e.age_ms,
            })
            .collect(),
    }
}

pub async fn list(control: &Client) -> Result<Vec<ServiceInfo>, Status> {
    Ok(control
        .services()
        .await
        .map_err(status)?
        .into_iter()
        .map(info)
        .collect())
}

/// Refuses an empty service name before asking PID 1.
pub fn name(name: &str) -> Result<&str, Status> {
    if name.is_empty() {
        Err(Status::invalid_argument("no service name"))
    } else {
        Ok(name)
    }
}

pub async fn power(control: &Client, action: PowerAction) -> Result<(), Status> {
    control.power(action).await.map_err(status)
}

/// Opens the service's log (so that an unknown service is the call's error) and
/// returns a task that pumps it into `tx` until the log ends or the receiver is
/// gone.
pub async fn logs(
    control: &Client,
    service: &str,
    tail_lines: u32,
    follow: bool,
    tx: mpsc::Sender<Result<LogChunk, Status>>,
) -> Result<impl Future<Output = ()> + Send + 'static, Status> {
    let tail = (tail_lines > 0).then_some(tail_lines as usize);
    let mut stream = control
        .logs(name(service)?, tail, follow)
        .await
        .map_err(status)?;
    Ok(async move {
        loop {
            let chunk = tokio::select! {
                _ = tx.closed() => return,
                chunk = stream.next_chunk() => chunk,
            };
            match chunk {
                Ok(Some(data)) => {
                    if tx.send(Ok(LogChunk { data })).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
            }
        }
    })
}
