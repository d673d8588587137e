//! Integration tests of the components builder against the REAL pinned components.
//!
//! Tests that read the real cache (`Cache::from_env()`: `$CAIRN_CACHE`, else
//! `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`) need it warm: run
//! `cargo run --release -p cairn-image -- components build` first (CI does). On a
//! cold cache a plain `cargo test` skips them with that instruction; under
//! `CI=true` they fail with it, so CI never passes them vacuously. They only
//! read the real cache: every test that builds or fetches does so into its own
//! temporary cache (sharing the real Go module and build caches through symlinks
//! where it must build offline), so the tests are independent and run in parallel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cairn_image::components::{
    BuildOptions, BuildReport, Cache, CacheStatus, DebPackage, Error, Lockfile, build_all,
};
use cairn_image::elf;
use sha2::{Digest as _, Sha256};

const WARM_HINT: &str = "the real component cache is cold or incomplete: run \
     `cargo run --release -p cairn-image -- components build` first (CI runs it before these tests)";

/// The timed warm run takes this exclusively so the other heavy tests (hashing
/// ~750 MiB, Go builds) do not skew its timing; they share it among themselves.
/// This only orders the tests: none needs another to have run.
static HEAVY: RwLock<()> = RwLock::new(());

fn heavy_shared() -> RwLockReadGuard<'static, ()> {
    HEAVY
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn heavy_exclusive() -> RwLockWriteGuard<'static, ()> {
    HEAVY
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lockfile_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("components.toml")
}

fn real_lock() -> Lockfile {
    let path = lockfile_path();
    Lockfile::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn offline_only(only: &[&str]) -> BuildOptions {
    BuildOptions {
        offline: true,
        only: only.iter().map(|s| (*s).to_string()).collect(),
        ..BuildOptions::default()
    }
}

/// sha256 of a file, computed independently of the builder by coreutils'
/// `sha256sum` (also much faster than an unoptimised test build hashing 700 MiB).
fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running sha256sum {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        hash.len(),
        64,
        "sha256sum {} printed {text:?}",
        path.display()
    );
    hash
}

/// Whether the real cache has an entry directory for every selected Go component
/// and deb; if not, the test is skipped outside CI and fails under `CI=true`, with
/// the instruction to warm it. A cheap look before `build_all`, so a partly warm
/// cache is reported rather than built into.
fn require_warm(cache: &Cache, lock: &Lockfile, only: &[&str]) -> bool {
    let selected = |n: &str| only.is_empty() || only.contains(&n);
    let list = |dir: PathBuf| -> Vec<String> {
        fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let components = list(cache.components());
    let debs = list(cache.debs());
    let mut missing = Vec::new();
    for c in lock.go.iter().filter(|c| selected(&c.name)) {
        let prefix = format!("{}-{}-", c.name, c.version);
        let present = components.iter().any(|e| {
            e.starts_with(&prefix) && cache.components().join(e).join("manifest.json").is_file()
        });
        if !present {
            missing.push(format!("{} {}", c.name, c.version));
        }
    }
    for d in lock.deb.iter().filter(|d| selected(&d.name)) {
        let name = format!(
            "{}_{}_{}",
            d.name,
            d.version.replace(':', "%3a"),
            &d.sha256[..12]
        );
        if !debs.contains(&name) {
            missing.push(format!("deb {} {}", d.name, d.version));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{WARM_HINT}; missing from {}: {}",
        cache.root().display(),
        missing.join(", ")
    );
    cairn_image::test_rule::skip_outside_ci(&why);
    false
}

/// `build_all(offline)` on the real cache, which must be warm (`None`: skipped,
/// see [`require_warm`]).
fn warm_report(lock: &Lockfile, only: &[&str]) -> Option<(BuildReport, Duration)> {
    let cache = Cache::from_env();
    if !require_warm(&cache, lock, only) {
        return None;
    }
    let start = Instant::now();
    let result = build_all(lock, &cache, &offline_only(only));
    let elapsed = start.elapsed();
    match result {
        Ok(report) => Some((report, elapsed)),
        Err(Error::OfflineMissing { missing }) => {
            panic!(
                "{WARM_HINT}; missing from {}: {}",
                cache.root().display(),
                missing.join(", ")
            )
        }
        Err(e) => panic!(
            "{WARM_HINT}; offline build_all on {} failed: {e}",
            cache.root().display()
        ),
    }
}

/// A temporary cache whose Go module and build caches are the real (warm) ones, so
/// an offline rebuild is possible and quick.
fn temp_cache_sharing_go_caches(real: &Cache) -> (tempfile::TempDir, Cache) {
    for dir in [real.go_mod(), real.go_build()] {
        assert!(
            dir.is_dir(),
            "{WARM_HINT}; {} does not exist",
            dir.display()
        );
    }
    let tmp = tempfile::tempdir().expect("creating a temporary cache directory");
    std::os::unix::fs::symlink(real.go_mod(), tmp.path().join("go-mod"))
        .expect("symlinking go-mod to the real cache");
    std::os::unix::fs::symlink(real.go_build(), tmp.path().join("go-build"))
        .expect("symlinking go-build to the real cache");
    let cache = Cache::new(tmp.path().to_path_buf());
    (tmp, cache)
}

/// Runs `path args` with a clean environment (so e.g. `CNI_COMMAND` is not
/// inherited), no stdin and a 60 s limit; stdout + stderr.
fn version_output(path: &Path, args: &[String]) -> String {
    let home = tempfile::tempdir().expect("creating a HOME for the version check");
    let mut child = Command::new(path)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", path.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child
        .try_wait()
        .expect("waiting for the version check")
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} did not finish within 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child
        .wait_with_output()
        .expect("collecting the version output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("listing {}: {e}", from.display())) {
        let entry = entry.expect("reading a directory entry");
        let src = entry.path();
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&src, &dest);
        } else {
            fs::copy(&src, &dest)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dest.display()));
        }
    }
}

