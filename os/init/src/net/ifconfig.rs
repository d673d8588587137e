//! IPv4 interface configuration through ioctls on an AF_INET datagram socket.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

fn control_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a control socket")
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is a plain C struct of integers, arrays and a union of such;
    // all-zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    anyhow::ensure!(
        bytes.len() < libc::IFNAMSIZ,
        "interface name {name} is too long"
    );
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux and sockaddr is
    // the generic view the ioctls expect; transmute copies the bytes.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<()> {
    // SAFETY: `arg` points to a live, correctly typed struct (ifreq or rtentry) for
    // the given request, and `fd` is an open socket.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

pub fn set_up(name: &str) -> Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    ioctl(
        &fd,
        libc::SIOCGIFFLAGS,
        (&raw mut req).cast(),
        &format!("reading flags of {name}"),
    )?;
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(
        &fd,
        libc::SIOCSIFFLAGS,
        (&raw mut req).cast(),
        &format!("bringing {name} up"),
    )
}

pub fn set_address(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(
        &fd,
        libc::SIOCSIFADDR,
        (&raw mut req).cast(),
        &format!("setting {addr} on {name}"),
    )?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(
        &fd,
        libc::SIOCSIFNETMASK,
        (&raw mut req).cast(),
        &format!("setting /{prefix} on {name}"),
    )
}

pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> Result<()> {
    add_route(name, Ipv4Addr::UNSPECIFIED, 0, Some(gateway))
}

/// Adds a route to `dst/prefix` out of `name`, through `gateway` or on-link; an
/// existing identical route is fine.
pub fn add_route(name: &str, dst: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> Result<()> {
    let fd = control_socket()?;
    // SAFETY: rtentry is a plain C struct; all-zero is valid (null rt_dev is set below).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    rt.rt_dst = sockaddr_in(dst);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::from(mask));
    let mut flags = libc::RTF_UP;
    if let Some(gw) = gateway {
        rt.rt_gateway = sockaddr_in(gw);
        flags |= libc::RTF_GATEWAY;
    }
    rt.rt_flags = flags as libc::c_ushort;
    let mut dev = std::ffi::CString::new(name)?.into_bytes_with_nul();
    rt.rt_dev = dev.as_mut_ptr().cast();
    let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    match ioctl(
        &fd,
        libc::SIOCADDRT,
        (&raw mut rt).cast(),
        &format!("adding route {dst}/{prefix}{via} on {name}"),
    ) {
        Err(e)
            if e.root_cause()
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EEXIST) =>
        {
            Ok(())
        }
        other => other,
    }
}
