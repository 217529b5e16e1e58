//! Bootable disks: GPT, an EFI system partition with systemd-boot and two boot slots, the
//! config partition and the state partition. Everything written in Rust ([`crate::gpt`],
//! `fatfs`), with GUIDs derived from names and every FAT timestamp 1980-01-01, so the same
//! inputs give the same bytes.
//!
//! | partition | GPT name | type | file system | holds |
//! |---|---|---|---|---|
//! | 1 | `sitelink-esp` | EFI system | FAT32, label `SL-BOOT` | `EFI/BOOT/BOOTX64.EFI` + `EFI/systemd/systemd-bootx64.efi`, `loader/loader.conf`, `loader/entries/sitelink-{a,b}[+N[-M]].conf`, `sitelink/{a,b}/{vmlinuz,initramfs.img}` |
//! | 2 | `CIDATA` | Microsoft basic data | FAT12, label `CIDATA` | `site.toml`, `site.key`, `meta-data` (the config disk, byte for byte) |
//! | 3 | `sitelink-state` | Linux data | FAT16, label `SL-STATE` | what the router keeps: `boot.log` |
//!
//! [`update`] writes a new kernel + initramfs into the slot that is not the good one and gives its
//! entry a tries counter, as `sitelink image update` does on the build host.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use sitelink_init::slots::{self, EntryName};
pub use sitelink_init::slots::{active_slot, other, SlotEntry};

use crate::gpt::{self, Guid, Partition, SECTOR};
use crate::ImageError;

const MIB: u64 = 1024 * 1024;
/// Size of the EFI system partition: two slots of kernel + initramfs (about 15 MB each with
/// the metal profile) and room to grow. FAT32 with 1 KiB clusters (98,304 clusters).
pub const ESP_SIZE: u64 = 96 * MIB;
/// Size of the config partition: exactly a config disk ([`crate::cidata::DISK_SIZE`]).
pub const CONFIG_SIZE: u64 = crate::cidata::DISK_SIZE as u64;
/// Size of the state partition.
pub const STATE_SIZE: u64 = 8 * MIB;
/// Size of a router/VM disk image (partitions end at 106 MiB; the rest is free).
pub const DISK_SIZE: u64 = 128 * MIB;
/// GCE wants disk.raw in whole GiB.
pub const GCE_DISK_SIZE: u64 = 1024 * MIB;
/// How many tries a freshly installed slot gets.
pub const DEFAULT_TRIES: u32 = 3;

/// The partitions of a sitelink disk (same on every disk size).
pub fn partitions() -> Vec<Partition> {
    let guid = |s: &str| Guid::parse(s).unwrap_or(Guid([0; 16]));
    let mib = |m: u64| m * MIB / SECTOR;
    let esp_end = 1 + ESP_SIZE / MIB;
    let cfg_end = esp_end + CONFIG_SIZE / MIB;
    let state_end = cfg_end + STATE_SIZE / MIB;
    vec![
        Partition {
            type_guid: guid(gpt::types::ESP),
            guid: Guid::derived("partition:esp"),
            first_lba: mib(1),
            last_lba: mib(esp_end) - 1,
            name: "sitelink-esp".into(),
        },
        Partition {
            type_guid: guid(gpt::types::BASIC_DATA),
            guid: Guid::derived("partition:config"),
            first_lba: mib(esp_end),
            last_lba: mib(cfg_end) - 1,
            name: "CIDATA".into(),
        },
        Partition {
            type_guid: guid(gpt::types::LINUX_DATA),
            guid: Guid::derived("partition:state"),
            first_lba: mib(cfg_end),
            last_lba: mib(state_end) - 1,
            name: "sitelink-state".into(),
        },
    ]
}

/// `loader/loader.conf`: boot the first entry in systemd-boot's order at once (hold a key for
/// the menu); no editor (the command line is not changed at the console), no auto entries.
pub const LOADER_CONF: &str =
    "default sitelink-*\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\n";

fn label(s: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (d, c) in l.iter_mut().zip(s.bytes()) {
        *d = c;
    }
    l
}

