//! The component lockfile (`image-build/components.toml`): its schema, validation
//! and the expansion of `{version}`-style templates in build flags.
//!
//! The file is edited by people; `components update` rewrites only the `sha256`
//! fields and the Go wrapper modules. Unknown fields are rejected so a typo never
//! silently changes a build.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;

/// The whole lockfile, plus where it was read from (wrapper modules are found
/// relative to it).
#[derive(Debug, Clone)]
pub struct Lockfile {
    pub path: PathBuf,
    pub build: BuildSettings,
    pub go: Vec<GoComponent>,
    pub deb: Vec<DebPackage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockfileDoc {
    build: BuildSettings,
    #[serde(default)]
    go: Vec<GoComponent>,
    #[serde(default)]
    deb: Vec<DebPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// The Go toolchain (`go env GOVERSION`) the binary hashes were produced with.
    pub go: String,
    pub source_date_epoch: u64,
    #[serde(default)]
    pub host_packages: Vec<String>,
}

/// A Go program (or several from one module) built from its published module.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoComponent {
    pub name: String,
    pub module: String,
    pub version: String,
    /// Further modules of the same release the wrapper requires at `version`.
    #[serde(default)]
    pub also_require: Vec<String>,
    /// Replace the module's `./staging/...` requirements with their published
    /// `v0.<minor>.<patch>` releases (Kubernetes).
    #[serde(default)]
    pub staging_replaces: bool,
    #[serde(default)]
    pub cgo: bool,
    /// With cgo: link fully static (`-linkmode external -extldflags -static`).
    #[serde(default)]
    pub static_cgo: bool,
    /// Pinned Debian packages (from `[[deb]]`) whose headers and static libraries the
    /// cgo build uses, through pkg-config with the package as sysroot, so the build
    /// never reads the host's copies. At most one.
    #[serde(default)]
    pub cgo_debs: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ldflags: Vec<String>,
    pub binaries: Vec<GoBinary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoBinary {
    pub name: String,
    pub package: String,
    /// Arguments that make the binary print its version.
    pub version_args: Vec<String>,
    /// Text the version output must contain (templates allowed).
    pub expect: String,
    /// sha256 of the reproducibly built binary; empty until `components update`.
    #[serde(default)]
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl Lockfile {
    /// Reads and validates the lockfile at `path`.
    pub fn load(path: &Path) -> Result<Lockfile, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading lockfile {}", path.display()),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Lockfile, Error> {
        let doc: LockfileDoc = toml::from_str(text).map_err(|e| Error::Lockfile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let lock = Lockfile {
            path: path.to_path_buf(),
            build: doc.build,
            go: doc.go,
            deb: doc.deb,
        };
        lock.validate()?;
        Ok(lock)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Error::Lockfile {
            path: self.path.clone(),
            reason,
        };
        let mut names = BTreeSet::new();
        for c in &self.go {
            if !names.insert(c.name.as_str()) {
                return Err(bad(format!("component `{}` is listed twice", c.name)));
            }
            check_name(&c.name).map_err(|r| bad(format!("go component `{}`: {r}", c.name)))?;
            SemVer::parse(&c.version)
                .map_err(|r| bad(format!("go component `{}`: {r}", c.name)))?;
            if c.binaries.is_empty() {
                return Err(bad(format!("go component `{}` builds no binaries", c.name)));
            }
            if c.cgo_debs.len() > 1 {
                return Err(bad(format!(
                    "go component `{}`: cgo_debs takes at most one package (one pkg-config sysroot)",
                    c.name
                )));
            }
            if let Some(d) = c
                .cgo_debs
                .iter()
                .find(|d| !self.deb.iter().any(|p| &p.name == *d))
            {
                return Err(bad(format!(
                    "go component `{}`: cgo_debs names `{d}`, which is not a [[deb]] entry",
                    c.name
                )));
            }
            if c.static_cgo && !c.cgo {
                return Err(bad(format!(
                    "go component `{}`: static_cgo needs cgo = true",
                    c.name
                )));
            }
            let mut bins = BTreeSet::new();
            for b in &c.binaries {
                check_name(&b.name).map_err(|r| bad(format!("binary `{}`: {r}", b.name)))?;
                if !bins.insert(b.name.as_str()) {
                    return Err(bad(format!(
                        "go component `{}` lists binary `{}` twice",
                        c.name, b.name
                    )));
                }
                if !b.sha256.is_empty() && !is_sha256(&b.sha256) {
                    return Err(bad(format!(
                        "binary `{}/{}`: sha256 `{}` is not 64 hex digits",
                        c.name, b.name, b.sha256
                    )));
                }
            }
        }
        let mut debs = BTreeSet::new();
        for d in &self.deb {
            if !debs.insert(d.name.as_str()) {
                return Err(bad(format!("deb `{}` is listed twice", d.name)));
            }
            // Empty until `components update` pins a newly added package.
            if !d.sha256.is_empty() && !is_sha256(&d.sha256) {
                return Err(bad(format!(
                    "deb `{}`: sha256 `{}` is not 64 hex digits",
                    d.name, d.sha256
                )));
            }
        }
        Ok(())
    }

    /// The directory holding the Go wrapper modules (`gomod/` beside the lockfile).
    pub fn gomod_dir(&self, component: &GoComponent) -> PathBuf {
        self.path
            .parent()
            .unwrap_or(Path::new("."))
            .join("gomod")
            .join(&component.name)
    }

    pub fn go_component(&self, name: &str) -> Option<&GoComponent> {
        self.go.iter().find(|c| c.name == name)
    }

    pub fn deb_package(&self, name: &str) -> Option<&DebPackage> {
        self.deb.iter().find(|d| d.name == name)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name `{name}` must be lowercase letters, digits, `-` or `_`"
        ))
    }
}

pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// `v1.36.3` split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemVer {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl SemVer {
    pub fn parse(v: &str) -> Result<SemVer, String> {
        let err = || format!("version `{v}` is not of the form vMAJOR.MINOR.PATCH");
        let rest = v.strip_prefix('v').ok_or_else(err)?;
        let mut it = rest.split('.');
        let mut next =
            || -> Result<u64, String> { it.next().and_then(|p| p.parse().ok()).ok_or_else(err) };
        let sv = SemVer {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        if it.next().is_some() {
            return Err(err());
        }
        Ok(sv)
    }
}

impl GoComponent {
    /// Expands `{version}`, `{semver}`, `{major}`, `{minor}` and `{date}` in `s`.
    pub fn expand(&self, s: &str, source_date_epoch: u64) -> String {
        let v = SemVer::parse(&self.version).unwrap_or(SemVer {
            major: 0,
            minor: 0,
            patch: 0,
        });
        s.replace("{version}", &self.version)
            .replace("{semver}", self.version.trim_start_matches('v'))
            .replace("{major}", &v.major.to_string())
            .replace("{minor}", &v.minor.to_string())
            .replace("{date}", &rfc3339(source_date_epoch))
    }
}

pub use crate::civil::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[build]
go = "go1.26.8"
source_date_epoch = 1793491200

[[go]]
name = "etcd"
module = "go.etcd.io/etcd/server/v3"
version = "v3.6.8"
binaries = [{ name = "etcd", package = "go.etcd.io/etcd/server/v3", version_args = ["--version"], expect = "etcd Version: {semver}" }]

[[deb]]
name = "libc6"
version = "2.36-9+deb12u14"
sha256 = "ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf"
"#;

    #[test]
    fn parses_minimal_lockfile() {
        let lock = Lockfile::parse(Path::new("/x/components.toml"), MINIMAL).expect("parses");
        assert_eq!(lock.go[0].name, "etcd");
        assert_eq!(lock.gomod_dir(&lock.go[0]), Path::new("/x/gomod/etcd"));
        assert_eq!(lock.deb[0].name, "libc6");
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("module = ", "modul = ");
        let err = Lockfile::parse(Path::new("c.toml"), &text)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("modul"), "{err}");
    }

    #[test]
    fn bad_deb_hash_and_duplicates_are_refused() {
        let text = MINIMAL.replace("ba4f88f7", "zz4f88f7");
        let err = Lockfile::parse(Path::new("c.toml"), &text)
            .expect_err("bad hash")
            .to_string();
        assert!(err.contains("libc6") && err.contains("64 hex"), "{err}");
        let dup = format!(
            "{MINIMAL}\n[[deb]]\nname = \"libc6\"\nversion = \"1\"\nsha256 = \"{}\"\n",
            "a".repeat(64)
        );
        let err = Lockfile::parse(Path::new("c.toml"), &dup)
            .expect_err("dup")
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn bad_version_is_refused() {
        let text = MINIMAL.replace("\"v3.6.8\"", "\"3.6\"");
        let err = Lockfile::parse(Path::new("c.toml"), &text)
            .expect_err("bad version")
            .to_string();
        assert!(err.contains("vMAJOR.MINOR.PATCH"), "{err}");
    }

    #[test]
    fn templates_expand() {
        let lock = Lockfile::parse(Path::new("c.toml"), MINIMAL).expect("parses");
        let c = &lock.go[0];
        assert_eq!(
            c.expand("{version} {semver} {major}.{minor} {date}", 1_793_491_200),
            "v3.6.8 3.6.8 3.6 2026-11-01T00:00:00Z"
        );
    }

    #[test]
    fn the_repository_lockfile_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("components.toml");
        let lock = Lockfile::load(&path).expect("components.toml is valid");
        for c in &lock.go {
            assert!(
                lock.gomod_dir(c).join("go.mod").is_file(),
                "{} has no wrapper go.mod",
                c.name
            );
            assert!(
                lock.gomod_dir(c).join("go.sum").is_file(),
                "{} has no wrapper go.sum",
                c.name
            );
        }
        assert!(
            lock.deb.iter().any(|d| d.name.starts_with("linux-image-")),
            "no kernel package"
        );
    }
}
