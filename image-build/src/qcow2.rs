//! Converts the raw disk image to qcow2 with `qemu-img convert`.
//!
//! Uncompressed: qemu-img 7.2 output was byte-identical across runs both with
//! and without `-c`, but the payload (squashfs zstd, a UKI holding a
//! compressed kernel) is already compressed, so `-c` saved ~0.01 % while
//! making every guest write to a compressed cluster a reallocation. No `-W`
//! (out-of-order writes would make the layout depend on timing).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{self, ToolError};

/// Why the conversion failed.
#[derive(Debug, thiserror::Error)]
#[error("qcow2: converting {raw} to {out}: {source}")]
pub struct Qcow2Error {
    /// Source raw image.
    pub raw: PathBuf,
    /// Destination qcow2.
    pub out: PathBuf,
    /// The qemu-img failure.
    pub source: ToolError,
}

/// Writes `out` (qcow2, replacing it) with the contents of the raw image `raw`.
pub fn raw_to_qcow2(raw: &Path, out: &Path) -> Result<(), Qcow2Error> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .args(["-o", "compat=1.1,cluster_size=65536"])
        .arg(raw)
        .arg(out);
    tool::run(&mut cmd).map_err(|source| Qcow2Error {
        raw: raw.to_path_buf(),
        out: out.to_path_buf(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_names_missing_input() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("d.raw");
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(4 << 20).unwrap();
        drop(f);
        std::fs::write(t.path().join("x"), b"").unwrap();
        let out = t.path().join("d.qcow2");
        if let Err(e) = raw_to_qcow2(&raw, &out) {
            if matches!(e.source, ToolError::Spawn { .. }) {
                crate::test_support::skip_unless_ci!("qemu-img not installed");
            }
            panic!("{e}");
        }
        assert_eq!(&std::fs::read(&out).unwrap()[..4], b"QFI\xfb");
        let err = raw_to_qcow2(&t.path().join("missing.raw"), &out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.raw") && err.contains("qemu-img failed"),
            "{err}"
        );
    }
}
