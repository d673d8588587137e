//! Block devices as the kernel shows them in /sys/class/block: find a partition by
//! its GPT label (the kernel exposes it as `PARTNAME` in the uevent file), its disk,
//! and whether it already holds a filesystem.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A partition found by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// e.g. `vda3`
    pub name: String,
    /// e.g. `vda`
    pub disk: String,
    /// 1-based partition number.
    pub number: u32,
    pub label: String,
}

impl Partition {
    pub fn dev(&self) -> PathBuf {
        PathBuf::from("/dev").join(&self.name)
    }
    pub fn disk_dev(&self) -> PathBuf {
        PathBuf::from("/dev").join(&self.disk)
    }
}

/// Parses a uevent file's `KEY=value` lines.
pub fn uevent_value<'a>(uevent: &'a str, key: &str) -> Option<&'a str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Scans `sys_block` (normally /sys/class/block) for a partition labelled `label`.
pub fn find_by_label(sys_block: &Path, label: &str) -> Result<Option<Partition>> {
    let entries =
        std::fs::read_dir(sys_block).with_context(|| format!("listing {}", sys_block.display()))?;
    let mut found = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(uevent) = std::fs::read_to_string(dir.join("uevent")) else {
            continue;
        };
        if uevent_value(&uevent, "DEVTYPE") != Some("partition")
            || uevent_value(&uevent, "PARTNAME") != Some(label)
        {
            continue;
        }
        let name = uevent_value(&uevent, "DEVNAME")
            .unwrap_or_default()
            .to_string();
        let number = uevent_value(&uevent, "PARTN")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // The partition's sysfs directory lives inside its disk's directory.
        let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        let disk = real
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push(Partition {
            name,
            disk,
            number,
            label: label.to_string(),
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    if found.len() > 1 {
        bail!(
            "more than one partition is labelled {label}: {} — remove the other disk or relabel it",
            found
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(found.pop())
}

/// Waits (polling) for a labelled partition to appear: disks are probed asynchronously.
pub fn wait_for_label(label: &str, timeout: Duration) -> Result<Partition> {
    let start = Instant::now();
    loop {
        if let Some(p) = find_by_label(Path::new("/sys/class/block"), label)?
            && p.dev().exists()
        {
            return Ok(p);
        }
        if start.elapsed() > timeout {
            bail!(
                "no partition labelled {label} appeared within {} s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the first bytes of a device say it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Squashfs,
    Unknown,
}

pub fn probe_fs(dev: &Path) -> Result<FsKind> {
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut head = [0u8; 4];
    f.read_exact(&mut head)
        .with_context(|| format!("reading {}", dev.display()))?;
    if &head == b"hsqs" {
        return Ok(FsKind::Squashfs);
    }
    let mut magic = [0u8; 2];
    f.seek(SeekFrom::Start(1024 + 0x38))
        .with_context(|| format!("seeking in {}", dev.display()))?;
    f.read_exact(&mut magic)
        .with_context(|| format!("reading {}", dev.display()))?;
    Ok(if magic == [0x53, 0xEF] {
        FsKind::Ext4
    } else {
        FsKind::Unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_parsing() {
        let u = "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=CAIRN-A\n";
        assert_eq!(uevent_value(u, "PARTNAME"), Some("CAIRN-A"));
        assert_eq!(uevent_value(u, "PARTN"), Some("3"));
        assert_eq!(uevent_value(u, "PART"), None);
    }

    #[test]
    fn finds_partition_in_fake_sysfs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let disk = tmp.path().join("devices/vda");
        for (n, label) in [(1, "EFI"), (2, "CAIRN-A"), (5, "DATA")] {
            let d = disk.join(format!("vda{n}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(
                d.join("uevent"),
                format!("DEVNAME=vda{n}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            )
            .expect("write");
        }
        let class = tmp.path().join("class");
        std::fs::create_dir_all(&class).expect("mkdir");
        for n in [1, 2, 5] {
            std::os::unix::fs::symlink(disk.join(format!("vda{n}")), class.join(format!("vda{n}")))
                .expect("link");
        }
        let p = find_by_label(&class, "DATA").expect("scan").expect("found");
        assert_eq!(
            (p.name.as_str(), p.disk.as_str(), p.number),
            ("vda5", "vda", 5)
        );
        assert!(find_by_label(&class, "STATE").expect("scan").is_none());
    }

    #[test]
    fn probes_ext4_magic() {
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        let mut img = vec![0u8; 4096];
        img[1024 + 0x38] = 0x53;
        img[1024 + 0x39] = 0xEF;
        std::fs::write(tmp.path(), &img).expect("write");
        assert_eq!(probe_fs(tmp.path()).expect("probe"), FsKind::Ext4);
        std::fs::write(tmp.path(), vec![0u8; 4096]).expect("write");
        assert_eq!(probe_fs(tmp.path()).expect("probe"), FsKind::Unknown);
    }
}
