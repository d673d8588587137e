//! A small Kubernetes API client for bringing a node up: read a kubeconfig, GET an
//! object, server-side apply a handful of objects. Enough for the init to apply the
//! cluster's built-in objects (RBAC, CoreDNS) and to learn its node's pod subnet;
//! the GitOps reconciler, which manages arbitrary objects, uses kube-rs instead.
//!
//! HTTP/1.1 over rustls, one connection per request (`Connection: close`), JSON
//! bodies, chunked or length-delimited responses. Errors name the request and the
//! API server's message; credentials never appear in them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("kubeconfig {what}: {message}")]
    Kubeconfig { what: String, message: String },
    #[error("{method} {path}: {message}")]
    Transport {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("object {what}: {message}")]
    Object { what: String, message: String },
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one API server with one identity.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiClient(https://{}:{})", self.host, self.port)
    }
}

impl ApiClient {
    /// From a kubeconfig with embedded data (`certificate-authority-data`,
    /// `client-certificate-data`, `client-key-data`), as cairn-pki writes them.
    /// `server` overrides the kubeconfig's server URL.
    pub fn from_kubeconfig(
        what: &str,
        text: &str,
        server: Option<&str>,
    ) -> Result<ApiClient, ApiError> {
        let err = |message: String| ApiError::Kubeconfig {
            what: what.to_string(),
            message,
        };
        let doc: Value = serde_yaml::from_str(text).map_err(|e| err(format!("not YAML: {e}")))?;
        let cluster = &doc["clusters"][0]["cluster"];
        let user = &doc["users"][0]["user"];
        let field = |v: &Value, name: &str| -> Result<Vec<u8>, ApiError> {
            let s = v[name].as_str().ok_or_else(|| err(format!("no {name}")))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| err(format!("{name} is not base64")))
        };
        let ca = field(cluster, "certificate-authority-data")?;
        let cert = field(user, "client-certificate-data")?;
        let key = field(user, "client-key-data")?;
        let url = match server {
            Some(s) => s.to_string(),
            None => cluster["server"]
                .as_str()
                .ok_or_else(|| err("no server".into()))?
                .to_string(),
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| err(format!("server `{url}` is not https://")))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse()
                    .map_err(|_| err(format!("server `{url}` has a bad port")))?,
            ),
            None => (authority.to_string(), 443),
        };
        let tls =
            cairn_supervisor::tls::client_config(what, &ca, Some((&cert, &key))).map_err(err)?;
        Ok(ApiClient {
            host,
            port,
            tls: Arc::new(tls),
            timeout: Duration::from_secs(10),
        })
    }

    /// `GET path`, the JSON body.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.request("GET", path, None, "application/json").await
    }

    /// Server-side apply of `object` with field manager `cairn`, taking ownership
    /// of conflicting fields (the objects cairn applies are cairn's).
    pub async fn apply(&self, object: &Value) -> Result<Value, ApiError> {
        let path = format!("{}?fieldManager=cairn&force=true", object_path(object)?);
        let body = serde_json::to_vec(object).map_err(|e| ApiError::Object {
            what: describe(object),
            message: e.to_string(),
        })?;
        self.request("PATCH", &path, Some(&body), "application/apply-patch+yaml")
            .await
    }

    /// A JSON merge patch of the object at `path`, recorded as field manager `manager`.
    pub async fn merge_patch(
        &self,
        path: &str,
        patch: &Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(patch).map_err(|e| ApiError::Object {
            what: path.to_string(),
            message: e.to_string(),
        })?;
        let path = format!("{path}?fieldManager={manager}");
        self.request("PATCH", &path, Some(&body), "application/merge-patch+json")
            .await
    }

    async fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
        content_type: &str,
    ) -> Result<Value, ApiError> {
        let transport = |message: String| ApiError::Transport {
            method,
            path: path.to_string(),
            message,
        };
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| transport(format!("connect to {}:{}: {e}", self.host, self.port)))?;
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| transport(format!("server name {}: {e}", self.host)))?;
            let mut tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| transport(format!("tls handshake: {e}")))?;
            let body = body.unwrap_or_default();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: cairn-init\r\nAccept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.host,
                self.port,
                body.len()
            );
            tls.write_all(head.as_bytes())
                .await
                .map_err(|e| transport(format!("send: {e}")))?;
            tls.write_all(body)
                .await
                .map_err(|e| transport(format!("send: {e}")))?;
            tls.flush()
                .await
                .map_err(|e| transport(format!("send: {e}")))?;
            let mut raw = Vec::new();
            // A server closing without close_notify still delivered the body.
            if let Err(e) = tls.read_to_end(&mut raw).await
                && raw.is_empty()
            {
                return Err(transport(format!("read: {e}")));
            }
            Ok(raw)
        };
        let raw = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {:?}", self.timeout)))??;
        let (status, body) = parse_response(&raw).map_err(transport)?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok(json)
        } else {
            let message = json["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            Err(ApiError::Status {
                method,
                path: path.to_string(),
                status,
                message,
            })
        }
    }
}

/// Status code and de-chunked body of a complete HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("response without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `kind/namespace/name` for messages.
pub fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The REST path of an object of the kinds cairn applies itself.
pub fn object_path(object: &Value) -> Result<String, ApiError> {
    let what = describe(object);
    let bad = |message: &str| ApiError::Object {
        what: what.clone(),
        message: message.to_string(),
    };
    let api_version = object["apiVersion"]
        .as_str()
        .ok_or_else(|| bad("no apiVersion"))?;
    let kind = object["kind"].as_str().ok_or_else(|| bad("no kind"))?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| bad("no metadata.name"))?;
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "Pod" => ("pods", true),
        "Deployment" => ("deployments", true),
        "DaemonSet" => ("daemonsets", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        _ => return Err(bad("is not a kind the node's bootstrap applies")),
    };
    let base = if api_version == "v1" {
        "/api/v1".to_string()
    } else {
        format!("/apis/{api_version}")
    };
    if namespaced {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .ok_or_else(|| bad("namespaced but no metadata.namespace"))?;
        Ok(format!("{base}/namespaces/{ns}/{plural}/{name}"))
    } else {
        Ok(format!("{base}/{plural}/{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"}});
        assert_eq!(
            object_path(&d).expect("path"),
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        );
        let c = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}});
        assert_eq!(
            object_path(&c).expect("path"),
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/x"
        );
        let s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
        assert!(
            object_path(&s)
                .expect_err("no ns")
                .to_string()
                .contains("Service x")
        );
    }

    #[test]
    fn responses() {
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").expect("plain");
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) = parse_response(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((s, b.as_slice()), (201, &b"{\"a\":1}"[..]));
        assert!(parse_response(b"garbage").is_err());
    }
}
