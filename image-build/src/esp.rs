//! Builds the EFI system partition as a FAT image file, in Rust with `fatfs`.
//!
//! FAT32 is used whenever the size allows it (UEFI's preferred ESP format;
//! 64 MiB needs 512-byte clusters for that), else FAT16. The volume label is
//! "EFI", the volume id is derived from the contents and epoch, and every
//! directory entry carries the epoch's date, so the bytes are a function of
//! the inputs alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};
use sha2::{Digest, Sha256};

/// The ESP's volume label (11 bytes, space padded).
pub const VOLUME_LABEL: &[u8; 11] = b"EFI        ";

/// Where a file placed on the ESP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspSource {
    /// A file on the build host.
    Path(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

/// One file on the ESP: its path inside the ESP ("/EFI/BOOT/BOOTX64.EFI").
pub type EspFile = (String, EspSource);

/// Why the ESP image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// A path inside the ESP is empty or has `.`/`..` components.
    #[error("esp: invalid path {0:?}")]
    InvalidPath(String),
    /// The same path was given twice.
    #[error("esp: duplicate path {0}")]
    DuplicatePath(String),
    /// Reading a source file failed.
    #[error("esp: reading {path} for {dest}: {source}")]
    Read {
        /// Host file.
        path: PathBuf,
        /// Destination inside the ESP.
        dest: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Formatting or writing the image failed (including "does not fit").
    #[error("esp: {what} in {image}: {source}")]
    Fat {
        /// What was being done.
        what: String,
        /// The image file.
        image: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A [`TimeProvider`] that always answers one fixed instant.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// `fatfs` 0.3 wants a `&'static` provider: keep one per distinct epoch
/// (a handful per process at most) instead of leaking one per call.
fn time_provider(epoch: u64) -> &'static FixedTime {
    static PROVIDERS: OnceLock<Mutex<BTreeMap<u64, &'static FixedTime>>> = OnceLock::new();
    let map = PROVIDERS.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(epoch)
        .or_insert_with(|| Box::leak(Box::new(FixedTime(fat_datetime(epoch)))))
}

/// Converts a Unix time to a FAT date-time (UTC), clamped to FAT's 1980..=2107.
fn fat_datetime(epoch: u64) -> DateTime {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    let (y, m, d) = crate::civil::civil_from_days(days);
    let (year, month, day) = if y < 1980 {
        (1980, 1, 1)
    } else if y > 2107 {
        (2107, 12, 31)
    } else {
        (y, m, d)
    };
    // All values are range-checked above, so the narrowing casts are lossless.
    DateTime {
        date: Date {
            year: year as u16,
            month: month as u16,
            day: day as u16,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Splits "/EFI/BOOT/BOOTX64.EFI" into components, rejecting odd paths.
fn components(path: &str) -> Result<Vec<&str>, EspError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(EspError::InvalidPath(path.to_string()));
    }
    Ok(parts)
}

/// Builds the FAT image `out` of `size_bytes` holding `files`, written in
/// sorted path order with every timestamp set to `source_date_epoch`.
pub fn make_esp(
    out: &Path,
    size_bytes: u64,
    files: &[EspFile],
    source_date_epoch: u64,
) -> Result<(), EspError> {
    // Load and order everything first; the volume id hashes the contents.
    let mut sorted: BTreeMap<Vec<String>, Vec<u8>> = BTreeMap::new();
    let mut hasher = Sha256::new();
    hasher.update(source_date_epoch.to_le_bytes());
    hasher.update(size_bytes.to_le_bytes());
    for (dest, source) in files {
        let key: Vec<String> = components(dest)?.into_iter().map(str::to_string).collect();
        let bytes = match source {
            EspSource::Bytes(b) => b.clone(),
            EspSource::Path(p) => std::fs::read(p).map_err(|source| EspError::Read {
                path: p.clone(),
                dest: dest.clone(),
                source,
            })?,
        };
        if sorted.insert(key, bytes).is_some() {
            return Err(EspError::DuplicatePath(dest.clone()));
        }
    }
    for (key, bytes) in &sorted {
        hasher.update(key.join("/").as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let digest = hasher.finalize();
    let volume_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);

    let fat = |what: &str| {
        let what = what.to_string();
        let image = out.to_path_buf();
        move |source| EspError::Fat {
            what,
            image,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(fat("creating"))?;
    format(&mut file, size_bytes, volume_id).map_err(fat("formatting"))?;

    let options = FsOptions::new()
        .update_accessed_date(false)
        .time_provider(time_provider(source_date_epoch));
    let fs = FileSystem::new(&mut file, options).map_err(fat("opening"))?;
    {
        let root = fs.root_dir();
        let mut made: BTreeSet<Vec<String>> = BTreeSet::new();
        for (key, bytes) in &sorted {
            let display = format!("/{}", key.join("/"));
            let dirs = match key.split_last() {
                Some((_, dirs)) => dirs,
                None => return Err(EspError::InvalidPath(display)),
            };
            for depth in 1..=dirs.len() {
                let dir = dirs[..depth].to_vec();
                if made.insert(dir.clone()) {
                    root.create_dir(&dir.join("/"))
                        .map_err(fat(&format!("creating directory /{}", dir.join("/"))))?;
                }
            }
            let mut f = root
                .create_file(&key.join("/"))
                .map_err(fat(&format!("creating {display}")))?;
            f.truncate()
                .map_err(fat(&format!("truncating {display}")))?;
            f.write_all(bytes)
                .map_err(fat(&format!("writing {display} ({} bytes)", bytes.len())))?;
            f.flush().map_err(fat(&format!("flushing {display}")))?;
        }
    }
    fs.unmount().map_err(fat("unmounting"))?;
    file.sync_all().map_err(fat("syncing"))?;
    Ok(())
}

/// Formats `file` as FAT32 with the largest cluster size that gives a valid
/// FAT32 (≥ 65525 clusters), falling back to FAT16.
fn format(file: &mut File, size_bytes: u64, volume_id: u32) -> std::io::Result<()> {
    let base = || {
        FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(*VOLUME_LABEL)
    };
    for cluster in [4096u32, 2048, 1024, 512] {
        reset(file, size_bytes)?;
        if fatfs::format_volume(
            &mut *file,
            base().fat_type(FatType::Fat32).bytes_per_cluster(cluster),
        )
        .is_err()
        {
            continue;
        }
        file.seek(SeekFrom::Start(0))?;
        let fs = FileSystem::new(&mut *file, FsOptions::new())?;
        let is_fat32 = fs.fat_type() == FatType::Fat32;
        drop(fs);
        if is_fat32 {
            return file.seek(SeekFrom::Start(0)).map(drop);
        }
    }
    reset(file, size_bytes)?;
    fatfs::format_volume(&mut *file, base().fat_type(FatType::Fat16))?;
    file.seek(SeekFrom::Start(0)).map(drop)
}

/// Empties `file` and re-sizes it (sparse zeros), positioned at 0.
fn reset(file: &mut File, size_bytes: u64) -> std::io::Result<()> {
    file.set_len(0)?;
    file.set_len(size_bytes)?;
    file.seek(SeekFrom::Start(0)).map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    const MIB: u64 = 1 << 20;

    fn files() -> Vec<EspFile> {
        vec![
            (
                "/loader/loader.conf".into(),
                EspSource::Bytes(b"timeout 0\n".to_vec()),
            ),
            (
                "/EFI/BOOT/BOOTX64.EFI".into(),
                EspSource::Bytes(vec![0x4d, 0x5a, 1, 2, 3]),
            ),
            (
                "/EFI/Linux/cairn-a.efi".into(),
                EspSource::Bytes(vec![7u8; 300_000]),
            ),
        ]
    }

    fn read_back(img: &Path, path: &str) -> Vec<u8> {
        let f = File::open(img).unwrap();
        let fs = FileSystem::new(f, FsOptions::new()).unwrap();
        let mut out = Vec::new();
        fs.root_dir()
            .open_file(path)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn files_read_back_fat32_at_64mib() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("esp.img");
        make_esp(&img, 64 * MIB, &files(), 1_700_000_000).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 * MIB);
        assert_eq!(
            read_back(&img, "EFI/BOOT/BOOTX64.EFI"),
            [0x4d, 0x5a, 1, 2, 3]
        );
        assert_eq!(read_back(&img, "loader/loader.conf"), b"timeout 0\n");
        assert_eq!(read_back(&img, "EFI/Linux/cairn-a.efi"), vec![7u8; 300_000]);
        let fs = FileSystem::new(File::open(&img).unwrap(), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_label(), "EFI");
        let entry = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "loader")
            .unwrap();
        // 1_700_000_000 is 2023-11-14 22:13:20 UTC.
        let m = entry.modified();
        assert_eq!((m.date.year, m.date.month, m.date.day), (2023, 11, 14));
        assert_eq!((m.time.hour, m.time.min, m.time.sec), (22, 13, 20));
    }

    #[test]
    fn small_sizes_fall_back_to_fat16() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("esp.img");
        make_esp(&img, 16 * MIB, &files(), 0).unwrap();
        let fs = FileSystem::new(File::open(&img).unwrap(), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat16);
    }

    #[test]
    fn deterministic_and_input_sensitive() {
        let t = tempfile::tempdir().unwrap();
        let build = |name: &str, files: &[EspFile], epoch| {
            let p = t.path().join(name);
            make_esp(&p, 64 * MIB, files, epoch).unwrap();
            std::fs::read(p).unwrap()
        };
        let a = build("a", &files(), 1_700_000_000);
        let mut reversed = files();
        reversed.reverse();
        assert_eq!(a, build("b", &reversed, 1_700_000_000));
        assert_ne!(a, build("c", &files(), 1_700_086_400));
        let mut changed = files();
        changed[0].1 = EspSource::Bytes(b"timeout 1\n".to_vec());
        assert_ne!(a, build("d", &changed, 1_700_000_000));
    }

    #[test]
    fn too_small_or_bad_paths_fail_with_names() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("esp.img");
        let big = vec![(
            "/big".to_string(),
            EspSource::Bytes(vec![1u8; 3 * MIB as usize]),
        )];
        let err = make_esp(&img, 2 * MIB, &big, 0).unwrap_err().to_string();
        assert!(err.contains("/big"), "{err}");
        let bad = vec![("/a/../b".to_string(), EspSource::Bytes(vec![]))];
        assert!(matches!(
            make_esp(&img, 2 * MIB, &bad, 0),
            Err(EspError::InvalidPath(_))
        ));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(crate::civil::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::civil::civil_from_days(19_675), (2023, 11, 14));
        assert_eq!(fat_datetime(0).date.year, 1980);
    }
}
