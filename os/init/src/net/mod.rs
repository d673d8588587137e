//! Networking: loopback, and the first NIC configured by DHCP or statically from the
//! machine config; /run/cairn/resolv.conf from the nameservers.
//!
//! Interfaces are configured with the classic SIOCSIF*/SIOCADDRT ioctls: IPv4 only,
//! no netlink dependency, enough for one uplink.

pub mod dhcp;
pub mod ifconfig;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_machine_config::Network;

pub use ifconfig::{add_default_route, set_address, set_up};

/// The address the uplink ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub nameservers: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub server: Option<Ipv4Addr>,
}

/// The first physical (non-loopback, device-backed) interface, waiting for its driver.
pub async fn first_nic(named: Option<&str>, timeout: Duration) -> Result<String> {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(name) = named {
            if Path::new("/sys/class/net").join(name).exists() {
                return Ok(name.to_string());
            }
        } else if let Some(n) = list_physical(Path::new("/sys/class/net"))
            .into_iter()
            .next()
        {
            return Ok(n);
        }
        if start.elapsed() > timeout {
            bail!(
                "no network interface {} appeared within {} s",
                named.unwrap_or("(any)"),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn list_physical(class_net: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(class_net)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("device").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn mac_address(interface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(text.trim())
        .with_context(|| format!("{path}: `{}` is not a MAC address", text.trim()))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Applies a lease (or a static configuration) to the interface.
pub fn apply(lease: &Lease) -> Result<()> {
    set_address(&lease.interface, lease.address, lease.prefix)?;
    set_up(&lease.interface)?;
    if let Some(gw) = lease.gateway {
        add_default_route(&lease.interface, gw)?;
    }
    let mut resolv = String::new();
    for ns in &lease.nameservers {
        resolv.push_str(&format!("nameserver {ns}\n"));
    }
    crate::fsutil::write("/run/cairn/resolv.conf", resolv)?;
    Ok(())
}

/// Brings the uplink up per the config; DHCP keeps renewing in the background.
pub async fn configure(net: &Network, hostname: &str) -> Result<Lease> {
    set_up("lo").context("bringing up loopback")?;
    let iface = first_nic(net.interface.as_deref(), Duration::from_secs(20)).await?;
    let lease = if net.dhcp {
        let lease = dhcp::acquire(&iface, hostname, Duration::from_secs(30)).await?;
        apply(&lease)?;
        let renew = lease.clone();
        let host = hostname.to_string();
        tokio::spawn(async move { dhcp::renew_forever(renew, host).await });
        lease
    } else {
        let addr = net
            .address
            .context("static network config without an address")?;
        let lease = Lease {
            interface: iface,
            address: addr.addr(),
            prefix: addr.prefix(),
            gateway: net.gateway,
            nameservers: net.nameservers.clone(),
            lease_secs: 0,
            server: None,
        };
        apply(&lease)?;
        lease
    };
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }
}
