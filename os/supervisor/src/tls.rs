//! rustls client configurations from PEM bytes, shared by the HTTPS probes and by
//! the init's API client. Errors describe what was wrong, never echo the PEM.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider every cairn TLS client uses (`ring`).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts exactly the CAs in `ca_pem` and, when given, presents the
/// certificate chain and key `client` = (cert PEM, key PEM). `what` names the
/// source in errors (a file or kubeconfig).
pub fn client_config(
    what: &str,
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(what, "CA certificate", ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("{what}: CA certificate: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup: {e}"))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certs(what, "client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("{what}: client key: {}", pem_error(&e)))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{what}: client certificate: {e}"))
        }
    }
}

/// Every certificate in PEM text; none is an error.
pub fn certs(what: &str, kind: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {kind}: {}", pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM {kind} found"));
    }
    Ok(certs)
}

/// Describes a PEM error without echoing contents.
pub fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM item of the expected kind".into(),
        _ => "malformed PEM".into(),
    }
}
