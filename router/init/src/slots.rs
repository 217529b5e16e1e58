//! A/B boot slots and systemd-boot's automatic boot assessment.
//!
//! The disk's EFI system partition (vfat, label [`ESP_LABEL`]) holds two slots,
//! `/sitelink/a/{vmlinuz,initramfs.img}` and `/sitelink/b/...`, each with a Boot Loader
//! Specification Type #1 entry `loader/entries/sitelink-<slot>[+LEFT[-DONE]].conf`. An entry with
//! a counter is on trial: systemd-boot renames it before each try (`+3` → `+2-1` → ...), and one
//! with 0 tries left is "bad" and sorted after every other entry, so the other slot boots. The
//! init renames the booted entry to `sitelink-<slot>.conf` (good) only once its health check
//! passes. Between good entries the higher `version` wins (both carry `sort-key sitelink`), which
//! is how a freshly installed slot is tried first.
//!
//! The naming and choosing is pure ([`EntryName`], [`active_slot`]) and shared with the build
//! host's `sitelink image update`; the device part mounts the ESP (mount(2)) and renames.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The FAT label of the EFI system partition of a sitelink disk.
pub const ESP_LABEL: &str = "SL-BOOT";
/// The FAT label of the state partition.
pub const STATE_LABEL: &str = "SL-STATE";
/// Where the ESP is mounted while the init reads or renames an entry.
pub const ESP_MOUNT: &str = "/run/sitelink-esp";
/// Where the state partition is mounted while the init writes to it.
pub const STATE_MOUNT: &str = "/run/sitelink-state";
/// Boot entries directory on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// The slots.
pub const SLOTS: [char; 2] = ['a', 'b'];
/// How long a slot on trial has to become healthy before the init reboots it.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);

/// A boot entry's file name, split as systemd-boot does: `ID[+LEFT[-DONE]].conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// The name without counter and `.conf` (`sitelink-a`).
    pub id: String,
    /// Tries left; `None`: no boot counting (a good entry).
    pub left: Option<u32>,
    /// Tries done so far (only with `left`).
    pub done: Option<u32>,
}

impl EntryName {
    /// Split a file name; `None` if it does not end in `.conf`. A `+` suffix that is not a
    /// counter stays part of the id, as in systemd-boot.
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_suffix(".conf")?;
        if stem.is_empty() {
            return None;
        }
        let plain = || EntryName {
            id: stem.to_owned(),
            left: None,
            done: None,
        };
        let Some((id, counter)) = stem.rsplit_once('+') else {
            return Some(plain());
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (left, done) = match counter.split_once('-') {
            Some((l, d)) if digits(l) && digits(d) => (l, Some(d)),
            None if digits(counter) => (counter, None),
            _ => return Some(plain()),
        };
        if id.is_empty() {
            return Some(plain());
        }
        Some(EntryName {
            id: id.to_owned(),
            left: left.parse().ok(),
            done: done.and_then(|d| d.parse().ok()),
        })
    }

    /// The entry of `slot` on trial with `tries` left.
    pub fn trial(slot: char, tries: u32) -> EntryName {
        EntryName {
            id: slot_id(slot),
            left: Some(tries),
            done: None,
        }
    }

    /// The good entry of `slot`.
    pub fn good(slot: char) -> EntryName {
        EntryName {
            id: slot_id(slot),
            left: None,
            done: None,
        }
    }

    /// The file name (`sitelink-b+2-1.conf`).
    pub fn file_name(&self) -> String {
        match (self.left, self.done) {
            (Some(l), Some(d)) => format!("{}+{l}-{d}.conf", self.id),
            (Some(l), None) => format!("{}+{l}.conf", self.id),
            _ => format!("{}.conf", self.id),
        }
    }

    /// On trial (systemd-boot counts its tries).
    pub fn counting(&self) -> bool {
        self.left.is_some()
    }

    /// Out of tries: systemd-boot sorts it last.
    pub fn bad(&self) -> bool {
        self.left == Some(0)
    }

    /// The slot of a sitelink entry (`sitelink-a` → `a`).
    pub fn slot(&self) -> Option<char> {
        let s = self.id.strip_prefix("sitelink-")?;
        let mut c = s.chars();
        match (c.next(), c.next()) {
            (Some(slot), None) if SLOTS.contains(&slot) => Some(slot),
            _ => None,
        }
    }
}

