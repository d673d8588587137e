//! The shim seen by an ordinary zbus *bus* client (SASL EXTERNAL, unix-fd negotiation,
//! `Hello`, `AddMatch`, `GetNameOwner`), the way kubelet's godbus sees it, on a
//! current-thread runtime as in PID 1.

mod common;

use std::time::Duration;

use common::{INHIBIT_DELAY_MAX, PrepareForShutdownStream, Shim, client};
use tokio::time::timeout;
use zbus::export::futures_core::Stream;
use zbus::zvariant::OwnedFd;

/// Connects, checks the bus driver and the delay, subscribes to PrepareForShutdown and
/// takes a shutdown delay lock, as kubelet does.
async fn kubelet_like(shim: &Shim) -> (zbus::Connection, PrepareForShutdownStream, OwnedFd) {
    let (conn, proxy) = client(shim).await;
    let unique = conn
        .unique_name()
        .expect("Hello gave a unique name")
        .to_string();
    assert!(unique.starts_with(":1."), "unique name {unique}");

    let driver = zbus::fdo::DBusProxy::new(&conn)
        .await
        .expect("bus driver proxy");
    let owner = driver
        .get_name_owner("org.freedesktop.login1".try_into().expect("bus name"))
        .await
        .expect("GetNameOwner(org.freedesktop.login1)");
    assert_eq!(owner.as_str(), ":1.0");
    assert!(
        driver
            .name_has_owner("org.freedesktop.login1".try_into().expect("bus name"))
            .await
            .expect("NameHasOwner")
    );

    let delay = proxy
        .inhibit_delay_max_usec()
        .await
        .expect("InhibitDelayMaxUSec");
    assert_eq!(delay, INHIBIT_DELAY_MAX.as_micros() as u64);

    let signals = proxy
        .receive_prepare_for_shutdown()
        .await
        .expect("subscribing to PrepareForShutdown");
    let fd = proxy
        .inhibit(
            "shutdown",
            "kubelet",
            "Kubelet needs time to handle node shutdown",
            "delay",
        )
        .await
        .expect("Inhibit");
    let held = proxy.list_inhibitors().await.expect("ListInhibitors");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, "shutdown");
    assert_eq!(held[0].3, "delay");
    assert_eq!(held[0].5, std::process::id());
    (conn, signals, fd)
}

/// The next PrepareForShutdown argument, within a few seconds.
async fn next_prepare(signals: &mut PrepareForShutdownStream) -> bool {
    let signal = timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *signals).poll_next(cx)),
    )
    .await
    .expect("PrepareForShutdown within 5s")
    .expect("the signal stream ended");
    signal.args().expect("PrepareForShutdown arguments").start
}

#[tokio::test]
async fn shutdown_waits_until_the_client_closes_its_lock() {
    let shim = Shim::start().await;
    let (_conn, mut signals, fd) = kubelet_like(&shim).await;
    shim.wait_for_locks(1, Duration::from_secs(1)).await;

    // The client: on PrepareForShutdown(true), "kill pods" for a moment, then release.
    let client = tokio::spawn(async move {
        let start = next_prepare(&mut signals).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(fd);
        start
    });

    let outcome = shim
        .logind
        .prepare_for_shutdown(Duration::from_secs(20))
        .await;
    assert!(
        client.await.expect("client task"),
        "PrepareForShutdown(true)"
    );
    assert!(outcome.released_all, "{outcome:?}");
    assert_eq!(outcome.locks_left, 0);
    assert!(
        outcome.waited >= Duration::from_millis(100),
        "returned before the lock was released: {outcome:?}"
    );
    assert!(outcome.waited < Duration::from_secs(3), "{outcome:?}");
}

#[tokio::test]
async fn shutdown_gives_up_after_max_wait_while_the_lock_is_held() {
    let shim = Shim::start().await;
    let (_conn, mut signals, fd) = kubelet_like(&shim).await;

    let max_wait = Duration::from_millis(400);
    let outcome = shim.logind.prepare_for_shutdown(max_wait).await;
    assert!(next_prepare(&mut signals).await, "PrepareForShutdown(true)");
    assert!(!outcome.released_all, "{outcome:?}");
    assert_eq!(outcome.locks_left, 1);
    assert!(outcome.waited >= max_wait, "{outcome:?}");
    assert!(
        outcome.waited < max_wait + Duration::from_secs(2),
        "{outcome:?}"
    );

    // Closing it later still releases the lock.
    drop(fd);
    shim.wait_for_locks(0, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_lock_is_released_when_its_client_disconnects_without_closing_it_itself() {
    let shim = Shim::start().await;
    let (conn, signals, fd) = kubelet_like(&shim).await;
    // Keeping the fd keeps the lock, whatever happens to the connection.
    drop(signals);
    drop(conn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shim.logind.delay_locks(), 1);
    drop(fd);
    shim.wait_for_locks(0, Duration::from_secs(2)).await;
    shim.assert_shutdown_does_not_wait().await;
}

#[tokio::test]
async fn serve_replaces_a_stale_socket_but_nothing_else() {
    let shim = Shim::start().await;
    let dir = shim.socket.parent().expect("socket directory");
    // A second shim on the same path takes over the (now stale for it) socket.
    let again = cairn_logind::serve(cairn_logind::Config {
        socket: shim.socket.clone(),
        inhibit_delay_max: INHIBIT_DELAY_MAX,
    })
    .await;
    assert!(again.is_ok(), "{again:?}");

    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").expect("writing a file");
    let refused = cairn_logind::serve(cairn_logind::Config {
        socket: file.clone(),
        inhibit_delay_max: INHIBIT_DELAY_MAX,
    })
    .await;
    assert!(
        matches!(refused, Err(cairn_logind::Error::NotASocket { .. })),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&file).expect("reading the file"), b"keep me");
}
