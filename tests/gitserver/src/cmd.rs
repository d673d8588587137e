//! Running the external tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs `cmd` to completion and returns its stdout, trimmed. The error names the
/// command and carries its stderr.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A `git` command that ignores the caller's global and system configuration and
/// any repository the environment points at, and never prompts. `GIT_SSL_CAINFO`
/// and friends go too: they would override `http.sslCAInfo`.
pub fn git() -> Command {
    let mut cmd = Command::new("git");
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_NO_VERIFY",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// Generates an ed25519 key pair without passphrase at `path` (and `path.pub`) and
/// returns the public key line (`ssh-ed25519 AAAA... comment`).
pub(crate) fn ssh_keygen(path: &Path, comment: &str) -> anyhow::Result<String> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path))?;
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    let line = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", Path::new(&public).display()))?;
    Ok(line.trim().to_owned())
}

/// The first path `dir/<base>-<n>` that does not exist yet.
pub(crate) fn unused_path(dir: &Path, base: &str) -> PathBuf {
    let mut n = 0u32;
    loop {
        let path = dir.join(format!("{base}-{n}"));
        if !path.exists() {
            return path;
        }
        n += 1;
    }
}