// ------------------------------------------------------------------ 1, 2, 3

#[test]
fn every_built_binary_reports_its_pinned_version_and_hash() {
    let _heavy = heavy_shared();
    let lock = real_lock();
    let Some((report, _)) = warm_report(&lock, &[]) else {
        return;
    };
    let epoch = lock.build.source_date_epoch;
    let mut checked = 0;
    for c in &lock.go {
        for b in &c.binaries {
            let path = report
                .binary(&c.name, &b.name)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", c.name, b.name));
            let out = version_output(&path, &b.version_args);
            let expect = c.expand(&b.expect, epoch);
            assert!(
                out.contains(&expect),
                "{}/{}: `{} {:?}` printed {:?}, expected it to contain {expect:?}",
                c.name,
                b.name,
                path.display(),
                b.version_args,
                out.trim()
            );
            assert!(
                !b.sha256.is_empty(),
                "{}/{} has no sha256 pinned in the lockfile",
                c.name,
                b.name
            );
            assert_eq!(
                sha256_file(&path),
                b.sha256,
                "{}/{}: sha256 of {}",
                c.name,
                b.name,
                path.display()
            );
            eprintln!("ok {}/{}: {}", c.name, b.name, expect);
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        lock.go.iter().map(|c| c.binaries.len()).sum::<usize>()
    );
    assert!(checked >= 16, "only {checked} binaries checked");
}

#[test]
fn binaries_meant_to_be_static_are_static() {
    let _heavy = heavy_shared();
    let lock = real_lock();
    let Some((report, _)) = warm_report(&lock, &[]) else {
        return;
    };
    let mut checked = 0;
    for c in lock.go.iter().filter(|c| !c.cgo || c.static_cgo) {
        for b in &c.binaries {
            let path = report
                .binary(&c.name, &b.name)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", c.name, b.name));
            let needs = elf::needs(&path).unwrap_or_else(|e| panic!("{}/{}: {e}", c.name, b.name));
            assert!(
                needs.is_static(),
                "{}/{} ({}) should be static but needs {needs:?}",
                c.name,
                b.name,
                path.display()
            );
            checked += 1;
        }
    }
    // runc is the cgo one (static_cgo): make sure it was among those checked.
    assert!(
        lock.go.iter().any(|c| c.cgo && c.static_cgo),
        "no static cgo component in the lockfile"
    );
    assert!(checked >= 16, "only {checked} binaries checked");
}

#[test]
fn warm_run_rebuilds_nothing_and_is_quick() {
    let _heavy = heavy_exclusive();
    let lock = real_lock();
    let Some((report, elapsed)) = warm_report(&lock, &[]) else {
        return;
    };
    eprint!("{}", report.table());
    eprintln!("warm offline build_all took {:.2} s", elapsed.as_secs_f64());
    assert_eq!(
        report.rows.len(),
        lock.go.len() + lock.deb.len(),
        "one row per component and package"
    );
    let rebuilt: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.status != CacheStatus::Cached)
        .map(|r| format!("{} {}", r.kind, r.name))
        .collect();
    assert!(
        rebuilt.is_empty(),
        "a warm run rebuilt: {}",
        rebuilt.join(", ")
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "a warm run took {:.1} s",
        elapsed.as_secs_f64()
    );
}

// ------------------------------------------------------------------ 4

/// The file name `apt-get download` gives a package.
fn apt_file_name(d: &DebPackage) -> String {
    format!("{}_{}_amd64.deb", d.name, d.version.replace(':', "%3a"))
}

