//! Running the git CLI in the tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub use cairn_testgit::git;

/// Runs `cmd`, returning its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("running git")
}

/// Runs `cmd` and panics with its stderr unless it succeeds; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `cmd`, expects it to fail and returns its stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded unexpectedly: {stderr}"
    );
    stderr
}

/// `git rev-parse <rev>` in `repo`.
pub fn rev_parse(repo: &Path, rev: &str) -> String {
    ok(git().arg("-C").arg(repo).args(["rev-parse", rev]))
}
