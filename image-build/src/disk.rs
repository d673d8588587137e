//! Lays partitions out on a GPT disk image and writes the raw file: 1 MiB
//! aligned partitions in the given order, 1 MiB left at the end for the backup
//! table, contents copied in, and unwritten (all-zero) ranges left as holes so
//! empty partitions cost no space. The disk GUID and each partition's unique
//! GUID are uuid v5 names derived from a caller-given seed and the label.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::gpt::{self, GptError, GptPartition, SECTOR};

/// Partition alignment (and granularity of partition sizes).
pub const ALIGN: u64 = 1 << 20;

/// Labels the init looks partitions up by.
pub const LABEL_ESP: &str = "EFI";
/// System slot A.
pub const LABEL_SLOT_A: &str = "CAIRN-A";
/// System slot B.
pub const LABEL_SLOT_B: &str = "CAIRN-B";
/// Persistent machine state.
pub const LABEL_STATE: &str = "STATE";
/// Workload data; grown to fill the disk on first boot.
pub const LABEL_DATA: &str = "DATA";

/// Copy chunk; all-zero chunks are skipped (left as holes).
const CHUNK: usize = 1 << 16;

/// One partition to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition name.
    pub label: String,
    /// GPT partition type.
    pub type_guid: Uuid,
    /// Requested size; rounded up to [`ALIGN`].
    pub size_bytes: u64,
    /// A file copied to the start of the partition, or `None` for an empty one.
    pub contents: Option<PathBuf>,
}

/// The partitions, in on-disk order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskLayout {
    /// Partitions, first to last.
    pub partitions: Vec<PartitionSpec>,
}

/// Where a partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    /// GPT partition name.
    pub label: String,
    /// Byte offset in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Unique partition GUID.
    pub unique_guid: Uuid,
}

/// What [`write_disk`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Image size in bytes.
    pub size_bytes: u64,
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// Partitions in order.
    pub partitions: Vec<PlacedPartition>,
}

