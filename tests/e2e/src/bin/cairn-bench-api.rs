//! Prints the machine-API figures of docs/benchmarks.md, side by side: call latency
//! (Version, ServiceList; p50/p99 over N calls on one connection) and log streaming
//! throughput (a whole service log ring) against a local server on 127.0.0.1 (the
//! real cairn-apid and control socket over a real supervisor), then from the host to
//! one boot of the image under TCG through QEMU's port forward; and cairn-apid's
//! memory on the node.
//!
//! Usage: cairn-bench-api [--calls N]   (after `cairn-image image build`, from the
//! workspace root)

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_api::proto::machine_client::MachineClient;
use cairn_api::proto::{Empty, LogsRequest};
use cairn_e2e::{
    API_PORT, BOOT_TIMEOUT, Cairnctl, fresh_disk, node_config, node_files, percentile,
};
use cairn_qemu::Vm;
use tonic::transport::Channel;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let calls: usize = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // A local server: a real supervisor with a chatty service, PID 1's control
    // socket, cairn-apid on 127.0.0.1. Its reaper waits for any child, so it runs in
    // a process of its own (`--local`), never beside a QEMU child.
    if args.iter().any(|a| a == "--local") {
        let dir = tempfile::tempdir()?;
        let (local_cfg, local_addr) = rt.block_on(local_server(dir.path()))?;
        return rt.block_on(async {
            let mut client = cairnctl::connect::connect(&local_cfg, &local_addr).await?;
            measure(&mut client, "a local server on 127.0.0.1", calls, "chatty").await
        });
    }
    let local = std::process::Command::new(std::env::current_exe()?)
        .args(["--local", "--calls", &calls.to_string()])
        .status()?;
    anyhow::ensure!(local.success(), "the local measurement failed ({local})");

    let disk = fresh_disk();
    let vm = Vm::boot(&node_config(), &disk)?;
    vm.wait_for_event("ready", &[("service", "kube-apiserver")], BOOT_TIMEOUT * 2)?;
    let ctl = Cairnctl::new(&vm);
    ctl.wait_for_api(BOOT_TIMEOUT)?;
    // Let the control plane settle a little: TCG on 2 cores is noisy.
    std::thread::sleep(Duration::from_secs(20));
    let cfg = cairnctl::clientconfig::ClientConfig::load(&node_files().client_config)?;
    let endpoint = format!("127.0.0.1:{}", vm.host_port(API_PORT));
    rt.block_on(async {
        let mut client = cairnctl::connect::connect(&cfg, &endpoint).await?;
        measure(
            &mut client,
            "the host to a TCG guest",
            calls,
            "kube-apiserver",
        )
        .await
    })?;

    let services = ctl.json(&["services"])?;
    let apid = services
        .as_array()
        .context("services")?
        .iter()
        .find(|s| s["name"] == "apid")
        .context("apid listed")?;
    println!(
        "cairn-apid memory (its cgroup's memory.current, after the calls): {:.1} MiB",
        apid["memory_bytes"].as_f64().context("memory")? / (1024.0 * 1024.0)
    );
    drop(vm);
    Ok(())
}

/// Version and ServiceList latency, then a whole log ring streamed (best of 5).
async fn measure(
    client: &mut MachineClient<Channel>,
    label: &str,
    calls: usize,
    service: &str,
) -> Result<()> {
    let t = Instant::now();
    client.version(Empty {}).await?;
    let first = t.elapsed();
    let (mut version, mut services) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        let t = Instant::now();
        client.version(Empty {}).await?;
        version.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        client.service_list(Empty {}).await?;
        services.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "machine API, {label} ({calls} calls each, one connection): Version p50 {:.2} ms p99 {:.2} ms; \
         ServiceList p50 {:.2} ms p99 {:.2} ms; the first call {:.1} ms",
        percentile(&mut version, 0.5),
        percentile(&mut version, 0.99),
        percentile(&mut services, 0.5),
        percentile(&mut services, 0.99),
        first.as_secs_f64() * 1e3
    );
    let mut best = 0.0f64;
    let mut bytes = 0usize;
    for _ in 0..5 {
        let t = Instant::now();
        let mut stream = client
            .logs(LogsRequest {
                service: service.into(),
                tail_lines: 0,
                follow: false,
            })
            .await?
            .into_inner();
        let mut n = 0usize;
        while let Some(chunk) = stream.message().await? {
            n += chunk.data.len();
        }
        best = best.max(n as f64 / t.elapsed().as_secs_f64() / (1024.0 * 1024.0));
        bytes = n;
    }
    println!(
        "log streaming, {label}: {service}'s log ring ({:.0} KiB) at {best:.1} MiB/s (best of 5)",
        bytes as f64 / 1024.0
    );
    Ok(())
}

/// Starts the local server under `dir`; returns a client config and its address.
async fn local_server(
    dir: &std::path::Path,
) -> Result<(cairnctl::clientconfig::ClientConfig, String)> {
    use cairn_pki::{ClusterParams, Existing, OffsetDateTime};
    let secrets = dir.join("secrets");
    let params = ClusterParams::new(
        "node-1".to_string().try_into()?,
        "127.0.0.1".parse()?,
        OffsetDateTime::now_utc(),
    );
    let bundle = cairn_pki::generate(&params)?;
    bundle.write_to(&secrets, Existing::Keep)?;
    let supervisor = cairn_supervisor::spawn(cairn_supervisor::SupervisorConfig::default());
    cairn_supervisor::spawn_reaper(supervisor.clone());
    // ~1 MiB of log lines at once (the default ring keeps them), then quiet.
    supervisor
        .add(vec![cairn_supervisor::ServiceSpec::new("chatty", "/bin/sh").args([
            "-c",
            "i=0; while [ $i -lt 8000 ]; do echo \"line $i of the benchmark log, padded to about a hundred and thirty bytes .................\"; i=$((i+1)); done; exec sleep 100000",
        ])])
        .await?;
    let socket = dir.join("control.sock");
    let (power, _power_rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(_power_rx);
    cairn_control::serve(
        cairn_control::ServeConfig {
            socket: socket.clone(),
            cgroup_root: None,
        },
        supervisor,
        power,
    )?;
    let config = cairn_apid::Config {
        listen: "127.0.0.1:0".parse()?,
        secrets_dir: secrets,
        control_socket: socket,
        machine_config: dir.join("machine.yaml"),
        run_dir: dir.join("run"),
        kmsg: "/dev/kmsg".into(),
        etcd_endpoint: "https://127.0.0.1:1".into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        if let Err(e) = cairn_apid::serve(config, listener, std::future::pending()).await {
            eprintln!("local machine API server: {e}");
        }
    });
    let cert = cairn_pki::issue_os_client(
        &bundle,
        "bench",
        "os:admin",
        OffsetDateTime::now_utc() - cairn_pki::Duration::minutes(5),
        cairn_pki::Duration::days(1),
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((
        cairnctl::clientconfig::ClientConfig::new(&bundle, vec![addr.clone()], cert)?,
        addr,
    ))
}
