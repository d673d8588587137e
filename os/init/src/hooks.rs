//! Test-only control port, compiled in only with the `test-hooks` feature (the test
//! image). It lets the end-to-end tests do what an operator will do through the
//! machine API: signal a service, and reach services that listen on loopback only.
//! Never part of the production image.
//!
//! Protocol on TCP 7777: one line per command, one line of answer.
//! `kill <service> <SIGNAL>` -> `ok` | `error: ...`; `ping` -> `pong`;
//! `status` -> `name=state,...`; `cgroup <service>` -> the pids in its cgroup;
//! `rss` -> PID 1's resident memory in KiB; `get <ip:port> <path>` -> an HTTP GET
//! from the node's own network namespace (to reach a ClusterIP), the status line
//! and body on one line.
//! `memory <service>` -> the service's cgroup `memory.current` in bytes.
//! TCP 12379 is forwarded to etcd's 127.0.0.1:2379.
//!
//! Benchmark mode: with fw_cfg `opt/cairn/bench-plain` present, the node's
//! services are not supervised but started all at once, like a plain script would
//! ([`plain_launch`]), to measure what supervision costs.

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
            ["get", addr, path] => http_get(addr, path).await,
            ["memory", service] => {
                read_line(&format!("/sys/fs/cgroup/cairn/{service}/memory.current"))
            }
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

/// One HTTP/1.0 GET with a 5 s limit; `status-line | body` flattened to one line.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let exchange = async {
        let mut conn = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&raw).into_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) => {
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = head.lines().next().unwrap_or_default();
            format!("{status} | {}", body.trim().replace('\n', " "))
        }
        Ok(Err(e)) => format!("error: {addr}: {e}"),
        Err(_) => format!("error: {addr}: no answer within 5 s"),
    }
}

/// Whether the benchmark's plain launch was asked for (fw_cfg `opt/cairn/bench-plain`).
pub fn plain_launch_requested() -> bool {
    std::path::Path::new(crate::config::FW_CFG_DIR)
        .join("opt/cairn/bench-plain")
        .exists()
}

/// Starts every service's command at once, with the same arguments and
/// environment, no ordering, probes or restarts (the reaper still reaps them), then
/// polls the API server's `/readyz` every 200 ms (the supervisor's probe period)
/// and logs `event=plain_ready service=kube-apiserver elapsed_ms=...` since the
/// spawn.
pub fn plain_launch(
    specs: Vec<cairn_supervisor::ServiceSpec>,
    api: cairn_services::kubeapi::ApiClient,
) {
    let start = std::time::Instant::now();
    tracing::warn!(
        event = "plain_launch",
        services = specs.len(),
        "BENCHMARK: services started at once, unsupervised"
    );
    for spec in &specs {
        let spawned = std::process::Command::new(&spec.command)
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            tracing::error!(service = %spec.name, error = ?e.to_string(), "plain launch failed");
        }
    }
    tokio::spawn(async move {
        loop {
            if api.get("/readyz").await.is_ok() {
                return tracing::info!(
                    event = "plain_ready",
                    service = "kube-apiserver",
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "API server ready (plain launch)"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
}
