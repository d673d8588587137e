//! The machine API over real mutual TLS against real components: a secrets
//! bundle from cairn-pki, a real supervisor running real processes, PID 1's
//! control socket, the kernel's /dev/kmsg.
//!
//! One fixture serves every test in this process: the supervisor's reaper calls
//! `waitpid(-1)`, so a process may have one supervisor (and nothing else that
//! waits for children). It runs on its own runtime in a background thread; each
//! test is a client on its own runtime. The fixture's services end on their own
//! when the test process does (they watch their parent).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_api::proto::machine_client::MachineClient;
use cairn_api::proto::{
    ConfigApplyRequest, DmesgRequest, Empty, LogChunk, LogsRequest, ServiceInfo,
    ServiceKillRequest, ServiceRequest,
};
use cairn_control::PowerAction;
use cairn_pki::{Bundle, paths};
use cairn_supervisor::{Probe, RestartPolicy, ServiceSpec, SupervisorConfig};
use common::{Cert, NODE};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

// ---------------------------------------------------------------------------
// Captured logs (the server's tracing output), to check what it logs.

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// Waits up to 3 s for a log line containing every one of `parts`.
async fn log_line(parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(line) = logs().lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?}; the log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// The fixture.

const MACHINE_YAML: &str = "\
apiVersion: cairn.dev/v1alpha1
kind: MachineConfig
machine:
  hostname: node-1
  role: controlplane
  network:
    dhcp: true
cluster:
  name: cairn
gitops:
  url: https://deploy:s3cr3t-T0KEN@git.example.com/org/repo.git
  branch: main
";

const TOKEN: &str = "s3cr3t-T0KEN";
const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

struct Fixture {
    addr: SocketAddr,
    root: PathBuf,
    bundle: Bundle,
    /// The port admin.conf points at, where no API server runs.
    api_port: u16,
    /// What PID 1 would have been asked to do; tests that use it hold the lock.
    power: tokio::sync::Mutex<mpsc::UnboundedReceiver<PowerAction>>,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    fn machine_config(&self) -> PathBuf {
        self.root.join("machine.yaml")
    }

    fn cert(&self, name: &str, organization: &str) -> Cert {
        common::client_cert(&self.bundle, name, organization)
    }

    async fn client(&self, cert: &Cert) -> MachineClient<Channel> {
        common::connect(self.addr, common::client_tls(&self.bundle, cert)).await
    }

    async fn admin(&self) -> MachineClient<Channel> {
        self.client(&common::admin_cert(&self.bundle)).await
    }

    async fn reader(&self) -> MachineClient<Channel> {
        self.client(&self.cert("reader-1", "os:reader")).await
    }

    async fn operator(&self) -> MachineClient<Channel> {
        self.client(&self.cert("operator-1", "os:operator")).await
    }
}

/// A shell loop that ends when the test process is gone.
fn sh(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sh")
        .args(["-c", script])
        .env("PATH", "/usr/bin:/bin")
        .stop_timeout(Duration::from_secs(2))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(start_fixture)
}

fn start_fixture() -> Fixture {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let api_port = common::closed_port();
    let secrets = root.join("secrets");
    let bundle = common::write_bundle(&secrets, &format!("https://127.0.0.1:{api_port}"));
    std::fs::write(root.join("machine.yaml"), MACHINE_YAML).expect("machine.yaml");
    let run = root.join("run");
    std::fs::create_dir_all(&run).expect("run dir");
    std::fs::write(run.join("machine-id"), format!("{MACHINE_ID}\n")).expect("machine-id");
    std::fs::write(run.join("hostname"), format!("{NODE}\n")).expect("hostname");
    std::fs::write(run.join("node-ip"), "127.0.0.1\n").expect("node-ip");
    let config = common::config(&root, &secrets);
    let socket = config.control_socket.clone();

    let (power_tx, power_rx) = mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let janitor_root = root.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sup = cairn_supervisor::spawn(SupervisorConfig::default());
            cairn_supervisor::spawn_reaper(sup.clone());
            sup.add(vec![
                sh(
                    "ticker",
                    r#"i=0; while kill -0 $PPID 2>/dev/null; do echo "tick $i"; i=$((i+1)); sleep 0.2; done"#,
                ),
                sh(
                    "victim",
                    "while kill -0 $PPID 2>/dev/null; do sleep 0.2; done",
                ),
                // Removes the fixture's directory once the test process is gone.
                sh(
                    "janitor",
                    r#"while kill -0 $PPID 2>/dev/null; do sleep 0.2; done; rm -rf -- "$ROOT""#,
                )
                .env("ROOT", janitor_root.display().to_string()),
                sh("oneshot", "echo done")
                    .readiness(Probe::Completion)
                    .restart(RestartPolicy::Never),
            ])
            .await
            .expect("adding the services");
            cairn_control::serve(
                cairn_control::ServeConfig {
                    socket,
                    cgroup_root: None,
                },
                sup.clone(),
                power_tx,
            )
            .expect("serving the control socket");
            let addr = common::start_server(config).await;
            addr_tx.send(addr).expect("sending the address");
            std::future::pending::<()>().await;
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the fixture did not start");
    Fixture {
        addr,
        root,
        bundle,
        api_port,
        power: tokio::sync::Mutex::new(power_rx),
        _tmp: tmp,
    }
}

