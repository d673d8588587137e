//! Machine-API client certificates issued after the bundle was made: one per
//! operator or tool, with its role as the Organization.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{Bundle, PkiError, paths};

/// A client certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Signs a client certificate for `name` with `organization` (`os:reader`,
/// `os:operator`, `os:admin`) by the bundle's machine-API CA, valid from
/// `not_before` for `validity`.
pub fn issue_os_client(
    bundle: &Bundle,
    name: &str,
    organization: &str,
    not_before: OffsetDateTime,
    validity: Duration,
) -> Result<ClientCert, PkiError> {
    let file = paths::OS_CA.key;
    let failed = |message: String| PkiError::Generate {
        file: file.into(),
        message,
    };
    let text = |path: &str| {
        bundle
            .get(path)
            .and_then(|s| std::str::from_utf8(s.bytes()).ok())
            .map(str::to_owned)
            .ok_or_else(|| failed(format!("{path} is missing from the secrets bundle")))
    };
    let ca_key = KeyPair::from_pem(&text(paths::OS_CA.key)?).map_err(|e| failed(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&text(paths::OS_CA.crt)?, ca_key)
        .map_err(|e| failed(format!("{}: {e}", paths::OS_CA.crt)))?;

    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, name);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    let start =
        OffsetDateTime::from_unix_timestamp(not_before.unix_timestamp()).unwrap_or(not_before);
    params.not_before = start;
    params.not_after = start + validity;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| failed(e.to_string()))?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterParams, Hostname};
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    #[test]
    fn client_certificates_chain_to_the_os_ca_with_their_role() {
        let now = OffsetDateTime::now_utc();
        let node = Hostname::try_from("node-1".to_string()).expect("hostname");
        let bundle = crate::generate(&ClusterParams::new(
            node,
            "10.0.2.15".parse().expect("ip"),
            now,
        ))
        .expect("bundle");
        let issued =
            issue_os_client(&bundle, "alice", "os:reader", now, Duration::days(1)).expect("issue");
        let der = rustls_pemfile_like(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        let org: Vec<_> = cert
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .collect();
        assert_eq!(org, ["os:reader"]);
        let ca_der = rustls_pemfile_like(
            std::str::from_utf8(bundle.get(paths::OS_CA.crt).expect("ca").bytes()).expect("utf8"),
        );
        let (_, ca) = X509Certificate::from_der(&ca_der).expect("parse ca");
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the OS CA");

        let mut empty = bundle.clone();
        empty.remove(paths::OS_CA.key);
        let e = issue_os_client(&empty, "bob", "os:admin", now, Duration::days(1))
            .expect_err("no CA key")
            .to_string();
        assert!(e.contains("pki/os/ca.key"), "{e}");
    }

    fn rustls_pemfile_like(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("pem")
            .1
            .contents
    }
}
