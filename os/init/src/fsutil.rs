//! Small filesystem helpers whose errors name the path and the operation.

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};

/// mount(2) with an error that says what was mounted where.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating mount point {target}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} {source} on {target}"))
}

/// Mounts unless something is already mounted there (after switch-root the
/// kernel filesystems moved along with us).
pub fn mount_once(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    if is_mountpoint(target) {
        return Ok(());
    }
    mount_fs(source, target, fstype, flags, data)
}

/// The kernel filesystems both stages need: /proc, /sys, devtmpfs on /dev and a
/// tmpfs /run. Already-mounted ones are left alone (after switch-root they moved
/// along with us).
pub fn mount_kernel_filesystems() -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_once("proc", "/proc", "proc", nodev, None)?;
    mount_once("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_once(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_once(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
}

/// True if `path` is a mount point (its device differs from its parent's, or it is listed in /proc/self/mountinfo).
pub fn is_mountpoint(path: &str) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<()> {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a file so that it survives a power cut right after this returns: a
/// temporary file is written and fsynced, renamed over the target, and the
/// directory is fsynced. For STATE (identity, last good config).
pub fn write_durable(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<()> {
    let path = path.as_ref();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    cairn_machine_config::write_durable(path, contents.as_ref())
        .with_context(|| format!("writing {} durably", path.display()))
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_replaces_atomically() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("state/machine-id");
        write_durable(&p, "a\n").expect("first");
        write_durable(&p, "b\n").expect("second");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "b\n");
        assert!(!p.with_extension("tmp").exists());
    }
}
