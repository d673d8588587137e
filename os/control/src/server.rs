//! The PID 1 side: answers requests from the supervisor's state.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use cairn_supervisor::{EventKind, ServiceStatus, Signal, State, Supervisor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::{Answer, EventInfo, PowerAction, Refusal, RefusalKind, Reply, Request, ServiceInfo};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// What the control socket serves from.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub socket: PathBuf,
    /// Where each service's cgroup lives (`<root>/<name>/memory.current`).
    pub cgroup_root: Option<PathBuf>,
}

/// Binds the socket (0600, replacing a stale one) and serves it until the runtime
/// ends. Power requests are sent to `power`, the same channel as PID 1's signals.
pub fn serve(
    config: ServeConfig,
    supervisor: Supervisor,
    power: mpsc::UnboundedSender<PowerAction>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(&config.socket);
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(&config.socket)?;
    std::fs::set_permissions(
        &config.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let (config, supervisor, power) =
                        (config.clone(), supervisor.clone(), power.clone());
                    tokio::spawn(async move {
                        if let Err(e) = connection(conn, &config, &supervisor, &power).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn connection(
    conn: UnixStream,
    config: &ServeConfig,
    supervisor: &Supervisor,
    power: &mpsc::UnboundedSender<PowerAction>,
) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let request = match serde_json::from_str::<Request>(&line) {
        Ok(r) => r,
        Err(e) => {
            return answer(
                &mut w,
                refuse(RefusalKind::Invalid, format!("bad request: {e}")),
            )
            .await;
        }
    };
    let result = match request {
        Request::Services => Ok(Reply::Services(
            supervisor
                .status()
                .await
                .iter()
                .map(|s| info(s, config.cgroup_root.as_deref()))
                .collect(),
        )),
        Request::Start { name } => supervisor.start(&name).await.map(|()| Reply::Done),
        Request::Stop { name } => supervisor.stop(&name).await.map(|()| Reply::Done),
        Request::Restart { name } => supervisor.restart(&name).await.map(|()| Reply::Done),
        Request::Signal { name, signal } => {
            let upper = signal.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            match Signal::from_str(&full) {
                Ok(sig) => supervisor.signal(&name, sig).await.map(|()| Reply::Done),
                Err(_) => {
                    return answer(
                        &mut w,
                        refuse(RefusalKind::Invalid, format!("unknown signal {signal:?}")),
                    )
                    .await;
                }
            }
        }
        Request::Power { action } => {
            tracing::info!(event = "power_requested", action = ?action, "orderly power action requested through the control socket");
            return match power.send(action) {
                Ok(()) => answer(&mut w, Answer::Ok(Reply::Done)).await,
                Err(_) => {
                    answer(
                        &mut w,
                        refuse(
                            RefusalKind::Failed,
                            "PID 1 is not taking power requests".into(),
                        ),
                    )
                    .await
                }
            };
        }
        Request::Logs {
            name,
            tail_lines,
            follow,
        } => return logs(&mut w, supervisor, &name, tail_lines, follow).await,
    };
    let reply = match result {
        Ok(reply) => Answer::Ok(reply),
        Err(e) => refuse(refusal_kind(&e), e.to_string()),
    };
    answer(&mut w, reply).await
}

async fn logs(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    supervisor: &Supervisor,
    name: &str,
    tail_lines: Option<usize>,
    follow: bool,
) -> std::io::Result<()> {
    let got = if follow {
        supervisor
            .follow_logs(name)
            .await
            .map(|(c, f)| (c, Some(f)))
    } else {
        supervisor.logs(name).await.map(|c| (c, None))
    };
    let (contents, follower) = match got {
        Ok(x) => x,
        Err(e) => return answer(w, refuse(refusal_kind(&e), e.to_string())).await,
    };
    answer(w, Answer::Ok(Reply::Streaming)).await?;
    w.write_all(tail(&contents, tail_lines)).await?;
    let Some(mut follower) = follower else {
        return w.shutdown().await;
    };
    loop {
        match follower.recv().await {
            Ok(line) => w.write_all(&line).await?,
            Err(RecvError::Lagged(n)) => {
                w.write_all(
                    format!("[cairn: {n} lines skipped, the reader fell behind]\n").as_bytes(),
                )
                .await?;
            }
            Err(RecvError::Closed) => return w.shutdown().await,
        }
    }
}

/// The last `n` whole lines of `contents` (all of it for `None`).
fn tail(contents: &[u8], n: Option<usize>) -> &[u8] {
    let Some(n) = n else { return contents };
    if n == 0 {
        return &contents[contents.len()..];
    }
    let body = contents.strip_suffix(b"\n").unwrap_or(contents);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &contents[start..]
}

fn refuse(kind: RefusalKind, message: String) -> Answer {
    Answer::Error(Refusal { kind, message })
}

fn refusal_kind(e: &cairn_supervisor::Error) -> RefusalKind {
    match e {
        cairn_supervisor::Error::UnknownService { .. } => RefusalKind::NotFound,
        _ => RefusalKind::Failed,
    }
}

async fn answer(w: &mut tokio::net::unix::OwnedWriteHalf, answer: Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn info(s: &ServiceStatus, cgroup_root: Option<&Path>) -> ServiceInfo {
    let now = Instant::now();
    ServiceInfo {
        name: s.name.clone(),
        state: state_name(s.state).to_owned(),
        ready: s.state == State::Ready,
        restarts: s.restarts,
        pid: s.pid,
        memory_bytes: cgroup_root.and_then(|root| {
            std::fs::read_to_string(root.join(&s.name).join("memory.current"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }),
        events: s
            .events
            .iter()
            .map(|e| EventInfo {
                kind: e.kind.name().to_owned(),
                detail: detail(&e.kind),
                age_ms: u64::try_from(now.saturating_duration_since(e.at).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect(),
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Waiting => "waiting",
        State::Starting => "starting",
        State::Running => "running",
        State::Ready => "ready",
        State::Stopping => "stopping",
        State::Stopped => "stopped",
        State::Exited => "exited",
        State::Failed => "failed",
        State::BackingOff => "backing_off",
    }
}

fn detail(kind: &EventKind) -> String {
    match kind {
        EventKind::Started { pid } => format!("pid {pid}"),
        EventKind::NotReady { reason } => reason.clone(),
        EventKind::Exited { status } => status.to_string(),
        EventKind::BackingOff { delay } => format!("{} ms", delay.as_millis()),
        EventKind::SpawnFailed { error } => error.clone(),
        EventKind::Starting | EventKind::Ready | EventKind::Stopping | EventKind::Stopped => {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_whole_last_lines() {
        let c = b"a\nbb\nccc\n";
        assert_eq!(tail(c, None), c);
        assert_eq!(tail(c, Some(1)), b"ccc\n");
        assert_eq!(tail(c, Some(2)), b"bb\nccc\n");
        assert_eq!(tail(c, Some(5)), c);
        assert_eq!(tail(c, Some(0)), b"");
        assert_eq!(tail(b"", Some(3)), b"");
    }
}
