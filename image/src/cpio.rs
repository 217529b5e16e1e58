//! A reproducible newc ("070701") cpio writer: entries sorted by path, inode numbers assigned in
//! that order, every mtime the given epoch, owner root.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An archive under construction: path (no leading '/') → entry.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Add an entry, and every parent directory (mode 0755) that is not there yet.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(path, entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the archive in newc format with every mtime `mtime`.
    pub fn write(&self, out: &mut impl Write, mtime: u32) -> io::Result<()> {
        let mut written = 0usize;
        for (i, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (0o040000 | mode, &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (0o020000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir { .. }) {
                2
            } else {
                1
            };
            written += header(out, i as u32 + 1, mode, nlink, mtime, data, rdev, path)?;
        }
        written += header(out, 0, 0, 1, 0, &[], (0, 0), "TRAILER!!!")?;
        // Pad the archive to a multiple of 512 bytes, as cpio(1) does.
        let pad = (512 - written % 512) % 512;
        out.write_all(&vec![0; pad])
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
    rdev: (u32, u32),
    name: &str,
) -> io::Result<usize> {
    let name_len = name.len() + 1;
    let h = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        0
    );
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let mut n = h.len() + name_len;
    let pad = (4 - n % 4) % 4;
    out.write_all(&[0; 3][..pad])?;
    n += pad;
    out.write_all(data)?;
    n += data.len();
    let pad = (4 - n % 4) % 4;
    out.write_all(&[0; 3][..pad])?;
    Ok(n + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_added_and_output_is_sorted_and_stable() {
        let mut a = Archive::new();
        a.add(
            "/lib/modules/x/tun.ko",
            Entry::File {
                mode: 0o644,
                data: b"abc".to_vec(),
            },
        );
        a.add(
            "init",
            Entry::File {
                mode: 0o755,
                data: vec![1],
            },
        );
        assert_eq!(a.len(), 5);
        let mut one = Vec::new();
        let mut two = Vec::new();
        a.write(&mut one, 0).unwrap_or_default();
        a.write(&mut two, 0).unwrap_or_default();
        assert_eq!(one, two);
        assert_eq!(one.len() % 512, 0);
        let text = String::from_utf8_lossy(&one);
        let init = text.find("init\0").unwrap_or(usize::MAX);
        let lib = text.find("lib\0").unwrap_or(0);
        assert!(init < lib, "entries are sorted");
        assert!(text.contains("TRAILER!!!"));
    }
}
