//! Choosing the kernel modules an image carries and writing their index.
//!
//! Debian's kernel package ships ~380 MiB of modules and no `modules.dep` (depmod
//! runs at install time). We read each module's `.modinfo` section (its `depends=`
//! and `alias=` entries), take the requested modules plus everything they depend
//! on, and write `modules.dep` and `modules.alias` for just that set, in the format
//! depmod uses (a module's dependencies listed so that the last must load first).
//! `cairn-init` reads both to load modules by name and to coldplug devices.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading kernel modules under {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("kernel module `{0}` was requested but the kernel package has no such module")]
    Unknown(String),
    #[error("kernel module `{module}` depends on `{dep}`, which the kernel package lacks")]
    MissingDep { module: String, dep: String },
}

/// One module's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// Path relative to `lib/modules/<release>/`.
    pub rel: PathBuf,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
}

/// Every module of a kernel release, by module name.
#[derive(Debug, Default)]
pub struct ModuleTree {
    pub dir: PathBuf,
    pub modules: BTreeMap<String, ModInfo>,
}

/// `foo-bar.ko` -> `foo_bar`.
pub fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut depends = Vec::new();
    let mut aliases = Vec::new();
    for entry in section.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let s = String::from_utf8_lossy(entry);
        if let Some(d) = s.strip_prefix("depends=") {
            depends.extend(
                d.split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| x.replace('-', "_")),
            );
        } else if let Some(a) = s.strip_prefix("alias=") {
            aliases.push(a.to_string());
        }
    }
    (depends, aliases)
}

