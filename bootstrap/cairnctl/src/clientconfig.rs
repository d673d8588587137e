//! `cairnconfig`: how `cairnctl` reaches and proves itself to nodes, like a
//! kubeconfig — the nodes' endpoints, the machine-API CA, a client certificate and
//! its key (the key makes the file secret: 0600).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_pki::{Bundle, ClientCert, paths};
use serde::{Deserialize, Serialize};

pub const KIND: &str = "CairnctlConfig";
/// The file `gen config` writes next to the machine config.
pub const FILE: &str = "cairnconfig";
/// The environment variable naming the file to use.
pub const ENV: &str = "CAIRNCONFIG";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConfig {
    pub api_version: String,
    pub kind: String,
    /// `host` or `host:port` of each node (port 50000 when omitted).
    pub endpoints: Vec<String>,
    /// PEM: the CA that signed the nodes' API certificates.
    pub ca: String,
    /// PEM: this client's certificate (its Organization is its role).
    pub crt: String,
    /// PEM: this client's private key.
    pub key: String,
}

impl ClientConfig {
    /// A config for `cert`, trusting the bundle's machine-API CA.
    pub fn new(bundle: &Bundle, endpoints: Vec<String>, cert: ClientCert) -> Result<ClientConfig> {
        let ca = bundle
            .get(paths::OS_CA.crt)
            .with_context(|| format!("the secrets bundle has no {}", paths::OS_CA.crt))?;
        Ok(ClientConfig {
            api_version: cairn_machine_config::API_VERSION.into(),
            kind: KIND.into(),
            endpoints,
            ca: String::from_utf8(ca.bytes().to_vec()).context("the CA is not UTF-8")?,
            crt: cert.cert_pem,
            key: cert.key_pem,
        })
    }

    pub fn parse(source: &str, text: &str) -> Result<ClientConfig> {
        let cfg: ClientConfig =
            serde_yaml::from_str(text).with_context(|| format!("{source} is not a {KIND}"))?;
        if cfg.kind != KIND || cfg.api_version != cairn_machine_config::API_VERSION {
            bail!(
                "{source}: expected apiVersion {} kind {KIND}, found {} {}",
                cairn_machine_config::API_VERSION,
                cfg.api_version,
                cfg.kind
            );
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<ClientConfig> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the client config {} (make one with `cairnctl gen config` or `cairnctl gen client`; choose it with --cairnconfig or ${ENV})",
                path.display()
            )
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// `--cairnconfig`, else `$CAIRNCONFIG`, else `~/.cairn/config`.
pub fn path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(ENV).map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cairn/config")))
}

/// `host` → `host:50000`; `host:port` and `[v6]:port` are kept.
pub fn with_port(endpoint: &str) -> String {
    let has_port = match endpoint.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        endpoint.to_owned()
    } else if endpoint.contains(':') && !endpoint.starts_with('[') {
        format!("[{endpoint}]:{}", cairn_api::DEFAULT_PORT)
    } else {
        format!("{endpoint}:{}", cairn_api::DEFAULT_PORT)
    }
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn endpoints_get_the_default_port() {
        assert_eq!(with_port("10.0.2.15"), "10.0.2.15:50000");
        assert_eq!(with_port("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(with_port("node-1"), "node-1:50000");
        assert_eq!(with_port("::1"), "[::1]:50000");
        assert_eq!(with_port("[::1]:7"), "[::1]:7");
    }
}
