//! TestRepo's operations and signed commits, checked with the git CLI.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::DirBuilderExt;

use cairn_testgit::{GpgKey, SshSigningKey, TestRepo};
use common::{fails, git, ok, rev_parse};

/// `git -C <bare> <args>`.
fn in_bare(repo: &TestRepo, args: &[&str]) -> std::process::Command {
    let mut cmd = git();
    cmd.arg("-C").arg(repo.bare_path()).args(args);
    cmd
}

#[test]
fn files_refs_and_history_rewrites() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    assert_eq!(repo.bare_path(), root.path().join("demo.git"));
    repo.write("deep/dir/a.yaml", "a: 1\n");
    repo.write_bytes("bin/blob", &[0, 159, 146, 150]);
    repo.symlink("link", "deep/dir/a.yaml");
    repo.write("gone.txt", "soon gone\n");
    let first = repo.commit("first").unwrap();
    assert_eq!(first.len(), 40);
    assert_eq!(repo.head(), first);
    assert_eq!(rev_parse(repo.bare_path(), "main"), first);
    assert_eq!(
        ok(&mut in_bare(&repo, &["symbolic-ref", "HEAD"])),
        "refs/heads/main"
    );

    repo.remove("gone.txt");
    repo.remove("deep");
    let second = repo.commit("second").unwrap();
    repo.tag("v1").unwrap();
    repo.branch("stable").unwrap();
    let empty = repo.commit("nothing changed").unwrap();
    assert_ne!(empty, second);

    // What a clone of the file URL sees.
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("clone");
    ok(git()
        .args(["clone", "--quiet", &repo.file_url()])
        .arg(&clone));
    assert_eq!(rev_parse(&clone, "HEAD"), empty);
    assert_eq!(rev_parse(&clone, "v1"), second);
    assert_eq!(rev_parse(&clone, "origin/stable"), second);
    assert_eq!(
        std::fs::read(clone.join("bin/blob")).unwrap(),
        [0, 159, 146, 150]
    );
    assert_eq!(
        std::fs::read_link(clone.join("link")).unwrap(),
        std::path::Path::new("deep/dir/a.yaml")
    );
    assert!(!clone.join("gone.txt").exists() && !clone.join("deep").exists());

    // History rewrite: main no longer contains `empty`.
    let rewritten = repo.reset_hard_and_force_push(&first).unwrap();
    assert_eq!(repo.head(), rewritten);
    assert_eq!(rev_parse(repo.bare_path(), "main"), rewritten);
    assert_eq!(rev_parse(repo.bare_path(), "main^"), first);
    fails(&mut in_bare(
        &repo,
        &["merge-base", "--is-ancestor", &empty, "main"],
    ));
}

#[test]
fn ssh_signed_commits_verify() {
    let root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    let key = SshSigningKey::generate(keys.path()).unwrap();
    let other = SshSigningKey::generate(keys.path()).unwrap();
    assert_ne!(key.path, other.path);
    assert!(key.public.starts_with("ssh-ed25519 AAAA"));

    let unsigned = repo.commit("unsigned").unwrap();
    let signed = repo.commit_signed_ssh("signed", &key).unwrap();
    let by_other = repo
        .commit_signed_ssh("signed by another key", &other)
        .unwrap();

    let allowed = keys.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("{}\n", key.allowed_signers_line("test@cairn.test")),
    )
    .unwrap();
    let setting = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let verify = |sha: &str| in_bare(&repo, &["-c", &setting, "verify-commit", sha]);
    ok(&mut verify(&signed));
    fails(&mut verify(&unsigned));
    fails(&mut verify(&by_other));
}

#[test]
fn gpg_signed_commits_verify() {
    let root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "demo").unwrap();
    let key = GpgKey::generate(keys.path(), "alice").unwrap();
    assert_eq!(key.fingerprint.len(), 40);
    assert!(
        key.public_armored
            .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    );

    let unsigned = repo.commit("unsigned").unwrap();
    let signed = repo.commit_signed_gpg("signed", &key).unwrap();

    // A verifier that knows only the exported public key.
    let verifier = keys.path().join("verifier");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&verifier)
        .unwrap();
    let armored = keys.path().join("alice.asc");
    std::fs::write(&armored, &key.public_armored).unwrap();
    ok(std::process::Command::new("gpg")
        .env("GNUPGHOME", &verifier)
        .args(["--batch", "--import"])
        .arg(&armored));
    let verify = |sha: &str| {
        let mut cmd = in_bare(&repo, &["verify-commit", "--raw", sha]);
        cmd.env("GNUPGHOME", &verifier);
        cmd
    };
    let status = common::output(&mut verify(&signed));
    let raw = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "{raw}");
    assert!(
        raw.contains(&format!("VALIDSIG {}", key.fingerprint)),
        "{raw}"
    );
    fails(&mut verify(&unsigned));
    let _ = std::process::Command::new("gpgconf")
        .env("GNUPGHOME", &verifier)
        .args(["--kill", "gpg-agent"])
        .output();
}
