//! Reads what an ELF executable needs at run time: its program interpreter and
//! `DT_NEEDED` libraries. Used to check that binaries meant to be static are, and to
//! resolve the shared libraries the root filesystem must carry.

use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a 64-bit ELF file we can read: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// The run-time linking needs of one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`; `None` for static executables.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries in file order.
    pub needed: Vec<String>,
}

impl ElfNeeds {
    /// A static executable has neither an interpreter nor needed libraries.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }
}

/// Whether the file starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| magic == *b"\x7fELF")
        .unwrap_or(false)
}

pub fn needs(path: &Path) -> Result<ElfNeeds, ElfError> {
    let data = std::fs::read(path).map_err(|source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    needs_of(&data).map_err(|reason| ElfError::Parse {
        path: path.to_path_buf(),
        reason,
    })
}

fn needs_of(data: &[u8]) -> Result<ElfNeeds, String> {
    let header = elf::FileHeader64::<object::Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let mut out = ElfNeeds::default();
    for ph in header
        .program_headers(endian, data)
        .map_err(|e| e.to_string())?
    {
        if ph.p_type(endian) == elf::PT_INTERP {
            let bytes = ph
                .data(endian, data)
                .map_err(|()| "bad PT_INTERP".to_string())?;
            let s = bytes.split(|b| *b == 0).next().unwrap_or_default();
            out.interpreter = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    let sections = header.sections(endian, data).map_err(|e| e.to_string())?;
    if let Some((dyns, link)) = sections.dynamic(endian, data).map_err(|e| e.to_string())? {
        let strings = sections
            .strings(endian, data, link)
            .map_err(|e| e.to_string())?;
        for d in dyns {
            if d.tag(endian) == elf::DT_NEEDED {
                let name = d.string(endian, strings).map_err(|e| e.to_string())?;
                out.needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_host_binary_has_interpreter_and_libc() {
        let sh = Path::new("/bin/sh");
        let n = needs(sh).expect("parse /bin/sh");
        assert!(
            n.interpreter.as_deref().unwrap_or("").contains("ld-linux"),
            "{n:?}"
        );
        assert!(n.needed.iter().any(|l| l.starts_with("libc.so")), "{n:?}");
        assert!(!n.is_static());
        assert!(is_elf(sh));
    }

    #[test]
    fn non_elf_is_an_error_naming_the_file() {
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(tmp.path(), b"#!/bin/sh\necho hi\n").expect("write");
        assert!(!is_elf(tmp.path()));
        let err = needs(tmp.path()).expect_err("not elf").to_string();
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    }
}