/// Why the disk image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A partition's contents do not fit it.
    #[error("disk: contents {contents} ({len} bytes) do not fit partition {label} ({size} bytes)")]
    ContentsTooLarge {
        /// Partition label.
        label: String,
        /// Source file.
        contents: PathBuf,
        /// Contents size.
        len: u64,
        /// Partition size.
        size: u64,
    },
    /// Two partitions share a label.
    #[error("disk: duplicate partition label {0}")]
    DuplicateLabel(String),
    /// A partition has size zero.
    #[error("disk: partition {0} has size 0")]
    EmptyPartition(String),
    /// Table encoding failed.
    #[error("disk: {0}")]
    Gpt(#[from] GptError),
    /// Reading a partition's contents failed.
    #[error("disk: reading contents {path} of partition {label}: {source}")]
    ReadContents {
        /// Partition label.
        label: String,
        /// Source file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Writing the image failed.
    #[error("disk: writing {path}: {source}")]
    Write {
        /// Image path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// The namespace under which seeds are turned into GUIDs.
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, b"cairn-image/gpt")
}

/// The disk GUID for `seed`.
pub fn disk_guid(seed: &[u8]) -> Uuid {
    let mut name = b"disk:".to_vec();
    name.extend_from_slice(seed);
    Uuid::new_v5(&namespace(), &name)
}

/// The unique GUID of partition `label` for `seed`.
pub fn partition_guid(seed: &[u8], label: &str) -> Uuid {
    let mut name = b"part:".to_vec();
    name.extend_from_slice(label.as_bytes());
    name.push(0);
    name.extend_from_slice(seed);
    Uuid::new_v5(&namespace(), &name)
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Computes the placement of every partition and the image size.
pub fn plan(layout: &DiskLayout, seed: &[u8]) -> Result<DiskInfo, DiskError> {
    let mut offset = ALIGN;
    let mut partitions = Vec::with_capacity(layout.partitions.len());
    for spec in &layout.partitions {
        if partitions
            .iter()
            .any(|p: &PlacedPartition| p.label == spec.label)
        {
            return Err(DiskError::DuplicateLabel(spec.label.clone()));
        }
        if spec.size_bytes == 0 {
            return Err(DiskError::EmptyPartition(spec.label.clone()));
        }
        let size = align_up(spec.size_bytes);
        partitions.push(PlacedPartition {
            label: spec.label.clone(),
            offset,
            size_bytes: size,
            unique_guid: partition_guid(seed, &spec.label),
        });
        offset += size;
    }
    Ok(DiskInfo {
        size_bytes: offset + ALIGN,
        disk_guid: disk_guid(seed),
        partitions,
    })
}

/// Writes the raw GPT image `out` (replacing it) and returns its layout.
pub fn write_disk(layout: &DiskLayout, out: &Path, seed: &[u8]) -> Result<DiskInfo, DiskError> {
    let info = plan(layout, seed)?;
    for (spec, placed) in layout.partitions.iter().zip(&info.partitions) {
        if let Some(path) = &spec.contents {
            let len = std::fs::metadata(path)
                .map_err(|source| DiskError::ReadContents {
                    label: spec.label.clone(),
                    path: path.clone(),
                    source,
                })?
                .len();
            if len > placed.size_bytes {
                return Err(DiskError::ContentsTooLarge {
                    label: spec.label.clone(),
                    contents: path.clone(),
                    len,
                    size: placed.size_bytes,
                });
            }
        }
    }

    let entries: Vec<GptPartition> = layout
        .partitions
        .iter()
        .zip(&info.partitions)
        .map(|(spec, placed)| GptPartition {
            type_guid: spec.type_guid,
            unique_guid: placed.unique_guid,
            first_lba: placed.offset / SECTOR,
            last_lba: (placed.offset + placed.size_bytes) / SECTOR - 1,
            attributes: 0,
            name: spec.label.clone(),
        })
        .collect();
    let tables = gpt::encode(info.size_bytes / SECTOR, info.disk_guid, &entries)?;

    let werr = |source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut file = File::create(out).map_err(werr)?;
    file.set_len(info.size_bytes).map_err(werr)?;
    file.write_all(&tables.protective_mbr).map_err(werr)?;
    file.write_all(&tables.primary).map_err(werr)?;
    file.seek(SeekFrom::Start(tables.backup_lba * SECTOR))
        .map_err(werr)?;
    file.write_all(&tables.backup).map_err(werr)?;

    for (spec, placed) in layout.partitions.iter().zip(&info.partitions) {
        if let Some(path) = &spec.contents {
            copy_sparse(path, &spec.label, &mut file, placed.offset, out)?;
        }
    }
    file.sync_all().map_err(werr)?;
    Ok(info)
}

/// Copies `src` into `dst` at `offset`, skipping all-zero chunks (the file was
/// pre-sized with `set_len`, so skipped ranges read back as zeros).
fn copy_sparse(
    src: &Path,
    label: &str,
    dst: &mut File,
    offset: u64,
    out: &Path,
) -> Result<(), DiskError> {
    let rerr = |source| DiskError::ReadContents {
        label: label.to_string(),
        path: src.to_path_buf(),
        source,
    };
    let werr = |source| DiskError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut input = File::open(src).map_err(rerr)?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = offset;
    loop {
        let n = read_full(&mut input, &mut buf).map_err(rerr)?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(pos)).map_err(werr)?;
            dst.write_all(&buf[..n]).map_err(werr)?;
        }
        pos += n as u64;
    }
}