// ---------------------------------------------------------------------------
// Helpers.

async fn services(client: &mut MachineClient<Channel>) -> Vec<ServiceInfo> {
    client
        .service_list(Empty {})
        .await
        .expect("ServiceList")
        .into_inner()
        .services
}

async fn service(client: &mut MachineClient<Channel>, name: &str) -> ServiceInfo {
    services(client)
        .await
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The next chunk of a stream within `timeout`; `None` at its end.
async fn next(stream: &mut Streaming<LogChunk>, timeout: Duration) -> Option<Vec<u8>> {
    tokio::time::timeout(timeout, stream.message())
        .await
        .expect("no chunk in time")
        .expect("stream failed")
        .map(|c| c.data)
}

/// Every chunk until the stream ends.
async fn collect(mut stream: Streaming<LogChunk>) -> String {
    let mut all = Vec::new();
    while let Some(data) = next(&mut stream, Duration::from_secs(10)).await {
        all.extend_from_slice(&data);
    }
    String::from_utf8(all).expect("utf-8")
}

/// A handshake the server must refuse: the call fails without reaching the
/// service, and the server logs the refusal with the client's address.
async fn assert_refused(tls: rustls::ClientConfig, reason: &str) {
    let f = fixture();
    let local = Arc::new(Mutex::new(Vec::new()));
    let result = async {
        let mut client = common::connect_recording(f.addr, tls, Some(local.clone()))
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        client
            .version(Empty {})
            .await
            .map_err(|s| format!("call: {:?} {}", s.code(), s.message()))
    }
    .await;
    let err = match result {
        Ok(reply) => panic!("the call succeeded: {reply:?}"),
        Err(e) => e,
    };
    assert!(
        !err.contains("PermissionDenied") && !err.contains("Unauthenticated"),
        "refused by the service rather than in the handshake: {err}"
    );
    let local = local.lock().unwrap().clone();
    assert!(!local.is_empty(), "no TCP connection was made: {err}");
    let peer = format!("peer={}", local[0]);
    let line = log_line(&["handshake_refused", &peer]).await;
    eprintln!("client: {err}\nserver: {line}");
    assert!(
        line.to_lowercase().contains(&reason.to_lowercase()),
        "the refusal does not say {reason:?}: {line}"
    );
}

// ---------------------------------------------------------------------------
// 1–3: the handshake.

#[tokio::test]
async fn no_client_certificate_is_refused_in_the_handshake() {
    let f = fixture();
    assert_refused(
        common::client_tls_without_cert(&f.bundle),
        "no certificates",
    )
    .await;
    // The server is still serving.
    let mut ok = f.reader().await;
    ok.version(Empty {}).await.expect("Version after a refusal");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let f = fixture();
    // A CA of our own, and an admin certificate from it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "rogue CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::OrganizationName, "os:admin");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "mallory");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let rogue = Cert {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    assert_refused(common::client_tls(&f.bundle, &rogue), "UnknownIssuer").await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let f = fixture();
    let now = cairn_pki::OffsetDateTime::now_utc();
    let c = cairn_pki::issue_os_client(
        &f.bundle,
        "old-admin",
        "os:admin",
        now - time::Duration::days(2),
        time::Duration::days(1),
    )
    .unwrap();
    let expired = Cert {
        cert: c.cert_pem,
        key: c.key_pem,
    };
    assert_refused(common::client_tls(&f.bundle, &expired), "expired").await;
}

#[tokio::test]
async fn a_tcp_probe_is_not_a_refused_handshake_but_garbage_is() {
    let f = fixture();
    // The supervisor's readiness probe: connect, close.
    let probe = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let probe_peer = format!("peer={}", probe.local_addr().unwrap());
    drop(probe);
    // Not TLS at all.
    let mut garbage = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let garbage_peer = format!("peer={}", garbage.local_addr().unwrap());
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let line = log_line(&["handshake_refused", &garbage_peer]).await;
    assert!(line.contains("reason="), "{line}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !logs()
            .lines()
            .any(|l| l.contains(&probe_peer) && l.contains("handshake_refused")),
        "a closed probe connection was logged as a failure"
    );
    let mut ok = f.reader().await;
    ok.version(Empty {}).await.expect("Version");
}

// ---------------------------------------------------------------------------
// 4: roles.

#[tokio::test]
async fn roles_decide_who_may_reboot_and_restart() {
    let f = fixture();
    let mut power = f.power.lock().await;
    while power.try_recv().is_ok() {}

    let mut reader = f.reader().await;
    let mut operator = f.operator().await;
    let mut admin = f.admin().await;

    let denied = reader.reboot(Empty {}).await.expect_err("reader Reboot");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "os:reader may not call Reboot (needs os:admin)"
    );
    let denied = operator
        .shutdown(Empty {})
        .await
        .expect_err("operator Shutdown");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "os:operator may not call Shutdown (needs os:admin)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        power.try_recv().is_err(),
        "a refused call reached PID 1's power channel"
    );
    let line = log_line(&["method=\"Reboot\"", "code=PermissionDenied"]).await;
    assert!(
        line.contains("service=\"apid\"")
            && line.contains("caller=\"reader-1\"")
            && line.contains("role=\"os:reader\""),
        "{line}"
    );

    admin.reboot(Empty {}).await.expect("admin Reboot");
    let got = tokio::time::timeout(Duration::from_secs(2), power.recv())
        .await
        .expect("no power request");
    assert_eq!(got, Some(PowerAction::Reboot));
    admin.shutdown(Empty {}).await.expect("admin Shutdown");
    let got = tokio::time::timeout(Duration::from_secs(2), power.recv())
        .await
        .expect("no power request");
    assert_eq!(got, Some(PowerAction::Poweroff));
    let line = log_line(&["method=\"Reboot\"", "code=Ok"]).await;
    assert!(
        line.contains("caller=\"admin\"") || line.contains("role=\"os:admin\""),
        "{line}"
    );

    // A certificate from the right CA without an os:* role.
    let mut nobody = f.client(&f.cert("nobody", "system:masters")).await;
    let denied = nobody.version(Empty {}).await.expect_err("no role");
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");

    // Services: an operator may restart one, a reader may not.
    let before = service(&mut reader, "victim").await;
    assert!(before.pid > 0, "{before:?}");
    let denied = reader
        .service_restart(ServiceRequest {
            name: "victim".into(),
        })
        .await
        .expect_err("reader ServiceRestart");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "os:reader may not call ServiceRestart (needs os:operator)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service(&mut reader, "victim").await.pid, before.pid);

    operator
        .service_restart(ServiceRequest {
            name: "victim".into(),
        })
        .await
        .expect("operator ServiceRestart");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = service(&mut reader, "victim").await;
        if now.pid > 0 && now.pid != before.pid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "victim was not restarted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn service_errors_map_to_status_codes() {
    let f = fixture();
    let mut operator = f.operator().await;
    let e = operator
        .service_restart(ServiceRequest {
            name: "no-such-service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-service"), "{e:?}");
    let e = operator
        .service_kill(ServiceKillRequest {
            name: "victim".into(),
            signal: "BOGUS".into(),
        })
        .await
        .expect_err("unknown signal");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = operator
        .service_start(ServiceRequest {
            name: String::new(),
        })
        .await
        .expect_err("no name");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut reader = f.reader().await;
    let e = reader
        .logs(LogsRequest {
            service: "no-such-service".into(),
            tail_lines: 0,
            follow: false,
        })
        .await
        .expect_err("logs of an unknown service");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // A server whose PID 1 socket and etcd are unreachable.
    let tmp = tempfile::tempdir().unwrap();
    let config = common::config(tmp.path(), &f.root.join("secrets"));
    let (socket, etcd) = (config.control_socket.clone(), config.etcd_endpoint.clone());
    let addr = common::start_server(config).await;
    let mut admin = common::connect(
        addr,
        common::client_tls(&f.bundle, &common::admin_cert(&f.bundle)),
    )
    .await;
    let e = admin.service_list(Empty {}).await.expect_err("no PID 1");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&socket.display().to_string()), "{e:?}");
    let e = admin.reboot(Empty {}).await.expect_err("no PID 1");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = admin.etcd_status(Empty {}).await.expect_err("no etcd");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&etcd), "{e:?}");
    let e = admin.etcd_members(Empty {}).await.expect_err("no etcd");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn kubeconfig_is_for_admins_and_never_logged() {
    let f = fixture();
    let mut reader = f.reader().await;
    let e = reader.kubeconfig(Empty {}).await.expect_err("reader");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut admin = f.admin().await;
    let got = admin
        .kubeconfig(Empty {})
        .await
        .expect("admin Kubeconfig")
        .into_inner()
        .kubeconfig;
    let file = std::fs::read(f.root.join("secrets").join(paths::ADMIN_CONF)).unwrap();
    assert_eq!(got, file);
    log_line(&["method=\"Kubeconfig\"", "code=Ok"]).await;
    let text = String::from_utf8(file).unwrap();
    let key_data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data: "))
        .expect("client-key-data");
    assert!(
        !logs().contains(&key_data[..40]),
        "the kubeconfig's key was logged"
    );
}

