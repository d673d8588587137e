//! Key and certificate issuance with rcgen: every key is ECDSA P-256 (ring backend),
//! every certificate ECDSA-with-SHA256.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::PkiError;
use crate::layout::{CaSpec, LeafSpec, SanValue};

/// CAs live ten years, like kubeadm's.
pub(crate) const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaves live one year.
pub(crate) const LEAF_VALIDITY: Duration = Duration::days(365);
/// NotBefore is this far before "now": VM clocks lag.
pub(crate) const BACKDATE: Duration = Duration::minutes(5);

/// A CA ready to sign: its key, the parameters its certificate was made from, the PEM.
pub(crate) struct IssuedCa {
    key: KeyPair,
    params: CertificateParams,
    pub cert_pem: String,
}

impl IssuedCa {
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// A leaf certificate and its key, PEM-encoded.
pub(crate) struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn failed(file: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Generate {
        file: PathBuf::from(file),
        message: e.to_string(),
    }
}

/// A fresh ECDSA P-256 key; `file` names it in errors.
pub(crate) fn new_key(file: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed(file))
}

/// Whole seconds: certificates cannot hold more.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.unix_timestamp()).unwrap_or(t)
}

fn base_params(
    common_name: &str,
    organization: Option<&str>,
    now: OffsetDateTime,
    validity: Duration,
) -> CertificateParams {
    let now = whole_seconds(now);
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

/// A self-signed CA: CA:TRUE, keyCertSign + cRLSign.
pub(crate) fn ca(spec: &CaSpec, now: OffsetDateTime) -> Result<IssuedCa, PkiError> {
    let key = new_key(spec.paths.key)?;
    let mut params = base_params(spec.common_name, None, now, CA_VALIDITY);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(failed(spec.paths.crt))?;
    Ok(IssuedCa {
        key,
        params,
        cert_pem: cert.pem(),
    })
}

/// A leaf signed by `ca`: CA:FALSE, digitalSignature, the spec's EKUs and SANs.
///
/// No keyEncipherment: that is RSA key transport and means nothing for an ECDSA key
/// (Go's and kubeadm's generators set it only for RSA keys).
pub(crate) fn leaf(
    spec: &LeafSpec,
    ca: &IssuedCa,
    now: OffsetDateTime,
) -> Result<Issued, PkiError> {
    let file = spec.paths.crt;
    let key = new_key(spec.paths.key)?;
    let mut params = base_params(&spec.common_name, spec.organization, now, LEAF_VALIDITY);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.usage.server() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.usage.client() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    for san in &spec.sans {
        params.subject_alt_names.push(match &san.value {
            SanValue::Ip(ip) => SanType::IpAddress(*ip),
            SanValue::Dns(name) => SanType::DnsName(name.clone().try_into().map_err(failed(file))?),
        });
    }
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).map_err(failed(file))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
