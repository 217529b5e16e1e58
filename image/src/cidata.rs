//! Config disks: a small vfat image labelled `CIDATA` (like a cloud-init NoCloud seed) holding a
//! site's rendered config (`site.toml`), its private key (`site.key`) and NoCloud `meta-data`.
//! Reproducible: fixed volume id (from the site name) and every timestamp 1980-01-01 00:00.

use std::io::{Cursor, Write};

use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use sha2::{Digest, Sha256};

/// Size of a config disk.
pub const DISK_SIZE: usize = 1024 * 1024;
/// The volume label the init looks for.
pub const LABEL: &[u8; 11] = b"CIDATA     ";

/// Every timestamp 1980-01-01 00:00 (the FAT epoch): reproducible images.
#[derive(Debug)]
pub struct FixedTime;

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

pub static FIXED_TIME: FixedTime = FixedTime;

/// A FAT12 image holding `files` (name, contents) in its root directory.
pub fn disk(site: &str, files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut img = Cursor::new(vec![0u8; DISK_SIZE]);
    let digest = Sha256::digest(site.as_bytes());
    let volume_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    fatfs::format_volume(
        &mut img,
        FormatVolumeOptions::new()
            .volume_label(*LABEL)
            .volume_id(volume_id)
            .fat_type(fatfs::FatType::Fat12),
    )?;
    img.set_position(0);
    {
        let fs = FileSystem::new(&mut img, FsOptions::new().time_provider(&FIXED_TIME))?;
        for (name, data) in files {
            let mut f = fs.root_dir().create_file(name)?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    Ok(img.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn disk_is_reproducible_and_readable() {
        let files: [(&str, &[u8]); 2] = [("site.toml", b"format = 1\n"), ("site.key", b"k\n")];
        let a = disk("aws", &files).unwrap_or_default();
        let b = disk("aws", &files).unwrap_or_default();
        assert_eq!(a.len(), DISK_SIZE);
        assert_eq!(a, b);
        // FAT12/16 boot sector: volume label at offset 43.
        assert_eq!(&a[43..54], LABEL);
        let mut cur = Cursor::new(a);
        let fs = FileSystem::new(&mut cur, FsOptions::new());
        let Ok(fs) = fs else {
            panic!("not a FAT image")
        };
        let mut text = String::new();
        let read = fs
            .root_dir()
            .open_file("site.toml")
            .and_then(|mut f| f.read_to_string(&mut text));
        assert!(read.is_ok());
        assert_eq!(text, "format = 1\n");
    }
}
