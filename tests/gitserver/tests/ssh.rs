//! The SSH server against the real git CLI.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use cairn_testgit::{SshGitServer, SshSigningKey, TestRepo};
use common::{fails, git, ok, rev_parse};

/// `ssh` with the key and strict host key checking against `known_hosts`.
fn ssh_command(key: &std::path::Path, known_hosts: &std::path::Path) -> String {
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes \
         -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        key.display(),
        known_hosts.display()
    )
}

#[test]
fn clone_and_push_with_the_key_and_strict_host_checking() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    repo.write("a.txt", "a\n");
    let head = repo.commit("first").unwrap();
    let server = SshGitServer::start(root.path()).unwrap();
    let canonical_root = root.path().canonicalize().unwrap();
    assert_eq!(
        server.url("demo.git"),
        format!(
            "ssh://root@127.0.0.1:{}{}/demo.git",
            server.port(),
            canonical_root.display()
        )
    );
    assert!(
        server
            .known_hosts()
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", server.port()))
    );
    assert!(
        server
            .client_key_pem()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );

    // The key and known_hosts as a client would hold them: files of its own.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, server.client_key_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", server.known_hosts())).unwrap();

    let clone = dir.path().join("clone");
    ok(git()
        .env("GIT_SSH_COMMAND", ssh_command(&key, &known_hosts))
        .args(["clone", "--quiet", &server.url("demo.git")])
        .arg(&clone));
    assert_eq!(rev_parse(&clone, "HEAD"), head);
    assert_eq!(std::fs::read_to_string(clone.join("a.txt")).unwrap(), "a\n");

    // Push with the server's own ready-made command.
    std::fs::write(clone.join("b.txt"), "b\n").unwrap();
    let in_clone = |args: &[&str]| {
        let mut cmd = git();
        cmd.env("GIT_SSH_COMMAND", server.git_ssh_command())
            .arg("-C")
            .arg(&clone)
            .args(["-c", "user.name=T", "-c", "user.email=t@t"])
            .args(args);
        cmd
    };
    ok(&mut in_clone(&["add", "b.txt"]));
    ok(&mut in_clone(&[
        "commit",
        "--quiet",
        "-m",
        "pushed over ssh",
    ]));
    ok(&mut in_clone(&["push", "--quiet", "origin", "main"]));
    assert_eq!(
        rev_parse(repo.bare_path(), "main"),
        rev_parse(&clone, "HEAD")
    );
}

#[test]
fn clone_fails_with_a_wrong_host_key_or_client_key() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    repo.commit("first").unwrap();
    let server = SshGitServer::start(root.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Another key claims to be the server.
    let impostor = SshSigningKey::generate(dir.path()).unwrap();
    let wrong_hosts = dir.path().join("wrong_known_hosts");
    let line = format!("[127.0.0.1]:{} {}\n", server.port(), impostor.public);
    std::fs::write(&wrong_hosts, line).unwrap();
    let stderr = fails(
        git()
            .env(
                "GIT_SSH_COMMAND",
                ssh_command(server.client_key_path(), &wrong_hosts),
            )
            .args(["clone", "--quiet", &server.url("demo.git")])
            .arg(dir.path().join("a")),
    );
    assert!(stderr.contains("Host key verification failed"), "{stderr}");

    // The right host, an unknown client key.
    let hosts = dir.path().join("known_hosts");
    std::fs::write(&hosts, format!("{}\n", server.known_hosts())).unwrap();
    let stderr = fails(
        git()
            .env("GIT_SSH_COMMAND", ssh_command(&impostor.path, &hosts))
            .args(["clone", "--quiet", &server.url("demo.git")])
            .arg(dir.path().join("b")),
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
}
