//! The bundle as one YAML document (`kind: SecretsBundle`), the form in which it
//! travels: written by `cairnctl gen config`, handed to a node (QEMU fw_cfg, later
//! the machine API) and unpacked there with [`Bundle::write_to`]. File modes are not
//! carried: keys and kubeconfigs are private (0600), everything else public.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Bundle, PkiError, Secret};

pub const DOCUMENT_API_VERSION: &str = "cairn.dev/v1alpha1";
pub const DOCUMENT_KIND: &str = "SecretsBundle";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    files: BTreeMap<String, String>,
}

/// Whether a bundle file holds key material (mode 0600).
pub fn is_private(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("key" | "conf")
    )
}

impl Bundle {
    /// The bundle as a `SecretsBundle` YAML document. It contains private keys:
    /// store it like one.
    pub fn to_document(&self) -> Result<String, PkiError> {
        let mut files = BTreeMap::new();
        for (path, secret) in self.files() {
            let text = std::str::from_utf8(secret.bytes()).map_err(|_| PkiError::Document {
                message: format!("{} is not UTF-8 text", path.display()),
            })?;
            files.insert(path.display().to_string(), text.to_string());
        }
        let doc = Document {
            api_version: DOCUMENT_API_VERSION.into(),
            kind: DOCUMENT_KIND.into(),
            files,
        };
        serde_yaml::to_string(&doc).map_err(|e| PkiError::Document {
            message: e.to_string(),
        })
    }

    /// Parses a `SecretsBundle` document. Only its shape is checked here; whether
    /// it fits a node is [`crate::check`]'s job. Errors never quote file contents.
    pub fn from_document(text: &str) -> Result<Bundle, PkiError> {
        let doc: Document = serde_yaml::from_str(text).map_err(|e| PkiError::Document {
            // serde_yaml's messages name fields and lines, never values.
            message: e.to_string(),
        })?;
        if doc.api_version != DOCUMENT_API_VERSION || doc.kind != DOCUMENT_KIND {
            return Err(PkiError::Document {
                message: format!(
                    "expected apiVersion {DOCUMENT_API_VERSION} kind {DOCUMENT_KIND}, found {} {}",
                    doc.api_version, doc.kind
                ),
            });
        }
        let mut bundle = Bundle::new();
        for (name, text) in doc.files {
            let path = PathBuf::from(&name);
            let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
            if name.is_empty() || !plain {
                return Err(PkiError::Document {
                    message: format!("file name `{name}` is not a plain relative path"),
                });
            }
            let secret = if is_private(&path) {
                Secret::private(text.into_bytes())
            } else {
                Secret::public(text.into_bytes())
            };
            bundle.insert(path, secret);
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_modes() {
        let mut b = Bundle::new();
        b.insert("pki/ca.crt", Secret::public(b"CERT\n".to_vec()));
        b.insert("pki/ca.key", Secret::private(b"KEY\n".to_vec()));
        b.insert("admin.conf", Secret::private(b"apiVersion: v1\n".to_vec()));
        let text = b.to_document().expect("document");
        let back = Bundle::from_document(&text).expect("parse");
        assert_eq!(back, b);
        assert_eq!(
            back.get("pki/ca.key").map(Secret::mode),
            Some(crate::PRIVATE_MODE)
        );
    }

    #[test]
    fn refuses_escaping_paths_and_wrong_kinds() {
        let doc = |files: &str| {
            format!("apiVersion: cairn.dev/v1alpha1\nkind: SecretsBundle\nfiles:\n{files}")
        };
        let err = Bundle::from_document(&doc("  ../etc/passwd: x\n")).expect_err("escape");
        assert!(err.to_string().contains("../etc/passwd"), "{err}");
        let err = Bundle::from_document(&doc("  /abs: x\n")).expect_err("absolute");
        assert!(err.to_string().contains("/abs"), "{err}");
        let err =
            Bundle::from_document("apiVersion: v1\nkind: Secret\nfiles: {}\n").expect_err("kind");
        assert!(err.to_string().contains("SecretsBundle"), "{err}");
        let err = Bundle::from_document(&doc("  a.key: x\nextra: 1\n")).expect_err("unknown");
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
