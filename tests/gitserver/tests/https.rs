//! The HTTPS server against the real git CLI.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use cairn_testgit::{HttpsGitServer, TestRepo};
use common::{fails, git, ok, rev_parse};

const TOKEN: &str = "s3cret-token";

/// A server root with `demo.git` holding one commit, the server, and a directory
/// for clones and the CA file.
struct Fixture {
    _root: tempfile::TempDir,
    dir: tempfile::TempDir,
    repo: TestRepo,
    server: HttpsGitServer,
    head: String,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    repo.write("apps/web.yaml", "kind: ConfigMap\n");
    let head = repo.commit("first").unwrap();
    let server = HttpsGitServer::start(root.path(), TOKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), server.ca_pem()).unwrap();
    Fixture {
        _root: root,
        dir,
        repo,
        server,
        head,
    }
}

impl Fixture {
    /// `git -c http.sslCAInfo=<ca> [-c http.extraHeader=<header>] clone <url> <dest>`.
    fn clone(&self, header: Option<&str>, url: &str, dest: &str) -> Command {
        let mut cmd = git();
        cmd.arg("-c").arg(format!(
            "http.sslCAInfo={}",
            self.dir.path().join("ca.pem").display()
        ));
        if let Some(header) = header {
            cmd.arg("-c").arg(format!("http.extraHeader={header}"));
        }
        cmd.args(["clone", "--quiet", url])
            .arg(self.dir.path().join(dest));
        cmd
    }

    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.server.token())
    }
}

#[test]
fn clone_with_the_token() {
    let f = fixture();
    assert_eq!(
        f.server.url("demo.git"),
        format!("https://127.0.0.1:{}/demo.git", f.server.port())
    );
    ok(&mut f.clone(Some(&f.bearer()), &f.server.url("demo.git"), "bearer"));
    let clone = f.dir.path().join("bearer");
    assert_eq!(rev_parse(&clone, "HEAD"), f.head);
    assert_eq!(
        std::fs::read_to_string(clone.join("apps/web.yaml")).unwrap(),
        "kind: ConfigMap\n"
    );

    // Basic auth with the token as password, any user name.
    let url = format!(
        "https://anyone:{TOKEN}@127.0.0.1:{}/demo.git",
        f.server.port()
    );
    ok(&mut f.clone(None, &url, "basic"));
    assert_eq!(rev_parse(&f.dir.path().join("basic"), "HEAD"), f.head);
    assert!(f.server.requests() >= 4);
}

#[test]
fn clone_without_the_right_token_is_refused() {
    let f = fixture();
    let url = f.server.url("demo.git");
    let stderr = fails(f.clone(None, &url, "none").env("GIT_TRACE_CURL", "1"));
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("recv header: http/1.1 401 unauthorized"),
        "{stderr}"
    );
    assert!(
        lower.contains("www-authenticate: basic realm=\"cairn-test\""),
        "{stderr}"
    );

    fails(&mut f.clone(Some("Authorization: Bearer wrong"), &url, "wrong"));
    let wrong = format!(
        "https://anyone:wrong@127.0.0.1:{}/demo.git",
        f.server.port()
    );
    fails(&mut f.clone(None, &wrong, "wrong-basic"));
    assert!(!f.dir.path().join("none").exists());
}

#[test]
fn clone_fails_without_trusting_the_ca() {
    let f = fixture();
    let other = tempfile::tempdir().unwrap();
    let elsewhere = HttpsGitServer::start(other.path(), TOKEN).unwrap();
    std::fs::write(f.dir.path().join("ca.pem"), elsewhere.ca_pem()).unwrap();
    let stderr = fails(&mut f.clone(Some(&f.bearer()), &f.server.url("demo.git"), "x"));
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[test]
fn push_with_the_token() {
    let f = fixture();
    ok(&mut f.clone(Some(&f.bearer()), &f.server.url("demo.git"), "work"));
    let work = f.dir.path().join("work");
    std::fs::write(work.join("new.yaml"), "kind: Namespace\n").unwrap();
    // 3 MiB that do not compress: git sends a pack beyond http.postBuffer (1 MiB)
    // chunked, without Content-Length.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(work.join("noise.bin"), noise).unwrap();
    let in_work = |args: &[&str]| {
        let mut cmd = git();
        cmd.arg("-C")
            .arg(&work)
            .args(["-c", "user.name=T", "-c", "user.email=t@t"]);
        cmd.arg("-c").arg(format!(
            "http.sslCAInfo={}",
            f.dir.path().join("ca.pem").display()
        ));
        cmd.arg("-c")
            .arg(format!("http.extraHeader={}", f.bearer()))
            .args(args);
        cmd
    };
    ok(&mut in_work(&["add", "new.yaml", "noise.bin"]));
    ok(&mut in_work(&[
        "commit",
        "--quiet",
        "-m",
        "pushed over https",
    ]));
    ok(&mut in_work(&["push", "--quiet", "origin", "main"]));
    assert_eq!(
        rev_parse(f.repo.bare_path(), "main"),
        rev_parse(&work, "HEAD")
    );
    assert_ne!(rev_parse(f.repo.bare_path(), "main"), f.head);

    // And back: a fresh clone gets the big file.
    ok(&mut f.clone(Some(&f.bearer()), &f.server.url("demo.git"), "again"));
    let again = std::fs::read(f.dir.path().join("again/noise.bin")).unwrap();
    assert_eq!(again, std::fs::read(work.join("noise.bin")).unwrap());
}

#[test]
fn stop_and_restart_on_the_same_port() {
    let mut f = fixture();
    let url = f.server.url("demo.git");
    let port = f.server.port();
    ok(&mut f.clone(Some(&f.bearer()), &url, "before"));

    f.server.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    fails(&mut f.clone(Some(&f.bearer()), &url, "down"));

    f.server.restart().unwrap();
    assert_eq!(f.server.port(), port);
    let head = f.repo.commit("while it was down").unwrap();
    ok(&mut f.clone(Some(&f.bearer()), &url, "after"));
    assert_eq!(rev_parse(&f.dir.path().join("after"), "HEAD"), head);
}

#[tokio::test]
async fn usable_from_async_tests() {
    let f = fixture();
    let ca = f.dir.path().join("ca.pem");
    let out = tokio::process::Command::from(git())
        .arg("-c")
        .arg(format!("http.sslCAInfo={}", ca.display()))
        .arg("-c")
        .arg(format!("http.extraHeader={}", f.bearer()))
        .args(["ls-remote", &f.server.url("demo.git"), "refs/heads/main"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&f.head));
    drop(f); // stopping inside a runtime is fine
}

#[test]
fn cli_serves_until_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    let head = repo.commit("first").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let ca = dir.path().join("ca.pem");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_cairn-gitserver"))
            .arg("--root")
            .arg(root.path())
            .arg("--token-file")
            .arg(&token_file)
            .arg("--ca-out")
            .arg(&ca)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line.trim();
    assert!(
        base.starts_with("https://127.0.0.1:") && base.ends_with('/'),
        "{base}"
    );

    let listed = ok(git()
        .arg("-c")
        .arg(format!("http.sslCAInfo={}", ca.display()))
        .arg("-c")
        .arg(format!("http.extraHeader=Authorization: Bearer {TOKEN}"))
        .args(["ls-remote", &format!("{base}demo.git"), "refs/heads/main"]));
    assert!(listed.starts_with(&head), "{listed}");

    ok(Command::new("kill").args(["-TERM", &child.0.id().to_string()]));
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Kills the child if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
