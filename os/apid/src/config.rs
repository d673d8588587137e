//! The machine config: reading it with its secrets redacted, and keeping a new
//! one (validated, diffed, written durably).

use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use cairn_machine_config::MachineConfig;

/// What replaces a secret in text the API returns or logs.
pub const REDACTED: &str = "REDACTED";

/// Mode of the machine config file (it may hold a git token).
pub const FILE_MODE: u32 = 0o600;

/// The name parse errors of `ConfigApply` start with.
pub const API_SOURCE: &str = "machine config from the API";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The new config does not parse or validate; the message names the field and
    /// line (secrets redacted).
    #[error("{0}")]
    Invalid(String),
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

/// A URL's `scheme://authority` that carries a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Credential {
    /// Byte range of `scheme://authority` in the text.
    span: Range<usize>,
    /// The same with the credential replaced by [`REDACTED`].
    redacted: String,
}

/// Every URL in `text` whose userinfo holds a credential (see [`redact`]).
fn credentials(text: &str) -> Vec<Credential> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(found_at) = text[from..].find("://") {
        let at = from + found_at;
        let scheme_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = &text[scheme_start..at];
        let after = at + 3;
        let end = text[after..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | ',' | ']' | '}')
            })
            .map_or(text.len(), |n| after + n);
        let authority = &text[after..end];
        if let Some(userinfo_len) = authority.rfind('@') {
            let userinfo = &authority[..userinfo_len];
            let web = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
            let redacted_userinfo = match userinfo.split_once(':') {
                Some((user, _password)) => Some(format!("{user}:{REDACTED}")),
                None if web && !userinfo.is_empty() => Some(REDACTED.to_owned()),
                None => None,
            };
            if let Some(userinfo) = redacted_userinfo {
                found.push(Credential {
                    span: scheme_start..end,
                    redacted: format!(
                        "{}{userinfo}{}",
                        &text[scheme_start..after],
                        &authority[userinfo_len..]
                    ),
                });
            }
        }
        from = end.max(after);
    }
    found.extend(secret_fields(text));
    found.sort_by_key(|c| c.span.start);
    found
}

/// The machine config's fields that hold a secret (the gitops credentials and
/// webhook secret): their values, inline or block scalars.
const SECRET_FIELDS: &[&str] = &["token", "password", "secret", "sshKey", "sshKeyPassphrase"];

/// Every `field: value` of [`SECRET_FIELDS`] in `text`; a block scalar (`|`)
/// spans the more-indented lines after it.
fn secret_fields(text: &str) -> Vec<Credential> {
    let mut found = Vec::new();
    let mut lines = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        lines.push((at, line.trim_end_matches('\n')));
        at += line.len();
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut i = 0;
    while i < lines.len() {
        let (start, line) = lines[i];
        i += 1;
        let body = line.trim_start().trim_start_matches("- ");
        let Some((key, value)) = body.split_once(':') else {
            continue;
        };
        if !SECRET_FIELDS.contains(&key) {
            continue;
        }
        let key_at = start + (line.len() - body.len());
        let mut end = start + line.len();
        let v = value.trim();
        if v.is_empty() || v.starts_with('|') || v.starts_with('>') {
            while i < lines.len()
                && (lines[i].1.trim().is_empty() || indent(lines[i].1) > indent(line))
            {
                end = lines[i].0 + lines[i].1.len();
                i += 1;
            }
        }
        found.push(Credential {
            span: key_at..end,
            redacted: format!("{key}: {REDACTED}"),
        });
    }
    found
}

/// Every secret in a machine config's text replaced by [`REDACTED`].
///
/// Secrets are the gitops credential fields ([`SECRET_FIELDS`]) and a credential
/// in the userinfo of a URL (the
/// `gitops.url` of a private repository): `https://user:TOKEN@host/...` becomes
/// `https://user:REDACTED@host/...`. For `http(s)://` URLs a userinfo without a
/// password is itself a token (`https://TOKEN@github.com/...`) and is redacted
/// whole; for other schemes (`ssh://git@host/...`) a bare user name is kept.
/// URLs anywhere in the text are treated alike, so a credential put in another
/// field, or a YAML value the parser would refuse, is redacted too.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for c in credentials(text) {
        out.push_str(&text[copied..c.span.start]);
        out.push_str(&c.redacted);
        copied = c.span.end;
    }
    out.push_str(&text[copied..]);
    out
}

