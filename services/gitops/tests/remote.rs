//! The reconciler fed by REAL git servers on loopback (git http-backend behind
//! HTTPS with a token, and sshd with a key): the webhook starts a fetch at once
//! and a bad signature changes nothing; the server going away keeps the last
//! state running and is reported; signed ranges and history rewrites; two
//! reconcilers on one etcd (one acts; the other takes over).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_testgit::{HttpsGitServer, SshGitServer, SshSigningKey, TestRepo};
use common::*;
use hmac::Mac as _;

const T: Duration = Duration::from_secs(60);
const SECRET: &str = "a-webhook-secret-of-32-characters";
const TOKEN: &str = "s3cret-token";

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn https_config(server: &HttpsGitServer, port: u16, interval: u32, extra: &str) -> String {
    format!(
        "url: {}\nauth:\n  token: {TOKEN}\nca: |\n{}intervalSeconds: {interval}\ntimeoutSeconds: 3\nwebhook:\n  port: {port}\n  secret: {SECRET}\n{extra}",
        server.url("r.git"),
        indent(server.ca_pem()).replace("    ", "  "),
    )
}

fn tls() -> (PathBuf, PathBuf) {
    let s = fixture().secrets();
    (
        s.join(cairn_pki::paths::OS_SERVER.crt),
        s.join(cairn_pki::paths::OS_SERVER.key),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// POSTs a push payload to the webhook; returns the HTTP status.
fn post(port: u16, signature: Option<&str>) -> u16 {
    let body = r#"{"ref":"refs/heads/main"}"#;
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        body,
    ]);
    if let Some(sig) = signature {
        cmd.args(["-H", &format!("X-Hub-Signature-256: {sig}")]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/hook"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn github_signature(body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn a_signed_webhook_applies_a_push_at_once_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("git");
    let r = TestRepo::new(&root, "r").expect("repo");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("hook"),
            configmap("hook", "conf", "1")
        ),
    );
    let first = r.commit("one").expect("commit");
    let server = HttpsGitServer::start(&root, TOKEN).expect("git server");
    let port = free_port();
    let (cert, key) = tls();
    // Polling is hourly: only the webhook can bring a push in quickly.
    let mut g = Reconciler::start(
        "hook",
        dir.path(),
        &https_config(&server, port, 3600, ""),
        Options {
            tls: Some((&cert, &key)),
            ..Default::default()
        },
    );
    g.wait_applied(&first, T);

    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("hook"),
            configmap("hook", "conf", "2")
        ),
    );
    let second = r.commit("two").expect("commit");
    assert_eq!(post(port, None), 401, "unsigned");
    assert_eq!(post(port, Some("sha256=00112233")), 401, "bad signature");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        g.status()["appliedRevision"],
        first.as_str(),
        "a rejected call changes nothing"
    );

    let started = Instant::now();
    assert_eq!(
        post(
            port,
            Some(&github_signature(r#"{"ref":"refs/heads/main"}"#))
        ),
        202
    );
    g.wait_applied(&second, Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(
        get(&["cm", "-n", "hook", "conf"]).expect("cm")["data"]["value"],
        "2"
    );
    assert!(
        took < Duration::from_secs(5),
        "push to applied took {took:?}"
    );
    let metrics = Command::new("curl")
        .args(["-sk", &format!("https://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("cairn_gitops_webhook_requests_total{result=\"rejected\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_gitops_reconciles_total"),
        "{metrics}"
    );
}

#[test]
fn an_unreachable_git_server_keeps_the_last_state_and_is_reported_until_it_is_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("git");
    let r = TestRepo::new(&root, "r").expect("repo");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("down"),
            configmap("down", "conf", "1")
        ),
    );
    let first = r.commit("one").expect("commit");
    let mut server = HttpsGitServer::start(&root, TOKEN).expect("git server");
    let mut g = Reconciler::start(
        "down",
        dir.path(),
        &https_config(&server, free_port(), 1, ""),
        Options::default(),
    );
    g.wait_applied(&first, T);
    server.stop();
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("down"),
            configmap("down", "conf", "2")
        ),
    );
    let second = r.commit("two").expect("commit");
    let s = g.wait_error("unreachable", T);
    assert_eq!(s["appliedRevision"], first.as_str());
    assert!(
        !s["lastError"].as_str().unwrap_or("").contains(TOKEN),
        "no token in errors"
    );
    assert_eq!(
        get(&["cm", "-n", "down", "conf"]).expect("still there")["data"]["value"],
        "1"
    );
    server.restart().expect("restart");
    g.wait_applied(&second, T);
    assert_eq!(g.status()["lastError"], "");
}

