//! `source` against real repositories made with the `git` CLI, over file:// URLs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_gitops::source::{Auth, GitRef, Source, SourceError, SourceSpec};

/// A work repository driven by the `git` CLI, isolated from the user's config.
struct Repo {
    tmp: tempfile::TempDir,
    work: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(tmp.path().join("home")).expect("home");
        let repo = Repo { tmp, work };
        repo.git_in(repo.tmp.path(), &["init", "-q", "-b", "main", "work"]);
        repo
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    fn url(&self) -> String {
        format!("file://{}", self.work.display())
    }

    fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        self.run(Command::new("git").current_dir(dir).args(args))
    }

    fn git(&self, args: &[&str]) -> String {
        self.git_in(&self.work, args)
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = cmd
            .env("HOME", self.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@cairn.test")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@cairn.test")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn write(&self, path: &str, data: &[u8]) -> &Repo {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, data).expect("write");
        self
    }

    fn symlink(&self, target: &str, path: &str) -> &Repo {
        let link = self.work.join(path);
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, link).expect("symlink");
        self
    }

    /// Commits everything; `sign` are extra `git` options (e.g. an SSH signing key).
    fn commit_with(&self, message: &str, sign: &[&str]) -> String {
        self.git(&["add", "-A"]);
        let mut args: Vec<&str> = sign.to_vec();
        args.extend(["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&args);
        self.git(&["rev-parse", "HEAD"])
    }

    fn commit(&self, message: &str) -> String {
        self.commit_with(message, &["-c", "commit.gpgsign=false"])
    }

    fn spec(&self, reference: GitRef, mirror: &Path) -> SourceSpec {
        SourceSpec {
            timeout: Duration::from_secs(20),
            ..SourceSpec::new(self.url(), reference, mirror)
        }
    }

    fn mirror(&self, name: &str) -> PathBuf {
        self.tmp.path().join("mirrors").join(name)
    }

    fn source(&self, reference: GitRef, mirror: &str) -> Source {
        Source::open(self.spec(reference, &self.mirror(mirror))).expect("open")
    }

    fn ssh_key(&self, name: &str) -> (PathBuf, String) {
        let key = self.tmp.path().join(name);
        self.run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
        (key, public.trim().to_owned())
    }

    /// A copy of `commit` (whose message is `message`) with another message
    /// but the original signature, as branch `forged`; returns its sha.
    fn forged(&self, commit: &str, message: &str) -> String {
        let raw = self.git(&["cat-file", "commit", commit]);
        let forged = format!("{}forged\n", raw.strip_suffix(message).expect("message"));
        let file = self.tmp.path().join("forged");
        std::fs::write(&file, forged).expect("write");
        let sha = self.git(&[
            "hash-object",
            "-t",
            "commit",
            "-w",
            file.to_str().expect("utf-8"),
        ]);
        self.git(&["update-ref", "refs/heads/forged", &sha]);
        sha
    }

    /// The forged commit, fetched into a source's mirror through branch `forged`.
    fn fetch_forged(&self, spec: &SourceSpec) -> Source {
        let mut spec = spec.clone();
        spec.reference = GitRef::Branch("forged".into());
        let mut source = Source::open(spec).expect("open");
        source.fetch().expect("fetch forged");
        source
    }

    fn ssh_signed(&self, message: &str, key: &Path) -> String {
        let signingkey = format!("user.signingkey={}", key.display());
        self.commit_with(
            message,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &signingkey,
                "-c",
                "commit.gpgsign=true",
            ],
        )
    }
}

