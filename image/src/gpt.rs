//! GUID partition tables, written and read in Rust (UEFI spec 2.10, chapter 5): a protective
//! MBR, the primary header at LBA 1 with 128 entries of 128 bytes at LBA 2-33, and the backup
//! entries and header at the end of the disk. Sector size 512. GUIDs are derived from names
//! ([`Guid::derived`]) so the same inputs give the same bytes.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// Logical sector size.
pub const SECTOR: u64 = 512;
/// Partition entries (the minimum the spec allows for the array's size, 16 KiB).
pub const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
/// Sectors of the entry array.
pub const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
const SIGNATURE: &[u8; 8] = b"EFI PART";

/// A GUID, stored as the 16 bytes of its on-disk (mixed-endian) form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parse the text form `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        // The first three fields are little-endian on disk.
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Some(Guid(b))
    }

    /// A version 4 (random-format) GUID whose bits come from sha256 of `name`: the same name
    /// always gives the same GUID.
    pub fn derived(name: &str) -> Guid {
        let d = Sha256::digest(format!("sitelink-gpt:{name}").as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        // Text-form byte 6 (on disk: byte 7, the high byte of the little-endian third field)
        // carries the version; byte 8 the variant.
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Partition type GUIDs.
pub mod types {
    /// EFI system partition.
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    /// Microsoft basic data: every OS mounts it (the config partition).
    pub const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
    /// Linux filesystem data (the state partition).
    pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub name: String,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// Why a partition table cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("partition {name:?} (LBA {first}-{last}) is outside the usable LBAs {lo}-{hi} or overlaps another")]
    BadPartition {
        name: String,
        first: u64,
        last: u64,
        lo: u64,
        hi: u64,
    },
    #[error("partition name {0:?} is longer than 36 UTF-16 units")]
    LongName(String),
    #[error("more than {ENTRIES} partitions")]
    TooMany,
    #[error("no GPT: {0}")]
    NotGpt(String),
    #[error("cannot read the partition table: {0}")]
    Io(#[from] std::io::Error),
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// First and last usable LBA of a disk of `sectors` sectors.
pub fn usable(sectors: u64) -> (u64, u64) {
    (2 + ENTRY_SECTORS, sectors - 2 - ENTRY_SECTORS)
}

fn entry_array(parts: &[Partition]) -> Result<Vec<u8>, GptError> {
    if parts.len() > ENTRIES {
        return Err(GptError::TooMany);
    }
    let mut a = vec![0u8; ENTRIES * ENTRY_SIZE];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut a[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
        e[0..16].copy_from_slice(&p.type_guid.0);
        e[16..32].copy_from_slice(&p.guid.0);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > 36 {
            return Err(GptError::LongName(p.name.clone()));
        }
        for (j, u) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    Ok(a)
}

#[allow(clippy::too_many_arguments)]
fn header(
    disk: Guid,
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR as usize];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&disk.0);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The protective MBR: one partition of type 0xEE covering the disk.
fn protective_mbr(sectors: u64) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    let p = &mut m[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    p[4] = 0xEE;
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    p[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// The two ends of a partitioned disk: `head` goes at offset 0 (protective MBR, header,
/// entries: LBA 0-33), `tail` at the last 33 sectors (entries, backup header).
#[derive(Debug, Clone)]
pub struct Table {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub tail_offset: u64,
}

/// Write the partition table of a disk of `sectors` sectors. Partitions must lie inside the
/// usable LBAs and not overlap.
pub fn table(sectors: u64, disk: Guid, parts: &[Partition]) -> Result<Table, GptError> {
    let (lo, hi) = usable(sectors);
    let mut sorted: Vec<&Partition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.first_lba);
    let mut next_free = lo;
    for p in sorted {
        if p.first_lba < next_free || p.last_lba < p.first_lba || p.last_lba > hi {
            return Err(GptError::BadPartition {
                name: p.name.clone(),
                first: p.first_lba,
                last: p.last_lba,
                lo,
                hi,
            });
        }
        next_free = p.last_lba + 1;
    }
    let entries = entry_array(parts)?;
    let entries_crc = crc32(&entries);
    let last = sectors - 1;
    let mut head = protective_mbr(sectors);
    head.extend(header(disk, 1, last, lo, hi, 2, entries_crc));
    head.extend(&entries);
    let mut tail = entries;
    tail.extend(header(disk, last, 1, lo, hi, hi + 1, entries_crc));
    Ok(Table {
        head,
        tail,
        tail_offset: (hi + 1) * SECTOR,
    })
}

/// Read the primary table of a disk (header and entries CRCs checked); the used entries.
pub fn read(disk: &mut (impl Read + Seek)) -> Result<Vec<Partition>, GptError> {
    let mut h = vec![0u8; SECTOR as usize];
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.read_exact(&mut h)?;
    if &h[0..8] != SIGNATURE {
        return Err(GptError::NotGpt(
            "no \"EFI PART\" signature at LBA 1".into(),
        ));
    }
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |b: &[u8], i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(x)
    };
    let size = u32_at(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Err(GptError::NotGpt(format!("header size {size}")));
    }
    let mut check = h[..size].to_vec();
    check[16..20].fill(0);
    if crc32(&check) != u32_at(&h, 16) {
        return Err(GptError::NotGpt("header CRC mismatch".into()));
    }
    let entries_lba = u64_at(&h, 72);
    let count = u32_at(&h, 80) as usize;
    let esize = u32_at(&h, 84) as usize;
    if !(128..=4096).contains(&esize) || count > 1024 {
        return Err(GptError::NotGpt(format!(
            "{count} entries of {esize} bytes"
        )));
    }
    let mut a = vec![0u8; count * esize];
    disk.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    disk.read_exact(&mut a)?;
    if crc32(&a) != u32_at(&h, 88) {
        return Err(GptError::NotGpt("partition entries CRC mismatch".into()));
    }
    let mut out = Vec::new();
    for e in a.chunks(esize) {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[0..16]);
        let mut g = [0u8; 16];
        g.copy_from_slice(&e[16..32]);
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        out.push(Partition {
            type_guid: Guid(t),
            guid: Guid(g),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn guid(s: &str) -> Guid {
        Guid::parse(s).unwrap_or(Guid([0; 16]))
    }

    #[test]
    fn guid_text_and_disk_forms() {
        let g = guid(types::ESP);
        // The ESP type GUID on disk begins 28 73 2A C1 (first field little-endian).
        assert_eq!(&g.0[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(g.to_string(), types::ESP);
        assert_eq!(Guid::parse("nope"), None);
        let d = Guid::derived("x");
        assert_eq!(d, Guid::derived("x"));
        assert_ne!(d, Guid::derived("y"));
        // Version 4, variant 10xx in the text form.
        let t = d.to_string();
        assert_eq!(&t[14..15], "4");
        assert!(matches!(&t[19..20], "8" | "9" | "A" | "B"), "{t}");
    }

    #[test]
    fn table_round_trips_and_checks_bounds() {
        let sectors = 8192; // 4 MiB
        let parts = vec![
            Partition {
                type_guid: guid(types::ESP),
                guid: Guid::derived("esp"),
                first_lba: 2048,
                last_lba: 4095,
                name: "sitelink-esp".into(),
            },
            Partition {
                type_guid: guid(types::BASIC_DATA),
                guid: Guid::derived("cfg"),
                first_lba: 4096,
                last_lba: 6143,
                name: "CIDATA".into(),
            },
        ];
        let t = table(sectors, Guid::derived("disk"), &parts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.head.len(), 34 * 512);
        assert_eq!(t.tail.len(), 33 * 512);
        assert_eq!(t.tail_offset, (sectors - 33) * 512);
        assert_eq!(t.head[450], 0xEE);
        assert_eq!(&t.head[510..512], &[0x55, 0xAA]);
        let mut disk = vec![0u8; (sectors * 512) as usize];
        disk[..t.head.len()].copy_from_slice(&t.head);
        disk[t.tail_offset as usize..].copy_from_slice(&t.tail);
        let back = read(&mut Cursor::new(&disk)).unwrap_or_default();
        assert_eq!(back, parts);
        // The backup header points back at the primary and checks out.
        let bh = &disk[disk.len() - 512..];
        assert_eq!(&bh[0..8], SIGNATURE);
        assert_eq!(
            u64::from_le_bytes(bh[24..32].try_into().unwrap_or([0; 8])),
            sectors - 1
        );
        // A corrupted entry is noticed.
        disk[1024 + 40] ^= 1;
        assert!(read(&mut Cursor::new(&disk)).is_err());
        // Overlaps and out-of-range partitions are refused.
        let mut bad = parts.clone();
        bad[1].first_lba = 4000;
        assert!(table(sectors, Guid::derived("disk"), &bad).is_err());
        bad[1].first_lba = 4096;
        bad[1].last_lba = sectors - 1;
        assert!(table(sectors, Guid::derived("disk"), &bad).is_err());
    }
}
