//! Kernel modules: an index of a kernel's module tree, each module's `depends=` read from its ELF
//! `.modinfo` section (Debian's packages ship no `modules.dep`: `depmod` runs at install time), the
//! built-in list from `modules.builtin`, and the dependency closure of the modules a profile needs,
//! in load order (dependencies first).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::ImageError;

/// The modules of one kernel.
#[derive(Debug)]
pub struct ModuleIndex {
    /// `/lib/modules/<version>` in the extracted package.
    pub dir: PathBuf,
    /// Module name (underscores) → file.
    pub files: BTreeMap<String, PathBuf>,
    /// Names of modules built into the kernel.
    pub builtin: BTreeSet<String>,
}

/// A module name as the kernel spells it: file stem, '-' → '_'.
pub fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".ko")
        .or_else(|| name.strip_suffix(".ko.xz"))
        .or_else(|| name.strip_suffix(".ko.zst"))
        .or_else(|| name.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImageError> {
    let rd = fs::read_dir(dir).map_err(|e| ImageError::io("read directory", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| ImageError::io("read directory", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

impl ModuleIndex {
    /// Index `/lib/modules/<version>`.
    pub fn load(dir: &Path) -> Result<ModuleIndex, ImageError> {
        let mut all = Vec::new();
        walk(&dir.join("kernel"), &mut all)?;
        let files = all
            .into_iter()
            .filter_map(|p| module_name(&p).map(|n| (n, p)))
            .collect();
        let builtin_path = dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_path)
            .map_err(|e| ImageError::io("read", &builtin_path, e))?
            .lines()
            .filter_map(|l| module_name(Path::new(l)))
            .collect();
        Ok(ModuleIndex {
            dir: dir.to_owned(),
            files,
            builtin,
        })
    }

    /// The `depends=` of a module.
    pub fn depends(&self, name: &str) -> Result<Vec<String>, ImageError> {
        let path = self
            .files
            .get(name)
            .ok_or_else(|| ImageError::MissingModule {
                module: name.to_owned(),
                dir: self.dir.clone(),
            })?;
        let data = read_module(path)?;
        let info = modinfo(&data).ok_or_else(|| ImageError::BadModule {
            path: path.clone(),
            why: "no .modinfo section (not an x86-64 kernel module?)".into(),
        })?;
        Ok(info
            .iter()
            .filter_map(|kv| kv.strip_prefix("depends="))
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect())
    }

    /// The closure of `wanted` in load order (each module after its dependencies). Built-in
    /// modules are left out; a module that is neither built in nor present is an error, and every
    /// such module is named at once.
    pub fn closure(&self, wanted: &[&str]) -> Result<Closure, ImageError> {
        let missing: Vec<String> = wanted
            .iter()
            .map(|w| w.replace('-', "_"))
            .filter(|w| !self.builtin.contains(w) && !self.files.contains_key(w))
            .collect();
        if !missing.is_empty() {
            return Err(ImageError::MissingModule {
                module: missing.join(", "),
                dir: self.dir.clone(),
            });
        }
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut builtin = Vec::new();
        for w in wanted {
            let w = w.replace('-', "_");
            if self.builtin.contains(&w) {
                builtin.push(w);
                continue;
            }
            self.visit(&w, &mut seen, &mut order)?;
        }
        Ok(Closure { order, builtin })
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if self.builtin.contains(name) || !seen.insert(name.to_owned()) {
            return Ok(());
        }
        for dep in self.depends(name)? {
            self.visit(&dep, seen, order)?;
        }
        order.push(name.to_owned());
        Ok(())
    }
}

/// Modules to load, in order, and the wanted modules that are built in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub order: Vec<String>,
    pub builtin: Vec<String>,
}

/// A module's bytes, decompressed if the package ships it compressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let data = fs::read(path).map_err(|e| ImageError::io("read", path, e))?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko.gz") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| ImageError::io("decompress", path, e))?;
        return Ok(out);
    }
    let bad = |why: String| ImageError::BadModule {
        path: path.to_owned(),
        why,
    };
    if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(&data[..]), &mut out)
            .map_err(|e| bad(format!("cannot decompress (xz): {e}")))?;
        return Ok(out);
    }
    if name.ends_with(".ko.zst") {
        use std::io::Read;
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&data[..])
            .map_err(|e| bad(format!("cannot decompress (zstd): {e}")))?
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("cannot decompress (zstd): {e}")))?;
        return Ok(out);
    }
    Ok(data)
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// ELF machine number of x86-64.
pub const EM_X86_64: u16 = 62;

/// The `e_machine` of a 64-bit little-endian ELF file.
pub fn elf_machine(d: &[u8]) -> Option<u16> {
    if d.get(..4)? != b"\x7fELF" || *d.get(4)? != 2 || *d.get(5)? != 1 {
        return None;
    }
    u16_at(d, 0x12)
}

