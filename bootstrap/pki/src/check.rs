//! Verifying that a bundle is whole, consistent and fits this node: every file there,
//! every key matching its certificate, every leaf signed by its CA, names and SANs as
//! the node needs them, nothing expired. Every problem is collected, not just the first.

use std::net::IpAddr;
use std::path::PathBuf;

use rcgen::{KeyPair, PublicKeyData as _};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

use crate::error::Problem;
use crate::kubeconfig;
use crate::layout::{self, CaSpec, KubeconfigSpec, LeafSpec, SanValue};
use crate::{Bundle, ClusterParams, PkiError, paths};

/// Verifies `bundle` against `params` (its `now` is the time expiry is judged at).
/// Not-yet-valid certificates are accepted: a lagging clock must not stop a boot.
pub fn check(bundle: &Bundle, params: &ClusterParams) -> Result<(), PkiError> {
    params.validate()?;
    let mut checker = Checker {
        bundle,
        now: params.now.unix_timestamp(),
        problems: Vec::new(),
    };
    for ca in layout::CAS {
        checker.ca(&ca);
    }
    for leaf in layout::leaves(params)? {
        checker.leaf_files(&leaf);
    }
    checker.service_account();
    for conf in layout::kubeconfigs(params) {
        checker.kubeconfig(&conf);
    }
    if checker.problems.is_empty() {
        Ok(())
    } else {
        Err(PkiError::Rejected {
            problems: checker.problems,
        })
    }
}

