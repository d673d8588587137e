//! Real QEMU boots that need no cairn image: OVMF alone, a Debian kernel alone,
//! and that kernel with a tiny test init (tests/testinit.c, built with gcc).
//! Tests skip (with a note on stderr) when QEMU, OVMF, the kernel or gcc/cpio
//! are missing. The kernel is `$CAIRN_TEST_KERNEL`, else the first of a few
//! known paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_qemu::{DirectKernel, Disk, Error, Regex, Vm, VmConfig, ovmf_available, qemu_available};

/// TCG boots are CPU-bound on a small machine: run them one at a time so the
/// timings printed are meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn re(s: &str) -> Regex {
    Regex::new(s).expect("test regex")
}

fn pid_alive(pid: u32) -> bool {
    // a reaped process has no /proc entry; a zombie would show state Z
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

fn test_kernel() -> Option<PathBuf> {
    if let Ok(k) = std::env::var("CAIRN_TEST_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let candidates = ["/tmp/kdeb/x/boot/vmlinuz-6.1.0-56-amd64"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .filter(|p| std::fs::File::open(p).is_ok())
                .collect();
            found.sort();
            found.pop()
        })
}

macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            let skip_reason = format!("SKIPPED: {}", $why);
            assert!(
                std::env::var_os("CI").is_none(),
                "under CI every test must run; missing: {skip_reason}"
            );
            eprintln!("SKIPPED: {}", $why);
            return;
        }
    };
}

#[test]
fn ovmf_serial_qmp_timeout_kill_and_drop() {
    require!(
        qemu_available(),
        "qemu-system-x86_64/qemu-img not available"
    );
    require!(ovmf_available(), "OVMF firmware not found");
    let _g = serial();

    let disk = Disk::blank("64M").expect("blank disk");
    let cfg = VmConfig {
        memory_mib: 512,
        cpus: 1,
        forwards: vec![22],
        ..VmConfig::default()
    };
    let mut vm = Vm::boot(&cfg, &disk).expect("boot OVMF");
    let pid = vm.pid();
    assert!(pid_alive(pid));
    assert_ne!(vm.host_port(22), 0);

    let status = vm
        .qmp("query-status", serde_json::Value::Null)
        .expect("query-status");
    assert_eq!(status["status"], "running", "{status}");

    // OVMF tries the (empty) disk and the NIC and says so on the serial console
    let line = vm
        .wait_for_line(
            &re(r"BdsDxe: failed to load Boot\d+"),
            Duration::from_secs(120),
        )
        .expect("OVMF boot manager line");
    eprintln!(
        "TIMING OVMF first BdsDxe line after {:?}: {}",
        vm.since_start(&line),
        line.text
    );
    assert!(
        !line.text.contains('\x1b'),
        "escape sequences are stripped: {:?}",
        line.text
    );

    // a pattern that never shows up times out with the console tail
    let t0 = Instant::now();
    let err = vm
        .wait_for_line(&re("no-such-line-xyzzy"), Duration::from_secs(2))
        .expect_err("must time out");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-line-xyzzy"), "{msg}");
    assert!(msg.contains("2s"), "{msg}");
    assert!(
        msg.contains("BdsDxe"),
        "error carries the console tail: {msg}"
    );

    // the cursor moved past the BdsDxe line; a fresh cursor finds it again
    vm.set_cursor(0);
    let again = vm
        .wait_for_line(
            &re(r"BdsDxe: failed to load Boot\d+"),
            Duration::from_secs(1),
        )
        .expect("rewound");
    assert_eq!(again.index, line.index);

    // the console went to the log file too
    let log = std::fs::read_to_string(vm.console_log_path()).expect("console log");
    assert!(log.contains("BdsDxe"));
    assert_eq!(vm.console_log_path(), disk.dir().join("console-1.log"));

    // the power button is accepted (firmware ignores it); kill ends QEMU
    vm.powerdown().expect("system_powerdown");
    vm.ctrl_alt_del().expect("send-key");
    vm.kill();
    assert!(!pid_alive(pid), "qemu {pid} still alive after kill");
    assert!(vm.try_exit_status().is_some());
    drop(vm);

    // the same disk boots again (second console log); Drop reaps QEMU
    let vm = Vm::boot(&cfg, &disk).expect("second boot");
    let pid2 = vm.pid();
    assert_eq!(disk.boots(), 2);
    assert_eq!(vm.console_log_path(), disk.dir().join("console-2.log"));
    vm.qmp("query-status", serde_json::Value::Null)
        .expect("query-status 2");
    drop(vm);
    assert!(!pid_alive(pid2), "qemu {pid2} still alive after drop");

    // QMP quit: QEMU exits cleanly
    let mut vm = Vm::boot(&cfg, &disk).expect("third boot");
    let pid3 = vm.pid();
    let status = vm.quit().expect("quit");
    assert!(status.success(), "{status}");
    assert!(!pid_alive(pid3));
}

