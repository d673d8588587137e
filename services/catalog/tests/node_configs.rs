//! The node's rendered configuration files, checked by the REAL pinned binaries:
//!
//! - containerd loads the rendered config (`containerd --config <file> config
//!   dump`): it exits 0, warns about no unknown key, every key we write exists in
//!   `containerd config default` (so a misspelt key fails even where containerd
//!   would silently keep it, as in the runc options map), and the dump carries our
//!   values;
//! - kube-proxy loads and validates the rendered `KubeProxyConfiguration`
//!   (`--config <file> --write-config-to <out>`, which loads with strict decoding,
//!   validates and writes the effective config, then exits) without falling back to
//!   lenient decoding, and the effective config carries our values;
//! - the CNI plugins speak CNI 1.0.0, and host-local allocates an address of the
//!   node's subnet from the rendered conflist's IPAM section (no network namespace
//!   is needed for host-local alone).
//!
//! kubelet has no way to load its configuration without starting, so its document
//! is only unit-tested.
//!
//! Needs a warm component cache (`Cache::from_env()`): run
//! `cargo run --release -p cairn-image -- components build` first. On a cold cache
//! the tests fail with that instruction; they never pass vacuously.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, ensure};
use cairn_machine_config::MachineConfig;
use cairn_services::Paths;
use cairn_services::cni::CniConfig;
use cairn_services::containerd::{ContainerdConfig, PAUSE_IMAGE};
use cairn_services::kube_proxy::KubeProxyConfig;

const WARM_HINT: &str = "the component cache is cold or incomplete: run \
    `cargo run --release -p cairn-image -- components build` first";

const COMPONENTS: [&str; 3] = ["containerd", "kubernetes", "cni-plugins"];

/// The pinned binaries these tests run.
struct Bins {
    containerd: PathBuf,
    kube_proxy: PathBuf,
    /// CNI plugin name -> binary.
    cni: BTreeMap<&'static str, PathBuf>,
}

/// Resolved once for all tests of this binary (they run in parallel).
fn bins() -> Result<&'static Bins> {
    static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| resolve().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn resolve() -> Result<Bins> {
    let report = cairn_image::components::cached(&COMPONENTS)?;
    let binary = |component: &str, name: &str| -> Result<PathBuf> {
        let path = report.binary(component, name)?;
        ensure!(path.is_file(), "{WARM_HINT}: {} is missing", path.display());
        Ok(path)
    };
    let mut cni = BTreeMap::new();
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        cni.insert(plugin, binary("cni-plugins", plugin)?);
    }
    Ok(Bins {
        containerd: binary("containerd", "containerd")?,
        kube_proxy: binary("kubernetes", "kube-proxy")?,
        cni,
    })
}

fn machine() -> Result<MachineConfig> {
    Ok(MachineConfig::parse(
        "default",
        MachineConfig::default_document(),
    )?)
}

