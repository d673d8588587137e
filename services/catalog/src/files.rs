//! Configuration files the catalog renders for components that read a file rather
//! than flags (containerd, kubelet, kube-proxy, CNI), and where they go.
//!
//! On a node `/etc` is part of the read-only system image, so every rendered file
//! lives under [`RUN_DIR`] (`/run/cairn`, a tmpfs): it is written from the machine
//! config at every boot, before the service starts, and can never be stale.
//! Persistent state (images, pods, IP reservations that must survive a restart of a
//! component) stays on `/var`.

use std::path::{Path, PathBuf};

/// Root of the files cairn renders at boot (tmpfs).
pub const RUN_DIR: &str = "/run/cairn";

/// `/run/cairn/<rel>`.
pub fn run_path(rel: &str) -> PathBuf {
    Path::new(RUN_DIR).join(rel)
}

/// A configuration document could not be produced or written.
#[derive(Debug)]
pub struct RenderError {
    /// What was being rendered or written, e.g. `containerd config`.
    pub what: String,
    pub reason: String,
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

impl std::error::Error for RenderError {}

impl RenderError {
    pub(crate) fn new(what: impl Into<String>, reason: impl std::fmt::Display) -> RenderError {
        RenderError {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Writes `contents` to `path` (mode 0644) through a temporary file and a rename, so
/// a reader never sees half a file; creates the parent directories.
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), RenderError> {
    let what = || format!("writing {}", path.display());
    let parent = path
        .parent()
        .ok_or_else(|| RenderError::new(what(), "the path has no parent directory"))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| RenderError::new(format!("creating {}", parent.display()), e))?;
    let name = path
        .file_name()
        .ok_or_else(|| RenderError::new(what(), "the path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = parent.join(tmp_name);
    std::fs::write(&tmp, contents).map_err(|e| RenderError::new(what(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RenderError::new(what(), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_creates_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/config.toml");
        write_atomic(&path, "one").expect("write");
        write_atomic(&path, "two").expect("overwrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["config.toml"], "no temporary file is left");
        assert_eq!(
            run_path("kubelet/config.yaml"),
            Path::new("/run/cairn/kubelet/config.yaml")
        );
    }
}