/// Reads until `buf` is full or EOF; returns the byte count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gpt::{TYPE_ESP, TYPE_LINUX_FS, TYPE_LINUX_ROOT_X86_64};

    const MIB: u64 = 1 << 20;

    fn layout(esp: &Path) -> DiskLayout {
        let p = |label: &str, type_guid, size_bytes, contents: Option<&Path>| PartitionSpec {
            label: label.to_string(),
            type_guid,
            size_bytes,
            contents: contents.map(Path::to_path_buf),
        };
        DiskLayout {
            partitions: vec![
                p(LABEL_ESP, TYPE_ESP, 2 * MIB, Some(esp)),
                p(LABEL_SLOT_A, TYPE_LINUX_ROOT_X86_64, 3 * MIB + 1, None),
                p(LABEL_SLOT_B, TYPE_LINUX_ROOT_X86_64, 4 * MIB, None),
                p(LABEL_STATE, TYPE_LINUX_FS, MIB, None),
                p(LABEL_DATA, TYPE_LINUX_FS, MIB, None),
            ],
        }
    }

    #[test]
    fn writes_parseable_aligned_gpt_with_contents() {
        let t = tempfile::tempdir().unwrap();
        let esp = t.path().join("esp.img");
        std::fs::write(&esp, b"FATDATA").unwrap();
        let out = t.path().join("disk.raw");
        let info = write_disk(&layout(&esp), &out, b"seed").unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, info.size_bytes);
        assert_eq!(info.size_bytes, (1 + 2 + 4 + 4 + 1 + 1 + 1) * MIB);

        let gpt = gpt::decode(&bytes).unwrap();
        assert_eq!(gpt.disk_guid, disk_guid(b"seed"));
        let names: Vec<_> = gpt.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["EFI", "CAIRN-A", "CAIRN-B", "STATE", "DATA"]);
        for (p, placed) in gpt.partitions.iter().zip(&info.partitions) {
            assert_eq!((p.first_lba * SECTOR) % MIB, 0, "{} not aligned", p.name);
            assert_eq!(((p.last_lba + 1) * SECTOR) % MIB, 0);
            assert_eq!(p.first_lba * SECTOR, placed.offset);
            assert_eq!(p.unique_guid, partition_guid(b"seed", &p.name));
            assert!(p.first_lba >= gpt.first_usable_lba && p.last_lba <= gpt.last_usable_lba);
        }
        assert_eq!(gpt.partitions[0].type_guid, TYPE_ESP);
        assert_eq!(gpt.partitions[1].type_guid, TYPE_LINUX_ROOT_X86_64);
        assert_eq!(
            gpt.partitions[1].last_lba - gpt.partitions[1].first_lba + 1,
            4 * MIB / SECTOR
        );
        assert_eq!(&bytes[MIB as usize..MIB as usize + 7], b"FATDATA");

        // Different seeds give different GUIDs, same seed the same bytes.
        assert_ne!(
            partition_guid(b"seed", "STATE"),
            partition_guid(b"other", "STATE")
        );
        let again = t.path().join("again.raw");
        write_disk(&layout(&esp), &again, b"seed").unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn sgdisk_verifies_when_installed() {
        let t = tempfile::tempdir().unwrap();
        let esp = t.path().join("esp.img");
        std::fs::write(&esp, b"x").unwrap();
        let out = t.path().join("disk.raw");
        write_disk(&layout(&esp), &out, b"seed").unwrap();
        let Ok(o) = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&out)
            .output()
        else {
            crate::test_support::skip_unless_ci!("sgdisk not installed");
        };
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}");
        assert!(text.contains("No problems found"), "{text}");
    }

    #[test]
    fn rejects_oversized_contents_and_duplicates() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big");
        std::fs::write(&big, vec![1u8; (MIB + 1) as usize]).unwrap();
        let l = DiskLayout {
            partitions: vec![PartitionSpec {
                label: "X".into(),
                type_guid: TYPE_LINUX_FS,
                size_bytes: MIB,
                contents: Some(big),
            }],
        };
        let err = write_disk(&l, &t.path().join("d"), b"s").unwrap_err();
        assert!(err.to_string().contains("partition X"), "{err}");
        let mut dup = l.clone();
        dup.partitions[0].contents = None;
        dup.partitions.push(dup.partitions[0].clone());
        assert!(matches!(
            write_disk(&dup, &t.path().join("d"), b"s"),
            Err(DiskError::DuplicateLabel(_))
        ));
    }
}
