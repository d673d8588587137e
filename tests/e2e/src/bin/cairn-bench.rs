//! Prints the boot figures of docs/benchmarks.md: the boot timeline under TCG
//! (median of N boots of the test image), PID 1's resident memory, and image sizes.
//!
//! Usage: cairn-bench [--boots N]   (run from the workspace root after
//! `cairn-image image build`; `cargo build --release -p cairnctl`)

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_e2e::{BOOT_TIMEOUT, Cairnctl, fresh_disk, node_config};
use cairn_qemu::{Regex, Vm};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let boots: usize = args
        .iter()
        .position(|a| a == "--boots")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let marks = [
        "kernel",
        "init (initramfs)",
        "root switched",
        "init (system)",
        "network",
        "etcd ready",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); marks.len()];
    let mut rss = Vec::new();
    let efi_stub = Regex::new("EFI stub: ")?;
    for i in 0..boots {
        let disk = fresh_disk();
        let mut vm = Vm::boot(&node_config(), &disk)?;
        let kernel = vm.wait_for_line(&efi_stub, BOOT_TIMEOUT)?;
        let lines = [
            kernel,
            vm.wait_for_event("init_start", &[("stage", "initramfs")], BOOT_TIMEOUT)?,
            vm.wait_for_event("root_switched", &[], BOOT_TIMEOUT)?,
            vm.wait_for_event("init_start", &[("stage", "system")], BOOT_TIMEOUT)?,
        ];
        // network and etcd become ready concurrently: look both up once etcd is ready.
        let etcd = vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)?;
        let net = vm
            .lines()
            .into_iter()
            .find(|l| l.event() == Some("network_ready"))
            .context("no network_ready line")?;
        for (k, l) in lines.iter().chain([&net, &etcd]).enumerate() {
            samples[k].push(vm.since_start(l).as_secs_f64());
        }
        std::thread::sleep(Duration::from_secs(2));
        let ctl = Cairnctl::new(&vm);
        ctl.wait_for_api(BOOT_TIMEOUT)?;
        let version = ctl.json(&["version"])?;
        rss.push(
            version["init_rss_bytes"]
                .as_f64()
                .context("no init_rss_bytes")?
                / (1024.0 * 1024.0),
        );
        eprintln!(
            "boot {}: etcd ready {:.2} s",
            i + 1,
            vm.since_start(&etcd).as_secs_f64()
        );
        vm.kill();
    }
    println!("boot timeline under TCG, seconds after QEMU start, median of {boots}:");
    for (m, s) in marks.iter().zip(samples) {
        println!(
            "  {m:<18} {:>6.2}   (min {:.2}, max {:.2})",
            median(s.clone()),
            s.iter().copied().fold(f64::MAX, f64::min),
            s.iter().copied().fold(0.0, f64::max)
        );
    }
    println!(
        "cairn-init resident memory with etcd ready: {:.1} MiB (median)",
        median(rss)
    );
    for name in ["cairn", "cairn-bench"] {
        let json = Path::new("out").join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&json) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let raw = v["raw"].as_str().unwrap_or_default();
            let xz = compressed(raw)?;
            println!(
                "{name}: raw {:.1} MB virtual / {:.1} MB allocated, qcow2 {:.1} MB, raw.xz {:.1} MB, squashfs {:.1} MB, UKI {:.1} MB",
                mb(&v["raw_virtual_bytes"]),
                mb(&v["raw_allocated_bytes"]),
                mb(&v["qcow2_bytes"]),
                xz / 1e6,
                mb(&v["squashfs_bytes"]),
                mb(&v["uki_bytes"])
            );
        }
    }
    Ok(())
}

fn mb(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_default() / 1e6
}

/// Size of `xz -6` of a file (what a download of the raw image would be).
fn compressed(path: &str) -> Result<f64> {
    let out = std::process::Command::new("xz")
        .args(["-6", "-T2", "-c", path])
        .output()
        .context("running xz")?;
    Ok(out.stdout.len() as f64)
}
