//! The in-memory bundle: bundle-relative paths mapped to file contents and modes.
//! Writing and loading live in `store.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Mode of private keys and kubeconfigs (which embed a private key).
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of certificates and public keys.
pub const PUBLIC_MODE: u32 = 0o644;

/// One file's contents and mode. Its `Debug` never shows the contents.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    bytes: Vec<u8>,
    mode: u32,
}

impl Secret {
    pub fn new(bytes: Vec<u8>, mode: u32) -> Secret {
        Secret {
            bytes,
            mode: mode & 0o7777,
        }
    }
    /// A private key or a file embedding one: mode 0600.
    pub fn private(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret::new(bytes.into(), PRIVATE_MODE)
    }
    /// A certificate or public key: mode 0644.
    pub fn public(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret::new(bytes.into(), PUBLIC_MODE)
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn mode(&self) -> u32 {
        self.mode
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret({} bytes, mode {:04o}, redacted)",
            self.bytes.len(),
            self.mode
        )
    }
}

/// A cluster's secrets: CAs, certificates, keys and kubeconfigs, keyed by path
/// relative to the bundle directory (`pki/ca.crt`, `pki/etcd/server.key`, `admin.conf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    files: BTreeMap<PathBuf, Secret>,
}

impl Bundle {
    pub fn new() -> Bundle {
        Bundle::default()
    }

    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Secret> {
        self.files.get(path.as_ref())
    }

    /// Adds or replaces a file; returns the one replaced.
    pub fn insert(&mut self, path: impl Into<PathBuf>, secret: Secret) -> Option<Secret> {
        self.files.insert(path.into(), secret)
    }

    pub fn remove(&mut self, path: impl AsRef<Path>) -> Option<Secret> {
        self.files.remove(path.as_ref())
    }

    /// All files in path order.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &Secret)> {
        self.files.iter().map(|(p, s)| (p.as_path(), s))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_contents() {
        let mut b = Bundle::new();
        b.insert(
            "pki/ca.key",
            Secret::private("-----BEGIN PRIVATE KEY-----\nSECRETSTUFF"),
        );
        let shown = format!("{b:?}");
        assert!(!shown.contains("SECRETSTUFF"), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
        assert!(shown.contains("pki/ca.key"), "{shown}");
        assert!(shown.contains("0600"), "{shown}");
    }
}