/// `sitelink-<slot>`
pub fn slot_id(slot: char) -> String {
    format!("sitelink-{slot}")
}

/// The directory of a slot's kernel and initramfs on the ESP (`sitelink/a`).
pub fn slot_dir(slot: char) -> String {
    format!("sitelink/{slot}")
}

/// The other slot.
pub fn other(slot: char) -> char {
    if slot == 'a' {
        'b'
    } else {
        'a'
    }
}

/// The kernel command line every slot gets: the serial console last (it becomes
/// /dev/console, where clouds' serial logs and the tests read), a panic reboots after 10 s (a
/// broken kernel or initramfs uses up a try instead of hanging), and the slot's name.
pub fn kernel_options(slot: char, extra: &str) -> String {
    format!("console=tty0 console=ttyS0,115200 panic=10 sitelink.slot={slot} {extra}")
        .trim_end()
        .to_owned()
}

/// A Type #1 boot entry for `slot`.
pub fn entry_text(slot: char, version: u64, options: &str) -> String {
    let dir = slot_dir(slot);
    format!(
        "title sitelink (slot {slot})\nsort-key sitelink\nversion {version}\nlinux /{dir}/vmlinuz\ninitrd /{dir}/initramfs.img\noptions {options}\n"
    )
}

/// The `version` line of an entry (0 when there is none).
pub fn entry_version(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("version"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One sitelink entry on an ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    pub slot: char,
    pub name: EntryName,
    pub version: u64,
}

/// The slot systemd-boot boots next: among entries that are not bad, the highest version
/// (both have the same sort key); `None` if every entry is bad or there are none.
pub fn active_slot(entries: &[SlotEntry]) -> Option<char> {
    entries
        .iter()
        .filter(|e| !e.name.bad())
        .max_by(|x, y| {
            x.version
                .cmp(&y.version)
                // systemd-boot orders equal versions by id, descending, and then the one with
                // more tries left first.
                .then(x.name.id.cmp(&y.name.id))
        })
        .map(|e| e.slot)
}

/// The slot an update goes to: the one that is not active (`b` on a fresh disk).
pub fn update_slot(entries: &[SlotEntry]) -> char {
    match active_slot(entries) {
        Some(s) => other(s),
        None => 'b',
    }
}

/// The sitelink entries among the file names of `loader/entries` (others are ignored).
pub fn slot_entries<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<SlotEntry> {
    let mut out: Vec<SlotEntry> = files
        .into_iter()
        .filter_map(|(file, text)| {
            let name = EntryName::parse(file)?;
            Some(SlotEntry {
                slot: name.slot()?,
                version: entry_version(text),
                name,
            })
        })
        .collect();
    out.sort_by_key(|e| e.slot);
    out
}

/// `sitelink.slot=` of the kernel command line.
pub fn cmdline_slot(cmdline: &str) -> Option<char> {
    let v = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("sitelink.slot="))?;
    let mut c = v.chars();
    match (c.next(), c.next()) {
        (Some(s), None) if SLOTS.contains(&s) => Some(s),
        _ => None,
    }
}

/// `sitelink.health_timeout=SECONDS` of the kernel command line, else the default.
pub fn cmdline_health_timeout(cmdline: &str) -> Duration {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("sitelink.health_timeout="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_HEALTH_TIMEOUT)
}

/// Healthy per the route installer's status file (`/run/sitelink/routed.toml`): at least one
/// tunnel whose probe is `up` and which is routable (its handshake is fresh). Returns that
/// tunnel's interface.
pub fn healthy_tunnel(status_toml: &str) -> Option<String> {
    let table: toml::Table = status_toml.parse().ok()?;
    table
        .get("tunnels")?
        .as_array()?
        .iter()
        .find(|t| {
            t.get("state").and_then(|s| s.as_str()) == Some("up")
                && t.get("routable").and_then(|r| r.as_bool()) == Some(true)
        })
        .and_then(|t| t.get("interface")?.as_str().map(str::to_owned))
}

// ---- device side ----------------------------------------------------------------------------

/// What the init knows about the slot it booted.
#[derive(Debug, Clone)]
pub struct Booted {
    pub slot: char,
    /// The booted entry as found on the ESP (after systemd-boot's rename for this try).
    pub entry: EntryName,
    /// The ESP's device.
    pub esp: PathBuf,
}

