//! Boots cairn disk images under QEMU (TCG) and watches their console for structured events.
