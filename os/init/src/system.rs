//! The system stage: PID 1 on the real (squashfs) root. Prepares the machine in a
//! fixed order, then hands the services to the supervisor and waits for a reason to
//! shut down. The order, in one place:
//!
//! 1. kernel filesystems (moved here by stage 1), /dev/pts, /dev/shm, /tmp, cgroup2
//!    with controllers enabled, `/` made rshared;
//! 2. drivers (coldplug + the modules the node needs), Ctrl-Alt-Del to SIGINT;
//! 3. STATE (identity, last good config) and DATA (grown to the disk, formatted on
//!    first boot, mounted at /var);
//! 4. machine-id, machine config, hostname, sysctls;
//! 5. the async part: signals, reaper, supervisor, network, services.

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_machine_config::MachineConfig;
use cairn_supervisor::{EventKind, Supervisor, SupervisorConfig};
use nix::mount::{MsFlags, mount};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::block::{self, FsKind};
use crate::cmdline::Cmdline;
use crate::config;
use crate::console::uptime;
use crate::fsutil::{kernel_release, mount_fs, mount_once, write};
use crate::gpt_grow;
use crate::kmod::Modules;
use crate::shutdown::{self, Action};
use crate::tasks::{Lifetime, Tasks};

/// Modules with no modalias to be coldplugged by, needed on every node.
const SYSTEM_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
    "evdev",
    "button",
    "qemu_fw_cfg",
    // containerd's snapshotter, the pod network (veth pairs on a bridge, bridged
    // traffic through netfilter), kube-proxy's nftables and conntrack. Other
    // netfilter modules load on demand through `/usr/sbin/modprobe`.
    "overlay",
    "veth",
    "bridge",
    "br_netfilter",
    "nf_conntrack",
    "nf_tables",
];

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const SERVICES_CGROUP: &str = "/sys/fs/cgroup/cairn";

/// What the logind shim answers for `InhibitDelayMaxUSec`: above kubelet's
/// `shutdownGracePeriod` (30 s), or kubelet would try to reconfigure logind.
const LOGIND_INHIBIT_DELAY_MAX: Duration = Duration::from_secs(40);

const DEFAULT_SYSCTLS: &[(&str, &str)] = &[
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("fs.inotify.max_user_watches", "524288"),
    ("fs.inotify.max_user_instances", "8192"),
    ("vm.overcommit_memory", "1"),
    // Bridged pod traffic passes netfilter, so Service rules apply to pod-to-pod
    // traffic on the node (needs br_netfilter, loaded before).
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    // The kernel's on-demand module loader: cairn-init answering as modprobe.
    ("kernel.modprobe", "/usr/sbin/modprobe"),
];

pub fn run() -> Result<Infallible> {
    tracing::info!(
        event = "init_start",
        stage = "system",
        uptime_ms = uptime().as_millis() as u64,
        "cairn-init on the system image"
    );
    let cmdline = Cmdline::read();
    crate::fatal::set_hold(cmdline.flag("cairn.hold"));

    base_mounts()?;
    let release = kernel_release()?;
    let mut modules = Modules::open(Path::new("/"), &release)?;
    let plugged = modules.coldplug();
    let named = modules.load_all(SYSTEM_MODULES);
    tracing::info!(
        event = "modules_loaded",
        stage = "system",
        coldplug = plugged,
        named,
        "drivers loaded"
    );
    // Ctrl-Alt-Del now sends SIGINT to PID 1 instead of rebooting at once.
    nix::sys::reboot::set_cad_enabled(false)
        .context("disabling the immediate Ctrl-Alt-Del reboot")?;

    prepare_state()?;
    prepare_data()?;
    let machine_id = machine_id()?;
    let (cfg, source) = config::load(&config::Locations::node())?;
    crate::fatal::set_hold(cfg.machine.debug.hold_on_fatal);
    tracing::info!(event = "config_loaded", source = %source, hostname = %cfg.machine.hostname, machine_id = %machine_id, "machine config accepted");
    identity(&cfg)?;
    sysctls(&cfg);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(supervise(cfg))
}

