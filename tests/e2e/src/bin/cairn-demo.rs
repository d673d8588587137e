//! Boots a cairn image in QEMU (TCG) with the serial console shown, waits until the
//! node is up, and powers it off in an orderly way on Ctrl-C (or at once with
//! `--exit-when-ready`, which CI=true implies).
//!
//! Usage: CAIRN_QEMU_ECHO=1 cairn-demo <image.qcow2> [--exit-when-ready]
//! (CAIRN_QEMU_ECHO=1 makes the harness copy the console to stderr.)

use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_qemu::{Disk, Vm, VmConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(image) = args.iter().find(|a| !a.starts_with("--")) else {
        bail!("usage: cairn-demo <image.qcow2> [--exit-when-ready]");
    };
    let exit_when_ready =
        args.iter().any(|a| a == "--exit-when-ready") || std::env::var_os("CI").is_some();

    let disk =
        Disk::new(std::path::Path::new(image), Some("8G")).context("creating the VM disk")?;
    eprintln!("cairn-demo: booting {image} under QEMU (TCG, UEFI); the console follows");
    let mut vm = Vm::boot(&VmConfig::default(), &disk)?;
    let ready = vm.wait_for_event("ready", &[("service", "etcd")], Duration::from_secs(300))?;
    eprintln!(
        "\ncairn-demo: the node is up — etcd ready {:.1} s after QEMU started. {}",
        vm.since_start(&ready).as_secs_f64(),
        if exit_when_ready {
            "Powering off."
        } else {
            "Press Ctrl-C to power it off."
        }
    );
    if !exit_when_ready {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(tokio::signal::ctrl_c())?;
    }
    vm.powerdown()?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    eprintln!("cairn-demo: VM powered off ({status})");
    Ok(())
}
