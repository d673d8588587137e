//! `cairn-gitserver`: serves the git repositories under a directory over HTTPS
//! (smart HTTP, token auth) in the foreground until SIGTERM or Ctrl-C. For the demo.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, ensure};
use cairn_testgit::HttpsGitServer;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Serve the bare repositories under --root over HTTPS on 127.0.0.1, to clients
/// presenting the token (as `Authorization: Bearer <token>` or as the Basic
/// password). Prints the base URL, then serves until SIGTERM or Ctrl-C.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The directory holding the bare repositories (URL paths are relative to it).
    #[arg(long)]
    root: PathBuf,
    /// A file holding the token (surrounding whitespace is ignored).
    #[arg(long)]
    token_file: PathBuf,
    /// The port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write the CA certificate (PEM) that clients should trust.
    #[arg(long)]
    ca_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?;
    let token = token.trim();
    ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        args.token_file.display()
    );

    let server = HttpsGitServer::start_on(&args.root, token, args.port)?;
    if let Some(path) = &args.ca_out {
        std::fs::write(path, server.ca_pem())
            .with_context(|| format!("writing the CA certificate to {}", path.display()))?;
    }
    println!("https://127.0.0.1:{}/", server.port());

    wait_for_signal()?;
    drop(server);
    Ok(())
}

/// Returns on SIGTERM or SIGINT.
fn wait_for_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
