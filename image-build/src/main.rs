//! `cairn-image`: builds the pinned upstream components and the cairn disk image.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use cairn_image::components::{self, BuildOptions, Cache, Lockfile};
use cairn_image::image::{self, ImageOptions};

#[derive(Parser)]
#[command(
    name = "cairn-image",
    about = "Build cairn's components and disk image"
)]
struct Cli {
    /// The component lockfile.
    #[arg(long, global = true, default_value_os_t = default_lockfile())]
    lockfile: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build or fetch the pinned upstream components into the cache.
    #[command(subcommand)]
    Components(ComponentsCmd),
    /// Build the bootable disk image.
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build cairn-init, cairn-apid, cairn-gitops and the disk image (`<out>/<name>.raw` and `.qcow2`).
    Build {
        /// Build the benchmark image (`cairn-bench`): an init that can also start the
        /// node's services unsupervised, to measure what supervision costs.
        #[arg(long)]
        bench: bool,
        /// Output directory.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Use prebuilt binaries (a directory holding cairn-init, cairn-apid and cairn-gitops)
        /// instead of building them with cargo.
        #[arg(long)]
        binaries: Option<PathBuf>,
        /// Use only the component cache.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Subcommand)]
enum ComponentsCmd {
    /// Build what is missing from the cache and print a summary.
    Build(BuildArgs),
    /// After editing versions in the lockfile: regenerate wrappers and re-pin hashes.
    Update(BuildArgs),
    /// Print the cached path of a component's binary (or a package's extracted tree).
    Path {
        name: String,
        binary: Option<String>,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Use only the cache; fail, naming every missing entry, if it is cold.
    #[arg(long)]
    offline: bool,
    /// Only these components or packages.
    #[arg(long)]
    only: Vec<String>,
    /// A folder of .deb files to use before apt-get.
    #[arg(long)]
    deb_dir: Option<PathBuf>,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            offline: self.offline,
            only: self.only.clone(),
            deb_dir: self.deb_dir.clone(),
            skip_pins: false,
        }
    }
}

fn default_lockfile() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("components.toml")
}

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-image: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let lock = Lockfile::load(&cli.lockfile)?;
    let cache = Cache::from_env();
    match cli.command {
        Cmd::Components(ComponentsCmd::Build(args)) => {
            eprintln!("components: cache {}", cache.root().display());
            let report = components::build_all(&lock, &cache, &args.options())?;
            print!("{}", report.table());
        }
        Cmd::Components(ComponentsCmd::Update(args)) => {
            let changes = components::update(&lock, &cache, &args.options())?;
            if changes.is_empty() {
                println!("lockfile already up to date");
            } else {
                print!("{changes}");
            }
        }
        Cmd::Components(ComponentsCmd::Path { name, binary }) => {
            let opts = BuildOptions {
                offline: true,
                only: vec![name.clone()],
                ..BuildOptions::default()
            };
            let report = components::build_all(&lock, &cache, &opts).with_context(|| {
                format!("`{name}` is not in the cache; run `cairn-image components build` first")
            })?;
            let path = match binary {
                Some(b) => report.binary(&name, &b)?,
                None => match report.go.get(&name) {
                    Some(entry) => entry.dir.clone(),
                    None => report.deb_root(&name)?.to_path_buf(),
                },
            };
            println!("{}", path.display());
        }
        Cmd::Image(ImageCmd::Build {
            bench,
            out,
            binaries,
            offline,
        }) => {
            let dir = match binaries {
                Some(dir) => dir,
                None => build_binaries(bench)?,
            };
            let (init, apid, gitops) = (
                dir.join("cairn-init"),
                dir.join("cairn-apid"),
                dir.join("cairn-gitops"),
            );
            let name = if bench { "cairn-bench" } else { "cairn" };
            let summary = image::build(
                &lock,
                &cache,
                &ImageOptions {
                    name: name.into(),
                    init,
                    apid,
                    gitops,
                    out_dir: out,
                    offline,
                    cmdline_extra: String::new(),
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
    }
    Ok(())
}

/// Builds cairn-init, cairn-apid and cairn-gitops in release mode and returns their directory;
/// the benchmark variant in its own target dir so the two never overwrite each other.
fn build_binaries(bench: bool) -> Result<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = cairn_image::static_bins::target_dir(&workspace);
    let target = if bench { target.join("bench") } else { target };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cairn-init",
            "-p",
            "cairn-apid",
            "-p",
            "cairn-gitops",
            "--target-dir",
        ])
        .arg(&target);
    if bench {
        cmd.args(["--features", "cairn-init/bench-plain"]);
    }
    eprintln!(
        "image: building cairn-init, cairn-apid and cairn-gitops{}",
        if bench { " (benchmark variant)" } else { "" }
    );
    let status = cmd
        .status()
        .context("running cargo to build cairn-init, cairn-apid and cairn-gitops")?;
    anyhow::ensure!(
        status.success(),
        "building cairn-init, cairn-apid and cairn-gitops failed ({status})"
    );
    Ok(target.join("release"))
}