fn volume_id(name: &str) -> u32 {
    let g = Guid::derived(name).0;
    u32::from_le_bytes([g[0], g[1], g[2], g[3]])
}

fn fs_options() -> FsOptions {
    FsOptions::new()
        .time_provider(&crate::cidata::FIXED_TIME)
        .update_accessed_date(false)
}

/// Write `data` to `path` in the file system, creating parent directories.
fn put<T: fatfs::ReadWriteSeek>(fs: &FileSystem<T>, path: &str, data: &[u8]) -> io::Result<()> {
    let root = fs.root_dir();
    if let Some((dir, _)) = path.rsplit_once('/') {
        let mut at = String::new();
        for part in dir.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if root.open_dir(&at).is_err() {
                root.create_dir(&at)?;
            }
        }
    }
    let mut f = root.create_file(path)?;
    f.truncate()?;
    f.write_all(data)?;
    f.flush()
}

fn mkdirs<T: fatfs::ReadWriteSeek>(fs: &FileSystem<T>, path: &str) -> io::Result<()> {
    put(fs, &format!("{path}/.keep"), b"")?;
    fs.root_dir().remove(&format!("{path}/.keep"))
}

/// An empty FAT file system of `size` bytes.
fn format(size: u64, fat: fatfs::FatType, cluster: u32, name: &str) -> io::Result<Vec<u8>> {
    let mut img = io::Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut img,
        FormatVolumeOptions::new()
            .fat_type(fat)
            .bytes_per_cluster(cluster)
            .total_sectors((size / SECTOR) as u32)
            .volume_label(label(name))
            .volume_id(volume_id(name)),
    )?;
    Ok(img.into_inner())
}

/// What goes into slot A of a new disk.
#[derive(Debug, Clone, Copy)]
pub struct SlotFiles<'a> {
    pub vmlinuz: &'a [u8],
    pub initramfs: &'a [u8],
}

/// The EFI system partition: systemd-boot, loader.conf, slot A (good, version 1), an empty
/// slot B.
pub fn esp(loader: &[u8], slot_a: SlotFiles<'_>) -> io::Result<Vec<u8>> {
    let mut img = io::Cursor::new(format(
        ESP_SIZE,
        fatfs::FatType::Fat32,
        1024,
        slots::ESP_LABEL,
    )?);
    {
        let fs = FileSystem::new(&mut img, fs_options())?;
        put(&fs, "EFI/BOOT/BOOTX64.EFI", loader)?;
        put(&fs, "EFI/systemd/systemd-bootx64.efi", loader)?;
        put(&fs, "loader/loader.conf", LOADER_CONF.as_bytes())?;
        put(
            &fs,
            &format!("{}/vmlinuz", slots::slot_dir('a')),
            slot_a.vmlinuz,
        )?;
        put(
            &fs,
            &format!("{}/initramfs.img", slots::slot_dir('a')),
            slot_a.initramfs,
        )?;
        mkdirs(&fs, &slots::slot_dir('b'))?;
        put(
            &fs,
            &format!(
                "{}/{}",
                slots::ENTRIES_DIR,
                EntryName::good('a').file_name()
            ),
            slots::entry_text('a', 1, &slots::kernel_options('a', "")).as_bytes(),
        )?;
        fs.unmount()?;
    }
    Ok(img.into_inner())
}

/// The state partition (empty; the router writes `boot.log`).
pub fn state() -> io::Result<Vec<u8>> {
    format(STATE_SIZE, fatfs::FatType::Fat16, 2048, slots::STATE_LABEL)
}

/// The config partition of a disk without a site: a `README.txt` saying what to put there.
pub fn empty_config() -> io::Result<Vec<u8>> {
    crate::cidata::disk(
        "generic",
        &[(
            "README.txt",
            b"sitelink config partition. Copy a site's site.toml and site.key here\r\n(`sitelink render NETWORK.toml --site NAME --keys DIR > site.toml`, and DIR/NAME.key as site.key).\r\nThe router reads them at boot.\r\n"
                .as_slice(),
        )],
    )
}

