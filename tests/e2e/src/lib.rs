//! Shared helpers for the end-to-end tests: the image, booting a node with a
//! generated machine config and secrets bundle (QEMU fw_cfg), `cairnctl` against
//! the node's machine API, etcd (mTLS) and kubectl through forwarded ports.
//!
//! The tests boot the real disk image users get (`out/cairn.qcow2`, built by
//! `cargo run --release -p cairn-image -- image build`) under QEMU with TCG; it has
//! no test-only entry: everything goes through the machine API. They run one VM at
//! a time: the machine has two cores.

#![forbid(unsafe_code)]

pub mod gitops;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_qemu::{Disk, Vm, VmConfig};

/// The machine API (cairn-apid).
pub const API_PORT: u16 = 50000;
/// etcd's client port (mTLS; the node listens on its address too).
pub const ETCD_PORT: u16 = 2379;
/// kube-apiserver's secure port, forwarded for kubectl.
pub const APISERVER_PORT: u16 = 6443;
/// Boot to etcd ready under TCG takes ~15-25 s; leave room for a loaded machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Boot to a Ready node with pods running under TCG takes a few minutes.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(600);
/// The Kubernetes components the init supervises on a node, in start order.
pub const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
];

/// The node's name and QEMU user-network DHCP address.
pub const NODE_NAME: &str = "cairn";
pub const NODE_IP: &str = "10.0.2.15";

static ONE_VM: Mutex<()> = Mutex::new(());

/// Serializes the tests' VMs.
pub fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    ONE_VM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a test VM needs that `cargo test` does not build, if something is missing.
fn missing_prerequisite() -> Option<String> {
    let image = std::env::var_os("CAIRN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("out/cairn.qcow2"));
    if !image.is_file() {
        return Some(format!("the image {} is not built", image.display()));
    }
    if find_cairnctl().is_none() {
        return Some("cairnctl is not built".into());
    }
    if !cairn_qemu::qemu_available() || !cairn_qemu::ovmf_available() {
        return Some("QEMU or OVMF is not installed".into());
    }
    None
}

/// The VM slot ([`one_vm_at_a_time`]) once the image, cairnctl and QEMU are there.
/// Without them, a plain `cargo test` on a fresh checkout skips the test and says
/// what to run first; under `CI=true` (tests/run builds everything) it fails.
pub fn vm_slot() -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = missing_prerequisite() {
        cairn_image::test_rule::skip_outside_ci(&format!(
            "{why}; run `tests/run` (which builds the image and cairnctl) first"
        ));
        return None;
    }
    Some(one_vm_at_a_time())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image: `$CAIRN_TEST_IMAGE` or `<workspace>/out/cairn.qcow2`.
pub fn test_image() -> PathBuf {
    let path = std::env::var_os("CAIRN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("out/cairn.qcow2"));
    assert!(
        path.is_file(),
        "image {} is missing: build it with `cargo run --release -p cairn-image -- image build`",
        path.display()
    );
    path
}

/// A generated node configuration: machine config, secrets bundle and admin
/// kubeconfig, as `cairnctl gen config` writes them. One per test process.
pub struct NodeFiles {
    _dir: tempfile::TempDir,
    pub machine_config: PathBuf,
    pub secrets: PathBuf,
    /// The machine API client config (os:admin).
    pub client_config: PathBuf,
}

/// The shared generated configuration of node `cairn` at 10.0.2.15.
pub fn node_files() -> &'static NodeFiles {
    static FILES: OnceLock<NodeFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = cairnctl::gen_config(&cairnctl::GenOptions {
            name: NODE_NAME.to_string().try_into().expect("node name"),
            ip: NODE_IP.parse().expect("ip"),
            base_config: None,
            endpoint: None,
            out_dir: dir.path().to_path_buf(),
            force: false,
        })
        .expect("cairnctl gen config");
        NodeFiles {
            machine_config: out.machine_config,
            secrets: out.secrets,
            client_config: out.client_config,
            _dir: dir,
        }
    })
}

/// VM settings for a node: its config and secrets through fw_cfg; the machine
/// API, etcd and the API server forwarded.
pub fn node_config() -> VmConfig {
    node_config_with(Some(&node_files().machine_config), true)
}

