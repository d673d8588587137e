//! Builds a Unified Kernel Image: systemd-stub (`linuxx64.efi.stub`) with the
//! `.osrel`, `.cmdline`, `.linux` and `.initrd` sections added by `objcopy`.
//!
//! Each new section gets a 4 KiB aligned address after the stub's last
//! section, so nothing overlaps. objcopy (binutils 2.40) stamps the PE header
//! with the current time and ignores SOURCE_DATE_EPOCH, so the timestamp is
//! zeroed afterwards (as in the stub itself) and the PE checksum recomputed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{self, ToolError};

/// Alignment of the added sections' addresses.
pub const SECTION_ALIGN: u64 = 4096;

/// What goes into a UKI.
#[derive(Debug, Clone, Copy)]
pub struct UkiInputs<'a> {
    /// systemd-stub, e.g. /usr/lib/systemd/boot/efi/linuxx64.efi.stub.
    pub stub: &'a Path,
    /// The kernel (bzImage).
    pub kernel: &'a Path,
    /// The initramfs (compressed cpio).
    pub initrd: &'a [u8],
    /// Kernel command line.
    pub cmdline: &'a str,
    /// os-release contents (shown by systemd-boot as the entry's title).
    pub os_release: &'a str,
}

/// Why the UKI could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// Reading or writing a file failed.
    #[error("uki: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The stub or result is not a PE32+ image we understand.
    #[error("uki: {path} is not a usable PE32+ image: {problem}")]
    BadPe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// objcopy failed.
    #[error("uki: building {out}: {source}")]
    Tool {
        /// UKI being written.
        out: PathBuf,
        /// The failure.
        source: ToolError,
    },
}

/// One section header of a PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection {
    /// Section name (up to 8 bytes).
    pub name: String,
    /// Relative virtual address.
    pub rva: u64,
    /// Size in memory.
    pub virtual_size: u64,
    /// Size in the file.
    pub raw_size: u64,
}

/// The PE header facts the UKI builder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeInfo {
    /// ImageBase from the optional header.
    pub image_base: u64,
    /// Section table.
    pub sections: Vec<PeSection>,
    /// Offset of the COFF TimeDateStamp field.
    pub timestamp_offset: usize,
    /// Offset of the optional header's CheckSum field.
    pub checksum_offset: usize,
}

impl PeInfo {
    /// First RVA past every section.
    pub fn end_rva(&self) -> u64 {
        self.sections
            .iter()
            .map(|s| s.rva + s.virtual_size.max(s.raw_size))
            .max()
            .unwrap_or(0)
    }
}

fn le(bytes: &[u8], at: usize, n: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(n)?)?;
    Some(
        slice
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    )
}

/// Parses the headers of a PE32+ image.
pub fn parse_pe(bytes: &[u8]) -> Result<PeInfo, String> {
    let short = || "truncated header".to_string();
    if bytes.get(0..2) != Some(b"MZ") {
        return Err("no MZ signature".into());
    }
    let pe = le(bytes, 0x3c, 4).ok_or_else(short)? as usize;
    if bytes.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("no PE signature".into());
    }
    let coff = pe + 4;
    let nsections = le(bytes, coff + 2, 2).ok_or_else(short)? as usize;
    let opt_size = le(bytes, coff + 16, 2).ok_or_else(short)? as usize;
    let opt = coff + 20;
    if le(bytes, opt, 2) != Some(0x20b) {
        return Err("optional header is not PE32+".into());
    }
    let image_base = le(bytes, opt + 24, 8).ok_or_else(short)?;
    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let h = table + 40 * i;
        let raw_name = bytes.get(h..h + 8).ok_or_else(short)?;
        let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
        sections.push(PeSection {
            name: String::from_utf8_lossy(&raw_name[..name_len]).into_owned(),
            virtual_size: le(bytes, h + 8, 4).ok_or_else(short)?,
            rva: le(bytes, h + 12, 4).ok_or_else(short)?,
            raw_size: le(bytes, h + 16, 4).ok_or_else(short)?,
        });
    }
    Ok(PeInfo {
        image_base,
        sections,
        timestamp_offset: coff + 4,
        checksum_offset: opt + 64,
    })
}