/// `new` with each [`REDACTED`] placeholder (as `ConfigGet` returns it) put back
/// to the kept config's credential for the same URL, so that a config fetched,
/// edited and applied keeps its token. A placeholder for a URL the kept config has
/// no credential for is refused rather than kept as the credential.
pub fn restore_redacted(new: &str, kept: &str) -> Result<String, ConfigError> {
    let kept_credentials = credentials(kept);
    let mut out = String::with_capacity(new.len());
    let mut copied = 0;
    for c in credentials(new) {
        let text = &new[c.span.clone()];
        if text != c.redacted {
            continue; // a real credential
        }
        let original = kept_credentials
            .iter()
            .find(|k| k.redacted == text)
            .map(|k| &kept[k.span.clone()])
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{API_SOURCE}: `{text}` holds the {REDACTED} placeholder of ConfigGet, but the \
                     kept config has no credential for that URL; give the credential itself"
                ))
            })?;
        out.push_str(&new[copied..c.span.start]);
        out.push_str(original);
        copied = c.span.end;
    }
    out.push_str(&new[copied..]);
    Ok(out)
}

/// The text of the kept machine config; the built-in default when there is none.
pub fn read_kept(path: &Path) -> Result<String, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(MachineConfig::default_document().to_owned())
        }
        Err(error) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// The kept machine config as `ConfigGet` returns it.
pub fn get(path: &Path) -> Result<String, ConfigError> {
    read_kept(path).map(|t| redact(&t))
}

/// What `ConfigApply` found (and did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Unified diff of the kept config against the new one, both redacted.
    pub diff: String,
    /// The new text differs from the kept one (possibly only in a secret).
    pub changed: bool,
    /// The new config was written (not a dry run, and changed).
    pub written: bool,
}

/// Validates `new_text` (its [`REDACTED`] placeholders restored from the kept
/// config), diffs it against the kept config and, unless `dry_run`, keeps it
/// durably. An invalid config leaves the file untouched.
pub fn apply(path: &Path, new_text: &str, dry_run: bool) -> Result<Applied, ConfigError> {
    let kept = read_kept(path)?;
    let restored = restore_redacted(new_text, &kept)?;
    let new_text = restored.as_str();
    MachineConfig::parse(API_SOURCE, new_text)
        .map_err(|e| ConfigError::Invalid(redact(&e.to_string())))?;
    let name = path.file_name().map_or_else(
        || "machine.yaml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let diff = crate::diff::unified(
        &redact(&kept),
        &redact(new_text),
        &format!("a/{name}"),
        &format!("b/{name}"),
    );
    let changed = kept != new_text;
    let written = changed && !dry_run;
    if written {
        write_durable(path, new_text.as_bytes()).map_err(|error| ConfigError::Write {
            path: path.to_path_buf(),
            error,
        })?;
    }
    Ok(Applied {
        diff,
        changed,
        written,
    })
}

