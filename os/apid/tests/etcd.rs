//! The etcd RPCs against a REAL etcd (the pinned binary from the component
//! cache) serving TLS with a cairn-pki bundle, run by the real supervisor.
//!
//! Needs a warm component cache: run
//! `cargo run --release -p cairn-image -- components build` first. On a cold
//! cache the test fails with that instruction; it never passes vacuously.
//!
//! Everything runs in one `#[test]` in its own process: the supervisor's reaper
//! calls `waitpid(-1)`, so etcd and etcdutl run as supervised services, and the
//! component lookup (which may run programs) happens before the reaper starts.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use cairn_api::proto::Empty;
use cairn_machine_config::MachineConfig;
use cairn_pki::paths;
use cairn_services::etcd::{EtcdConfig, EtcdTls};
use cairn_supervisor::{
    Event, EventKind, RestartPolicy, ServiceSpec, Supervisor, SupervisorConfig,
};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::broadcast;
use tonic::Code;

const WARM_HINT: &str = "the component cache is cold or incomplete: run \
    `cargo run --release -p cairn-image -- components build` first";

const KEYS: [(&str, &str); 3] = [
    ("/cairn-test/a", "alpha"),
    ("/cairn-test/b", "bravo"),
    ("/cairn-test/c", "charlie"),
];

/// bbolt's meta page magic (0xED0CDAED, little-endian) after the 16-byte page
/// header of page 0.
const BBOLT_MAGIC: [u8; 4] = [0xED, 0xDA, 0x0C, 0xED];

/// The supervisor, its events, and what an etcd needs.
struct Supervised {
    sup: Supervisor,
    rx: broadcast::Receiver<Event>,
    seen: Vec<Event>,
    etcd: PathBuf,
    secrets: PathBuf,
}

impl Supervised {
    async fn wait_for(
        &mut self,
        service: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&EventKind) -> bool,
    ) -> Result<EventKind> {
        let matches = |e: &Event| e.service == service && pred(&e.kind);
        if let Some(e) = self.seen.iter().find(|e| matches(e)) {
            return Ok(e.kind.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Ok(event)) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return Ok(event.kind);
                    }
                }
                Ok(Err(e)) => bail!("event stream broke: {e}"),
                Err(_) => {
                    let log = self.sup.logs(service).await.unwrap_or_default();
                    bail!(
                        "timed out waiting for {service} {what}; its log:\n{}",
                        String::from_utf8_lossy(&log)
                    )
                }
            }
        }
    }

    /// Starts an etcd serving TLS from the bundle on free ports; returns its URL
    /// once it answers a linearizable read.
    async fn start_etcd(&mut self, name: &str, data_dir: &Path, peer_port: u16) -> Result<String> {
        // The node's etcd, moved to this test's binary, directory and ports.
        let mc = MachineConfig::parse(
            "test",
            &MachineConfig::default_document().replace("hostname: cairn", "hostname: node-1"),
        )?;
        let mut cfg = EtcdConfig::from_machine(&mc, &cairn_services::Paths::node())
            .with_tls(EtcdTls::from_bundle(&self.secrets));
        cfg.binary = self.etcd.clone();
        cfg.member_name = common::NODE.into();
        cfg.data_dir = data_dir.to_path_buf();
        cfg.client_port = common::closed_port();
        cfg.peer_port = peer_port;
        cfg.metrics_port = common::closed_port();
        let mut spec = cairn_services::etcd::spec(&cfg).stop_timeout(Duration::from_secs(5));
        spec.name = name.into();
        self.sup.add(vec![spec]).await.context("adding etcd")?;
        self.wait_for(name, "ready", Duration::from_secs(30), |k| {
            *k == EventKind::Ready
        })
        .await?;
        Ok(cfg.client_url())
    }
}

