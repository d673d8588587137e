//! A deterministic newc ("070701") cpio writer for the initramfs.
//!
//! Entries are kept in a map keyed by normalised path, so they come out sorted
//! with parent directories (created implicitly) before their children, with
//! sequential inode numbers, uid/gid 0 and every mtime equal to the build's
//! `source_date_epoch`. [`CpioBuilder::finish_gzip`] compresses with a fixed
//! gzip header (mtime 0, no file name), so equal inputs give equal bytes.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::{Compression, GzBuilder};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const PERM_MASK: u32 = 0o7777;
const TRAILER: &str = "TRAILER!!!";

/// Why an entry could not be added or the archive not written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path is empty, contains `..`, or otherwise cannot name an entry.
    #[error("cpio: invalid path {0:?}")]
    InvalidPath(String),
    /// The path (or one of its parents) is already taken by another kind of entry.
    #[error("cpio: {path:?} conflicts with an existing entry")]
    Conflict {
        /// The path being added.
        path: String,
    },
    /// A value does not fit the 8 hex digits of a newc header field.
    #[error("cpio: {field} of {path:?} is too large for a newc header")]
    TooLarge {
        /// Header field name.
        field: &'static str,
        /// Entry path.
        path: String,
    },
    /// gzip compression failed.
    #[error("cpio: gzip compression failed: {0}")]
    Gzip(#[source] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    perm: u32,
    kind: Kind,
}

/// Collects initramfs entries and serialises them as a newc archive.
#[derive(Debug, Clone)]
pub struct CpioBuilder {
    mtime: u64,
    entries: BTreeMap<String, Entry>,
}

impl CpioBuilder {
    /// A new, empty archive whose entries all carry `source_date_epoch` as mtime.
    pub fn new(source_date_epoch: u64) -> Self {
        Self {
            mtime: source_date_epoch,
            entries: BTreeMap::new(),
        }
    }

