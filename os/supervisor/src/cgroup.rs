//! cgroup v2: one directory per service under the supervisor's root.
//!
//! The caller owns the parent of `cgroup_root`: before the supervisor starts it must
//! enable the wanted controllers in the parent's `cgroup.subtree_control` (for
//! `/sys/fs/cgroup/cairn` that is `/sys/fs/cgroup/cgroup.subtree_control`), otherwise
//! `memory.max` and friends do not exist. The supervisor then enables `cpu`, `memory`
//! and `pids` (those offered in `<root>/cgroup.controllers`) for the service cgroups.
//!
//! All file access goes through [`CgroupFs`] so the logic can be tested against a
//! plain temporary directory.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::spec::Resources;

/// Controllers delegated to service cgroups, when the root offers them.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The few file operations cgroup management needs.
pub(crate) trait CgroupFs: Send + Sync {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
    fn write(&self, path: &Path, contents: &str) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
}

/// The real filesystem (cgroupfs mounted somewhere under it).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RealFs;

impl CgroupFs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
        std::fs::write(path, contents)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// The cgroup directory of one service.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Cgroup {
        path: path.to_path_buf(),
        source,
    }
}

fn write(fs: &dyn CgroupFs, path: &Path, contents: &str) -> Result<(), Error> {
    fs.write(path, contents).map_err(io_err(path))
}

impl Cgroup {
    /// Creates `<root>/<service>`, delegates controllers and applies `resources`.
    pub(crate) fn prepare(
        fs: &dyn CgroupFs,
        root: &Path,
        service: &str,
        resources: &Resources,
    ) -> Result<Self, Error> {
        fs.create_dir_all(root).map_err(io_err(root))?;
        let available_path = root.join("cgroup.controllers");
        let available = fs.read(&available_path).map_err(io_err(&available_path))?;
        let wanted: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            write(fs, &root.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }

        let dir = root.join(service);
        fs.create_dir_all(&dir).map_err(io_err(&dir))?;
        if let Some(bytes) = resources.memory_max {
            write(fs, &dir.join("memory.max"), &bytes.to_string())?;
        }
        if let Some((quota, period)) = resources.cpu_max {
            write(fs, &dir.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(weight) = resources.cpu_weight {
            write(fs, &dir.join("cpu.weight"), &weight.to_string())?;
        }
        Ok(Self { dir })
    }

    /// `cgroup.procs` as a C string, prepared before fork so the child allocates nothing.
    pub(crate) fn procs_path(&self) -> Result<CString, Error> {
        let path = self.dir.join("cgroup.procs");
        CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::Cgroup {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })
    }

    /// Kills every process in the cgroup through `cgroup.kill`. Returns `Ok(false)`
    /// when the kernel has no `cgroup.kill` (before 5.14); the caller falls back to
    /// signalling the process group.
    pub(crate) fn kill(&self, fs: &dyn CgroupFs) -> Result<bool, Error> {
        let path = self.dir.join("cgroup.kill");
        if !fs.exists(&path) {
            return Ok(false);
        }
        write(fs, &path, "1")?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn writes_controllers_and_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cairn");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory\n").unwrap();
        let resources = Resources {
            memory_max: Some(512 * 1024 * 1024),
            cpu_max: Some((50_000, 100_000)),
            cpu_weight: Some(200),
        };
        let cg = Cgroup::prepare(&RealFs, &root, "etcd", &resources).unwrap();
        assert_eq!(read(&root.join("cgroup.subtree_control")), "+cpu +memory");
        assert_eq!(read(&root.join("etcd/memory.max")), "536870912");
        assert_eq!(read(&root.join("etcd/cpu.max")), "50000 100000");
        assert_eq!(read(&root.join("etcd/cpu.weight")), "200");
        assert_eq!(
            cg.procs_path().unwrap().to_str().unwrap(),
            root.join("etcd/cgroup.procs").to_str().unwrap()
        );

        // No cgroup.kill: the caller must fall back.
        assert!(!cg.kill(&RealFs).unwrap());
        std::fs::write(root.join("etcd/cgroup.kill"), "0").unwrap();
        assert!(cg.kill(&RealFs).unwrap());
        assert_eq!(read(&root.join("etcd/cgroup.kill")), "1");
    }

    #[test]
    fn no_limits_no_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cairn");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "").unwrap();
        Cgroup::prepare(&RealFs, &root, "svc", &Resources::default()).unwrap();
        assert!(root.join("svc").is_dir());
        assert!(!root.join("cgroup.subtree_control").exists());
        assert!(!root.join("svc/memory.max").exists());
    }

    #[test]
    fn missing_root_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cairn");
        let err = Cgroup::prepare(&RealFs, &root, "svc", &Resources::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cgroup.controllers"), "{err}");
    }
}
