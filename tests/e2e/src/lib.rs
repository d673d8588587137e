//! End-to-end tests that boot the real cairn disk image under QEMU; see `tests/`.
