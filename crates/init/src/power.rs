//! The power button: QMP `system_powerdown` (or a hypervisor's "ACPI shutdown") makes the
//! kernel emit `KEY_POWER` on an input device; `evdev` exposes it as `/dev/input/eventN`, which
//! we read. On PCs that device is the ACPI `button` driver's "Power Button"; on ARM's `virt`
//! machine booted without firmware (device tree, no ACPI) it is "gpio-keys", a PL061 GPIO line
//! QEMU raises.

use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// `EV_KEY` from `linux/input-event-codes.h`.
const EV_KEY: u16 = 0x01;
/// `KEY_POWER` from `linux/input-event-codes.h`.
const KEY_POWER: u16 = 116;
/// Size of `struct input_event` on 64-bit Linux: timeval (16) + type, code (2+2) + value (4).
pub const INPUT_EVENT_LEN: usize = 24;

/// Whether a raw `struct input_event` is a press of the power key.
pub fn is_power_press(event: &[u8; INPUT_EVENT_LEN]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Names of the input devices that deliver the power button (see the module documentation).
const POWER_BUTTON_NAMES: &[&str] = &["Power Button", "gpio-keys"];

/// Event devices whose name (`/sys/class/input/eventN/device/name`) is one of
/// [`POWER_BUTTON_NAMES`].
pub fn power_buttons(class_input: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(class_input)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("device/name"))
                        .is_ok_and(|name| POWER_BUTTON_NAMES.contains(&name.trim()))
                })
                .map(|e| Path::new("/dev/input").join(e.file_name()))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Watches every power button; sends one message per press.
pub fn watch(presses: mpsc::Sender<PathBuf>) {
    let buttons = power_buttons(Path::new("/sys/class/input"));
    if buttons.is_empty() {
        tracing::warn!(
            "power button: none found (no ACPI or gpio-keys?); use `poweroff` in the guest"
        );
        return;
    }
    for device in buttons {
        tracing::info!("power button: watching {}", device.display());
        let presses = presses.clone();
        tokio::spawn(async move {
            let mut file = match tokio::fs::File::open(&device).await {
                Ok(file) => file,
                Err(err) => {
                    tracing::warn!("power button: cannot open {}: {err}", device.display());
                    return;
                }
            };
            let mut event = [0u8; INPUT_EVENT_LEN];
            while file.read_exact(&mut event).await.is_ok() {
                if is_power_press(&event) && presses.send(device.clone()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_LEN] {
        let mut raw = [0u8; INPUT_EVENT_LEN];
        raw[16..18].copy_from_slice(&kind.to_ne_bytes());
        raw[18..20].copy_from_slice(&code.to_ne_bytes());
        raw[20..24].copy_from_slice(&value.to_ne_bytes());
        raw
    }

    #[test]
    fn acpi_and_gpio_power_buttons_are_found() {
        let tmp = tempfile::tempdir().expect("temp dir");
        for (event, name) in [
            ("event0", "Power Button\n"),
            ("event1", "AT Translated Set 2 keyboard\n"),
            ("event2", "gpio-keys\n"),
        ] {
            let device = tmp.path().join(event).join("device");
            std::fs::create_dir_all(&device).expect("device dir");
            std::fs::write(device.join("name"), name).expect("name");
        }
        std::fs::create_dir_all(tmp.path().join("input0")).expect("input dir");
        assert_eq!(
            power_buttons(tmp.path()),
            vec![
                PathBuf::from("/dev/input/event0"),
                PathBuf::from("/dev/input/event2")
            ]
        );
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(0, 0, 0)), "EV_SYN");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "KEY_A");
    }
}