/// An etcd client with the API server's certificate.
async fn etcd_client(secrets: &Path, endpoint: &str) -> Result<etcd_client::Client> {
    let read = |rel: &str| std::fs::read(secrets.join(rel)).with_context(|| rel.to_owned());
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(
            paths::ETCD_CA.crt,
        )?))
        .identity(etcd_client::Identity::from_pem(
            read(paths::APISERVER_ETCD_CLIENT.crt)?,
            read(paths::APISERVER_ETCD_CLIENT.key)?,
        ));
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10))
        .with_tls(tls);
    etcd_client::Client::connect([endpoint], Some(opts))
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

#[test]
fn etcd_members_status_defragment_snapshot_and_restore() {
    let started = Instant::now();
    // Before any runtime or reaper: the lookup may run programs.
    let report =
        cairn_image::components::cached(&["etcd"]).unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
    let etcd = report
        .binary("etcd", "etcd")
        .unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
    assert!(etcd.is_file(), "{WARM_HINT}: {} is missing", etcd.display());
    let etcdutl = report.binary("etcd", "etcdutl").ok();

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let secrets = root.join("secrets");
    let bundle = common::write_bundle(
        &secrets,
        &format!("https://127.0.0.1:{}", common::closed_port()),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let sup = cairn_supervisor::spawn(SupervisorConfig::default());
        cairn_supervisor::spawn_reaper(sup.clone());
        let mut s = Supervised {
            rx: sup.subscribe(),
            sup,
            seen: Vec::new(),
            etcd,
            secrets: secrets.clone(),
        };
        let result = exercise(&mut s, &root, &bundle, etcdutl.as_deref()).await;
        // Always stop the children, even after a failure.
        s.sup.shutdown().await;
        result
    });
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

async fn exercise(
    s: &mut Supervised,
    root: &Path,
    bundle: &cairn_pki::Bundle,
    etcdutl: Option<&Path>,
) -> Result<()> {
    let endpoint = s
        .start_etcd("etcd", &root.join("etcd-data"), common::closed_port())
        .await?;
    let mut kv = etcd_client(&s.secrets, &endpoint).await?;
    for (k, v) in KEYS {
        kv.put(k, v, None)
            .await
            .with_context(|| format!("put {k}"))?;
    }

    let mut config = common::config(root, &s.secrets);
    config.etcd_endpoint = endpoint.clone();
    let addr = common::start_server(config).await;
    let mut reader = common::connect(
        addr,
        common::client_tls(
            bundle,
            &common::client_cert(bundle, "reader-1", "os:reader"),
        ),
    )
    .await;
    let mut admin = common::connect(
        addr,
        common::client_tls(bundle, &common::admin_cert(bundle)),
    )
    .await;

    // Members and status, as a reader.
    let members = reader
        .etcd_members(Empty {})
        .await
        .map_err(|e| anyhow!("EtcdMembers: {e:?}"))?
        .into_inner()
        .members;
    ensure!(members.len() == 1, "members: {members:?}");
    let member = &members[0];
    ensure!(member.name == common::NODE, "{member:?}");
    ensure!(member.client_urls.contains(&endpoint), "{member:?}");
    ensure!(
        !member.peer_urls.is_empty() && !member.is_learner,
        "{member:?}"
    );
    let status = reader
        .etcd_status(Empty {})
        .await
        .map_err(|e| anyhow!("EtcdStatus: {e:?}"))?
        .into_inner();
    ensure!(status.version.starts_with("3.6."), "{status:?}");
    ensure!(
        status.member_id == member.id && status.leader == member.id,
        "{status:?}"
    );
    ensure!(
        status.db_size > 0 && status.raft_index > 0 && status.raft_term > 0,
        "{status:?}"
    );
    ensure!(status.errors.is_empty(), "{status:?}");

    // Maintenance is for admins.
    let e = reader
        .etcd_defragment(Empty {})
        .await
        .expect_err("reader defragment");
    ensure!(e.code() == Code::PermissionDenied, "{e:?}");
    ensure!(
        e.message() == "os:reader may not call EtcdDefragment (needs os:admin)",
        "{e:?}"
    );
    let e = reader
        .etcd_snapshot(Empty {})
        .await
        .expect_err("reader snapshot");
    ensure!(e.code() == Code::PermissionDenied, "{e:?}");
    admin
        .etcd_defragment(Empty {})
        .await
        .map_err(|e| anyhow!("EtcdDefragment: {e:?}"))?;

    // A snapshot, streamed to a file.
    let snapshot = root.join("snapshot.db");
    let mut stream = admin
        .etcd_snapshot(Empty {})
        .await
        .map_err(|e| anyhow!("EtcdSnapshot: {e:?}"))?
        .into_inner();
    let mut file = tokio::fs::File::create(&snapshot).await?;
    let mut chunks = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("snapshot stalled")?
        .map_err(|e| anyhow!("snapshot stream: {e:?}"))?
    {
        file.write_all(&chunk.data).await?;
        chunks += 1;
    }
    file.sync_all().await?;
    let bytes = std::fs::read(&snapshot)?;
    eprintln!("snapshot: {} bytes in {chunks} chunks", bytes.len());
    ensure!(
        bytes.len() >= 4 * 4096,
        "snapshot too small: {} bytes",
        bytes.len()
    );
    ensure!(
        bytes[16..20] == BBOLT_MAGIC,
        "not a bbolt file: {:02x?}",
        &bytes[..32]
    );

    // Restoring it into a fresh etcd gives the keys back.
    let Some(etcdutl) = etcdutl.filter(|p| p.is_file()) else {
        bail!(
            "etcdutl is not in the component cache (component etcd, binary etcdutl), so the \
             snapshot cannot be restored; {WARM_HINT}"
        );
    };
    restore_snapshot(s, etcdutl, &snapshot, &root.join("etcd-restored")).await
}

