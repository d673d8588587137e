//! Builds cairn's own programs that ship inside OCI images (the pause program,
//! the webtest workload) as fully static executables: those images have no
//! libc and no loader. It runs the one documented command, a nested
//! `cargo build` for the gnu target with `crt-static`, into its own target
//! directory (`<target>/static`, see [`target_dir`]) so it neither fights over nor
//! invalidates the ordinary build's artifacts:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
//!     -p <package> --target x86_64-unknown-linux-gnu --target-dir <workspace>/target/static
//! ```
//!
//! Not for: checking that the result is static (the image writers do, see
//! `oci::static_program_image`), or building upstream components (see
//! `components`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Cargo's target directory for the workspace at `workspace_root`:
/// `$CARGO_TARGET_DIR` when set (the README's commands point it at a cache
/// outside the clone, see `image-build/setup.sh`), else `<workspace>/target`.
pub fn target_dir(workspace_root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root.join(dir)
            }
        }
        _ => workspace_root.join("target"),
    }
}

/// The target the static programs are built for.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum StaticBuildError {
    #[error("running {cargo} to build {package} statically: {source}")]
    Spawn {
        cargo: String,
        package: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building {package} statically failed ({status}); cargo said:\n{stderr}")]
    Failed {
        package: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cargo built {package} statically but there is no binary {path}")]
    Missing { package: String, path: PathBuf },
}

/// Builds `bin` of `package` statically (release, `--locked`) and returns the
/// path of the executable, `<target>/static/x86_64-unknown-linux-gnu/release/<bin>`.
/// Uses `$CARGO` when set (as under `cargo test` or `cargo run`), else `cargo`.
pub fn build_static(
    workspace_root: &Path,
    package: &str,
    bin: &str,
) -> Result<PathBuf, StaticBuildError> {
    let target_dir = target_dir(workspace_root).join("static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace_root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .args(["--target", STATIC_TARGET, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Would take precedence over RUSTFLAGS (cargo sets it for build scripts
        // and nested builds inherit it).
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| StaticBuildError::Spawn {
            cargo: cargo.to_string_lossy().into_owned(),
            package: package.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(StaticBuildError::Failed {
            package: package.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let path = target_dir.join(STATIC_TARGET).join("release").join(bin);
    if !path.is_file() {
        return Err(StaticBuildError::Missing {
            package: package.to_string(),
            path,
        });
    }
    Ok(path)
}