/// An update disk (FAT16, label `SL-UPDATE`, no partition table): `vmlinuz`,
/// `initramfs.img` and a `README.txt`. Attached to a running router (USB stick, extra cloud
/// disk) on a good slot, the init installs it into the other slot and reboots to try it.
pub fn update_disk(slot_files: SlotFiles<'_>) -> io::Result<Vec<u8>> {
    let need = (slot_files.vmlinuz.len() + slot_files.initramfs.len()) as u64 + 2 * MIB;
    let size = need.div_ceil(8 * MIB).max(2) * 8 * MIB;
    if size > 256 * MIB {
        return Err(io::Error::other(format!(
            "kernel + initramfs need {need} bytes; an update disk holds at most 256 MiB"
        )));
    }
    let mut img = io::Cursor::new(format(
        size,
        fatfs::FatType::Fat16,
        4096,
        slots::UPDATE_LABEL,
    )?);
    {
        let fs = FileSystem::new(&mut img, fs_options())?;
        put(&fs, "vmlinuz", slot_files.vmlinuz)?;
        put(&fs, "initramfs.img", slot_files.initramfs)?;
        put(
            &fs,
            "README.txt",
            b"sitelink update disk. Attach it to a running sitelink router (USB stick: dd this\r\nimage onto it; cloud VM: attach it as an extra disk). A healthy router installs\r\nthis release into its other boot slot and reboots into it; if the new release does\r\nnot bring a tunnel up, the router goes back to the old one by itself. Detach the disk\r\nafterwards.\r\n",
        )?;
        fs.unmount()?;
    }
    Ok(img.into_inner())
}

/// Write a disk image of `size` bytes to `path`: GPT and the three partitions (ESP, config,
/// state). Unwritten space stays sparse. Returns the sha256 of the whole image.
pub fn write(
    path: &Path,
    size: u64,
    esp: &[u8],
    config: &[u8],
    state: &[u8],
) -> Result<(), ImageError> {
    let parts = partitions();
    let sectors = size / SECTOR;
    let table =
        gpt::table(sectors, Guid::derived("disk"), &parts).map_err(|e| ImageError::Disk {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    let tmp = path.with_extension("tmp");
    let io = |e| ImageError::io("write", &tmp, e);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
    }
    let _ = fs::remove_file(&tmp);
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.set_len(size).map_err(io)?;
    for (offset, data) in [
        (0, table.head.as_slice()),
        (parts[0].offset(), esp),
        (parts[1].offset(), config),
        (parts[2].offset(), state),
        (table.tail_offset, table.tail.as_slice()),
    ] {
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        write_sparse(&mut f, data).map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(|e| ImageError::io("rename into", path, e))
}

/// Write `data` at the current position, seeking over all-zero 64 KiB blocks (the file was
/// zero-filled by `set_len`).
fn write_sparse(f: &mut fs::File, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(64 * 1024) {
        if chunk.iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(chunk.len() as i64))?;
        } else {
            f.write_all(chunk)?;
        }
    }
    Ok(())
}

/// A byte range of a disk (one partition) as a stream of its own, for `fatfs`.
#[derive(Debug)]
pub struct Slice<F> {
    inner: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Slice<F> {
    pub fn new(inner: F, start: u64, len: u64) -> Slice<F> {
        Slice {
            inner,
            start,
            len,
            pos: 0,
        }
    }
}

impl<F: Read + Seek> Read for Slice<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for Slice<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F: Seek> Seek for Slice<F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// Open the file system of the partition whose GPT name is `name` on the disk `path` (an image
/// file or a block device), and run `f` on it.
pub fn with_fs<T>(
    path: &Path,
    name: &str,
    f: impl FnOnce(&FileSystem<Slice<&mut fs::File>>) -> io::Result<T>,
) -> Result<T, ImageError> {
    let err = |why: String| ImageError::Disk {
        path: path.to_owned(),
        why,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io("open", path, e))?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_ok() && &magic == b"QFI\xfb" {
        return Err(err(
            "is a qcow2 image: update the .raw and convert it again (qemu-img convert), or attach the qcow2 with qemu-nbd and update /dev/nbdN".into(),
        ));
    }
    let parts = gpt::read(&mut file).map_err(|e| err(e.to_string()))?;
    let p = parts.iter().find(|p| p.name == name).ok_or_else(|| {
        err(format!(
            "no partition named {name:?} (not a sitelink disk?)"
        ))
    })?;
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| ImageError::io("seek", path, e))?;
    if len < p.offset() + p.size() {
        return Err(err(format!(
            "is {len} bytes, but partition {name:?} ends at byte {}: the disk is truncated",
            p.offset() + p.size()
        )));
    }
    let fs = FileSystem::new(Slice::new(&mut file, p.offset(), p.size()), fs_options())
        .map_err(|e| err(format!("partition {name:?}: not a FAT file system: {e}")))?;
    let out = f(&fs).map_err(|e| err(format!("partition {name:?}: {e}")))?;
    fs.unmount()
        .map_err(|e| err(format!("partition {name:?}: unmount: {e}")))?;
    file.sync_all()
        .map_err(|e| ImageError::io("sync", path, e))?;
    Ok(out)
}