// ---------------------------------------------------------------------------
// 5: the machine config.

#[tokio::test]
async fn config_apply_validates_diffs_and_keeps_and_get_redacts() {
    let f = fixture();
    let path = f.machine_config();
    let mut reader = f.reader().await;
    let mut operator = f.operator().await;
    let mut admin = f.admin().await;

    let got = reader
        .config_get(Empty {})
        .await
        .expect("ConfigGet")
        .into_inner()
        .config_yaml;
    assert!(
        got.contains("url: https://deploy:REDACTED@git.example.com/org/repo.git"),
        "{got}"
    );
    assert!(!got.contains(TOKEN), "{got}");
    assert_eq!(got, MACHINE_YAML.replace(TOKEN, "REDACTED"));

    let kept = std::fs::read(&path).unwrap();
    // A misspelt field: refused, naming the field and its line; file untouched.
    let malformed = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: node-1\n  rol: worker\n";
    let e = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: malformed.into(),
            dry_run: false,
            reboot: false,
        })
        .await
        .expect_err("malformed config");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("machine config from the API: ")
            && e.message().contains("rol")
            && e.message().contains("line 5"),
        "{e:?}"
    );
    // An invalid value whose error would quote the token: redacted.
    let bad_url = MACHINE_YAML.replace(
        "  name: cairn\n",
        &format!("  name: cairn\n  apiEndpoint: https://admin:{TOKEN}@10.0.0.1:6443/x\n"),
    );
    let e = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: bad_url,
            dry_run: true,
            reboot: false,
        })
        .await
        .expect_err("bad url");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("cluster.apiEndpoint"), "{e:?}");
    assert!(
        e.message().contains("https://admin:REDACTED@10.0.0.1"),
        "{e:?}"
    );
    assert!(!e.message().contains(TOKEN), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), kept, "the file changed");

    // Only admins.
    let e = operator
        .config_apply(ConfigApplyRequest {
            config_yaml: MACHINE_YAML.into(),
            dry_run: true,
            reboot: false,
        })
        .await
        .expect_err("operator ConfigApply");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A valid change, dry run: the diff only.
    let new = MACHINE_YAML.replace(
        "    dhcp: true\n",
        "    dhcp: true\n  sysctls:\n    net.ipv4.ip_forward: \"1\"\n",
    );
    let dry = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: new.clone(),
            dry_run: true,
            reboot: false,
        })
        .await
        .expect("dry run")
        .into_inner();
    assert!(dry.changed);
    assert!(
        dry.diff
            .contains("+  sysctls:\n+    net.ipv4.ip_forward: \"1\"\n"),
        "{}",
        dry.diff
    );
    assert!(
        dry.diff
            .starts_with("--- a/machine.yaml\n+++ b/machine.yaml\n@@ "),
        "{}",
        dry.diff
    );
    assert!(!dry.diff.contains(TOKEN));
    assert!(dry.message.contains("dry run"), "{}", dry.message);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        kept,
        "a dry run changed the file"
    );

    // The same for real.
    let real = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: new.clone(),
            dry_run: false,
            reboot: false,
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(real.changed);
    assert_eq!(real.diff, dry.diff);
    assert!(real.message.contains("next boot"), "{}", real.message);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let got = reader
        .config_get(Empty {})
        .await
        .expect("ConfigGet")
        .into_inner()
        .config_yaml;
    assert_eq!(got, new.replace(TOKEN, "REDACTED"));

    // What ConfigGet returned, applied back: the placeholder keeps the token.
    let fetched = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: new.replace(TOKEN, "REDACTED"),
            dry_run: false,
            reboot: false,
        })
        .await
        .expect("apply the fetched config")
        .into_inner();
    assert!(!fetched.changed, "{fetched:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);

    // Again: nothing to change.
    let again = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: new.clone(),
            dry_run: false,
            reboot: false,
        })
        .await
        .expect("apply again")
        .into_inner();
    assert!(!again.changed && again.diff.is_empty(), "{again:?}");

    // With reboot: kept, and PID 1 is asked to reboot.
    let mut power = f.power.lock().await;
    while power.try_recv().is_ok() {}
    let back = admin
        .config_apply(ConfigApplyRequest {
            config_yaml: MACHINE_YAML.into(),
            dry_run: false,
            reboot: true,
        })
        .await
        .expect("apply with reboot")
        .into_inner();
    assert!(
        back.changed && back.message.contains("rebooting"),
        "{back:?}"
    );
    assert!(back.diff.contains("-  sysctls:\n"), "{}", back.diff);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), MACHINE_YAML);
    let got = tokio::time::timeout(Duration::from_secs(2), power.recv())
        .await
        .expect("no power request");
    assert_eq!(got, Some(PowerAction::Reboot));
    assert!(!logs().contains(TOKEN), "the token was logged");
}

