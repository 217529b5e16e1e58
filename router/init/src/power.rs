//! The ACPI power button (QEMU's `system_powerdown`): the kernel's `button` driver reports it as
//! `KEY_POWER` on an input device; `evdev` makes that `/dev/input/eventN`. One thread per event
//! device reads `struct input_event` records and reports a press.

use std::fs::File;
use std::io::Read;
use std::sync::mpsc::Sender;
use std::time::Duration;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16 bytes), type u16, code u16, value i32.
const EVENT_SIZE: usize = 24;

/// Whether a raw input event is a power key press.
pub fn is_power_press(ev: &[u8; EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Watch every input device that has appeared within `settle`; send `msg` on a power press.
pub fn watch<T: Clone + Send + 'static>(tx: Sender<T>, msg: T, settle: Duration) {
    let spawned = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || {
            let mut watched = std::collections::BTreeSet::new();
            let deadline = std::time::Instant::now() + settle;
            loop {
                let devices: Vec<_> = std::fs::read_dir("/dev/input")
                    .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
                    .unwrap_or_default();
                for dev in devices {
                    let is_event = dev
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("event"));
                    if !is_event || !watched.insert(dev.clone()) {
                        continue;
                    }
                    let Ok(mut f) = File::open(&dev) else {
                        continue;
                    };
                    let (tx, msg) = (tx.clone(), msg.clone());
                    let _ = std::thread::Builder::new()
                        .name("power-event".into())
                        .spawn(move || {
                            let mut ev = [0u8; EVENT_SIZE];
                            while f.read_exact(&mut ev).is_ok() {
                                if is_power_press(&ev) && tx.send(msg.clone()).is_err() {
                                    return;
                                }
                            }
                        });
                }
                if std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    if let Err(e) = spawned {
        crate::say!("cannot watch the power button: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_press_is_recognised() {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev));
    }
}
