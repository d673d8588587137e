//! `cairnctl`: manage cairn nodes from a workstation.
//!
//! Exit codes: 0 success; 1 the call failed (or `health` found the node unhealthy);
//! 2 bad usage; 3 authentication refused or permission denied; 4 node unreachable.

#![forbid(unsafe_code)]

mod api;
mod output;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use cairn_api::Role;
use cairn_machine_config::Hostname;
use clap::{CommandFactory, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(name = "cairnctl", version, about = "Manage cairn nodes")]
struct Cli {
    /// The client config (default: $CAIRNCONFIG, then ~/.cairn/config).
    #[arg(long, global = true)]
    cairnconfig: Option<PathBuf>,
    /// Nodes to talk to (`host` or `host:port`, comma-separated); default: the
    /// client config's endpoints.
    #[arg(long, short = 'n', global = true, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate configuration and credentials.
    #[command(subcommand)]
    Gen(GenCmd),
    /// The node's software and identity.
    Version,
    /// Every service ready and the Kubernetes node Ready (exit 1 when not).
    Health,
    /// The node's services: state, readiness, restarts, memory.
    Services,
    /// Start, stop, restart or signal one service.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Restart one service (same as `service restart`).
    Restart { name: String },
    /// One service's log.
    Logs {
        service: String,
        /// Keep streaming new lines.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines first (default: all kept).
        #[arg(long)]
        tail: Option<u32>,
    },
    /// The kernel's messages.
    Dmesg {
        #[arg(long, short = 'f')]
        follow: bool,
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Reboot the node (orderly: pods drained, services stopped in order).
    Reboot,
    /// Power the node off (orderly).
    Shutdown,
    /// An admin kubeconfig: from the node through the API, or from a secrets bundle.
    Kubeconfig {
        /// Read it from this secrets bundle instead of asking a node.
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// Server URL to put in it, e.g. https://127.0.0.1:6443.
        #[arg(long)]
        server: Option<String>,
    },
    /// etcd maintenance.
    #[command(subcommand)]
    Etcd(EtcdCmd),
    /// The machine config.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The GitOps reconciler.
    #[command(subcommand)]
    Gitops(GitopsCmd),
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ServiceCmd {
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// Send a signal to the service's main process.
    Kill {
        name: String,
        #[arg(long, short = 's', default_value = "KILL")]
        signal: String,
    },
}

#[derive(Subcommand)]
enum EtcdCmd {
    Members,
    Status,
    /// Defragment the node's etcd (admin).
    Defrag,
    /// Save a snapshot of the keyspace (admin).
    Snapshot {
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum GitopsCmd {
    /// Revisions applied and seen, health, last error and history.
    Status,
    /// Fetch and reconcile now (operator).
    Sync,
    /// Stop fetching, applying and reverting drift (operator).
    Suspend,
    /// Undo `suspend` and catch up at once (operator).
    Resume,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// The config in use (secrets redacted).
    Get,
    /// Validate and keep a new config; it takes effect at the next boot.
    Apply {
        file: PathBuf,
        /// Only validate and show the diff.
        #[arg(long)]
        dry_run: bool,
        /// Reboot afterwards so it takes effect now.
        #[arg(long)]
        reboot: bool,
    },
}

#[derive(Subcommand)]
enum GenCmd {
    /// A node's machine config, its cluster's secrets bundle, an admin kubeconfig and
    /// a machine-API client config (cairnconfig, role os:admin).
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
    /// A machine-API client config for someone else, with a role.
    Client {
        /// The bundle written by `gen config` (secrets.yaml).
        #[arg(long)]
        secrets: PathBuf,
        /// Who it is for (the certificate's Common Name).
        #[arg(long)]
        name: String,
        /// reader, operator or admin.
        #[arg(long)]
        role: Role,
        /// Node endpoints (`host` or `host:port`).
        #[arg(long, required = true, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairnctl: error: {e:#}");
            api::exit_code(&e)
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Cmd::Gen(cmd) => gen_cmd(cmd).map(|()| 0),
        Cmd::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cairnctl",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Cmd::Kubeconfig {
            secrets: Some(secrets),
            server,
        } => {
            print!(
                "{}",
                cairnctl::admin_kubeconfig(&secrets, server.as_deref())?
            );
            Ok(0)
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let ctx = api::Context::new(cli.cairnconfig.as_deref(), cli.nodes, cli.output)?;
            runtime.block_on(api::run(&ctx, command))
        }
    }
}

fn gen_cmd(cmd: GenCmd) -> Result<()> {
    match cmd {
        GenCmd::Config {
            name,
            ip,
            endpoint,
            config,
            out,
            force,
        } => {
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
            println!(
                "wrote {} (machine API, os:admin; use with --cairnconfig or $CAIRNCONFIG)",
                generated.client_config.display()
            );
        }
        GenCmd::Client {
            secrets,
            name,
            role,
            endpoints,
            out,
            force,
        } => {
            cairnctl::gen_client(&secrets, &name, role, &endpoints, &out, force)?;
            println!("wrote {} ({name}, {role})", out.display());
        }
    }
    Ok(())
}
