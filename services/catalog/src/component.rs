//! The shape the Kubernetes components share: always restarted, probed every
//! 500 ms until ready, 10 s to stop. The controller-manager and the scheduler also
//! share their dependency (the API server) and their loopback health endpoint.

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
pub fn apiserver_client_spec(
    name: &str,
    binary: &Path,
    args: Vec<String>,
    secure_port: u16,
) -> ServiceSpec {
    kubernetes_component(
        name,
        binary,
        args,
        "/usr/bin:/bin",
        &[crate::kube_apiserver::NAME],
        loopback_healthz(secure_port),
    )
}

/// A long-running Kubernetes component with the given dependencies and probe.
pub fn kubernetes_component(
    name: &str,
    binary: &Path,
    args: Vec<String>,
    path_env: &str,
    depends_on: &[&str],
    readiness: Probe,
) -> ServiceSpec {
    depends_on
        .iter()
        .fold(ServiceSpec::new(name, binary), |spec, dep| {
            spec.depends_on(*dep)
        })
        .args(args)
        .env("PATH", path_env)
        .readiness(readiness)
        .probe_settings(ProbeSettings {
            initial_period: Duration::from_millis(500),
            ..ProbeSettings::default()
        })
        .restart(RestartPolicy::Always)
        .stop_timeout(Duration::from_secs(10))
}
