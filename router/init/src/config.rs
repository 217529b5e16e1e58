//! Finding the site config at boot: the `sitelink.config=` kernel argument (a device such as
//! `/dev/vdb`, or `LABEL=NAME`), else the first block device whose FAT label is `CIDATA`. The
//! disk is mounted read-only (vfat, mount(2)), `site.toml` and `site.key` are copied to
//! [`CONFIG_DIR`] with mode 0600, and the disk is unmounted again.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};
use sitelink_config::keys::read_private;
use sitelink_config::site::SiteConfig;

/// Where the config and key are copied (what `sitelink-router site` reads).
pub const CONFIG_DIR: &str = "/run/sitelink-config";
/// Where a config disk is mounted while it is read.
pub const MOUNT_POINT: &str = "/run/sitelink-cidata";
/// The config disk's label.
pub const LABEL: &str = "CIDATA";

/// The outcome of one look for the config.
#[derive(Debug)]
pub enum Found {
    /// A valid config, copied to `path` (key next to it).
    Valid {
        cfg: Box<SiteConfig>,
        path: PathBuf,
        source: String,
        /// The config text and key file contents, to notice changes.
        fingerprint: Vec<u8>,
    },
    /// No config anywhere (yet).
    Missing(String),
    /// A config that does not validate: every message, `FILE:LINE:COL: field: message`.
    Invalid {
        source: String,
        messages: Vec<String>,
    },
}

/// The value of `sitelink.config=` on the kernel command line.
pub fn cmdline_config(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("sitelink.config="))
        .map(str::to_owned)
}

/// The label of a FAT file system from its boot sector (FAT12/16 at 43, FAT32 at 71).
pub fn fat_label(sector: &[u8]) -> Option<String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let at = if &sector[82..87] == b"FAT32" {
        71
    } else if &sector[54..57] == b"FAT" {
        43
    } else {
        return None;
    };
    Some(
        String::from_utf8_lossy(&sector[at..at + 11])
            .trim_end()
            .to_owned(),
    )
}

fn label_of(dev: &Path) -> Option<String> {
    let mut f = fs::File::open(dev).ok()?;
    let mut sector = [0u8; 512];
    f.read_exact(&mut sector).ok()?;
    fat_label(&sector)
}

/// Block devices, sorted (`/sys/class/block`).
fn block_devices() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| Path::new("/dev").join(e.file_name()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn find_label(label: &str) -> Option<PathBuf> {
    block_devices()
        .into_iter()
        .find(|d| label_of(d).is_some_and(|l| l.eq_ignore_ascii_case(label)))
}

fn write_0600(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Copy `site.toml` and `site.key` from the vfat disk `dev` to [`CONFIG_DIR`].
fn copy_from_disk(dev: &Path) -> Result<(), String> {
    fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("cannot create {MOUNT_POINT}: {e}"))?;
    mount(
        Some(dev),
        MOUNT_POINT,
        Some("vfat"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "cannot mount {} (vfat) on {MOUNT_POINT}: {}",
            dev.display(),
            e.desc()
        )
    })?;
    let result = (|| {
        fs::create_dir_all(CONFIG_DIR).map_err(|e| format!("cannot create {CONFIG_DIR}: {e}"))?;
        for name in ["site.toml", "site.key"] {
            let from = Path::new(MOUNT_POINT).join(name);
            match fs::read(&from) {
                Ok(data) => write_0600(&Path::new(CONFIG_DIR).join(name), &data)
                    .map_err(|e| format!("cannot write {CONFIG_DIR}/{name}: {e}"))?,
                Err(e) if name == "site.toml" => {
                    return Err(format!("{} holds no {name}: {e}", dev.display()))
                }
                // A key that is there but cannot be read (an I/O error) must not be replaced
                // by another key: the router would come up with a different identity.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("cannot read {name} on {}: {e}", dev.display()))
                }
                Err(_) => match state_key() {
                    // A sitelink disk whose config partition has no key: the router's own
                    // key from the state partition (generated there at first boot).
                    Some(Ok(data)) => write_0600(&Path::new(CONFIG_DIR).join(name), &data)
                        .map_err(|e| format!("cannot write {CONFIG_DIR}/{name}: {e}"))?,
                    Some(Err(e)) => return Err(e),
                    None => {
                        let _ = fs::remove_file(Path::new(CONFIG_DIR).join(name));
                    }
                },
            }
        }
        Ok(())
    })();
    let _ = umount(MOUNT_POINT);
    result
}