/// Runs a command to completion (stdin from `input`), failing with its output
/// unless it exits 0.
fn run(cmd: &mut Command, input: &str) -> Result<Output> {
    use std::io::Write as _;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {what}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Every leaf of a TOML document by its dotted path (`plugins/<id>/cni/conf_dir`).
fn toml_leaves(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                toml_leaves(&format!("{prefix}/{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn leaves(text: &str, what: &str) -> Result<BTreeMap<String, toml::Value>> {
    let v: toml::Value = toml::from_str(text).with_context(|| format!("parsing {what}"))?;
    let mut out = BTreeMap::new();
    toml_leaves("", &v, &mut out);
    Ok(out)
}

#[test]
fn containerd_loads_the_rendered_config() -> Result<()> {
    let bins = bins()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = ContainerdConfig::from_machine(&machine()?, &Paths::node());
    cfg.config_file = dir.path().join("config.toml");
    cfg.root = dir.path().join("root");
    cfg.state = dir.path().join("state");
    cfg.address = dir.path().join("state/containerd.sock");
    cfg.write()?;
    let ours = leaves(&cfg.render()?, "the rendered config")?;

    let default = run(
        Command::new(&bins.containerd).args(["config", "default"]),
        "",
    )?;
    let default = leaves(
        &String::from_utf8(default.stdout)?,
        "containerd config default",
    )?;
    for key in ours.keys() {
        ensure!(
            default.contains_key(key),
            "containerd has no setting {key} (a misspelt key?)"
        );
    }

    let dump = run(
        Command::new(&bins.containerd)
            .arg("--config")
            .arg(&cfg.config_file)
            .args(["config", "dump"]),
        "",
    )?;
    let stderr = String::from_utf8_lossy(&dump.stderr);
    ensure!(
        !stderr.contains("unknown key"),
        "containerd ignored keys:\n{stderr}"
    );
    let dump = leaves(&String::from_utf8(dump.stdout)?, "containerd config dump")?;
    for (key, value) in &ours {
        // containerd merges its default drop-in pattern into the dump, but reads only
        // the imports a loaded file names (none).
        if key == "/imports" {
            continue;
        }
        ensure!(
            dump.get(key) == Some(value),
            "containerd's effective {key} is {:?}, we wrote {value}",
            dump.get(key)
        );
    }
    // The values the design insists on, spelled out.
    let cri = "/plugins/io.containerd.cri.v1";
    for (key, want) in [
        (
            format!("{cri}.images/pinned_images/sandbox"),
            toml::Value::from(PAUSE_IMAGE),
        ),
        (
            format!("{cri}.runtime/containerd/runtimes/runc/options/SystemdCgroup"),
            toml::Value::from(false),
        ),
        (
            format!("{cri}.runtime/containerd/runtimes/runc/options/BinaryName"),
            toml::Value::from("/usr/bin/runc"),
        ),
        (
            format!("{cri}.runtime/cni/bin_dirs"),
            toml::Value::from(vec!["/usr/lib/cni"]),
        ),
        (
            format!("{cri}.runtime/cni/conf_dir"),
            toml::Value::from("/run/cairn/cni/net.d"),
        ),
        (
            format!("{cri}.images/snapshotter"),
            toml::Value::from("overlayfs"),
        ),
    ] {
        ensure!(
            dump.get(&key) == Some(&want),
            "{key}: {:?}, want {want}",
            dump.get(&key)
        );
    }
    // Loading the config created nothing.
    ensure!(!cfg.root.exists() && !cfg.state.exists());
    Ok(())
}

#[test]
fn kube_proxy_loads_and_validates_the_rendered_config() -> Result<()> {
    let bins = bins()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = KubeProxyConfig::from_machine(&machine()?, &Paths::node());
    cfg.config_file = dir.path().join("config.yaml");
    cfg.write()?;
    let effective = dir.path().join("effective.yaml");
    let out = run(
        Command::new(&bins.kube_proxy)
            .arg(format!("--config={}", cfg.config_file.display()))
            .arg(format!("--write-config-to={}", effective.display())),
        "",
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("lenient decoding"),
        "kube-proxy did not decode the config strictly:\n{stderr}"
    );
    let text = std::fs::read_to_string(&effective)
        .with_context(|| format!("reading {}", effective.display()))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)?;
    for (key, want) in [
        ("mode", "nftables"),
        ("hostnameOverride", "cairn"),
        ("clusterCIDR", "10.244.0.0/16"),
        ("healthzBindAddress", "127.0.0.1:10256"),
        ("metricsBindAddress", "127.0.0.1:10249"),
    ] {
        ensure!(v[key].as_str() == Some(want), "{key}: {:?}\n{text}", v[key]);
    }
    ensure!(
        v["clientConnection"]["kubeconfig"].as_str() == Some("/state/secrets/kube-proxy.conf"),
        "clientConnection.kubeconfig: {text}"
    );
    Ok(())
}

#[test]
fn cni_plugins_speak_1_0_0() -> Result<()> {
    let bins = bins()?;
    for (name, path) in &bins.cni {
        let out = run(
            Command::new(path).env("CNI_COMMAND", "VERSION"),
            r#"{"cniVersion":"1.0.0"}"#,
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{name}'s VERSION answer"))?;
        let supported = v["supportedVersions"]
            .as_array()
            .ok_or_else(|| anyhow!("{name}: no supportedVersions in {v}"))?;
        ensure!(
            supported.iter().any(|s| s == "1.0.0"),
            "{name} does not support CNI 1.0.0: {v}"
        );
    }
    Ok(())
}

#[test]
fn host_local_allocates_from_the_rendered_conflist() -> Result<()> {
    let bins = bins()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = CniConfig::new(&machine()?, "10.244.3.0/24".parse()?)?;
    cfg.ipam_dir = dir.path().join("ipam");
    let list: serde_json::Value = serde_json::from_str(&cfg.render()?)?;
    // What libcni hands a plugin: the plugin's object plus the list's name and
    // version; the bridge plugin passes its whole config on to its IPAM plugin.
    let mut bridge = list["plugins"][0].clone();
    bridge["name"] = list["name"].clone();
    bridge["cniVersion"] = list["cniVersion"].clone();
    let host_local = &bins.cni["host-local"];
    let cni_path = host_local.parent().context("plugin directory")?;
    let invoke = |command: &str| {
        run(
            Command::new(host_local)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "cairn-test")
                .env("CNI_NETNS", "/nonexistent")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", cni_path),
            &bridge.to_string(),
        )
    };
    let out = invoke("ADD")?;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        result["ips"][0]["address"] == "10.244.3.2/24"
            && result["ips"][0]["gateway"] == "10.244.3.1",
        "unexpected allocation: {result}"
    );
    ensure!(
        cfg.ipam_dir.join("cairn/10.244.3.2").is_file(),
        "no reservation under {}",
        cfg.ipam_dir.display()
    );
    invoke("DEL")?;
    ensure!(
        !cfg.ipam_dir.join("cairn/10.244.3.2").exists(),
        "DEL kept the reservation"
    );
    Ok(())
}