fn base_mounts() -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    // Normally moved here by stage 1; mounted fresh when booted without an initramfs.
    crate::fsutil::mount_kernel_filesystems()?;
    mount_once(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666,gid=5"),
    )?;
    mount_once(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_once(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_once("cgroup2", CGROUP_ROOT, "cgroup2", nodev, Some("nsdelegate"))?;
    enable_controllers(Path::new(CGROUP_ROOT))?;
    std::fs::create_dir_all(SERVICES_CGROUP)
        .with_context(|| format!("creating {SERVICES_CGROUP}"))?;
    enable_controllers(Path::new(SERVICES_CGROUP))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None::<&str>,
    )
    .context("making / rshared")?;
    for d in ["/run/cairn", "/run/lock"] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
    }
    Ok(())
}

/// Enables every available controller for the children of `dir`.
fn enable_controllers(dir: &Path) -> Result<()> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .with_context(|| format!("reading {}/cgroup.controllers", dir.display()))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(dir.join("cgroup.subtree_control"), wanted.join(" ")).with_context(|| {
        format!(
            "enabling cgroup controllers {} in {}",
            available.trim(),
            dir.display()
        )
    })
}

fn mkfs(dev: &Path, label: &str) -> Result<()> {
    let start = std::time::Instant::now();
    let out = Command::new("/usr/sbin/mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            label,
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(dev)
        .output()
        .context("running mke2fs")?;
    if !out.status.success() {
        bail!(
            "mke2fs on {} ({label}) failed: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!(event = "formatted", partition = label, device = %dev.display(), elapsed_ms = start.elapsed().as_millis() as u64, "filesystem created");
    Ok(())
}

fn mount_ext4(dev: &Path, target: &str, label: &str) -> Result<()> {
    mount_fs(
        &dev.to_string_lossy(),
        target,
        "ext4",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
    .with_context(|| format!("mounting the {label} partition"))
}

/// STATE holds what makes this machine itself: machine-id, the last good config.
fn prepare_state() -> Result<()> {
    let p = block::wait_for_label("STATE", Duration::from_secs(10))?;
    if block::probe_fs(&p.dev())? != FsKind::Ext4 {
        mkfs(&p.dev(), "STATE")?;
    }
    mount_ext4(&p.dev(), "/state", "STATE")
}

/// DATA is /var: grown to fill the disk and formatted on first boot.
fn prepare_data() -> Result<()> {
    let p = block::wait_for_label("DATA", Duration::from_secs(10))?;
    let grown = grow(&p).unwrap_or_else(|e| {
        tracing::warn!(event = "grow_failed", partition = "DATA", error = ?format!("{e:#}"), "DATA keeps its size");
        false
    });
    let fresh = block::probe_fs(&p.dev())? != FsKind::Ext4;
    if fresh {
        mkfs(&p.dev(), "DATA")?;
    }
    mount_ext4(&p.dev(), "/var", "DATA")?;
    if grown && !fresh {
        let out = Command::new("/usr/sbin/resize2fs")
            .arg(p.dev())
            .output()
            .context("running resize2fs")?;
        if !out.status.success() {
            tracing::warn!(event = "resize_failed", error = ?String::from_utf8_lossy(&out.stderr).trim(), "DATA filesystem not grown");
        }
    }
    for d in ["/var/lib", "/var/log", "/var/log/cairn", "/var/lib/cairn"] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
    }
    // Programs still name /var/run (godbus's default system bus address, for one).
    if std::fs::symlink_metadata("/var/run").is_err() {
        std::os::unix::fs::symlink("../run", "/var/run").context("linking /var/run to /run")?;
    }
    Ok(())
}

fn grow(p: &block::Partition) -> Result<bool> {
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{}/size", p.disk))
        .context("reading the disk size")?
        .trim()
        .parse()
        .context("parsing the disk size")?;
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p.disk_dev())
        .with_context(|| format!("opening {}", p.disk_dev().display()))?;
    match gpt_grow::grow_last_partition(&mut disk, sectors, p.number)? {
        None => Ok(false),
        Some(g) => {
            disk.sync_all().context("flushing the partition table")?;
            gpt_grow::kernel_resize_partition(&disk, p.number, g.first_lba, g.new_last_lba)?;
            tracing::info!(
                event = "partition_grown",
                partition = "DATA",
                from_mib = (g.old_last_lba - g.first_lba + 1) / 2048,
                to_mib = (g.new_last_lba - g.first_lba + 1) / 2048,
                "DATA grown to fill the disk"
            );
            Ok(true)
        }
    }
}

/// The machine's identity: generated once, kept on STATE.
fn machine_id() -> Result<String> {
    let kept = Path::new("/state/machine-id");
    let id = match std::fs::read_to_string(kept) {
        Ok(s) if s.trim().len() == 32 && s.trim().chars().all(|c| c.is_ascii_hexdigit()) => {
            s.trim().to_string()
        }
        _ => {
            let mut bytes = [0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .context("reading /dev/urandom")?;
            let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            crate::fsutil::write_durable(kept, format!("{id}\n"))?;
            id
        }
    };
    write("/run/cairn/machine-id", format!("{id}\n"))?;
    Ok(id)
}

fn identity(cfg: &MachineConfig) -> Result<()> {
    let host = cfg.machine.hostname.as_str();
    nix::unistd::sethostname(host).with_context(|| format!("setting the hostname to {host}"))?;
    write("/run/cairn/hostname", format!("{host}\n"))?;
    write(
        "/run/cairn/hosts",
        format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {host}\n"),
    )?;
    if !Path::new("/run/cairn/resolv.conf").exists() {
        write("/run/cairn/resolv.conf", "")?;
    }
    Ok(())
}

fn sysctls(cfg: &MachineConfig) {
    let extra = cfg
        .machine
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    for (key, value) in DEFAULT_SYSCTLS.iter().copied().chain(extra) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!(event = "sysctl_failed", key, value, error = ?e.to_string(), "sysctl not applied");
        }
    }
}

/// The long-running part: everything async, until a shutdown request.
async fn supervise(cfg: MachineConfig) -> Result<Infallible> {
    // Every long-lived task is watched: a panic or an unexpected end of one ends
    // in fatal::halt below instead of a PID 1 that silently lacks a part.
    let (tasks, mut failed) = Tasks::new();
    let (supervisor, actor) = cairn_supervisor::spawn_watched(SupervisorConfig {
        log_dir: Some("/var/log/cairn".into()),
        cgroup_root: Some(SERVICES_CGROUP.into()),
    });
    tasks.watch("supervisor", actor, Lifetime::Forever);
    tasks.watch(
        "reaper",
        cairn_supervisor::spawn_reaper(supervisor.clone()),
        Lifetime::Forever,
    );
    log_milestones(&tasks, &supervisor);

    let (power_tx, mut power_rx) = mpsc::unbounded_channel();
    let buttons = crate::power::watch(power_tx);
    tracing::debug!(buttons, "power buttons watched");
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigpwr =
        signal(SignalKind::from_raw(libc::SIGPWR)).context("installing the SIGPWR handler")?;
    let mut sigusr2 =
        signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?;

    let (address_tx, address_rx) = tokio::sync::watch::channel(None);
    let net_cfg = cfg.machine.network.clone();
    let host = cfg.machine.hostname.to_string();
    let service_cidr = cfg.cluster.service_cidr;
    tasks.until_done("network", async move {
        // An appliance keeps trying: a cable plugged in later or a DHCP server that
        // comes up after us must still bring the node onto the network.
        let mut delay = Duration::from_secs(1);
        loop {
            match crate::net::configure(&net_cfg, &host).await {
                Ok(l) => {
                    tracing::info!(
                        event = "network_ready",
                        interface = %l.interface,
                        address = %format!("{}/{}", l.address, l.prefix),
                        gateway = %l.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        "network configured"
                    );
                    if l.gateway.is_none() {
                        // Without a default route the kernel refuses connections to
                        // Service addresses before kube-proxy's rules can rewrite
                        // them; route the Service CIDR out of the uplink.
                        let svc = service_cidr;
                        match crate::net::ifconfig::add_route(
                            &l.interface,
                            svc.network(),
                            svc.prefix(),
                            None,
                        ) {
                            Ok(()) => {
                                tracing::info!(event = "service_route", cidr = %svc, interface = %l.interface, "no default gateway: Service CIDR routed on the uplink")
                            }
                            Err(e) => {
                                tracing::warn!(event = "service_route_failed", error = ?format!("{e:#}"), "Service addresses unreachable from the node")
                            }
                        }
                    }
                    // For the machine API's node info.
                    if let Err(e) = write("/run/cairn/node-ip", format!("{}\n", l.address)) {
                        tracing::warn!(error = ?format!("{e:#}"), "could not record the node address");
                    }
                    let _ = address_tx.send(Some(l.address));
                    return;
                }
                Err(e) => {
                    tracing::error!(event = "network_error", error = ?format!("{e:#}"), retry_s = delay.as_secs(), "network not configured; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    });

    // kubelet's graceful node shutdown talks to logind on the system bus; the init
    // plays both (see `cairn_logind`), and asks kubelet to drain pods at shutdown.
    let logind = match cairn_logind::serve(cairn_logind::Config {
        socket: cairn_logind::DEFAULT_SOCKET.into(),
        inhibit_delay_max: LOGIND_INHIBIT_DELAY_MAX,
    })
    .await
    {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(event = "logind_failed", error = ?e.to_string(), "no logind shim: pods will not be drained at shutdown");
            None
        }
    };

    // The machine API server asks PID 1 for what only it can do (services, logs,
    // reboot) on a root-only socket; its power requests join the signals below.
    let (control_power_tx, mut control_power_rx) = mpsc::unbounded_channel();
    match cairn_control::serve(
        cairn_control::ServeConfig {
            socket: cairn_control::SOCKET.into(),
            cgroup_root: Some(SERVICES_CGROUP.into()),
        },
        supervisor.clone(),
        control_power_tx,
    ) {
        Ok(accept_loop) => tasks.watch("control socket", accept_loop, Lifetime::Forever),
        Err(e) => {
            tracing::error!(event = "control_socket_failed", socket = cairn_control::SOCKET, error = ?e.to_string(), "no control socket: the machine API cannot manage this node");
        }
    }

    let secrets = crate::node::take_secrets(
        &Path::new(crate::config::FW_CFG_DIR)
            .join(crate::node::SECRETS_FW_CFG)
            .join("raw"),
        Path::new(cairn_services::SECRETS_DIR),
    );
    if secrets.is_ok() {
        let apid = cairn_services::apid::spec(&cairn_services::Paths::node());
        if let Err(e) = supervisor.add(vec![apid]).await {
            tracing::error!(event = "apid_failed", error = ?e.to_string(), "the machine API server was not registered");
        }
    }
    tasks.until_done(
        "node bring-up",
        crate::node::run(
            cfg.clone(),
            supervisor.clone(),
            tasks.clone(),
            secrets,
            address_rx,
        ),
    );

    let action = tokio::select! {
        _ = sigint.recv() => Action::Reboot,
        _ = sigterm.recv() => Action::Reboot,
        _ = sigpwr.recv() => Action::Poweroff,
        _ = sigusr2.recv() => Action::Poweroff,
        _ = power_rx.recv() => Action::Poweroff,
        Some(requested) = control_power_rx.recv() => match requested {
            cairn_control::PowerAction::Reboot => Action::Reboot,
            cairn_control::PowerAction::Poweroff => Action::Poweroff,
        },
        Some(reason) = failed.recv() => crate::fatal::halt(&reason),
    };
    shutdown::run(action, &supervisor, logind.as_ref()).await
}

/// Prints a boot-timeline line the first time each service becomes ready (after
/// a restart of this task, the first time since then).
fn log_milestones(tasks: &Tasks, supervisor: &Supervisor) {
    let supervisor = supervisor.clone();
    tasks.restarting("milestones", move || {
        let mut events = supervisor.subscribe();
        async move {
            let mut seen = std::collections::HashSet::new();
            loop {
            match events.recv().await {
                Ok(e) => {
                    if matches!(e.kind, EventKind::Ready) && seen.insert(e.service.clone()) {
                        tracing::info!(event = "milestone", service = %e.service, uptime_ms = uptime().as_millis() as u64, "first ready");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        }
    });
}