fn read_entries<T: fatfs::ReadWriteSeek>(fs: &FileSystem<T>) -> io::Result<Vec<SlotEntry>> {
    let dir = fs.root_dir().open_dir(slots::ENTRIES_DIR)?;
    let mut files = Vec::new();
    for e in dir.iter() {
        let e = e?;
        if e.is_dir() {
            continue;
        }
        let mut text = String::new();
        e.to_file().read_to_string(&mut text)?;
        files.push((e.file_name(), text));
    }
    Ok(slots::slot_entries(
        files.iter().map(|(n, t)| (n.as_str(), t.as_str())),
    ))
}

/// The boot entries of a disk's ESP.
pub fn entries(path: &Path) -> Result<Vec<SlotEntry>, ImageError> {
    #[allow(clippy::redundant_closure)] // the closure is what makes the lifetimes general
    with_fs(path, "sitelink-esp", |fs| read_entries(fs))
}

/// The good slot of the disk at `path` (the update fallback), if it already holds exactly these
/// files: installing them again would only put the same release into both slots.
pub fn good_slot_holding(path: &Path, files: SlotFiles<'_>) -> Result<Option<char>, ImageError> {
    with_fs(path, "sitelink-esp", |fs| {
        let Some(slot) = slots::good_slot(&read_entries(fs)?) else {
            return Ok(None);
        };
        let sd = slots::slot_dir(slot);
        let same = |name: &str, want: &[u8]| -> io::Result<bool> {
            let mut data = Vec::new();
            match fs.root_dir().open_file(&format!("{sd}/{name}")) {
                Ok(mut f) => f.read_to_end(&mut data)?,
                Err(_) => return Ok(false),
            };
            Ok(data == want)
        };
        Ok(
            (same("vmlinuz", files.vmlinuz)? && same("initramfs.img", files.initramfs)?)
                .then_some(slot),
        )
    })
}

/// What [`update`] did.
#[derive(Debug, Clone)]
pub struct Updated {
    pub slot: char,
    pub entry: String,
    pub version: u64,
}

/// The most boot attempts an update gets.
pub const MAX_TRIES: u32 = 10;

/// The arguments of [`update`], checked before anything is read or written: at least one try,
/// and a `sitelink.health_timeout=` in `extra` that the init takes.
pub fn check_update(tries: u32, extra: &str) -> Result<(), ImageError> {
    if tries == 0 {
        return Err(ImageError::Usage(format!(
            "--tries 0 would install a slot that is never booted; give 1 to {MAX_TRIES}"
        )));
    }
    if tries > MAX_TRIES {
        return Err(ImageError::Usage(format!(
            "--tries {tries}: at most {MAX_TRIES} (each failed try can take the health timeout, 5 minutes by default, before the router gives up on it)"
        )));
    }
    if extra.chars().any(char::is_control) {
        return Err(ImageError::Usage(
            "--append: kernel arguments on one line, without control characters (a newline would add lines to the boot entry)".into(),
        ));
    }
    let words: Vec<&str> = extra.split_whitespace().collect();
    if words.iter().any(|w| w.starts_with("sitelink.slot=")) {
        return Err(ImageError::Usage(
            "--append: sitelink.slot= is set by the update itself (the slot it writes)".into(),
        ));
    }
    if words
        .iter()
        .filter(|w| w.starts_with("sitelink.health_timeout="))
        .count()
        > 1
    {
        return Err(ImageError::Usage(
            "--append: give sitelink.health_timeout= once".into(),
        ));
    }
    slots::cmdline_health_timeout(extra)
        .map(|_| ())
        .map_err(|e| ImageError::Usage(format!("--append: {e}")))
}

