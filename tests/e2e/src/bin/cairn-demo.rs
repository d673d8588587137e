//! Boots a cairn image in QEMU (TCG) as a single-node Kubernetes cluster, with the
//! serial console shown: generates (once, kept in `out/demo/`) the node's machine
//! config and secrets bundle with `cairnctl gen config`, hands both to the VM
//! through fw_cfg, forwards the API server to 127.0.0.1, waits until the node is
//! Ready and CoreDNS runs, and prints how to use kubectl. Ctrl-C powers the VM off
//! in an orderly way (`--exit-when-ready`, implied by CI=true, does it at once).
//!
//! GitOps: a demo repository (`out/demo/git/demo.git`, with a clone to edit in
//! `out/demo/repo`) is served over HTTPS with a token to the VM, whose machine
//! config follows it. Its post-receive hook sends the node a signed webhook, as a
//! git hosting service would, so a `git push` changes the cluster within seconds;
//! the demo shows one push.
//!
//! Usage: CAIRN_QEMU_ECHO=1 cairn-demo <image.qcow2> [--exit-when-ready]
//!        cairn-demo notify <host-port> <ca.crt>   (the repository's hook)
//! (CAIRN_QEMU_ECHO=1 makes the harness copy the console to stderr.)

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_e2e::gitops::{
    WEBHOOK_PORT, WEBTEST_IMAGE, manifests, post_webhook, with_gitops, write_os_ca,
};
use cairn_e2e::{API_PORT, APISERVER_PORT, Cairnctl, Kubectl, NODE_IP, NODE_NAME};
use cairn_qemu::{Disk, GUEST_FORWARD_ADDR, GuestForward, Vm, VmConfig};
use cairn_testgit::HttpsGitServer;

