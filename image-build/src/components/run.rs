//! Orchestrates a components build: what is cached, what must be built, in which
//! order, and the summary table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::cache::{self, Cache, CacheStatus, EntryState};
use super::{DebEntry, Error, GoEntry, Lockfile, deb, go};

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Never touch the network: GOPROXY=off and no apt-get.
    pub offline: bool,
    /// Only these components / packages (empty = all).
    pub only: Vec<String>,
    /// A local folder of .deb files consulted before apt-get.
    pub deb_dir: Option<PathBuf>,
    /// Do not compare built binaries with the lockfile's sha256 (used by `update`).
    pub skip_pins: bool,
}

/// One line of the summary table.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    pub bytes: u64,
    pub status: CacheStatus,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    pub go: BTreeMap<String, GoEntry>,
    pub deb: BTreeMap<String, DebEntry>,
    pub rows: Vec<ReportRow>,
    pub seconds: f64,
}

impl BuildReport {
    /// The path of a built binary, e.g. `("etcd", "etcdctl")`.
    pub fn binary(&self, component: &str, binary: &str) -> Result<PathBuf, Error> {
        let entry = self.go.get(component).ok_or_else(|| Error::Component {
            component: component.into(),
            reason: "not built in this run".into(),
        })?;
        Ok(entry.binary(binary))
    }

    /// The extracted tree of a Debian package.
    pub fn deb_root(&self, name: &str) -> Result<&Path, Error> {
        self.deb
            .get(name)
            .map(|d| d.root.as_path())
            .ok_or_else(|| Error::Deb {
                name: name.into(),
                version: String::new(),
                reason: "not fetched in this run (missing from the lockfile?)".into(),
            })
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<5} {:<28} {:<20} {:>10} {:<7} {:>8}",
            "KIND", "NAME", "VERSION", "SIZE", "STATUS", "SECONDS"
        );
        for r in &self.rows {
            let status = match r.status {
                CacheStatus::Cached => "cached",
                CacheStatus::Built => "built",
            };
            let _ = writeln!(
                s,
                "{:<5} {:<28} {:<20} {:>10} {:<7} {:>8.1}",
                r.kind,
                r.name,
                r.version,
                human_bytes(r.bytes),
                status,
                r.seconds
            );
        }
        let total: u64 = self.rows.iter().map(|r| r.bytes).sum();
        let _ = writeln!(s, "total {} in {:.1} s", human_bytes(total), self.seconds);
        s
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// Builds or fetches every selected entry of the lockfile and reports on each.
pub fn build_all(
    lock: &Lockfile,
    cache: &Cache,
    opts: &BuildOptions,
) -> Result<BuildReport, Error> {
    let start = Instant::now();
    let selected = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == name);
    let gos: Vec<_> = lock.go.iter().filter(|c| selected(&c.name)).collect();
    // A selected Go component brings the packages its cgo build compiles against.
    let debs: Vec<_> = lock
        .deb
        .iter()
        .filter(|d| selected(&d.name) || gos.iter().any(|c| c.cgo_debs.contains(&d.name)))
        .collect();
    for o in &opts.only {
        if lock.go_component(o).is_none() && lock.deb_package(o).is_none() {
            return Err(Error::Lockfile {
                path: lock.path.clone(),
                reason: format!("no component or package named `{o}`"),
            });
        }
    }

    // What is missing? Offline, name every missing entry at once rather than failing on the first.
    let mut go_state = Vec::new();
    for c in &gos {
        let dir = go::entry_dir(lock, cache, c)?;
        let state = cache::check_entry(&dir)?;
        let usable = matches!(&state, EntryState::Valid(m) if opts.skip_pins || pins_match(c, m));
        go_state.push((*c, dir, state, usable));
    }
    if opts.offline {
        let mut missing: Vec<String> = go_state
            .iter()
            .filter(|(c, _, _, usable)| !usable && !go::module_cached(cache, c))
            .map(|(c, _, _, _)| format!("{} {}", c.name, c.version))
            .collect();
        for d in &debs {
            // Named as `deb::obtain` looks for it (epoch ':' as "%3a", arch amd64 or all).
            let stem = format!("{}_{}_", d.name, d.version.replace(':', "%3a"));
            let in_dir = opts.deb_dir.as_deref().is_some_and(|dir| {
                ["amd64", "all"]
                    .iter()
                    .any(|arch| dir.join(format!("{stem}{arch}.deb")).is_file())
            });
            if !deb::is_cached(cache, d)? && !in_dir {
                missing.push(format!("deb {} {}", d.name, d.version));
            }
        }
        if !missing.is_empty() {
            return Err(Error::OfflineMissing { missing });
        }
    }
    if go_state.iter().any(|(c, _, _, usable)| !usable && c.cgo) {
        check_host_packages(&lock.build.host_packages)?;
    }

    let mut report = BuildReport::default();
    for d in debs {
        let entry = deb::ensure(cache, d, opts.deb_dir.as_deref(), opts.offline)?;
        report.rows.push(ReportRow {
            kind: "deb",
            name: entry.name.clone(),
            version: entry.version.clone(),
            bytes: entry.bytes,
            status: entry.status,
            seconds: entry.seconds,
        });
        report.deb.insert(entry.name.clone(), entry);
    }
    for (c, dir, state, usable) in go_state {
        let t = Instant::now();
        let (status, manifest) = match state {
            EntryState::Valid(m) if usable => (CacheStatus::Cached, m),
            other => {
                if let EntryState::Corrupt(reason) = &other {
                    eprintln!(
                        "component {}: cache entry is damaged ({reason}); rebuilding",
                        c.name
                    );
                }
                if let EntryState::Valid(_) = &other {
                    eprintln!(
                        "component {}: cached binaries differ from the lockfile's hashes; rebuilding",
                        c.name
                    );
                }
                let scratch = cache.scratch(&format!("go-{}", c.name))?;
                let staging = scratch.path().join("entry");
                std::fs::create_dir_all(&staging)
                    .map_err(Error::io(format!("creating {}", staging.display())))?;
                let sysroot = c.cgo_debs.first().map(|d| report.deb_root(d)).transpose()?;
                let manifest = go::build(
                    lock,
                    cache,
                    c,
                    &staging,
                    opts.offline,
                    !opts.skip_pins,
                    sysroot,
                )?;
                cache::commit_entry(&staging, &dir, &manifest)?;
                (CacheStatus::Built, manifest)
            }
        };
        let bytes = manifest
            .files
            .keys()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let entry = GoEntry {
            name: c.name.clone(),
            version: c.version.clone(),
            dir,
            status,
            seconds: t.elapsed().as_secs_f64(),
            bytes,
            hashes: manifest,
        };
        report.rows.push(ReportRow {
            kind: "go",
            name: entry.name.clone(),
            version: entry.version.clone(),
            bytes,
            status,
            seconds: entry.seconds,
        });
        report.go.insert(entry.name.clone(), entry);
    }
    if opts.only.is_empty() {
        let mut keep: Vec<PathBuf> = report.go.values().map(|e| e.dir.clone()).collect();
        keep.extend(lock.deb.iter().map(|d| deb::entry_dir(cache, d)));
        prune(cache, &keep);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Removes cache entries no lockfile entry points at any more (older versions or
/// build inputs), so the cache does not grow with every version bump.
fn prune(cache: &Cache, keep: &[PathBuf]) {
    for dir in [cache.components(), cache.debs()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !keep.contains(&path) {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => eprintln!("components: removed stale cache entry {}", path.display()),
                    Err(err) => eprintln!(
                        "components: could not remove stale {}: {err}",
                        path.display()
                    ),
                }
            }
        }
    }
}

