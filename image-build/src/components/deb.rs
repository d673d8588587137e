//! Debian packages: fetched by exact version, refused unless the .deb's sha256
//! matches the lockfile, and extracted once into the cache.
//!
//! A package comes from `--deb-dir` (a local folder of .deb files, e.g. a mirror
//! for offline machines) when it holds it, else from `apt-get download NAME=VERSION`.
//! Each cache entry is `debs/<name>_<version>_<sha12>/` with `package.deb` and the
//! extracted tree `root/`; it is renamed into place only after verification.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::cache::{self, Cache, CacheStatus};
use super::{DebPackage, Error};

/// A verified, extracted package.
#[derive(Debug, Clone)]
pub struct DebEntry {
    pub name: String,
    pub version: String,
    /// The extracted package tree (like `dpkg-deb -x`).
    pub root: PathBuf,
    pub status: CacheStatus,
    pub seconds: f64,
    pub bytes: u64,
}

pub(crate) fn entry_dir(cache: &Cache, d: &DebPackage) -> PathBuf {
    let version = d.version.replace(':', "%3a");
    cache.debs().join(format!(
        "{}_{}_{}",
        d.name,
        version,
        d.sha256.get(..12).unwrap_or("unpinned")
    ))
}

/// Whether the entry is present and its .deb still has the pinned hash.
pub(crate) fn is_cached(cache: &Cache, d: &DebPackage) -> Result<bool, Error> {
    let dir = entry_dir(cache, d);
    let deb = dir.join("package.deb");
    if !deb.is_file() || !dir.join("root").is_dir() {
        return Ok(false);
    }
    Ok(cache::sha256_file(&deb)? == d.sha256)
}

/// Makes sure the package is in the cache; fetches and verifies it if not.
pub(crate) fn ensure(
    cache: &Cache,
    d: &DebPackage,
    deb_dir: Option<&Path>,
    offline: bool,
) -> Result<DebEntry, Error> {
    let start = Instant::now();
    let dir = entry_dir(cache, d);
    let status = if is_cached(cache, d)? {
        CacheStatus::Cached
    } else {
        let scratch = cache.scratch(&format!("deb-{}", d.name))?;
        let file = obtain(d, deb_dir, offline, scratch.path())?;
        let actual = cache::sha256_file(&file)?;
        if actual != d.sha256 {
            return Err(Error::DebHashMismatch {
                name: d.name.clone(),
                version: d.version.clone(),
                expected: d.sha256.clone(),
                actual,
            });
        }
        let staging = scratch.path().join("entry");
        let root = staging.join("root");
        fs::create_dir_all(&root).map_err(Error::io(format!("creating {}", root.display())))?;
        let out = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&file)
            .arg(&root)
            .output()
            .map_err(Error::io(format!("deb {}: running dpkg-deb", d.name)))?;
        if !out.status.success() {
            return Err(Error::Deb {
                name: d.name.clone(),
                version: d.version.clone(),
                reason: format!(
                    "dpkg-deb -x failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        fs::rename(&file, staging.join("package.deb"))
            .map_err(Error::io(format!("deb {}: moving the file", d.name)))?;
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .map_err(Error::io(format!("removing stale {}", dir.display())))?;
        }
        fs::create_dir_all(cache.debs()).map_err(Error::io("creating the deb cache"))?;
        fs::rename(&staging, &dir)
            .map_err(Error::io(format!("moving {} into place", dir.display())))?;
        CacheStatus::Built
    };
    let bytes = fs::metadata(dir.join("package.deb"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(DebEntry {
        name: d.name.clone(),
        version: d.version.clone(),
        root: dir.join("root"),
        status,
        seconds: start.elapsed().as_secs_f64(),
        bytes,
    })
}

/// Downloads a package without checking its hash and returns the hash (for `update`).
pub(crate) fn fetch_hash(
    cache: &Cache,
    d: &DebPackage,
    deb_dir: Option<&Path>,
) -> Result<String, Error> {
    let scratch = cache.scratch(&format!("deb-{}", d.name))?;
    let file = obtain(d, deb_dir, false, scratch.path())?;
    cache::sha256_file(&file)
}

/// Puts the .deb into `into`, from `deb_dir` if it has it, else with apt-get.
fn obtain(
    d: &DebPackage,
    deb_dir: Option<&Path>,
    offline: bool,
    into: &Path,
) -> Result<PathBuf, Error> {
    let err = |reason: String| Error::Deb {
        name: d.name.clone(),
        version: d.version.clone(),
        reason,
    };
    // apt names files NAME_VERSION_ARCH.deb with the epoch's ':' written as "%3a".
    let stem = format!("{}_{}_", d.name, d.version.replace(':', "%3a"));
    if let Some(src) = deb_dir {
        for arch in ["amd64", "all"] {
            let candidate = src.join(format!("{stem}{arch}.deb"));
            if candidate.is_file() {
                let dest = into.join(format!("{stem}{arch}.deb"));
                fs::copy(&candidate, &dest)
                    .map_err(Error::io(format!("copying {}", candidate.display())))?;
                return Ok(dest);
            }
        }
    }
    if offline {
        return Err(err(
            "not in the cache and --offline forbids apt-get download".into(),
        ));
    }
    let out = Command::new("apt-get")
        .arg("download")
        .arg(format!("{}={}", d.name, d.version))
        .current_dir(into)
        .output()
        .map_err(Error::io(format!(
            "deb {}: running apt-get download",
            d.name
        )))?;
    if !out.status.success() {
        return Err(err(format!(
            "apt-get download failed: {} (is the version still on the mirror? `apt-get update` first)",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let found = fs::read_dir(into)
        .map_err(Error::io(format!("listing {}", into.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    found.ok_or_else(|| err("apt-get download produced no .deb file".into()))
}
