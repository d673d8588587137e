//! Boots the real cairn test image under QEMU (UEFI, TCG) and checks the
//! acceptance of the bootable-image issue: etcd ready, restart after SIGKILL,
//! durability across reboot and power-cut, orderly poweroff, and a garbled machine
//! config reported without killing PID 1.

use std::time::{Duration, Instant};

use cairn_e2e::{BOOT_TIMEOUT, Cairnctl, Etcd, fresh_disk, node_config, node_config_with, vm_slot};
use cairn_qemu::{Regex, Vm};

#[test]
fn boots_under_uefi_to_etcd_ready() {
    let Some(_one) = vm_slot() else { return };
    let disk = fresh_disk();
    let vm = Vm::boot(&node_config(), &disk).expect("boot");
    let switched = vm
        .wait_for_event("root_switched", &[], BOOT_TIMEOUT)
        .expect("stage 1 switches root");
    let system = vm
        .wait_for_event("init_start", &[("stage", "system")], BOOT_TIMEOUT)
        .expect("system stage");
    let net = vm
        .wait_for_event("network_ready", &[], BOOT_TIMEOUT)
        .expect("network via DHCP");
    let ready = vm
        .wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready");
    assert_eq!(
        net.field("address"),
        Some("10.0.2.15/24"),
        "QEMU's DHCP address: {}",
        net.text
    );
    eprintln!(
        "timeline: root switched {:.1}s, system init {:.1}s, network {:.1}s, etcd ready {:.1}s (QEMU start = 0)",
        vm.since_start(&switched).as_secs_f64(),
        vm.since_start(&system).as_secs_f64(),
        vm.since_start(&net).as_secs_f64(),
        vm.since_start(&ready).as_secs_f64()
    );
    // The service really answers: a write through the forward lands.
    Etcd::new(&vm)
        .put("/e2e/boot", "ok")
        .expect("etcd accepts a write");
    // etcd runs in its own cgroup v2 group, and the supervisor reports it ready.
    let started = vm
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.event() == Some("started") && l.field("service") == Some("etcd"))
        .expect("started line");
    let pid: i64 = started
        .field("pid")
        .expect("pid field")
        .parse()
        .expect("pid");
    let ctl = Cairnctl::new(&vm);
    ctl.wait_for_api(BOOT_TIMEOUT).expect("machine API up");
    let services = ctl.json(&["services"]).expect("cairnctl services");
    let etcd = services
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["name"] == "etcd")
        .expect("etcd listed")
        .clone();
    assert_eq!(etcd["state"], "ready", "{etcd}");
    assert_eq!(etcd["pid"].as_i64(), Some(pid), "{etcd}");
    // Memory is read from etcd's own cgroup v2 group (memory.current).
    assert!(
        etcd["memory_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{etcd}"
    );
    let version = ctl.json(&["version"]).expect("cairnctl version");
    let rss_kib = version["init_rss_bytes"].as_u64().expect("init_rss_bytes") / 1024;
    eprintln!("cairn-init resident memory: {rss_kib} KiB");
    assert!(
        rss_kib > 0 && rss_kib < 16 * 1024,
        "PID 1 uses {rss_kib} KiB"
    );
}

#[test]
fn etcd_killed_with_sigkill_is_back_within_5s() {
    let Some(_one) = vm_slot() else { return };
    let disk = fresh_disk();
    let mut vm = Vm::boot(&node_config(), &disk).expect("boot");
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready");
    let etcd = Etcd::new(&vm);
    etcd.put("/e2e/before-kill", "1")
        .expect("write before the kill");

    let ctl = Cairnctl::new(&vm);
    ctl.wait_for_api(BOOT_TIMEOUT).expect("machine API up");
    let t0 = Instant::now();
    ctl.run(&["service", "kill", "etcd", "--signal", "KILL"])
        .expect("kill through the machine API");
    let exited = vm
        .wait_for_event("exited", &[("service", "etcd")], Duration::from_secs(10))
        .expect("etcd exit seen");
    assert!(
        exited.text.contains("SIGKILL")
            || exited.text.contains("signal 9")
            || exited.text.contains("9"),
        "{}",
        exited.text
    );
    vm.wait_for_event("ready", &[("service", "etcd")], Duration::from_secs(30))
        .expect("etcd ready again");
    let back = t0.elapsed();
    eprintln!("etcd SIGKILL -> ready again in {:.2}s", back.as_secs_f64());
    assert!(
        back < Duration::from_secs(5),
        "etcd took {back:?} to come back"
    );
    assert_eq!(
        etcd.get("/e2e/before-kill")
            .expect("read after restart")
            .as_deref(),
        Some("1")
    );
    vm.kill();
}