/// Whether a 64-bit ELF executable has a `PT_INTERP` (is dynamically linked).
pub fn elf_has_interp(d: &[u8]) -> Option<bool> {
    elf_machine(d)?;
    let phoff = usize::try_from(u64_at(d, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(d, 0x36)?);
    let phnum = usize::from(u16_at(d, 0x38)?);
    Some((0..phnum).any(|i| u32_at(d, phoff + i * phentsize) == Some(3)))
}

/// The `key=value` strings of a module's `.modinfo` section.
pub fn modinfo(d: &[u8]) -> Option<Vec<String>> {
    if elf_machine(d)? != EM_X86_64 {
        return None;
    }
    let shoff = usize::try_from(u64_at(d, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(d, 0x3A)?);
    let shnum = usize::from(u16_at(d, 0x3C)?);
    let shstrndx = usize::from(u16_at(d, 0x3E)?);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff + i * shentsize;
        Some((
            u32_at(d, h)?,
            usize::try_from(u64_at(d, h + 24)?).ok()?,
            usize::try_from(u64_at(d, h + 32)?).ok()?,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = d.get(stroff..stroff + strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let name = strtab.get(name as usize..)?;
        let end = name.iter().position(|&b| b == 0)?;
        if &name[..end] == b".modinfo" {
            let body = d.get(off..off + size)?;
            return Some(
                body.split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_use_underscores() {
        assert_eq!(
            module_name(Path::new("kernel/fs/nls/nls_iso8859-1.ko")).as_deref(),
            Some("nls_iso8859_1")
        );
        assert_eq!(
            module_name(Path::new("a/tun.ko.xz")).as_deref(),
            Some("tun")
        );
        assert_eq!(module_name(Path::new("a/README")), None);
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = std::env::temp_dir().join(format!("sitelink-mod-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let plain = b"\x7fELF module bytes".repeat(50);
        let mut xz = Vec::new();
        let compressed = lzma_rs::xz_compress(&mut &plain[..], &mut xz);
        assert!(compressed.is_ok());
        let path = dir.join("x.ko.xz");
        assert!(fs::write(&path, &xz).is_ok());
        assert_eq!(read_module(&path).ok(), Some(plain.clone()));
        let path = dir.join("y.ko.zst");
        let zst = ruzstd::encoding::compress_to_vec(
            &plain[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert!(fs::write(&path, &zst).is_ok());
        assert_eq!(read_module(&path).ok(), Some(plain));
        let _ = fs::remove_dir_all(&dir);
    }

    /// A minimal x86-64 ELF relocatable with a `.modinfo` section.
    fn fake_module(depends: &str) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let info = format!("license=GPL\0depends={depends}\0");
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        let str_off = d.len();
        d.extend_from_slice(shstrtab);
        let info_off = d.len();
        d.extend_from_slice(info.as_bytes());
        while d.len() % 8 != 0 {
            d.push(0);
        }
        let shoff = d.len();
        d[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        d[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        d[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        d[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, info_off, info.len()),
            (10, str_off, shstrtab.len()),
        ] {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            d.extend_from_slice(&h);
        }
        d
    }

    #[test]
    fn closure_is_in_dependency_order_without_builtins() {
        let dir = std::env::temp_dir().join(format!("sitelink-closure-{}", std::process::id()));
        let kernel = dir.join("kernel/drivers");
        assert!(fs::create_dir_all(&kernel).is_ok());
        for (file, deps) in [
            ("a.ko", ""),
            ("b-dash.ko", "a"),
            ("c.ko", "b_dash,a,core"),
            ("d.ko", "c"),
        ] {
            assert!(fs::write(kernel.join(file), fake_module(deps)).is_ok());
        }
        assert!(fs::write(
            dir.join("modules.builtin"),
            "kernel/lib/core.ko\nkernel/fs/vfat.ko\n"
        )
        .is_ok());
        let index = ModuleIndex::load(&dir);
        let Ok(index) = index else {
            panic!("index: {index:?}")
        };
        assert_eq!(
            index.depends("c").ok(),
            Some(vec!["b_dash".into(), "a".into(), "core".into()])
        );
        let closure = index.closure(&["d", "vfat", "b-dash"]);
        let Ok(closure) = closure else {
            panic!("closure: {closure:?}")
        };
        assert_eq!(closure.order, ["a", "b_dash", "c", "d"]);
        assert_eq!(closure.builtin, ["vfat"]);
        let missing = index.closure(&["d", "nope", "gone"]);
        assert!(
            matches!(&missing, Err(ImageError::MissingModule { module, .. }) if module == "nope, gone"),
            "{missing:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn not_elf_has_no_modinfo() {
        assert_eq!(modinfo(b"hello"), None);
        assert_eq!(elf_has_interp(b"\x7fELF"), None);
    }
}
