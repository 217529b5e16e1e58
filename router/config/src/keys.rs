//! WireGuard keys and the build host's keystore directory.
//!
//! A keystore holds `<site>.key` (base64 private key, mode 0600) and `<site>.pub` for every site,
//! in a directory of mode 0700. Private keys are never printed or logged: [`PrivateKey`]'s
//! `Debug` shows nothing of the key, and errors name files, not contents.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand_core::OsRng;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s.trim())
            .map(PublicKey)
            .ok_or_else(|| format!("{s:?} is not a WireGuard public key; use 44 characters of base64 as printed by `wg pubkey`"))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Debug never shows the key.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> PrivateKey {
        PrivateKey(StaticSecret::random_from_rng(OsRng).to_bytes())
    }

    /// Parse base64 text. The error never contains the text.
    pub fn from_base64(s: &str) -> Option<PrivateKey> {
        decode_key(s.trim()).map(PrivateKey)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&StaticSecret::from(self.0)).to_bytes())
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0 = [0; 32];
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 44 {
        return None;
    }
    STANDARD.decode(s).ok()?.try_into().ok()
}

/// What can go wrong with a keystore.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("cannot create keystore directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is readable by group or others (mode {mode:04o}); private keys must be mode 0600: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("keystore directory {path} is open to group or others (mode {mode:04o}); it must be mode 0700: chmod 700 {path}")]
    DirPermissions { path: PathBuf, mode: u32 },
    #[error("{path} does not hold a WireGuard private key (44 characters of base64)")]
    BadPrivate { path: PathBuf },
    #[error("{path} does not hold a WireGuard public key (44 characters of base64)")]
    BadPublic { path: PathBuf },
    #[error("{path} does not match the private key in {key}; run `sitelink keys init` again to rewrite it")]
    Mismatch { path: PathBuf, key: PathBuf },
    #[error(
        "no key for site {site:?} in {dir}; run `sitelink keys init NETWORK.toml --out {dir}`"
    )]
    Missing { site: String, dir: PathBuf },
}

/// What `init` did for one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Kept,
    Created,
    Rotated,
}

/// A keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    pub fn new(dir: impl Into<PathBuf>) -> Keystore {
        Keystore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_path(&self, site: &str) -> PathBuf {
        self.dir.join(format!("{site}.key"))
    }

    pub fn pub_path(&self, site: &str) -> PathBuf {
        self.dir.join(format!("{site}.pub"))
    }

    /// Make sure every site has a key: keep existing ones, create missing ones, replace the key
    /// of `rotate`. Checks every existing key file before writing anything.
    pub fn init(
        &self,
        sites: &[&str],
        rotate: Option<&str>,
    ) -> Result<Vec<(String, KeyAction)>, KeystoreError> {
        let existing: Vec<Option<PrivateKey>> = if self.dir.exists() {
            check_mode(&self.dir, 0o077)?;
            sites
                .iter()
                .map(|s| self.private_if_present(s))
                .collect::<Result<_, _>>()?
        } else {
            vec![None; sites.len()]
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| KeystoreError::CreateDir {
                path: self.dir.clone(),
                source,
            })?;
        let mut done = Vec::new();
        for (site, old) in sites.iter().zip(existing) {
            let (key, action) = match old {
                Some(_) if rotate == Some(site) => (PrivateKey::generate(), KeyAction::Rotated),
                Some(k) => (k, KeyAction::Kept),
                None => (PrivateKey::generate(), KeyAction::Created),
            };
            if action != KeyAction::Kept {
                write_secret(&self.key_path(site), &key.to_base64())?;
            }
            // Always (re)write the public half so it matches the private key.
            write_file(
                &self.pub_path(site),
                &format!("{}\n", key.public_key()),
                0o644,
            )?;
            done.push((site.to_string(), action));
        }
        Ok(done)
    }

    fn private_if_present(&self, site: &str) -> Result<Option<PrivateKey>, KeystoreError> {
        let path = self.key_path(site);
        if !path.exists() {
            return Ok(None);
        }
        self.private(site).map(Some)
    }

    /// Read a site's private key, refusing files readable by group or others.
    pub fn private(&self, site: &str) -> Result<PrivateKey, KeystoreError> {
        let path = self.key_path(site);
        if !path.exists() {
            return Err(KeystoreError::Missing {
                site: site.to_owned(),
                dir: self.dir.clone(),
            });
        }
        read_private(&path)
    }

    /// A site's public key: from `<site>.pub`, checked against `<site>.key` when that exists.
    pub fn public(&self, site: &str) -> Result<PublicKey, KeystoreError> {
        let path = self.pub_path(site);
        if !path.exists() {
            return Err(KeystoreError::Missing {
                site: site.to_owned(),
                dir: self.dir.clone(),
            });
        }
        let text = fs::read_to_string(&path).map_err(|source| KeystoreError::Read {
            path: path.clone(),
            source,
        })?;
        let public: PublicKey = text
            .parse()
            .map_err(|_| KeystoreError::BadPublic { path: path.clone() })?;
        if self.key_path(site).exists() && self.private(site)?.public_key() != public {
            return Err(KeystoreError::Mismatch {
                path,
                key: self.key_path(site),
            });
        }
        Ok(public)
    }
}

