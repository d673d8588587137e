//! Test repositories driven through the `git` CLI, and keys to sign commits with.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};

use crate::cmd::{git, run, ssh_keygen, unused_path};

/// A bare repository `<root>/<name>.git` (what the servers serve) and a work tree
/// in a temporary directory whose commits go to the bare repository's `main`.
///
/// The file helpers panic when the file system fails them (they are for tests);
/// everything that runs git returns errors.
pub struct TestRepo {
    bare: PathBuf,
    work: tempfile::TempDir,
}

impl TestRepo {
    /// Creates the bare repository (default branch `main`) and an empty work tree
    /// pushing to it.
    pub fn new(root: &Path, name: &str) -> anyhow::Result<Self> {
        let bare = root.join(format!("{name}.git"));
        run(git()
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&bare))?;
        let work = tempfile::Builder::new()
            .prefix("cairn-testrepo-")
            .tempdir()
            .context("creating the work tree")?;
        let repo = TestRepo { bare, work };
        run(repo
            .git()
            .args(["init", "--quiet", "--initial-branch=main"]))?;
        run(repo.git().args(["remote", "add", "origin"]).arg(&repo.bare))?;
        for (key, value) in [
            ("user.name", "Cairn Test"),
            ("user.email", "test@cairn.test"),
            ("commit.gpgSign", "false"),
            ("tag.gpgSign", "false"),
        ] {
            run(repo.git().args(["config", key, value]))?;
        }
        Ok(repo)
    }

    /// Writes `contents` to `path` in the work tree, creating parent directories.
    pub fn write(&self, path: &str, contents: &str) {
        self.write_bytes(path, contents.as_bytes());
    }

    /// Writes `contents` to `path` in the work tree, creating parent directories.
    pub fn write_bytes(&self, path: &str, contents: &[u8]) {
        let file = self.file(path);
        std::fs::write(&file, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    }

    /// Removes the file, symlink or directory `path` from the work tree.
    pub fn remove(&self, path: &str) {
        let file = self.work.path().join(path);
        let removed = match std::fs::symlink_metadata(&file) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&file),
            _ => std::fs::remove_file(&file),
        };
        removed.unwrap_or_else(|e| panic!("removing {}: {e}", file.display()));
    }

    /// Makes `path` in the work tree a symlink to `target`, creating parent
    /// directories.
    pub fn symlink(&self, path: &str, target: &str) {
        let link = self.file(path);
        std::os::unix::fs::symlink(target, &link)
            .unwrap_or_else(|e| panic!("linking {} to {target}: {e}", link.display()));
    }

    /// Commits everything in the work tree (an empty commit if nothing changed),
    /// pushes it to the bare repository's `main` and returns its full sha.
    pub fn commit(&self, message: &str) -> anyhow::Result<String> {
        self.commit_with(message, Signer::None)
    }

    /// Like [`commit`](Self::commit), signed with an SSH key.
    pub fn commit_signed_ssh(&self, message: &str, key: &SshSigningKey) -> anyhow::Result<String> {
        self.commit_with(message, Signer::Ssh(key))
    }

    /// Like [`commit`](Self::commit), signed with an OpenPGP key.
    pub fn commit_signed_gpg(&self, message: &str, key: &GpgKey) -> anyhow::Result<String> {
        self.commit_with(message, Signer::Gpg(key))
    }

    /// Creates (or moves) the lightweight tag `name` at HEAD and pushes it.
    pub fn tag(&self, name: &str) -> anyhow::Result<()> {
        run(self.git().args(["tag", "--force", name]))?;
        self.push(&["--force", "origin", &format!("refs/tags/{name}")])
    }

    /// Creates (or moves) the branch `name` at HEAD and pushes it; the work tree
    /// stays on `main`.
    pub fn branch(&self, name: &str) -> anyhow::Result<()> {
        run(self.git().args(["branch", "--force", name]))?;
        self.push(&["--force", "origin", &format!("refs/heads/{name}")])
    }

    /// Rewrites history: resets `main` to `rev`, commits something new on top and
    /// force-pushes it. Returns the new commit's sha.
    pub fn reset_hard_and_force_push(&self, rev: &str) -> anyhow::Result<String> {
        run(self.git().args(["reset", "--quiet", "--hard", rev]))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        run(self.git().args([
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            &format!("rewrite history onto {rev} ({nanos})"),
        ]))?;
        self.push(&["--force", "origin", "HEAD:refs/heads/main"])?;
        self.rev_parse("HEAD")
    }

    /// The work tree's HEAD commit (the last one pushed to `main`).
    ///
    /// # Panics
    /// When there is no commit yet.
    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
            .unwrap_or_else(|e| panic!("reading HEAD: {e:#}"))
    }

    /// The bare repository.
    pub fn bare_path(&self) -> &Path {
        &self.bare
    }

    /// The work tree.
    pub fn work_path(&self) -> &Path {
        self.work.path()
    }

    /// The bare repository's `file://` URL.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// A git command in the work tree.
    fn git(&self) -> Command {
        let mut cmd = git();
        cmd.current_dir(self.work.path());
        cmd
    }

    /// `path` in the work tree, with its parent directories created.
    fn file(&self, path: &str) -> PathBuf {
        let file = self.work.path().join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        file
    }

    /// Adds everything, commits (signed by `signer`) and pushes to `main`.
    fn commit_with(&self, message: &str, signer: Signer<'_>) -> anyhow::Result<String> {
        run(self.git().args(["add", "--all"]))?;
        let mut commit = self.git();
        match signer {
            Signer::None => {}
            Signer::Ssh(key) => {
                let setting = format!("user.signingkey={}", key.path.display());
                commit.args(["-c", "gpg.format=ssh", "-c", &setting]);
            }
            Signer::Gpg(key) => {
                let setting = format!("user.signingkey={}", key.fingerprint);
                commit.env("GNUPGHOME", &key.home).args(["-c", &setting]);
            }
        }
        commit.args(["commit", "--quiet", "--allow-empty", "-m", message]);
        if !matches!(signer, Signer::None) {
            commit.arg("--gpg-sign");
        }
        run(&mut commit)?;
        self.push(&["origin", "HEAD:refs/heads/main"])?;
        self.rev_parse("HEAD")
    }

    /// `git push --quiet <args>`.
    fn push(&self, args: &[&str]) -> anyhow::Result<()> {
        run(self.git().args(["push", "--quiet"]).args(args)).map(drop)
    }

    /// The full sha `rev` names.
    fn rev_parse(&self, rev: &str) -> anyhow::Result<String> {
        run(self
            .git()
            .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")]))
    }
}

