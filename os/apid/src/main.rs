//! `cairn-apid`: the machine API server, supervised by PID 1 on every node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// The machine API server: mutual-TLS gRPC, authorized by the role in the
/// client certificate.
#[derive(Debug, Parser)]
#[command(name = "cairn-apid", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], cairn_api::DEFAULT_PORT)))]
    listen: SocketAddr,
    /// The node's secrets bundle (`--secrets` is the same).
    #[arg(long, visible_alias = "secrets", default_value = cairn_services::SECRETS_DIR)]
    secrets_dir: PathBuf,
    /// PID 1's control socket.
    #[arg(long, default_value = cairn_control::SOCKET)]
    control_socket: PathBuf,
    /// The machine config kept on STATE.
    #[arg(long, default_value = cairn_apid::DEFAULT_MACHINE_CONFIG)]
    machine_config: PathBuf,
    /// PID 1's runtime directory (machine-id, hostname, node-ip).
    #[arg(long, default_value = cairn_apid::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The kernel log device.
    #[arg(long, default_value = cairn_apid::DEFAULT_KMSG)]
    kmsg: PathBuf,
    /// etcd's client URL.
    #[arg(long, default_value = cairn_apid::DEFAULT_ETCD_ENDPOINT)]
    etcd_endpoint: String,
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(service = "apid", error = %format!("{e:#}"), "cairn-apid failed");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = cairn_apid::Config {
        listen: args.listen,
        secrets_dir: args.secrets_dir,
        control_socket: args.control_socket,
        machine_config: args.machine_config,
        run_dir: args.run_dir,
        kmsg: args.kmsg,
        etcd_endpoint: args.etcd_endpoint,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = stop_signal().await?;
        cairn_apid::run(config, shutdown).await?;
        tracing::info!(service = "apid", event = "stopped", "machine API stopped");
        Ok(())
    })
}

/// Completes at SIGTERM (the supervisor's stop) or SIGINT.
async fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
