//! containerd: the container runtime kubelet talks to over CRI.
//!
//! Configuration: a containerd 2.x config file (`version = 3`) rendered by
//! [`ContainerdConfig::render`] and written to `/run/cairn/containerd/config.toml`
//! at every boot (`/etc` is read-only; see [`crate::files`]). State on the DATA
//! partition in `/var/lib/containerd` (the overlayfs snapshotter's directory must be
//! on ext4, not on overlayfs), runtime state in `/run/containerd`, the API on
//! `/run/containerd/containerd.sock`. CRI: the sandbox image is pinned to
//! [`PAUSE_IMAGE`] (our own pause build, imported into the `k8s.io` namespace; the
//! name must match exactly or containerd would try to pull upstream's), runc at
//! `/usr/bin/runc` with `SystemdCgroup = false` set explicitly (cgroupfs, as kubelet
//! is told), snapshotter overlayfs, CNI plugins from [`crate::cni::BIN_DIR`] and the
//! network config from [`crate::cni::CONF_DIR`]. Nothing names a registry, mirror or
//! credential. `imports = []` says that no drop-in is read (containerd reads only
//! the imports a loaded file names; `config dump` still lists its default
//! `/etc/containerd/conf.d/*.toml` pattern). The `opt` plugin is disabled: it creates
//! `/opt/containerd` and prepends it to `PATH`, which makes no sense on a read-only
//! root.
//! Ordering: depends on nothing; kubelet depends on it.
//! Readiness: the API socket accepts a connection. containerd creates the listener
//! only after every plugin (CRI included) has loaded, and a stale socket file left by
//! a crash refuses connections until the new listener replaces it. The probe is a
//! [`Probe::Custom`] connecting in-process with tokio's `UnixStream`, not
//! [`Probe::Exec`] of `ctr version`: no fork/exec of a 30 MB Go binary every probe
//! period, and no dependency on `ctr` being installed.
//! Restart: always, with the supervisor's backoff; SIGTERM and 15 s (containers keep
//! running under their shims while containerd is down).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_machine_config::MachineConfig;
use cairn_supervisor::{Probe, ProbeSettings, RestartPolicy, ServiceSpec};

use crate::Paths;
use crate::files::{RenderError, run_path};

pub const NAME: &str = "containerd";

/// The sandbox ("pause") image containerd's CRI uses for every pod.
///
/// A copy of `cairn_image::oci::PAUSE_IMAGE` (image-build/src/oci.rs), the source of
/// truth: the image build names the pause image it imports with that constant. The
/// catalog does not depend on `cairn-image` (a heavy build-time crate); a unit test
/// asserts the two are equal.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

/// `/run/containerd/containerd.sock`.
pub const SOCKET: &str = "/run/containerd/containerd.sock";

/// Everything that decides how containerd runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    pub binary: PathBuf,
    /// Where [`ContainerdConfig::render`]'s output is written before start.
    pub config_file: PathBuf,
    /// Persistent state (`/var/lib/containerd`).
    pub root: PathBuf,
    /// Runtime state (`/run/containerd`).
    pub state: PathBuf,
    /// The gRPC socket.
    pub address: PathBuf,
    pub sandbox_image: String,
    /// The runc binary the runc v2 shim runs.
    pub runc: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
}

impl ContainerdConfig {
    pub fn from_machine(_cfg: &MachineConfig, paths: &Paths) -> ContainerdConfig {
        ContainerdConfig {
            binary: paths.bin.join("containerd"),
            config_file: run_path("containerd/config.toml"),
            root: paths.var_lib.join("containerd"),
            state: PathBuf::from("/run/containerd"),
            address: PathBuf::from(SOCKET),
            sandbox_image: PAUSE_IMAGE.into(),
            runc: paths.bin.join("runc"),
            cni_bin_dir: PathBuf::from(crate::cni::BIN_DIR),
            cni_conf_dir: PathBuf::from(crate::cni::CONF_DIR),
        }
    }

