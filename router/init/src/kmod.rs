//! Loading the kernel modules the image builder put in the initramfs, in the order it wrote to
//! `/lib/modules/load-order` (dependencies first), with `finit_module(2)`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

pub const MODULE_DIR: &str = "/lib/modules";

/// Load every module in the load order: one line per module, `name dep dep...` (its
/// dependencies among these modules, listed earlier). A module whose dependency did not load is
/// skipped (the kernel would only log "Unknown symbol" for each of its imports). Returns
/// (loaded, messages: failures and modules for hardware this machine lacks).
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
    // ENODEV. Not an error; neither are the modules that need only them, directly or not.
    let mut lacking: Vec<&str> = Vec::new();
    let mut not_loaded: BTreeSet<&str> = BTreeSet::new();
    for line in order.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let missing: Vec<&str> = words.filter(|d| not_loaded.contains(d)).collect();
        if !missing.is_empty() {
            not_loaded.insert(name);
            if missing.iter().all(|d| lacking.contains(d)) {
                lacking.push(name);
            } else {
                failed.push(format!(
                    "module {name}: not loaded: it needs {}, which did not load",
                    missing.join(", ")
                ));
            }
            continue;
        }
        let path = dir.join(format!("{name}.ko"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                not_loaded.insert(name);
                failed.push(format!("module {name}: {e}"));
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => loaded += 1,
            Err(e) => {
                not_loaded.insert(name);
                if e == Errno::ENODEV {
                    lacking.push(name);
                } else {
                    failed.push(format!("module {name}: {}", e.desc()));
                }
            }
        }
    }
    if !lacking.is_empty() {
        lacking.sort_unstable();
        failed.push(format!(
            "modules for hardware this machine lacks: {}",
            lacking.join(", ")
        ));
    }
    (loaded, failed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_module_whose_dependency_did_not_load_is_skipped_and_named() {
        let dir = std::env::temp_dir().join(format!("sitelink-kmod-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        // No .ko files at all: `a` cannot be opened, so `b` (needs a) and `c` (needs b) are
        // not tried; `d` has no dependency and is tried (and fails to open) on its own.
        let _ = std::fs::write(dir.join("load-order"), "a\nb a\nc b\nd\n");
        let (loaded, msgs) = super::load_all(&dir);
        assert_eq!(loaded, 0);
        assert!(msgs[0].starts_with("module a: "), "{msgs:?}");
        assert_eq!(
            msgs[1],
            "module b: not loaded: it needs a, which did not load"
        );
        assert_eq!(
            msgs[2],
            "module c: not loaded: it needs b, which did not load"
        );
        assert!(msgs[3].starts_with("module d: "), "{msgs:?}");
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
