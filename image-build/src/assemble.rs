//! Ties the pieces into the bootable disk image: squashfs of the root
//! filesystem into slot A (slot B same size, empty), a UKI for slot A, the
//! ESP with systemd-boot set to boot that UKI at once, small unformatted STATE
//! and DATA partitions, then the raw GPT image and its qcow2 conversion.
//!
//! Disk layout (1 MiB aligned, in this order): EFI (64 MiB, FAT32),
//! CAIRN-A, CAIRN-B (slot size each), STATE (16 MiB), DATA (16 MiB; the init
//! grows it to the end of the disk and formats it on first boot).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::disk::{self, DiskError, DiskLayout, PartitionSpec};
use crate::esp::{self, EspError, EspSource};
use crate::gpt::{TYPE_ESP, TYPE_LINUX_FS, TYPE_LINUX_ROOT_X86_64};
use crate::qcow2::{self, Qcow2Error};
use crate::squashfs::{self, SquashfsError};
use crate::uki::{self, UkiError, UkiInputs};

const MIB: u64 = 1 << 20;
/// Size of the EFI system partition.
pub const ESP_SIZE: u64 = 64 * MIB;
/// Default size of each system slot (sparse in the raw image, unallocated in
/// the qcow2, so generous costs nothing; it bounds future updates).
pub const DEFAULT_SLOT_SIZE: u64 = 1024 * MIB;
/// Size of STATE in the image (unformatted).
pub const STATE_SIZE: u64 = 16 * MIB;
/// Size of DATA in the image (unformatted; grown on first boot).
pub const DATA_SIZE: u64 = 16 * MIB;
/// Where the slot A UKI lives on the ESP (systemd-boot auto-discovers
/// Type #2 entries in /EFI/Linux).
pub const UKI_A_PATH: &str = "/EFI/Linux/cairn-a.efi";
/// The removable-media boot path firmware falls back to.
pub const BOOTLOADER_PATH: &str = "/EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's configuration file.
pub const LOADER_CONF_PATH: &str = "/loader/loader.conf";
/// systemd-boot 252 configuration: no menu, boot slot A's UKI, no editing
/// of the kernel command line from the menu.
pub const LOADER_CONF: &str = "timeout 0\ndefault cairn-a.efi\neditor no\n";

/// Everything the image is made from.
#[derive(Debug, Clone)]
pub struct ImageInputs {
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs, already built (gzip'd newc cpio).
    pub initramfs: Vec<u8>,
    /// Kernel command line for slot A, e.g. "console=ttyS0 cairn.slot=a quiet".
    pub cmdline: String,
    /// os-release contents embedded in the UKI.
    pub os_release: String,
    /// Directory squashed into slot A.
    pub rootfs_dir: PathBuf,
    /// systemd-bootx64.efi.
    pub systemd_boot: PathBuf,
    /// systemd-stub (linuxx64.efi.stub).
    pub stub: PathBuf,
    /// Timestamp for every file, directory and filesystem.
    pub source_date_epoch: u64,
    /// Base name of the outputs.
    pub name: String,
    /// Size of each system slot; `None` means [`DEFAULT_SLOT_SIZE`].
    pub slot_size_bytes: Option<u64>,
}

/// Sizes of what was built, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSizes {
    /// Root filesystem image.
    pub squashfs: u64,
    /// The slot A UKI.
    pub uki: u64,
    /// Each system slot partition.
    pub slot: u64,
    /// Virtual size of the raw disk.
    pub raw_virtual: u64,
    /// Bytes the raw disk occupies on the build host (it is sparse).
    pub raw_allocated: u64,
    /// The qcow2 file.
    pub qcow2: u64,
}

/// The files produced.
#[derive(Debug, Clone)]
pub struct ImageOutputs {
    /// `<out>/<name>.raw`.
    pub raw: PathBuf,
    /// `<out>/<name>.qcow2`.
    pub qcow2: PathBuf,
    /// `<out>/<name>.squashfs` (slot A's contents, kept for update bundles).
    pub squashfs: PathBuf,
    /// `<out>/<name>.efi` (slot A's UKI, kept for update bundles).
    pub uki: PathBuf,
    /// Sizes.
    pub sizes: ImageSizes,
}