fn mount_vfat(dev: &Path, at: &str, read_only: bool) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    fs::create_dir_all(at).map_err(|e| format!("cannot create {at}: {e}"))?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(Some(dev), at, Some("vfat"), flags, None::<&str>).map_err(|e| {
        format!(
            "cannot mount {} (vfat) on {at}: {}",
            dev.display(),
            e.desc()
        )
    })
}

fn unmount(at: &str) {
    nix::unistd::sync();
    let _ = nix::mount::umount(at);
}

/// Run `f` with the vfat partition labelled `label` mounted at `at`; unmounted afterwards.
pub fn with_partition<T>(
    label: &str,
    at: &str,
    read_only: bool,
    f: impl FnOnce(&Path, &Path) -> Result<T, String>,
) -> Result<T, String> {
    let dev = crate::config::find_label(label)
        .ok_or_else(|| format!("no partition with the FAT label {label}"))?;
    mount_vfat(&dev, at, read_only)?;
    let r = f(&dev, Path::new(at));
    unmount(at);
    r
}

fn read_entries(esp: &Path) -> Result<Vec<SlotEntry>, String> {
    let dir = esp.join(ENTRIES_DIR);
    let rd = fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let files: Vec<(String, String)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            Some((name, text))
        })
        .collect();
    Ok(slot_entries(
        files.iter().map(|(n, t)| (n.as_str(), t.as_str())),
    ))
}

/// At boot: which slot was booted (`sitelink.slot=`) and the state of its entry. `Ok(None)`
/// when the kernel was not started from a sitelink disk (direct kernel boot). Also returns
/// notes for the console (another slot that failed its assessment).
pub fn at_boot(cmdline: &str) -> Result<Option<(Booted, Vec<String>)>, String> {
    let Some(slot) = cmdline_slot(cmdline) else {
        return Ok(None);
    };
    with_partition(ESP_LABEL, ESP_MOUNT, true, |dev, esp| {
        let entries = read_entries(esp)?;
        let entry = entries
            .iter()
            .find(|e| e.slot == slot)
            .map(|e| e.name.clone())
            .ok_or_else(|| {
                format!(
                    "booted slot {slot}, but {} has no entry for it in {ENTRIES_DIR}",
                    dev.display()
                )
            })?;
        let notes = entries
            .iter()
            .filter(|e| e.slot != slot && e.name.bad())
            .map(|e| {
                format!(
                    "slot {} failed its boot assessment ({}): rolled back to slot {slot}",
                    e.slot,
                    e.name.file_name()
                )
            })
            .collect();
        Ok((
            Booted {
                slot,
                entry,
                esp: dev.to_owned(),
            },
            notes,
        ))
    })
    .map(Some)
}

/// Mark the booted entry good: rename `sitelink-b+2-1.conf` to `sitelink-b.conf` on the ESP,
/// sync, unmount. Returns the new file name.
pub fn mark_good(booted: &Booted) -> Result<String, String> {
    mount_vfat(&booted.esp, ESP_MOUNT, false)?;
    let dir = Path::new(ESP_MOUNT).join(ENTRIES_DIR);
    let good = EntryName::good(booted.slot).file_name();
    let from = dir.join(booted.entry.file_name());
    let r = fs::rename(&from, dir.join(&good))
        .map_err(|e| format!("cannot rename {} to {good}: {e}", from.display()))
        .and_then(|()| {
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
        });
    unmount(ESP_MOUNT);
    r.map(|()| good)
}

