//! Loading the kernel modules the image builder put in the initramfs, in the order it wrote to
//! `/lib/modules/load-order` (dependencies first), with `finit_module(2)`.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

pub const MODULE_DIR: &str = "/lib/modules";

/// Load every module in the load order. Returns (loaded, failures as messages).
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
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(format!("{name}.ko"));
        let result = File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| match finit_module(&f, c"", ModuleInitFlags::empty()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e.desc().to_owned()),
            });
        match result {
            Ok(()) => loaded += 1,
            Err(e) => failed.push(format!("module {name}: {e}")),
        }
    }
    (loaded, failed)
}
