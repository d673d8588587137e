//! The machine API server (`cairn-apid`): mutual-TLS gRPC for `cairnctl`.
//!
//! Configuration: its flags' node defaults (secrets bundle in [`crate::SECRETS_DIR`],
//! PID 1's control socket, `/state/machine.yaml`), listening on every address at
//! [`PORT`].
//! Ordering: first of all — it needs only the secrets bundle, so an operator can
//! read logs even when Kubernetes does not come up.
//! Readiness: its port accepts TCP on loopback. Restart: always, with backoff.

use std::net::{Ipv4Addr, SocketAddr};

use cairn_supervisor::{Probe, RestartPolicy, ServiceSpec};

use crate::Paths;

pub const NAME: &str = "apid";
/// The machine API's port (the same on every node).
pub const PORT: u16 = 50000;

pub fn spec(paths: &Paths) -> ServiceSpec {
    ServiceSpec::new(NAME, paths.bin.join("cairn-apid"))
        .args([
            "--secrets".to_string(),
            paths.secrets.display().to_string(),
            "--listen".into(),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).to_string(),
        ])
        .readiness(Probe::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT))))
        .restart(RestartPolicy::Always)
}