/// Bytes of `path` in `fs` (0 if it is not there).
fn file_len<T: fatfs::ReadWriteSeek>(fs: &FileSystem<T>, path: &str) -> io::Result<u64> {
    match fs.root_dir().open_file(path) {
        Ok(mut f) => f.seek(SeekFrom::End(0)),
        Err(_) => Ok(0),
    }
}

/// Install a kernel + initramfs into the slot that is not the good one on the disk at `path`: remove
/// that slot's entry first (a half-written slot is never booted), write the files, then write
/// its entry as `sitelink-<slot>+<tries>.conf` with a version above every other, so
/// systemd-boot tries it first and falls back once its tries are used up. `extra` is added to
/// the kernel command line.
pub fn update(
    path: &Path,
    slot_files: SlotFiles<'_>,
    tries: u32,
    extra: &str,
) -> Result<Updated, ImageError> {
    check_update(tries, extra)?;
    slots::check_release(slot_files.vmlinuz, slot_files.initramfs).map_err(|e| {
        ImageError::Usage(format!(
            "the new {e}; give the directory of a `sitelink build`"
        ))
    })?;
    with_fs(path, "sitelink-esp", |fs| {
        let entries = read_entries(fs)?;
        let slot = slots::update_slot(&entries);
        let version = entries.iter().map(|e| e.version).max().unwrap_or(0) + 1;
        let sd = slots::slot_dir(slot);
        // Room for the new files, counting what the old ones of that slot free, before anything
        // is removed: a release that does not fit leaves the disk as it was.
        let stats = fs.stats()?;
        let cluster = u64::from(stats.cluster_size());
        let clusters = |n: u64| n.div_ceil(cluster);
        let need = clusters(slot_files.vmlinuz.len() as u64)
            + clusters(slot_files.initramfs.len() as u64)
            + 2;
        let have = u64::from(stats.free_clusters())
            + clusters(file_len(fs, &format!("{sd}/vmlinuz"))?)
            + clusters(file_len(fs, &format!("{sd}/initramfs.img"))?);
        if need > have {
            return Err(io::Error::other(format!(
                "the release needs {} KiB, the ESP has {} KiB for slot {slot}; nothing was written",
                need * cluster / 1024,
                have * cluster / 1024
            )));
        }
        let dir = fs.root_dir();
        for e in entries.iter().filter(|e| e.slot == slot) {
            dir.remove(&format!("{}/{}", slots::ENTRIES_DIR, e.name.file_name()))?;
        }
        put(fs, &format!("{sd}/vmlinuz"), slot_files.vmlinuz)?;
        put(fs, &format!("{sd}/initramfs.img"), slot_files.initramfs)?;
        let entry = EntryName::trial(slot, tries).file_name();
        put(
            fs,
            &format!("{}/{entry}", slots::ENTRIES_DIR),
            slots::entry_text(slot, version, &slots::kernel_options(slot, extra)).as_bytes(),
        )?;
        Ok(Updated {
            slot,
            entry,
            version,
        })
    })
}

/// Replace files in the config partition (`CIDATA`) of a disk: what a user does with any FAT
/// tool before flashing or after mounting the partition.
pub fn write_config(path: &Path, files: &[(&str, &[u8])]) -> Result<(), ImageError> {
    with_fs(path, "CIDATA", |fs| {
        for (name, data) in files {
            put(fs, name, data)?;
        }
        Ok(())
    })
}