#[test]
fn an_unsigned_commit_inside_a_signed_range_is_refused_even_under_a_signed_head() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("git");
    let r = TestRepo::new(&root, "r").expect("repo");
    let key = SshSigningKey::generate(dir.path()).expect("key");
    let server = SshGitServer::start(&root).expect("sshd");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("signed"),
            configmap("signed", "conf", "1")
        ),
    );
    let first = r.commit_signed_ssh("one", &key).expect("commit");
    let config = format!(
        "url: {}\nknownHosts: \"{}\"\nauth:\n  sshKey: |\n{}intervalSeconds: 1\ntrust:\n  sshKeys:\n  - \"{}\"\n",
        server.url("r.git"),
        server.known_hosts().trim(),
        indent(&server.client_key_pem()),
        key.public.trim(),
    );
    let mut g = Reconciler::start("signed", dir.path(), &config, Options::default());
    g.wait_applied(&first, T);

    // unsigned, then signed on top: the head is signed, the range is not.
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("signed"),
            configmap("signed", "conf", "2")
        ),
    );
    let unsigned = r.commit("sneaked in").expect("commit");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("signed"),
            configmap("signed", "conf", "3")
        ),
    );
    r.commit_signed_ssh("signed head", &key).expect("commit");
    let s = g.wait_error(&format!("commit {unsigned} is not signed"), T);
    assert_eq!(s["appliedRevision"], first.as_str());
    assert_eq!(
        get(&["cm", "-n", "signed", "conf"]).expect("cm")["data"]["value"],
        "1"
    );
}

#[test]
fn a_history_rewrite_of_applied_commits_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = TestRepo::new(&dir.path().join("git"), "r").expect("repo");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("rewrite"),
            configmap("rewrite", "conf", "1")
        ),
    );
    let first = r.commit("one").expect("commit");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("rewrite"),
            configmap("rewrite", "conf", "2")
        ),
    );
    let second = r.commit("two").expect("commit");
    let mut g = Reconciler::start(
        "rewrite",
        dir.path(),
        &file_config(&r.file_url(), ""),
        Options::default(),
    );
    g.wait_applied(&second, T);
    // Drop `second` from the branch and push something else over it.
    let rewritten = r.reset_hard_and_force_push(&first).expect("force push");
    let s = g.wait_error("history rewrite refused", T);
    let err = s["lastError"].as_str().unwrap_or_default();
    assert!(
        err.contains(&rewritten) && err.contains(&second),
        "names both commits: {err}"
    );
    assert_eq!(s["appliedRevision"], second.as_str());
    drop(g);
    let mut allowed = Reconciler::start(
        "rewrite",
        dir.path(),
        &file_config(&r.file_url(), "trust:\n  allowHistoryRewrite: true\n"),
        Options::default(),
    );
    allowed.wait_applied(&rewritten, T);
}

#[test]
fn two_reconcilers_on_one_etcd_one_acts_and_the_other_takes_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = TestRepo::new(&dir.path().join("git"), "r").expect("repo");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("lead"),
            configmap("lead", "conf", "1")
        ),
    );
    let first = r.commit("one").expect("commit");
    let cfg = file_config(&r.file_url(), "");
    let mut a = Reconciler::start(
        "lead",
        &dir.path().join("a"),
        &cfg,
        Options {
            identity: "node-a",
            etcd: true,
            ..Default::default()
        },
    );
    let s = a.wait_applied(&first, T);
    let mut b = Reconciler::start(
        "lead",
        &dir.path().join("b"),
        &cfg,
        Options {
            identity: "node-b",
            etcd: true,
            ..Default::default()
        },
    );
    assert_eq!(s["leader"], "node-a");
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("lead"),
            configmap("lead", "conf", "2")
        ),
    );
    let second = r.commit("two").expect("commit");
    let s = a.wait_applied(&second, T);
    assert_eq!(s["leader"], "node-a");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !b.log_text().contains("elected leader"),
        "the second one waits: {}",
        tail(&b.log_text(), 10)
    );
    assert!(
        !b.log_text().contains(" applied "),
        "the second one never applies"
    );

    // The leader dies: the other is elected within the lease time (6 s) and acts.
    a.stop();
    let died = Instant::now();
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("lead"),
            configmap("lead", "conf", "3")
        ),
    );
    let third = r.commit("three").expect("commit");
    let s = b.wait_applied(&third, T);
    assert_eq!(s["leader"], "node-b");
    let took = died.elapsed();
    assert!(took < Duration::from_secs(20), "failover took {took:?}");
    assert!(b.log_text().contains("elected leader"));
}
