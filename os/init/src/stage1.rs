//! Stage 1, from the initramfs: mount the kernel filesystems, load the drivers that
//! reveal the disk, find the active system slot by its GPT label, mount its squashfs,
//! switch root to it and exec the init from there (still PID 1).
//!
//! Staying on the initramfs is not an option: runc's pivot_root cannot work when /
//! is the initramfs.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};

use crate::block;
use crate::cmdline::Cmdline;
use crate::console::uptime;
use crate::fsutil::{kernel_release, mount_fs};
use crate::kmod::Modules;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const SYSROOT: &str = "/sysroot";
/// The init inside the system image.
pub const SYSTEM_INIT: &str = "/usr/bin/cairn-init";

/// Filesystem drivers have no modalias; load them by name.
const STAGE1_MODULES: &[&str] = &[
    "squashfs",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
];

/// True while / is the initramfs (ramfs or tmpfs).
pub fn is_initramfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            let t = s.filesystem_type().0;
            t == RAMFS_MAGIC || t == TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

pub fn run() -> Result<Infallible> {
    tracing::info!(
        event = "init_start",
        stage = "initramfs",
        "cairn-init starting"
    );
    crate::fsutil::mount_kernel_filesystems()?;

    let cmdline = Cmdline::read();
    crate::fatal::set_hold(cmdline.flag("cairn.hold"));
    let release = kernel_release()?;
    let mut modules = Modules::open(Path::new("/"), &release)?;
    let plugged = modules.coldplug();
    let named = modules.load_all(STAGE1_MODULES);
    tracing::info!(
        event = "modules_loaded",
        stage = "initramfs",
        coldplug = plugged,
        named,
        "drivers loaded"
    );

    let label = format!("CAIRN-{}", cmdline.slot().to_ascii_uppercase());
    let slot = block::wait_for_label(&label, Duration::from_secs(20))
        .with_context(|| format!("finding the system slot {label}"))?;
    mount_fs(
        &slot.dev().to_string_lossy(),
        SYSROOT,
        "squashfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )
    .with_context(|| {
        format!(
            "mounting the system image from {} ({label})",
            slot.dev().display()
        )
    })?;
    tracing::info!(event = "root_mounted", slot = %cmdline.slot(), device = %slot.dev().display(), "system image mounted");

    switch_root(SYSROOT)?;
    tracing::info!(event = "root_switched", slot = %cmdline.slot(), uptime_ms = uptime().as_millis() as u64, "switched to the system image");
    let init = CString::new(SYSTEM_INIT)?;
    let err = nix::unistd::execv(&init, std::slice::from_ref(&init)).unwrap_err();
    Err(err).with_context(|| format!("executing {SYSTEM_INIT} in the system image"))
}

/// Moves the kernel mounts into `new_root`, frees the initramfs, and makes
/// `new_root` the root (what busybox's switch_root does).
fn switch_root(new_root: &str) -> Result<()> {
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let target = format!("{new_root}{m}");
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("moving {m} to {target}"))?;
    }
    let root_dev = std::fs::metadata("/").context("stat /")?.dev();
    free_initramfs(Path::new("/"), root_dev);
    nix::unistd::chdir(new_root).with_context(|| format!("chdir {new_root}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    nix::unistd::chdir("/").context("chdir / in the new root")?;
    Ok(())
}

/// Deletes the initramfs' files (they would otherwise pin RAM forever), staying on
/// the initramfs' own device so nothing mounted below is touched.
fn free_initramfs(dir: &Path, root_dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        if meta.is_dir() {
            free_initramfs(&path, root_dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
