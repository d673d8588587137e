//! Test-only control port, compiled in only with the `test-hooks` feature (the test
//! image). It lets the end-to-end tests do what an operator will do through the
//! machine API: signal a service, and reach services that listen on loopback only.
//! Never part of the production image.
//!
//! Protocol on TCP 7777: one line per command, one line of answer.
//! `kill <service> <SIGNAL>` -> `ok` | `error: ...`; `ping` -> `pong`;
//! `status` -> `name=state,...`; `cgroup <service>` -> the pids in its cgroup;
//! `rss` -> PID 1's resident memory in KiB.
//! TCP 12379 is forwarded to etcd's 127.0.0.1:2379.

use std::str::FromStr;

use cairn_supervisor::{Signal, Supervisor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const CONTROL_PORT: u16 = 7777;
const FORWARDS: &[(u16, u16)] = &[(12379, 2379)];

pub fn spawn(supervisor: Supervisor) {
    tracing::warn!(
        event = "test_hooks",
        port = CONTROL_PORT,
        "TEST HOOKS ENABLED: this is a test image"
    );
    tokio::spawn(async move {
        let listener = match TcpListener::bind(("0.0.0.0", CONTROL_PORT)).await {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = ?e.to_string(), "test hook port"),
        };
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, supervisor.clone()));
        }
    });
    for &(outer, inner) in FORWARDS {
        tokio::spawn(forward(outer, inner));
    }
}

async fn serve(conn: TcpStream, supervisor: Supervisor) {
    let (r, mut w) = conn.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["ping"] => "pong".to_string(),
            ["status"] => supervisor
                .status()
                .await
                .iter()
                .map(|s| format!("{}={:?}", s.name, s.state))
                .collect::<Vec<_>>()
                .join(","),
            ["cgroup", service] => {
                read_line(&format!("/sys/fs/cgroup/cairn/{service}/cgroup.procs"))
            }
            ["rss"] => std::fs::read_to_string("/proc/1/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
                .unwrap_or_else(|| "error: no VmRSS".into()),
            ["kill", service, sig] => match Signal::from_str(sig) {
                Ok(s) => match supervisor.signal(service, s).await {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("error: {e}"),
                },
                Err(_) => format!("error: unknown signal {sig}"),
            },
            _ => format!("error: unknown command {line:?}"),
        };
        if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

fn read_line(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) => format!("error: {path}: {e}"),
    }
}

async fn forward(outer: u16, inner: u16) {
    let Ok(listener) = TcpListener::bind(("0.0.0.0", outer)).await else {
        return;
    };
    while let Ok((mut conn, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", inner)).await {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
            }
        });
    }
}