fn modinfo_section(path: &Path) -> Result<Vec<u8>, ModulesError> {
    use object::{Object, ObjectSection};
    let data = std::fs::read(path).map_err(|source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| ModulesError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| ModulesError::Parse {
            path: path.to_path_buf(),
            reason: "no .modinfo section".into(),
        })?;
    Ok(section
        .data()
        .map_err(|e| ModulesError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .to_vec())
}

impl ModuleTree {
    /// Scans `<root>/lib/modules/<release>/kernel`.
    pub fn scan(modules_dir: &Path) -> Result<ModuleTree, ModulesError> {
        let mut tree = ModuleTree {
            dir: modules_dir.to_path_buf(),
            modules: BTreeMap::new(),
        };
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| ModulesError::Io {
                path: dir.clone(),
                source,
            })?;
            for e in entries {
                let e = e.map_err(|source| ModulesError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if name.ends_with(".ko") {
                    let (depends, aliases) = parse_modinfo(&modinfo_section(&path)?);
                    let rel = path
                        .strip_prefix(modules_dir)
                        .unwrap_or(&path)
                        .to_path_buf();
                    tree.modules.insert(
                        module_name(&name),
                        ModInfo {
                            rel,
                            depends,
                            aliases,
                        },
                    );
                }
            }
        }
        Ok(tree)
    }

    /// Modules whose relative path starts with one of `dirs` (e.g. `kernel/net/netfilter/`).
    pub fn under(&self, dirs: &[&str]) -> Vec<String> {
        self.modules
            .iter()
            .filter(|(_, m)| dirs.iter().any(|d| m.rel.to_string_lossy().starts_with(d)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The requested modules and everything they depend on.
    pub fn closure(&self, wanted: &[String]) -> Result<BTreeSet<String>, ModulesError> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<String> = Vec::new();
        for w in wanted {
            let n = w.replace('-', "_");
            if !self.modules.contains_key(&n) {
                return Err(ModulesError::Unknown(n));
            }
            stack.push(n);
        }
        while let Some(n) = stack.pop() {
            if !out.insert(n.clone()) {
                continue;
            }
            for d in &self.modules[&n].depends {
                if !self.modules.contains_key(d) {
                    return Err(ModulesError::MissingDep {
                        module: n.clone(),
                        dep: d.clone(),
                    });
                }
                stack.push(d.clone());
            }
        }
        Ok(out)
    }

    /// All transitive dependencies of `name`, ordered so that each one's own
    /// dependencies come after it (depmod's order: load from the end).
    fn dep_list(&self, name: &str) -> Vec<String> {
        fn visit(tree: &ModuleTree, n: &str, seen: &mut BTreeSet<String>, post: &mut Vec<String>) {
            for d in &tree.modules[n].depends {
                if seen.insert(d.clone()) {
                    visit(tree, d, seen, post);
                    post.push(d.clone());
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut post = Vec::new();
        visit(self, name, &mut seen, &mut post);
        post.reverse();
        post
    }

    /// `modules.dep` and `modules.alias` text for a chosen set.
    pub fn index(&self, set: &BTreeSet<String>) -> (String, String) {
        let mut dep = String::new();
        let mut alias = String::new();
        for name in set {
            let m = &self.modules[name];
            let deps: Vec<String> = self
                .dep_list(name)
                .iter()
                .map(|d| self.modules[d].rel.to_string_lossy().into_owned())
                .collect();
            dep.push_str(
                &format!("{}: {}\n", m.rel.to_string_lossy(), deps.join(" "))
                    .replace(": \n", ":\n"),
            );
            for a in &m.aliases {
                alias.push_str(&format!("alias {a} {name}\n"));
            }
        }
        (dep, alias)
    }

    /// Copies the chosen modules and writes their index into `<dest>/lib/modules/<release>`-style `dest`.
    pub fn install(&self, set: &BTreeSet<String>, dest: &Path) -> Result<u64, ModulesError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModulesError::Io { path, source }
        };
        let mut bytes = 0;
        for name in set {
            let rel = &self.modules[name].rel;
            let to = dest.join(rel);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            bytes += std::fs::copy(self.dir.join(rel), &to).map_err(io(&to))?;
        }
        let (dep, alias) = self.index(set);
        std::fs::write(dest.join("modules.dep"), dep).map_err(io(dest))?;
        std::fs::write(dest.join("modules.alias"), alias).map_err(io(dest))?;
        let builtin = self.dir.join("modules.builtin");
        if builtin.is_file() {
            std::fs::copy(&builtin, dest.join("modules.builtin")).map_err(io(&builtin))?;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(specs: &[(&str, &[&str])]) -> ModuleTree {
        ModuleTree {
            dir: PathBuf::from("/m"),
            modules: specs
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        ModInfo {
                            rel: PathBuf::from(format!("kernel/x/{n}.ko")),
                            depends: d.iter().map(|s| s.to_string()).collect(),
                            aliases: vec![format!("pattern:{n}*")],
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn modinfo_parsing() {
        let (d, a) =
            parse_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0alias=virtio:d00000002v*\0\0");
        assert_eq!(d, vec!["virtio", "virtio_ring"]);
        assert_eq!(a, vec!["virtio:d00000002v*"]);
        let (d, _) = parse_modinfo(b"depends=\0");
        assert!(d.is_empty());
    }

    #[test]
    fn closure_and_depmod_order() {
        let t = tree(&[
            ("ext4", &["jbd2", "mbcache", "crc16"]),
            ("jbd2", &[]),
            ("mbcache", &[]),
            ("crc16", &[]),
            ("nf_nat", &["nf_conntrack"]),
            ("nf_conntrack", &["libcrc32c"]),
            ("libcrc32c", &[]),
        ]);
        let set = t.closure(&["nf_nat".into()]).expect("closure");
        assert_eq!(
            set.iter().cloned().collect::<Vec<_>>(),
            vec!["libcrc32c", "nf_conntrack", "nf_nat"]
        );
        let (dep, alias) = t.index(&set);
        // nf_nat's deps: nf_conntrack first, libcrc32c last (loaded first).
        assert!(
            dep.contains("kernel/x/nf_nat.ko: kernel/x/nf_conntrack.ko kernel/x/libcrc32c.ko\n"),
            "{dep}"
        );
        assert!(dep.contains("kernel/x/libcrc32c.ko:\n"), "{dep}");
        assert!(alias.contains("alias pattern:nf_nat* nf_nat\n"));
        assert!(matches!(
            t.closure(&["nope".into()]),
            Err(ModulesError::Unknown(_))
        ));
    }

    #[test]
    fn missing_dependency_is_named() {
        let t = tree(&[("a", &["b"])]);
        let err = t.closure(&["a".into()]).expect_err("missing").to_string();
        assert!(err.contains("`a` depends on `b`"), "{err}");
    }
}
