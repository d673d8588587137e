//! Putting a bundle on disk and reading it back.
//!
//! A bundle owns its directory. `write_to` builds the whole tree in a temporary
//! directory beside the target, fsyncs every file and directory, then renames it into
//! place, so a crash leaves either no bundle or a complete one, never half of one.
//! Replacing moves the old directory aside first (`.<name>.old-<pid>`), so a crash in
//! between two renames leaves the old bundle there rather than at `dir`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use crate::{Bundle, PkiError, Secret};

/// Mode of the bundle directory and its subdirectories. Keys and kubeconfigs are
/// 0600 themselves; the directories only hold names.
const DIR_MODE: u32 = 0o755;

/// What `write_to` does when the target directory already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse with [`PkiError::AlreadyExists`]: secrets are never silently replaced.
    Keep,
    /// Replace the whole directory (the old one is moved aside, then removed).
    Replace,
}

impl Bundle {
    /// Writes the bundle as the directory `dir` (files with their modes).
    pub fn write_to(&self, dir: &Path, existing: Existing) -> Result<(), PkiError> {
        let exists = fs::symlink_metadata(dir).is_ok();
        if exists && existing == Existing::Keep {
            return Err(PkiError::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
        let (parent, name) = split(dir)?;
        fs::create_dir_all(&parent).map_err(|e| PkiError::io(&parent, e))?;
        let staging = parent.join(format!(".{name}.new-{}", std::process::id()));
        remove_tree(&staging)?;
        let written = self.write_tree(&staging);
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }

        if exists {
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            remove_tree(&old)?;
            fs::rename(dir, &old).map_err(|e| PkiError::io(dir, e))?;
            if let Err(e) = fs::rename(&staging, dir) {
                let _ = fs::rename(&old, dir);
                let _ = fs::remove_dir_all(&staging);
                return Err(PkiError::io(dir, e));
            }
            sync_dir(&parent)?;
            remove_tree(&old)?;
        } else {
            fs::rename(&staging, dir).map_err(|e| {
                let _ = fs::remove_dir_all(&staging);
                PkiError::io(dir, e)
            })?;
        }
        sync_dir(&parent)
    }

    fn write_tree(&self, root: &Path) -> Result<(), PkiError> {
        mkdir(root)?;
        let mut dirs = vec![root.to_path_buf()];
        for (rel, secret) in self.files() {
            let path = root.join(checked_relative(rel)?);
            if let Some(sub) = path.parent() {
                for ancestor in sub
                    .ancestors()
                    .take_while(|a| *a != root)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    if !dirs.iter().any(|d| d == ancestor) {
                        mkdir(ancestor)?;
                        dirs.push(ancestor.to_path_buf());
                    }
                }
            }
            write_file(&path, secret)?;
        }
        for dir in dirs.iter().rev() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Reads every regular file under `dir` (symlinks and other kinds are refused).
    pub fn load(dir: &Path) -> Result<Bundle, PkiError> {
        let mut bundle = Bundle::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            let entries = fs::read_dir(&current).map_err(|e| PkiError::io(&current, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| PkiError::io(&current, e))?;
                let path = entry.path();
                let meta = fs::symlink_metadata(&path).map_err(|e| PkiError::io(&path, e))?;
                if meta.is_dir() {
                    pending.push(path);
                } else if meta.is_file() {
                    let bytes = fs::read(&path).map_err(|e| PkiError::io(&path, e))?;
                    let rel = path
                        .strip_prefix(dir)
                        .map_err(|_| PkiError::io(&path, io::ErrorKind::InvalidInput.into()))?;
                    bundle.insert(rel, Secret::new(bytes, meta.permissions().mode()));
                } else {
                    return Err(PkiError::io(
                        &path,
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            "not a regular file or directory",
                        ),
                    ));
                }
            }
        }
        Ok(bundle)
    }
}

/// The parent directory and final name of `dir`.
fn split(dir: &Path) -> Result<(PathBuf, String), PkiError> {
    let bad = || {
        PkiError::io(
            dir,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a usable bundle directory path",
            ),
        )
    };
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(bad)?
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => return Err(bad()),
    };
    Ok((parent, name))
}

/// Refuses absolute paths and `..` so a bundle cannot write outside its directory.
fn checked_relative(rel: &Path) -> Result<&Path, PkiError> {
    if rel.components().all(|c| matches!(c, Component::Normal(_)))
        && rel.components().next().is_some()
    {
        Ok(rel)
    } else {
        Err(PkiError::io(
            rel,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "bundle paths must be plain relative paths",
            ),
        ))
    }
}

fn mkdir(path: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(path)
        .map_err(|e| PkiError::io(path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| PkiError::io(path, e))
}

/// Created with its final mode (never briefly world-readable), written, fsynced.
fn write_file(path: &Path, secret: &Secret) -> Result<(), PkiError> {
    let io_err = |e| PkiError::io(path, e);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(secret.mode())
        .open(path)
        .map_err(io_err)?;
    file.set_permissions(fs::Permissions::from_mode(secret.mode()))
        .map_err(io_err)?;
    file.write_all(secret.bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn sync_dir(path: &Path) -> Result<(), PkiError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io(path, e))
}

fn remove_tree(path: &Path) -> Result<(), PkiError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PkiError::io(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let mut b = Bundle::new();
        b.insert("pki/ca.crt", Secret::public("cert"));
        b.insert("pki/etcd/ca.key", Secret::private("key"));
        b.insert("admin.conf", Secret::private("conf"));
        b
    }

    #[test]
    fn writes_modes_and_loads_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("secrets");
        sample().write_to(&dir, Existing::Keep).expect("write");
        let mode = |p: &str| {
            fs::metadata(dir.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("pki/ca.crt"), 0o644);
        assert_eq!(mode("pki/etcd/ca.key"), 0o600);
        assert_eq!(mode("admin.conf"), 0o600);
        assert_eq!(Bundle::load(&dir).expect("load"), sample());
        // Nothing left beside it.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secrets")]);
    }

    #[test]
    fn never_overwrites_unless_asked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("secrets");
        sample().write_to(&dir, Existing::Keep).expect("write");
        let mut other = Bundle::new();
        other.insert("pki/ca.crt", Secret::public("other"));
        let e = other.write_to(&dir, Existing::Keep).expect_err("exists");
        assert!(matches!(e, PkiError::AlreadyExists { .. }), "{e}");
        assert_eq!(Bundle::load(&dir).expect("load"), sample());
        other.write_to(&dir, Existing::Replace).expect("replace");
        assert_eq!(Bundle::load(&dir).expect("load"), other);
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }

    #[test]
    fn refuses_paths_escaping_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut b = Bundle::new();
        b.insert("../evil", Secret::public("x"));
        assert!(
            b.write_to(&tmp.path().join("secrets"), Existing::Keep)
                .is_err()
        );
        assert!(!tmp.path().join("evil").exists());
        assert!(!tmp.path().join("secrets").exists());
    }
}