/// Why assembly failed.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A file-level step failed.
    #[error("assemble: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The output name is unusable as a file name.
    #[error("assemble: invalid image name {0:?}")]
    InvalidName(String),
    /// The squashfs does not fit the requested slot size.
    #[error("assemble: squashfs of {squashfs} bytes does not fit slot of {slot} bytes")]
    SlotTooSmall {
        /// Squashfs size.
        squashfs: u64,
        /// Slot size.
        slot: u64,
    },
    /// Building the root filesystem failed.
    #[error(transparent)]
    Squashfs(#[from] SquashfsError),
    /// Building the UKI failed.
    #[error(transparent)]
    Uki(#[from] UkiError),
    /// Building the ESP failed.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// Writing the disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// qcow2 conversion failed.
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AssembleError {
    let path = path.to_path_buf();
    move |source| AssembleError::Io { what, path, source }
}

/// Builds `<out_dir>/<name>.{raw,qcow2,squashfs,efi}` from `inputs`.
pub fn assemble(inputs: &ImageInputs, out_dir: &Path) -> Result<ImageOutputs, AssembleError> {
    let name = &inputs.name;
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(AssembleError::InvalidName(name.clone()));
    }
    std::fs::create_dir_all(out_dir).map_err(io_err("creating", out_dir))?;
    let path = |ext: &str| out_dir.join(format!("{name}.{ext}"));
    let (sq_path, uki_path, raw_path, qcow2_path) =
        (path("squashfs"), path("efi"), path("raw"), path("qcow2"));

    squashfs::make_squashfs(&inputs.rootfs_dir, &sq_path, inputs.source_date_epoch)?;
    let sq_len = file_len(&sq_path)?;
    let slot = disk::align_up(inputs.slot_size_bytes.unwrap_or(DEFAULT_SLOT_SIZE));
    if sq_len > slot {
        return Err(AssembleError::SlotTooSmall {
            squashfs: sq_len,
            slot,
        });
    }

    uki::make_uki(
        &UkiInputs {
            stub: &inputs.stub,
            kernel: &inputs.kernel,
            initrd: &inputs.initramfs,
            cmdline: &inputs.cmdline,
            os_release: &inputs.os_release,
        },
        &uki_path,
    )?;
    let uki_len = file_len(&uki_path)?;

    let scratch = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(out_dir)
        .map_err(io_err("creating scratch dir in", out_dir))?;
    let esp_path = scratch.path().join("esp.img");
    let esp_files = vec![
        (
            BOOTLOADER_PATH.to_string(),
            EspSource::Path(inputs.systemd_boot.clone()),
        ),
        (
            LOADER_CONF_PATH.to_string(),
            EspSource::Bytes(LOADER_CONF.as_bytes().to_vec()),
        ),
        (UKI_A_PATH.to_string(), EspSource::Path(uki_path.clone())),
    ];
    esp::make_esp(&esp_path, ESP_SIZE, &esp_files, inputs.source_date_epoch)?;

    let seed = disk_seed(inputs, &sq_path, &uki_path)?;
    let spec = |label: &str, type_guid, size_bytes, contents: Option<&Path>| PartitionSpec {
        label: label.to_string(),
        type_guid,
        size_bytes,
        contents: contents.map(Path::to_path_buf),
    };
    let layout = DiskLayout {
        partitions: vec![
            spec(disk::LABEL_ESP, TYPE_ESP, ESP_SIZE, Some(&esp_path)),
            spec(
                disk::LABEL_SLOT_A,
                TYPE_LINUX_ROOT_X86_64,
                slot,
                Some(&sq_path),
            ),
            spec(disk::LABEL_SLOT_B, TYPE_LINUX_ROOT_X86_64, slot, None),
            spec(disk::LABEL_STATE, TYPE_LINUX_FS, STATE_SIZE, None),
            spec(disk::LABEL_DATA, TYPE_LINUX_FS, DATA_SIZE, None),
        ],
    };
    let info = disk::write_disk(&layout, &raw_path, &seed)?;
    qcow2::raw_to_qcow2(&raw_path, &qcow2_path)?;

    let raw_meta = std::fs::metadata(&raw_path).map_err(io_err("reading", &raw_path))?;
    let sizes = ImageSizes {
        squashfs: sq_len,
        uki: uki_len,
        slot,
        raw_virtual: info.size_bytes,
        raw_allocated: std::os::unix::fs::MetadataExt::blocks(&raw_meta) * 512,
        qcow2: file_len(&qcow2_path)?,
    };
    Ok(ImageOutputs {
        raw: raw_path,
        qcow2: qcow2_path,
        squashfs: sq_path,
        uki: uki_path,
        sizes,
    })
}

fn file_len(path: &Path) -> Result<u64, AssembleError> {
    Ok(std::fs::metadata(path)
        .map_err(io_err("reading", path))?
        .len())
}

/// The GUID seed: a hash of the name, the epoch and the two payloads, so that
/// different builds get different disk/partition GUIDs and equal builds equal.
fn disk_seed(inputs: &ImageInputs, squashfs: &Path, uki: &Path) -> Result<Vec<u8>, AssembleError> {
    let mut h = Sha256::new();
    h.update(inputs.name.as_bytes());
    h.update([0]);
    h.update(inputs.source_date_epoch.to_le_bytes());
    for p in [squashfs, uki] {
        let mut f = std::fs::File::open(p).map_err(io_err("hashing", p))?;
        std::io::copy(&mut f, &mut h).map_err(io_err("hashing", p))?;
    }
    Ok(h.finalize().to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cpio::CpioBuilder;
    use crate::gpt;

    use crate::test_support::{have_tool, skip_unless_ci, systemd_boot_dir};

    /// The pinned systemd-boot directory, once the host tools are there too.
    fn sdboot() -> Result<PathBuf, String> {
        for (tool, package) in [
            ("mksquashfs", "squashfs-tools"),
            ("objcopy", "binutils"),
            ("qemu-img", "qemu-utils"),
        ] {
            if !have_tool(tool) {
                return Err(format!("{tool} ({package}) not installed"));
            }
        }
        systemd_boot_dir()
    }

    fn inputs(dir: &Path, epoch: u64, sdboot: &Path) -> ImageInputs {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(
            root.join("usr/bin/tool"),
            b"\x7fELF not really\n".repeat(500),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), b"cairn\n").unwrap();
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, vec![0x42; 200_000]).unwrap();
        let mut cpio = CpioBuilder::new(epoch);
        cpio.add_file("/init", 0o755, b"#!/bin/true\n".to_vec())
            .unwrap();
        cpio.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        ImageInputs {
            kernel,
            initramfs: cpio.finish_gzip().unwrap(),
            cmdline: "console=ttyS0 cairn.slot=a quiet".into(),
            os_release: "ID=cairn\nNAME=cairn\n".into(),
            rootfs_dir: root,
            systemd_boot: sdboot.join("systemd-bootx64.efi"),
            stub: sdboot.join("linuxx64.efi.stub"),
            source_date_epoch: epoch,
            name: "cairn-test".into(),
            slot_size_bytes: Some(8 * MIB),
        }
    }

    #[test]
    fn reproducible_and_input_sensitive() {
        let sdboot = match sdboot() {
            Ok(dir) => dir,
            Err(why) => skip_unless_ci!(why),
        };
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let base = inputs(&src, 1_700_000_000, &sdboot);
        let a = assemble(&base, &t.path().join("a")).unwrap();
        // Touch the rootfs (host mtimes must not leak) and rebuild elsewhere.
        std::fs::write(base.rootfs_dir.join("etc/hostname"), b"cairn\n").unwrap();
        let b = assemble(&base, &t.path().join("b")).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&a.raw), read(&b.raw), "raw differs");
        assert_eq!(read(&a.qcow2), read(&b.qcow2), "qcow2 differs");
        assert_eq!(a.sizes, b.sizes);
        assert_eq!(a.sizes.raw_virtual, (1 + 64 + 8 + 8 + 16 + 16 + 1) * MIB);

        let raw = read(&a.raw);
        let table = gpt::decode(&raw).unwrap();
        let names: Vec<_> = table.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["EFI", "CAIRN-A", "CAIRN-B", "STATE", "DATA"]);
        let slot_a = (table.partitions[1].first_lba * gpt::SECTOR) as usize;
        assert_eq!(&raw[slot_a..slot_a + 4], b"hsqs");

        let mut later = base.clone();
        later.source_date_epoch += 1;
        let c = assemble(&later, &t.path().join("c")).unwrap();
        assert_ne!(read(&a.raw), read(&c.raw), "epoch change not reflected");

        std::fs::write(base.rootfs_dir.join("etc/hostname"), b"other\n").unwrap();
        let d = assemble(&base, &t.path().join("d")).unwrap();
        assert_ne!(read(&a.raw), read(&d.raw), "file change not reflected");
        assert_ne!(read(&a.qcow2), read(&d.qcow2));
        // No scratch files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(t.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 4, "{leftovers:?}");
    }

    #[test]
    fn slot_too_small_is_reported() {
        let sdboot = match sdboot() {
            Ok(dir) => dir,
            Err(why) => skip_unless_ci!(why),
        };
        let t = tempfile::tempdir().unwrap();
        let mut i = inputs(&t.path().join("src"), 0, &sdboot);
        std::fs::write(
            i.rootfs_dir.join("big"),
            (0..3_000_000u32)
                .flat_map(u32::to_le_bytes)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        i.slot_size_bytes = Some(MIB);
        let err = assemble(&i, &t.path().join("out")).unwrap_err();
        assert!(matches!(err, AssembleError::SlotTooSmall { .. }), "{err}");
    }
}
