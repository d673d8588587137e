//! Prints the machine-API figures of docs/benchmarks.md from one boot of the image
//! under TCG: call latency (Version, ServiceList; p50/p99 over N calls on one
//! connection) from the host through QEMU's port forward, cairn-apid's memory, and
//! log streaming throughput (a whole service log ring, streamed).
//!
//! Usage: cairn-bench-api [--calls N]   (after `cairn-image image build`, from the
//! workspace root)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_api::proto::{Empty, LogsRequest};
use cairn_e2e::{API_PORT, BOOT_TIMEOUT, Cairnctl, fresh_disk, node_config, node_files};
use cairn_qemu::Vm;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let calls: usize = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let disk = fresh_disk();
    let vm = Vm::boot(&node_config(), &disk)?;
    vm.wait_for_event("ready", &[("service", "kube-apiserver")], BOOT_TIMEOUT * 2)?;
    let ctl = Cairnctl::new(&vm);
    ctl.wait_for_api(BOOT_TIMEOUT)?;
    // Let the control plane settle a little: TCG on 2 cores is noisy.
    std::thread::sleep(Duration::from_secs(20));

    let cfg = cairnctl::clientconfig::ClientConfig::load(&node_files().client_config)?;
    let endpoint = format!("127.0.0.1:{}", vm.host_port(API_PORT));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t = Instant::now();
        let mut client = cairnctl::connect::connect(&cfg, &endpoint).await?;
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
            "machine API from the host to a TCG guest ({calls} calls each, one connection): \
             Version p50 {:.2} ms p99 {:.2} ms; ServiceList p50 {:.2} ms p99 {:.2} ms; \
             first call incl. TCP+TLS handshake {:.1} ms",
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
                    service: "kube-apiserver".into(),
                    tail_lines: 0,
                    follow: false,
                })
                .await?
                .into_inner();
            let mut n = 0usize;
            while let Some(chunk) = stream.message().await? {
                n += chunk.data.len();
            }
            let rate = n as f64 / t.elapsed().as_secs_f64() / (1024.0 * 1024.0);
            best = best.max(rate);
            bytes = n;
        }
        println!(
            "log streaming: kube-apiserver's log ring ({:.0} KiB) at {best:.1} MiB/s (best of 5)",
            bytes as f64 / 1024.0
        );
        anyhow::Ok(())
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