#[test]
fn keys_survive_orderly_reboot_and_power_cut() {
    let Some(_one) = vm_slot() else { return };
    let disk = fresh_disk();
    let cfg = node_config();

    let vm = Vm::boot(&cfg, &disk).expect("first boot");
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready");
    Etcd::new(&vm)
        .put("/e2e/reboot", "kept")
        .expect("write before reboot");

    // Orderly reboot (Ctrl-Alt-Del reaches PID 1 as SIGINT); QEMU restarts the guest itself.
    vm.ctrl_alt_del().expect("ctrl-alt-del");
    vm.wait_for_event(
        "shutdown_start",
        &[("action", "reboot")],
        Duration::from_secs(30),
    )
    .expect("shutdown begins");
    vm.wait_for_event("stopped", &[("service", "etcd")], Duration::from_secs(30))
        .expect("etcd stopped in order");
    vm.wait_for_event("unmounted", &[("path", "/var")], Duration::from_secs(30))
        .expect("/var (DATA) unmounted cleanly");
    vm.wait_for_event(
        "shutdown_done",
        &[("action", "reboot")],
        Duration::from_secs(30),
    )
    .expect("shutdown completes");
    vm.wait_for_event("init_start", &[("stage", "system")], BOOT_TIMEOUT)
        .expect("second boot");
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready after reboot");
    let etcd = Etcd::new(&vm);
    assert_eq!(
        etcd.get("/e2e/reboot")
            .expect("read after reboot")
            .as_deref(),
        Some("kept")
    );

    // Power cut right after etcd acknowledged a write.
    etcd.put("/e2e/power-cut", "durable")
        .expect("acknowledged write");
    let mut vm = vm;
    vm.kill();
    drop(vm);

    let vm = Vm::boot(&cfg, &disk).expect("boot after power cut");
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready after power cut");
    let etcd = Etcd::new(&vm);
    assert_eq!(
        etcd.get("/e2e/power-cut")
            .expect("read after power cut")
            .as_deref(),
        Some("durable")
    );
    assert_eq!(
        etcd.get("/e2e/reboot").expect("older key").as_deref(),
        Some("kept")
    );
}

#[test]
fn orderly_poweroff_ends_qemu_within_30s() {
    let Some(_one) = vm_slot() else { return };
    let disk = fresh_disk();
    let mut vm = Vm::boot(&node_config(), &disk).expect("boot");
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready");
    let t0 = Instant::now();
    vm.powerdown().expect("ACPI power button");
    vm.wait_for_event(
        "shutdown_start",
        &[("action", "poweroff")],
        Duration::from_secs(30),
    )
    .expect("power button handled");
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .expect("QEMU exits on its own");
    eprintln!(
        "power button -> QEMU exited in {:.2}s ({status})",
        t0.elapsed().as_secs_f64()
    );
    assert!(status.success(), "QEMU exit status {status}");
    assert!(
        vm.console_tail(40).contains("shutdown_done"),
        "{}",
        vm.console_tail(40)
    );
}

#[test]
fn garbled_machine_config_is_reported_and_pid1_survives() {
    let Some(_one) = vm_slot() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = tmp.path().join("machine.yaml");
    std::fs::write(
        &config,
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostnme: node-1\n",
    )
    .expect("write config");
    let cfg = node_config_with(Some(&config), true);
    let disk = fresh_disk();
    let vm = Vm::boot(&cfg, &disk).expect("boot");
    let err = vm
        .wait_for_event("config_error", &[], BOOT_TIMEOUT)
        .expect("config error reported");
    let reason = err.field("error").unwrap_or_default().to_string();
    assert!(
        reason.contains("hostnme") && reason.contains("line 4"),
        "reason names the field and line: {}",
        err.text
    );
    vm.wait_for_event("fatal", &[], Duration::from_secs(10))
        .expect("boot stops with the reason");
    vm.wait_for_event("countdown", &[], Duration::from_secs(10))
        .expect("PID 1 alive, counting down");
    vm.wait_for_event("countdown", &[("seconds", "5")], Duration::from_secs(15))
        .expect("still alive seconds later");
    let console = String::from_utf8_lossy(&vm.console_raw()).into_owned();
    assert!(
        !console.contains("Kernel panic"),
        "PID 1 died: {}",
        vm.console_tail(30)
    );
    assert!(
        !Regex::new(r"event=.?ready.? service=etcd")
            .expect("regex")
            .is_match(&console),
        "etcd must not start on a bad config"
    );
}

