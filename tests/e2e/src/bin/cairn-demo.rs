//! Boots a cairn image in QEMU (TCG) as a single-node Kubernetes cluster, with the
//! serial console shown: generates (once, kept in `out/demo/`) the node's machine
//! config and secrets bundle with `cairnctl gen config`, hands both to the VM
//! through fw_cfg, forwards the API server to 127.0.0.1, waits until the node is
//! Ready and CoreDNS runs, and prints how to use kubectl. Ctrl-C powers the VM off
//! in an orderly way (`--exit-when-ready`, implied by CI=true, does it at once).
//!
//! Usage: CAIRN_QEMU_ECHO=1 cairn-demo <image.qcow2> [--exit-when-ready]
//! (CAIRN_QEMU_ECHO=1 makes the harness copy the console to stderr.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_e2e::{API_PORT, APISERVER_PORT, Cairnctl, Kubectl, NODE_IP, NODE_NAME};
use cairn_qemu::{Disk, Vm, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(900);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(image) = args.iter().find(|a| !a.starts_with("--")) else {
        bail!("usage: cairn-demo <image.qcow2> [--exit-when-ready]");
    };
    let exit_when_ready =
        args.iter().any(|a| a == "--exit-when-ready") || std::env::var_os("CI").is_some();

    let demo = Path::new(image)
        .parent()
        .unwrap_or(Path::new("."))
        .join("demo");
    let (machine_config, secrets) = node_files(&demo)?;

    let disk = Disk::new(Path::new(image), Some("8G")).context("creating the VM disk")?;
    eprintln!("cairn-demo: booting {image} under QEMU (TCG, UEFI); the console follows");
    let cfg = VmConfig {
        forwards: vec![APISERVER_PORT, API_PORT],
        fw_cfg: vec![
            ("opt/cairn/machine-config".into(), machine_config),
            ("opt/cairn/secrets".into(), secrets.clone()),
        ],
        memory_mib: 4096,
        ..VmConfig::default()
    };
    let mut vm = Vm::boot(&cfg, &disk)?;
    // cairnctl's client config, pointed at the forwarded machine API.
    let cairnconfig = demo.join(cairnctl::clientconfig::FILE);
    let mut client = cairnctl::clientconfig::ClientConfig::load(&cairnconfig)?;
    client.endpoints = vec![format!("127.0.0.1:{}", vm.host_port(API_PORT))];
    std::fs::write(&cairnconfig, client.to_yaml()?)
        .with_context(|| format!("writing {}", cairnconfig.display()))?;
    let ctl = Cairnctl::with_config(&vm, &cairnconfig);
    ctl.wait_for_api(TIMEOUT)?;
    // The kubeconfig, from the node through the machine API.
    let server = format!("https://127.0.0.1:{}", vm.host_port(APISERVER_PORT));
    let kubeconfig = demo.join("kubeconfig");
    std::fs::write(&kubeconfig, ctl.run(&["kubeconfig", "--server", &server])?)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;

    let apiserver = vm.wait_for_event("ready", &[("service", "kube-apiserver")], TIMEOUT)?;
    let kubectl = Kubectl::with_kubeconfig(&std::fs::read_to_string(&kubeconfig)?)?;
    let node = kubectl.wait_until(&["get", "nodes", "--no-headers"], TIMEOUT, |out| {
        out.lines()
            .any(|l| l.starts_with(NODE_NAME) && l.split_whitespace().nth(1) == Some("Ready"))
    })?;
    let node_ready = vm.started_at().elapsed();
    kubectl.wait_until(
        &[
            "get",
            "deploy",
            "-n",
            "kube-system",
            "coredns",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        TIMEOUT,
        |out| out.trim() == "1",
    )?;
    let pods = kubectl.run(&["get", "pods", "-A", "-o", "wide"])?;
    let services = ctl.run(&["services"])?;
    let kubectl_bin =
        cairn_image::components::cached(&["kubernetes"])?.binary("kubernetes", "kubectl")?;
    eprintln!(
        "\ncairn-demo: the single-node cluster is up: API server ready {:.0} s and node Ready {:.0} s after QEMU started.\n\n{node}\n{pods}\n{services}\nUse it from this machine:\n\n  export KUBECONFIG={}\n  {} get nodes\n  export CAIRNCONFIG={}\n  {} services\n\n{}",
        vm.since_start(&apiserver).as_secs_f64(),
        node_ready.as_secs_f64(),
        absolute(&kubeconfig).display(),
        kubectl_bin.display(),
        absolute(&cairnconfig).display(),
        absolute(&cairn_e2e::cairnctl_binary()).display(),
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
    let status = vm.wait_exit(Duration::from_secs(120))?;
    eprintln!("cairn-demo: VM powered off ({status})");
    Ok(())
}

/// The demo node's machine config and secrets bundle, generated on first use and
/// kept, so the demo cluster keeps its identity across runs.
fn node_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let machine_config = dir.join(cairnctl::MACHINE_CONFIG_FILE);
    let secrets = dir.join(cairnctl::SECRETS_FILE);
    let current = machine_config.is_file()
        && dir.join(cairnctl::clientconfig::FILE).is_file()
        && std::fs::read_to_string(&secrets)
            .ok()
            .and_then(|t| cairn_pki::Bundle::from_document(&t).ok())
            .is_some_and(|b| b.get(cairn_pki::paths::OS_SERVER.crt).is_some());
    if !current {
        cairnctl::gen_config(&cairnctl::GenOptions {
            name: NODE_NAME.to_string().try_into()?,
            ip: NODE_IP.parse()?,
            base_config: None,
            endpoint: None,
            out_dir: dir.to_path_buf(),
            force: true,
        })?;
        eprintln!(
            "cairn-demo: generated the demo node's config and secrets in {}",
            dir.display()
        );
    }
    Ok((machine_config, secrets))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
