//! `cairnctl`: manage cairn nodes from a workstation.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use cairn_machine_config::Hostname;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairnctl", version, about = "Manage cairn nodes")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate configuration.
    #[command(subcommand)]
    Gen(GenCmd),
    /// Print the admin kubeconfig of a secrets bundle.
    Kubeconfig {
        /// The bundle written by `gen config` (secrets.yaml).
        #[arg(long)]
        secrets: PathBuf,
        /// Server URL to put in the kubeconfig, e.g. https://127.0.0.1:6443.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand)]
enum GenCmd {
    /// A node's machine config, its cluster's secrets bundle and an admin kubeconfig.
    Config {
        /// The node's name (also its hostname).
        #[arg(long)]
        name: String,
        /// The address the node will have; its certificates name it.
        #[arg(long)]
        ip: IpAddr,
        /// The API server URL clients use (cluster.apiEndpoint).
        #[arg(long)]
        endpoint: Option<String>,
        /// A machine config to start from (default: the built-in one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("cairnctl: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::Gen(GenCmd::Config {
            name,
            ip,
            endpoint,
            config,
            out,
            force,
        }) => {
            let base_config = match config {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
                ),
                None => None,
            };
            let generated = cairnctl::gen_config(&cairnctl::GenOptions {
                name: Hostname::try_from(name)?,
                ip,
                base_config,
                endpoint,
                out_dir: out,
                force,
            })?;
            println!("wrote {}", generated.machine_config.display());
            println!(
                "wrote {} (private keys: keep it safe)",
                generated.secrets.display()
            );
            println!("wrote {}", generated.admin_kubeconfig.display());
        }
        Cmd::Kubeconfig { secrets, server } => {
            print!(
                "{}",
                cairnctl::admin_kubeconfig(&secrets, server.as_deref())?
            );
        }
    }
    Ok(())
}