    /// Adds a directory with permission bits `mode` (an implicit parent created
    /// earlier takes this mode).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, CpioError> {
        let path = normalise(path)?;
        self.ensure_parents(&path)?;
        match self.entries.get_mut(&path) {
            Some(e) if e.kind == Kind::Dir => e.perm = mode & PERM_MASK,
            Some(_) => return Err(CpioError::Conflict { path }),
            None => {
                self.entries.insert(
                    path,
                    Entry {
                        perm: mode & PERM_MASK,
                        kind: Kind::Dir,
                    },
                );
            }
        }
        Ok(self)
    }

    /// Adds (or replaces) a regular file with permission bits `mode`.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        contents: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, CpioError> {
        self.insert_leaf(path, mode, Kind::File(contents.into()))
    }

    /// Adds (or replaces) a symbolic link pointing at `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        if target.is_empty() {
            return Err(CpioError::InvalidPath(format!("{path} -> (empty target)")));
        }
        self.insert_leaf(path, 0o777, Kind::Symlink(target.to_string()))
    }

    /// Adds (or replaces) a character device node, e.g. `/dev/console` 5:1.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.insert_leaf(path, mode, Kind::CharDevice { major, minor })
    }

    /// Number of entries, implicit directories included (trailer excluded).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The uncompressed newc archive, trailer included.
    pub fn finish(&self) -> Result<Vec<u8>, CpioError> {
        let mtime = u32::try_from(self.mtime).map_err(|_| CpioError::TooLarge {
            field: "mtime",
            path: String::new(),
        })?;
        let mut out = Vec::new();
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let (type_bits, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
                Kind::Dir => (S_IFDIR, 2, &[], (0, 0)),
                Kind::File(bytes) => (S_IFREG, 1, bytes, (0, 0)),
                Kind::Symlink(target) => (S_IFLNK, 1, target.as_bytes(), (0, 0)),
                Kind::CharDevice { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
            };
            let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
                field: "filesize",
                path: path.clone(),
            })?;
            let ino = u32::try_from(index + 1).map_err(|_| CpioError::TooLarge {
                field: "ino",
                path: path.clone(),
            })?;
            let header = Header {
                ino,
                mode: type_bits | entry.perm,
                nlink,
                mtime,
                filesize: size,
                rdev,
            };
            write_entry(&mut out, &header, path, data);
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rdev: (0, 0),
        };
        write_entry(&mut out, &trailer, TRAILER, &[]);
        Ok(out)
    }

    /// The archive compressed with gzip (best compression, header mtime 0,
    /// no file name, OS byte "unknown"), ready to be a UKI's `.initrd`.
    pub fn finish_gzip(&self) -> Result<Vec<u8>, CpioError> {
        let raw = self.finish()?;
        let mut encoder = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), Compression::best());
        encoder.write_all(&raw).map_err(CpioError::Gzip)?;
        encoder.finish().map_err(CpioError::Gzip)
    }

    fn insert_leaf(&mut self, path: &str, mode: u32, kind: Kind) -> Result<&mut Self, CpioError> {
        let path = normalise(path)?;
        self.ensure_parents(&path)?;
        if matches!(self.entries.get(&path), Some(e) if e.kind == Kind::Dir) {
            return Err(CpioError::Conflict { path });
        }
        self.entries.insert(
            path,
            Entry {
                perm: mode & PERM_MASK,
                kind,
            },
        );
        Ok(self)
    }

    /// Creates every missing ancestor of `path` as a 0755 directory.
    fn ensure_parents(&mut self, path: &str) -> Result<(), CpioError> {
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            match self.entries.get(parent) {
                Some(e) if e.kind == Kind::Dir => {}
                Some(_) => {
                    return Err(CpioError::Conflict {
                        path: path.to_string(),
                    });
                }
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            perm: 0o755,
                            kind: Kind::Dir,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

/// Strips leading `/` and `./`, collapses repeated slashes and rejects `..`,
/// `.` components and empty paths; the result is relative ("dev/console").
fn normalise(path: &str) -> Result<String, CpioError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(CpioError::InvalidPath(path.to_string())),
            p if p.contains('\0') => return Err(CpioError::InvalidPath(path.to_string())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(CpioError::InvalidPath(path.to_string()));
    }
    Ok(parts.join("/"))
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev: (u32, u32),
}

/// Appends one header + name + data, each padded to 4 bytes.
fn write_entry(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        h.mtime,
        h.filesize,
        0, // devmajor
        0, // devminor
        h.rdev.0,
        h.rdev.1,
        // Paths are bounded by what the caller could allocate; a name longer
        // than 4 GiB is not a realistic input, saturate rather than panic.
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    #[derive(Debug, PartialEq)]
    struct Parsed {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A tiny newc reader, independent of the writer, that checks alignment.
    fn parse(bytes: &[u8]) -> Vec<Parsed> {
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            assert_eq!(pos % 4, 0, "header not 4-byte aligned");
            assert_eq!(&bytes[pos..pos + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let namesize = field(11) as usize;
            let filesize = field(6) as usize;
            let name_start = pos + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(bytes[name_start + namesize - 1], 0);
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = bytes[data_start..data_start + filesize].to_vec();
            let p = Parsed {
                name,
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                mtime: field(5),
                rdev: (field(9), field(10)),
                data,
            };
            pos = (data_start + filesize).next_multiple_of(4);
            if p.name == TRAILER {
                assert_eq!(pos, bytes.len(), "bytes after trailer");
                return out;
            }
            out.push(p);
        }
    }

    fn sample() -> CpioBuilder {
        let mut b = CpioBuilder::new(1_700_000_000);
        b.add_file("/init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        b.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        b.add_symlink("/bin/sh", "busybox").unwrap();
        b.add_file("/etc/os-release", 0o644, b"ID=cairn\n".to_vec())
            .unwrap();
        b.add_dir("/proc", 0o555).unwrap();
        b
    }

    #[test]
    fn layout_parses_back_sorted_with_implicit_parents() {
        let bytes = sample().finish().unwrap();
        let entries = parse(&bytes);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/os-release",
                "init",
                "proc"
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid), (0, 0));
            assert_eq!(e.mtime, 1_700_000_000);
        }
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by("dev").mode, 0o040_755);
        assert_eq!(by("proc").mode, 0o040_555);
        assert_eq!(by("init").mode, 0o100_755);
        assert_eq!(by("init").data, b"#!/bin/sh\n");
        assert_eq!(by("dev/console").mode, 0o020_600);
        assert_eq!(by("dev/console").rdev, (5, 1));
        assert_eq!(by("bin/sh").mode, 0o120_777);
        assert_eq!(by("bin/sh").data, b"busybox");
    }

    #[test]
    fn gzip_is_deterministic_and_decompresses() {
        let a = sample().finish_gzip().unwrap();
        let b = sample().finish_gzip().unwrap();
        assert_eq!(a, b);
        // Fixed header: magic, deflate, no flags, mtime 0.
        assert_eq!(&a[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw, sample().finish().unwrap());
    }

    #[test]
    fn epoch_changes_bytes() {
        let mut other = sample();
        other.mtime = 1;
        assert_ne!(other.finish().unwrap(), sample().finish().unwrap());
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut b = CpioBuilder::new(0);
        assert!(matches!(
            b.add_dir("/", 0o755),
            Err(CpioError::InvalidPath(_))
        ));
        assert!(matches!(
            b.add_file("a/../b", 0o644, vec![]),
            Err(CpioError::InvalidPath(_))
        ));
        b.add_file("f", 0o644, vec![]).unwrap();
        assert!(matches!(
            b.add_file("f/g", 0o644, vec![]),
            Err(CpioError::Conflict { .. })
        ));
        assert!(matches!(
            b.add_dir("f", 0o755),
            Err(CpioError::Conflict { .. })
        ));
        b.add_dir("d", 0o755).unwrap();
        assert!(matches!(
            b.add_symlink("d", "x"),
            Err(CpioError::Conflict { .. })
        ));
    }

    #[test]
    fn gnu_cpio_lists_the_archive_when_installed() {
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            crate::test_support::skip_unless_ci!("cpio not installed");
        };
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&sample().finish().unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/os-release",
                "init",
                "proc"
            ]
        );
    }
}
