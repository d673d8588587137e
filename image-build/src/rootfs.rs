//! Building a root filesystem tree: files placed with explicit modes, and the
//! shared libraries every dynamic executable needs, resolved from their ELF headers
//! against the extracted pinned Debian packages (never the build host's libraries).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::elf;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error(
        "{binary} needs {library}, which none of the pinned Debian packages provides (add its package to components.toml)"
    )]
    MissingLibrary { binary: String, library: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

/// A root filesystem being assembled in a directory.
#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
}

impl Tree {
    pub fn new(root: &Path) -> Result<Tree, RootfsError> {
        std::fs::create_dir_all(root).map_err(io("creating", root))?;
        Ok(Tree {
            root: root.to_path_buf(),
        })
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn dir(&self, path: &str, mode: u32) -> Result<(), RootfsError> {
        let p = self.at(path);
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))
    }

    pub fn file(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), RootfsError> {
        let p = self.at(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&p, contents).map_err(io("writing", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))
    }

    /// Copies a file (following symlinks) into the tree.
    pub fn copy(&self, from: &Path, path: &str, mode: u32) -> Result<(), RootfsError> {
        let p = self.at(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::copy(from, &p).map_err(io("copying", from))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))
    }

    pub fn symlink(&self, path: &str, target: &str) -> Result<(), RootfsError> {
        let p = self.at(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).map_err(io("linking", &p))
    }
}

/// Finds shared libraries in extracted package trees.
#[derive(Debug, Clone)]
pub struct LibResolver {
    /// (package root, library directory inside it)
    dirs: Vec<(PathBuf, PathBuf)>,
}

const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];

impl LibResolver {
    pub fn new(package_roots: &[&Path]) -> LibResolver {
        let mut dirs = Vec::new();
        for root in package_roots {
            for d in LIB_DIRS {
                let dir = root.join(d);
                if dir.is_dir() {
                    dirs.push((root.to_path_buf(), dir));
                }
            }
        }
        LibResolver { dirs }
    }

    /// The real file for a soname or an absolute path inside a package, following
    /// symlinks within the package (absolute targets are re-rooted there).
    fn find(&self, name: &str) -> Option<PathBuf> {
        for (root, dir) in &self.dirs {
            let candidate = if name.starts_with('/') {
                root.join(name.trim_start_matches('/'))
            } else {
                dir.join(name)
            };
            if let Some(real) = follow(root, &candidate) {
                return Some(real);
            }
        }
        None
    }

    /// Every library (and the interpreter) the given executables need, transitively:
    /// soname or interpreter path -> file to copy.
    pub fn closure(
        &self,
        executables: &[PathBuf],
    ) -> Result<BTreeMap<String, PathBuf>, RootfsError> {
        let mut out = BTreeMap::new();
        let mut queue: Vec<(String, PathBuf)> = executables
            .iter()
            .map(|e| (e.display().to_string(), e.clone()))
            .collect();
        let mut seen = BTreeSet::new();
        while let Some((label, path)) = queue.pop() {
            if !seen.insert(path.clone()) || !elf::is_elf(&path) {
                continue;
            }
            let needs = elf::needs(&path)?;
            if let Some(interp) = needs.interpreter {
                let real = self
                    .find(&interp)
                    .ok_or_else(|| RootfsError::MissingLibrary {
                        binary: label.clone(),
                        library: interp.clone(),
                    })?;
                out.insert(interp, real);
            }
            for lib in needs.needed {
                let real = self.find(&lib).ok_or_else(|| RootfsError::MissingLibrary {
                    binary: label.clone(),
                    library: lib.clone(),
                })?;
                queue.push((lib.clone(), real.clone()));
                out.insert(lib, real);
            }
        }
        Ok(out)
    }
}

/// Resolves `path` (which may be a chain of symlinks) inside `root`.
fn follow(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&p).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(p);
        }
        let target = std::fs::read_link(&p).ok()?;
        p = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            p.parent()?.join(target)
        };
    }
    None
}

/// Installs libraries where the Debian loader looks for them (and the interpreter
/// at its absolute path).
pub fn install_libraries(tree: &Tree, libs: &BTreeMap<String, PathBuf>) -> Result<(), RootfsError> {
    for (name, file) in libs {
        let dest = if name.starts_with('/') {
            name.clone()
        } else {
            format!("/usr/lib/x86_64-linux-gnu/{name}")
        };
        tree.copy(file, &dest, 0o755)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's /bin/sh resolved against the host's own library directories (as a
    /// stand-in package root) finds libc and the interpreter.
    #[test]
    fn resolves_host_shell() {
        let r = LibResolver::new(&[Path::new("/")]);
        let libs = r.closure(&[PathBuf::from("/bin/sh")]).expect("closure");
        assert!(libs.keys().any(|k| k.starts_with("libc.so")), "{libs:?}");
        assert!(libs.keys().any(|k| k.contains("ld-linux")), "{libs:?}");
        for f in libs.values() {
            assert!(f.is_file(), "{f:?}");
        }
    }

    #[test]
    fn missing_library_is_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = LibResolver::new(&[tmp.path()]);
        let err = r
            .closure(&[PathBuf::from("/bin/sh")])
            .expect_err("no libs")
            .to_string();
        assert!(err.contains("/bin/sh needs"), "{err}");
    }

    #[test]
    fn follows_absolute_symlinks_inside_the_package() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).expect("mkdir");
        std::fs::create_dir_all(root.join("lib64")).expect("mkdir");
        std::fs::write(root.join("lib/x86_64-linux-gnu/ld.so"), b"x").expect("write");
        std::os::unix::fs::symlink("/lib/x86_64-linux-gnu/ld.so", root.join("lib64/ld.so"))
            .expect("link");
        let r = LibResolver::new(&[root]);
        assert_eq!(
            r.find("/lib64/ld.so"),
            Some(root.join("lib/x86_64-linux-gnu/ld.so"))
        );
    }
}
