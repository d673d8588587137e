//! What `cairnctl` does, as functions the binary and tests call.
//!
//! - [`gen_config`]: a node's machine config and a fresh secrets bundle for it (the
//!   counterpart of `talosctl gen config`), plus an admin kubeconfig.
//! - [`admin_kubeconfig`]: the admin kubeconfig out of a bundle, pointed at a chosen
//!   server URL (e.g. a forwarded port on 127.0.0.1).
//! - [`gen_client`]: a client config for the machine API with a chosen role.
//! - [`clientconfig`] and [`connect`]: reaching a node's machine API.

#![forbid(unsafe_code)]

pub mod clientconfig;
pub mod connect;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_api::Role;
use cairn_machine_config::{Hostname, MachineConfig};
use cairn_pki::{Bundle, ClusterParams, OffsetDateTime, paths};

/// What `gen config` writes.
#[derive(Debug, Clone)]
pub struct Generated {
    pub machine_config: PathBuf,
    pub secrets: PathBuf,
    pub admin_kubeconfig: PathBuf,
    /// The machine API client config (role os:admin).
    pub client_config: PathBuf,
}

/// Options of `gen config`.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// The node's name; replaces the base config's hostname.
    pub name: Hostname,
    /// The address the node will have (the apiserver and etcd certificates name it).
    pub ip: IpAddr,
    /// A machine config to start from; default: the embedded default.
    pub base_config: Option<String>,
    /// `cluster.apiEndpoint` to set (the admin kubeconfig's server).
    pub endpoint: Option<String>,
    pub out_dir: PathBuf,
    /// Replace existing files.
    pub force: bool,
}

pub const MACHINE_CONFIG_FILE: &str = "machine.yaml";
pub const SECRETS_FILE: &str = "secrets.yaml";
pub const ADMIN_KUBECONFIG_FILE: &str = "admin.conf";

pub fn gen_config(opts: &GenOptions) -> Result<Generated> {
    let base = opts
        .base_config
        .as_deref()
        .unwrap_or(MachineConfig::default_document());
    let mut cfg = MachineConfig::parse("the base machine config", base)?;
    cfg.machine.hostname = opts.name.clone();
    if let Some(endpoint) = &opts.endpoint {
        cfg.cluster.api_endpoint = Some(endpoint.clone());
    }
    // Validate the result as the node will.
    let text = cfg.to_yaml();
    let cfg = MachineConfig::parse("the generated machine config", &text)?;

    let params = ClusterParams::from_machine_config(&cfg, opts.ip, OffsetDateTime::now_utc());
    let bundle = cairn_pki::generate(&params).context("generating the secrets bundle")?;
    let secrets = bundle.to_document()?;
    let admin = kubeconfig_text(&bundle, None)?;
    let client = client_config_text(&bundle, &[opts.ip.to_string()], "admin", Role::Admin)?;

    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let out = Generated {
        machine_config: opts.out_dir.join(MACHINE_CONFIG_FILE),
        secrets: opts.out_dir.join(SECRETS_FILE),
        admin_kubeconfig: opts.out_dir.join(ADMIN_KUBECONFIG_FILE),
        client_config: opts.out_dir.join(clientconfig::FILE),
    };
    if !opts.force {
        for p in [
            &out.machine_config,
            &out.secrets,
            &out.admin_kubeconfig,
            &out.client_config,
        ] {
            if p.exists() {
                bail!(
                    "{} exists; pass --force to replace it (its cluster's secrets would be lost)",
                    p.display()
                );
            }
        }
    }
    write_file(&out.machine_config, text.as_bytes(), 0o644)?;
    write_file(&out.secrets, secrets.as_bytes(), cairn_pki::PRIVATE_MODE)?;
    write_file(
        &out.admin_kubeconfig,
        admin.as_bytes(),
        cairn_pki::PRIVATE_MODE,
    )?;
    write_file(
        &out.client_config,
        client.as_bytes(),
        cairn_pki::PRIVATE_MODE,
    )?;
    Ok(out)
}

/// How long a client certificate from [`gen_client`] is valid.
pub const CLIENT_VALIDITY_DAYS: i64 = 365;

/// A machine-API client config for `name` with `role`, signed by the bundle's CA,
/// for `endpoints`; written to `out` (0600).
pub fn gen_client(
    secrets_document: &Path,
    name: &str,
    role: Role,
    endpoints: &[String],
    out: &Path,
    force: bool,
) -> Result<()> {
    let bundle = read_bundle(secrets_document)?;
    if out.exists() && !force {
        bail!("{} exists; pass --force to replace it", out.display());
    }
    let text = client_config_text(&bundle, endpoints, name, role)?;
    write_file(out, text.as_bytes(), cairn_pki::PRIVATE_MODE)
}

fn client_config_text(
    bundle: &Bundle,
    endpoints: &[String],
    name: &str,
    role: Role,
) -> Result<String> {
    if endpoints.is_empty() {
        bail!("a client config needs at least one endpoint");
    }
    let cert = cairn_pki::issue_os_client(
        bundle,
        name,
        role.organization(),
        OffsetDateTime::now_utc() - cairn_pki::Duration::minutes(5),
        cairn_pki::Duration::days(CLIENT_VALIDITY_DAYS),
    )?;
    clientconfig::ClientConfig::new(bundle, endpoints.to_vec(), cert)?.to_yaml()
}

fn read_bundle(secrets_document: &Path) -> Result<Bundle> {
    let text = std::fs::read_to_string(secrets_document)
        .with_context(|| format!("reading {}", secrets_document.display()))?;
    Bundle::from_document(&text).with_context(|| format!("reading {}", secrets_document.display()))
}

/// The bundle's admin kubeconfig, with every cluster's server replaced by `server`
/// when given.
pub fn admin_kubeconfig(secrets_document: &Path, server: Option<&str>) -> Result<String> {
    kubeconfig_text(&read_bundle(secrets_document)?, server)
}

fn kubeconfig_text(bundle: &Bundle, server: Option<&str>) -> Result<String> {
    let conf = bundle
        .get(paths::ADMIN_CONF)
        .with_context(|| format!("the secrets bundle has no {}", paths::ADMIN_CONF))?;
    let text = std::str::from_utf8(conf.bytes()).context("admin.conf is not UTF-8")?;
    with_server(text, server)
}

/// A kubeconfig with every cluster's server replaced by `server` when given.
pub fn with_server(text: &str, server: Option<&str>) -> Result<String> {
    let Some(server) = server else {
        return Ok(text.to_string());
    };
    if !server.starts_with("https://") {
        bail!("--server `{server}` is not an https:// URL");
    }
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(text).context("admin.conf is not YAML")?;
    let clusters = doc
        .get_mut("clusters")
        .and_then(|c| c.as_sequence_mut())
        .context("admin.conf has no clusters")?;
    for c in clusters {
        if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
            cluster.insert("server".into(), server.into());
        }
    }
    Ok(serde_yaml::to_string(&doc)?)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