// ---------------------------------------------------------------------------
// 6: logs.

fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn logs_tail_and_follow_new_lines() {
    let f = fixture();
    let mut reader = f.reader().await;
    // Let the ticker write a few lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = reader
            .logs(LogsRequest {
                service: "ticker".into(),
                tail_lines: 3,
                follow: false,
            })
            .await
            .expect("Logs")
            .into_inner();
        let text = collect(stream).await;
        let seen = ticks(&text);
        if seen.len() == 3 {
            assert_eq!(text.lines().count(), 3, "{text}");
            assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ticker wrote too little: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Follow: the last line kept, then the lines written after the call.
    let started = Instant::now();
    let mut stream = reader
        .logs(LogsRequest {
            service: "ticker".into(),
            tail_lines: 1,
            follow: true,
        })
        .await
        .expect("Logs follow")
        .into_inner();
    let mut text = String::new();
    let mut initial: Option<u64> = None;
    let wanted = 4;
    loop {
        let data = next(&mut stream, Duration::from_secs(5))
            .await
            .expect("the follow stream ended");
        text.push_str(&String::from_utf8(data).unwrap());
        let seen = ticks(&text);
        if initial.is_none() {
            initial = seen.first().copied();
        }
        if let Some(first) = initial
            && seen.iter().any(|t| *t >= first + wanted)
        {
            assert!(
                seen.windows(2).all(|w| w[1] == w[0] + 1),
                "lines lost or repeated: {text}"
            );
            assert!(
                started.elapsed() >= Duration::from_millis(500),
                "{wanted} new ticks arrived too soon to have been written after the call"
            );
            break;
        }
    }
    drop(stream);
}

// ---------------------------------------------------------------------------
// 7: version, services, health.

#[tokio::test]
async fn version_services_and_health_for_a_reader() {
    let f = fixture();
    let mut reader = f.reader().await;
    let v = reader
        .version(Empty {})
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.hostname, NODE);
    assert_eq!(v.machine_id, MACHINE_ID);
    assert_eq!(v.node_ip, "127.0.0.1");
    assert_eq!(v.role, "controlplane");
    assert_eq!(
        v.kubernetes_version,
        cairn_machine_config::KUBERNETES_VERSION
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v.kernel, kernel.trim());
    assert!(v.uptime_seconds > 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = services(&mut reader).await;
        let ready = list.iter().any(|s| s.name == "ticker" && s.ready)
            && list
                .iter()
                .any(|s| s.name == "oneshot" && s.state == "exited");
        if ready {
            break list;
        }
        assert!(Instant::now() < deadline, "services not up: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ticker = list.iter().find(|s| s.name == "ticker").unwrap();
    assert_eq!(ticker.state, "ready");
    assert!(ticker.pid > 0);
    assert!(
        ticker.events.iter().any(|e| e.kind == "started"),
        "{ticker:?}"
    );
    for name in ["ticker", "victim", "oneshot"] {
        assert!(
            list.iter().any(|s| s.name == name),
            "{name} missing: {list:?}"
        );
    }

    let health = reader.health(Empty {}).await.expect("Health").into_inner();
    let check = |name: &str| {
        health
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {health:?}"))
    };
    assert!(check("service ticker").ok, "{health:?}");
    assert!(
        check("service oneshot").ok,
        "a one-shot that exited is fine: {health:?}"
    );
    let node = check("kubernetes node Ready");
    assert!(!node.ok, "{health:?}");
    assert!(
        node.detail.contains(&format!("127.0.0.1:{}", f.api_port)) && node.detail.contains(NODE),
        "the node check does not say why: {node:?}"
    );
    assert!(!health.healthy);
}

// ---------------------------------------------------------------------------
// 8: the kernel log.

fn is_dmesg_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once("] ") else {
        return false;
    };
    let Some((secs, micros)) = stamp.trim_start().split_once('.') else {
        return false;
    };
    secs.chars().all(|c| c.is_ascii_digit())
        && micros.len() == 6
        && micros.chars().all(|c| c.is_ascii_digit())
}

#[tokio::test]
async fn dmesg_tails_and_follows_the_kernel_log() {
    let f = fixture();
    let mut reader = f.reader().await;
    let stream = reader
        .dmesg(DmesgRequest {
            tail_lines: 5,
            follow: false,
        })
        .await
        .expect("Dmesg")
        .into_inner();
    let text = collect(stream).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 5, "{text}");
    assert!(lines.iter().all(|l| is_dmesg_line(l)), "{text}");

    // Following: a record written after the call arrives.
    let mut stream = reader
        .dmesg(DmesgRequest {
            tail_lines: 1,
            follow: true,
        })
        .await
        .expect("Dmesg follow")
        .into_inner();
    let first = next(&mut stream, Duration::from_secs(5))
        .await
        .expect("tail");
    assert!(
        is_dmesg_line(String::from_utf8_lossy(&first).trim_end()),
        "{first:?}"
    );
    let marker = format!(
        "cairn-apid test marker {} {}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new("/dev/kmsg"))
        .and_then(|mut k| k.write_all(format!("<6>{marker}\n").as_bytes()))
        .expect("writing to /dev/kmsg");
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text.contains(&marker) {
        assert!(Instant::now() < deadline, "the marker never came: {text}");
        let data = next(&mut stream, Duration::from_secs(5))
            .await
            .expect("follow ended");
        text.push_str(&String::from_utf8_lossy(&data));
    }
    let line = text.lines().find(|l| l.contains(&marker)).unwrap();
    assert!(is_dmesg_line(line), "{line}");
}

// ---------------------------------------------------------------------------
// Shutdown.

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let config = common::config(tmp.path(), &f.root.join("secrets"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cairn_apid::serve(config, listener, async {
        let _ = stopped.await;
    }));
    let tls = common::client_tls(&f.bundle, &f.cert("reader-2", "os:reader"));
    let mut client = common::connect(addr, tls.clone()).await;
    client.version(Empty {}).await.expect("Version");

    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(8), server)
        .await
        .expect("serve did not return")
        .unwrap()
        .expect("serve failed");
    eprintln!("stopped in {:?}", asked.elapsed());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
    drop(client);
}
