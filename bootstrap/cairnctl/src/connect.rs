//! A gRPC channel to one node over TLS 1.3 with this client's certificate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_api::proto::machine_client::MachineClient;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::clientconfig::{ClientConfig, with_port};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `endpoint` (`host[:port]`), checking its certificate against the
/// config's CA and the host name or address.
pub async fn connect(cfg: &ClientConfig, endpoint: &str) -> Result<MachineClient<Channel>> {
    let address = with_port(endpoint);
    let tls = Arc::new(
        cairn_api::client_config(cfg.ca.as_bytes(), cfg.crt.as_bytes(), cfg.key.as_bytes())
            .context("the client config's certificates")?,
    );
    let name = cairn_api::server_name(&address)?;
    let target = address.clone();
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("endpoint {address:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let (tls, name, target) = (tls.clone(), name.clone(), target.clone());
            async move {
                let tcp = TcpStream::connect(&target).await?;
                // Small gRPC frames: no Nagle delay.
                tcp.set_nodelay(true)?;
                let stream = TlsConnector::from(tls).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| Unreachable(format!("{address}: {}", chain(&e))))?;
    Ok(MachineClient::new(channel))
}

/// No connection could be made (exit code 4).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
