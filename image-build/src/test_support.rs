//! Helpers for this crate's unit tests: the pinned upstream files they need,
//! taken from the component cache (the same files the image build uses, never
//! the host's), and the skip of a test whose prerequisite is missing.

use std::path::PathBuf;

/// [`crate::test_rule::skip_outside_ci`], then returns from the caller.
macro_rules! skip_unless_ci {
    ($why:expr) => {{
        crate::test_rule::skip_outside_ci(&$why.to_string());
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