#[test]
fn static_network_and_config_from_fw_cfg_are_kept_as_last_good() {
    let Some(_one) = vm_slot() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = tmp.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: cairn\n  network:\n    dhcp: false\n    address: 10.0.2.15/24\n    gateway: 10.0.2.2\n",
    )
    .expect("write config");
    // An invalid CIDR on line 7.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: cairn\ncluster:\n  name: cairn\n  podCidr: 10.244.0.0/33\n",
    )
    .expect("write config");
    let with = |path: &std::path::Path| node_config_with(Some(path), true);
    let disk = fresh_disk();

    // 1. A valid config through fw_cfg: static address, its hostname, etcd up.
    let mut vm = Vm::boot(&with(&good), &disk).expect("boot with config");
    let loaded = vm
        .wait_for_event("config_loaded", &[("source", "fw_cfg")], BOOT_TIMEOUT)
        .expect("config accepted");
    assert_eq!(loaded.field("hostname"), Some("cairn"), "{}", loaded.text);
    let machine_id = loaded
        .field("machine_id")
        .expect("machine_id field")
        .to_string();
    let net = vm
        .wait_for_event("network_ready", &[], BOOT_TIMEOUT)
        .expect("static network");
    assert_eq!(
        (net.field("address"), net.field("gateway")),
        (Some("10.0.2.15/24"), Some("10.0.2.2")),
        "{}",
        net.text
    );
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd ready");
    vm.kill();
    drop(vm);

    // 2. No config given: the last good one comes from STATE.
    let mut vm = Vm::boot(&node_config_with(None, true), &disk).expect("boot without config");
    let loaded = vm
        .wait_for_event("config_loaded", &[("source", "state")], BOOT_TIMEOUT)
        .expect("last good config");
    assert_eq!(loaded.field("hostname"), Some("cairn"), "{}", loaded.text);
    assert_eq!(
        loaded.field("machine_id"),
        Some(machine_id.as_str()),
        "machine-id is generated once and kept"
    );
    vm.kill();
    drop(vm);

    // 3. A config with an invalid CIDR is refused, naming the field and line; the
    //    node keeps the last good one and runs.
    let vm = Vm::boot(&with(&bad), &disk).expect("boot with an invalid config");
    let err = vm
        .wait_for_event("config_error", &[], BOOT_TIMEOUT)
        .expect("refused");
    let reason = err.field("error").unwrap_or_default();
    assert!(
        reason.contains("cluster.podCidr") && reason.contains("/33") && reason.contains("line"),
        "{}",
        err.text
    );
    vm.wait_for_event(
        "config_fallback",
        &[("source", "state")],
        Duration::from_secs(10),
    )
    .expect("falls back");
    let loaded = vm
        .wait_for_event(
            "config_loaded",
            &[("source", "state")],
            Duration::from_secs(10),
        )
        .expect("last good config");
    assert_eq!(loaded.field("hostname"), Some("cairn"), "{}", loaded.text);
    vm.wait_for_event("ready", &[("service", "etcd")], BOOT_TIMEOUT)
        .expect("etcd still starts");
}

/// A node whose secrets bundle is missing, or made for another node, says why on
/// the console, starts no Kubernetes service, and PID 1 stays up and answers.
#[test]
fn missing_or_foreign_secrets_are_reported_and_pid1_stays_up() {
    let Some(_one) = vm_slot() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");

    // 1. No bundle anywhere.
    let disk = fresh_disk();
    let vm = Vm::boot(
        &node_config_with(Some(&cairn_e2e::node_files().machine_config), false),
        &disk,
    )
    .expect("boot without secrets");
    let err = vm
        .wait_for_event("kubernetes_not_started", &[], BOOT_TIMEOUT)
        .expect("reported");
    let reason = err.field("error").unwrap_or_default();
    assert!(
        reason.contains("no secrets bundle") && reason.contains("opt/cairn/secrets"),
        "{}",
        err.text
    );
    // PID 1 stays up: no panic, no reboot, and no machine API without a bundle.
    std::thread::sleep(Duration::from_secs(3));
    let lines = vm.lines();
    assert!(
        !lines.iter().any(|l| l.text.contains("Kernel panic")),
        "{}",
        vm.console_tail(20)
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.event() == Some("root_switched"))
            .count(),
        1,
        "the node rebooted"
    );
    drop(vm);

    // 2. The bundle of node `cairn` on a machine configured as `node-b`.
    let other = tmp.path().join("node-b.yaml");
    std::fs::write(
        &other,
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: node-b\n",
    )
    .expect("write config");
    let disk = fresh_disk();
    let vm = Vm::boot(&node_config_with(Some(&other), true), &disk).expect("boot");
    let err = vm
        .wait_for_event("kubernetes_not_started", &[], BOOT_TIMEOUT)
        .expect("reported");
    let reason = err.field("error").unwrap_or_default();
    assert!(
        reason.contains("node-b") && reason.contains("pki/apiserver.crt"),
        "the error names the node and the certificate: {}",
        err.text
    );
    std::thread::sleep(Duration::from_secs(3));
    // PID 1 answers through the machine API (which needs only the bundle), and no
    // Kubernetes service was registered.
    let ctl = Cairnctl::new(&vm);
    ctl.wait_for_api(BOOT_TIMEOUT).expect("machine API up");
    let services = ctl.services().expect("services");
    assert!(
        services.iter().any(|(n, s)| n == "apid" && s == "ready")
            && !services.iter().any(|(n, _)| n == "kube-apiserver"),
        "nothing but the API server started: {services:?}"
    );
}
