//! Shared by the integration tests: logging, a shim on a socket in a temporary
//! directory, waiting for the lock count, and a zbus client of the logind object.

// Each test binary uses a different part of this.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use cairn_logind::{Config, Logind};
use tracing_subscriber::filter::LevelFilter;
use zbus::zvariant::OwnedFd;

/// The `InhibitDelayMaxUSec` every test shim answers.
pub const INHIBIT_DELAY_MAX: Duration = Duration::from_secs(30);

/// A running shim and the directory that holds its socket.
pub struct Shim {
    pub logind: Logind,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Shim {
    pub async fn start() -> Shim {
        let _ = tracing_subscriber::fmt()
            .with_max_level(LevelFilter::INFO)
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let socket = dir.path().join("run/dbus/system_bus_socket");
        let logind = cairn_logind::serve(Config {
            socket: socket.clone(),
            inhibit_delay_max: INHIBIT_DELAY_MAX,
        })
        .await
        .expect("starting the shim");
        Shim {
            logind,
            socket,
            _dir: dir,
        }
    }

    /// The bus address clients are given.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// With no delay lock held, `prepare_for_shutdown` returns at once.
    pub async fn assert_shutdown_does_not_wait(&self) {
        let outcome = self
            .logind
            .prepare_for_shutdown(Duration::from_secs(5))
            .await;
        assert!(
            outcome.released_all && outcome.waited < Duration::from_secs(1),
            "{outcome:?}"
        );
        assert_eq!(outcome.locks_left, 0);
    }

    /// Waits until exactly `n` shutdown delay locks are held.
    pub async fn wait_for_locks(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.logind.delay_locks() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} delay locks within {within:?}, have {}",
                self.logind.delay_locks()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
pub trait Manager {
    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> zbus::Result<u64>;

    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<OwnedFd>;

    #[allow(clippy::type_complexity)]
    fn list_inhibitors(&self) -> zbus::Result<Vec<(String, String, String, String, u32, u32)>>;

    #[zbus(signal)]
    fn prepare_for_shutdown(&self, start: bool) -> zbus::Result<()>;
}

/// A bus client connected to the shim, with the logind proxy.
pub async fn client(shim: &Shim) -> (zbus::Connection, ManagerProxy<'static>) {
    let conn = zbus::connection::Builder::address(shim.address().as_str())
        .expect("parsing the bus address")
        .build()
        .await
        .expect("connecting as a bus client");
    let proxy = ManagerProxy::new(&conn)
        .await
        .expect("creating the logind proxy");
    (conn, proxy)
}
