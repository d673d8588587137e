//! Imports the pod image archives written by `cairn_image::oci` (pause,
//! CoreDNS, webtest) into a REAL containerd (the pinned v2.2.9 from the
//! component cache), the way a cairn node does at boot: `ctr -n k8s.io images
//! import`.
//!
//! Needs the component cache warm for containerd and CoreDNS (`cargo run
//! --release -p cairn-image -- components build`); on a cold cache the test
//! fails with that instruction, it never passes vacuously. It builds the static
//! pause and webtest binaries with `static_bins::build_static` (a nested `cargo
//! build` into `target/static`), or takes `$CAIRN_PAUSE_BIN` / `$CAIRN_WEBTEST_BIN`.
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

use cairn_image::components::{BuildReport, Lockfile};
use cairn_image::oci::{self, Digests, ImageSpec};
use cairn_image::{elf, static_bins};

const WARM_HINT: &str = "the real component cache has no containerd v2.2.9 or CoreDNS v1.14.2: run \
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

/// `containerd`, `ctr` and `coredns` from the warm component cache.
fn cached_binaries() -> (PathBuf, PathBuf, PathBuf) {
    let report: BuildReport = cairn_image::components::cached(&["containerd", "coredns"])
        .unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
    let get = |component: &str, b: &str| {
        let p = report
            .binary(component, b)
            .unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
        assert!(p.is_file(), "{WARM_HINT}: {} is missing", p.display());
        p
    };
    (
        get("containerd", "containerd"),
        get("containerd", "ctr"),
        get("coredns", "coredns"),
    )
}

/// One of our programs as a static binary: `$<env>`, else built with
/// `static_bins::build_static`. Asserts that it is static.
fn static_program(env: &str, package: &str) -> PathBuf {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => static_bins::build_static(&workspace_root(), package, package)
            .unwrap_or_else(|e| panic!("{e}")),
    };
    let needs = elf::needs(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        needs.is_static(),
        "{} is not static: {needs:?}",
        path.display()
    );
    path
}

/// One image of the test: its spec, the binary it carries and the archive written.
struct Archive {
    spec: ImageSpec,
    binary: PathBuf,
    path: PathBuf,
    digests: Digests,
}

impl Archive {
    fn write(spec: ImageSpec, binary: PathBuf, dir: &Path) -> Archive {
        let file = spec.files[0].path.clone();
        let path = dir.join(format!("{file}.oci.tar"));
        let digests = oci::write_archive(&spec, &path).unwrap_or_else(|e| panic!("{e}"));
        Archive {
            spec,
            binary,
            path,
            digests,
        }
    }

    /// The path of the binary inside the image, e.g. `pause`.
    fn file(&self) -> &str {
        &self.spec.files[0].path
    }
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

/// The row whose first column is `name`.
fn row_of<'a>(rows: &'a [Vec<String>], name: &str, table: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == name)
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
}

