//! CNI: the pod network of one node. Not a service: containerd's CRI runs the
//! plugins for every pod sandbox, reading the conflist rendered here.
//!
//! Configuration: a CNI 1.0.0 conflist named [`NETWORK`]: `bridge` (`cni0`, the
//! pods' default gateway, masquerading traffic that leaves the pod subnet, hairpin
//! on so a pod reaches itself through a Service) with `host-local` IPAM over the
//! node's pod subnet, then `portmap` for `hostPort`s (capability `portMappings`);
//! both program netfilter with the nftables backend ([`NETFILTER_BACKEND`]).
//! The pod subnet is a run-time value: the controller-manager allocates each node a
//! /24 of the cluster's pod CIDR (`Node.spec.podCIDR`), so it is a parameter, checked
//! against the machine config's pod CIDR.
//! Loopback is not in the conflist: with `use_internal_loopback = false` (the
//! default) containerd 2 runs the `loopback` plugin from its CNI `bin_dirs` itself
//! for every sandbox, so [`BIN_DIR`] must hold `loopback` as well as `bridge`,
//! `host-local` and `portmap`.
//! Paths: plugins in [`BIN_DIR`] (`/usr/lib/cni`, part of the read-only system
//! image, where Debian puts them; `/opt` does not exist on a node). The conflist in
//! [`CONF_DIR`] (`/run/cairn/cni/net.d`): `/etc` is read-only, and the file is
//! rewritten at every boot once the node's pod subnet is known; until it exists the
//! node stays NotReady, which is what we want. host-local's reservations in
//! [`IPAM_DIR`] (`/run/cairn/cni/ipam`): they must survive a restart of containerd
//! (pods keep running) but not a reboot (every pod is gone), which is exactly tmpfs.

use std::path::PathBuf;

use cairn_machine_config::{Cidr, MachineConfig};
use serde::Serialize;

use crate::cidr_flag;
use crate::files::RenderError;

/// Where the CNI plugin binaries are.
pub const BIN_DIR: &str = "/usr/lib/cni";
/// Where containerd looks for the network config.
pub const CONF_DIR: &str = "/run/cairn/cni/net.d";
/// host-local's IP reservations.
pub const IPAM_DIR: &str = "/run/cairn/cni/ipam";
/// The network's name (and the conflist's file stem).
pub const NETWORK: &str = "cairn";
/// The bridge the pods are attached to.
pub const BRIDGE: &str = "cni0";
pub const CNI_VERSION: &str = "1.0.0";
/// The plugins program masquerading and host ports with nftables (through `nft`,
/// which the image carries; it has no iptables).
pub const NETFILTER_BACKEND: &str = "nftables";

/// Everything that decides the pod network of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// This node's pod subnet, e.g. `10.244.0.0/24`.
    pub pod_subnet: Cidr,
    pub bridge: String,
    pub conf_dir: PathBuf,
    pub ipam_dir: PathBuf,
}

impl CniConfig {
    /// The network of a node whose pod subnet is `pod_subnet`, which must lie inside
    /// the cluster's pod CIDR and leave room for a gateway and pods.
    pub fn new(cfg: &MachineConfig, pod_subnet: Cidr) -> Result<CniConfig, RenderError> {
        let what = || format!("the node's pod subnet {pod_subnet}");
        let cluster = cfg.cluster.pod_cidr;
        if pod_subnet.prefix() < cluster.prefix() || !cluster.contains(pod_subnet.network()) {
            return Err(RenderError::new(
                what(),
                format!("is not inside the cluster's pod CIDR {cluster}"),
            ));
        }
        if pod_subnet.prefix() > 30 {
            return Err(RenderError::new(what(), "is smaller than a /30"));
        }
        Ok(CniConfig {
            pod_subnet,
            bridge: BRIDGE.into(),
            conf_dir: PathBuf::from(CONF_DIR),
            ipam_dir: PathBuf::from(IPAM_DIR),
        })
    }

    /// `<conf_dir>/10-cairn.conflist`.
    pub fn conf_file(&self) -> PathBuf {
        self.conf_dir.join(format!("10-{NETWORK}.conflist"))
    }

