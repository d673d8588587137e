//! The control plane from the catalog, run by the REAL supervisor with the REAL
//! pinned binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! kubectl) on 127.0.0.1, with a secrets bundle made by cairn-pki.
//!
//! Needs a warm component cache (`Cache::from_env()`): run
//! `cargo run --release -p cairn-image -- components build` first. On a cold cache
//! the test fails with that instruction; it never passes vacuously.
//!
//! Everything runs in one `#[test]`: the supervisor's reaper calls `waitpid(-1)`, so
//! this process may have one supervisor and nothing else that waits for children.
//! kubectl is therefore run as a one-shot supervised service (restart: never), its
//! output redirected to a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use cairn_machine_config::MachineConfig;
use cairn_pki::{ClusterParams, Existing, Hostname, OffsetDateTime, paths};
use cairn_services::{ControlPlaneOptions, Paths, Ports, control_plane};
use cairn_supervisor::{
    Event, EventKind, ExitStatusKind, RestartPolicy, ServiceSpec, Supervisor, SupervisorConfig,
};
use tokio::sync::broadcast;

const WARM_HINT: &str = "the component cache is cold or incomplete: run \
    `cargo run --release -p cairn-image -- components build` first";

const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// How long the whole control plane may take to become ready (a slow 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The pinned binaries, linked into one directory (the catalog expects one `bin`).
fn components(bin: &Path) -> Result<()> {
    let report = cairn_image::components::cached(&["etcd", "kubernetes"])?;
    std::fs::create_dir_all(bin).with_context(|| format!("creating {}", bin.display()))?;
    for (component, binary) in [
        ("etcd", "etcd"),
        ("kubernetes", "kube-apiserver"),
        ("kubernetes", "kube-controller-manager"),
        ("kubernetes", "kube-scheduler"),
        ("kubernetes", "kubectl"),
    ] {
        let path = report.binary(component, binary)?;
        ensure!(path.is_file(), "{WARM_HINT}: {} is missing", path.display());
        std::os::unix::fs::symlink(&path, bin.join(binary))
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(())
}

/// Six distinct free loopback ports (all held open at once, then released).
fn free_ports() -> Result<Ports> {
    let listeners = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0")?;
    let p = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ports {
        etcd_client: p[0],
        etcd_peer: p[1],
        etcd_metrics: p[2],
        apiserver: p[3],
        controller_manager: p[4],
        scheduler: p[5],
    })
}

/// Every event seen, with helpers to wait for specific ones.
struct Events {
    rx: broadcast::Receiver<Event>,
    seen: Vec<Event>,
}

impl Events {
    async fn wait_for(
        &mut self,
        service: &str,
        what: &str,
        deadline: tokio::time::Instant,
        pred: impl Fn(&EventKind) -> bool,
    ) -> Result<Event> {
        let matches = |e: &Event| e.service == service && pred(&e.kind);
        if let Some(e) = self.seen.iter().find(|e| matches(e)) {
            return Ok(e.clone());
        }
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Ok(event)) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return Ok(event);
                    }
                }
                Ok(Err(e)) => bail!("event stream broke: {e}"),
                Err(_) => bail!(
                    "timed out waiting for {service} {what}; saw:\n{}",
                    self.dump()
                ),
            }
        }
    }

    /// Records whatever has arrived without waiting.
    fn drain(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push(event);
        }
    }

    fn index(&self, service: &str, pred: impl Fn(&EventKind) -> bool) -> Result<usize> {
        self.seen
            .iter()
            .position(|e| e.service == service && pred(&e.kind))
            .ok_or_else(|| anyhow!("no such event for {service}; saw:\n{}", self.dump()))
    }

    fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|e| format!("  {} {:?}", e.service, e.kind))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs kubectl as a one-shot supervised service; returns (exit status, output).
struct Kubectl {
    bin: PathBuf,
    dir: PathBuf,
    runs: usize,
}

