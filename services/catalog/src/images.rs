//! Pod images shipped in the system image: each OCI archive in [`DIR`] is imported
//! into containerd's `k8s.io` namespace (the one CRI uses) by a one-shot service
//! `image-import-<name>` running `ctr images import`, before kubelet starts. The
//! image names come from the archives' `io.containerd.image.name` annotations, so
//! the pause image lands under exactly the name containerd's config pins. Nothing
//! is ever pulled from a registry.
//! Ordering: after containerd; kubelet waits for every import.
//! Readiness: the import exited 0 (one-shot). Restart: on failure, with backoff
//! (containerd may restart underneath it).

use std::path::{Path, PathBuf};

use cairn_supervisor::{Probe, RestartPolicy, ServiceSpec};

use crate::Paths;

/// Where the image build puts the archives (`cairn_image::image::IMAGES_DIR`).
pub const DIR: &str = "/usr/share/cairn/images";
pub const SUFFIX: &str = ".oci.tar";

/// The service name importing `archive` (`image-import-<stem>`).
pub fn service_name(archive: &Path) -> String {
    let file = archive
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file.strip_suffix(SUFFIX).unwrap_or(&file);
    format!("image-import-{stem}")
}

/// The archives in `dir`, sorted.
pub fn archives(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(SUFFIX))
        .collect();
    out.sort();
    Ok(out)
}

/// One one-shot import per archive.
pub fn specs(paths: &Paths, archives: &[PathBuf]) -> Vec<ServiceSpec> {
    archives
        .iter()
        .map(|a| {
            ServiceSpec::new(service_name(a), paths.bin.join("ctr"))
                .args([
                    "--address".to_string(),
                    crate::containerd::SOCKET.to_string(),
                    "--namespace".into(),
                    "k8s.io".into(),
                    "images".into(),
                    "import".into(),
                    "--snapshotter".into(),
                    "overlayfs".into(),
                    a.display().to_string(),
                ])
                .env("PATH", "/usr/bin:/bin")
                .depends_on(crate::containerd::NAME)
                .readiness(Probe::Completion)
                .restart(RestartPolicy::OnFailure)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_import_per_archive() {
        let a = [PathBuf::from("/usr/share/cairn/images/pause.oci.tar")];
        let s = specs(&Paths::node(), &a);
        assert_eq!(s[0].name, "image-import-pause");
        assert_eq!(s[0].depends_on, ["containerd"]);
        assert_eq!(s[0].restart, RestartPolicy::OnFailure);
        assert!(s[0].args.contains(&"k8s.io".to_string()));
        s[0].validate().expect("valid spec");
    }
}