pub use cairn_machine_config::write_durable;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_gitops_secret_fields_and_restores_them() {
        let text = "gitops:\n  url: https://h/r.git\n  auth:\n    token: ghp_abc\n    sshKey: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n      b3Blbn\n      -----END OPENSSH PRIVATE KEY-----\n  webhook:\n    secret: \"0123456789abcdef\"\n  path: apps\n";
        let shown = redact(text);
        assert_eq!(
            shown,
            "gitops:\n  url: https://h/r.git\n  auth:\n    token: REDACTED\n    sshKey: REDACTED\n  webhook:\n    secret: REDACTED\n  path: apps\n"
        );
        assert_eq!(restore_redacted(&shown, text).expect("restored"), text);
    }

    #[test]
    fn redacts_url_credentials() {
        let text = "gitops:\n  url: https://deploy:s3cr3t@git.example.com/org/repo.git\n";
        assert_eq!(
            redact(text),
            "gitops:\n  url: https://deploy:REDACTED@git.example.com/org/repo.git\n"
        );
        // A bare token over https; quoted values; no trailing path.
        assert_eq!(
            redact("url: \"https://ghp_abc123@github.com/o/r\"\n"),
            "url: \"https://REDACTED@github.com/o/r\"\n"
        );
        assert_eq!(
            redact("url: https://u:p@host"),
            "url: https://u:REDACTED@host"
        );
        // Not secrets: an ssh user, plain URLs, a port, a scp-like address.
        for keep in [
            "url: ssh://git@github.com/o/r.git\n",
            "apiEndpoint: https://10.0.0.1:6443\n",
            "url: git@github.com:o/r.git\n",
            "url: file:///srv/repo\n",
            "no urls at all\n",
        ] {
            assert_eq!(redact(keep), keep);
        }
        // The password of an ssh URL is still one.
        assert_eq!(
            redact("url: ssh://git:pw@host/r"),
            "url: ssh://git:REDACTED@host/r"
        );
        // Several, and an '@' in the path is not userinfo.
        assert_eq!(
            redact("a: https://a:1@h/x@y b: https://b:2@h\n"),
            "a: https://a:REDACTED@h/x@y b: https://b:REDACTED@h\n"
        );
    }

    #[test]
    fn placeholders_get_the_kept_credential_back() {
        let kept = "gitops:\n  url: https://deploy:s3cr3t@git.example.com/org/repo.git\n";
        let fetched = redact(kept);
        assert_eq!(restore_redacted(&fetched, kept).unwrap(), kept);
        let edited = format!("{fetched}  branch: dev\n");
        assert_eq!(
            restore_redacted(&edited, kept).unwrap(),
            format!("{kept}  branch: dev\n")
        );
        // A new credential is taken as given.
        let new = "gitops:\n  url: https://deploy:n3w@git.example.com/org/repo.git\n";
        assert_eq!(restore_redacted(new, kept).unwrap(), new);
        // A placeholder for another URL cannot be resolved.
        let other = "gitops:\n  url: https://deploy:REDACTED@elsewhere.example.com/r\n";
        let e = restore_redacted(other, kept).unwrap_err().to_string();
        assert!(
            e.contains("placeholder") && e.contains("elsewhere.example.com"),
            "{e}"
        );
    }

    const VALID: &str =
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: node-1\n";

    #[test]
    fn apply_validates_diffs_and_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("machine.yaml");
        fs::write(&path, VALID).unwrap();

        let e = apply(
            &path,
            "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostnme: x\n",
            false,
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("line 4"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), VALID);

        let new = VALID.replace("node-1", "node-2");
        let dry = apply(&path, &new, true).unwrap();
        assert!(dry.changed && !dry.written);
        assert!(
            dry.diff
                .contains("-  hostname: node-1\n+  hostname: node-2\n"),
            "{}",
            dry.diff
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), VALID);

        let real = apply(&path, &new, false).unwrap();
        assert!(real.written);
        assert_eq!(fs::read_to_string(&path).unwrap(), new);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);

        let same = apply(&path, &new, false).unwrap();
        assert!(!same.changed && !same.written && same.diff.is_empty());
    }

    #[test]
    fn secrets_stay_out_of_errors_and_diffs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("machine.yaml");
        let bad = format!("{VALID}gitops:\n  url: https://u:tok3n@h/r\n  intervalSeconds: 0\n");
        let e = apply(&path, &bad, true).unwrap_err().to_string();
        assert!(!e.contains("tok3n"), "{e}");
        let good = format!("{VALID}gitops:\n  url: https://u:tok3n@h/r\n");
        let applied = apply(&path, &good, true).unwrap();
        assert!(
            applied.diff.contains("https://u:REDACTED@h/r"),
            "{}",
            applied.diff
        );
        assert!(!applied.diff.contains("tok3n"));
        // No file yet: the diff is against the default document.
        assert!(
            applied.diff.contains("-  hostname: cairn\n"),
            "{}",
            applied.diff
        );
        assert!(!path.exists());
    }

    fn token() -> impl proptest::strategy::Strategy<Value = String> {
        let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789_".chars().collect();
        proptest::collection::vec(proptest::sample::select(alphabet), 12..24)
            .prop_map(|c| c.into_iter().collect())
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A ConfigApply body of any text: applied, or refused with the kept config
        /// left exactly as it was.
        #[test]
        fn apply_of_anything_keeps_the_last_good_config(text in proptest::prelude::any::<String>()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("machine.yaml");
            let kept = MachineConfig::default_document();
            std::fs::write(&path, kept).expect("write");
            if apply(&path, &text, false).is_err() {
                proptest::prop_assert_eq!(std::fs::read_to_string(&path).expect("read"), kept);
            }
        }

        /// A credential in a URL never survives redaction, wherever it stands in
        /// whatever text; redaction never panics on any text.
        #[test]
        fn url_credentials_never_survive_redaction(
            before in proptest::prelude::any::<String>(),
            after in proptest::prelude::any::<String>(),
            secret in token(),
            with_user in proptest::prelude::any::<bool>(),
        ) {
            let userinfo = if with_user { format!("deploy:{secret}") } else { secret.clone() };
            let text = format!("{before} https://{userinfo}@git.example.com/o/r.git {after}");
            let shown = redact(&text);
            let outside = before.matches(secret.as_str()).count() + after.matches(secret.as_str()).count();
            proptest::prop_assert!(shown.matches(secret.as_str()).count() <= outside, "{}", shown);
            proptest::prop_assert!(shown.contains("REDACTED"), "{}", shown);
        }
    }
}
