//! The git source: a bare mirror on the DATA partition, kept up to date by
//! incremental fetches of just the configured ref, with the trust checks that
//! decide whether a new revision may be applied (no history rewrite, every new
//! commit signed by a trusted key) and a reader for the manifests under the
//! configured path, straight from the commit's tree.
//!
//! Everything here is blocking (libgit2); the caller runs it in
//! `spawn_blocking`. Network fetches are serialized process-wide, because the
//! libgit2 socket timeouts are process-global settings.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use git2::cert::{Cert, CertHostkey};
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorCode, FetchOptions, Oid,
    RemoteCallbacks, Repository, Sort,
};
use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest as _;
use tracing::{debug, info, warn};

use crate::SourceFile;

/// Which revision of the repository to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    /// The tip of a branch (`main`, not `refs/heads/main`).
    Branch(String),
    /// A tag (`v1.2.0`); annotated tags are peeled to their commit.
    Tag(String),
    /// One fixed commit, as a full 40-digit hex sha.
    Commit(String),
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitRef::Branch(b) => write!(f, "branch {b}"),
            GitRef::Tag(t) => write!(f, "tag {t}"),
            GitRef::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// How to authenticate to the git server. `Debug` never shows a secret.
#[derive(Clone)]
pub enum Auth {
    /// Anonymous access (or `file://`).
    None,
    /// HTTPS with an access token, sent as the password of user `x-access-token`.
    Token(String),
    /// HTTPS basic authentication.
    Basic { username: String, password: String },
    /// SSH with a private key in OpenSSH format.
    SshKey {
        private_key: String,
        passphrase: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::Basic { username, .. } => write!(
                f,
                "Basic {{ username: {username:?}, password: <redacted> }}"
            ),
            Auth::SshKey { .. } => f.write_str("SshKey(<redacted>)"),
        }
    }
}

/// Where the manifests come from and what is trusted.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// `https://`, `ssh://` or `file://`; credentials go in `auth`, never in the URL.
    pub url: String,
    /// The ref to follow.
    pub reference: GitRef,
    /// A directory inside the repository (`""` or `"."` for the root); relative, without `..`.
    pub path: String,
    /// Credentials for the server.
    pub auth: Auth,
    /// HTTPS: when set, the server certificate must chain to this CA (PEM); it
    /// replaces the system roots. Only the server's leaf certificate is seen,
    /// so the CA must sign it directly.
    pub ca_pem: Option<String>,
    /// SSH: `known_hosts` lines; required for `ssh://` URLs. Hashed and
    /// `@cert-authority` entries are not supported.
    pub known_hosts: Option<String>,
    /// The bound of every network operation: connect, each read, and the whole fetch.
    pub timeout: Duration,
    /// OpenSSH public keys (`ssh-ed25519 AAAA… comment`) trusted to sign commits.
    pub trusted_ssh_keys: Vec<String>,
    /// ASCII-armored OpenPGP public keys trusted to sign commits (primary key or subkeys).
    pub trusted_pgp_keys: Vec<String>,
    /// Accept a new revision that does not descend from the last applied one.
    pub allow_history_rewrite: bool,
    /// The largest manifest accepted, in bytes.
    pub max_file_size: u64,
    /// The local bare mirror; created if missing, reused across runs.
    pub mirror_dir: PathBuf,
}

impl SourceSpec {
    /// `url` at `reference`, mirrored in `mirror_dir`, with the defaults: the
    /// repository root, no credentials, no extra CA, a 60 s timeout, no trusted
    /// keys, no history rewrites, files up to 1 MiB.
    pub fn new(
        url: impl Into<String>,
        reference: GitRef,
        mirror_dir: impl Into<PathBuf>,
    ) -> SourceSpec {
        SourceSpec {
            url: url.into(),
            reference,
            path: String::new(),
            auth: Auth::None,
            ca_pem: None,
            known_hosts: None,
            timeout: Duration::from_secs(60),
            trusted_ssh_keys: Vec::new(),
            trusted_pgp_keys: Vec::new(),
            allow_history_rewrite: false,
            max_file_size: 1 << 20,
            mirror_dir: mirror_dir.into(),
        }
    }
}

/// What the status history shows of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The full hex sha.
    pub id: String,
    /// The first line of the message.
    pub summary: String,
    /// The author date, with the author's offset.
    pub author_time: time::OffsetDateTime,
}

/// What the last [`Source::fetch`] transferred (zero when nothing was needed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Objects received from the server.
    pub objects: usize,
    /// Bytes received from the server.
    pub bytes: usize,
}

