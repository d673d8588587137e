//! The shape the controller-manager and the scheduler share: a Kubernetes
//! component that talks to the API server, serves its own health on a loopback
//! port with a self-signed certificate, and is always restarted.

use std::path::Path;
use std::time::Duration;

use cairn_supervisor::{Probe, ProbeSettings, RestartPolicy, ServiceSpec};

/// `GET https://127.0.0.1:<port>/healthz`, certificate not verified (self-signed,
/// and the probe refuses any non-loopback host).
pub fn loopback_healthz(secure_port: u16) -> Probe {
    Probe::HttpsLoopbackUnverified {
        url: format!("https://127.0.0.1:{secure_port}/healthz"),
    }
}

/// A supervised component that depends on the API server and is probed on its
/// loopback health port.
pub fn apiserver_client_spec(name: &str, binary: &Path, args: Vec<String>, secure_port: u16) -> ServiceSpec {
    ServiceSpec::new(name, binary)
        .args(args)
        .env("PATH", "/usr/bin:/bin")
        .depends_on(crate::kube_apiserver::NAME)
        .readiness(loopback_healthz(secure_port))
        .probe_settings(ProbeSettings {
            initial_period: Duration::from_millis(500),
            ..ProbeSettings::default()
        })
        .restart(RestartPolicy::Always)
        .stop_timeout(Duration::from_secs(10))
}