fn paths(files: &[cairn_gitops::SourceFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn branch_tag_and_commit_resolve() {
    let repo = Repo::new();
    let c1 = repo.write("a.yaml", b"a: 1\n").commit("first");
    repo.git(&["tag", "-a", "-m", "release", "v1"]);
    repo.git(&["tag", "light"]);
    let c2 = repo.write("a.yaml", b"a: 2\n").commit("second");

    assert_eq!(
        repo.source(GitRef::Branch("main".into()), "b")
            .fetch()
            .expect("branch"),
        c2
    );
    assert_eq!(
        repo.source(GitRef::Tag("v1".into()), "t")
            .fetch()
            .expect("annotated tag"),
        c1
    );
    assert_eq!(
        repo.source(GitRef::Tag("light".into()), "t")
            .fetch()
            .expect("light tag"),
        c1
    );
    let mut fixed = repo.source(GitRef::Commit(c1.clone()), "c");
    assert_eq!(fixed.resolve_local().expect("local"), None);
    assert_eq!(fixed.fetch().expect("commit"), c1);
    assert_eq!(fixed.resolve_local().expect("local"), Some(c1.clone()));
    let info = fixed.describe(&c1).expect("describe");
    assert_eq!(
        (info.id.as_str(), info.summary.as_str()),
        (c1.as_str(), "first")
    );

    let err = repo
        .source(GitRef::Branch("nope".into()), "b")
        .fetch()
        .expect_err("missing branch");
    assert!(matches!(err, SourceError::RefNotFound { .. }), "{err}");
    assert!(!err.is_network());
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = repo
        .source(GitRef::Commit(missing.into()), "c")
        .fetch()
        .expect_err("missing commit");
    assert!(
        matches!(&err, SourceError::CommitNotFound { commit, .. } if commit == missing),
        "{err}"
    );
    let err = Source::open(repo.spec(GitRef::Commit("abc123".into()), &repo.mirror("x")))
        .err()
        .expect("short sha");
    assert!(matches!(err, SourceError::BadCommitId { .. }), "{err}");
}

#[test]
fn second_fetch_is_incremental_and_local_resolution_works_offline() {
    let repo = Repo::new();
    for i in 0..20 {
        repo.write(&format!("apps/f{i}.yaml"), format!("n: {i}\n").as_bytes());
    }
    let c1 = repo.commit("many files");
    let mut source = repo.source(GitRef::Branch("main".into()), "m");
    assert_eq!(source.resolve_local().expect("empty mirror"), None);
    assert_eq!(source.fetch().expect("first"), c1);
    let first = source.last_fetch().objects;
    assert!(first >= 22, "first fetch got {first} objects");

    let c2 = repo
        .write("apps/f3.yaml", b"n: changed\n")
        .commit("change one");
    assert_eq!(source.fetch().expect("second"), c2);
    let second = source.last_fetch().objects;
    assert!(
        second > 0 && second <= 4,
        "second fetch got {second} objects"
    );
    assert_eq!(source.fetch().expect("third"), c2);
    assert_eq!(source.last_fetch().objects, 0);

    // A new Source on the same mirror knows the commit without the network.
    drop(source);
    std::fs::rename(&repo.work, repo.tmp.path().join("gone")).expect("hide the server repo");
    let mut reopened = repo.source(GitRef::Branch("main".into()), "m");
    assert_eq!(reopened.resolve_local().expect("offline"), Some(c2.clone()));
    let err = reopened.fetch().expect_err("server gone");
    assert!(err.is_network(), "{err}");
    assert!(err.to_string().contains(&repo.url()), "{err}");
    assert!(reopened.descends(&c2, &c1).expect("descends"));
    assert!(!reopened.descends(&c1, &c2).expect("not descends"));
    assert!(reopened.descends(&c2, &c2).expect("equal"));
}

#[test]
fn files_under_the_path_only_manifests_sorted() {
    let repo = Repo::new();
    repo.write("apps/web.yaml", b"kind: A\n")
        .write("apps/db.yml", b"kind: B\n")
        .write("apps/cfg.json", b"{}")
        .write("apps/README.md", b"# not a manifest\n")
        .write("apps/logo.png", &[0x89, 0x50, 0xff, 0x00])
        .write("apps/sub/x.yaml", b"kind: C\n")
        .write("other/y.yaml", b"kind: D\n");
    let c = repo.commit("layout");
    let open = |path: &str| {
        let mut spec = repo.spec(GitRef::Branch("main".into()), &repo.mirror("f"));
        spec.path = path.into();
        Source::open(spec)
    };
    let mut source = open("apps").expect("open");
    assert_eq!(source.fetch().expect("fetch"), c);
    let files = source.files(&c).expect("files");
    assert_eq!(
        paths(&files),
        [
            "apps/cfg.json",
            "apps/db.yml",
            "apps/sub/x.yaml",
            "apps/web.yaml"
        ]
    );
    assert_eq!(files[3].data, b"kind: A\n");
    assert_eq!(
        paths(&open("./apps/").expect("open").files(&c).expect("files")),
        paths(&files)
    );
    assert_eq!(open("").expect("root").files(&c).expect("files").len(), 5);
    assert_eq!(open(".").expect("root").files(&c).expect("files").len(), 5);

    for missing in ["nope", "apps/web.yaml", "apps/sub/deeper"] {
        let err = open(missing).expect("open").files(&c).expect_err(missing);
        assert!(
            matches!(err, SourceError::PathMissing { .. }),
            "{missing}: {err}"
        );
    }
    for bad in ["../apps", "apps/../../x", "/apps"] {
        let err = open(bad).err().expect(bad);
        assert!(
            matches!(err, SourceError::InvalidPath { .. }),
            "{bad}: {err}"
        );
    }
    let err = source
        .files("0123456789abcdef0123456789abcdef01234567")
        .expect_err("unknown");
    assert!(matches!(err, SourceError::UnknownCommit { .. }), "{err}");
}

#[test]
fn symlinks_big_files_and_non_utf8_are_refused() {
    let repo = Repo::new();
    repo.write("apps/web.yaml", b"kind: A\n")
        .write("big.bin", &[7u8; 4096]);
    let ok = repo.commit("ok");
    let mut spec = repo.spec(GitRef::Branch("main".into()), &repo.mirror("r"));
    spec.max_file_size = 100;
    let mut source = Source::open(spec).expect("open");
    source.fetch().expect("fetch");
    assert_eq!(
        paths(&source.files(&ok).expect("big non-manifest is ignored")),
        ["apps/web.yaml"]
    );

    let link = repo.symlink("web.yaml", "apps/link.txt").commit("symlink");
    source.fetch().expect("fetch");
    let err = source.files(&link).expect_err("symlink");
    assert!(
        matches!(&err, SourceError::Symlink { path } if path == "apps/link.txt"),
        "{err}"
    );
    repo.git(&["rm", "-q", "apps/link.txt"]);

    let dir_link = repo.symlink("apps", "linked").commit("symlinked dir");
    let mut spec = repo.spec(GitRef::Branch("main".into()), &repo.mirror("r"));
    spec.path = "linked".into();
    let mut through = Source::open(spec).expect("open");
    through.fetch().expect("fetch");
    let err = through.files(&dir_link).expect_err("symlinked path");
    assert!(
        matches!(&err, SourceError::Symlink { path } if path == "linked"),
        "{err}"
    );
    repo.git(&["rm", "-q", "linked"]);

    let big = repo.write("apps/big.yaml", &[b'#'; 101]).commit("big");
    source.fetch().expect("fetch");
    let err = source.files(&big).expect_err("too big");
    assert!(
        matches!(&err, SourceError::TooBig { path, size: 101, limit: 100 } if path == "apps/big.yaml"),
        "{err}"
    );
    repo.git(&["rm", "-q", "apps/big.yaml"]);

    let latin1 = repo
        .write("apps/bad.yaml", b"name: caf\xe9\n")
        .commit("latin-1");
    source.fetch().expect("fetch");
    let err = source.files(&latin1).expect_err("not utf-8");
    assert!(
        matches!(&err, SourceError::NotUtf8 { path } if path == "apps/bad.yaml"),
        "{err}"
    );
}

#[test]
fn history_rewrite_is_refused_unless_allowed() {
    let repo = Repo::new();
    let c1 = repo.write("a.yaml", b"a: 1\n").commit("one");
    let c2 = repo.write("a.yaml", b"a: 2\n").commit("two");
    let mut source = repo.source(GitRef::Branch("main".into()), "h");
    assert_eq!(source.fetch().expect("fetch"), c2);
    source.pin(&c2, "applied").expect("pin");
    source.verify(None, &c2).expect("first apply");
    source.verify(Some(&c1), &c2).expect("fast-forward");
    source.verify(Some(&c2), &c2).expect("unchanged");

    repo.git(&["reset", "-q", "--hard", &c1]);
    let c3 = repo.write("a.yaml", b"a: 3\n").commit("rewritten");
    assert_eq!(source.fetch().expect("forced update is fetched"), c3);
    let err = source.verify(Some(&c2), &c3).expect_err("rewrite");
    assert!(
        matches!(&err, SourceError::HistoryRewrite { last, new } if *last == c2 && *new == c3),
        "{err}"
    );
    // The pinned commit survives in the mirror although no branch holds it.
    assert!(source.describe(&c2).is_ok());

    let mut spec = source.spec().clone();
    spec.allow_history_rewrite = true;
    drop(source);
    Source::open(spec)
        .expect("open")
        .verify(Some(&c2), &c3)
        .expect("rewrite allowed");
    assert!(
        Source::open(repo.spec(GitRef::Branch("main".into()), &repo.mirror("h")))
            .expect("open")
            .pin(&c3, "../x")
            .is_err()
    );
}

#[test]
fn ssh_signed_ranges() {
    let repo = Repo::new();
    let (key, public) = repo.ssh_key("trusted");
    let (other, _) = repo.ssh_key("stranger");
    let base = repo.commit("unsigned base");
    let s1 = repo.write("a.yaml", b"a: 1\n").ssh_signed("s1", &key);
    let s2 = repo.write("a.yaml", b"a: 2\n").ssh_signed("s2", &key);
    let s3 = repo.write("a.yaml", b"a: 3\n").ssh_signed("s3", &key);
    let mut spec = repo.spec(GitRef::Branch("main".into()), &repo.mirror("s"));
    spec.trusted_ssh_keys = vec![public];
    let mut source = Source::open(spec.clone()).expect("open");
    source.fetch().expect("fetch");

    let forged = repo.forged(&s3, "s3");
    let err = repo
        .fetch_forged(&spec)
        .verify(None, &forged)
        .expect_err("forged");
    assert!(
        matches!(&err, SourceError::BadSignature { commit, reason } if *commit == forged && reason.contains("does not verify")),
        "{err}"
    );

    source
        .verify(None, &s3)
        .expect("first apply checks only the new commit");
    source
        .verify(Some(&base), &s3)
        .expect("three signed commits");
    let err = source.verify(None, &base).expect_err("unsigned");
    assert!(
        matches!(&err, SourceError::Unsigned { commit } if *commit == base),
        "{err}"
    );

    let gap = repo
        .write("a.yaml", b"a: 4\n")
        .commit("unsigned in the middle");
    let s5 = repo.write("a.yaml", b"a: 5\n").ssh_signed("s5", &key);
    source.fetch().expect("fetch");
    let err = source.verify(Some(&s1), &s5).expect_err("gap");
    assert!(
        matches!(&err, SourceError::Unsigned { commit } if *commit == gap),
        "{err}"
    );
    source.verify(Some(&gap), &s5).expect("range after the gap");
    assert!(source.descends(&s5, &s2).expect("descends"));

    let stranger = repo
        .write("a.yaml", b"a: 6\n")
        .ssh_signed("by a stranger", &other);
    source.fetch().expect("fetch");
    let err = source
        .verify(Some(&s5), &stranger)
        .expect_err("untrusted key");
    assert!(
        matches!(&err, SourceError::BadSignature { commit, reason } if *commit == stranger && reason.contains("untrusted")),
        "{err}"
    );

    // Without trusted keys, signatures are not required.
    repo.source(GitRef::Branch("main".into()), "s")
        .verify(Some(&base), &stranger)
        .expect("no keys configured");
}

/// A GnuPG home with one fresh ed25519 signing key; the agent is stopped on drop.
struct Gpg {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl Gpg {
    fn new(repo: &Repo, name: &str) -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .expect("gnupghome");
        let uid = format!("{name} <{name}@cairn.test>");
        let gpg = |args: &[&str]| {
            repo.run(
                Command::new("gpg")
                    .env("GNUPGHOME", home.path())
                    .args(["--batch", "--quiet"])
                    .args(args),
            )
        };
        gpg(&[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-keys", &uid]);
        let fingerprint = listing
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_owned())
            })
            .expect("fingerprint");
        Gpg { home, fingerprint }
    }

    fn armored(&self, repo: &Repo) -> String {
        repo.run(
            Command::new("gpg")
                .env("GNUPGHOME", self.home.path())
                .args(["--batch", "--armor", "--export", &self.fingerprint]),
        )
    }

    fn signed(&self, repo: &Repo, message: &str) -> String {
        let key = format!("user.signingkey={}", self.fingerprint);
        repo.git(&["add", "-A"]);
        repo.run(
            Command::new("git")
                .current_dir(&repo.work)
                .env("GNUPGHOME", self.home.path())
                .args([
                    "-c",
                    &key,
                    "-c",
                    "gpg.format=openpgp",
                    "commit",
                    "-q",
                    "-S",
                    "--allow-empty",
                    "-m",
                    message,
                ]),
        );
        repo.git(&["rev-parse", "HEAD"])
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[test]
fn openpgp_signed_commits() {
    let repo = Repo::new();
    let trusted = Gpg::new(&repo, "trusted");
    let other = Gpg::new(&repo, "other");
    let good = trusted.signed(&repo, "signed by the trusted key");
    let bad = other.signed(&repo, "signed by another key");
    let mut spec = repo.spec(GitRef::Branch("main".into()), &repo.mirror("p"));
    spec.trusted_pgp_keys = vec![trusted.armored(&repo)];
    let mut source = Source::open(spec.clone()).expect("open");
    assert_eq!(source.fetch().expect("fetch"), bad);
    source
        .verify(None, &good)
        .expect("trusted OpenPGP signature");
    let forged = repo.forged(&good, "signed by the trusted key");
    let err = repo
        .fetch_forged(&spec)
        .verify(None, &forged)
        .expect_err("forged");
    assert!(
        matches!(&err, SourceError::BadSignature { commit, .. } if *commit == forged),
        "{err}"
    );
    let err = source.verify(Some(&good), &bad).expect_err("other key");
    assert!(
        matches!(&err, SourceError::BadSignature { commit, .. } if *commit == bad),
        "{err}"
    );
    let err = Source::open({
        let mut spec = repo.spec(GitRef::Branch("main".into()), &repo.mirror("p"));
        spec.trusted_pgp_keys = vec!["not a key".into()];
        spec
    })
    .err()
    .expect("bad key");
    assert!(matches!(err, SourceError::InvalidSpec(_)), "{err}");
}

#[test]
fn spec_validation() {
    let repo = Repo::new();
    let base = repo.spec(GitRef::Branch("main".into()), &repo.mirror("v"));
    let check = |change: &dyn Fn(&mut SourceSpec), what: &str| {
        let mut spec = base.clone();
        change(&mut spec);
        let err = Source::open(spec)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(matches!(err, SourceError::InvalidSpec(_)), "{what}: {err}");
        err.to_string()
    };
    let msg = check(
        &|s| s.url = "https://user:hunter2@example.test/r.git".into(),
        "password in URL",
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    check(
        &|s| s.url = "http://example.test/r.git".into(),
        "plain http",
    );
    check(
        &|s| s.url = "ssh://git@127.0.0.1:2222/r.git".into(),
        "ssh without known_hosts",
    );
    check(
        &|s| s.auth = Auth::Token("secret-token".into()),
        "token over file://",
    );
    check(
        &|s| s.reference = GitRef::Branch("bad..name".into()),
        "bad branch",
    );
    check(&|s| s.timeout = Duration::ZERO, "zero timeout");
    check(
        &|s| s.trusted_ssh_keys = vec!["ssh-ed25519 garbage".into()],
        "bad ssh key",
    );
    let msg = format!(
        "{:?}",
        Auth::Basic {
            username: "u".into(),
            password: "hunter2".into()
        }
    );
    assert!(!msg.contains("hunter2"), "{msg}");
}