/// The standard PE image checksum (16-bit one's-complement-style sum with
/// the CheckSum field itself treated as zero, plus the file length).
pub fn pe_checksum(bytes: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in bytes.chunks(2).enumerate() {
        let at = i * 2;
        if at >= checksum_offset && at < checksum_offset + 4 {
            continue;
        }
        let word = u64::from(chunk[0]) | (u64::from(*chunk.get(1).unwrap_or(&0)) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    // Images are far below 4 GiB; truncation cannot occur for a real UKI.
    (sum + bytes.len() as u64) as u32
}

/// Builds the UKI at `out` (replacing it).
pub fn make_uki(inputs: &UkiInputs<'_>, out: &Path) -> Result<(), UkiError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| UkiError::Io { what, path, source }
    };
    let stub_bytes = std::fs::read(inputs.stub).map_err(io("reading stub", inputs.stub))?;
    let stub = parse_pe(&stub_bytes).map_err(|problem| UkiError::BadPe {
        path: inputs.stub.to_path_buf(),
        problem,
    })?;
    let kernel_len = std::fs::metadata(inputs.kernel)
        .map_err(io("reading kernel", inputs.kernel))?
        .len();

    let scratch_parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new()
        .prefix(".uki-")
        .tempdir_in(scratch_parent)
        .map_err(io("creating scratch dir in", scratch_parent))?;
    let write = |name: &str, data: &[u8]| -> Result<PathBuf, UkiError> {
        let p = scratch.path().join(name);
        std::fs::write(&p, data).map_err(io("writing", &p))?;
        Ok(p)
    };
    let sections: [(&str, PathBuf, u64); 4] = [
        (
            ".osrel",
            write("osrel", inputs.os_release.as_bytes())?,
            inputs.os_release.len() as u64,
        ),
        (
            ".cmdline",
            write("cmdline", inputs.cmdline.as_bytes())?,
            inputs.cmdline.len() as u64,
        ),
        (".linux", inputs.kernel.to_path_buf(), kernel_len),
        (
            ".initrd",
            write("initrd", inputs.initrd)?,
            inputs.initrd.len() as u64,
        ),
    ];

    let mut cmd = Command::new("objcopy");
    let mut rva = stub.end_rva().next_multiple_of(SECTION_ALIGN);
    for (name, path, len) in &sections {
        let mut add = std::ffi::OsString::from(format!("{name}="));
        add.push(path);
        cmd.arg("--add-section").arg(add);
        cmd.arg("--change-section-vma")
            .arg(format!("{name}={:#x}", stub.image_base + rva));
        rva = (rva + len.max(&1)).next_multiple_of(SECTION_ALIGN);
    }
    cmd.arg(inputs.stub).arg(out);
    tool::run(&mut cmd).map_err(|source| UkiError::Tool {
        out: out.to_path_buf(),
        source,
    })?;

    let mut bytes = std::fs::read(out).map_err(io("reading back", out))?;
    let info = parse_pe(&bytes).map_err(|problem| UkiError::BadPe {
        path: out.to_path_buf(),
        problem,
    })?;
    bytes[info.timestamp_offset..info.timestamp_offset + 4].fill(0);
    let sum = pe_checksum(&bytes, info.checksum_offset);
    bytes[info.checksum_offset..info.checksum_offset + 4].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(out, &bytes).map_err(io("writing", out))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::test_support::{have_tool, skip_unless_ci, systemd_boot_dir};

    /// The pinned systemd-stub, once objcopy is there too.
    fn stub() -> Result<PathBuf, String> {
        if !have_tool("objcopy") {
            return Err("objcopy (binutils) not installed".into());
        }
        Ok(systemd_boot_dir()?.join("linuxx64.efi.stub"))
    }

    #[test]
    fn checksum_matches_the_stubs_own() {
        let stub = match stub() {
            Ok(stub) => stub,
            Err(why) => skip_unless_ci!(why),
        };
        let bytes = std::fs::read(&stub).unwrap();
        let info = parse_pe(&bytes).unwrap();
        let stored = le(&bytes, info.checksum_offset, 4).unwrap() as u32;
        assert_eq!(pe_checksum(&bytes, info.checksum_offset), stored);
    }

    #[test]
    fn sections_are_aligned_disjoint_and_output_reproducible() {
        let stub = match stub() {
            Ok(stub) => stub,
            Err(why) => skip_unless_ci!(why),
        };
        let t = tempfile::tempdir().unwrap();
        let kernel = t.path().join("vmlinuz");
        std::fs::write(&kernel, vec![0xAB; 123_457]).unwrap();
        let initrd = vec![0xCD; 5000];
        let inputs = UkiInputs {
            stub: &stub,
            kernel: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0 cairn.slot=a",
            os_release: "ID=cairn\n",
        };
        let (a, b) = (t.path().join("a.efi"), t.path().join("b.efi"));
        make_uki(&inputs, &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make_uki(&inputs, &b).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());

        let info = parse_pe(&bytes).unwrap();
        assert_eq!(le(&bytes, info.timestamp_offset, 4), Some(0));
        let find = |n: &str| info.sections.iter().find(|s| s.name == n).unwrap().clone();
        let added = [".osrel", ".cmdline", ".linux", ".initrd"].map(find);
        assert_eq!(added[1].virtual_size, 26);
        assert_eq!(added[2].virtual_size, 123_457);
        for s in &added {
            assert_eq!(s.rva % SECTION_ALIGN, 0, "{} unaligned", s.name);
        }
        let stub_end = parse_pe(&std::fs::read(&stub).unwrap()).unwrap().end_rva();
        assert!(added[0].rva >= stub_end);
        // The stub packs .sbat/.sdmagic closer than their file alignment, so
        // overlap is judged on virtual sizes.
        let mut spans: Vec<_> = info
            .sections
            .iter()
            .map(|s| (s.rva, s.rva + s.virtual_size))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:?}");
        }
        assert_eq!(
            pe_checksum(&bytes, info.checksum_offset),
            le(&bytes, info.checksum_offset, 4).unwrap() as u32
        );
    }
}
