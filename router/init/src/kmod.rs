//! Loading the kernel modules the image builder put in the initramfs, in the order it wrote to
//! `/lib/modules/load-order` (dependencies first), with `finit_module(2)`.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

pub const MODULE_DIR: &str = "/lib/modules";

/// Load every module in the load order. Returns (loaded, messages: failures and modules for
/// hardware this machine lacks).
pub fn load_all(dir: &Path) -> (usize, Vec<String>) {
    let order = match std::fs::read_to_string(dir.join("load-order")) {
        Ok(o) => o,
        Err(e) => {
            return (
                0,
                vec![format!("cannot read {}/load-order: {e}", dir.display())],
            )
        }
    };
    let mut loaded = 0;
    let mut failed = Vec::new();
    // Drivers for hardware this machine lacks (Hyper-V's bus outside Azure) refuse with
    // ENODEV; modules that need their symbols then fail with ENOENT. Neither is an error.
    let mut no_device: Vec<&str> = Vec::new();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(format!("{name}.ko"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                failed.push(format!("module {name}: {e}"));
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => loaded += 1,
            Err(Errno::ENODEV) => no_device.push(name),
            Err(Errno::ENOENT) if !no_device.is_empty() => failed.push(format!(
                "module {name}: not loaded: it needs {} (no such device here)",
                no_device.join(", ")
            )),
            Err(e) => failed.push(format!("module {name}: {}", e.desc())),
        }
    }
    if !no_device.is_empty() {
        failed.push(format!(
            "modules for hardware this machine lacks: {}",
            no_device.join(", ")
        ));
    }
    (loaded, failed)
}
