//! The HTTPS server's certificates: a self-signed CA and a server certificate from
//! it for IP 127.0.0.1 and DNS localhost, plus IP 10.0.2.100, where QEMU guests of
//! the end-to-end tests reach the host's loopback (`cairn_qemu::GUEST_FORWARD_ADDR`).

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::PrivatePkcs8KeyDer;

/// A fresh CA (as PEM, for clients to trust) and the server's TLS configuration.
pub(crate) struct Tls {
    pub ca_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Generates the CA and the server certificate.
    pub fn generate() -> anyhow::Result<Tls> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "cairn-testgit CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca
            .self_signed(&ca_key)
            .context("self-signing the CA certificate")?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().context("generating the server key")?;
        let mut server = CertificateParams::default();
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        server.subject_alt_names = vec![
            SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(Ipv4Addr::new(10, 0, 2, 100).into()),
            SanType::DnsName("localhost".try_into().context("the DNS name localhost")?),
        ];
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server
            .signed_by(&key, &issuer)
            .context("signing the server certificate")?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing the TLS versions")?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .context("building the TLS server configuration")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            ca_pem: ca_cert.pem(),
            config: Arc::new(config),
        })
    }
}
