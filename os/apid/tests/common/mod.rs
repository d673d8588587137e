//! What both test files share: the secrets bundle, client certificates, and a
//! gRPC client over our own rustls connection.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::proto::machine_client::MachineClient;
use cairn_pki::{Bundle, ClusterParams, Existing, Hostname, OffsetDateTime, paths};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const NODE: &str = "node-1";

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A bundle for node-1 at 127.0.0.1, written to `dir`. Its kubeconfigs point at
/// `api_server` (nothing listens there unless a test starts something).
pub fn write_bundle(dir: &Path, api_server: &str) -> Bundle {
    let node = Hostname::try_from(NODE.to_string()).expect("hostname");
    let mut params = ClusterParams::new(
        node,
        "127.0.0.1".parse().expect("ip"),
        OffsetDateTime::now_utc(),
    );
    params.local_server = api_server.to_owned();
    params.external_server = api_server.to_owned();
    let bundle = cairn_pki::generate(&params).expect("generating the bundle");
    bundle
        .write_to(dir, Existing::Keep)
        .expect("writing the bundle");
    bundle
}

pub fn text(bundle: &Bundle, path: &str) -> String {
    String::from_utf8(bundle.get(path).expect(path).bytes().to_vec()).expect("utf-8")
}

/// A certificate and key, PEM.
#[derive(Clone)]
pub struct Cert {
    pub cert: String,
    pub key: String,
}

/// A machine-API client certificate from the bundle's CA, valid now.
pub fn client_cert(bundle: &Bundle, name: &str, organization: &str) -> Cert {
    let now = OffsetDateTime::now_utc();
    let c = cairn_pki::issue_os_client(
        bundle,
        name,
        organization,
        now - time::Duration::hours(1),
        time::Duration::days(1),
    )
    .expect("issuing a client certificate");
    Cert {
        cert: c.cert_pem,
        key: c.key_pem,
    }
}

/// The bundle's own admin client certificate.
pub fn admin_cert(bundle: &Bundle) -> Cert {
    Cert {
        cert: text(bundle, paths::OS_ADMIN.crt),
        key: text(bundle, paths::OS_ADMIN.key),
    }
}

/// TLS settings of a client with `cert`, trusting the bundle's machine-API CA.
pub fn client_tls(bundle: &Bundle, cert: &Cert) -> rustls::ClientConfig {
    cairn_api::client_config(
        text(bundle, paths::OS_CA.crt).as_bytes(),
        cert.cert.as_bytes(),
        cert.key.as_bytes(),
    )
    .expect("client TLS settings")
}

/// TLS 1.3 trusting the machine-API CA, presenting no certificate at all.
pub fn client_tls_without_cert(bundle: &Bundle) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(text(bundle, paths::OS_CA.crt).as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A gRPC client to `addr` over TLS with `tls`. The local address of every TCP
/// connection it makes is pushed to `local_addrs` when given.
pub async fn connect_recording(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    local_addrs: Option<Arc<Mutex<Vec<SocketAddr>>>>,
) -> Result<MachineClient<Channel>, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = cairn_api::server_name("127.0.0.1").expect("server name");
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, name, local_addrs) =
                (connector.clone(), name.clone(), local_addrs.clone());
            async move {
                let tcp = TcpStream::connect(addr).await?;
                if let (Some(record), Ok(local)) = (local_addrs, tcp.local_addr()) {
                    record.lock().expect("lock").push(local);
                }
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(MachineClient::new(channel))
}

pub async fn connect(addr: SocketAddr, tls: rustls::ClientConfig) -> MachineClient<Channel> {
    connect_recording(addr, tls, None)
        .await
        .expect("connecting to the machine API")
}

/// A config for a server whose files live under `root`.
pub fn config(root: &Path, secrets: &Path) -> cairn_apid::Config {
    cairn_apid::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        secrets_dir: secrets.to_path_buf(),
        control_socket: root.join("control.sock"),
        machine_config: root.join("machine.yaml"),
        run_dir: root.join("run"),
        kmsg: PathBuf::from("/dev/kmsg"),
        etcd_endpoint: format!("https://127.0.0.1:{}", closed_port()),
    }
}

/// Starts a server on 127.0.0.1 on the current runtime; returns its address.
pub async fn start_server(config: cairn_apid::Config) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Err(e) = cairn_apid::serve(config, listener, std::future::pending()).await {
            panic!("the machine API server failed: {e}");
        }
    });
    addr
}
