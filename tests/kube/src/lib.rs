//! Test fixture: a REAL etcd, kube-apiserver and kube-controller-manager on
//! 127.0.0.1, from the pinned components in the component cache.
//!
//! Each component runs with the node's own flags: the fixture fills the service
//! catalog's config structs (`cairn_services::{etcd, kube_apiserver,
//! kube_controller_manager}`) with this test's binaries, temporary directories and
//! free loopback ports, and runs the command line of the resulting spec. The
//! secrets bundle is a fresh cairn-pki bundle for a node at 127.0.0.1; the
//! cluster's RBAC bindings (`cluster_objects`) are applied, so the admin kubeconfig
//! (group `kubeadm:cluster-admins`) is cluster-admin as on a node. There is no
//! scheduler and no kubelet: pods stay Pending. The `kubernetes` Service has no
//! endpoints (the API server logs that its advertise address, 127.0.0.1, is refused
//! in Endpoints); nothing reaches the API through it here.
//!
//! [`KubeFixture::start`] returns once the API server's `/readyz` answers, the admin
//! kubeconfig is authorized and the controller-manager runs its controllers (the
//! `default` ServiceAccount exists). [`shared`] is one fixture per test process.
//!
//! Every child is started from one long-lived thread with `PR_SET_PDEATHSIG`
//! (SIGKILL), so a crashed or killed test never leaks processes; dropping the
//! fixture kills its children by pid and reaps them. Nothing else in the test
//! process may reap them (no `waitpid(-1)` reaper), or their pids are gone too early.
//!
//! Needs a warm component cache: run
//! `cargo run --release -p cairn-image -- components build` first.
//!
//! [`gitops`] runs the GitOps reconciler against the shared fixture.

pub mod gitops;

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use cairn_machine_config::MachineConfig;
use cairn_pki::{ClusterParams, Existing, OffsetDateTime, paths};
use cairn_services::etcd::EtcdConfig;
use cairn_services::kube_apiserver::ApiserverConfig;
use cairn_services::kube_controller_manager::ControllerManagerConfig;
use cairn_services::kubeapi::ApiClient;
use cairn_services::{Paths, cluster_objects, etcd, kube_apiserver, kube_controller_manager};
use cairn_supervisor::ServiceSpec;

/// How long [`KubeFixture::start`] waits for the whole control plane.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOG_TAIL_LINES: usize = 40;

/// A running etcd + kube-apiserver + kube-controller-manager in a temporary
/// directory; dropping it kills the processes and removes the directory.
pub struct KubeFixture {
    dir: tempfile::TempDir,
    children: Mutex<Vec<Proc>>,
    api_port: u16,
    etcd_port: u16,
    kubectl: PathBuf,
    kubeconfig: String,
    started_in: Duration,
}

