//! Kubeconfig files: one cluster (CA embedded), one user (client certificate and key
//! embedded), one context. Rendered at generation, parsed back by `check`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kubeconfig {
    api_version: String,
    kind: String,
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    current_context: String,
    users: Vec<NamedUser>,
}

#[derive(Serialize, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    certificate_authority_data: String,
    server: String,
}

#[derive(Serialize, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Serialize, Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Serialize, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: String,
    client_key_data: String,
}

/// What a kubeconfig is made of; PEM texts, not base64.
pub(crate) struct KubeconfigParts {
    pub cluster_name: String,
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub user_name: String,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// The kubeconfig YAML text.
pub(crate) fn render(parts: &KubeconfigParts) -> Result<String, serde_yaml::Error> {
    let context = format!("{}@{}", parts.user_name, parts.cluster_name);
    serde_yaml::to_string(&Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: parts.cluster_name.clone(),
            cluster: Cluster {
                certificate_authority_data: STANDARD.encode(&parts.ca_pem),
                server: parts.server.clone(),
            },
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Context {
                cluster: parts.cluster_name.clone(),
                user: parts.user_name.clone(),
            },
        }],
        current_context: context,
        users: vec![NamedUser {
            name: parts.user_name.clone(),
            user: User {
                client_certificate_data: STANDARD.encode(&parts.cert_pem),
                client_key_data: STANDARD.encode(&parts.key_pem),
            },
        }],
    })
}

/// Parses a kubeconfig this crate wrote: the current context's cluster and user,
/// decoded. The error says what is missing or malformed, never what the key is.
pub(crate) fn parse(text: &[u8]) -> Result<KubeconfigParts, String> {
    let cfg: Kubeconfig =
        serde_yaml::from_slice(text).map_err(|e| format!("is not a kubeconfig: {e}"))?;
    let context = cfg
        .contexts
        .iter()
        .find(|c| c.name == cfg.current_context)
        .ok_or_else(|| {
            format!(
                "has no context `{}` (its current-context)",
                cfg.current_context
            )
        })?;
    let cluster = cfg
        .clusters
        .iter()
        .find(|c| c.name == context.context.cluster)
        .ok_or_else(|| format!("has no cluster `{}`", context.context.cluster))?;
    let user = cfg
        .users
        .iter()
        .find(|u| u.name == context.context.user)
        .ok_or_else(|| format!("has no user `{}`", context.context.user))?;
    let decode = |field: &str, value: &str| {
        STANDARD
            .decode(value)
            .map_err(|_| format!("has invalid base64 in {field}"))
    };
    Ok(KubeconfigParts {
        cluster_name: cluster.name.clone(),
        server: cluster.cluster.server.clone(),
        ca_pem: decode(
            "certificate-authority-data",
            &cluster.cluster.certificate_authority_data,
        )?,
        user_name: user.name.clone(),
        cert_pem: decode(
            "client-certificate-data",
            &user.user.client_certificate_data,
        )?,
        key_pem: decode("client-key-data", &user.user.client_key_data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kubectl_field_names_and_round_trips() {
        let parts = KubeconfigParts {
            cluster_name: "cairn".into(),
            server: "https://127.0.0.1:6443".into(),
            ca_pem: b"CA".to_vec(),
            user_name: "system:kube-scheduler".into(),
            cert_pem: b"CERT".to_vec(),
            key_pem: b"KEY".to_vec(),
        };
        let text = render(&parts).expect("render");
        for field in [
            "apiVersion: v1",
            "kind: Config",
            "current-context: system:kube-scheduler@cairn",
            "certificate-authority-data:",
            "client-certificate-data:",
            "client-key-data:",
            "server: https://127.0.0.1:6443",
        ] {
            assert!(text.contains(field), "{field} missing in\n{text}");
        }
        let back = parse(text.as_bytes()).expect("parse");
        assert_eq!(
            (back.ca_pem, back.cert_pem, back.key_pem),
            (b"CA".to_vec(), b"CERT".to_vec(), b"KEY".to_vec())
        );
        assert_eq!(back.user_name, "system:kube-scheduler");
        assert!(parse(b"kind: Config").is_err());
    }
}