#[test]
fn pod_image_archives_import_into_real_containerd() {
    let t0 = Instant::now();
    let lock_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("components.toml");
    let lock = Lockfile::load(&lock_path)
        .unwrap_or_else(|e| panic!("loading {}: {e}", lock_path.display()));
    let (containerd, ctr, coredns) = cached_binaries();
    let t_components = t0.elapsed();

    let t1 = Instant::now();
    let pause = static_program("CAIRN_PAUSE_BIN", "cairn-pause");
    let webtest = static_program("CAIRN_WEBTEST_BIN", "cairn-webtest");
    let t_static = t1.elapsed();

    let dir = tempfile::Builder::new()
        .prefix("cairn-oci-ctd-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"));
    let t2 = Instant::now();
    let epoch = epoch(&lock);
    let archives = [
        (oci::pause_image(&pause, epoch), pause, oci::PAUSE_IMAGE),
        (
            oci::coredns_image(&coredns, epoch),
            coredns,
            oci::COREDNS_IMAGE,
        ),
        (
            oci::webtest_image(&webtest, epoch),
            webtest,
            oci::WEBTEST_IMAGE,
        ),
    ]
    .map(|(spec, binary, name)| {
        let spec = spec.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(spec.reference(), name);
        Archive::write(spec, binary, dir.path())
    });
    let t_archive = t2.elapsed();

    let t3 = Instant::now();
    let mut ctd = Containerd::start(&containerd, &ctr, dir.path());
    ctd.wait_ready(Duration::from_secs(30));
    let t_start = t3.elapsed();

    let t4 = Instant::now();
    for a in &archives {
        let archive_arg = a.path.to_string_lossy().into_owned();
        let imported = ctd.ctr(&["images", "import", "--snapshotter", "native", &archive_arg]);
        eprintln!("ctr images import {}:\n{imported}", a.path.display());
    }
    let t_import = t4.elapsed();

    // Exactly our names, each pointing at its manifest.
    let mut expected: Vec<String> = archives.iter().map(|a| a.spec.reference()).collect();
    expected.sort();
    let names = ctd.ctr(&["images", "ls", "-q"]);
    let mut listed: Vec<&str> = names.lines().collect();
    listed.sort_unstable();
    assert_eq!(listed, expected, "images ls -q:\n{names}");
    let ls = ctd.ctr(&["images", "ls"]);
    eprintln!("ctr images ls:\n{ls}");
    let ls_rows = rows(&ls);
    assert_eq!(ls_rows.len(), archives.len(), "{ls}");
    for a in &archives {
        let row = row_of(&ls_rows, &a.spec.reference(), &ls);
        assert_eq!(row[1], oci::MEDIA_MANIFEST, "{ls}");
        assert_eq!(row[2], a.digests.manifest, "{ls}");
        assert!(row.iter().any(|c| c == "linux/amd64"), "{ls}");
    }

    // Complete (all content present) and unpacked into the native snapshotter.
    let check = ctd.ctr(&["images", "check", "--snapshotter", "native"]);
    eprintln!("ctr images check:\n{check}");
    let check_rows = rows(&check);
    assert_eq!(check_rows.len(), archives.len(), "{check}");
    for a in &archives {
        let row = row_of(&check_rows, &a.spec.reference(), &check);
        assert_eq!(row[2], a.digests.manifest, "{check}");
        assert!(
            row.iter().any(|c| c == "complete"),
            "{} not complete:\n{check}",
            row[0]
        );
        assert_eq!(
            row.last().map(String::as_str),
            Some("true"),
            "{} not unpacked:\n{check}",
            row[0]
        );
    }
    let ready = ctd.ctr(&["images", "check", "--snapshotter", "native", "-q"]);
    let mut ready_names: Vec<&str> = ready.lines().collect();
    ready_names.sort_unstable();
    assert_eq!(ready_names, expected, "images check -q:\n{ready}");

    // Each unpacked snapshot holds its binary at the root, 0755, mtime = epoch.
    let snapshots = ctd
        .root
        .join("io.containerd.snapshotter.v1.native/snapshots");
    for a in &archives {
        let unpacked: Vec<PathBuf> = fs::read_dir(&snapshots)
            .unwrap_or_else(|e| panic!("reading {}: {e}", snapshots.display()))
            .filter_map(|e| e.ok().map(|e| e.path().join(a.file())))
            .filter(|p| p.is_file())
            .collect();
        assert_eq!(
            unpacked.len(),
            1,
            "snapshots with /{}: {unpacked:?}",
            a.file()
        );
        let meta = fs::metadata(&unpacked[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "/{}", a.file());
        assert_eq!(meta.mtime() as u64, epoch, "/{}", a.file());
        let original = fs::read(&a.binary).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            fs::read(&unpacked[0]).ok() == Some(original),
            "unpacked /{} differs from {}",
            a.file(),
            a.binary.display()
        );
    }

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
    let sizes: Vec<String> = archives
        .iter()
        .map(|a| format!("{} {} bytes", a.spec.reference(), a.digests.archive_size))
        .collect();
    eprintln!(
        "timings: components {t_components:?}, static programs {t_static:?}, archives \
         {t_archive:?} ({}), containerd ready {t_start:?}, imports {t_import:?}",
        sizes.join(", ")
    );
}