    /// `unix:///run/containerd/containerd.sock`, as kubelet's
    /// `containerRuntimeEndpoint` names it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.address.display())
    }

    /// The config file's text (TOML, config version 3).
    pub fn render(&self) -> Result<String, RenderError> {
        let doc = toml_doc::Document::new(self);
        toml::to_string(&doc).map_err(|e| RenderError::new("rendering the containerd config", e))
    }

    /// Writes [`ContainerdConfig::render`] to `config_file`.
    pub fn write(&self) -> Result<(), RenderError> {
        crate::files::write_atomic(&self.config_file, &self.render()?)
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        vec!["--config".into(), crate::path_flag(&self.config_file)]
    }

    /// Ready when the API socket accepts a connection.
    pub fn readiness(&self) -> Probe {
        let socket = self.address.clone();
        Probe::custom(move || socket_accepts(socket.clone()))
    }
}

/// The supervised service. The config file must have been written first
/// ([`ContainerdConfig::write`]).
pub fn spec(cfg: &ContainerdConfig) -> ServiceSpec {
    ServiceSpec::new(NAME, &cfg.binary)
        .args(cfg.args())
        // The runc v2 shim and runc are found through PATH as well as BinaryName;
        // the CNI plugins it runs need `nft` from /usr/sbin.
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .readiness(cfg.readiness())
        .probe_settings(ProbeSettings {
            initial_period: Duration::from_millis(100),
            ..ProbeSettings::default()
        })
        .restart(RestartPolicy::Always)
        .stop_timeout(Duration::from_secs(15))
}

/// Healthy when a connection to the unix socket succeeds.
pub async fn socket_accepts(socket: PathBuf) -> Result<(), String> {
    tokio::net::UnixStream::connect(&socket)
        .await
        .map(drop)
        .map_err(|e| format!("connecting to containerd at {}: {e}", socket.display()))
}

/// The config file's shape: only what cairn sets; containerd fills in the rest.
mod toml_doc {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::{ContainerdConfig, Path};

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    #[derive(Serialize)]
    pub(super) struct Document {
        version: u32,
        root: String,
        state: String,
        /// Empty: nothing from `/etc/containerd/conf.d` is merged in.
        imports: Vec<String>,
        disabled_plugins: Vec<String>,
        grpc: Grpc,
        plugins: Plugins,
    }

    #[derive(Serialize)]
    struct Grpc {
        address: String,
    }

    /// The plugin tables, keyed by plugin ID. A map, not a struct with renamed
    /// fields: toml 0.9.12 writes renamed field names as bare keys, so
    /// `io.containerd.cri.v1.images` would come out unquoted, i.e. as nested tables
    /// (`renders_the_cri_settings` checks the quoting).
    type Plugins = BTreeMap<&'static str, Plugin>;

    #[derive(Serialize)]
    #[serde(untagged)]
    enum Plugin {
        Images(CriImages),
        Runtime(CriRuntime),
    }

    #[derive(Serialize)]
    struct CriImages {
        snapshotter: String,
        pinned_images: PinnedImages,
    }

    #[derive(Serialize)]
    struct PinnedImages {
        sandbox: String,
    }

    #[derive(Serialize)]
    struct CriRuntime {
        containerd: CriContainerd,
        cni: Cni,
    }

    #[derive(Serialize)]
    struct CriContainerd {
        default_runtime_name: String,
        runtimes: BTreeMap<String, Runtime>,
    }

    #[derive(Serialize)]
    struct Runtime {
        runtime_type: String,
        options: RuncOptions,
    }

    /// runc's options keep Go's field names.
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct RuncOptions {
        binary_name: String,
        systemd_cgroup: bool,
    }

    #[derive(Serialize)]
    struct Cni {
        bin_dirs: Vec<String>,
        conf_dir: String,
        /// One network: the conflist cairn writes.
        max_conf_num: u32,
    }