struct Checker<'a> {
    bundle: &'a Bundle,
    now: i64,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, file: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: PathBuf::from(file),
            message: message.into(),
        });
    }

    /// The file's bytes, or a "is missing" problem.
    fn file(&mut self, file: &str) -> Option<Vec<u8>> {
        match self.bundle.get(file) {
            Some(secret) => Some(secret.bytes().to_vec()),
            None => {
                self.problem(file, "is missing");
                None
            }
        }
    }

    /// The certificate's DER, or a problem on `file`.
    fn cert_der(&mut self, file: &str, pem: &[u8]) -> Option<Vec<u8>> {
        match pem_contents(pem, "CERTIFICATE") {
            Ok(der) if X509Certificate::from_der(&der).is_ok() => Some(der),
            Ok(_) => {
                self.problem(file, "holds a PEM block that is not an X.509 certificate");
                None
            }
            Err(e) => {
                self.problem(file, e);
                None
            }
        }
    }

    /// The key pair, or a problem on `file` (which never quotes the key).
    /// `field` names the part of `file` that holds the key, if not all of it.
    fn key(&mut self, file: &str, field: Option<&str>, pem: &[u8]) -> Option<KeyPair> {
        let parsed = std::str::from_utf8(pem)
            .ok()
            .and_then(|text| KeyPair::from_pem(text).ok());
        if parsed.is_none() {
            let what = field.map(|f| format!("{f} ")).unwrap_or_default();
            self.problem(
                file,
                format!("{what}is not a PEM private key this build can use"),
            );
        }
        parsed
    }

    /// The CA certificate's DER if it parses; its problems are reported by `ca`.
    fn ca_der(&self, ca: &CaSpec) -> Option<Vec<u8>> {
        let pem = self.bundle.get(ca.paths.crt)?;
        let der = pem_contents(pem.bytes(), "CERTIFICATE").ok()?;
        X509Certificate::from_der(&der).is_ok().then_some(der)
    }

    fn ca(&mut self, spec: &CaSpec) {
        let (crt, key) = (spec.paths.crt, spec.paths.key);
        let (Some(cert_pem), key_pem) = (self.file(crt), self.file(key)) else {
            return;
        };
        let Some(der) = self.cert_der(crt, &cert_pem) else {
            return;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&der) else {
            return;
        };
        if cert.verify_signature(None).is_err() {
            self.problem(
                crt,
                "is not a valid self-signed CA certificate (signature does not verify)",
            );
        }
        if !matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
            self.problem(crt, "is not a CA (no basicConstraints CA:TRUE)");
        }
        self.not_expired(crt, &cert);
        if let Some(key_pem) = key_pem
            && let Some(pair) = self.key(key, None, &key_pem)
        {
            self.key_matches(crt, key, &cert, &pair);
        }
    }

    fn leaf_files(&mut self, spec: &LeafSpec) {
        let (crt, key) = (spec.paths.crt, spec.paths.key);
        let (Some(cert_pem), key_pem) = (self.file(crt), self.file(key)) else {
            return;
        };
        let pair = key_pem.and_then(|pem| self.key(key, None, &pem));
        self.leaf(spec, crt, &cert_pem, pair.as_ref().map(|p| (key, p)));
    }

    /// Checks one leaf certificate; `file` names it in problems.
    fn leaf(
        &mut self,
        spec: &LeafSpec,
        file: &str,
        cert_pem: &[u8],
        key: Option<(&str, &KeyPair)>,
    ) {
        let Some(der) = self.cert_der(file, cert_pem) else {
            return;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&der) else {
            return;
        };
        if let Some((key_label, pair)) = key {
            self.key_matches(file, key_label, &cert, pair);
        }
        if let Some(ca_der) = self.ca_der(&spec.ca)
            && let Ok((_, ca)) = X509Certificate::from_der(&ca_der)
            && (cert.issuer().as_raw() != ca.subject().as_raw()
                || cert.verify_signature(Some(ca.public_key())).is_err())
        {
            self.problem(file, format!("is not signed by {}", spec.ca.paths.crt));
        }
        self.not_expired(file, &cert);

        let cns: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        if cns != [spec.common_name.as_str()] {
            self.problem(
                file,
                format!(
                    "has CN `{}` but this node needs `{}`",
                    cns.join(","),
                    spec.common_name
                ),
            );
        }
        let orgs: Vec<&str> = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect();
        let wanted: Vec<&str> = spec.organization.into_iter().collect();
        if orgs != wanted {
            self.problem(file, format!("has O {orgs:?} but needs {wanted:?}"));
        }

        let (server, client) = match cert.extended_key_usage() {
            Ok(Some(eku)) => (eku.value.server_auth, eku.value.client_auth),
            _ => (false, false),
        };
        if spec.usage.server() && !server {
            self.problem(file, "lacks extendedKeyUsage serverAuth");
        }
        if spec.usage.client() && !client {
            self.problem(file, "lacks extendedKeyUsage clientAuth");
        }

        let present = sans(&cert);
        for wanted in &spec.sans {
            if !present.contains(&wanted.value) {
                let list: Vec<String> = present.iter().map(ToString::to_string).collect();
                self.problem(
                    file,
                    format!(
                        "does not cover {} `{}` (SANs: {})",
                        wanted.why,
                        wanted.value,
                        list.join(", ")
                    ),
                );
            }
        }
    }

    fn not_expired(&mut self, file: &str, cert: &X509Certificate<'_>) {
        let not_after = cert.validity().not_after;
        if not_after.timestamp() <= self.now {
            let now = ASN1Time::from_timestamp(self.now)
                .map(|t| t.to_string())
                .unwrap_or_default();
            self.problem(file, format!("expired on {not_after} (now {now})"));
        }
    }

    fn key_matches(
        &mut self,
        file: &str,
        key_label: &str,
        cert: &X509Certificate<'_>,
        pair: &KeyPair,
    ) {
        if pair.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            self.problem(
                file,
                format!("does not belong to its private key {key_label}"),
            );
        }
    }

    fn service_account(&mut self) {
        let (Some(key_pem), Some(pub_pem)) = (self.file(paths::SA_KEY), self.file(paths::SA_PUB))
        else {
            return;
        };
        let Some(pair) = self.key(paths::SA_KEY, None, &key_pem) else {
            return;
        };
        match pem_contents(&pub_pem, "PUBLIC KEY") {
            Ok(spki) if spki == pair.subject_public_key_info() => {}
            Ok(_) => self.problem(
                paths::SA_PUB,
                format!("is not the public half of {}", paths::SA_KEY),
            ),
            Err(e) => self.problem(paths::SA_PUB, e),
        }
    }

    fn kubeconfig(&mut self, spec: &KubeconfigSpec) {
        let file = spec.file;
        let Some(text) = self.file(file) else { return };
        let parts = match kubeconfig::parse(&text) {
            Ok(parts) => parts,
            Err(e) => return self.problem(file, e),
        };
        let embedded_ca = pem_contents(&parts.ca_pem, "CERTIFICATE").ok();
        if embedded_ca.is_none() || embedded_ca != self.ca_der(&spec.user.ca) {
            self.problem(
                file,
                format!(
                    "does not embed {} as its certificate-authority-data",
                    spec.user.ca.paths.crt
                ),
            );
        }
        let pair = self.key(file, Some("client-key-data"), &parts.key_pem);
        self.leaf(
            &spec.user,
            file,
            &parts.cert_pem,
            pair.as_ref().map(|p| ("client-key-data", p)),
        );
    }
}

/// The DER inside the first PEM block, which must carry `label`.
fn pem_contents(pem: &[u8], label: &str) -> Result<Vec<u8>, String> {
    match x509_parser::pem::parse_x509_pem(pem) {
        Ok((_, block)) if block.label == label => Ok(block.contents),
        Ok((_, block)) => Err(format!(
            "holds a PEM `{}` block, not `{label}`",
            block.label
        )),
        Err(_) => Err(format!("is not PEM (expected a `{label}` block)")),
    }
}

/// The DNS and IP SANs of a certificate.
fn sans(cert: &X509Certificate<'_>) -> Vec<SanValue> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SanValue::Dns((*dns).to_string())),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(SanValue::Ip),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}
