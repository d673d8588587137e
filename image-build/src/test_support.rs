//! Helpers for this crate's unit tests: the pinned upstream files they need,
//! taken from the component cache (the same files the image build uses, never
//! the host's), and the one rule for a missing prerequisite.

use std::path::PathBuf;

/// Skips the calling test with `why` outside CI, and fails it under `CI=true`,
/// where every test must run. Returns from the caller.
macro_rules! skip_unless_ci {
    ($why:expr) => {{
        let why: String = $why.to_string();
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI every test must run; missing: {why}"
        );
        // Straight to fd 2: the test harness captures eprintln! of a passing test.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED: {why}\n"));
        return;
    }};
}
pub(crate) use skip_unless_ci;

/// The pinned systemd-boot-efi's EFI directory (`linuxx64.efi.stub`,
/// `systemd-bootx64.efi`) in the component cache, or the reason it is not there.
pub(crate) fn systemd_boot_dir() -> Result<PathBuf, String> {
    let report = crate::components::cached(&["systemd-boot-efi"]).map_err(|e| e.to_string())?;
    let root = report
        .deb_root("systemd-boot-efi")
        .map_err(|e| e.to_string())?;
    Ok(root.join(crate::image::SYSTEMD_BOOT_EFI_DIR))
}

/// Whether `tool --version` runs.
pub(crate) fn have_tool(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
}
