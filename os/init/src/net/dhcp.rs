//! A small DHCPv4 client (RFC 2131): DISCOVER, OFFER, REQUEST, ACK on a UDP socket
//! bound to the interface, with the BROADCAST flag so replies reach us before we
//! have an address; renews at half the lease time.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::UdpSocket;

use super::Lease;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// Builds a client message (DISCOVER or REQUEST).
pub fn build(
    kind: u8,
    xid: u32,
    mac: [u8; 6],
    hostname: &str,
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // BROADCAST
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, kind]);
    if let Some((ip, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&ip.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    let host = &hostname.as_bytes()[..hostname.len().min(63)];
    if !host.is_empty() {
        p.extend_from_slice(&[12, host.len() as u8]);
        p.extend_from_slice(host);
    }
    p.extend_from_slice(&[55, 5, 1, 3, 6, 51, 54]);
    p.push(255);
    p
}

/// A parsed server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: Option<u32>,
    pub server: Option<Ipv4Addr>,
}

fn ip(b: &[u8]) -> Option<Ipv4Addr> {
    (b.len() >= 4).then(|| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

pub fn parse(p: &[u8]) -> Option<Reply> {
    if p.len() < 240 || p[0] != 2 || p[236..240] != MAGIC {
        return None;
    }
    let mut r = Reply {
        kind: 0,
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        yiaddr: ip(&p[16..20])?,
        mask: None,
        router: None,
        dns: Vec::new(),
        lease_secs: None,
        server: None,
    };
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *p.get(i + 1)? as usize;
        let val = p.get(i + 2..i + 2 + len)?;
        match code {
            53 => r.kind = *val.first()?,
            1 => r.mask = ip(val),
            3 => r.router = ip(val),
            6 => r.dns = val.chunks(4).filter_map(ip).collect(),
            51 => {
                r.lease_secs =
                    (len == 4).then(|| u32::from_be_bytes([val[0], val[1], val[2], val[3]]))
            }
            54 => r.server = ip(val),
            _ => {}
        }
        i += 2 + len;
    }
    Some(r)
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

fn socket(interface: &str) -> Result<UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
        .context("binding UDP port 68 for DHCP")?;
    setsockopt(
        &std_sock.as_fd(),
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .with_context(|| format!("binding the DHCP socket to {interface}"))?;
    std_sock
        .set_broadcast(true)
        .context("enabling broadcast on the DHCP socket")?;
    std_sock.set_nonblocking(true)?;
    UdpSocket::from_std(std_sock).context("registering the DHCP socket")
}

/// Sends `msg` (retrying) until a reply of one of `kinds` with our xid arrives.
async fn exchange(
    sock: &UdpSocket,
    msg: &[u8],
    xid: u32,
    kinds: &[u8],
    deadline: tokio::time::Instant,
) -> Result<Reply> {
    let mut buf = vec![0u8; 1500];
    let mut wait = Duration::from_millis(500);
    loop {
        sock.send_to(msg, (Ipv4Addr::BROADCAST, 67))
            .await
            .context("sending a DHCP message")?;
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => {
                    if let Some(r) = parse(&buf[..n])
                        && r.xid == xid
                        && kinds.contains(&r.kind)
                    {
                        return Ok(r);
                    }
                }
                Ok(Err(e)) => return Err(e).context("receiving a DHCP reply"),
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no DHCP answer");
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
}

fn xid_for(mac: [u8; 6], salt: u32) -> u32 {
    let t = crate::console::uptime().as_nanos() as u32;
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ t ^ salt
}

/// Obtains a lease on `interface`.
pub async fn acquire(interface: &str, hostname: &str, timeout: Duration) -> Result<super::Lease> {
    let mac = super::mac_address(interface)?;
    super::set_up(interface)?;
    let sock = socket(interface)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let xid = xid_for(mac, 0);
    let offer = exchange(
        &sock,
        &build(DISCOVER, xid, mac, hostname, None),
        xid,
        &[OFFER],
        deadline,
    )
    .await
    .with_context(|| {
        format!(
            "DHCP on {interface}: no offer within {} s",
            timeout.as_secs()
        )
    })?;
    let server = offer
        .server
        .context("DHCP offer without a server identifier")?;
    let ack = exchange(
        &sock,
        &build(REQUEST, xid, mac, hostname, Some((offer.yiaddr, server))),
        xid,
        &[ACK, NAK],
        deadline,
    )
    .await
    .with_context(|| format!("DHCP on {interface}: no answer to our request"))?;
    if ack.kind == NAK {
        bail!(
            "DHCP on {interface}: server {server} refused {}",
            offer.yiaddr
        );
    }
    Ok(super::Lease {
        interface: interface.to_string(),
        address: ack.yiaddr,
        prefix: ack.mask.map(prefix_of).unwrap_or(24),
        gateway: ack.router,
        nameservers: ack.dns,
        lease_secs: ack.lease_secs.unwrap_or(3600),
        server: Some(server),
    })
}

/// Renews at half the lease time, forever; a lost lease is re-acquired.
pub async fn renew_forever(mut lease: Lease, hostname: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(u64::from(lease.lease_secs.max(60) / 2))).await;
        match acquire(&lease.interface, &hostname, Duration::from_secs(30)).await {
            Ok(new) => {
                if new.address != lease.address
                    && let Err(e) = super::apply(&new)
                {
                    tracing::error!(event = "dhcp_error", error = ?format!("{e:#}"), "applying the renewed lease");
                }
                tracing::info!(event = "dhcp_renewed", interface = %new.interface, address = %new.address, "lease renewed");
                lease = new;
            }
            Err(e) => {
                tracing::warn!(event = "dhcp_error", error = ?format!("{e:#}"), "renewing the lease failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_layout() {
        let p = build(DISCOVER, 0x1234_5678, [1, 2, 3, 4, 5, 6], "cairn", None);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&p[10..12], &[0x80, 0]);
        assert_eq!(&p[28..34], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&p[236..243], &[99, 130, 83, 99, 53, 1, DISCOVER]);
        assert_eq!(p.last(), Some(&255));
    }

    #[test]
    fn parses_an_ack() {
        let mut p = vec![0u8; 240];
        p[0] = 2;
        p[4..8].copy_from_slice(&7u32.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[236..240].copy_from_slice(&MAGIC);
        p.extend_from_slice(&[
            53, 1, ACK, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 8, 8, 8, 8,
        ]);
        p.extend_from_slice(&[51, 4, 0, 1, 81, 128, 54, 4, 10, 0, 2, 2, 0, 255]);
        let r = parse(&p).expect("parses");
        assert_eq!(r.kind, ACK);
        assert_eq!(r.xid, 7);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.mask.map(prefix_of), Some(24));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.dns,
            vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(8, 8, 8, 8)]
        );
        assert_eq!(r.lease_secs, Some(86_400));
        assert_eq!(r.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(parse(&p[..100]).is_none());
    }

    /// A reply header (op 2, `xid`, `yiaddr`, the magic cookie) followed by `options`.
    fn reply(xid: u32, yiaddr: [u8; 4], options: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 240];
        p[0] = 2;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&yiaddr);
        p[236..240].copy_from_slice(&MAGIC);
        p.extend_from_slice(options);
        p
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever a server (or anyone on the segment) sends, parsing ends
        /// without a panic.
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        /// Arbitrary option bytes behind a valid header: the deep path.
        #[test]
        fn arbitrary_options_never_panic(options in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&reply(1, [10, 0, 2, 15], &options));
        }

        /// Well-formed options come back as sent, in any order with padding.
        #[test]
        fn well_formed_options_round_trip(
            xid in proptest::prelude::any::<u32>(),
            yiaddr in proptest::prelude::any::<[u8; 4]>(),
            router in proptest::prelude::any::<[u8; 4]>(),
            dns in proptest::collection::vec(proptest::prelude::any::<[u8; 4]>(), 1..4),
            lease in proptest::prelude::any::<u32>(),
            pads in 0usize..4,
        ) {
            let mut o = vec![0u8; pads];
            o.extend_from_slice(&[53, 1, ACK, 3, 4]);
            o.extend_from_slice(&router);
            o.extend_from_slice(&[6, (dns.len() * 4) as u8]);
            dns.iter().for_each(|d| o.extend_from_slice(d));
            o.extend_from_slice(&[51, 4]);
            o.extend_from_slice(&lease.to_be_bytes());
            o.push(255);
            let r = parse(&reply(xid, yiaddr, &o)).expect("a well-formed reply parses");
            proptest::prop_assert_eq!(r.kind, ACK);
            proptest::prop_assert_eq!(r.xid, xid);
            proptest::prop_assert_eq!(r.yiaddr, Ipv4Addr::from(yiaddr));
            proptest::prop_assert_eq!(r.router, Some(Ipv4Addr::from(router)));
            proptest::prop_assert_eq!(r.dns, dns.into_iter().map(Ipv4Addr::from).collect::<Vec<_>>());
            proptest::prop_assert_eq!(r.lease_secs, Some(lease));
        }
    }
}
