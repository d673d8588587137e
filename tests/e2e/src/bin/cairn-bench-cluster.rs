//! Prints the cluster figures of docs/benchmarks.md, from real boots of the test
//! image under TCG:
//! - the timeline, median of N boots: QEMU start -> etcd ready -> kube-apiserver
//!   ready -> node Ready -> first pod (CoreDNS) Running;
//! - init and per-service memory with the cluster up;
//! - supervision overhead: time from handing the services over to the API server
//!   being ready, under cairn's supervisor vs. the same commands started all at
//!   once (the benchmark image's plain-launch mode), in alternating pairs of boots
//!   of `out/cairn-bench.qcow2`.
//!
//! Usage: cairn-bench-cluster [--boots N] [--pairs M]   (after `cairn-image image
//! build` and `image build --bench`, from the workspace root)

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_e2e::{
    CLUSTER_TIMEOUT, COMPONENTS, Cairnctl, Kubectl, NODE_NAME, bench_image, fresh_disk,
    fresh_disk_of, node_config,
};
use cairn_qemu::Vm;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn field_ms(line: &cairn_qemu::ConsoleLine, key: &str) -> Result<f64> {
    line.field(key)
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no {key} in {}", line.text))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let boots = arg(&args, "--boots", 5);
    let pairs = arg(&args, "--pairs", 3);

    let marks = [
        "etcd ready",
        "kube-apiserver ready",
        "node Ready",
        "first pod Running",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); marks.len()];
    let mut memory: Vec<(String, f64)> = Vec::new();
    for i in 0..boots {
        let disk = fresh_disk();
        let mut vm = Vm::boot(&node_config(), &disk)?;
        let etcd = vm.wait_for_event("ready", &[("service", "etcd")], CLUSTER_TIMEOUT)?;
        vm.set_cursor(0);
        let api = vm.wait_for_event("ready", &[("service", "kube-apiserver")], CLUSTER_TIMEOUT)?;
        let k = Kubectl::new(&vm)?;
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut node_ready = None;
        let mut pod_running = None;
        while (node_ready.is_none() || pod_running.is_none()) && Instant::now() < deadline {
            let t = vm.started_at().elapsed().as_secs_f64();
            if node_ready.is_none() {
                let out = k.run(&["get", "nodes", "--no-headers"]).unwrap_or_default();
                if out.lines().any(|l| {
                    l.starts_with(NODE_NAME) && l.split_whitespace().nth(1) == Some("Ready")
                }) {
                    node_ready = Some(t);
                }
            }
            if pod_running.is_none() {
                let out = k
                    .run(&[
                        "get",
                        "pods",
                        "-A",
                        "--no-headers",
                        "--field-selector=status.phase=Running",
                    ])
                    .unwrap_or_default();
                if !out.trim().is_empty() {
                    pod_running = Some(t);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let row = [
            vm.since_start(&etcd).as_secs_f64(),
            vm.since_start(&api).as_secs_f64(),
            node_ready.context("node never Ready")?,
            pod_running.context("no pod Running")?,
        ];
        for (k, v) in row.iter().enumerate() {
            samples[k].push(*v);
        }
        eprintln!("boot {}: {row:.1?}", i + 1);
        if i == 0 {
            std::thread::sleep(Duration::from_secs(20));
            let ctl = Cairnctl::new(&vm);
            let version = ctl.json(&["version"])?;
            memory.push((
                "cairn-init (PID 1, supervisor inside)".into(),
                version["init_rss_bytes"]
                    .as_f64()
                    .context("init_rss_bytes")?
                    / (1024.0 * 1024.0),
            ));
            let services = ctl.json(&["services"])?;
            for s in COMPONENTS.iter().chain(&["apid"]) {
                let bytes = services
                    .as_array()
                    .context("services")?
                    .iter()
                    .find(|v| v["name"] == *s)
                    .and_then(|v| v["memory_bytes"].as_f64())
                    .with_context(|| format!("no memory for {s}"))?;
                memory.push((s.to_string(), bytes / (1024.0 * 1024.0)));
            }
        }
        vm.kill();
    }

    // Supervision overhead, in alternating pairs on fresh disks.
    let plain_flag = tempfile::NamedTempFile::new()?;
    let mut supervised = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..pairs {
        let disk = fresh_disk_of(&bench_image());
        let mut vm = Vm::boot(&node_config(), &disk)?;
        let start = vm.wait_for_event("kubernetes_starting", &[], CLUSTER_TIMEOUT)?;
        let ready = vm.wait_for_event(
            "milestone",
            &[("service", "kube-apiserver")],
            CLUSTER_TIMEOUT,
        )?;
        supervised.push((field_ms(&ready, "uptime_ms")? - field_ms(&start, "uptime_ms")?) / 1000.0);
        vm.kill();

        let disk = fresh_disk_of(&bench_image());
        let mut cfg = node_config();
        cfg.fw_cfg.push((
            "opt/cairn/bench-plain".into(),
            plain_flag.path().to_path_buf(),
        ));
        let mut vm = Vm::boot(&cfg, &disk)?;
        let ready = vm.wait_for_event("plain_ready", &[], CLUSTER_TIMEOUT)?;
        plain.push(field_ms(&ready, "elapsed_ms")? / 1000.0);
        vm.kill();
        eprintln!(
            "pair: supervised {:.1}s, plain {:.1}s",
            supervised.last().copied().unwrap_or_default(),
            plain.last().copied().unwrap_or_default()
        );
    }

    println!("Cluster timeline under TCG (seconds after QEMU start, median of {boots}):");
    for (m, s) in marks.iter().zip(samples) {
        println!("  {m:<22} {:>6.1}   (all: {s:.1?})", median(s.clone()));
    }
    println!("Memory with the cluster up (first boot, 20 s after the first pod ran):");
    for (name, mib) in &memory {
        println!("  {name:<40} {mib:>7.1} MiB");
    }
    let (s, p) = (median(supervised.clone()), median(plain.clone()));
    println!(
        "Services handed over -> API server ready, median of {pairs}: supervised {s:.1}s, plain launch {p:.1}s, ratio {:.2}",
        s / p
    );
    println!("  supervised: {supervised:.1?}\n  plain:      {plain:.1?}");
    Ok(())
}
