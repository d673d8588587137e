//! Kernel modules: load by name with dependencies from `modules.dep`, and
//! "coldplug" — load the drivers for the devices present by matching each device's
//! `modalias` against `modules.alias`, which is what udev would do at boot.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// The module database of one kernel release.
#[derive(Debug, Default)]
pub struct Modules {
    dir: PathBuf,
    /// module name -> (path relative to dir, dependencies as module names, load order last-first)
    deps: HashMap<String, (PathBuf, Vec<String>)>,
    aliases: Vec<(String, String)>,
    builtin: HashSet<String>,
    loaded: HashSet<String>,
}

/// `kernel/fs/ext4/ext4.ko` -> `ext4`; dashes are underscores in module names.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

pub fn parse_dep(text: &str) -> HashMap<String, (PathBuf, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (module, deps) = l.split_once(':')?;
            let deps = deps.split_whitespace().map(module_name).collect();
            Some((module_name(module), (PathBuf::from(module), deps)))
        })
        .collect()
}

pub fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "alias").then_some(())?;
            let pattern = w.next()?.to_string();
            let module = w.next()?.replace('-', "_");
            Some((pattern, module))
        })
        .collect()
}

/// fnmatch-style glob with `*`, `?` and `[...]` classes, as modules.alias uses.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star_p, mut star_t) = (None, 0);
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = Some(p);
                    star_t = t;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t])
                        && matched
                    {
                        p += next;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star_p {
            Some(sp) => {
                p = sp + 1;
                star_t += 1;
                t = star_t;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Matches one `[...]` class at the start of `pat`; returns (matched, class length).
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let end = pat.iter().skip(1).position(|b| *b == b']')? + 1;
    let body = &pat[1..end];
    let (negate, body) = match body.first() {
        Some(b'!' | b'^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut i = 0;
    let mut hit = false;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == b'-' {
            hit |= body[i] <= c && c <= body[i + 2];
            i += 3;
        } else {
            hit |= body[i] == c;
            i += 1;
        }
    }
    Some((hit != negate, end + 1))
}

impl Modules {
    /// Reads `/lib/modules/<release>`; an absent directory gives an empty database.
    pub fn open(root: &Path, release: &str) -> Result<Modules> {
        let dir = root.join("lib/modules").join(release);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if !dir.is_dir() {
            tracing::warn!(dir = %dir.display(), "no kernel modules directory");
        }
        Ok(Modules {
            deps: parse_dep(&read("modules.dep")),
            aliases: parse_alias(&read("modules.alias")),
            builtin: read("modules.builtin").lines().map(module_name).collect(),
            loaded: std::fs::read_to_string("/proc/modules")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect(),
            dir,
        })
    }

    /// Loads `name` and its dependencies (deepest first). Built-in or already
    /// loaded modules are fine; a module missing from this image is an error.
    pub fn load(&mut self, name: &str) -> Result<()> {
        let name = name.replace('-', "_");
        if self.loaded.contains(&name) || self.builtin.contains(&name) {
            return Ok(());
        }
        let (path, deps) =
            self.deps.get(&name).cloned().with_context(|| {
                format!("kernel module {name} is not in {}", self.dir.display())
            })?;
        // modules.dep lists dependencies so that the last one must be loaded first.
        for dep in deps.iter().rev() {
            self.load_one(dep)?;
        }
        self.load_one_path(&name, &path)
    }

    fn load_one(&mut self, name: &str) -> Result<()> {
        if self.loaded.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        let (path, _) = self
            .deps
            .get(name)
            .cloned()
            .with_context(|| format!("kernel module {name} (a dependency) is missing"))?;
        self.load_one_path(name, &path)
    }

    fn load_one_path(&mut self, name: &str, rel: &Path) -> Result<()> {
        let path = self.dir.join(rel);
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening module {}", path.display()))?;
        let params = CString::default();
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("loading kernel module {name} from {}", path.display())
                });
            }
        }
        tracing::debug!(module = name, "module loaded");
        self.loaded.insert(name.to_string());
        Ok(())
    }

    /// Loads a list of modules, logging (not failing on) the ones that fail.
    pub fn load_all(&mut self, names: &[&str]) -> usize {
        let mut n = 0;
        for name in names {
            match self.load(name) {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(module = name, error = ?format!("{e:#}"), "module not loaded")
                }
            }
        }
        n
    }

    /// The modules whose alias patterns match a device's modalias.
    pub fn modules_for_alias(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .aliases
            .iter()
            .filter(|(pat, _)| glob_match(pat.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.clone())
            .collect();
        out.dedup();
        out
    }

    /// Loads drivers for every device under /sys/devices that has a modalias.
    pub fn coldplug(&mut self) -> usize {
        let mut aliases = Vec::new();
        collect_modaliases(Path::new("/sys/devices"), &mut aliases, 0);
        let mut wanted: Vec<String> = aliases
            .iter()
            .flat_map(|a| self.modules_for_alias(a))
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut n = 0;
        for m in wanted {
            if self.loaded.contains(&m) {
                continue;
            }
            match self.load(&m) {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::debug!(module = %m, error = ?format!("{e:#}"), "coldplug: module not loaded")
                }
            }
        }
        n
    }
}

