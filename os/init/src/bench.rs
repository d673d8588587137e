//! Benchmark mode, compiled in only with the `bench-plain` feature (the benchmark
//! image `cairn-bench`, never the one users or the tests boot): with fw_cfg
//! `opt/cairn/bench-plain` present, the node's services are not supervised but
//! started all at once, like a plain script would ([`plain_launch`]), to measure
//! what supervision costs.

/// Whether the benchmark's plain launch was asked for (fw_cfg `opt/cairn/bench-plain`).
pub fn plain_launch_requested() -> bool {
    std::path::Path::new(crate::config::FW_CFG_DIR)
        .join("opt/cairn/bench-plain")
        .exists()
}

/// Starts every service's command at once, with the same arguments and
/// environment, no ordering, probes or restarts (the reaper still reaps them), then
/// polls the API server's `/readyz` every 200 ms (the supervisor's probe period)
/// and logs `event=plain_ready service=kube-apiserver elapsed_ms=...` since the
/// spawn.
pub fn plain_launch(
    specs: Vec<cairn_supervisor::ServiceSpec>,
    api: cairn_services::kubeapi::ApiClient,
) {
    let start = std::time::Instant::now();
    tracing::warn!(
        event = "plain_launch",
        services = specs.len(),
        "BENCHMARK: services started at once, unsupervised"
    );
    for spec in &specs {
        let spawned = std::process::Command::new(&spec.command)
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            tracing::error!(service = %spec.name, error = ?e.to_string(), "plain launch failed");
        }
    }
    tokio::spawn(async move {
        loop {
            if api.get("/readyz").await.is_ok() {
                return tracing::info!(
                    event = "plain_ready",
                    service = "kube-apiserver",
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "API server ready (plain launch)"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
}