    /// The conflist's text (JSON).
    pub fn render(&self) -> Result<String, RenderError> {
        let gateway = self.pod_subnet.nth(1).ok_or_else(|| {
            RenderError::new(
                format!("the node's pod subnet {}", self.pod_subnet),
                "has no first host address",
            )
        })?;
        let doc = ConfList {
            cni_version: CNI_VERSION,
            name: NETWORK,
            plugins: (
                Bridge {
                    kind: "bridge",
                    bridge: self.bridge.clone(),
                    is_gateway: true,
                    ip_masq: true,
                    ip_masq_backend: NETFILTER_BACKEND,
                    hairpin_mode: true,
                    ipam: HostLocal {
                        kind: "host-local",
                        ranges: vec![vec![Range {
                            subnet: cidr_flag(&self.pod_subnet),
                            gateway: gateway.to_string(),
                        }]],
                        routes: vec![Route { dst: "0.0.0.0/0" }],
                        data_dir: self.ipam_dir.display().to_string(),
                    },
                },
                Portmap {
                    kind: "portmap",
                    backend: NETFILTER_BACKEND,
                    capabilities: PortmapCapabilities {
                        port_mappings: true,
                    },
                },
            ),
        };
        serde_json::to_string_pretty(&doc)
            .map_err(|e| RenderError::new("rendering the CNI conflist", e))
    }

    /// Writes [`CniConfig::render`] to [`CniConfig::conf_file`].
    pub fn write(&self) -> Result<(), RenderError> {
        crate::files::write_atomic(&self.conf_file(), &self.render()?)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList {
    cni_version: &'static str,
    name: &'static str,
    plugins: (Bridge, Portmap),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bridge {
    #[serde(rename = "type")]
    kind: &'static str,
    bridge: String,
    is_gateway: bool,
    ip_masq: bool,
    /// `nftables`: the image has `nft`, not iptables.
    ip_masq_backend: &'static str,
    hairpin_mode: bool,
    ipam: HostLocal,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostLocal {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: Vec<Vec<Range>>,
    routes: Vec<Route>,
    data_dir: String,
}

#[derive(Serialize)]
struct Range {
    subnet: String,
    gateway: String,
}

#[derive(Serialize)]
struct Route {
    dst: &'static str,
}

#[derive(Serialize)]
struct Portmap {
    #[serde(rename = "type")]
    kind: &'static str,
    backend: &'static str,
    capabilities: PortmapCapabilities,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PortmapCapabilities {
    port_mappings: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc() -> MachineConfig {
        MachineConfig::parse("t", MachineConfig::default_document()).expect("config")
    }

    fn subnet(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn renders_bridge_host_local_and_portmap() {
        let c = CniConfig::new(&mc(), subnet("10.244.3.0/24")).expect("config");
        assert_eq!(
            c.conf_file(),
            PathBuf::from("/run/cairn/cni/net.d/10-cairn.conflist")
        );
        let v: serde_json::Value =
            serde_json::from_str(&c.render().expect("render")).expect("valid JSON");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "cairn");
        let plugins = v["plugins"].as_array().expect("plugins");
        let types: Vec<_> = plugins.iter().map(|p| p["type"].clone()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
        let bridge = &plugins[0];
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        let ipam = &bridge["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.244.3.1");
        assert_eq!(ipam["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(ipam["dataDir"], "/run/cairn/cni/ipam");
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn host_bits_are_cleared() {
        let c = CniConfig::new(&mc(), subnet("10.244.3.7/24")).expect("config");
        let v: serde_json::Value =
            serde_json::from_str(&c.render().expect("render")).expect("json");
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
    }

    #[test]
    fn refuses_a_subnet_outside_the_pod_cidr() {
        for bad in ["10.96.0.0/24", "10.0.0.0/8", "10.244.0.0/31"] {
            let err = CniConfig::new(&mc(), subnet(bad)).expect_err(bad);
            assert!(
                err.to_string()
                    .contains(bad.split('/').next().unwrap_or(bad)),
                "{err}"
            );
        }
    }
}
