//! `cairn-guest-relay HOST:PORT`: joins its stdin/stdout to a TCP connection to
//! HOST:PORT. QEMU runs it for each guest connection to a `guestfwd` address
//! (`cairn_qemu::VmConfig::guest_forwards`), the connection on its stdio, so a
//! guest under `restrict=on` reaches one host loopback port and nothing else.
//!
//! It writes nothing of its own: stderr is the guest's connection too.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        std::process::exit(2);
    };
    let Ok(upstream) = TcpStream::connect(&addr) else {
        std::process::exit(1);
    };
    let Ok(mut to_host) = upstream.try_clone() else {
        std::process::exit(1);
    };
    // Guest -> host until the guest closes, then half-close towards the host.
    std::thread::spawn(move || {
        let _ = copy(&mut std::io::stdin().lock(), &mut to_host);
        let _ = to_host.shutdown(Shutdown::Write);
    });
    // Host -> guest until the host closes; then the relay is done.
    let mut from_host = upstream;
    let _ = copy(&mut from_host, &mut std::io::stdout().lock());
}

/// `std::io::copy`, flushing after every read (stdout is line-buffered otherwise).
fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