    impl Document {
        pub(super) fn new(c: &ContainerdConfig) -> Document {
            Document {
                version: 3,
                root: s(&c.root),
                state: s(&c.state),
                imports: Vec::new(),
                disabled_plugins: vec!["io.containerd.internal.v1.opt".into()],
                grpc: Grpc {
                    address: s(&c.address),
                },
                plugins: BTreeMap::from([
                    (
                        "io.containerd.cri.v1.images",
                        Plugin::Images(CriImages {
                            snapshotter: "overlayfs".into(),
                            pinned_images: PinnedImages {
                                sandbox: c.sandbox_image.clone(),
                            },
                        }),
                    ),
                    (
                        "io.containerd.cri.v1.runtime",
                        Plugin::Runtime(CriRuntime {
                            containerd: CriContainerd {
                                default_runtime_name: "runc".into(),
                                runtimes: BTreeMap::from([(
                                    "runc".to_string(),
                                    Runtime {
                                        runtime_type: "io.containerd.runc.v2".into(),
                                        options: RuncOptions {
                                            binary_name: s(&c.runc),
                                            systemd_cgroup: false,
                                        },
                                    },
                                )]),
                            },
                            cni: Cni {
                                bin_dirs: vec![s(&c.cni_bin_dir)],
                                conf_dir: s(&c.cni_conf_dir),
                                max_conf_num: 1,
                            },
                        }),
                    ),
                ]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ContainerdConfig {
        let mc = MachineConfig::parse("t", MachineConfig::default_document()).expect("config");
        ContainerdConfig::from_machine(&mc, &Paths::node())
    }

    #[test]
    fn pause_image_matches_the_image_build() {
        assert_eq!(PAUSE_IMAGE, cairn_image::oci::PAUSE_IMAGE);
    }

    #[test]
    fn renders_the_cri_settings() {
        let text = cfg().render().expect("render");
        let doc: toml::Table = text.parse().expect("valid TOML");
        let get = |path: &[&str]| -> toml::Value {
            let mut v = toml::Value::Table(doc.clone());
            for k in path {
                v = v
                    .get(*k)
                    .unwrap_or_else(|| panic!("{path:?} missing in\n{text}"))
                    .clone();
            }
            v
        };
        assert_eq!(get(&["version"]).as_integer(), Some(3));
        assert_eq!(get(&["root"]).as_str(), Some("/var/lib/containerd"));
        assert_eq!(get(&["state"]).as_str(), Some("/run/containerd"));
        assert_eq!(get(&["grpc", "address"]).as_str(), Some(SOCKET));
        assert_eq!(get(&["imports"]).as_array().map(Vec::len), Some(0));
        let images = ["plugins", "io.containerd.cri.v1.images"];
        assert_eq!(
            get(&[images[0], images[1], "pinned_images", "sandbox"]).as_str(),
            Some(PAUSE_IMAGE)
        );
        assert_eq!(
            get(&[images[0], images[1], "snapshotter"]).as_str(),
            Some("overlayfs")
        );
        let runc = [
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
            "runc",
        ];
        let opt = |k: &str| {
            let mut p = runc.to_vec();
            p.extend(["options", k]);
            get(&p)
        };
        assert_eq!(opt("SystemdCgroup").as_bool(), Some(false));
        assert_eq!(opt("BinaryName").as_str(), Some("/usr/bin/runc"));
        let cni = ["plugins", "io.containerd.cri.v1.runtime", "cni"];
        let mut bin_dirs = cni.to_vec();
        bin_dirs.push("bin_dirs");
        assert_eq!(get(&bin_dirs).to_string(), r#"["/usr/lib/cni"]"#);
        let mut conf_dir = cni.to_vec();
        conf_dir.push("conf_dir");
        assert_eq!(get(&conf_dir).as_str(), Some("/run/cairn/cni/net.d"));
        // The plugin tables are quoted keys, not dotted paths.
        assert!(text.contains("\"io.containerd.cri.v1.images\""), "{text}");
        // No registry settings (the only "registry" is in the pause image's name).
        for word in [".registry]", "mirrors", "auths", "config_path", "endpoint"] {
            assert!(!text.contains(word), "{word} in\n{text}");
        }
    }

    #[test]
    fn spec_flags_probe_and_ordering() {
        let c = cfg();
        assert_eq!(c.endpoint(), "unix:///run/containerd/containerd.sock");
        let s = spec(&c);
        s.validate().expect("valid spec");
        assert_eq!(s.name, NAME);
        assert_eq!(s.command, Path::new("/usr/bin/containerd"));
        assert_eq!(s.args, ["--config", "/run/cairn/containerd/config.toml"]);
        assert!(s.depends_on.is_empty());
        assert!(matches!(s.readiness, Probe::Custom(_)));
        assert_eq!(s.restart, RestartPolicy::Always);
    }

    #[tokio::test]
    async fn probe_needs_a_listening_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("containerd.sock");
        let err = socket_accepts(sock.clone())
            .await
            .expect_err("no socket yet");
        assert!(err.contains("containerd.sock"), "{err}");
        let _listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        socket_accepts(sock.clone()).await.expect("listening");
        drop(_listener);
        // A stale socket file refuses connections.
        assert!(sock.exists());
        socket_accepts(sock).await.expect_err("stale socket");
    }
}