/// Append a line to `boot.log` on the state partition (what the router keeps across boots).
pub fn record(line: &str) -> Result<(), String> {
    with_partition(STATE_LABEL, STATE_MOUNT, false, |_, at| {
        use std::io::Write;
        let path = at.join("boot.log");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        writeln!(f, "{line}")
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_split_like_systemd_boot() {
        let e = EntryName::parse("sitelink-b+2-1.conf").unwrap_or_else(|| EntryName::good('x'));
        assert_eq!(
            (e.id.as_str(), e.left, e.done),
            ("sitelink-b", Some(2), Some(1))
        );
        assert_eq!(e.file_name(), "sitelink-b+2-1.conf");
        assert_eq!(e.slot(), Some('b'));
        assert!(e.counting() && !e.bad());

        let e = EntryName::parse("sitelink-a+3.conf").unwrap_or_else(|| EntryName::good('x'));
        assert_eq!((e.left, e.done), (Some(3), None));
        assert_eq!(e.file_name(), "sitelink-a+3.conf");

        let e = EntryName::parse("sitelink-b+0-3.conf").unwrap_or_else(|| EntryName::good('x'));
        assert!(e.bad());

        let e = EntryName::parse("sitelink-a.conf").unwrap_or_else(|| EntryName::good('x'));
        assert_eq!((e.id.as_str(), e.left), ("sitelink-a", None));
        assert!(!e.counting());

        // Not counters: stay in the id.
        let e = EntryName::parse("foo+bar.conf").unwrap_or_else(|| EntryName::good('x'));
        assert_eq!((e.id.as_str(), e.left), ("foo+bar", None));
        let e = EntryName::parse("foo+1-.conf").unwrap_or_else(|| EntryName::good('x'));
        assert_eq!((e.id.as_str(), e.left), ("foo+1-", None));
        assert_eq!(e.slot(), None);
        assert_eq!(EntryName::parse("sitelink-a.txt"), None);
        assert_eq!(EntryName::parse(".conf"), None);
        assert_eq!(
            EntryName::parse("sitelink-ab.conf").and_then(|e| e.slot()),
            None
        );
    }

    fn entry(file: &str, version: u64) -> (String, String) {
        (file.to_owned(), entry_text('a', version, "x"))
    }

    fn entries(list: &[(String, String)]) -> Vec<SlotEntry> {
        slot_entries(list.iter().map(|(f, t)| (f.as_str(), t.as_str())))
    }

    #[test]
    fn active_and_update_slots() {
        // Fresh disk: only a.
        let fresh = entries(&[entry("sitelink-a.conf", 1)]);
        assert_eq!(active_slot(&fresh), Some('a'));
        assert_eq!(update_slot(&fresh), 'b');
        // b just installed: tried first.
        let trial = entries(&[entry("sitelink-a.conf", 1), entry("sitelink-b+3.conf", 2)]);
        assert_eq!(active_slot(&trial), Some('b'));
        // b out of tries: a again; the next update replaces b.
        let bad = entries(&[entry("sitelink-a.conf", 1), entry("sitelink-b+0-3.conf", 2)]);
        assert_eq!(active_slot(&bad), Some('a'));
        assert_eq!(update_slot(&bad), 'b');
        // b good: the next update goes to a.
        let good = entries(&[entry("sitelink-a.conf", 1), entry("sitelink-b.conf", 2)]);
        assert_eq!(update_slot(&good), 'a');
        // Other entries are ignored.
        let other = entries(&[entry("debian.conf", 9), entry("sitelink-a.conf", 1)]);
        assert_eq!(other.len(), 1);
        assert_eq!(update_slot(&[]), 'b');
    }

    #[test]
    fn entry_text_and_cmdline() {
        let t = entry_text('b', 7, &kernel_options('b', "quiet"));
        assert_eq!(entry_version(&t), 7);
        assert!(t.contains("linux /sitelink/b/vmlinuz\n"));
        assert!(t.contains(
            "options console=tty0 console=ttyS0,115200 panic=10 sitelink.slot=b quiet\n"
        ));
        let cmdline = "console=ttyS0 sitelink.slot=b sitelink.health_timeout=20";
        assert_eq!(cmdline_slot(cmdline), Some('b'));
        assert_eq!(cmdline_health_timeout(cmdline), Duration::from_secs(20));
        assert_eq!(cmdline_slot("sitelink.slot=c"), None);
        assert_eq!(cmdline_health_timeout("x"), DEFAULT_HEALTH_TIMEOUT);
    }

    #[test]
    fn health_needs_an_up_routable_tunnel() {
        let down = "site = \"aws\"\nupdated_unix = 1\nlast_apply = \"\"\n[[tunnels]]\ninterface = \"wg-gcp\"\nstate = \"down\"\nroutable = false\nreason = \"x\"\n";
        assert_eq!(healthy_tunnel(down), None);
        let up = format!(
            "{down}[[tunnels]]\ninterface = \"wg-azure\"\nstate = \"up\"\nroutable = true\nrtt_us = 900\nreason = \"probes answered\"\n"
        );
        assert_eq!(healthy_tunnel(&up).as_deref(), Some("wg-azure"));
        assert_eq!(healthy_tunnel("not toml ["), None);
    }
}