/// Read a private (or preshared) key file, refusing one readable by group or others.
pub fn read_private(path: &Path) -> Result<PrivateKey, KeystoreError> {
    check_mode(path, 0o077)?;
    let text = fs::read_to_string(path).map_err(|source| KeystoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    PrivateKey::from_base64(&text).ok_or(KeystoreError::BadPrivate {
        path: path.to_owned(),
    })
}

fn check_mode(path: &Path, forbidden: u32) -> Result<(), KeystoreError> {
    let meta = fs::metadata(path).map_err(|source| KeystoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        let path = path.to_owned();
        return Err(if meta.is_dir() {
            KeystoreError::DirPermissions { path, mode }
        } else {
            KeystoreError::Permissions { path, mode }
        });
    }
    Ok(())
}

/// Write a secret: created with mode 0600 from the start (never briefly world-readable), via a
/// temporary file renamed into place so a crash leaves the old key or the new one.
pub fn write_secret(path: &Path, text: &str) -> Result<(), KeystoreError> {
    write_file(path, &format!("{text}\n"), 0o600)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), KeystoreError> {
    let tmp = path.with_extension("tmp");
    let err = |source| KeystoreError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sitelink-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_creates_keeps_and_rotates() {
        let dir = tempdir("init");
        let ks = Keystore::new(dir.join("keys"));
        let first = ks.init(&["a", "b"], None).unwrap();
        assert!(first.iter().all(|(_, a)| *a == KeyAction::Created));
        let mode = fs::metadata(ks.key_path("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::metadata(ks.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let a = ks.public("a").unwrap();
        let b = ks.public("b").unwrap();

        let again = ks.init(&["a", "b", "c"], Some("b")).unwrap();
        assert_eq!(again[0].1, KeyAction::Kept);
        assert_eq!(again[1].1, KeyAction::Rotated);
        assert_eq!(again[2].1, KeyAction::Created);
        assert_eq!(ks.public("a").unwrap(), a);
        assert_ne!(ks.public("b").unwrap(), b);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_group_readable_keys_and_changes_nothing() {
        let dir = tempdir("mode");
        let ks = Keystore::new(&dir);
        ks.init(&["a"], None).unwrap();
        let before = fs::read(ks.key_path("a")).unwrap();
        fs::set_permissions(ks.key_path("a"), fs::Permissions::from_mode(0o640)).unwrap();
        let err = ks.init(&["a", "b"], None).unwrap_err();
        assert!(err.to_string().contains("mode 0640"), "{err}");
        assert!(
            !ks.key_path("b").exists(),
            "nothing written after a refused key"
        );
        assert_eq!(fs::read(ks.key_path("a")).unwrap(), before);
        assert!(matches!(
            ks.private("a"),
            Err(KeystoreError::Permissions { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_round_trip_and_never_debug_print() {
        let k = PrivateKey::generate();
        let again = PrivateKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_eq!(format!("{k:?}"), "PrivateKey(..)");
        let p = k.public_key();
        assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
        assert!("short".parse::<PublicKey>().is_err());
    }
}
