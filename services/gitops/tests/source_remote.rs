//! `source` against real servers on 127.0.0.1: git http-backend behind rustls
//! with a token, sshd, and a listener that never answers.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_gitops::source::{Auth, GitRef, Source, SourceError, SourceSpec};
use cairn_testgit::{HttpsGitServer, SshGitServer, TestRepo};

const TOKEN: &str = "tok-3f9a71c2e8";

fn spec(url: String, auth: Auth, mirror: &Path) -> SourceSpec {
    SourceSpec {
        path: "apps".into(),
        auth,
        timeout: Duration::from_secs(20),
        ..SourceSpec::new(url, GitRef::Branch("main".into()), mirror)
    }
}

/// A served root with repository `demo.git` holding `apps/web.yaml`.
fn demo() -> (tempfile::TempDir, TestRepo, String) {
    let root = tempfile::tempdir().expect("root");
    let repo = TestRepo::new(root.path(), "demo").expect("repo");
    repo.write("apps/web.yaml", "kind: ConfigMap\n");
    let head = repo.commit("first").expect("commit");
    (root, repo, head)
}

fn unreachable(err: &SourceError, url: &str) -> String {
    assert!(err.is_network(), "{err}");
    let message = err.to_string();
    assert!(message.contains(url), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
    eprintln!("refused as expected: {message}");
    message
}

#[test]
fn https_with_token_and_ca() {
    let (root, repo, head) = demo();
    let server = HttpsGitServer::start(root.path(), TOKEN).expect("server");
    let mirror = tempfile::tempdir().expect("mirror");
    let mut spec = spec(
        server.url("demo.git"),
        Auth::Token(TOKEN.into()),
        mirror.path(),
    );
    spec.ca_pem = Some(server.ca_pem().to_owned());
    let mut source = Source::open(spec.clone()).expect("open");
    assert_eq!(source.fetch().expect("fetch"), head);
    let files = source.files(&head).expect("files");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "apps/web.yaml");

    repo.write("apps/db.yaml", "kind: Secret\n");
    let next = repo.commit("second").expect("commit");
    assert_eq!(source.fetch().expect("second fetch"), next);
    assert!(
        source.last_fetch().objects <= 4,
        "{:?}",
        source.last_fetch()
    );
    source.verify(Some(&head), &next).expect("fast-forward");

    spec.auth = Auth::Basic {
        username: "someone".into(),
        password: TOKEN.into(),
    };
    assert_eq!(
        Source::open(spec.clone())
            .expect("open")
            .fetch()
            .expect("basic auth"),
        next
    );

    // A fixed commit: the server does not serve single objects, so all refs are fetched.
    let fresh = tempfile::tempdir().expect("mirror");
    spec.mirror_dir = fresh.path().to_owned();
    spec.reference = GitRef::Commit(head.clone());
    assert_eq!(
        Source::open(spec).expect("open").fetch().expect("commit"),
        head
    );
}