fn collect_modaliases(dir: &Path, out: &mut Vec<String>, depth: usize) {
    if depth > 12 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        if ft.is_file() && name == "modalias" {
            if let Ok(a) = std::fs::read_to_string(e.path()) {
                let a = a.trim();
                if !a.is_empty() {
                    out.push(a.to_string());
                }
            }
        } else if ft.is_dir() && !ft.is_symlink() {
            collect_modaliases(&e.path(), out, depth + 1);
        }
    }
}

/// `modprobe [-q] [--] <name or alias>...`, as the kernel's usermode helper runs it
/// (`/proc/sys/kernel/modprobe` = `/usr/sbin/modprobe`, a link to this binary) to
/// load netfilter modules on demand. Returns the exit code.
pub fn modprobe_main(args: &[String]) -> i32 {
    let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let release = match crate::fsutil::kernel_release() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modprobe: {e:#}");
            return 1;
        }
    };
    let mut modules = match Modules::open(Path::new("/"), &release) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("modprobe: {e:#}");
            return 1;
        }
    };
    let mut code = 0;
    for name in names {
        let direct = modules.load(name);
        let ok = direct.is_ok() || {
            let by_alias = modules.modules_for_alias(name);
            !by_alias.is_empty() && by_alias.iter().all(|m| modules.load(m).is_ok())
        };
        if !ok {
            if !quiet {
                eprintln!("modprobe: no module or alias {name}");
            }
            code = 1;
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_deps() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(
            module_name("kernel/drivers/x/virtio-foo.ko.xz"),
            "virtio_foo"
        );
        let deps = parse_dep(
            "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko:\n",
        );
        assert_eq!(
            deps["ext4"].1,
            vec!["mbcache".to_string(), "jbd2".to_string()]
        );
        assert!(deps["mbcache"].1.is_empty());
    }

    #[test]
    fn globbing_like_modules_alias() {
        assert!(glob_match(
            b"pci:v00001AF4d00001001sv*sd*bc*sc*i*",
            b"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(!glob_match(
            b"pci:v00001AF4d00001000sv*",
            b"pci:v00001AF4d00001001sv00001AF4"
        ));
        assert!(glob_match(
            b"virtio:d00000002v*",
            b"virtio:d00000002v00001AF4"
        ));
        assert!(glob_match(b"acpi*:QEMU0002:*", b"acpi:QEMU0002:"));
        assert!(glob_match(
            b"input:b*v*p*e*-e*1,*k*74,*",
            b"input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"
        ));
        assert!(glob_match(b"a[0-9]c", b"a5c"));
        assert!(!glob_match(b"a[!0-9]c", b"a5c"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn alias_lookup() {
        let m = Modules {
            aliases: parse_alias(
                "alias virtio:d00000002v* virtio_blk\nalias pci:v00001AF4d* virtio-pci\n",
            ),
            ..Modules::default()
        };
        assert_eq!(
            m.modules_for_alias("virtio:d00000002v00001AF4"),
            vec!["virtio_blk".to_string()]
        );
        assert_eq!(
            m.modules_for_alias("pci:v00001AF4d00001001"),
            vec!["virtio_pci".to_string()]
        );
        assert!(m.modules_for_alias("usb:v1234").is_empty());
    }
}
