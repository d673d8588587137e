//! Building one Go component from its wrapper module, reproducibly.
//!
//! `go build -trimpath -buildvcs=false -ldflags "-s -w -buildid= ..."` with
//! `-mod=readonly` against the committed go.mod/go.sum, Go's module and build caches
//! in the cairn cache, `GOTOOLCHAIN=local`, and `GOPROXY=off` when offline. Each
//! binary is then checked: static where it should be, its version output, and its
//! sha256 against the lockfile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cache::{self, Cache, CacheStatus, Manifest};
use super::{Error, GoComponent, Lockfile};
use crate::elf;

/// A built (or cached) Go component.
#[derive(Debug, Clone)]
pub struct GoEntry {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
    pub status: CacheStatus,
    pub seconds: f64,
    pub bytes: u64,
    /// binary name -> sha256
    pub hashes: Manifest,
}

impl GoEntry {
    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What the cache key covers: every build input except the output hashes.
#[derive(Serialize)]
struct KeyInputs<'a> {
    name: &'a str,
    module: &'a str,
    version: &'a str,
    cgo: bool,
    static_cgo: bool,
    tags: &'a [String],
    ldflags: &'a [String],
    binaries: Vec<(&'a str, &'a str)>,
    go: &'a str,
    source_date_epoch: u64,
    /// (package, pinned sha256) of each cgo sysroot package.
    cgo_debs: Vec<(&'a str, &'a str)>,
    go_mod: String,
    go_sum: String,
}

/// The cache directory for this component's current lockfile entry.
pub(crate) fn entry_dir(lock: &Lockfile, cache: &Cache, c: &GoComponent) -> Result<PathBuf, Error> {
    let gomod = lock.gomod_dir(c);
    let read = |f: &str| {
        let p = gomod.join(f);
        fs::read_to_string(&p).map_err(Error::io(format!(
            "component {}: reading {}",
            c.name,
            p.display()
        )))
    };
    let inputs = KeyInputs {
        name: &c.name,
        module: &c.module,
        version: &c.version,
        cgo: c.cgo,
        static_cgo: c.static_cgo,
        tags: &c.tags,
        ldflags: &c.ldflags,
        binaries: c
            .binaries
            .iter()
            .map(|b| (b.name.as_str(), b.package.as_str()))
            .collect(),
        go: &lock.build.go,
        source_date_epoch: lock.build.source_date_epoch,
        cgo_debs: c
            .cgo_debs
            .iter()
            .filter_map(|d| lock.deb_package(d))
            .map(|d| (d.name.as_str(), d.sha256.as_str()))
            .collect(),
        go_mod: read("go.mod")?,
        go_sum: read("go.sum")?,
    };
    let json = serde_json::to_vec(&inputs).map_err(|e| Error::Host(e.to_string()))?;
    let key = cache::sha256_bytes(&json);
    Ok(cache
        .components()
        .join(format!("{}-{}-{}", c.name, c.version, &key[..12])))
}

/// Whether the Go module cache holds the source of the component's module (and
/// its `also_require` modules) at the pinned version, so it can be built offline.
pub(crate) fn module_cached(cache: &Cache, c: &GoComponent) -> bool {
    std::iter::once(&c.module).chain(&c.also_require).all(|m| {
        // The module cache writes upper-case letters as '!' + lower-case.
        let escaped: String = m
            .chars()
            .flat_map(|ch| {
                if ch.is_ascii_uppercase() {
                    vec!['!', ch.to_ascii_lowercase()]
                } else {
                    vec![ch]
                }
            })
            .collect();
        let zip = cache
            .go_mod()
            .join("cache/download")
            .join(escaped)
            .join("@v")
            .join(format!("{}.zip", c.version));
        zip.is_file()
    })
}