#[test]
fn tampered_deb_is_refused_and_not_cached_but_the_intact_one_is_accepted() {
    const PKG: &str = "libuuid1";
    let lock = real_lock();
    let d = lock
        .deb_package(PKG)
        .expect("libuuid1 is in the lockfile")
        .clone();
    let real = Cache::from_env();
    if !require_warm(&real, &lock, &[PKG]) {
        return;
    }
    let cached = real
        .debs()
        .join(format!(
            "{}_{}_{}",
            d.name,
            d.version.replace(':', "%3a"),
            &d.sha256[..12]
        ))
        .join("package.deb");
    let original = fs::read(&cached)
        .unwrap_or_else(|e| panic!("{WARM_HINT}; reading {}: {e}", cached.display()));
    assert_eq!(
        hex::encode(Sha256::digest(&original)),
        d.sha256,
        "{} is not the pinned package",
        cached.display()
    );

    let tmp_cache = tempfile::tempdir().expect("temporary cache");
    let cache = Cache::new(tmp_cache.path().to_path_buf());
    let deb_dir = tempfile::tempdir().expect("temporary deb dir");
    let deb_file = deb_dir.path().join(apt_file_name(&d));
    let mut tampered = original.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    fs::write(&deb_file, &tampered).expect("writing the tampered .deb");
    let opts = BuildOptions {
        offline: true,
        only: vec![PKG.into()],
        deb_dir: Some(deb_dir.path().to_path_buf()),
        ..BuildOptions::default()
    };

    let entries_for = |cache: &Cache| -> Vec<String> {
        fs::read_dir(cache.debs())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .filter(|n| n.starts_with(&format!("{PKG}_")))
                    .collect()
            })
            .unwrap_or_default()
    };

    match build_all(&lock, &cache, &opts) {
        Err(Error::DebHashMismatch {
            name,
            version,
            expected,
            actual,
        }) => {
            assert_eq!(name, PKG);
            assert_eq!(version, d.version);
            assert_eq!(expected, d.sha256);
            assert_eq!(actual, hex::encode(Sha256::digest(&tampered)));
        }
        Err(e) => panic!("expected DebHashMismatch for {PKG}, got: {e}"),
        Ok(r) => panic!("a tampered .deb was accepted:\n{}", r.table()),
    }
    assert!(
        entries_for(&cache).is_empty(),
        "the tampered package entered the cache: {:?}",
        entries_for(&cache)
    );

    // Same setup with the intact file: accepted, so the deb-dir path really is used.
    fs::write(&deb_file, &original).expect("writing the intact .deb");
    let report = build_all(&lock, &cache, &opts)
        .unwrap_or_else(|e| panic!("the intact {PKG} was refused: {e}"));
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].name, PKG);
    assert_eq!(report.rows[0].status, CacheStatus::Built);
    let entries = entries_for(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        sha256_file(&cache.debs().join(&entries[0]).join("package.deb")),
        d.sha256
    );
    let root = report.deb_root(PKG).expect("the extracted tree");
    assert!(
        root.join("usr/share/doc/libuuid1").is_dir(),
        "{} was not extracted",
        root.display()
    );
}

// ------------------------------------------------------------------ 5