impl Kubectl {
    async fn run(
        &mut self,
        sup: &Supervisor,
        events: &mut Events,
        kubeconfig: &Path,
        args: &[&str],
    ) -> Result<(ExitStatusKind, String)> {
        self.runs += 1;
        let name = format!("kubectl-{}", self.runs);
        let out = self.dir.join(format!("{name}.out"));
        let mut argv: Vec<String> = vec![
            "-c".into(),
            r#"out="$1"; shift; exec "$@" >"$out" 2>&1"#.into(),
            "sh".into(),
            out.display().to_string(),
            self.bin.display().to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--request-timeout=20s".into(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_string()));
        let spec = ServiceSpec::new(&name, "/bin/sh")
            .args(argv)
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.display().to_string())
            .restart(RestartPolicy::Never);
        sup.add(vec![spec])
            .await
            .with_context(|| format!("adding {name}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let exited = events
            .wait_for(&name, "exit", deadline, |k| {
                matches!(k, EventKind::Exited { .. })
            })
            .await?;
        let EventKind::Exited { status } = exited.kind else {
            bail!("{name}: unexpected event {:?}", exited.kind);
        };
        let output =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        Ok((status, output))
    }

    /// Like `run`, but the command must succeed.
    async fn ok(
        &mut self,
        sup: &Supervisor,
        events: &mut Events,
        kubeconfig: &Path,
        args: &[&str],
    ) -> Result<String> {
        let (status, output) = self.run(sup, events, kubeconfig, args).await?;
        ensure!(
            status.success(),
            "kubectl {args:?} exited with {status}:\n{output}"
        );
        Ok(output)
    }
}

#[test]
fn control_plane_comes_up_serves_kubectl_and_stops_in_order() -> Result<()> {
    let tmp = tempfile::tempdir().context("tempdir")?;
    let root = tmp.path();
    let bin = root.join("bin");
    components(&bin)?;

    // The secrets bundle for node-1 at 127.0.0.1, kubeconfigs at the chosen port.
    let ports = free_ports()?;
    let server = format!("https://127.0.0.1:{}", ports.apiserver);
    let node = Hostname::try_from("node-1".to_string())?;
    let mut params = ClusterParams::new(node, "127.0.0.1".parse()?, OffsetDateTime::now_utc());
    params.local_server = server.clone();
    params.external_server = server;
    let secrets = root.join("secrets");
    cairn_pki::generate(&params)?
        .write_to(&secrets, Existing::Keep)
        .context("writing the secrets bundle")?;

    let doc = MachineConfig::default_document().replace("hostname: cairn", "hostname: node-1");
    let mc = MachineConfig::parse("test", &doc)?;
    let paths = Paths {
        bin: bin.clone(),
        var_lib: root.join("var-lib"),
        secrets: secrets.clone(),
    };
    std::fs::create_dir_all(&paths.var_lib)?;
    let opts = ControlPlaneOptions {
        advertise_ip: "127.0.0.1".parse()?,
        apiserver_bind: "127.0.0.1".parse()?,
        ports,
    };
    let specs = control_plane(&mc, &paths, &opts);
    eprintln!("ports: {ports:?}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let log_dir = root.join("logs");
        let sup = cairn_supervisor::spawn(SupervisorConfig {
            log_dir: Some(log_dir.clone()),
            cgroup_root: None,
        });
        cairn_supervisor::spawn_reaper(sup.clone());
        let mut events = Events {
            rx: sup.subscribe(),
            seen: Vec::new(),
        };
        let mut kubectl = Kubectl {
            bin: bin.join("kubectl"),
            dir: root.to_path_buf(),
            runs: 0,
        };
        let result = exercise(&sup, &mut events, &mut kubectl, specs, &secrets, ports).await;
        if result.is_err() {
            for name in CONTROL_PLANE {
                if let Ok(log) = sup.logs(name).await {
                    let text = String::from_utf8_lossy(&log);
                    let tail: Vec<&str> = text.lines().rev().take(25).collect();
                    eprintln!("--- last lines of {name} ---");
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        // Always stop everything, even after a failure: the children must not outlive
        // the test.
        let stop_started = Instant::now();
        sup.shutdown().await;
        eprintln!(
            "shutdown took {:.1} s",
            stop_started.elapsed().as_secs_f64()
        );
        events.drain();
        result?;
        check_stop_order(&events)
    })
}

/// Brings the control plane up and talks to it with kubectl.
async fn exercise(
    sup: &Supervisor,
    events: &mut Events,
    kubectl: &mut Kubectl,
    specs: Vec<ServiceSpec>,
    secrets: &Path,
    ports: Ports,
) -> Result<()> {
    let started = Instant::now();
    sup.add(specs).await.context("adding the control plane")?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut ready = BTreeMap::new();
    for name in CONTROL_PLANE {
        let event = events
            .wait_for(name, "ready", deadline, |k| *k == EventKind::Ready)
            .await?;
        let at = event.at.duration_since(started);
        eprintln!("ready: {name} after {:.1} s", at.as_secs_f64());
        ready.insert(name, at);
    }
    // Dependency order: each starts only after what it depends on is ready.
    let is_ready = |k: &EventKind| *k == EventKind::Ready;
    let is_starting = |k: &EventKind| *k == EventKind::Starting;
    let etcd_ready = events.index("etcd", is_ready)?;
    let api_starting = events.index("kube-apiserver", is_starting)?;
    let api_ready = events.index("kube-apiserver", is_ready)?;
    ensure!(
        etcd_ready < api_starting,
        "apiserver started before etcd was ready:\n{}",
        events.dump()
    );
    for dependent in ["kube-controller-manager", "kube-scheduler"] {
        let starting = events.index(dependent, is_starting)?;
        ensure!(
            api_ready < starting,
            "{dependent} started before the apiserver was ready:\n{}",
            events.dump()
        );
    }

    // etcd serves TLS only: the plain probe is refused, the TLS one (CA + client
    // certificate from the bundle) passes.
    let endpoint = format!("127.0.0.1:{}", ports.etcd_client);
    ensure!(
        linearizable_read(&endpoint, None).await.is_err(),
        "etcd answered plain HTTP on {endpoint}"
    );
    let tls = cairn_services::etcd::EtcdTls::from_bundle(secrets);
    let identity = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&tls.ca)?))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&tls.healthcheck_cert)?,
            std::fs::read(&tls.healthcheck_key)?,
        ));
    linearizable_read(&format!("https://{endpoint}"), Some(identity))
        .await
        .context("TLS health check")?;

    let admin = secrets.join(paths::ADMIN_CONF);
    let super_admin = secrets.join(paths::SUPER_ADMIN_CONF);

    let readyz = kubectl
        .ok(sup, events, &admin, &["get", "--raw", "/readyz"])
        .await?;
    ensure!(readyz.trim() == "ok", "/readyz answered {readyz:?}");

    // admin.conf's group kubeadm:cluster-admins has no rights until it is bound to
    // cluster-admin; like kubeadm, do that once with the break-glass super-admin.
    kubectl
        .ok(
            sup,
            events,
            &super_admin,
            &[
                "create",
                "clusterrolebinding",
                "kubeadm:cluster-admins",
                "--clusterrole=cluster-admin",
                "--group=kubeadm:cluster-admins",
            ],
        )
        .await?;

    let namespaces = kubectl
        .ok(sup, events, &admin, &["get", "namespaces", "-o", "name"])
        .await?;
    for ns in ["namespace/default", "namespace/kube-system"] {
        ensure!(
            namespaces.lines().any(|l| l.trim() == ns),
            "{ns} missing from:\n{namespaces}"
        );
    }

    kubectl
        .ok(
            sup,
            events,
            &admin,
            &[
                "-n",
                "default",
                "create",
                "configmap",
                "cairn-test",
                "--from-literal=greeting=hello",
            ],
        )
        .await?;
    let value = kubectl
        .ok(
            sup,
            events,
            &admin,
            &[
                "-n",
                "default",
                "get",
                "configmap",
                "cairn-test",
                "-o",
                "jsonpath={.data.greeting}",
            ],
        )
        .await?;
    ensure!(value.trim() == "hello", "configmap read back {value:?}");

    // The controller-manager's serviceaccount controller creates `default` in every
    // namespace.
    let sa_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, output) = kubectl
            .run(
                sup,
                events,
                &admin,
                &[
                    "-n",
                    "default",
                    "get",
                    "serviceaccount",
                    "default",
                    "-o",
                    "name",
                ],
            )
            .await?;
        if status.success() && output.trim() == "serviceaccount/default" {
            eprintln!(
                "default ServiceAccount after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > sa_deadline {
            bail!(
                "no default ServiceAccount in default after 60 s; last answer ({status}):\n{output}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Stopped in reverse dependency order: scheduler and controller-manager before the
/// apiserver, the apiserver before etcd.
fn check_stop_order(events: &Events) -> Result<()> {
    let is_stopped = |k: &EventKind| *k == EventKind::Stopped;
    let at = |name: &str| events.index(name, is_stopped);
    let (etcd, api) = (at("etcd")?, at("kube-apiserver")?);
    let (kcm, sched) = (at("kube-controller-manager")?, at("kube-scheduler")?);
    ensure!(
        kcm < api && sched < api,
        "a dependent stopped after the apiserver:\n{}",
        events.dump()
    );
    ensure!(
        api < etcd,
        "the apiserver stopped after etcd:\n{}",
        events.dump()
    );
    let stopped: Vec<&str> = events
        .seen
        .iter()
        .filter(|e| is_stopped(&e.kind) && CONTROL_PLANE.contains(&e.service.as_str()))
        .map(|e| e.service.as_str())
        .collect();
    eprintln!("stop order: {stopped:?}");
    Ok(())
}

/// A linearizable read through etcd's client port (it needs a leader and an
/// applied log), plain or with TLS.
async fn linearizable_read(endpoint: &str, tls: Option<etcd_client::TlsOptions>) -> Result<()> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        opts = opts.with_tls(tls);
    }
    let mut client = etcd_client::Client::connect([endpoint], Some(opts))
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))?;
    client
        .get("/cairn/health", None)
        .await
        .with_context(|| format!("linearizable read from etcd at {endpoint}"))?;
    Ok(())
}