/// The cached entries of `names` (Go components or Debian packages) from the
/// repository's lockfile and the default cache, for tests and tools that need the
/// real components. Builds nothing: an absent, damaged or outdated entry is an
/// error that names it and says how to fill the cache.
pub fn cached(names: &[&str]) -> Result<BuildReport, Error> {
    let lock = Lockfile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("components.toml"))?;
    let cache = Cache::from_env();
    let mut missing = Vec::new();
    for name in names {
        if let Some(c) = lock.go_component(name) {
            let usable = matches!(cache::check_entry(&go::entry_dir(&lock, &cache, c)?)?, EntryState::Valid(m) if pins_match(c, &m));
            if !usable {
                missing.push(format!("{} {}", c.name, c.version));
            }
        } else if let Some(d) = lock.deb_package(name) {
            if !deb::is_cached(&cache, d)? {
                missing.push(format!("deb {} {}", d.name, d.version));
            }
        } else {
            missing.push(format!("{name} (not in the lockfile)"));
        }
    }
    if !missing.is_empty() {
        return Err(Error::NotCached {
            cache: cache.root().to_path_buf(),
            missing,
        });
    }
    build_all(
        &lock,
        &cache,
        &BuildOptions {
            offline: true,
            only: names.iter().map(|n| n.to_string()).collect(),
            ..BuildOptions::default()
        },
    )
}

fn pins_match(c: &super::GoComponent, m: &cache::Manifest) -> bool {
    c.binaries.iter().all(|b| {
        m.files
            .get(&b.name)
            .is_some_and(|h| b.sha256.is_empty() || *h == b.sha256)
    })
}

fn check_host_packages(pkgs: &[String]) -> Result<(), Error> {
    let mut missing = Vec::new();
    for p in pkgs {
        let ok = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .map(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
            })
            .unwrap_or(false);
        if !ok {
            missing.push(p.clone());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Host(format!(
            "host packages needed for the build are missing: {} (apt-get install -y {})",
            missing.join(", "),
            missing.join(" ")
        )))
    }
}
