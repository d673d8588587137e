//! Imports the pause image archive written by `cairn_image::oci` into a REAL
//! containerd (the pinned v2.2.9 from the component cache), the way a cairn node
//! does at boot: `ctr -n k8s.io images import`.
//!
//! Needs the component cache warm for containerd (`cargo run --release -p
//! cairn-image -- components build`); on a cold cache the test fails with that
//! instruction, it never passes vacuously. It builds the static pause binary with
//! a nested `cargo build` into `target/static` (or takes `$CAIRN_PAUSE_BIN`).
//!
//! containerd runs as a child process with a generated config: root, state, temp
//! and the socket in a temporary directory; the CRI plugins, NRI, `/opt`-plugin,
//! tracing and every snapshotter but `native` disabled, so it touches nothing of
//! the host but the empty `/run/containerd` it always creates (the shim socket
//! root is hard-coded; removed again if this test created it). It is killed by
//! its pid in a drop guard, also when the test fails.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_image::components::Lockfile;
use cairn_image::{elf, oci};

const WARM_HINT: &str = "the real component cache has no containerd v2.2.9: run \
     `cargo run --release -p cairn-image -- components build` first (CI runs it before these tests)";

/// The pinned build epoch (any fixed value would do; this is the lockfile's).
fn epoch(lock: &Lockfile) -> u64 {
    lock.build.source_date_epoch
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("CARGO_MANIFEST_DIR has no parent"))
        .to_path_buf()
}

/// `containerd` and `ctr` from the warm component cache.
fn containerd_binaries() -> (PathBuf, PathBuf) {
    let report = cairn_image::components::cached(&["containerd"]).unwrap_or_else(|e| panic!("{e}"));
    let get = |b: &str| {
        let p = report
            .binary("containerd", b)
            .unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
        assert!(p.is_file(), "{WARM_HINT}: {} is missing", p.display());
        p
    };
    (get("containerd"), get("ctr"))
}

/// The static pause binary: `$CAIRN_PAUSE_BIN`, else built with the documented
/// command into `target/static`.
fn static_pause() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_PAUSE_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let target_dir = root.join("target/static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "cairn-pause",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running cargo build for cairn-pause: {e}"));
    assert!(
        out.status.success(),
        "building the static pause binary failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("x86_64-unknown-linux-gnu/release/cairn-pause")
}

/// A running containerd; killed by its pid (SIGKILL) when dropped unless it was
/// already stopped, then `/run/containerd` removed if it created it and it is empty.
struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    root: PathBuf,
    ctr: PathBuf,
    created_run_dir: bool,
}

const RUN_DIR: &str = "/run/containerd";

impl Containerd {
    fn start(containerd: &Path, ctr: &Path, dir: &Path) -> Containerd {
        let root = dir.join("root");
        let state = dir.join("state");
        let temp = dir.join("tmp");
        let verifier = dir.join("verifier");
        let socket = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        for d in [&temp, &verifier] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        let config = format!(
            r#"version = 3
root = '{root}'
state = '{state}'
temp = '{temp}'
imports = []
disabled_plugins = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.cri.v1.images',
  'io.containerd.cri.v1.runtime',
  'io.containerd.podsandbox.controller.v1.podsandbox',
  'io.containerd.nri.v1.nri',
  'io.containerd.internal.v1.opt',
  'io.containerd.snapshotter.v1.overlayfs',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.mount-handler.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
]

[grpc]
  address = '{socket}'

[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = '{verifier}'

[plugins.'io.containerd.transfer.v1.local']
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = 'native'
"#,
            root = root.display(),
            state = state.display(),
            temp = temp.display(),
            socket = socket.display(),
            verifier = verifier.display(),
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let log_file =
            fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let log_err = log_file.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let created_run_dir = !Path::new(RUN_DIR).exists();
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", containerd.display()));
        Containerd {
            child: Some(child),
            socket,
            log,
            root,
            ctr: ctr.to_path_buf(),
            created_run_dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the socket to answer `ctr version`.
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "containerd exited before serving ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if self.socket.exists() && self.ctr_raw(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve {} within {within:?}; log:\n{}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctr_raw(&self, args: &[&str]) -> Output {
        Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.ctr.display()))
    }

    /// Runs ctr, asserts success, returns stdout.
    fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_raw(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills containerd by its pid (SIGKILL: nothing here needs a clean
    /// shutdown) and reaps it. Returns its status.
    fn kill(&mut self) -> std::process::ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("containerd already stopped"));
        child
            .kill()
            .unwrap_or_else(|e| panic!("killing containerd {}: {e}", child.id()));
        child
            .wait()
            .unwrap_or_else(|e| panic!("reaping containerd {}: {e}", child.id()))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.created_run_dir {
            // Only if still empty: never touches a directory with content.
            let _ = fs::remove_dir(RUN_DIR);
        }
    }
}

fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .filter(|r: &Vec<String>| !r.is_empty())
        .collect()
}

#[test]
fn pause_archive_imports_into_real_containerd() {
    let t0 = Instant::now();
    let lock_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("components.toml");
    let lock = Lockfile::load(&lock_path)
        .unwrap_or_else(|e| panic!("loading {}: {e}", lock_path.display()));
    let (containerd, ctr) = containerd_binaries();
    let t_components = t0.elapsed();

    let t1 = Instant::now();
    let pause = static_pause();
    let needs = elf::needs(&pause).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        needs.is_static(),
        "{} is not static: {needs:?}",
        pause.display()
    );
    let t_pause = t1.elapsed();

    let dir = tempfile::Builder::new()
        .prefix("cairn-oci-ctd-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"));
    let t2 = Instant::now();
    let spec = oci::pause_image(&pause, epoch(&lock)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.reference(), oci::PAUSE_IMAGE);
    let archive = dir.path().join("pause.oci.tar");
    let digests = oci::write_archive(&spec, &archive).unwrap_or_else(|e| panic!("{e}"));
    let t_archive = t2.elapsed();

    let t3 = Instant::now();
    let mut ctd = Containerd::start(&containerd, &ctr, dir.path());
    ctd.wait_ready(Duration::from_secs(30));
    let t_start = t3.elapsed();

    let t4 = Instant::now();
    let archive_arg = archive.to_string_lossy().into_owned();
    let imported = ctd.ctr(&["images", "import", "--snapshotter", "native", &archive_arg]);
    let t_import = t4.elapsed();
    eprintln!("ctr images import:\n{imported}");

    // Exactly our name, pointing at our manifest.
    let names = ctd.ctr(&["images", "ls", "-q"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        vec![oci::PAUSE_IMAGE],
        "images ls -q:\n{names}"
    );
    let ls = ctd.ctr(&["images", "ls"]);
    eprintln!("ctr images ls:\n{ls}");
    let ls_rows = rows(&ls);
    assert_eq!(ls_rows.len(), 1, "{ls}");
    assert_eq!(ls_rows[0][0], oci::PAUSE_IMAGE, "{ls}");
    assert_eq!(ls_rows[0][1], oci::MEDIA_MANIFEST, "{ls}");
    assert_eq!(ls_rows[0][2], digests.manifest, "{ls}");
    assert!(ls.contains("linux/amd64"), "{ls}");

    // Complete (all content present) and unpacked into the native snapshotter.
    let check = ctd.ctr(&["images", "check", "--snapshotter", "native"]);
    eprintln!("ctr images check:\n{check}");
    let check_rows = rows(&check);
    assert_eq!(check_rows.len(), 1, "{check}");
    let row = &check_rows[0];
    assert_eq!(row[0], oci::PAUSE_IMAGE, "{check}");
    assert_eq!(row[2], digests.manifest, "{check}");
    assert!(
        row.iter().any(|c| c == "complete"),
        "image not complete:\n{check}"
    );
    assert_eq!(
        row.last().map(String::as_str),
        Some("true"),
        "image not unpacked:\n{check}"
    );
    let ready = ctd.ctr(&["images", "check", "--snapshotter", "native", "-q"]);
    assert_eq!(ready.trim(), oci::PAUSE_IMAGE, "images check -q:\n{ready}");

    // The unpacked snapshot holds our pause binary as /pause, 0755, mtime = epoch.
    let snapshots = ctd
        .root
        .join("io.containerd.snapshotter.v1.native/snapshots");
    let unpacked: Vec<PathBuf> = fs::read_dir(&snapshots)
        .unwrap_or_else(|e| panic!("reading {}: {e}", snapshots.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("pause")))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(unpacked.len(), 1, "snapshots with /pause: {unpacked:?}");
    let meta = fs::metadata(&unpacked[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.mtime() as u64, epoch(&lock));
    let original = fs::read(&pause).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fs::read(&unpacked[0]).ok() == Some(original),
        "unpacked /pause differs from the binary"
    );

    let pid = ctd.child.as_ref().map(Child::id);
    let status = ctd.kill();
    eprintln!("containerd {pid:?} killed: {status}");
    if let Some(pid) = pid {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "containerd {pid} still there"
        );
    }
    drop(ctd);
    eprintln!(
        "timings: components {t_components:?}, static pause {t_pause:?}, archive {t_archive:?} \
         ({} bytes, manifest {}), containerd ready {t_start:?}, import {t_import:?}",
        digests.archive_size, digests.manifest
    );
}