/// The router's key on the state partition (FAT label `SL-STATE`) of a sitelink disk,
/// generated there on first boot: its public key is printed (never the private key) for the
/// network file. `None` when there is no state partition (a plain config disk).
fn state_key() -> Option<Result<Vec<u8>, String>> {
    find_label(crate::slots::STATE_LABEL)?;
    Some(crate::slots::with_partition(
        crate::slots::STATE_LABEL,
        crate::slots::STATE_MOUNT,
        false,
        |dev, at| {
            let path = at.join("site.key");
            if let Ok(data) = fs::read(&path) {
                return Ok(data);
            }
            let key = sitelink_config::keys::PrivateKey::generate();
            let text = format!("{}\n", key.to_base64());
            fs::File::create(&path)
                .and_then(|mut f| {
                    f.write_all(text.as_bytes())?;
                    f.sync_all()
                })
                .map_err(|e| format!("cannot write the generated key to {}: {e}", dev.display()))?;
            crate::console::marker(&format!(
                "sitelink: no site.key in the config; generated this router's key on {} (state partition); public key {}",
                dev.display(),
                key.public_key()
            ));
            Ok(text.into_bytes())
        },
    ))
}

/// Check a config directory (`site.toml` + `site.key`) as the init does.
pub fn check_dir(dir: &Path, source: &str) -> Found {
    let path = dir.join("site.toml");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Found::Missing(format!("cannot read {}: {e}", path.display())),
    };
    let invalid = |messages| Found::Invalid {
        source: source.to_owned(),
        messages,
    };
    let cfg = match SiteConfig::parse(&text, &path.display().to_string()) {
        Ok(c) => c,
        Err(diags) => return invalid(diags.iter().map(ToString::to_string).collect()),
    };
    let key_path = dir.join("site.key");
    if let Err(e) = read_private(&key_path) {
        return invalid(vec![e.to_string()]);
    }
    let mut fingerprint = text.into_bytes();
    fingerprint.extend(fs::read(&key_path).unwrap_or_default());
    Found::Valid {
        cfg: Box::new(cfg),
        path,
        source: source.to_owned(),
        fingerprint,
    }
}

/// Look for the config once.
pub fn discover() -> Found {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let dev = match cmdline_config(&cmdline) {
        Some(v) => {
            let dev = match v.strip_prefix("LABEL=") {
                Some(label) => find_label(label),
                None => Some(PathBuf::from(&v)),
            };
            match dev {
                Some(d) => d,
                None => {
                    return Found::Missing(format!(
                        "sitelink.config={v}: no block device has that label"
                    ))
                }
            }
        }
        None => match find_label(LABEL) {
            Some(d) => d,
            None => {
                return Found::Missing(format!(
                    "no config disk (a vfat disk labelled {LABEL}) and no sitelink.config= on the kernel command line"
                ))
            }
        },
    };
    if let Err(e) = copy_from_disk(&dev) {
        return Found::Missing(e);
    }
    check_dir(Path::new(CONFIG_DIR), &dev.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_value() {
        assert_eq!(
            cmdline_config("console=ttyS0 sitelink.config=/dev/vdb quiet").as_deref(),
            Some("/dev/vdb")
        );
        assert_eq!(cmdline_config("console=ttyS0"), None);
    }

    #[test]
    fn fat12_label() {
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xAA;
        s[43..54].copy_from_slice(b"CIDATA     ");
        s[54..62].copy_from_slice(b"FAT12   ");
        assert_eq!(fat_label(&s).as_deref(), Some("CIDATA"));
        s[511] = 0;
        assert_eq!(fat_label(&s), None);
    }
}
