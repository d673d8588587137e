//! Builds cairn's upstream components and assembles the bootable disk image.

#![forbid(unsafe_code)]

pub mod assemble;
pub mod civil;
pub mod components;
pub mod cpio;
pub mod disk;
pub mod elf;
pub mod esp;
pub mod gpt;
pub mod image;
pub mod kmodules;
pub mod oci;
pub mod qcow2;
pub mod rootfs;
pub mod squashfs;
pub mod static_bins;
pub mod test_rule;
#[cfg(test)]
mod test_support;
pub mod tool;
pub mod uki;