/// Why the source could not produce or vouch for a revision.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid git source: {0}")]
    InvalidSpec(String),
    #[error("invalid source path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("git mirror {}: {message}", path.display())]
    Mirror { path: PathBuf, message: String },
    #[error("git source {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("{reference} does not exist at {url}")]
    RefNotFound { url: String, reference: String },
    #[error("commit {commit} is not available from {url}")]
    CommitNotFound { url: String, commit: String },
    #[error("{reference} at {url} points to {id}, which is not a commit")]
    NotACommit {
        url: String,
        reference: String,
        id: String,
    },
    #[error("{commit:?} is not a full 40-digit hex commit id")]
    BadCommitId { commit: String },
    #[error("commit {commit} is not in the mirror")]
    UnknownCommit { commit: String },
    #[error("history rewrite refused: {new} does not descend from the last applied commit {last}")]
    HistoryRewrite { last: String, new: String },
    #[error("commit {commit} is not signed")]
    Unsigned { commit: String },
    #[error("commit {commit} has no valid trusted signature: {reason}")]
    BadSignature { commit: String, reason: String },
    #[error("path {path:?} is missing or not a directory in commit {commit}")]
    PathMissing { commit: String, path: String },
    #[error("{path} is a symlink, which is refused")]
    Symlink { path: String },
    #[error("{path} is a submodule, which is refused")]
    Submodule { path: String },
    #[error("{path} is {size} bytes, more than the limit of {limit}")]
    TooBig { path: String, size: u64, limit: u64 },
    #[error("{path} is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("{what}: {source}")]
    Git { what: String, source: git2::Error },
}

impl SourceError {
    /// The server could not be reached (connect, TLS, SSH host key,
    /// authentication or timeout): keep the last state and retry with backoff.
    pub fn is_network(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. })
    }
}

/// Adds what failed to a libgit2 error.
fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Git { what, source }
}

/// Where fetched refs are kept in the mirror; pins live under `refs/cairn/`.
const MIRROR_REFS: &str = "refs/mirror";
const FILE_MODE_TREE: i32 = 0o040000;
const FILE_MODE_LINK: i32 = 0o120000;
const FILE_MODE_COMMIT: i32 = 0o160000;

/// libgit2's socket timeouts are process-global: every fetch sets them and
/// holds this lock for the whole network operation.
static NET_LOCK: Mutex<()> = Mutex::new(());

/// The scheme-specific part of the URL that the checks need.
enum Transport {
    File,
    Https,
    Ssh { port: u16 },
}

/// One usable `known_hosts` line.
struct KnownHost {
    patterns: Vec<String>,
    revoked: bool,
    key: Vec<u8>,
}

/// A git repository mirrored locally, following one ref.
pub struct Source {
    spec: SourceSpec,
    path: String,
    transport: Transport,
    repo: Repository,
    ca: Option<Arc<WebPkiServerVerifier>>,
    known_hosts: Vec<KnownHost>,
    ssh_keys: Vec<ssh_key::PublicKey>,
    pgp_keys: Vec<SignedPublicKey>,
    ssh_public_key: Option<String>,
    last_fetch: FetchStats,
}