const TIMEOUT: Duration = Duration::from_secs(900);
/// The demo repository's credentials (a demo on loopback, not a secret).
const TOKEN: &str = "cairn-demo-token";
const WEBHOOK_SECRET: &str = "cairn-demo-webhook-secret";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, port, ca] = args.as_slice()
        && cmd == "notify"
    {
        let code = post_webhook(port.parse()?, Path::new(ca), WEBHOOK_SECRET)?;
        eprintln!("cairn-demo: webhook sent to the node: HTTP {code}");
        return Ok(());
    }
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
    let repo = demo_repository(&demo)?;
    let server =
        HttpsGitServer::start(&demo.join("git"), TOKEN).context("serving the demo repository")?;
    let section = serde_json::json!({
        "url": format!("https://{GUEST_FORWARD_ADDR}:{}/demo.git", server.port()),
        "auth": {"token": TOKEN},
        "ca": server.ca_pem(),
        "webhook": {"secret": WEBHOOK_SECRET},
        "health": {"timeoutSeconds": 120},
    });
    let machine_config = with_gitops(&machine_config, section, &demo.join("machine-gitops.yaml"))?;

    let disk = Disk::new(Path::new(image), Some("8G")).context("creating the VM disk")?;
    eprintln!("cairn-demo: booting {image} under QEMU (TCG, UEFI); the console follows");
    let relay = std::env::current_exe()?.with_file_name("cairn-guest-relay");
    let cfg = VmConfig {
        forwards: vec![APISERVER_PORT, API_PORT, WEBHOOK_PORT],
        guest_forwards: vec![GuestForward {
            port: server.port(),
            relay,
        }],
        fw_cfg: vec![
            ("opt/cairn/machine-config".into(), machine_config),
            ("opt/cairn/secrets".into(), secrets.clone()),
        ],
        memory_mib: 4096,
        ..VmConfig::default()
    };
    let mut vm = Vm::boot(&cfg, &disk)?;
    let ca = demo.join("os-ca.crt");
    write_os_ca(&secrets, &ca)?;
    install_hook(&demo, vm.host_port(WEBHOOK_PORT), &ca)?;
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
    let pushed = show_a_push(&kubectl, &repo)?;
    let pods = kubectl.run(&["get", "pods", "-A", "-o", "wide"])?;
    let services = ctl.run(&["services"])?;
    let kubectl_bin =
        cairn_image::components::cached(&["kubernetes"])?.binary("kubernetes", "kubectl")?;
    eprintln!(
        "\ncairn-demo: the single-node cluster is up: API server ready {:.0} s and node Ready {:.0} s after QEMU started.\n\n{node}\n{pods}\n{services}\n{pushed}\nUse it from this machine:\n\n  export KUBECONFIG={}\n  {} get nodes,gitops\n  export CAIRNCONFIG={}\n  {} gitops status\n\nChange the cluster with git: edit {}/app.yaml, then\n  git -C {} commit -am 'a change' && git -C {} push\n\n{}",
        vm.since_start(&apiserver).as_secs_f64(),
        node_ready.as_secs_f64(),
        absolute(&kubeconfig).display(),
        kubectl_bin.display(),
        absolute(&cairnconfig).display(),
        absolute(&cairn_e2e::cairnctl_binary()).display(),
        absolute(&repo).display(),
        absolute(&repo).display(),
        absolute(&repo).display(),
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

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The demo repository: created once (bare `git/demo.git` and the clone `repo`
/// with the demo application, one replica), then kept; returns the clone.
fn demo_repository(demo: &Path) -> Result<PathBuf> {
    let bare = demo.join("git/demo.git");
    let repo = demo.join("repo");
    if !bare.is_dir() {
        std::fs::create_dir_all(&bare)?;
        git(&bare, &["init", "-q", "--bare", "-b", "main"])?;
        let _ = std::fs::remove_dir_all(&repo);
        git(
            demo,
            &[
                "clone",
                "-q",
                &absolute(&bare).display().to_string(),
                "repo",
            ],
        )?;
        std::fs::write(repo.join("app.yaml"), manifests(1, WEBTEST_IMAGE))?;
        git(&repo, &["add", "app.yaml"])?;
        git(
            &repo,
            &[
                "-c",
                "user.name=cairn demo",
                "-c",
                "user.email=demo@cairn.invalid",
                "commit",
                "-q",
                "-m",
                "the demo application",
            ],
        )?;
        git(&repo, &["push", "-q", "origin", "main"])?;
        eprintln!(
            "cairn-demo: created the demo repository {} (clone: {})",
            bare.display(),
            repo.display()
        );
    }
    Ok(repo)
}

/// The bare repository's post-receive hook: a signed webhook to this run's
/// forwarded webhook port.
fn install_hook(demo: &Path, port: u16, ca: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let hook = demo.join("git/demo.git/hooks/post-receive");
    let me = std::env::current_exe()?;
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh
exec '{}' notify {port} '{}'
",
            me.display(),
            absolute(ca).display()
        ),
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Waits until the node applied the repository's head, then pushes a change of
/// the Deployment's replicas and times it until the cluster has it.
fn show_a_push(kubectl: &Kubectl, repo: &Path) -> Result<String> {
    let head = git(repo, &["rev-parse", "HEAD"])?;
    kubectl.wait_until(
        &[
            "get",
            "gitops",
            "cairn",
            "-o",
            "jsonpath={.status.appliedRevision}",
        ],
        TIMEOUT,
        |out| out.trim() == head,
    )?;
    let text = std::fs::read_to_string(repo.join("app.yaml"))?;
    let (from, to) = if text.contains("replicas: 1\n") {
        (1, 2)
    } else {
        (2, 1)
    };
    std::fs::write(repo.join("app.yaml"), manifests(to, WEBTEST_IMAGE))?;
    git(
        repo,
        &[
            "-c",
            "user.name=cairn demo",
            "-c",
            "user.email=demo@cairn.invalid",
            "commit",
            "-q",
            "-am",
            &format!("web: {to} replicas"),
        ],
    )?;
    let started = std::time::Instant::now();
    git(repo, &["push", "-q", "origin", "main"])?;
    kubectl.wait_until(
        &[
            "get",
            "deploy",
            "-n",
            "demo",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        Duration::from_secs(120),
        |out| out.trim() == to.to_string(),
    )?;
    let took = started.elapsed();
    // The status object follows the apply: the new revision, healthy once its pods are.
    let head = git(repo, &["rev-parse", "HEAD"])?;
    kubectl.wait_until(
        &[
            "get",
            "gitops",
            "cairn",
            "-o",
            "jsonpath={.status.appliedRevision} {.status.health}",
        ],
        Duration::from_secs(300),
        |out| out.trim() == format!("{head} Healthy"),
    )?;
    let status = kubectl.run(&["get", "gitops", "cairn"])?;
    Ok(format!(
        "GitOps: a `git push` changing demo/web from {from} to {to} replicas was in the cluster {:.1} s later:\n{status}",
        took.as_secs_f64()
    ))
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
