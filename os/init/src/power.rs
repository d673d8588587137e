//! The ACPI power button: Linux reports it as an input device named "Power Button";
//! a KEY_POWER press asks for an orderly poweroff (QEMU's `system_powerdown` presses it).

use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// struct input_event on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// `/dev/input/eventN` of every input device whose name is "Power Button".
pub fn power_buttons(class_input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(class_input) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .map(|n| n.trim() == "Power Button")
                .unwrap_or(false)
        })
        .map(|e| PathBuf::from("/dev/input").join(e.file_name()))
        .collect();
    out.sort();
    out
}

/// Whether one raw input_event is a power-key press.
pub fn is_power_press(ev: &[u8]) -> bool {
    ev.len() >= EVENT_SIZE
        && u16::from_ne_bytes([ev[16], ev[17]]) == EV_KEY
        && u16::from_ne_bytes([ev[18], ev[19]]) == KEY_POWER
        && i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]) == 1
}

/// Watches every power button on a blocking thread each; sends `()` per press.
pub fn watch(tx: mpsc::UnboundedSender<()>) -> usize {
    let buttons = power_buttons(Path::new("/sys/class/input"));
    for dev in &buttons {
        let dev = dev.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let Ok(mut f) = std::fs::File::open(&dev) else {
                tracing::warn!(device = %dev.display(), "cannot open the power button");
                return;
            };
            let mut ev = [0u8; EVENT_SIZE];
            while f.read_exact(&mut ev).is_ok() {
                if is_power_press(&ev) && tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    buttons.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_power_press() {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev), "release is not a press");
    }
}