#[test]
fn direct_kernel_boot_panics_and_exits() {
    require!(qemu_available(), "qemu-system-x86_64 not available");
    let Some(kernel) = test_kernel() else {
        let skip_reason = "SKIPPED: no kernel (set CAIRN_TEST_KERNEL)";
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI every test must run; missing: {skip_reason}"
        );
        eprintln!("SKIPPED: no kernel (set CAIRN_TEST_KERNEL)");
        return;
    };
    let _g = serial();
    let cfg = VmConfig {
        memory_mib: 512,
        cpus: 1,
        uefi: false,
        network: false,
        kernel: Some(DirectKernel {
            kernel,
            initrd: None,
            cmdline: "console=ttyS0 panic=-1".into(),
        }),
        extra_args: vec!["-no-reboot".into()],
        ..VmConfig::default()
    };
    let mut vm = Vm::boot_without_disk(&cfg).expect("boot kernel");
    let lv = vm
        .wait_for_line(&re("Linux version"), Duration::from_secs(60))
        .expect("Linux version");
    eprintln!(
        "TIMING kernel 'Linux version' after {:?}",
        vm.since_start(&lv)
    );
    // the kernel echoes its command line; the lenient parser makes fields of it
    let cl = vm
        .wait_for_match(
            "kernel command line with panic=-1",
            Duration::from_secs(30),
            |l| l.text.contains("Command line:") && l.field("panic") == Some("-1"),
        )
        .expect("kernel command line parsed into fields");
    assert_eq!(cl.field("console"), Some("ttyS0"));
    let panic = vm
        .wait_for_line(&re("Kernel panic"), Duration::from_secs(120))
        .expect("panic");
    eprintln!(
        "TIMING kernel panic (no root/init) after {:?}: {}",
        vm.since_start(&panic),
        panic.text
    );
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .expect("qemu exits after panic with -no-reboot");
    eprintln!("qemu exit status after panic: {status}");
    // waiting on a closed console fails at once, not after the timeout
    let t0 = Instant::now();
    let err = vm
        .wait_for_line(&re("never"), Duration::from_secs(30))
        .expect_err("closed");
    assert!(matches!(err, Error::Exited { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

fn build_test_initrd(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testinit.c");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).ok()?;
    let ok = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(root.join("init"))
        .arg(&src)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return None;
    }
    let initrd = dir.join("initrd.cpio");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && echo init | cpio --quiet -o -H newc > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(initrd)
}

#[test]
fn test_init_events_reboot_and_poweroff() {
    require!(qemu_available(), "qemu-system-x86_64 not available");
    let Some(kernel) = test_kernel() else {
        let skip_reason = "SKIPPED: no kernel (set CAIRN_TEST_KERNEL)";
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI every test must run; missing: {skip_reason}"
        );
        eprintln!("SKIPPED: no kernel (set CAIRN_TEST_KERNEL)");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(initrd) = build_test_initrd(tmp.path()) else {
        let skip_reason = "SKIPPED: could not build the test initrd (gcc -static, cpio)";
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI every test must run; missing: {skip_reason}"
        );
        eprintln!("SKIPPED: could not build the test initrd (gcc -static, cpio)");
        return;
    };
    let _g = serial();
    let cfg = VmConfig {
        memory_mib: 512,
        cpus: 1,
        uefi: false,
        network: false,
        kernel: Some(DirectKernel {
            kernel,
            initrd: Some(initrd),
            cmdline: "console=ttyS0 quiet panic=-1 testmode=interactive".into(),
        }),
        ..VmConfig::default()
    };
    let mut vm = Vm::boot_without_disk(&cfg).expect("boot");
    let ready = vm
        .wait_for_event("ready", &[("mode", "interactive")], Duration::from_secs(90))
        .expect("ready");
    eprintln!(
        "TIMING test init ready after {:?}: {}",
        vm.since_start(&ready),
        ready.text
    );
    assert_eq!(ready.field("msg"), Some("hello \"world\""));
    assert_eq!(ready.field("pid"), Some("1"));

    // ctrl-alt-del: init reboots; the next boot shows on the same console
    vm.skip_to_end();
    let t0 = Instant::now();
    vm.ctrl_alt_del().expect("ctrl-alt-del");
    vm.wait_for_event("cad", &[], Duration::from_secs(30))
        .expect("init saw ctrl-alt-del");
    let ready2 = vm
        .wait_for_event("ready", &[], Duration::from_secs(90))
        .expect("ready after reboot");
    assert!(ready2.index > ready.index);
    eprintln!("TIMING reboot (ctrl-alt-del to ready) {:?}", t0.elapsed());

    // console input: the init powers off, QEMU exits
    vm.send_console(b"poweroff\n").expect("type on console");
    vm.wait_for_event("poweroff", &[], Duration::from_secs(30))
        .expect("poweroff event");
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .expect("qemu exits on guest poweroff");
    assert!(status.success(), "{status}");
}
