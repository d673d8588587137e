//! The component cache outside the repository.
//!
//! Layout under `$CAIRN_CACHE` (default `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`):
//! `go-mod/` and `go-build/` (Go's module and build caches), `components/<name>-<version>-<key>/`
//! (built binaries + `manifest.json`), `debs/` (verified .deb files and their extracted
//! trees) and `logs/`. An entry appears only by an atomic rename once complete, and is
//! re-hashed against its manifest whenever it is used, so a truncated or edited file is
//! noticed and rebuilt.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Error;

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Whether an entry was already cached or had to be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Cached,
    Built,
}

/// What a complete entry holds: file name -> sha256.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub files: BTreeMap<String, String>,
}

/// The state of an entry directory.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryState {
    Missing,
    Valid(Manifest),
    Corrupt(String),
}

const MANIFEST: &str = "manifest.json";

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    /// `$CAIRN_CACHE`, else `$XDG_CACHE_HOME/cairn`, else `$HOME/.cache/cairn`.
    pub fn from_env() -> Cache {
        let root = std::env::var_os("CAIRN_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("cairn")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cairn")))
            .unwrap_or_else(|| PathBuf::from("/var/cache/cairn"));
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn go_mod(&self) -> PathBuf {
        self.root.join("go-mod")
    }
    pub fn go_build(&self) -> PathBuf {
        self.root.join("go-build")
    }
    pub fn components(&self) -> PathBuf {
        self.root.join("components")
    }
    pub fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// A fresh scratch directory under the cache (same filesystem, so it can be renamed into place).
    pub fn scratch(&self, label: &str) -> Result<tempfile::TempDir, Error> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&dir)
            .map_err(Error::io(format!(
                "creating a scratch directory in {}",
                dir.display()
            )))
    }
}

/// Hashes a file with sha256, streaming.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks an entry directory against its manifest: every listed file exists with
/// the recorded hash.
pub fn check_entry(dir: &Path) -> Result<EntryState, Error> {
    let manifest_path = dir.join(MANIFEST);
    if !dir.exists() {
        return Ok(EntryState::Missing);
    }
    let text = match fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(_) => {
            return Ok(EntryState::Corrupt(format!(
                "{} is missing",
                manifest_path.display()
            )));
        }
    };
    let manifest: Manifest = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => {
            return Ok(EntryState::Corrupt(format!(
                "{}: {e}",
                manifest_path.display()
            )));
        }
    };
    for (name, want) in &manifest.files {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(EntryState::Corrupt(format!(
                "{} is missing",
                path.display()
            )));
        }
        let got = sha256_file(&path)?;
        if &got != want {
            return Ok(EntryState::Corrupt(format!(
                "{} has sha256 {got}, its manifest says {want}",
                path.display()
            )));
        }
    }
    Ok(EntryState::Valid(manifest))
}

/// Writes the manifest into `staging` and renames it to `dest`, replacing any
/// (corrupt) previous entry.
pub fn commit_entry(staging: &Path, dest: &Path, manifest: &Manifest) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(manifest).map_err(|e| Error::Host(e.to_string()))?;
    fs::write(staging.join(MANIFEST), json).map_err(Error::io(format!(
        "writing the manifest in {}",
        staging.display()
    )))?;
    if dest.exists() {
        fs::remove_dir_all(dest)
            .map_err(Error::io(format!("removing stale {}", dest.display())))?;
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(Error::io(format!("creating {}", parent.display())))?;
    }
    fs::rename(staging, dest).map_err(Error::io(format!(
        "moving {} into place at {}",
        staging.display(),
        dest.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lifecycle_detects_truncation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let staging = tmp.path().join("staging");
        fs::create_dir_all(&staging).expect("mkdir");
        fs::write(staging.join("bin"), b"hello world").expect("write");
        let mut m = Manifest::default();
        m.files.insert("bin".into(), sha256_bytes(b"hello world"));
        let dest = tmp.path().join("entry");
        assert_eq!(check_entry(&dest).expect("check"), EntryState::Missing);
        commit_entry(&staging, &dest, &m).expect("commit");
        assert_eq!(check_entry(&dest).expect("check"), EntryState::Valid(m));
        fs::write(dest.join("bin"), b"hello").expect("truncate");
        match check_entry(&dest).expect("check") {
            EntryState::Corrupt(reason) => assert!(reason.contains("bin has sha256"), "{reason}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn missing_manifest_is_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        match check_entry(tmp.path()).expect("check") {
            EntryState::Corrupt(reason) => assert!(reason.contains("manifest.json is missing")),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }
}