#[test]
fn https_without_or_with_a_wrong_token_fails_naming_the_url() {
    let (root, _repo, _) = demo();
    let server = HttpsGitServer::start(root.path(), TOKEN).expect("server");
    let url = server.url("demo.git");
    let mirror = tempfile::tempdir().expect("mirror");
    for auth in [Auth::None, Auth::Token("wrong-token".into())] {
        let mut spec = spec(url.clone(), auth.clone(), mirror.path());
        spec.ca_pem = Some(server.ca_pem().to_owned());
        let started = Instant::now();
        let err = Source::open(spec)
            .expect("open")
            .fetch()
            .expect_err("refused");
        let message = unreachable(&err, &url);
        assert!(message.contains("authentication"), "{auth:?}: {message}");
        assert!(!message.contains("wrong-token"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{auth:?} looped"
        );
    }
}

#[test]
fn https_with_the_wrong_ca_or_the_system_roots_is_refused() {
    let (root, _repo, _) = demo();
    let server = HttpsGitServer::start(root.path(), TOKEN).expect("server");
    let other_root = tempfile::tempdir().expect("other root");
    let other = HttpsGitServer::start(other_root.path(), TOKEN).expect("other server");
    let url = server.url("demo.git");
    let mirror = tempfile::tempdir().expect("mirror");
    let mut spec = spec(url.clone(), Auth::Token(TOKEN.into()), mirror.path());
    spec.ca_pem = Some(other.ca_pem().to_owned());
    let err = Source::open(spec.clone())
        .expect("open")
        .fetch()
        .expect_err("wrong CA");
    let message = unreachable(&err, &url);
    assert!(message.contains("certificate"), "{message}");

    spec.ca_pem = None;
    let err = Source::open(spec)
        .expect("open")
        .fetch()
        .expect_err("system roots");
    let message = unreachable(&err, &url);
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

#[test]
fn ssh_with_key_and_known_hosts() {
    let (root, repo, head) = demo();
    let server = SshGitServer::start(root.path()).expect("sshd");
    let url = server.url("demo.git");
    let mirror = tempfile::tempdir().expect("mirror");
    let auth = Auth::SshKey {
        private_key: server.client_key_pem(),
        passphrase: None,
    };
    let mut spec = spec(url.clone(), auth, mirror.path());
    spec.known_hosts = Some(format!("# the test server\n{}\n", server.known_hosts()));
    let mut source = Source::open(spec.clone()).expect("open");
    assert_eq!(source.fetch().expect("fetch"), head);
    let next = repo.commit("second").expect("commit");
    assert_eq!(source.fetch().expect("second fetch"), next);

    // Right key, wrong host entry; and another key for the right host.
    spec.known_hosts = Some(format!("[127.0.0.1]:1 {}", key_of(&server.known_hosts())));
    let err = Source::open(spec.clone())
        .expect("open")
        .fetch()
        .expect_err("no entry");
    let message = unreachable(&err, &url);
    assert!(
        message.contains(&format!("[127.0.0.1]:{}", server.port())),
        "{message}"
    );

    let (_, stranger) = keygen();
    spec.known_hosts = Some(format!("[127.0.0.1]:{} {stranger}", server.port()));
    let err = Source::open(spec)
        .expect("open")
        .fetch()
        .expect_err("wrong key");
    let message = unreachable(&err, &url);
    assert!(message.contains("does not match"), "{message}");
}

/// A fresh ed25519 key pair: (OpenSSH private key, `ssh-ed25519 AAAA…`).
fn keygen() -> (String, String) {
    let dir = tempfile::tempdir().expect("keys");
    let key = dir.path().join("key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let read = |p: &Path| std::fs::read_to_string(p).expect("read key");
    (
        read(&key),
        key_of(&format!("host {}", read(&key.with_extension("pub")))),
    )
}

/// `ssh-ed25519 AAAA…` of a known_hosts line.
fn key_of(line: &str) -> String {
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn ssh_with_an_unauthorized_key_fails_without_looping() {
    let (root, _repo, _) = demo();
    let server = SshGitServer::start(root.path()).expect("sshd");
    let (private_key, _) = keygen();
    let mirror = tempfile::tempdir().expect("mirror");
    let mut spec = spec(
        server.url("demo.git"),
        Auth::SshKey {
            private_key,
            passphrase: None,
        },
        mirror.path(),
    );
    spec.known_hosts = Some(server.known_hosts());
    let started = Instant::now();
    let err = Source::open(spec)
        .expect("open")
        .fetch()
        .expect_err("unauthorized");
    let message = unreachable(&err, &server.url("demo.git"));
    assert!(message.contains("authentication"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn server_down_keeps_the_local_commit_and_recovers() {
    let (root, repo, head) = demo();
    let mut server = HttpsGitServer::start(root.path(), TOKEN).expect("server");
    let url = server.url("demo.git");
    let mirror = tempfile::tempdir().expect("mirror");
    let mut spec = spec(url.clone(), Auth::Token(TOKEN.into()), mirror.path());
    spec.ca_pem = Some(server.ca_pem().to_owned());
    let mut source = Source::open(spec.clone()).expect("open");
    assert_eq!(source.fetch().expect("fetch"), head);

    server.stop();
    let err = source.fetch().expect_err("server down");
    unreachable(&err, &url);
    drop(source);
    let mut source = Source::open(spec).expect("reopen");
    assert_eq!(source.resolve_local().expect("local"), Some(head.clone()));
    assert_eq!(source.files(&head).expect("files offline").len(), 1);

    let next = repo.commit("while down").expect("commit");
    server.restart().expect("restart");
    assert_eq!(source.fetch().expect("after restart"), next);
}

/// Accepts connections and never answers; returns the port.
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

#[test]
fn a_silent_server_times_out() {
    let port = silent_listener();
    let mirror = tempfile::tempdir().expect("mirror");
    let https = spec(
        format!("https://127.0.0.1:{port}/demo.git"),
        Auth::Token(TOKEN.into()),
        mirror.path(),
    );
    let mut ssh = spec(
        format!("ssh://git@127.0.0.1:{port}/demo.git"),
        Auth::None,
        mirror.path(),
    );
    ssh.known_hosts = Some(format!("[127.0.0.1]:{port} {}", keygen().1));
    for mut spec in [https, ssh] {
        spec.timeout = Duration::from_secs(2);
        let url = spec.url.clone();
        let started = Instant::now();
        let err = Source::open(spec)
            .expect("open")
            .fetch()
            .expect_err("timeout");
        let elapsed = started.elapsed();
        let message = unreachable(&err, &url);
        assert!(message.contains("timed out"), "{message}");
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
            "{url}: {elapsed:?}"
        );
    }
}