#[test]
fn truncated_cached_binary_is_detected_and_rebuilt() {
    let _heavy = heavy_shared();
    let lock = real_lock();
    let etcd = lock
        .go_component("etcd")
        .expect("etcd is in the lockfile")
        .clone();
    let pin = etcd
        .binaries
        .iter()
        .find(|b| b.name == "etcd")
        .expect("etcd binary")
        .sha256
        .clone();
    let Some((real_report, _)) = warm_report(&lock, &["etcd"]) else {
        return;
    };
    let real_entry = real_report
        .go
        .get("etcd")
        .expect("etcd entry in the real cache")
        .dir
        .clone();

    let real = Cache::from_env();
    let (_tmp, cache) = temp_cache_sharing_go_caches(&real);
    let entry_name = real_entry.file_name().expect("entry directory name");
    let copy = cache.components().join(entry_name);
    copy_dir(&real_entry, &copy);
    let bin = copy.join("etcd");
    let len = fs::metadata(&bin)
        .expect("etcd binary in the copied entry")
        .len();
    fs::OpenOptions::new()
        .write(true)
        .open(&bin)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncating the copied etcd binary");
    assert_ne!(sha256_file(&bin), pin);

    let start = Instant::now();
    let report = build_all(&lock, &cache, &offline_only(&["etcd"]))
        .unwrap_or_else(|e| panic!("rebuilding the truncated etcd offline failed: {e}"));
    eprintln!("rebuilt etcd in {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].name, "etcd");
    assert_eq!(
        report.rows[0].status,
        CacheStatus::Built,
        "the truncated entry was not rebuilt"
    );
    let rebuilt = report.binary("etcd", "etcd").expect("etcd path");
    assert_eq!(rebuilt, bin, "rebuilt into a different entry");
    assert_eq!(
        sha256_file(&rebuilt),
        pin,
        "the rebuilt etcd differs from the lockfile pin"
    );
    // And the next run uses it.
    let again = build_all(&lock, &cache, &offline_only(&["etcd"])).expect("second run");
    assert_eq!(again.rows[0].status, CacheStatus::Cached);
}

// ------------------------------------------------------------------ 6

#[test]
fn offline_with_a_cold_cache_names_everything_missing() {
    let lock = real_lock();
    let tmp = tempfile::tempdir().expect("temporary cache");
    let cache = Cache::new(tmp.path().to_path_buf());
    let err =
        build_all(&lock, &cache, &offline_only(&[])).expect_err("a cold offline build must fail");
    let Error::OfflineMissing { missing } = &err else {
        panic!("expected OfflineMissing, got: {err}");
    };
    let mut expected: Vec<String> = lock
        .go
        .iter()
        .map(|c| format!("{} {}", c.name, c.version))
        .collect();
    expected.extend(
        lock.deb
            .iter()
            .map(|d| format!("deb {} {}", d.name, d.version)),
    );
    for want in ["etcd v3.6.8", "kubernetes v1.36.3"] {
        assert!(
            expected.iter().any(|e| e == want),
            "{want} is no longer in the lockfile"
        );
    }
    for want in &expected {
        assert!(
            missing.contains(want),
            "{want:?} not named as missing: {missing:?}"
        );
    }
    assert_eq!(
        missing.len(),
        expected.len(),
        "unexpected entries: {missing:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("etcd v3.6.8") && shown.contains("deb libuuid1"),
        "{shown}"
    );
    // Nothing was fetched or built.
    assert!(!cache.components().exists() && !cache.debs().exists());
}

// ------------------------------------------------------------------ 7

#[test]
fn failing_component_is_named_with_the_go_output_tail() {
    // A package of the wrapper module itself that does not compile: Go fails
    // in the compiler, with no module look-up (which offline, on a module cache
    // that holds only what the real build needed, could fail first elsewhere).
    const BROKEN: &str = "cairn.local/build/etcd/cairnbroken";
    const UNDEFINED: &str = "cairnNoSuchFunction";
    let _heavy = heavy_shared();
    let lock = real_lock();
    if warm_report(&lock, &["etcd"]).is_none() {
        return;
    }
    let text = fs::read_to_string(lockfile_path()).expect("reading components.toml");
    let original = r#"{ name = "etcd", package = "go.etcd.io/etcd/server/v3","#;
    assert_eq!(
        text.matches(original).count(),
        1,
        "the etcd binary line changed; update this test"
    );
    let modified = text.replace(
        original,
        &format!(r#"{{ name = "etcd", package = "{BROKEN}","#),
    );

    let dir = tempfile::tempdir().expect("temporary lockfile dir");
    let path = dir.path().join("components.toml");
    fs::write(&path, &modified).expect("writing the modified lockfile");
    let real_lock = lockfile_path();
    let real_gomod = real_lock
        .parent()
        .expect("image-build dir")
        .join("gomod/etcd");
    let wrapper = dir.path().join("gomod/etcd");
    copy_dir(&real_gomod, &wrapper);
    fs::create_dir_all(wrapper.join("cairnbroken")).expect("package dir");
    fs::write(
        wrapper.join("cairnbroken/main.go"),
        format!("package main\n\nfunc main() {{ {UNDEFINED}() }}\n"),
    )
    .expect("writing the broken package");
    let bad = Lockfile::parse(&path, &modified).expect("the modified lockfile parses");
    assert_eq!(
        bad.go_component("etcd").expect("etcd").binaries[0].package,
        BROKEN
    );

    let real = Cache::from_env();
    let (_tmp, cache) = temp_cache_sharing_go_caches(&real);
    let err = build_all(&bad, &cache, &offline_only(&["etcd"]))
        .expect_err("building a nonexistent package must fail");
    let shown = err.to_string();
    eprintln!("{shown}");
    match &err {
        Error::GoBuild {
            component,
            binary,
            tail,
            ..
        } => {
            assert_eq!(component, "etcd");
            assert_eq!(binary, "etcd");
            assert!(
                tail.contains(UNDEFINED),
                "the Go output tail does not show the compiler's error: {tail}"
            );
        }
        other => panic!("expected GoBuild, got: {other}"),
    }
    assert!(shown.contains("etcd"), "{shown}");
    assert!(
        shown.contains(UNDEFINED),
        "Display lacks Go's error output: {shown}"
    );
    assert!(
        !cache.components().exists()
            || fs::read_dir(cache.components())
                .expect("list")
                .next()
                .is_none(),
        "a failed build left an entry"
    );
}