/// `etcdutl snapshot restore <snapshot> --data-dir <data_dir>` (as member node-1),
/// then a fresh etcd on that directory must hold [`KEYS`].
async fn restore_snapshot(
    s: &mut Supervised,
    etcdutl: &Path,
    snapshot: &Path,
    data_dir: &Path,
) -> Result<()> {
    let peer_port = common::closed_port();
    let peer = format!("https://127.0.0.1:{peer_port}");
    let name = "etcdutl-restore";
    let spec = ServiceSpec::new(name, etcdutl)
        .args([
            "snapshot".to_owned(),
            "restore".to_owned(),
            snapshot.display().to_string(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--name".to_owned(),
            common::NODE.to_owned(),
            "--initial-cluster".to_owned(),
            format!("{}={peer}", common::NODE),
            "--initial-advertise-peer-urls".to_owned(),
            peer.clone(),
        ])
        .env("PATH", "/usr/bin:/bin")
        .restart(RestartPolicy::Never);
    s.sup.add(vec![spec]).await.context("adding etcdutl")?;
    let exited = s
        .wait_for(name, "exit", Duration::from_secs(30), |k| {
            matches!(k, EventKind::Exited { .. })
        })
        .await?;
    let EventKind::Exited { status } = exited else {
        bail!("etcdutl: unexpected event {exited:?}");
    };
    if !status.success() {
        let log = s.sup.logs(name).await.unwrap_or_default();
        bail!(
            "etcdutl snapshot restore exited with {status}:\n{}",
            String::from_utf8_lossy(&log)
        );
    }

    let endpoint = s.start_etcd("etcd-restored", data_dir, peer_port).await?;
    let mut kv = etcd_client(&s.secrets, &endpoint).await?;
    for (k, v) in KEYS {
        let got = kv.get(k, None).await.with_context(|| format!("get {k}"))?;
        let value = got.kvs().first().map(|kv| kv.value().to_vec());
        ensure!(
            value.as_deref() == Some(v.as_bytes()),
            "{k} in the restored etcd: {value:?}"
        );
    }
    Ok(())
}