/// Read a file of a partition (by GPT name).
pub fn read_file(path: &Path, partition: &str, file: &str) -> Result<Vec<u8>, ImageError> {
    with_fs(path, partition, |fs| {
        let mut data = Vec::new();
        fs.root_dir().open_file(file)?.read_to_end(&mut data)?;
        Ok(data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path) -> std::path::PathBuf {
        let files = SlotFiles {
            vmlinuz: b"kernel-1",
            initramfs: b"initramfs-1",
        };
        let esp = esp(b"MZ-loader", files).unwrap_or_default();
        let cfg = crate::cidata::disk("t", &[("site.toml", b"format = 1\n".as_slice())])
            .unwrap_or_default();
        let path = dir.join("t.raw");
        let r = write(&path, DISK_SIZE, &esp, &cfg, &state().unwrap_or_default());
        assert!(r.is_ok(), "{r:?}");
        path
    }

    /// Stand-in kernel: just the bzImage header magic an update checks for.
    fn kernel(n: u8) -> Vec<u8> {
        let mut k = vec![n; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k
    }

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sitelink-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let _ = fs::create_dir_all(&d);
        d
    }

    #[test]
    fn layout_fits_and_is_aligned() {
        let parts = partitions();
        let (lo, hi) = gpt::usable(DISK_SIZE / SECTOR);
        assert!(parts[0].first_lba >= lo && parts[2].last_lba <= hi);
        for p in &parts {
            assert_eq!(p.offset() % MIB, 0, "{} is not 1 MiB aligned", p.name);
        }
        assert_eq!(parts[0].size(), ESP_SIZE);
        assert_eq!(parts[1].size(), CONFIG_SIZE);
        assert!(gpt::table(GCE_DISK_SIZE / SECTOR, Guid::derived("disk"), &parts).is_ok());
    }

    #[test]
    fn disk_is_reproducible_and_holds_the_layout() {
        let d = tmpdir("layout");
        let path = disk(&d);
        let a = fs::read(&path).unwrap_or_default();
        let again = tmpdir("layout2");
        let b = fs::read(disk(&again)).unwrap_or_default();
        assert_eq!(a.len() as u64, DISK_SIZE);
        assert!(a == b, "two disks from the same inputs differ");
        // ESP: FAT32 with our label; the config partition: the config disk's label.
        let esp_off = partitions()[0].offset() as usize;
        assert_eq!(&a[esp_off + 82..esp_off + 87], b"FAT32");
        assert_eq!(&a[esp_off + 71..esp_off + 82], b"SL-BOOT    ");
        let cfg_off = partitions()[1].offset() as usize;
        assert_eq!(&a[cfg_off + 43..cfg_off + 54], crate::cidata::LABEL);
        let conf =
            read_file(&path, "sitelink-esp", "loader/entries/sitelink-a.conf").unwrap_or_default();
        let conf = String::from_utf8_lossy(&conf);
        assert!(
            conf.contains("options console=tty0 console=ttyS0,115200 panic=10 sitelink.slot=a"),
            "{conf}"
        );
        assert_eq!(
            read_file(&path, "sitelink-esp", "EFI/BOOT/BOOTX64.EFI").unwrap_or_default(),
            b"MZ-loader"
        );
        let _ = fs::remove_dir_all(d);
        let _ = fs::remove_dir_all(again);
    }

    #[test]
    fn a_second_update_before_a_boot_keeps_the_good_slot() {
        let d = tmpdir("update-twice");
        let path = disk(&d);
        let (k2, k3) = (kernel(2), kernel(3));
        let v2 = SlotFiles {
            vmlinuz: &k2,
            initramfs: b"initramfs-2",
        };
        let v3 = SlotFiles {
            vmlinuz: &k3,
            initramfs: b"initramfs-3",
        };
        assert_eq!(update(&path, v2, 3, "").map(|u| u.slot).ok(), Some('b'));
        // b is on trial and was never booted: v3 replaces it, slot a stays the fallback.
        let u = update(&path, v3, 3, "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.slot, u.entry.as_str()), ('b', "sitelink-b+3.conf"));
        let names: Vec<String> = entries(&path)
            .unwrap_or_default()
            .iter()
            .map(|e| e.name.file_name())
            .collect();
        assert_eq!(names, ["sitelink-a.conf", "sitelink-b+3.conf"]);
        assert_eq!(
            read_file(&path, "sitelink-esp", "sitelink/a/vmlinuz").unwrap_or_default(),
            b"kernel-1"
        );
        // The release the good slot holds is recognised (the CLI then installs nothing).
        let v1 = SlotFiles {
            vmlinuz: b"kernel-1",
            initramfs: b"initramfs-1",
        };
        assert_eq!(good_slot_holding(&path, v1).ok(), Some(Some('a')));
        assert_eq!(good_slot_holding(&path, v3).ok(), Some(None));
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn bad_releases_and_disks_are_refused_and_change_nothing() {
        let d = tmpdir("update-bad");
        let path = disk(&d);
        let before = fs::read(&path).unwrap_or_default();
        let k = kernel(2);
        // Every byte but the ESP's FSInfo sector, where FAT keeps its free-cluster count (the
        // space check counts the free clusters and fatfs stores the count it found).
        let esp_off = partitions()[0].offset() as usize;
        let fsinfo = esp_off
            + 512
                * usize::from(u16::from_le_bytes([
                    before[esp_off + 48],
                    before[esp_off + 49],
                ]));
        let masked = |mut d: Vec<u8>| {
            d[fsinfo..fsinfo + 512].fill(0);
            d
        };
        let refused = |files: SlotFiles<'_>, want: &str| {
            let r = update(&path, files, 3, "");
            assert!(
                matches!(&r, Err(e) if e.to_string().contains(want)),
                "{r:?}"
            );
            let after = fs::read(&path).unwrap_or_default();
            assert!(
                masked(after) == masked(before.clone()),
                "{want}: disk changed"
            );
        };
        refused(
            SlotFiles {
                vmlinuz: b"",
                initramfs: b"i",
            },
            "is not a Linux kernel",
        );
        refused(
            SlotFiles {
                vmlinuz: &k,
                initramfs: b"",
            },
            "initramfs.img is empty",
        );
        // Larger than the 96 MiB ESP: refused before slot b's old entry or files go.
        let huge = vec![7u8; 100 << 20];
        refused(
            SlotFiles {
                vmlinuz: &k,
                initramfs: &huge,
            },
            "nothing was written",
        );
        for bad in [
            "a\nlinux /x",
            "sitelink.slot=a",
            "sitelink.health_timeout=20 sitelink.health_timeout=30",
        ] {
            let r = check_update(3, bad);
            assert!(
                matches!(&r, Err(ImageError::Usage(e)) if e.starts_with("--append: ")),
                "{bad:?}: {r:?}"
            );
        }
        assert!(check_update(3, "sitelink.health_timeout=20 quiet").is_ok());
        // A disk cut short (a partial copy) is not written to.
        let short = d.join("short.raw");
        let _ = fs::write(&short, &before[..(64 << 20)]);
        let r = update(
            &short,
            SlotFiles {
                vmlinuz: &k,
                initramfs: b"i",
            },
            3,
            "",
        );
        assert!(
            matches!(&r, Err(e) if e.to_string().contains("the disk is truncated")),
            "{r:?}"
        );
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn updates_alternate_slots_with_a_tries_counter() {
        let d = tmpdir("update");
        let path = disk(&d);
        let k2 = kernel(2);
        let new = SlotFiles {
            vmlinuz: &k2,
            initramfs: b"initramfs-2",
        };
        let u = update(&path, new, 3, "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.slot, u.entry.as_str(), u.version),
            ('b', "sitelink-b+3.conf", 2)
        );
        assert_eq!(
            read_file(&path, "sitelink-esp", "sitelink/b/vmlinuz").unwrap_or_default(),
            k2
        );
        let e = entries(&path).unwrap_or_default();
        assert_eq!(slots::active_slot(&e), Some('b'));
        // systemd-boot used up the tries: the next update goes to b again.
        with_fs(&path, "sitelink-esp", |fs| {
            let dir = fs.root_dir().open_dir(slots::ENTRIES_DIR)?;
            dir.rename("sitelink-b+3.conf", &dir, "sitelink-b+0-3.conf")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            slots::active_slot(&entries(&path).unwrap_or_default()),
            Some('a')
        );
        let u = update(&path, new, 2, "quiet").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.slot, u.entry.as_str(), u.version),
            ('b', "sitelink-b+2.conf", 3)
        );
        let names: Vec<String> = entries(&path)
            .unwrap_or_default()
            .iter()
            .map(|e| e.name.file_name())
            .collect();
        assert_eq!(names, ["sitelink-a.conf", "sitelink-b+2.conf"]);
        // Marked good: the next update replaces a.
        with_fs(&path, "sitelink-esp", |fs| {
            let dir = fs.root_dir().open_dir(slots::ENTRIES_DIR)?;
            dir.rename("sitelink-b+2.conf", &dir, "sitelink-b.conf")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let u = update(&path, new, 3, "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.slot, u.version), ('a', 4));
        assert!(update(&path, new, 0, "").is_err());
        // Not a disk: a clear error.
        let junk = d.join("junk.raw");
        let _ = fs::write(&junk, vec![0u8; 4096]);
        let err = update(&junk, new, 3, "")
            .map(|_| ())
            .unwrap_err_or_default();
        assert!(err.contains("junk.raw") && err.contains("GPT"), "{err}");
        let qcow = d.join("t.qcow2");
        let _ = fs::write(&qcow, b"QFI\xfb\0\0\0\x03");
        let err = update(&qcow, new, 3, "")
            .map(|_| ())
            .unwrap_err_or_default();
        assert!(err.contains("is a qcow2 image"), "{err}");
        let _ = fs::remove_dir_all(d);
    }

    trait ErrText {
        fn unwrap_err_or_default(self) -> String;
    }
    impl ErrText for Result<(), ImageError> {
        fn unwrap_err_or_default(self) -> String {
            self.err().map(|e| e.to_string()).unwrap_or_default()
        }
    }

    #[test]
    fn profiles_load_what_the_disks_need() {
        use crate::{profile_modules, Profile};
        for p in [Profile::Cloud, Profile::Metal] {
            let m = profile_modules(p);
            // The ESP, config and state partitions are FAT; vfat's default code pages.
            for need in [
                "vfat",
                "nls_cp437",
                "nls_iso8859-1",
                "nls_ascii",
                "virtio_blk",
            ] {
                assert!(m.contains(&need), "{p:?} lacks {need}");
            }
        }
        let metal = profile_modules(Profile::Metal);
        for need in ["nvme", "ahci", "sd_mod", "usb_storage", "xhci_pci"] {
            assert!(metal.contains(&need), "metal lacks {need}");
        }
        let cloud = profile_modules(Profile::Cloud);
        for need in ["virtio_scsi", "sd_mod", "hv_storvsc"] {
            assert!(cloud.contains(&need), "cloud lacks {need}");
        }
    }

    #[test]
    fn update_disk_is_labelled_and_reproducible() {
        let files = SlotFiles {
            vmlinuz: b"kernel-2",
            initramfs: b"initramfs-2",
        };
        let a = update_disk(files).unwrap_or_default();
        assert_eq!(a, update_disk(files).unwrap_or_default());
        assert_eq!(a.len() as u64, 16 * MIB);
        assert_eq!(&a[43..54], b"SL-UPDATE  ");
        let fs = FileSystem::new(io::Cursor::new(a), FsOptions::new());
        let Ok(fs) = fs else { panic!("not FAT") };
        let mut k = Vec::new();
        let r = fs
            .root_dir()
            .open_file("vmlinuz")
            .and_then(|mut f| f.read_to_end(&mut k));
        assert!(r.is_ok() && k == b"kernel-2");
    }

    #[test]
    fn config_partition_is_editable() {
        let d = tmpdir("config");
        let path = disk(&d);
        let r = write_config(
            &path,
            &[("site.toml", b"format = 1\n# edited\n".as_slice())],
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            read_file(&path, "CIDATA", "site.toml").unwrap_or_default(),
            b"format = 1\n# edited\n"
        );
        let _ = fs::remove_dir_all(d);
    }
}
