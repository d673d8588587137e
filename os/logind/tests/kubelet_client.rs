//! Kubelet's own logind client against the shim: `tests/kubeletclient` imports
//! `k8s.io/kubernetes/pkg/kubelet/nodeshutdown/systemd` (godbus underneath) and calls
//! `NewDBusCon`, `CurrentInhibitDelay`, `InhibitShutdown`, `MonitorShutdown` and, on
//! `PrepareForShutdown(true)`, `ReleaseInhibitLock`, exactly as kubelet does.
//!
//! The program is built offline from the cairn Go module cache (the one
//! `cairn-image components` fills). Without Go or the kubernetes module the test is
//! skipped, except under `CI=true`, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{INHIBIT_DELAY_MAX, Shim};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;
use tokio::time::timeout;

/// The Go program's source, kept beside this file.
const CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kubeletclient");
/// How long the client "kills pods" before it releases its lock.
const HOLD: Duration = Duration::from_millis(200);

#[tokio::test]
async fn kubelet_nodeshutdown_client_takes_and_releases_its_lock() {
    let build_dir = tempfile::tempdir().expect("creating a temporary directory");
    let Some(client) = build_client(build_dir.path()) else {
        return;
    };
    let shim = Shim::start().await;

    let mut child = tokio::process::Command::new(&client)
        .args([
            "-hold",
            &format!("{}ms", HOLD.as_millis()),
            "-timeout",
            "60s",
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", shim.address())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the kubelet client");
    let mut stdout = BufReader::new(child.stdout.take().expect("client stdout")).lines();

    // Everything up to "monitoring": connected, read the delay, took the lock.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("monitoring") {
        let line = next_line(&mut stdout, &seen).await;
        seen.push(line);
    }
    assert_eq!(seen[0], "connected", "{seen:?}");
    assert_eq!(
        seen[1],
        format!("delay {}", INHIBIT_DELAY_MAX.as_micros()),
        "{seen:?}"
    );
    assert!(seen[2].starts_with("inhibited fd="), "{seen:?}");
    shim.wait_for_locks(1, Duration::from_secs(5)).await;

    let outcome = shim
        .logind
        .prepare_for_shutdown(Duration::from_secs(20))
        .await;

    let mut rest = Vec::new();
    while rest.last().map(String::as_str) != Some("released") {
        let line = next_line(&mut stdout, &rest).await;
        rest.push(line);
    }
    let status = timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the client exits after releasing")
        .expect("waiting for the client");
    assert!(status.success(), "client exited with {status}");
    assert_eq!(rest, ["event shutdown=true", "released"]);
    assert!(outcome.released_all, "{outcome:?}");
    assert_eq!(outcome.locks_left, 0);
    assert!(
        outcome.waited >= HOLD,
        "did not wait for the release: {outcome:?}"
    );
    assert!(outcome.waited < Duration::from_secs(10), "{outcome:?}");
    eprintln!("kubelet client: {seen:?} then {rest:?}; shim: {outcome:?}");
}

/// The client's next stdout line, within 30 s.
async fn next_line(stdout: &mut Lines<BufReader<ChildStdout>>, so_far: &[String]) -> String {
    timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .unwrap_or_else(|_| panic!("client went quiet after {so_far:?}"))
        .expect("reading the client's stdout")
        .unwrap_or_else(|| panic!("client exited after {so_far:?}"))
}

/// Builds the client into `out`; `None` (after saying why) when this machine cannot and
/// we are not in CI.
fn build_client(out: &Path) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = |what: String| {
        assert!(!ci, "CI=true but {what}");
        eprintln!("skipping the kubelet client test: {what}");
        None
    };
    let Some(go) = go_tool() else {
        return missing("no Go toolchain (`go` on PATH or /usr/local/go/bin/go)".into());
    };
    let cache = cairn_cache();
    let go_mod = cache.join("go-mod");
    let kubernetes = kubernetes_version();
    let zip = go_mod.join(format!(
        "cache/download/k8s.io/kubernetes/@v/{kubernetes}.zip"
    ));
    if !zip.is_file() {
        return missing(format!(
            "k8s.io/kubernetes@{kubernetes} is not in the Go module cache ({}); \
             `cairn-image components build` fills it",
            zip.display()
        ));
    }

    // Build from a copy so that nothing the go command might write lands in the tree.
    let src = out.join("src");
    std::fs::create_dir_all(&src).expect("creating the build directory");
    for file in ["main.go", "go.mod", "go.sum"] {
        std::fs::copy(Path::new(CLIENT_DIR).join(file), src.join(file))
            .unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
    let binary = out.join("kubeletclient");
    let started = Instant::now();
    let result = Command::new(&go)
        .current_dir(&src)
        .args(["build", "-trimpath", "-o"])
        .arg(&binary)
        .arg(".")
        .env("GOMODCACHE", &go_mod)
        .env("GOCACHE", cache.join("go-build"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("running go build");
    assert!(
        result.status.success(),
        "go build of {CLIENT_DIR} failed ({}):\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!("built the kubelet client in {:?}", started.elapsed());
    Some(binary)
}

/// `go` on PATH, else the official tarball's place.
fn go_tool() -> Option<PathBuf> {
    ["go", "/usr/local/go/bin/go"]
        .into_iter()
        .map(PathBuf::from)
        .find(|go| {
            Command::new(go)
                .args(["env", "GOVERSION"])
                .env("GOTOOLCHAIN", "local")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The cairn cache, as image-build finds it: `$CAIRN_CACHE`, else
/// `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
fn cairn_cache() -> PathBuf {
    std::env::var_os("CAIRN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("cairn")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cairn")))
        .expect("neither CAIRN_CACHE, XDG_CACHE_HOME nor HOME is set")
}

/// The kubernetes version the client's go.mod requires.
fn kubernetes_version() -> String {
    let go_mod = std::fs::read_to_string(Path::new(CLIENT_DIR).join("go.mod"))
        .expect("reading the client's go.mod");
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("require k8s.io/kubernetes "))
        .map(|v| v.trim().to_string())
        .expect("the client's go.mod requires k8s.io/kubernetes")
}
