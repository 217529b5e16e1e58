//! The kernel: Debian's `linux-image-*` package, fetched with `apt-get download` into a cache
//! keyed by package and version (or given as a `.deb`), extracted once per version.

use std::fs;
use std::path::{Path, PathBuf};

use crate::debcache;
use crate::tools::{cmd, run};
use crate::{ImageError, Profile};

/// A kernel package in the cache, extracted.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub deb: PathBuf,
    /// Where the package is extracted.
    pub root: PathBuf,
    /// `boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    /// Kernel release (`uname -r`).
    pub release: String,
    /// Whether the package was already in the cache.
    pub cached: bool,
}

/// The metapackage that names a profile's kernel.
pub fn metapackage(profile: Profile) -> &'static str {
    match profile {
        Profile::Cloud => "linux-image-cloud-amd64",
        Profile::Metal => "linux-image-amd64",
    }
}

/// The versioned package a metapackage depends on: `apt-cache show` →
/// `Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)`.
pub fn resolve(meta: &str) -> Result<(String, String), ImageError> {
    let out = run(cmd("apt-cache", ["show", "--no-all-versions", meta]), None)?;
    parse_depends(&out).ok_or_else(|| ImageError::Kernel {
        why: format!("`apt-cache show {meta}` names no linux-image package it depends on (run `apt-get update`?)"),
    })
}

fn parse_depends(show: &str) -> Option<(String, String)> {
    let deps = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    deps.split(',').find_map(|d| {
        let d = d.trim();
        let (pkg, rest) = d.split_once(' ')?;
        let ver = rest.trim().strip_prefix("(=")?.trim().strip_suffix(')')?;
        pkg.starts_with("linux-image-")
            .then(|| (pkg.to_owned(), ver.trim().to_owned()))
    })
}

/// Field values of a `.deb`: `dpkg-deb -f DEB FIELD...`.
fn deb_fields(deb: &Path) -> Result<(String, String, String), ImageError> {
    let out = run(
        cmd(
            "dpkg-deb",
            [
                "-f".as_ref(),
                deb.as_os_str(),
                "Package".as_ref(),
                "Version".as_ref(),
                "Architecture".as_ref(),
            ],
        ),
        None,
    )?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    Ok((field("Package"), field("Version"), field("Architecture")))
}

/// Get the kernel: the given `.deb`, or the profile's current package from the cache or
/// `apt-get download`. Checks the architecture (amd64) and extracts it (once per version).
pub fn fetch(profile: Profile, deb: Option<&Path>, cache: &Path) -> Result<Kernel, ImageError> {
    let (deb, cached) = match deb {
        Some(d) => (d.to_owned(), true),
        None => {
            let (pkg, ver) = resolve(metapackage(profile))?;
            debcache::download(cache, &pkg, &ver)?
        }
    };
    let (package, version, arch) = deb_fields(&deb)?;
    if arch != "amd64" {
        return Err(ImageError::Kernel {
            why: format!(
                "{} is for architecture {arch:?}; sitelink images are amd64 (x86-64)",
                deb.display()
            ),
        });
    }
    if !package.starts_with("linux-image-") {
        return Err(ImageError::Kernel {
            why: format!(
                "{} is package {package:?}, not a linux-image-* package",
                deb.display()
            ),
        });
    }
    let root = debcache::extract(cache, &deb, &package, &version)?;
    let vmlinuz = fs::read_dir(root.join("boot"))
        .map_err(|e| ImageError::io("read directory", &root.join("boot"), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| ImageError::Kernel {
            why: format!("{} holds no boot/vmlinuz-*", deb.display()),
        })?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    check_bzimage(&vmlinuz)?;
    let modules = root.join("lib/modules").join(&release);
    if !modules.is_dir() {
        return Err(ImageError::Kernel {
            why: format!("{} has no lib/modules/{release}", deb.display()),
        });
    }
    Ok(Kernel {
        package,
        version,
        deb,
        root,
        vmlinuz,
        modules,
        release,
        cached,
    })
}

/// An x86 boot image: the "HdrS" boot protocol magic at 0x202.
fn check_bzimage(path: &Path) -> Result<(), ImageError> {
    let data = fs::read(path).map_err(|e| ImageError::io("read", path, e))?;
    if !sitelink_init::slots::is_bzimage(&data) {
        return Err(ImageError::Kernel {
            why: format!("{} is not an x86 bzImage (no HdrS header)", path.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_line_names_the_versioned_package() {
        let show = "Package: linux-image-cloud-amd64\nDepends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n";
        assert_eq!(
            parse_depends(show),
            Some((
                "linux-image-6.1.0-57-cloud-amd64".into(),
                "6.1.192-3".into()
            ))
        );
        assert_eq!(parse_depends("Package: x\n"), None);
    }
}
