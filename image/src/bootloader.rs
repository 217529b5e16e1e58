//! The boot loader: `systemd-bootx64.efi` from Debian's `systemd-boot-efi` package, fetched with
//! `apt-get download` into the same cache as the kernel (`debs/`), extracted with `dpkg-deb -x`
//! once per version. Nothing is installed on the build host.

use std::fs;
use std::path::{Path, PathBuf};

use crate::debcache;
use crate::tools::{cmd, run};
use crate::ImageError;

/// The Debian package.
pub const PACKAGE: &str = "systemd-boot-efi";
/// The loader inside the package.
pub const LOADER: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// systemd-boot, ready to copy.
#[derive(Debug, Clone)]
pub struct Loader {
    pub version: String,
    pub efi: PathBuf,
    pub cached: bool,
}

fn version_of(show: &str) -> Option<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
}

/// Get systemd-boot: the given `.deb`, or the package from the cache or `apt-get download`.
pub fn fetch(deb: Option<&Path>, cache: &Path) -> Result<Loader, ImageError> {
    let (deb, version, cached) = match deb {
        Some(d) => (d.to_owned(), None, true),
        None => {
            let show = run(
                cmd("apt-cache", ["show", "--no-all-versions", PACKAGE]),
                None,
            )?;
            let ver = version_of(&show).ok_or_else(|| ImageError::Loader {
                why: format!("`apt-cache show {PACKAGE}` names no version (run `apt-get update`?)"),
            })?;
            let (file, cached) = debcache::download(cache, PACKAGE, &ver)?;
            (file, Some(ver), cached)
        }
    };
    let version = match version {
        Some(v) => v,
        None => run(
            cmd(
                "dpkg-deb",
                ["-f".as_ref(), deb.as_os_str(), "Version".as_ref()],
            ),
            None,
        )?
        .trim()
        .to_owned(),
    };
    let root = debcache::extract(cache, &deb, PACKAGE, &version)?;
    let efi = root.join(LOADER);
    let head = fs::read(&efi).map_err(|e| ImageError::io("read", &efi, e))?;
    // A PE image: "MZ", then "PE\0\0" at the offset stored at 0x3c.
    let pe = head
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let is_pe = head.starts_with(b"MZ")
        && pe.and_then(|o| head.get(o..o + 4)) == Some(b"PE\0\0".as_slice());
    if !is_pe {
        return Err(ImageError::Loader {
            why: format!("{} is not an EFI (PE) executable", efi.display()),
        });
    }
    Ok(Loader {
        version,
        efi,
        cached,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_line() {
        assert_eq!(
            super::version_of("Package: systemd-boot-efi\nVersion: 252.39-1~deb12u2\n").as_deref(),
            Some("252.39-1~deb12u2")
        );
        assert_eq!(super::version_of("Package: x\n"), None);
    }
}
