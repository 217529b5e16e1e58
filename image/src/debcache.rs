//! The package cache under `$SITELINK_CACHE` (default `~/.cache/sitelink`) that the kernel and
//! the boot loader share: `debs/` holds each `.deb` as `apt-get download` fetched it,
//! `extracted/PACKAGE_VERSION/` its files (`dpkg-deb -x`, once per version; a `.complete`
//! marker makes an interrupted extraction start again).

use std::fs;
use std::path::{Path, PathBuf};

use crate::tools::{cmd, run};
use crate::ImageError;

/// `debs/PACKAGE_VERSION_amd64.deb`, downloaded unless it is there. Returns it and whether it
/// came from the cache.
pub fn download(cache: &Path, package: &str, version: &str) -> Result<(PathBuf, bool), ImageError> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| ImageError::io("create", &debs, e))?;
    let file = debs.join(format!(
        "{package}_{}_amd64.deb",
        version.replace(':', "%3a")
    ));
    if file.exists() {
        eprintln!("    cached: {}", file.display());
        return Ok((file, true));
    }
    // Into a directory of its own: apt-get names the file itself, and a download cut off
    // midway must not look like a cached package.
    let tmp = debs.join(format!(".download-{package}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
    let spec = format!("{package}={version}");
    run(cmd("apt-get", ["download", &spec]), Some(&tmp))?;
    let got = fs::read_dir(&tmp)
        .map_err(|e| ImageError::io("read directory", &tmp, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ImageError::Tool {
            command: format!("apt-get download {spec}"),
            detail: format!("left no .deb in {}", tmp.display()),
        })?;
    fs::rename(&got, &file).map_err(|e| ImageError::io("rename into", &file, e))?;
    let _ = fs::remove_dir_all(&tmp);
    Ok((file, false))
}

/// The files of `deb` (package `package`, version `version`), extracted once into
/// `extracted/PACKAGE_VERSION/`.
pub fn extract(
    cache: &Path,
    deb: &Path,
    package: &str,
    version: &str,
) -> Result<PathBuf, ImageError> {
    let dir = cache.join("extracted");
    let root = dir.join(format!("{package}_{version}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let tmp = dir.join(format!("{package}_{version}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
    run(
        cmd(
            "dpkg-deb",
            ["-x".as_ref(), deb.as_os_str(), tmp.as_os_str()],
        ),
        None,
    )?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root).map_err(|e| ImageError::io("rename into", &root, e))?;
    let done = root.join(".complete");
    fs::write(&done, "").map_err(|e| ImageError::io("write", &done, e))?;
    Ok(root)
}