/// Who signs a commit.
#[derive(Clone, Copy)]
enum Signer<'a> {
    None,
    Ssh(&'a SshSigningKey),
    Gpg(&'a GpgKey),
}

/// An ed25519 SSH key (without passphrase) to sign commits with.
pub struct SshSigningKey {
    /// The private key file.
    pub path: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

impl SshSigningKey {
    /// Generates a key in `dir` (as `ssh-signing-<n>`, with `.pub` beside it).
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let path = unused_path(dir, "ssh-signing");
        let public = ssh_keygen(&path, "cairn-test-signing")?;
        Ok(SshSigningKey { path, public })
    }

    /// A line for git's `gpg.ssh.allowedSignersFile` that trusts this key for
    /// `principal`.
    pub fn allowed_signers_line(&self, principal: &str) -> String {
        format!("{principal} namespaces=\"git\" {}", self.public)
    }
}

/// An OpenPGP ed25519 signing key in a GnuPG home of its own. Dropping it stops
/// that home's gpg-agent.
pub struct GpgKey {
    /// The GnuPG home holding the secret key.
    pub home: PathBuf,
    /// The primary key's fingerprint (40 hex digits).
    pub fingerprint: String,
    /// The public key, ASCII-armored.
    pub public_armored: String,
}

impl GpgKey {
    /// Generates a key for `<name> <name@cairn.test>` in a new GnuPG home under
    /// `dir` (as `gnupg-<name>-<n>`).
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let home = unused_path(dir, &format!("gnupg-{name}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .with_context(|| format!("creating {}", home.display()))?;
        let gpg = || {
            let mut cmd = Command::new("gpg");
            cmd.env("GNUPGHOME", &home).arg("--batch");
            cmd
        };
        run(gpg()
            .args([
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
            ])
            .arg(format!("{name} <{name}@cairn.test>"))
            .args(["ed25519", "sign", "never"]))?;
        let listing = run(gpg().args(["--with-colons", "--list-secret-keys"]))?;
        let fingerprint = listing
            .lines()
            .find(|line| line.starts_with("fpr:"))
            .and_then(|line| line.split(':').nth(9))
            .with_context(|| format!("no fingerprint in gpg's key listing: {listing}"))?
            .to_owned();
        ensure!(
            fingerprint.len() == 40,
            "odd fingerprint {fingerprint:?} from gpg"
        );
        let public_armored = run(gpg().args(["--armor", "--export", &fingerprint]))?;
        Ok(GpgKey {
            home,
            fingerprint,
            public_armored,
        })
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}
