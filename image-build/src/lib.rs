//! Builds cairn's upstream components and assembles the bootable disk image.
