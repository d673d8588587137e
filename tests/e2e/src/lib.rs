//! Shared helpers for the end-to-end tests: the test image, booting a node,
//! the test-only control port and etcd through the test image's port forward.
//!
//! The tests boot the real disk image (`out/cairn-test.qcow2`, built by
//! `cargo run --release -p cairn-image -- image build --test-hooks`) under QEMU
//! with TCG. They run one VM at a time: the machine has two cores.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_qemu::{Disk, Vm, VmConfig};

/// Guest ports the test image exposes (see os/init/src/hooks.rs).
pub const CONTROL_PORT: u16 = 7777;
pub const ETCD_FORWARD_PORT: u16 = 12379;
/// Boot to etcd ready under TCG takes ~15-25 s; leave room for a loaded machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

static ONE_VM: Mutex<()> = Mutex::new(());

/// Serializes the tests' VMs.
pub fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    ONE_VM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The test image: `$CAIRN_TEST_IMAGE` or `<workspace>/out/cairn-test.qcow2`.
pub fn test_image() -> PathBuf {
    let path = std::env::var_os("CAIRN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../out/cairn-test.qcow2")
        });
    assert!(
        path.is_file(),
        "test image {} is missing: build it with `cargo run --release -p cairn-image -- image build --test-hooks`",
        path.display()
    );
    path
}

/// VM settings for a node: the control port and the etcd forward.
pub fn node_config() -> VmConfig {
    VmConfig {
        forwards: vec![CONTROL_PORT, ETCD_FORWARD_PORT],
        ..VmConfig::default()
    }
}

/// A fresh 4 GiB disk over the test image.
pub fn fresh_disk() -> Disk {
    Disk::new(&test_image(), Some("4G")).expect("creating a qcow2 overlay over the test image")
}

/// Sends one command to the test-only control port and returns the answer line.
pub fn hook(vm: &Vm, command: &str) -> Result<String> {
    let addr = ("127.0.0.1", vm.host_port(CONTROL_PORT));
    let mut conn = TcpStream::connect(addr).context("connecting to the test control port")?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .context("reading the control port's answer")?;
    let line = line.trim().to_string();
    if line.starts_with("error") {
        bail!("control port refused {command:?}: {line}");
    }
    Ok(line)
}

/// An etcd client through the forward, on its own small runtime.
pub struct Etcd {
    rt: tokio::runtime::Runtime,
    endpoint: String,
}

impl Etcd {
    pub fn new(vm: &Vm) -> Etcd {
        Etcd {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            endpoint: format!("127.0.0.1:{}", vm.host_port(ETCD_FORWARD_PORT)),
        }
    }

    async fn client(endpoint: &str) -> Result<etcd_client::Client> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        Ok(etcd_client::Client::connect([endpoint], Some(opts)).await?)
    }

    /// Writes a key; returns once etcd acknowledged it (committed to its WAL).
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.rt.block_on(async {
            Self::client(&self.endpoint)
                .await?
                .put(key, value, None)
                .await?;
            Ok(())
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        self.rt.block_on(async {
            let resp = Self::client(&self.endpoint).await?.get(key, None).await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }
}
