//! The service catalog: one module per component cairn supervises, each holding in
//! one place how the component is configured (flags and files rendered from the
//! machine config), what it depends on, how its readiness is probed and how it is
//! restarted and stopped.
//!
//! Not for: running anything. The init hands these [`ServiceSpec`]s to the
//! supervisor (`cairn-supervisor`), which owns processes, ordering and restarts.

pub mod etcd;

use std::path::PathBuf;

use cairn_machine_config::MachineConfig;
use cairn_supervisor::ServiceSpec;

/// Where things live on a node; tests point these at temporary directories.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Directory of the upstream binaries (`/usr/bin` on a node).
    pub bin: PathBuf,
    /// Root of persistent state (`/var/lib` on a node; the DATA partition).
    pub var_lib: PathBuf,
}

impl Paths {
    pub fn node() -> Paths {
        Paths {
            bin: PathBuf::from("/usr/bin"),
            var_lib: PathBuf::from("/var/lib"),
        }
    }
}

/// Every service a node of this configuration runs, in no particular order (the
/// supervisor orders them by their dependencies).
pub fn node_services(cfg: &MachineConfig, paths: &Paths) -> Vec<ServiceSpec> {
    vec![etcd::spec(&etcd::EtcdConfig::from_machine(cfg, paths))]
}
