//! git over SSH: Debian's `sshd` on a loopback port with keys of its own.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::ssh_keygen;

/// Debian's sshd; it must be started by absolute path (it re-executes itself).
const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory; it refuses to start without it.
const PRIVSEP_DIR: &str = "/run/sshd";

/// The real `sshd` on 127.0.0.1, with a generated ed25519 host key and one
/// authorized ed25519 client key. Clients log in as `root` (the tests run as root)
/// and reach repositories by absolute path, as git over SSH does.
///
/// sshd runs with `UsePAM no`, so root's account must not be locked (`!` in
/// `/etc/shadow`); `*` is fine. Dropping the server kills sshd.
pub struct SshGitServer {
    dir: tempfile::TempDir,
    root: PathBuf,
    port: u16,
    sshd: Child,
    client_key: PathBuf,
    client_key_pem: String,
    host_key: String,
}

impl SshGitServer {
    /// Starts sshd serving the repositories under `root` on a free port and waits
    /// until it accepts connections.
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("the git server root {}", root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("cairn-sshd-")
            .tempdir()
            .context("creating sshd's directory")?;
        std::fs::create_dir_all(PRIVSEP_DIR).with_context(|| format!("creating {PRIVSEP_DIR}"))?;
        std::fs::set_permissions(PRIVSEP_DIR, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {PRIVSEP_DIR} 0755"))?;

        let path = |name: &str| dir.path().join(name);
        let host = ssh_keygen(&path("host_ed25519"), "cairn-testgit host")?;
        // The known_hosts form: key type and key, without the comment.
        let host_key = host
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let client = ssh_keygen(&path("client_ed25519"), "cairn-testgit client")?;
        write(&path("authorized_keys"), &format!("{client}\n"))?;
        let client_key_pem =
            std::fs::read_to_string(path("client_ed25519")).context("reading the client key")?;

        let port = free_port()?;
        write(
            &path("known_hosts"),
            &format!("[127.0.0.1]:{port} {host_key}\n"),
        )?;
        let mut config = String::new();
        for (key, value) in [
            ("Port", port.to_string()),
            ("ListenAddress", "127.0.0.1".to_owned()),
            ("HostKey", path("host_ed25519").display().to_string()),
            (
                "AuthorizedKeysFile",
                path("authorized_keys").display().to_string(),
            ),
            ("PidFile", path("sshd.pid").display().to_string()),
            ("PasswordAuthentication", "no".to_owned()),
            ("KbdInteractiveAuthentication", "no".to_owned()),
            ("UsePAM", "no".to_owned()),
            ("StrictModes", "no".to_owned()),
            ("PermitRootLogin", "prohibit-password".to_owned()),
            ("AcceptEnv", "GIT_PROTOCOL".to_owned()),
            ("PrintMotd", "no".to_owned()),
        ] {
            let _ = writeln!(config, "{key} {value}");
        }
        write(&path("sshd_config"), &config)?;

        let log = std::fs::File::create(path("sshd.log")).context("creating sshd.log")?;
        let sshd = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing sshd.log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        let mut server = SshGitServer {
            client_key: path("client_ed25519"),
            dir,
            root,
            port,
            sshd,
            client_key_pem,
            host_key,
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// The clone URL of `repo` (a path relative to the root, like `demo.git`).
    pub fn url(&self, repo: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/{repo}",
            self.port,
            self.root.display()
        )
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The authorized client key, as OpenSSH private key text. (Files holding it
    /// must be private, mode 0600, or ssh ignores them.)
    pub fn client_key_pem(&self) -> String {
        self.client_key_pem.clone()
    }

    /// The authorized client key's file (mode 0600).
    pub fn client_key_path(&self) -> &Path {
        &self.client_key
    }

    /// A known_hosts line for the server: `[127.0.0.1]:<port> ssh-ed25519 AAAA...`.
    pub fn known_hosts(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key)
    }

    /// A `GIT_SSH_COMMAND` that logs in with the client key and checks the host key
    /// strictly, ignoring the user's ssh configuration.
    pub fn git_ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes \
             -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            self.client_key.display(),
            self.dir.path().join("known_hosts").display()
        )
    }

    /// Waits until sshd accepts connections, or fails with its log if it exits or
    /// takes longer than 10 s.
    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.sshd.try_wait().context("checking on sshd")? {
                bail!("sshd exited ({status}): {}", self.log());
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd did not listen on port {} within 10 s: {}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// sshd's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
            .trim()
            .to_owned()
    }
}

impl Drop for SshGitServer {
    fn drop(&mut self) {
        // Sessions still open have sshd processes of their own; they end with
        // their clients.
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// A port that was free a moment ago (sshd binds it itself).
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener
        .local_addr()
        .context("the free port's address")?
        .port())
}

/// Writes `text` to `path`.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