/// Like [`node_config`] with another (or no) machine config, with or without the
/// secrets bundle.
pub fn node_config_with(machine_config: Option<&Path>, secrets: bool) -> VmConfig {
    let mut fw_cfg = Vec::new();
    if let Some(path) = machine_config {
        fw_cfg.push(("opt/cairn/machine-config".to_string(), path.to_path_buf()));
    }
    if secrets {
        fw_cfg.push((
            "opt/cairn/secrets".to_string(),
            node_files().secrets.clone(),
        ));
    }
    VmConfig {
        forwards: vec![API_PORT, ETCD_PORT, APISERVER_PORT],
        fw_cfg,
        memory_mib: 4096,
        ..VmConfig::default()
    }
}

/// A fresh 4 GiB disk over the image ([`test_image`]).
pub fn fresh_disk() -> Disk {
    fresh_disk_of(&test_image())
}

/// A fresh 4 GiB disk over `image`.
pub fn fresh_disk_of(image: &Path) -> Disk {
    Disk::new(image, Some("4G")).expect("creating a qcow2 overlay over the image")
}

/// The benchmark image (`cairn-image image build --bench`): the image plus the
/// init's unsupervised plain-launch mode.
pub fn bench_image() -> PathBuf {
    let path = workspace().join("out/cairn-bench.qcow2");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo run --release -p cairn-image -- image build --bench`",
        path.display()
    );
    path
}

/// `cairnctl`, the real CLI binary, talking to the VM's forwarded machine API with
/// the test node's admin client config (or another one).
pub struct Cairnctl {
    binary: PathBuf,
    config: PathBuf,
    node: String,
}

/// What one `cairnctl` run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cairnctl {
    /// As the node's administrator ([`node_files`]).
    pub fn new(vm: &Vm) -> Cairnctl {
        Cairnctl::with_config(vm, &node_files().client_config)
    }

    pub fn with_config(vm: &Vm, config: &Path) -> Cairnctl {
        Cairnctl {
            binary: cairnctl_binary(),
            config: config.to_path_buf(),
            node: format!("127.0.0.1:{}", vm.host_port(API_PORT)),
        }
    }

    /// The command for `args`, with the config and the node set.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--cairnconfig")
            .arg(&self.config)
            .args(["--nodes", &self.node])
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs it to the end, whatever the exit code.
    pub fn output(&self, args: &[&str]) -> Result<CliOutput> {
        let out = self.command(args).output().context("running cairnctl")?;
        Ok(CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// stdout of a successful run; an error with stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if out.code != 0 {
            bail!(
                "cairnctl {} exited {}: {}",
                args.join(" "),
                out.code,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// `args` with `-o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).with_context(|| format!("cairnctl output: {text}"))
    }

    /// `cairnctl services`: each service's name and state.
    pub fn services(&self) -> Result<Vec<(String, String)>> {
        let v = self.json(&["services"])?;
        Ok(v.as_array()
            .context("services: not a list")?
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_owned(),
                    s["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Retries until the machine API answers `version` (it starts with the node).
    pub fn wait_for_api(&self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.run(&["version"]) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(
                        e.context(format!("the machine API did not answer within {timeout:?}"))
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// `$CAIRNCTL`, else the workspace's build in the profile these tests were built
/// with (tests/run builds both with `test-release`), else release, else debug.
pub fn cairnctl_binary() -> PathBuf {
    find_cairnctl().unwrap_or_else(|| {
        panic!(
            "cairnctl is not built: run `cargo build --profile test-release -p cairnctl` (or set $CAIRNCTL)"
        )
    })
}

fn find_cairnctl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRNCTL") {
        return Some(PathBuf::from(p));
    }
    // A test runs from <target>/<profile>/deps/, a binary from <target>/<profile>/.
    let own = std::env::current_exe().ok().and_then(|exe| {
        let mut dir = exe.parent()?.to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        Some(dir.file_name()?.to_str()?.to_owned())
    });
    for profile in own.iter().map(String::as_str).chain(["release", "debug"]) {
        let p = cairn_image::static_bins::target_dir(&workspace())
            .join(profile)
            .join("cairnctl");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// An etcd client through the forwarded client port (mTLS with the bundle's
/// health-check client certificate), on its own small runtime.
pub struct Etcd {
    rt: tokio::runtime::Runtime,
    endpoint: String,
    tls: etcd_client::TlsOptions,
}

impl Etcd {
    pub fn new(vm: &Vm) -> Etcd {
        let text = std::fs::read_to_string(&node_files().secrets).expect("secrets");
        let bundle = cairn_pki::Bundle::from_document(&text).expect("bundle");
        let file = |p: &str| {
            bundle
                .get(p)
                .unwrap_or_else(|| panic!("{p} in the bundle"))
                .bytes()
                .to_vec()
        };
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(file(
                cairn_pki::paths::ETCD_CA.crt,
            )))
            .identity(etcd_client::Identity::from_pem(
                file(cairn_pki::paths::ETCD_HEALTHCHECK_CLIENT.crt),
                file(cairn_pki::paths::ETCD_HEALTHCHECK_CLIENT.key),
            ));
        Etcd {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            endpoint: format!("https://127.0.0.1:{}", vm.host_port(ETCD_PORT)),
            tls,
        }
    }

    async fn client(&self) -> Result<etcd_client::Client> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_tls(self.tls.clone());
        Ok(etcd_client::Client::connect([self.endpoint.as_str()], Some(opts)).await?)
    }

    /// Writes a key; returns once etcd acknowledged it (committed to its WAL).
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.rt.block_on(async {
            self.client().await?.put(key, value, None).await?;
            Ok(())
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        self.rt.block_on(async {
            let resp = self.client().await?.get(key, None).await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }
}

/// `https://127.0.0.1:<host port of the guest's 6443>`.
pub fn forwarded_apiserver(vm: &Vm) -> String {
    format!("https://127.0.0.1:{}", vm.host_port(APISERVER_PORT))
}

/// kubectl (the pinned build from the component cache) with the admin kubeconfig
/// pointed at the VM's forwarded API server.
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: tempfile::NamedTempFile,
}

impl Kubectl {
    /// With the test node's bundle ([`node_files`]).
    pub fn new(vm: &Vm) -> Result<Kubectl> {
        Kubectl::with_secrets(vm, &node_files().secrets)
    }

    /// With the admin identity of the bundle document `secrets`.
    pub fn with_secrets(vm: &Vm, secrets: &Path) -> Result<Kubectl> {
        let text = cairnctl::admin_kubeconfig(secrets, Some(&forwarded_apiserver(vm)))?;
        Kubectl::with_kubeconfig(&text)
    }

    /// With the kubeconfig the node's machine API hands out (`cairnctl kubeconfig`),
    /// pointed at the forwarded API server.
    pub fn from_machine_api(vm: &Vm) -> Result<Kubectl> {
        let text = Cairnctl::new(vm).run(&["kubeconfig", "--server", &forwarded_apiserver(vm)])?;
        Kubectl::with_kubeconfig(&text)
    }

    pub fn with_kubeconfig(text: &str) -> Result<Kubectl> {
        let report = cairn_image::components::cached(&["kubernetes"])?;
        let binary = report.binary("kubernetes", "kubectl")?;
        let mut kubeconfig = tempfile::NamedTempFile::new()?;
        kubeconfig.write_all(text.as_bytes())?;
        Ok(Kubectl { binary, kubeconfig })
    }

    /// Runs kubectl; stdout on success, an error with stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with_input(args, None)
    }

    /// Runs kubectl with `input` on stdin (e.g. `apply -f -`).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(self.kubeconfig.path())
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Retries `args` every second until `done(stdout)` holds or `timeout` passes;
    /// returns the last output or the last error.
    pub fn wait_until(
        &self,
        args: &[&str],
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = self.run(args);
            match &last {
                Ok(out) if done(out) => return last,
                _ if std::time::Instant::now() >= deadline => {
                    return match last {
                        Ok(out) => Err(anyhow::anyhow!(
                            "kubectl {}: condition not met within {timeout:?}; last output:\n{out}",
                            args.join(" ")
                        )),
                        Err(e) => Err(e.context(format!("not met within {timeout:?}"))),
                    };
                }
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
}

/// The `p` quantile (0..=1) of `v` by the nearest rank; sorts `v`.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}
