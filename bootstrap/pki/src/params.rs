//! What a bundle is generated for: the cluster's shape and the node it runs on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use cairn_machine_config::{Cidr, Hostname, MachineConfig};
use time::OffsetDateTime;

use crate::PkiError;

/// The kube-apiserver's secure port.
pub const API_PORT: u16 = 6443;

/// Everything the certificates and kubeconfigs depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterParams {
    /// Names the cluster (and context) in kubeconfigs.
    pub cluster_name: String,
    /// The Kubernetes node name (= hostname).
    pub node_name: Hostname,
    /// The address the apiserver and etcd advertise.
    pub advertise_ip: IpAddr,
    /// Its network + 1 is the `kubernetes` Service's ClusterIP, a SAN of the apiserver.
    pub service_cidr: Cidr,
    /// e.g. `cluster.local`.
    pub dns_domain: String,
    /// More apiserver SANs: DNS names (optionally `*.`-prefixed) or IP addresses.
    pub extra_sans: Vec<String>,
    /// Server URL for kubeconfigs of components on this node (controller-manager,
    /// scheduler, kubelet, kube-proxy).
    pub local_server: String,
    /// Server URL for the admin kubeconfigs, used from outside the node.
    pub external_server: String,
    /// "Now" for validity periods and expiry checks; injected so tests can time-travel.
    pub now: OffsetDateTime,
}

impl ClusterParams {
    /// Parameters with the machine config's cluster defaults and server URLs
    /// `https://127.0.0.1:6443` (local) and `https://<advertise_ip>:6443` (external).
    pub fn new(node_name: Hostname, advertise_ip: IpAddr, now: OffsetDateTime) -> ClusterParams {
        let cluster = cairn_machine_config::Cluster::default();
        ClusterParams {
            cluster_name: cluster.name,
            node_name,
            advertise_ip,
            service_cidr: cluster.service_cidr,
            dns_domain: cluster.dns_domain,
            extra_sans: Vec::new(),
            local_server: server_url(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            external_server: server_url(advertise_ip),
            now,
        }
    }

    /// Parameters for the node a machine config describes.
    pub fn from_machine_config(
        cfg: &MachineConfig,
        advertise_ip: IpAddr,
        now: OffsetDateTime,
    ) -> ClusterParams {
        let base = ClusterParams::new(cfg.machine.hostname.clone(), advertise_ip, now);
        let mut extra_sans = cfg.cluster.extra_sans.clone();
        if let Some(host) = cfg.cluster.api_endpoint.as_deref().and_then(endpoint_host)
            && !extra_sans.contains(&host)
        {
            extra_sans.push(host);
        }
        ClusterParams {
            cluster_name: cfg.cluster.name.clone(),
            service_cidr: cfg.cluster.service_cidr,
            dns_domain: cfg.cluster.dns_domain.clone(),
            extra_sans,
            external_server: cfg
                .cluster
                .api_endpoint
                .clone()
                .unwrap_or(base.external_server.clone()),
            ..base
        }
    }

    /// The `kubernetes` Service's ClusterIP: the service network's first address.
    pub fn first_service_ip(&self) -> Result<Ipv4Addr, PkiError> {
        match self.service_cidr.nth(1) {
            Some(ip) if self.service_cidr.prefix() <= 30 => Ok(ip),
            _ => Err(PkiError::InvalidParams {
                field: "serviceCidr",
                message: format!("{} has no room for service addresses", self.service_cidr),
            }),
        }
    }

    /// Refuses values that cannot go into a certificate or kubeconfig.
    pub fn validate(&self) -> Result<(), PkiError> {
        let invalid =
            |field: &'static str, message: String| Err(PkiError::InvalidParams { field, message });
        if self.cluster_name.is_empty() || !self.cluster_name.chars().all(|c| c.is_ascii_graphic())
        {
            return invalid(
                "clusterName",
                format!("`{}` must be non-empty printable ASCII", self.cluster_name),
            );
        }
        if !is_dns_name(&self.dns_domain, false) {
            return invalid(
                "dnsDomain",
                format!("`{}` is not a DNS name", self.dns_domain),
            );
        }
        for san in &self.extra_sans {
            if san.parse::<IpAddr>().is_err() && !is_dns_name(san, true) {
                return invalid(
                    "extraSans",
                    format!("`{san}` is neither an IP address nor a DNS name"),
                );
            }
        }
        for (field, url) in [
            ("localServer", &self.local_server),
            ("externalServer", &self.external_server),
        ] {
            if !url.starts_with("https://")
                || url.len() == "https://".len()
                || url.chars().any(char::is_whitespace)
            {
                return invalid(field, format!("`{url}` is not an https:// URL"));
            }
        }
        self.first_service_ip().map(|_| ())
    }
}

/// The host of an `https://host[:port]` URL (brackets of an IPv6 literal removed).
fn endpoint_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => rest.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// `https://<ip>:6443`, with brackets for IPv6.
pub fn server_url(ip: IpAddr) -> String {
    format!("https://{}", SocketAddr::new(ip, API_PORT))
}

/// Lowercase RFC 1123 labels joined by dots; `wildcard` allows a leading `*.`.
fn is_dns_name(name: &str, wildcard: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ClusterParams {
        let node = Hostname::try_from("node-1".to_string()).expect("hostname");
        ClusterParams::new(
            node,
            "10.0.2.15".parse().expect("ip"),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn defaults_follow_the_machine_config() {
        let p = params();
        assert_eq!(
            p.first_service_ip().expect("ip"),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert_eq!(p.local_server, "https://127.0.0.1:6443");
        assert_eq!(p.external_server, "https://10.0.2.15:6443");
        assert_eq!(p.dns_domain, "cluster.local");
        assert!(p.validate().is_ok());
        assert_eq!(
            server_url("fd00::1".parse().expect("ip")),
            "https://[fd00::1]:6443"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut p = params();
        p.extra_sans = vec![
            "api.example.com".into(),
            "*.apps.example.com".into(),
            "192.0.2.7".into(),
        ];
        assert!(p.validate().is_ok());
        p.extra_sans.push("not a name".into());
        let e = p.validate().expect_err("bad SAN").to_string();
        assert!(e.contains("extraSans") && e.contains("not a name"), "{e}");

        let mut p = params();
        p.service_cidr = Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 32);
        assert!(
            p.validate()
                .expect_err("/32")
                .to_string()
                .contains("serviceCidr")
        );
    }
}
