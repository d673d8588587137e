//! Upstream components: the pinned lockfile, and building or fetching every entry
//! into a cache outside the repository.
//!
//! Go programs are built from their published Go modules through wrapper modules
//! (`image-build/gomod/<name>/`) whose `go.sum` pins every module by hash; Debian
//! packages are fetched with `apt-get download` (or from a local directory) and
//! refused unless their sha256 matches. Built binaries are checked against the
//! sha256 recorded in the lockfile, run with their version flag, and checked for
//! static linking. Not for: assembling the image (see `assemble`).

mod cache;
mod deb;
mod go;
mod lockfile;
mod run;
mod update;

pub use cache::{Cache, CacheStatus};
pub use deb::DebEntry;
pub use go::GoEntry;
pub use lockfile::{BuildSettings, DebPackage, GoBinary, GoComponent, Lockfile, SemVer, rfc3339};
pub use run::{BuildOptions, BuildReport, ReportRow, build_all, cached};
pub use update::update;

use std::path::PathBuf;

/// Everything that can go wrong building or fetching components.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lockfile {path}: {reason}")]
    Lockfile { path: PathBuf, reason: String },
    #[error(
        "deb {name} {version}: sha256 is {actual} but the lockfile pins {expected}; refusing it (nothing was added to the cache)"
    )]
    DebHashMismatch {
        name: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error("deb {name} {version}: {reason}")]
    Deb {
        name: String,
        version: String,
        reason: String,
    },
    #[error(
        "component {component}: building {binary} failed ({status}); last lines of the Go output:\n{tail}"
    )]
    GoBuild {
        component: String,
        binary: String,
        status: String,
        tail: String,
    },
    #[error("component {component}: {reason}")]
    Component { component: String, reason: String },
    #[error(
        "component {component}: built {binary} has sha256 {actual} but the lockfile pins {expected}; \
         the build is not reproducible here (same Go toolchain and host packages?) — run \
         `cairn-image components update` only if the change is intended"
    )]
    BinaryHashMismatch {
        component: String,
        binary: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the component cache {} lacks {}: run `cargo run --release -p cairn-image -- components build` first",
        cache.display(),
        missing.join(", ")
    )]
    NotCached {
        cache: PathBuf,
        missing: Vec<String>,
    },
    #[error("offline and the cache is cold; missing: {}", missing.join(", "))]
    OfflineMissing { missing: Vec<String> },
    #[error("{0}")]
    Host(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