impl Source {
    /// Validates the spec and opens the mirror, creating it if missing.
    pub fn open(spec: SourceSpec) -> Result<Source, SourceError> {
        let invalid = |m: String| SourceError::InvalidSpec(m);
        let transport = parse_url(&spec.url)?;
        let path = normalize_path(&spec.path)?;
        match &spec.reference {
            GitRef::Branch(name) | GitRef::Tag(name) => {
                if !git2::Reference::is_valid_name(&remote_ref(&spec.reference, name)) {
                    return Err(invalid(format!(
                        "{} is not a valid ref name",
                        spec.reference
                    )));
                }
            }
            GitRef::Commit(sha) => {
                parse_oid(sha)?;
            }
        }
        if spec.timeout.is_zero() {
            return Err(invalid("the timeout must not be zero".into()));
        }
        match (&transport, &spec.auth) {
            (_, Auth::None) | (Transport::Https, Auth::Token(_) | Auth::Basic { .. }) => {}
            (Transport::Ssh { .. }, Auth::SshKey { .. }) => {}
            (_, auth) => {
                return Err(invalid(format!(
                    "{auth:?} authentication does not fit {}",
                    spec.url
                )));
            }
        }
        let ssh_public_key = match &spec.auth {
            Auth::SshKey { private_key, .. } => {
                let key = ssh_key::PrivateKey::from_openssh(private_key).map_err(|e| {
                    invalid(format!("the SSH private key is not in OpenSSH format: {e}"))
                })?;
                Some(
                    key.public_key()
                        .to_openssh()
                        .map_err(|e| invalid(format!("the SSH private key: {e}")))?,
                )
            }
            _ => None,
        };
        let ca = match (&transport, &spec.ca_pem) {
            (Transport::Https, Some(pem)) => Some(ca_verifier(pem)?),
            (_, Some(_)) => {
                return Err(invalid(format!(
                    "a CA is only used for https:// URLs, not {}",
                    spec.url
                )));
            }
            _ => None,
        };
        let known_hosts = match (&transport, &spec.known_hosts) {
            (Transport::Ssh { .. }, None) => {
                return Err(invalid(format!(
                    "{} needs known_hosts to check the server's host key",
                    spec.url
                )));
            }
            (Transport::Ssh { .. }, Some(text)) => {
                let hosts = parse_known_hosts(text);
                if hosts.is_empty() {
                    return Err(invalid(
                        "known_hosts has no usable (plain, unhashed) entry".into(),
                    ));
                }
                hosts
            }
            _ => Vec::new(),
        };
        let ssh_keys = spec
            .trusted_ssh_keys
            .iter()
            .enumerate()
            .map(|(i, line)| {
                ssh_key::PublicKey::from_openssh(line.trim())
                    .map_err(|e| invalid(format!("trusted SSH key {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pgp_keys = spec
            .trusted_pgp_keys
            .iter()
            .enumerate()
            .map(|(i, armored)| {
                let (key, _) = SignedPublicKey::from_string(armored)
                    .map_err(|e| invalid(format!("trusted OpenPGP key {}: {e}", i + 1)))?;
                key.verify_bindings().map_err(|e| {
                    invalid(format!(
                        "trusted OpenPGP key {}: bad self-signature: {e}",
                        i + 1
                    ))
                })?;
                Ok(key)
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        let repo = open_mirror(&spec.mirror_dir)?;
        debug!(service = "gitops", url = %spec.url, reference = %spec.reference, mirror = %spec.mirror_dir.display(), "git source opened");
        Ok(Source {
            spec,
            path,
            transport,
            repo,
            ca,
            known_hosts,
            ssh_keys,
            pgp_keys,
            ssh_public_key,
            last_fetch: FetchStats::default(),
        })
    }

    /// The spec this source was opened with.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// What the last [`Source::fetch`] transferred.
    pub fn last_fetch(&self) -> FetchStats {
        self.last_fetch
    }

    /// Incrementally fetches just the configured ref into the mirror and
    /// returns the commit it resolves to (hex). For a fixed commit already in
    /// the mirror, the network is not used; otherwise the commit is fetched
    /// directly if the server allows it, else with all branches and tags.
    pub fn fetch(&mut self) -> Result<String, SourceError> {
        let started = Instant::now();
        let mut stats = FetchStats::default();
        match &self.spec.reference {
            GitRef::Branch(name) | GitRef::Tag(name) => {
                let remote = remote_ref(&self.spec.reference, name);
                let spec = format!("+{remote}:{}", local_ref(&self.spec.reference));
                let advertised = self.transfer(&[spec], started, &mut stats)?;
                if !advertised.contains(&remote) {
                    return Err(SourceError::RefNotFound {
                        url: self.spec.url.clone(),
                        reference: self.spec.reference.to_string(),
                    });
                }
            }
            GitRef::Commit(sha) => {
                let oid = parse_oid(sha)?;
                if self.repo.find_commit(oid).is_err() {
                    let direct = self.transfer(
                        &[format!("+{oid}:{}", local_ref(&self.spec.reference))],
                        started,
                        &mut stats,
                    );
                    match direct {
                        Err(e) if e.is_network() && started.elapsed() >= self.spec.timeout => {
                            return Err(e);
                        }
                        Ok(_) if self.repo.find_commit(oid).is_ok() => {}
                        _ => {
                            debug!(service = "gitops", url = %self.spec.url, commit = %oid, "fetching the commit directly failed; fetching all branches and tags");
                            let all = [
                                format!("+refs/heads/*:{MIRROR_REFS}/all/heads/*"),
                                format!("+refs/tags/*:{MIRROR_REFS}/all/tags/*"),
                            ];
                            self.transfer(&all, started, &mut stats)?;
                        }
                    }
                    if self.repo.find_commit(oid).is_err() {
                        return Err(SourceError::CommitNotFound {
                            url: self.spec.url.clone(),
                            commit: oid.to_string(),
                        });
                    }
                }
                self.repo
                    .reference(
                        &local_ref(&self.spec.reference),
                        oid,
                        true,
                        "cairn: fixed commit",
                    )
                    .map_err(git(format!("keeping commit {oid} in the mirror")))?;
            }
        }
        self.last_fetch = stats;
        let id = self
            .resolve_local()?
            .ok_or_else(|| SourceError::RefNotFound {
                url: self.spec.url.clone(),
                reference: self.spec.reference.to_string(),
            })?;
        info!(service = "gitops", url = %self.spec.url, reference = %self.spec.reference, commit = %id,
            objects = stats.objects, bytes = stats.bytes, elapsed_ms = started.elapsed().as_millis() as u64, "fetched");
        Ok(id)
    }

    /// The commit the configured ref points to in the mirror, without the network.
    pub fn resolve_local(&self) -> Result<Option<String>, SourceError> {
        if let GitRef::Commit(sha) = &self.spec.reference {
            let oid = parse_oid(sha)?;
            return Ok(self.repo.find_commit(oid).ok().map(|c| c.id().to_string()));
        }
        let name = local_ref(&self.spec.reference);
        let reference = match self.repo.find_reference(&name) {
            Ok(r) => r,
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(git(format!("reading {name}"))(e)),
        };
        match reference.peel_to_commit() {
            Ok(commit) => Ok(Some(commit.id().to_string())),
            Err(_) => Err(SourceError::NotACommit {
                url: self.spec.url.clone(),
                reference: self.spec.reference.to_string(),
                id: reference
                    .target()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            }),
        }
    }

    /// The trust checks for moving from `last_applied` (None on the first
    /// apply) to `new`: no history rewrite unless allowed, and, when trusted
    /// keys are configured, a valid trusted signature on every commit reachable
    /// from `new` but not from `last_applied` (just `new` on the first apply,
    /// or when `last_applied` is no longer known). The error names the first
    /// offending commit, oldest first.
    pub fn verify(&self, last_applied: Option<&str>, new: &str) -> Result<(), SourceError> {
        let new_id = self.find_commit(new)?.id();
        let mut hide = None;
        if let Some(last) = last_applied {
            let last_id = parse_oid(last)?;
            if last_id == new_id {
                return Ok(());
            }
            let known = self.repo.find_commit(last_id).is_ok();
            let descends = known
                && self
                    .repo
                    .graph_descendant_of(new_id, last_id)
                    .map_err(git(format!(
                        "checking that {new_id} descends from {last_id}"
                    )))?;
            if !descends {
                if !self.spec.allow_history_rewrite {
                    return Err(SourceError::HistoryRewrite {
                        last: last_id.to_string(),
                        new: new_id.to_string(),
                    });
                }
                warn!(service = "gitops", last = %last_id, new = %new_id, known, "history rewrite accepted by configuration");
            }
            hide = known.then_some(last_id);
        }
        if self.ssh_keys.is_empty() && self.pgp_keys.is_empty() {
            return Ok(());
        }
        let range = match hide {
            None => vec![new_id],
            Some(last_id) => {
                let what = || format!("listing the commits from {last_id} to {new_id}");
                let mut walk = self.repo.revwalk().map_err(git(what()))?;
                walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
                    .map_err(git(what()))?;
                walk.push(new_id).map_err(git(what()))?;
                walk.hide(last_id).map_err(git(what()))?;
                walk.collect::<Result<Vec<_>, _>>().map_err(git(what()))?
            }
        };
        for id in &range {
            self.verify_commit(*id)?;
        }
        debug!(service = "gitops", new = %new_id, commits = range.len(), "signatures verified");
        Ok(())
    }

    /// The manifests (`*.yaml`, `*.yml`, `*.json`) under the configured path at
    /// `commit`, read from the tree and sorted by path; other files are ignored.
    /// Symlinks and submodules anywhere under the path, files over the size
    /// limit and non-UTF-8 manifests or names are refused.
    pub fn files(&self, commit: &str) -> Result<Vec<SourceFile>, SourceError> {
        let commit = self.find_commit(commit)?;
        let what = |p: &str| format!("reading {p:?} of commit {}", commit.id());
        let mut tree = commit.tree().map_err(git(what("")))?;
        let mut prefix = String::new();
        for part in self.path.split('/').filter(|p| !p.is_empty()) {
            let here = join(&prefix, part);
            let missing = || SourceError::PathMissing {
                commit: commit.id().to_string(),
                path: self.path.clone(),
            };
            let (mode, id) = tree
                .get_name(part)
                .map(|e| (e.filemode(), e.id()))
                .ok_or_else(missing)?;
            tree = match mode {
                FILE_MODE_TREE => self.repo.find_tree(id).map_err(git(what(&here)))?,
                FILE_MODE_LINK => return Err(SourceError::Symlink { path: here }),
                FILE_MODE_COMMIT => return Err(SourceError::Submodule { path: here }),
                _ => return Err(missing()),
            };
            prefix = here;
        }
        let odb = self
            .repo
            .odb()
            .map_err(git("opening the object database"))?;
        let mut files = Vec::new();
        let mut dirs = vec![(tree, prefix)];
        while let Some((tree, dir)) = dirs.pop() {
            for entry in tree.iter() {
                let name = entry.name_bytes();
                let lossy = || join(&dir, &String::from_utf8_lossy(name));
                let mode = entry.filemode();
                if mode != FILE_MODE_TREE
                    && mode != FILE_MODE_LINK
                    && mode != FILE_MODE_COMMIT
                    && !is_manifest(name)
                {
                    continue;
                }
                let path = join(
                    &dir,
                    std::str::from_utf8(name)
                        .map_err(|_| SourceError::NotUtf8 { path: lossy() })?,
                );
                match mode {
                    FILE_MODE_TREE => dirs.push((
                        self.repo.find_tree(entry.id()).map_err(git(what(&path)))?,
                        path,
                    )),
                    FILE_MODE_LINK => return Err(SourceError::Symlink { path }),
                    FILE_MODE_COMMIT => return Err(SourceError::Submodule { path }),
                    _ => {
                        let (size, _) = odb.read_header(entry.id()).map_err(git(what(&path)))?;
                        let (size, limit) = (size as u64, self.spec.max_file_size);
                        if size > limit {
                            return Err(SourceError::TooBig { path, size, limit });
                        }
                        let data = self
                            .repo
                            .find_blob(entry.id())
                            .map_err(git(what(&path)))?
                            .content()
                            .to_vec();
                        if std::str::from_utf8(&data).is_err() {
                            return Err(SourceError::NotUtf8 { path });
                        }
                        files.push(SourceFile { path, data });
                    }
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Is `ancestor` an ancestor of (or equal to) `commit`?
    pub fn descends(&self, commit: &str, ancestor: &str) -> Result<bool, SourceError> {
        let (commit, ancestor) = (
            self.find_commit(commit)?.id(),
            self.find_commit(ancestor)?.id(),
        );
        Ok(commit == ancestor
            || self
                .repo
                .graph_descendant_of(commit, ancestor)
                .map_err(git(format!(
                    "checking that {commit} descends from {ancestor}"
                )))?)
    }

    /// The commit's summary line and author time, for the status history.
    pub fn describe(&self, commit: &str) -> Result<CommitInfo, SourceError> {
        let commit = self.find_commit(commit)?;
        let when = commit.author().when();
        let offset = time::UtcOffset::from_whole_seconds(when.offset_minutes() * 60)
            .unwrap_or(time::UtcOffset::UTC);
        let author_time = time::OffsetDateTime::from_unix_timestamp(when.seconds())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .to_offset(offset);
        Ok(CommitInfo {
            id: commit.id().to_string(),
            summary: String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
                .into_owned(),
            author_time,
        })
    }

    /// Keeps `commit` alive in the mirror as `refs/cairn/<name>` (e.g. the last
    /// applied or a rolled-back revision), replacing an earlier pin of that name.
    pub fn pin(&self, commit: &str, name: &str) -> Result<(), SourceError> {
        let oid = self.find_commit(commit)?.id();
        let refname = format!("refs/cairn/{name}");
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain || name.starts_with('.') || !git2::Reference::is_valid_name(&refname) {
            return Err(SourceError::InvalidSpec(format!(
                "{name:?} is not a valid pin name"
            )));
        }
        self.repo
            .reference(&refname, oid, true, "cairn: pin")
            .map_err(git(format!("pinning {oid} as {refname}")))?;
        Ok(())
    }

    /// Looks a full hex sha up as a commit in the mirror.
    fn find_commit(&self, commit: &str) -> Result<git2::Commit<'_>, SourceError> {
        let oid = parse_oid(commit)?;
        self.repo
            .find_commit(oid)
            .map_err(|_| SourceError::UnknownCommit {
                commit: oid.to_string(),
            })
    }

    /// One fetch with `refspecs`, within the deadline `started + timeout`;
    /// returns the ref names the server advertised.
    fn transfer(
        &self,
        refspecs: &[String],
        started: Instant,
        stats: &mut FetchStats,
    ) -> Result<Vec<String>, SourceError> {
        let failure = RefCell::new(None::<String>);
        let fail = |message: String| {
            let error = git2::Error::from_str(&message);
            failure.borrow_mut().get_or_insert(message);
            error
        };
        let deadline = started + self.spec.timeout;
        let in_time = || {
            let ok = Instant::now() < deadline;
            if !ok {
                failure
                    .borrow_mut()
                    .get_or_insert(format!("timed out after {:?}", self.spec.timeout));
            }
            ok
        };
        let mut attempts = 0;
        let mut callbacks = RemoteCallbacks::new();
        callbacks
            .credentials(|_, user, allowed| {
                self.credentials(user, allowed, &mut attempts).map_err(fail)
            })
            .certificate_check(|cert, host| self.check_certificate(cert, host).map_err(fail))
            .transfer_progress(|_| in_time())
            .sideband_progress(|_| in_time());
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);

        let _guard = NET_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let ms = i32::try_from(self.spec.timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: libgit2 reads these two integers only while a transport
        // connects or waits on its socket. All libgit2 network use in this
        // process goes through this function and holds NET_LOCK, so nothing
        // reads them while they are written.
        unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(ms)
                .map_err(git("setting the connect timeout"))?;
            git2::opts::set_server_timeout_in_milliseconds(ms)
                .map_err(git("setting the socket timeout"))?;
        }
        let mut remote = self
            .repo
            .remote_anonymous(&self.spec.url)
            .map_err(|e| SourceError::InvalidSpec(format!("{}: {}", self.spec.url, e.message())))?;
        let result = remote.fetch(refspecs, Some(&mut options), Some("cairn: fetch"));
        drop(options);
        let progress = remote.stats();
        stats.objects += progress.received_objects();
        stats.bytes += progress.received_bytes();
        if let Err(e) = result {
            let message = match failure.into_inner() {
                Some(message) => message,
                None if e.code() == ErrorCode::Timeout
                    || e.message().to_ascii_lowercase().contains("timed out")
                    || started.elapsed() >= self.spec.timeout =>
                {
                    format!("timed out after {:?}: {}", self.spec.timeout, e.message())
                }
                None if e.code() == ErrorCode::Auth => {
                    format!("authentication failed: {}", e.message())
                }
                None if e.code() == ErrorCode::Certificate
                    || e.message().contains("certificate") =>
                {
                    format!("certificate rejected: {}", e.message())
                }
                None => e.message().to_owned(),
            };
            warn!(service = "gitops", url = %self.spec.url, reference = %self.spec.reference, %message, "fetch failed");
            return Err(SourceError::Unreachable {
                url: self.spec.url.clone(),
                message,
            });
        }
        let advertised = remote
            .list()
            .map(|heads| heads.iter().map(|h| h.name().to_owned()).collect());
        advertised.map_err(git(format!("listing the refs of {}", self.spec.url)))
    }

    /// Answers libgit2's credential requests once; a second request means the
    /// server rejected what was given, and fails instead of looping.
    fn credentials(
        &self,
        user: Option<&str>,
        allowed: CredentialType,
        attempts: &mut u32,
    ) -> Result<Cred, String> {
        let user = user.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user).map_err(|e| e.message().to_owned());
        }
        *attempts += 1;
        if *attempts > 1 {
            return Err("authentication failed: the server rejected the credentials".into());
        }
        let plain = allowed.contains(CredentialType::USER_PASS_PLAINTEXT);
        let cred = match (&self.spec.auth, &self.ssh_public_key) {
            (Auth::None, _) => {
                return Err(
                    "authentication failed: the server requires credentials, none are configured"
                        .into(),
                );
            }
            (Auth::Token(token), _) if plain => Cred::userpass_plaintext("x-access-token", token),
            (Auth::Basic { username, password }, _) if plain => {
                Cred::userpass_plaintext(username, password)
            }
            (
                Auth::SshKey {
                    private_key,
                    passphrase,
                },
                Some(public),
            ) if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key_from_memory(user, Some(public), private_key, passphrase.as_deref())
            }
            _ => {
                return Err(format!(
                    "authentication failed: the server asks for {allowed:?}, which the configured credentials are not"
                ));
            }
        };
        cred.map_err(|e| format!("authentication failed: {}", e.message()))
    }

    /// HTTPS: with a configured CA, the server's certificate must chain to it
    /// and name the host; without, libgit2's verdict stands. SSH: the host key
    /// must be in known_hosts for this host and port.
    fn check_certificate(
        &self,
        cert: &Cert<'_>,
        host: &str,
    ) -> Result<CertificateCheckStatus, String> {
        if let Some(hostkey) = cert.as_hostkey() {
            return self.check_host_key(hostkey, host);
        }
        let Some(verifier) = &self.ca else {
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let Some(x509) = cert.as_x509() else {
            return Err(format!(
                "TLS certificate rejected: {host} sent no X.509 certificate"
            ));
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("TLS certificate rejected: {host}: {e}"))?;
        verifier
            .verify_server_cert(
                &CertificateDer::from(x509.data()),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .map_err(|e| {
                format!("TLS certificate of {host} rejected against the configured CA: {e}")
            })?;
        Ok(CertificateCheckStatus::CertificateOk)
    }

    fn check_host_key(
        &self,
        hostkey: &CertHostkey<'_>,
        host: &str,
    ) -> Result<CertificateCheckStatus, String> {
        let Transport::Ssh { port } = self.transport else {
            return Err(format!("unexpected SSH host key from {host}"));
        };
        let name = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        let key = hostkey
            .hostkey()
            .ok_or_else(|| format!("the SSH library gave no host key for {name}"))?;
        let entries: Vec<&KnownHost> = self
            .known_hosts
            .iter()
            .filter(|e| e.matches(&name))
            .collect();
        let fingerprint =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(key));
        if entries.iter().any(|e| e.revoked && e.key == key) {
            Err(format!(
                "host key SHA256:{fingerprint} of {name} is revoked in known_hosts"
            ))
        } else if entries.iter().any(|e| !e.revoked && e.key == key) {
            Ok(CertificateCheckStatus::CertificateOk)
        } else if entries.is_empty() {
            Err(format!(
                "host key rejected: known_hosts has no entry for {name}"
            ))
        } else {
            Err(format!(
                "host key rejected: SHA256:{fingerprint} of {name} does not match known_hosts"
            ))
        }
    }

    /// One commit of the range: a valid signature by a trusted key.
    fn verify_commit(&self, id: Oid) -> Result<(), SourceError> {
        let (signature, data) = match self.repo.extract_signature(&id, None) {
            Ok(pair) => pair,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(SourceError::Unsigned {
                    commit: id.to_string(),
                });
            }
            Err(e) => return Err(git(format!("reading the signature of commit {id}"))(e)),
        };
        let bad = |reason: String| SourceError::BadSignature {
            commit: id.to_string(),
            reason,
        };
        let text =
            std::str::from_utf8(&signature).map_err(|_| bad("the signature is not text".into()))?;
        let result = if text
            .trim_start()
            .starts_with("-----BEGIN SSH SIGNATURE-----")
        {
            self.verify_ssh(text, &data)
        } else if text
            .trim_start()
            .starts_with("-----BEGIN PGP SIGNATURE-----")
        {
            self.verify_pgp(text, &data)
        } else {
            Err("unsupported signature format (only SSH and OpenPGP signatures are)".into())
        };
        result.map_err(bad)
    }

    fn verify_ssh(&self, text: &str, data: &[u8]) -> Result<(), String> {
        let signature = ssh_key::SshSig::from_pem(text.trim())
            .map_err(|e| format!("malformed SSH signature: {e}"))?;
        let signer = signature.public_key();
        let fingerprint = signer.fingerprint(ssh_key::HashAlg::Sha256);
        let key = self
            .ssh_keys
            .iter()
            .find(|k| k.key_data() == signer)
            .ok_or_else(|| format!("signed by the untrusted SSH key {fingerprint}"))?;
        key.verify("git", data, &signature)
            .map_err(|e| format!("the SSH signature by {fingerprint} does not verify: {e}"))
    }

    fn verify_pgp(&self, text: &str, data: &[u8]) -> Result<(), String> {
        let (signature, _) = DetachedSignature::from_string(text)
            .map_err(|e| format!("malformed OpenPGP signature: {e}"))?;
        for key in &self.pgp_keys {
            if signature.verify(&key.primary_key, data).is_ok()
                || key
                    .public_subkeys
                    .iter()
                    .any(|sub| signature.verify(&sub.key, data).is_ok())
            {
                return Ok(());
            }
        }
        let issuer = signature
            .signature
            .issuer_fingerprint()
            .first()
            .map(|f| format!(" by {f:X}"))
            .unwrap_or_default();
        Err(format!(
            "the OpenPGP signature{issuer} does not verify with any trusted key"
        ))
    }
}

impl KnownHost {
    /// Does this entry apply to `name` (`host` or `[host]:port`)?
    fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let mut hit = false;
        for pattern in &self.patterns {
            match pattern.strip_prefix('!') {
                Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
                None if glob(pattern.as_bytes(), name.as_bytes()) => hit = true,
                _ => {}
            }
        }
        hit
    }
}

/// OpenSSH host patterns: `*` any run, `?` one character.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], name) || (!name.is_empty() && glob(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The plain entries of a known_hosts text; hashed and CA lines are skipped.
fn parse_known_hosts(text: &str) -> Vec<KnownHost> {
    let mut hosts = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut fields = line.split_whitespace().peekable();
        let revoked = match fields.peek() {
            Some(&"@revoked") => true,
            Some(m) if m.starts_with('@') => continue,
            _ => false,
        };
        if revoked {
            fields.next();
        }
        let (Some(patterns), Some(_kind), Some(key)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(key) else {
            continue;
        };
        if patterns.starts_with('|') {
            continue;
        }
        let patterns = patterns.split(',').map(str::to_ascii_lowercase).collect();
        hosts.push(KnownHost {
            patterns,
            revoked,
            key,
        });
    }
    hosts
}

/// Checks the scheme and that the URL carries no password.
fn parse_url(url: &str) -> Result<Transport, SourceError> {
    let invalid = |m: &str| {
        SourceError::InvalidSpec(format!(
            "{m}: {}",
            url.split('@').next_back().unwrap_or_default()
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("not a URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .map_or((None, authority), |(u, h)| (Some(u), h));
    if userinfo.is_some_and(|u| u.contains(':')) {
        return Err(invalid("put credentials in auth, not in the URL"));
    }
    match scheme {
        "file" => Ok(Transport::File),
        "https" if !hostport.is_empty() => Ok(Transport::Https),
        "ssh" if !hostport.is_empty() => {
            let port = match hostport.rsplit_once(':') {
                Some((_, port)) if !port.ends_with(']') => {
                    port.parse().map_err(|_| invalid("bad port"))?
                }
                _ => 22,
            };
            Ok(Transport::Ssh { port })
        }
        _ => Err(invalid("unsupported URL (use https://, ssh:// or file://)")),
    }
}

/// `""`/`"."` → root; `./a//b/` → `a/b`; absolute paths and `..` are refused.
fn normalize_path(path: &str) -> Result<String, SourceError> {
    let invalid = |reason| SourceError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.starts_with('/') {
        return Err(invalid("must be relative to the repository root"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("must not contain \"..\"")),
            _ => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn parse_oid(sha: &str) -> Result<Oid, SourceError> {
    let bad = || SourceError::BadCommitId {
        commit: sha.to_owned(),
    };
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Oid::from_str(sha).map_err(|_| bad())
}

/// The server's name of a branch or tag.
fn remote_ref(reference: &GitRef, name: &str) -> String {
    match reference {
        GitRef::Tag(_) => format!("refs/tags/{name}"),
        _ => format!("refs/heads/{name}"),
    }
}

/// Where the mirror keeps the configured ref.
fn local_ref(reference: &GitRef) -> String {
    match reference {
        GitRef::Branch(b) => format!("{MIRROR_REFS}/heads/{b}"),
        GitRef::Tag(t) => format!("{MIRROR_REFS}/tags/{t}"),
        GitRef::Commit(_) => format!("{MIRROR_REFS}/commit"),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn is_manifest(name: &[u8]) -> bool {
    [&b".yaml"[..], b".yml", b".json"]
        .iter()
        .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Opens the bare mirror, or creates it in a missing or empty directory.
fn open_mirror(dir: &std::path::Path) -> Result<Repository, SourceError> {
    let fail = |message: String| SourceError::Mirror {
        path: dir.to_owned(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("creating: {e}")))?;
    match Repository::open_bare(dir) {
        Ok(repo) => Ok(repo),
        Err(e) if e.code() == ErrorCode::NotFound => {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| fail(format!("reading: {e}")))?
                .next()
                .is_none();
            if !empty {
                return Err(fail("not a git repository and not empty".into()));
            }
            Repository::init_bare(dir)
                .map_err(|e| fail(format!("creating the repository: {}", e.message())))
        }
        Err(e) => Err(fail(e.message().to_owned())),
    }
}

/// A verifier that trusts only the CA certificates in `pem`.
fn ca_verifier(pem: &str) -> Result<Arc<WebPkiServerVerifier>, SourceError> {
    let invalid = |m: String| SourceError::InvalidSpec(format!("the HTTPS CA: {m}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate in the PEM".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_patterns() {
        let key = base64::engine::general_purpose::STANDARD.encode(b"key");
        let text = format!(
            "# comment\n[127.0.0.1]:2222,git.example ssh-ed25519 {key}\n*.test,!bad.test ssh-ed25519 {key} c\n\
             |1|c2FsdA==|aGFzaA== ssh-ed25519 {key}\n@cert-authority * ssh-ed25519 {key}\n@revoked old.test ssh-ed25519 {key}\n"
        );
        let hosts = parse_known_hosts(&text);
        assert_eq!(hosts.len(), 3);
        let matching = |name: &str| hosts.iter().filter(|h| h.matches(name)).count();
        assert_eq!(matching("[127.0.0.1]:2222"), 1);
        assert_eq!(matching("127.0.0.1"), 0);
        assert_eq!(matching("[127.0.0.1]:22222"), 0);
        assert_eq!(matching("GIT.example"), 1);
        assert_eq!(matching("a.test"), 1);
        assert_eq!(matching("bad.test"), 0);
        assert!(hosts.iter().any(|h| h.revoked && h.matches("old.test")));
    }

    #[test]
    fn urls_and_paths() {
        assert!(matches!(
            parse_url("ssh://git@h:2222/r.git"),
            Ok(Transport::Ssh { port: 2222 })
        ));
        assert!(matches!(
            parse_url("ssh://git@[::1]/r.git"),
            Ok(Transport::Ssh { port: 22 })
        ));
        assert!(matches!(parse_url("https://h/r.git"), Ok(Transport::Https)));
        assert!(matches!(
            parse_url("file:///srv/r.git"),
            Ok(Transport::File)
        ));
        for bad in [
            "git@h:r.git",
            "http://h/r",
            "https://u:pw@h/r",
            "https:///r",
        ] {
            let err = parse_url(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.is_empty() && !err.contains("pw@"), "{bad}: {err}");
        }
        assert_eq!(normalize_path("./a//b/.").ok().as_deref(), Some("a/b"));
        assert_eq!(normalize_path(".").ok().as_deref(), Some(""));
        assert!(normalize_path("a/../b").is_err() && normalize_path("/a").is_err());
        assert!(is_manifest(b"a.yaml") && is_manifest(b"b.yml") && is_manifest(b"c.json"));
        assert!(!is_manifest(b".yaml") && !is_manifest(b"a.yaml.txt") && !is_manifest(b"A.YAML"));
    }
}
