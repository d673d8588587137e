//! Clients that misbehave (garbage instead of a handshake, a handshake cut short, bad
//! Inhibit arguments) leave the shim working and leak no fds. Alone in its test binary
//! so that the fd count is not disturbed by other tests.

mod common;

use std::time::Duration;

use common::{Shim, client};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn bad_requests_and_misbehaving_clients_leave_the_shim_working() {
    let shim = Shim::start().await;
    let fds_before = open_fds();

    // Garbage instead of a handshake, a handshake cut short, and a silent client.
    for junk in [
        &b"\0GET / HTTP/1.1\r\n\r\n"[..],
        b"\0AUTH EXTERNAL 30\r\n",
        b"",
    ] {
        let mut raw = tokio::net::UnixStream::connect(&shim.socket)
            .await
            .expect("connecting");
        raw.write_all(junk).await.expect("writing");
        drop(raw);
    }

    let (conn, proxy) = client(&shim).await;
    let refused = proxy.inhibit("shutdown", "x", "y", "forever").await;
    assert!(refused.is_err(), "unknown mode accepted");
    let refused = proxy.inhibit("reboot", "x", "y", "delay").await;
    assert!(refused.is_err(), "unknown lock kind accepted");
    // A block lock is accepted but shutdown does not wait for it.
    let block = proxy
        .inhibit("shutdown", "x", "y", "block")
        .await
        .expect("block lock");
    assert_eq!(shim.logind.delay_locks(), 0);
    shim.assert_shutdown_does_not_wait().await;

    // Everything goes away with the clients: no fd is left behind.
    drop(block);
    drop(proxy);
    drop(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open_fds() > fds_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open_fds(), fds_before, "fds leaked");
}

/// How many fds this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .count()
}