/// The PEM files an etcd client (e.g. `etcd-client`) needs: the etcd CA, and the
/// API server's etcd client certificate and key (full access: etcd runs without
/// its own auth, trusting every certificate of its CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One started component and its log file (stdout and stderr).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl KubeFixture {
    /// Starts etcd, waits for its health, then kube-apiserver; once `/readyz`
    /// answers, kube-controller-manager. Returns when the API server is ready, the
    /// admin kubeconfig is authorized and the controllers run, or fails after
    /// [`START_TIMEOUT`] with the tail of every component's log.
    pub fn start() -> Result<KubeFixture> {
        let t0 = Instant::now();
        let deadline = t0 + START_TIMEOUT;
        // Looking a component up hash-checks its binaries (about a second for
        // kubernetes), so kubernetes is looked up while etcd starts.
        let kubernetes = std::thread::spawn(|| {
            binaries(
                "kubernetes",
                ["kube-apiserver", "kube-controller-manager", "kubectl"],
            )
        });
        let [etcd_binary] = binaries("etcd", ["etcd"])?;
        let dir = tempfile::Builder::new()
            .prefix("cairn-testkube-")
            .tempdir()
            .context("creating the fixture's temporary directory")?;
        std::fs::create_dir(dir.path().join("logs")).context("creating the logs directory")?;
        let [etcd_port, peer_port, metrics_port, api_port, kcm_port] = free_ports()?;
        let api_server = format!("https://127.0.0.1:{api_port}");

        let machine = MachineConfig::parse("kube fixture", MachineConfig::default_document())
            .context("the default machine config")?;
        let paths = Paths {
            bin: dir.path().join("bin"),
            var_lib: dir.path().join("var-lib"),
            secrets: dir.path().join("secrets"),
        };
        let mut params =
            ClusterParams::from_machine_config(&machine, LOCALHOST, OffsetDateTime::now_utc());
        params.local_server = api_server.clone();
        params.external_server = api_server.clone();
        cairn_pki::generate(&params)
            .context("generating the secrets bundle")?
            .write_to(&paths.secrets, Existing::Keep)
            .context("writing the secrets bundle")?;
        let read = |rel: &str| {
            std::fs::read_to_string(paths.secrets.join(rel))
                .with_context(|| format!("reading {rel} of the bundle"))
        };
        let kubeconfig = read(paths::ADMIN_CONF)?;
        let client = |rel: &str| -> Result<ApiClient> {
            ApiClient::from_kubeconfig(rel, &read(rel)?, None).with_context(|| rel.to_owned())
        };
        let root = client(paths::SUPER_ADMIN_CONF)?;
        let admin = client(paths::ADMIN_CONF)?;

        let mut fixture = KubeFixture {
            children: Mutex::new(Vec::new()),
            api_port,
            etcd_port,
            kubectl: PathBuf::new(),
            kubeconfig,
            started_in: Duration::ZERO,
            dir,
        };

        let tls = etcd::EtcdTls::from_bundle(&paths.secrets);
        let mut etcd = EtcdConfig::from_machine(&machine, &paths).with_tls(tls.clone());
        etcd.binary = etcd_binary;
        (etcd.client_port, etcd.peer_port, etcd.metrics_port) =
            (etcd_port, peer_port, metrics_port);
        let etcd_spec = etcd::spec(&etcd);
        fixture.launch(&etcd_spec)?;
        let url = etcd.client_url();
        fixture.wait_for("etcd /readyz", deadline, || {
            block_on(etcd_spec.readiness.check_once(Duration::from_secs(2)))
        })?;

        let [apiserver_binary, kcm_binary, kubectl] = kubernetes
            .join()
            .map_err(|_| anyhow!("the kubernetes lookup panicked"))??;
        fixture.kubectl = kubectl;
        let mut apiserver = ApiserverConfig::from_machine(&machine, &paths, LOCALHOST);
        apiserver.binary = apiserver_binary;
        apiserver.bind_address = LOCALHOST;
        apiserver.secure_port = api_port;
        apiserver.etcd_servers = vec![url];
        fixture.launch(&kube_apiserver::spec(&apiserver))?;
        fixture.wait_for("kube-apiserver /readyz", deadline, || {
            block_on(root.get("/readyz"))
        })?;

        let mut kcm = ControllerManagerConfig::from_machine(&machine, &paths);
        kcm.binary = kcm_binary;
        kcm.secure_port = kcm_port;
        fixture.launch(&kube_controller_manager::spec(&kcm))?;

        // While the controller-manager starts: the bindings that make the admin
        // kubeconfig cluster-admin, applied as system:masters like the init does.
        let objects = cluster_objects::objects(&machine, false).context("the cluster objects")?;
        for object in objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
            let name = cairn_services::kubeapi::describe(object);
            block_on(root.apply(object))
                .and_then(|r| r.map_err(|e| anyhow!("{e}")))
                .with_context(|| format!("applying {name}"))?;
        }
        fixture.wait_for("the admin kubeconfig's authorization", deadline, || {
            block_on(admin.get("/api/v1/namespaces/kube-system/configmaps"))
        })?;
        fixture.wait_for(
            "the controller-manager (the default ServiceAccount)",
            deadline,
            || block_on(admin.get("/api/v1/namespaces/default/serviceaccounts/default")),
        )?;
        fixture.started_in = t0.elapsed();
        Ok(fixture)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn api_server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The admin kubeconfig (cluster-admin, certificates embedded, server
    /// [`KubeFixture::api_server`]).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.secrets().join(paths::ADMIN_CONF)
    }

    /// The text of [`KubeFixture::kubeconfig_path`].
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig.clone()
    }

    /// The root of the cluster's cairn-pki secrets bundle (kubeadm's layout).
    pub fn secrets(&self) -> PathBuf {
        self.dir().join("secrets")
    }

    /// `https://127.0.0.1:PORT` (client certificates required, see [`KubeFixture::etcd_tls`]).
    pub fn etcd_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.etcd_port)
    }

    /// The files an etcd client authenticates with.
    pub fn etcd_tls(&self) -> EtcdTls {
        let s = self.secrets();
        EtcdTls {
            ca: s.join(paths::ETCD_CA.crt),
            cert: s.join(paths::APISERVER_ETCD_CLIENT.crt),
            key: s.join(paths::APISERVER_ETCD_CLIENT.key),
        }
    }

    /// Runs the pinned kubectl with the admin kubeconfig; its stdout, or an error
    /// with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.run_kubectl(args, None)
    }

    /// [`KubeFixture::kubectl`] with `input` on stdin (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        self.run_kubectl(args, Some(input))
    }

    /// The pinned kubectl.
    pub fn kubectl_binary(&self) -> PathBuf {
        self.kubectl.clone()
    }

    /// The temporary directory: `secrets/`, `var-lib/etcd`, `logs/<component>.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long [`KubeFixture::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The pids of the running components.
    pub fn pids(&self) -> Vec<u32> {
        self.procs().iter().map(|p| p.child.id()).collect()
    }

    /// The last lines of every component's log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.procs().iter().map(tail).collect()
    }

    fn procs(&self) -> MutexGuard<'_, Vec<Proc>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pinned kubectl with the admin kubeconfig and the fixture's cache
    /// directory, to add arguments to (for a long-running `kubectl get --watch`).
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig_path().display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir().join("kubectl-cache").display()
            ));
        cmd
    }

    fn run_kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut cmd = self.kubectl_command();
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = || format!("kubectl {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", what()))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            io::Write::write_all(&mut stdin, input.as_bytes())
                .with_context(|| format!("writing the stdin of {}", what()))?;
        }
        let out = child.wait_with_output().with_context(what)?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                what(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("the output of {}", what()))
    }

    /// Runs a catalog spec's command line and environment, output to `logs/<name>.log`.
    fn launch(&self, spec: &ServiceSpec) -> Result<()> {
        let log = self.dir().join("logs").join(format!("{}.log", spec.name));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&spec.command);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("duplicating the log file")?)
            .stderr(out);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(
                || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                },
            );
        }
        let child = spawn(cmd)
            .with_context(|| format!("starting {} ({})", spec.name, spec.command.display()))?;
        self.procs().push(Proc {
            name: spec.name.clone(),
            child,
            log,
        });
        Ok(())
    }

    /// Polls `probe` until it succeeds; fails when a component exits or at `deadline`.
    fn wait_for<T, E: std::fmt::Display>(
        &self,
        what: &str,
        deadline: Instant,
        mut probe: impl FnMut() -> Result<std::result::Result<T, E>>,
    ) -> Result<()> {
        loop {
            let last = match probe()? {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            let exited = self
                .procs()
                .iter_mut()
                .find_map(|p| match p.child.try_wait() {
                    Ok(Some(status)) => Some(format!("{} exited ({status})", p.name)),
                    _ => None,
                });
            if let Some(exited) = exited {
                bail!(
                    "{exited} while waiting for {what}; last: {last}\n{}",
                    self.log_tails()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not ready after {} s; last: {last}\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills every component (SIGKILL, by pid, newest first) and reaps it.
    fn stop(&self) {
        let mut procs = self.procs();
        while let Some(mut p) = procs.pop() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Drop for KubeFixture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process-wide fixture, started on first use and shared by every test of the
/// process; its components are killed and its directory removed at process exit.
/// Panics (in every caller) if it cannot start.
pub fn shared() -> &'static KubeFixture {
    static SHARED: OnceLock<std::result::Result<KubeFixture, String>> = OnceLock::new();
    extern "C" fn stop_shared() {
        if let Some(Ok(f)) = SHARED.get() {
            f.stop();
            let _ = std::fs::remove_dir_all(f.dir());
        }
    }
    let fixture = SHARED.get_or_init(|| {
        let f = KubeFixture::start().map_err(|e| format!("{e:#}"))?;
        // SAFETY: registers a plain function without state; it runs at exit, after
        // the tests, and only kills and reaps this fixture's children.
        unsafe { libc::atexit(stop_shared) };
        Ok(f)
    });
    match fixture {
        Ok(f) => f,
        Err(e) => panic!("starting the shared Kubernetes fixture: {e}"),
    }
}

/// The paths of the binaries `names` of the pinned `component`, from the
/// component cache (which builds nothing here: a cold cache is an error).
fn binaries<const N: usize>(component: &str, names: [&str; N]) -> Result<[PathBuf; N]> {
    let report = cairn_image::components::cached(&[component]).with_context(|| {
        format!(
            "the pinned {component} from the component cache (fill it with \
             `cargo run --release -p cairn-image -- components build`)"
        )
    })?;
    let mut paths = names.map(|_| PathBuf::new());
    for (path, name) in paths.iter_mut().zip(names) {
        *path = report
            .binary(component, name)
            .with_context(|| format!("{component}'s {name}"))?;
        anyhow::ensure!(path.is_file(), "{} is missing", path.display());
    }
    Ok(paths)
}

/// The last [`LOG_TAIL_LINES`] lines of a component's log, headed by its name.
fn tail(p: &Proc) -> String {
    let text = std::fs::read_to_string(&p.log).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    format!(
        "--- {} ({}), last lines ---\n{}\n",
        p.name,
        p.log.display(),
        lines[start..].join("\n")
    )
}

/// `N` distinct free loopback ports (bound together, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0")?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr().context("a listener's address")?.port();
    }
    Ok(ports)
}

/// Runs `fut` on a fresh runtime in a scoped thread, so it works whether or not
/// the caller is inside a Tokio runtime.
fn block_on<T: Send>(fut: impl Future<Output = T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a Tokio runtime")?;
            Ok(rt.block_on(fut))
        })
        .join()
        .map_err(|_| anyhow!("a probe thread panicked"))?
    })
}

/// Spawns `cmd` from one thread that lives as long as the process:
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, so a
/// child started from a test's own thread would die with that test.
fn spawn(cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<io::Result<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkube-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(tx)
    });
    let gone = || io::Error::other("the spawner thread is gone");
    let spawner = spawner
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("starting the spawner thread: {e}")))?;
    let (reply, answer) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}