/// The Go toolchain on PATH (or /usr/local/go/bin/go) and its version.
pub(crate) fn go_tool() -> Result<(PathBuf, String), Error> {
    let candidates = [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")];
    for go in candidates {
        if let Ok(out) = Command::new(&go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            && out.status.success()
        {
            return Ok((go, String::from_utf8_lossy(&out.stdout).trim().to_string()));
        }
    }
    Err(Error::Host(
        "no Go toolchain found (looked for `go` on PATH and /usr/local/go/bin/go)".into(),
    ))
}

/// Environment for every go command: caches in the cairn cache, no network when offline.
pub(crate) fn go_command(go: &Path, cache: &Cache, dir: &Path, offline: bool) -> Command {
    let mut cmd = Command::new(go);
    cmd.current_dir(dir)
        .env("GOMODCACHE", cache.go_mod())
        .env("GOCACHE", cache.go_build())
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .env("GOOS", "linux")
        .env("GOARCH", "amd64")
        .env("GOAMD64", "v1")
        .env("GOWORK", "off");
    if offline {
        cmd.env("GOPROXY", "off");
    }
    cmd
}

/// Builds every binary of `c` into `staging`, checks each, and returns the manifest.
pub(crate) fn build(
    lock: &Lockfile,
    cache: &Cache,
    c: &GoComponent,
    staging: &Path,
    offline: bool,
    check_pins: bool,
    cgo_sysroot: Option<&Path>,
) -> Result<Manifest, Error> {
    let (go, goversion) = go_tool()?;
    if check_pins && goversion != lock.build.go && c.binaries.iter().any(|b| !b.sha256.is_empty()) {
        return Err(Error::Component {
            component: c.name.clone(),
            reason: format!(
                "the lockfile's hashes were produced with {} but this machine has {goversion}; \
                 install {} or re-pin with `cairn-image components update`",
                lock.build.go, lock.build.go
            ),
        });
    }
    let epoch = lock.build.source_date_epoch;
    let gomod = lock.gomod_dir(c);
    let logs = cache.logs();
    fs::create_dir_all(&logs).map_err(Error::io(format!("creating {}", logs.display())))?;
    let mut ldflags = vec!["-s".to_string(), "-w".to_string(), "-buildid=".to_string()];
    ldflags.extend(c.ldflags.iter().map(|f| c.expand(f, epoch)));
    if c.static_cgo {
        ldflags.push("-linkmode=external".into());
        ldflags.push("-extldflags=-static".into());
    }
    let mut manifest = Manifest::default();
    let total = c.binaries.len();
    for (i, b) in c.binaries.iter().enumerate() {
        let out = staging.join(&b.name);
        let log_path = logs.join(format!("{}-{}.log", c.name, b.name));
        let log = fs::File::create(&log_path)
            .map_err(Error::io(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(Error::io("duplicating a log handle"))?;
        let mut cmd = go_command(&go, cache, &gomod, offline);
        cmd.env("CGO_ENABLED", if c.cgo { "1" } else { "0" })
            .env("SOURCE_DATE_EPOCH", epoch.to_string());
        if let Some(root) = cgo_sysroot {
            cmd.env("PKG_CONFIG_SYSROOT_DIR", root).env(
                "PKG_CONFIG_LIBDIR",
                root.join("usr/lib/x86_64-linux-gnu/pkgconfig"),
            );
        }
        cmd.args(["build", "-p", "2", "-trimpath", "-buildvcs=false"]);
        if c.cgo {
            // Go's build cache does not key cgo objects on everything the C side
            // reads (a warm cache once gave runc a different binary than a cold
            // one): rebuild every package so the output depends only on the inputs.
            cmd.arg("-a");
        }
        cmd.arg(format!("-tags={}", c.tags.join(",")))
            .arg(format!("-ldflags={}", ldflags.join(" ")))
            .arg("-o")
            .arg(&out)
            .arg(&b.package)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let label = format!("{}/{} ({}/{total})", c.name, b.name, i + 1);
        let status = run_with_progress(&mut cmd, &label).map_err(Error::io(format!(
            "component {}: running go build for {}",
            c.name, b.name
        )))?;
        if !status.success() {
            return Err(Error::GoBuild {
                component: c.name.clone(),
                binary: b.name.clone(),
                status: status.to_string(),
                tail: tail_lines(&log_path, 40),
            });
        }
        check_binary(c, b, &out, epoch)?;
        let hash = cache::sha256_file(&out)?;
        if check_pins && !b.sha256.is_empty() && b.sha256 != hash {
            return Err(Error::BinaryHashMismatch {
                component: c.name.clone(),
                binary: b.name.clone(),
                expected: b.sha256.clone(),
                actual: hash,
            });
        }
        manifest.files.insert(b.name.clone(), hash);
    }
    Ok(manifest)
}

/// Static where it should be, and prints the pinned version.
fn check_binary(
    c: &GoComponent,
    b: &super::GoBinary,
    path: &Path,
    epoch: u64,
) -> Result<(), Error> {
    let fail = |reason: String| Error::Component {
        component: c.name.clone(),
        reason,
    };
    if !c.cgo || c.static_cgo {
        let needs = elf::needs(path).map_err(|e| fail(e.to_string()))?;
        if !needs.is_static() {
            return Err(fail(format!(
                "{} should be static but needs {needs:?}",
                b.name
            )));
        }
    }
    let expect = c.expand(&b.expect, epoch);
    let output = version_output(path, &b.version_args)
        .map_err(|e| fail(format!("running {} {:?}: {e}", b.name, b.version_args)))?;
    if !output.contains(&expect) {
        return Err(fail(format!(
            "{} {:?} printed {:?}, expected it to contain {expect:?}",
            b.name,
            b.version_args,
            output.trim()
        )));
    }
    Ok(())
}

/// Runs `path args` with a clean environment and a 30 s limit; stdout + stderr.
pub(crate) fn version_output(path: &Path, args: &[String]) -> std::io::Result<String> {
    let tmp = tempfile::tempdir()?;
    let mut child = Command::new(path)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", tmp.path())
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 30 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Runs a long command, printing a line every 30 s so a person sees it is alive.
pub(crate) fn run_with_progress(
    cmd: &mut Command,
    label: &str,
) -> std::io::Result<std::process::ExitStatus> {
    let start = Instant::now();
    eprintln!("  building {label} ...");
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel::<()>();
    let label_owned = label.to_string();
    let ticker = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(30)) {
            eprintln!(
                "  ... still building {label_owned}: {} s",
                start.elapsed().as_secs()
            );
        }
    });
    let status = child.wait();
    let _ = tx.send(());
    let _ = ticker.join();
    eprintln!("  built {label} in {:.1} s", start.elapsed().as_secs_f64());
    status
}

/// The last `n` lines of a text file (for error messages).
pub(crate) fn tail_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
