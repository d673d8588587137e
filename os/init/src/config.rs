//! Where the machine config comes from, and what happens when it is bad.
//!
//! Sources, first match wins: QEMU fw_cfg `opt/cairn/machine-config` (how tests and
//! VMs inject a config) when it is new, then the last good config kept on the STATE
//! partition, then the default embedded in this build. A fw_cfg config is new when
//! it differs from the one taken last time (kept beside it), so a config applied
//! later through the machine API is not undone by the same fw_cfg at the next boot. A config that does not validate is
//! reported on the console with its reason (field and line) and never replaces the
//! last good one; with no good config to fall back on, the boot cannot continue.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use cairn_machine_config::MachineConfig;

pub const FW_CFG_NAME: &str = "opt/cairn/machine-config";
/// Where the kernel shows QEMU's fw_cfg files (`<dir>/<name>/raw`).
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name";

/// Where the config in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    FwCfg,
    State,
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::FwCfg => "fw_cfg",
            Source::State => "state",
            Source::Default => "default",
        })
    }
}

pub struct Locations {
    pub fw_cfg: PathBuf,
    pub state: PathBuf,
    /// The fw_cfg config taken last time.
    pub taken_fw_cfg: PathBuf,
}

impl Locations {
    pub fn node() -> Locations {
        Locations {
            fw_cfg: Path::new(FW_CFG_DIR).join(FW_CFG_NAME).join("raw"),
            state: PathBuf::from(cairn_machine_config::STATE_PATH),
            taken_fw_cfg: PathBuf::from("/state/machine.fw_cfg.yaml"),
        }
    }
}

/// Picks the config; persists a newly accepted fw_cfg config as the last good one.
pub fn load(loc: &Locations) -> Result<(MachineConfig, Source)> {
    let last_good = read_valid(&loc.state);
    let fw_cfg = std::fs::read_to_string(&loc.fw_cfg).ok();
    let seen_before = fw_cfg.is_some()
        && std::fs::read_to_string(&loc.taken_fw_cfg).ok() == fw_cfg
        && last_good.is_some();
    if let Some(text) = fw_cfg.filter(|_| !seen_before) {
        match MachineConfig::parse(&format!("machine config from fw_cfg {FW_CFG_NAME}"), &text) {
            Ok(cfg) => {
                if last_good.as_ref().map(|(c, _)| c) != Some(&cfg)
                    && let Err(e) = crate::fsutil::write_durable(&loc.state, text.as_bytes())
                {
                    tracing::warn!(event = "config_not_saved", error = ?format!("{e:#}"), "could not keep the config on STATE");
                }
                if let Err(e) = crate::fsutil::write_durable(&loc.taken_fw_cfg, text.as_bytes()) {
                    tracing::warn!(event = "config_not_saved", error = ?format!("{e:#}"), "could not record the fw_cfg config as taken");
                }
                return Ok((cfg, Source::FwCfg));
            }
            Err(e) => {
                tracing::error!(event = "config_error", error = ?e.to_string(), "machine config rejected");
                match last_good {
                    Some((cfg, _)) => {
                        tracing::warn!(
                            event = "config_fallback",
                            source = "state",
                            "keeping the last good machine config"
                        );
                        return Ok((cfg, Source::State));
                    }
                    None => {
                        bail!("machine config rejected and no earlier good config to keep: {e}")
                    }
                }
            }
        }
    }
    if loc.state.exists() {
        return match last_good {
            Some((cfg, _)) => Ok((cfg, Source::State)),
            None => {
                let text = std::fs::read_to_string(&loc.state).unwrap_or_default();
                let err = MachineConfig::parse(&loc.state.display().to_string(), &text)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| format!("{} is unreadable", loc.state.display()));
                tracing::error!(event = "config_error", error = ?err, "machine config rejected");
                bail!("the machine config on STATE is invalid: {err}")
            }
        };
    }
    let cfg = MachineConfig::parse(
        "embedded default machine config",
        MachineConfig::default_document(),
    )?;
    Ok((cfg, Source::Default))
}

fn read_valid(path: &Path) -> Option<(MachineConfig, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let cfg = MachineConfig::parse(&path.display().to_string(), &text).ok()?;
    Some((cfg, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locs(dir: &Path) -> Locations {
        Locations {
            fw_cfg: dir.join("fw_cfg"),
            state: dir.join("state/machine.yaml"),
            taken_fw_cfg: dir.join("state/machine.fw_cfg.yaml"),
        }
    }

    const GOOD: &str =
        "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: node-7\n";

    #[test]
    fn default_when_nothing_given() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (cfg, src) = load(&locs(tmp.path())).expect("default");
        assert_eq!(src, Source::Default);
        assert_eq!(cfg.machine.hostname.as_str(), "cairn");
    }

    #[test]
    fn fw_cfg_is_used_and_kept_as_last_good() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = locs(tmp.path());
        std::fs::write(&l.fw_cfg, GOOD).expect("write");
        let (cfg, src) = load(&l).expect("fw_cfg");
        assert_eq!(
            (cfg.machine.hostname.as_str(), src),
            ("node-7", Source::FwCfg)
        );
        assert_eq!(std::fs::read_to_string(&l.state).expect("kept"), GOOD);
    }

    #[test]
    fn a_config_applied_later_survives_the_same_fw_cfg() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = locs(tmp.path());
        std::fs::write(&l.fw_cfg, GOOD).expect("write");
        load(&l).expect("first boot");
        // The machine API keeps a new config on STATE.
        let applied = GOOD.replace("node-7", "node-8");
        std::fs::write(&l.state, &applied).expect("apply");
        let (cfg, src) = load(&l).expect("second boot");
        assert_eq!(
            (cfg.machine.hostname.as_str(), src),
            ("node-8", Source::State)
        );
        // A different fw_cfg config is new again, and wins.
        std::fs::write(&l.fw_cfg, GOOD.replace("node-7", "node-9")).expect("write");
        let (cfg, src) = load(&l).expect("third boot");
        assert_eq!(
            (cfg.machine.hostname.as_str(), src),
            ("node-9", Source::FwCfg)
        );
    }

    #[test]
    fn bad_fw_cfg_keeps_last_good() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = locs(tmp.path());
        std::fs::create_dir_all(l.state.parent().expect("parent")).expect("mkdir");
        std::fs::write(&l.state, GOOD).expect("write");
        std::fs::write(&l.fw_cfg, "machine: [\n").expect("write");
        let (cfg, src) = load(&l).expect("fallback");
        assert_eq!(
            (cfg.machine.hostname.as_str(), src),
            ("node-7", Source::State)
        );
        assert_eq!(std::fs::read_to_string(&l.state).expect("unchanged"), GOOD);
    }

    #[test]
    fn bad_fw_cfg_without_fallback_is_fatal_with_reason() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = locs(tmp.path());
        std::fs::write(
            &l.fw_cfg,
            "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostnme: x\n",
        )
        .expect("write");
        let err = format!("{:#}", load(&l).expect_err("fatal"));
        assert!(err.contains("hostnme") && err.contains("line 4"), "{err}");
        assert!(!l.state.exists());
    }
}
