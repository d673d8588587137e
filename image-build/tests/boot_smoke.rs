//! Boot smoke check (ignored by default; run with `--ignored --nocapture`):
//! builds a full image from a real kernel plus an initramfs whose static
//! `/init` prints a marker and powers off, then boots it with QEMU (TCG) and
//! OVMF, proving systemd-boot loads the UKI and the kernel reaches /init.
//!
//! Needs gcc with a static libc, qemu-system-x86_64, OVMF, systemd-boot-efi,
//! mksquashfs, objcopy, qemu-img and a kernel at `$CAIRN_SMOKE_KERNEL`
//! (default: the Debian 6.1 kernel unpacked under /tmp/kdeb). Set
//! `$CAIRN_SMOKE_ROOTFS` to squash a real directory into slot A and
//! `$CAIRN_SMOKE_LOG` to keep the serial log.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_image::assemble::{ImageInputs, assemble};
use cairn_image::cpio::CpioBuilder;

const MARKER: &str = "CAIRN-SMOKE: reached /init";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const TIMEOUT: Duration = Duration::from_secs(120);

const INIT_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/reboot.h>
int main(void) {
    printf("\nCAIRN-SMOKE: reached /init (pid %d)\n", (int)getpid());
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 1;
}
"#;

fn kernel() -> PathBuf {
    std::env::var_os("CAIRN_SMOKE_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/kdeb/x/boot/vmlinuz-6.1.0-56-amd64"))
}

fn build_init(dir: &Path) -> Vec<u8> {
    let src = dir.join("init.c");
    let bin = dir.join("init");
    std::fs::write(&src, INIT_C).unwrap();
    let st = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "gcc -static failed");
    std::fs::read(bin).unwrap()
}

#[test]
#[ignore = "boots QEMU (TCG); slow"]
fn image_boots_to_init_under_ovmf() {
    let kernel = kernel();
    if !kernel.exists() || !Path::new(OVMF_CODE).exists() {
        eprintln!("no kernel at {} or no OVMF; skipping", kernel.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut cpio = CpioBuilder::new(1_700_000_000);
    cpio.add_file("/init", 0o755, build_init(t.path())).unwrap();
    cpio.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
    // $CAIRN_SMOKE_ROOTFS squashes a real tree instead (to measure sizes).
    let root = std::env::var_os("CAIRN_SMOKE_ROOTFS").map_or_else(
        || {
            let root = t.path().join("root");
            std::fs::create_dir_all(root.join("etc")).unwrap();
            std::fs::write(root.join("etc/hostname"), b"cairn\n").unwrap();
            root
        },
        PathBuf::from,
    );

    let started = Instant::now();
    let out = assemble(
        &ImageInputs {
            kernel,
            initramfs: cpio.finish_gzip().unwrap(),
            cmdline: "console=ttyS0 cairn.slot=a panic=-1".into(),
            os_release: "ID=cairn\nNAME=cairn\nPRETTY_NAME=\"cairn smoke\"\n".into(),
            rootfs_dir: root,
            systemd_boot: "/usr/lib/systemd/boot/efi/systemd-bootx64.efi".into(),
            stub: "/usr/lib/systemd/boot/efi/linuxx64.efi.stub".into(),
            source_date_epoch: 1_700_000_000,
            name: "smoke".into(),
            slot_size_bytes: None,
        },
        &t.path().join("out"),
    )
    .unwrap();
    eprintln!("assembled in {:?}: {:?}", started.elapsed(), out.sizes);

    let vars = t.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=virtio",
            out.qcow2.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let boot = Instant::now();
    let mut seen = None;
    let mut log = Vec::new();
    while boot.elapsed() < TIMEOUT {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if seen.is_none() && line.contains(MARKER) {
                    seen = Some(boot.elapsed());
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Give QEMU a moment to exit after powering off; only our own child is
    // ever killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut exited = false;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !exited {
        child.kill().ok();
    }
    child.wait().ok();
    if let Some(path) = std::env::var_os("CAIRN_SMOKE_LOG") {
        std::fs::write(path, log.join("\n")).ok();
    }
    let tail = log[log.len().saturating_sub(40)..].join("\n");
    let at =
        seen.unwrap_or_else(|| panic!("marker not seen within {TIMEOUT:?}; serial tail:\n{tail}"));
    eprintln!(
        "reached /init after {at:?}; qemu exited by itself: {exited}; total {:?}",
        boot.elapsed()
    );
}
