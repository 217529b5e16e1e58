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
/// The FAT label of an update disk (`sitelink build --format update`): a USB stick or an extra
/// cloud disk holding `vmlinuz` and `initramfs.img` of a new release.
pub const UPDATE_LABEL: &str = "SL-UPDATE";
/// Where an update disk is mounted (read-only) while it is read.
pub const UPDATE_MOUNT: &str = "/run/sitelink-update";
/// Tries a slot installed from an update disk gets.
pub const UPDATE_TRIES: u32 = 3;
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

/// The newest slot whose entry is good (no boot counter left: it passed its assessment, or
/// was built that way): what an update must keep as the fallback.
pub fn good_slot(entries: &[SlotEntry]) -> Option<char> {
    entries
        .iter()
        .filter(|e| !e.name.counting())
        .max_by(|x, y| x.version.cmp(&y.version).then(x.name.id.cmp(&y.name.id)))
        .map(|e| e.slot)
}

/// The slot an update goes to: the one that is not the good slot, so a second update before
/// the first was booted replaces the first (still on trial), never the fallback. Without a
/// good slot, the one that is not active (`b` on an empty ESP).
pub fn update_slot(entries: &[SlotEntry]) -> char {
    match good_slot(entries).or_else(|| active_slot(entries)) {
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

/// The longest `sitelink.health_timeout=` taken: a day.
pub const MAX_HEALTH_TIMEOUT: u64 = 86_400;

/// `sitelink.health_timeout=SECONDS` of the kernel command line (1 to [`MAX_HEALTH_TIMEOUT`]),
/// else the default. A value out of range is an error that says what is valid.
pub fn cmdline_health_timeout(cmdline: &str) -> Result<Duration, String> {
    let Some(v) = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("sitelink.health_timeout="))
    else {
        return Ok(DEFAULT_HEALTH_TIMEOUT);
    };
    match v.parse::<u64>() {
        Ok(s) if (1..=MAX_HEALTH_TIMEOUT).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "sitelink.health_timeout={v} is not valid: whole seconds from 1 to {MAX_HEALTH_TIMEOUT}"
        )),
    }
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

/// Every file in the ESP's entry directory with its text. An entry that cannot be read is an
/// error, not an empty entry: its version would count as 0 and an update could be given a
/// version that does not sort first.
fn read_entry_files(esp: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = esp.join(ENTRIES_DIR);
    let rd = fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue; // not a name systemd-boot or we would write
        };
        let text = fs::read_to_string(e.path())
            .map_err(|err| format!("cannot read {}: {err}", e.path().display()))?;
        files.push((name, text));
    }
    Ok(files)
}

fn read_entries(esp: &Path) -> Result<Vec<SlotEntry>, String> {
    let files = read_entry_files(esp)?;
    Ok(slot_entries(
        files.iter().map(|(n, t)| (n.as_str(), t.as_str())),
    ))
}

/// What an entry of `slot` adds to [`kernel_options`] (e.g. `sitelink.health_timeout=60` given
/// to `sitelink image update --append`), so an update keeps it; empty if the entry has none.
pub fn entry_extra_options(text: &str, slot: char) -> String {
    let base = kernel_options(slot, "");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("options"))
        .and_then(|o| o.trim().strip_prefix(base.as_str()))
        .unwrap_or_default()
        .trim()
        .to_owned()
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

/// What [`install_update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Installed into `slot` with entry `entry`: reboot to try it.
    Installed { slot: char, entry: String },
    /// Nothing to do (the reason, for the console).
    Skipped(String),
}

/// Install the release on an update disk (`dev`, label [`UPDATE_LABEL`]) into the slot that is
/// not running, with [`UPDATE_TRIES`] tries, unless the running slot already holds it or the
/// other slot holds it and failed its boot assessment. Only call this from a good slot (the
/// other slot is the fallback while a slot is on trial).
/// An x86 Linux kernel image: the boot protocol's `HdrS` magic at 0x202 (bzImage).
pub fn is_bzimage(data: &[u8]) -> bool {
    data.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

/// A release is an x86 Linux kernel and a non-empty initramfs: what both the update disk and
/// `sitelink image update` check before writing a slot.
pub fn check_release(vmlinuz: &[u8], initramfs: &[u8]) -> Result<(), String> {
    if !is_bzimage(vmlinuz) {
        return Err(format!(
            "vmlinuz ({} bytes) is not a Linux kernel (no x86 bzImage header)",
            vmlinuz.len()
        ));
    }
    if initramfs.is_empty() {
        return Err("initramfs.img is empty".into());
    }
    Ok(())
}

pub fn install_update(dev: &Path, booted: &Booted) -> Result<UpdateOutcome, String> {
    mount_vfat(dev, UPDATE_MOUNT, true)?;
    let read = |name: &str| {
        let p = Path::new(UPDATE_MOUNT).join(name);
        fs::read(&p).map_err(|e| format!("update disk {}: cannot read {name}: {e}", dev.display()))
    };
    let files = read("vmlinuz").and_then(|k| Ok((k, read("initramfs.img")?)));
    unmount(UPDATE_MOUNT);
    let (vmlinuz, initramfs) = files?;
    check_release(&vmlinuz, &initramfs)
        .map_err(|e| format!("update disk {}: {e}", dev.display()))?;
    mount_vfat(&booted.esp, ESP_MOUNT, false)?;
    let r = install_into_esp(Path::new(ESP_MOUNT), booted.slot, &vmlinuz, &initramfs);
    unmount(ESP_MOUNT);
    r
}

fn install_into_esp(
    esp: &Path,
    running: char,
    vmlinuz: &[u8],
    initramfs: &[u8],
) -> Result<UpdateOutcome, String> {
    let holds = |slot: char| {
        let dir = esp.join(slot_dir(slot));
        fs::read(dir.join("vmlinuz")).is_ok_and(|k| k == vmlinuz)
            && fs::read(dir.join("initramfs.img")).is_ok_and(|i| i == initramfs)
    };
    if holds(running) {
        return Ok(UpdateOutcome::Skipped(format!(
            "the update disk holds the release slot {running} runs; nothing to install"
        )));
    }
    let files = read_entry_files(esp)?;
    let entries = slot_entries(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    let target = other(running);
    // The new slot boots with what the running slot's entry adds to the kernel command line.
    let extra = files
        .iter()
        .find(|(n, _)| EntryName::parse(n).and_then(|e| e.slot()) == Some(running))
        .map(|(_, t)| entry_extra_options(t, running))
        .unwrap_or_default();
    let bad = entries.iter().any(|e| e.slot == target && e.name.bad());
    if bad && holds(target) {
        return Ok(UpdateOutcome::Skipped(format!(
            "the update disk holds the release that failed its boot assessment in slot {target}; not installed again"
        )));
    }
    let dir = esp.join(ENTRIES_DIR);
    let io =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    for e in entries.iter().filter(|e| e.slot == target) {
        let p = dir.join(e.name.file_name());
        fs::remove_file(&p).map_err(|e| io("remove", &p, e))?;
    }
    let sd = esp.join(slot_dir(target));
    fs::create_dir_all(&sd).map_err(|e| io("create", &sd, e))?;
    for (name, data) in [("vmlinuz", vmlinuz), ("initramfs.img", initramfs)] {
        let p = sd.join(name);
        fs::File::create(&p)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, data)?;
                f.sync_all()
            })
            .map_err(|e| io("write", &p, e))?;
    }
    let version = entries.iter().map(|e| e.version).max().unwrap_or(0) + 1;
    let entry = EntryName::trial(target, UPDATE_TRIES).file_name();
    let p = dir.join(&entry);
    fs::File::create(&p)
        .and_then(|mut f| {
            let text = entry_text(target, version, &kernel_options(target, &extra));
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| io("write", &p, e))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", &dir, e))?;
    Ok(UpdateOutcome::Installed {
        slot: target,
        entry,
    })
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
        // b on trial, not booted yet: a second update replaces b again, never the good a.
        assert_eq!(good_slot(&trial), Some('a'));
        assert_eq!(update_slot(&trial), 'b');
        let tried = entries(&[entry("sitelink-a.conf", 1), entry("sitelink-b+1-2.conf", 2)]);
        assert_eq!(update_slot(&tried), 'b');
        // Both good: the older one goes.
        let both = entries(&[entry("sitelink-a.conf", 3), entry("sitelink-b.conf", 2)]);
        assert_eq!(update_slot(&both), 'b');
        // No good slot (a on trial, b bad): the one not booted next.
        let none = entries(&[
            entry("sitelink-a+1.conf", 3),
            entry("sitelink-b+0-3.conf", 2),
        ]);
        assert_eq!(good_slot(&none), None);
        assert_eq!(update_slot(&none), 'b');
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
        assert_eq!(cmdline_health_timeout(cmdline), Ok(Duration::from_secs(20)));
        assert_eq!(cmdline_slot("sitelink.slot=c"), None);
        assert_eq!(cmdline_health_timeout("x"), Ok(DEFAULT_HEALTH_TIMEOUT));
        // Out of range or not a number: an error naming the value and the range, never a
        // deadline that overflows in PID 1.
        for bad in ["0", "86401", "18446744073709551615", "5m", ""] {
            let e =
                cmdline_health_timeout(&format!("sitelink.health_timeout={bad}")).expect_err(bad);
            assert!(
                e.contains(&format!("={bad} ")) && e.contains("1 to 86400"),
                "{e}"
            );
        }
        // What `image update --append` added is what an update disk's release keeps.
        let t = entry_text(
            'a',
            3,
            &kernel_options('a', "sitelink.health_timeout=60 quiet"),
        );
        assert_eq!(
            entry_extra_options(&t, 'a'),
            "sitelink.health_timeout=60 quiet"
        );
        assert_eq!(
            entry_extra_options(&entry_text('a', 1, &kernel_options('a', "")), 'a'),
            ""
        );
    }

    #[test]
    fn update_disk_installs_once_into_the_other_slot() {
        let esp = std::env::temp_dir().join(format!("sitelink-esp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&esp);
        let put = |p: &str, d: &[u8]| {
            let p = esp.join(p);
            let _ = fs::create_dir_all(p.parent().unwrap_or(Path::new("/")));
            let _ = fs::write(p, d);
        };
        put("sitelink/a/vmlinuz", b"k1");
        put("sitelink/a/initramfs.img", b"i1");
        put(
            "loader/entries/sitelink-a.conf",
            entry_text('a', 1, &kernel_options('a', "sitelink.health_timeout=60")).as_bytes(),
        );
        // The running release: nothing to do.
        let r = install_into_esp(&esp, 'a', b"k1", b"i1");
        assert!(matches!(r, Ok(UpdateOutcome::Skipped(_))), "{r:?}");
        // A new one goes to b on trial, with a higher version.
        let r = install_into_esp(&esp, 'a', b"k2", b"i2");
        assert_eq!(
            r,
            Ok(UpdateOutcome::Installed {
                slot: 'b',
                entry: "sitelink-b+3.conf".into()
            })
        );
        let text =
            fs::read_to_string(esp.join("loader/entries/sitelink-b+3.conf")).unwrap_or_default();
        assert_eq!(entry_version(&text), 2);
        assert_eq!(
            entry_extra_options(&text, 'b'),
            "sitelink.health_timeout=60",
            "the running slot's extra kernel options carry over: {text}"
        );
        assert_eq!(
            fs::read(esp.join("sitelink/b/vmlinuz")).unwrap_or_default(),
            b"k2"
        );
        // It failed its tries: the same release is not installed again.
        let _ = fs::rename(
            esp.join("loader/entries/sitelink-b+3.conf"),
            esp.join("loader/entries/sitelink-b+0-3.conf"),
        );
        let r = install_into_esp(&esp, 'a', b"k2", b"i2");
        assert!(
            matches!(&r, Ok(UpdateOutcome::Skipped(w)) if w.contains("failed")),
            "{r:?}"
        );
        // A newer one replaces it.
        let r = install_into_esp(&esp, 'a', b"k3", b"i3");
        assert!(
            matches!(r, Ok(UpdateOutcome::Installed { slot: 'b', .. })),
            "{r:?}"
        );
        let names: Vec<String> = fs::read_dir(esp.join("loader/entries"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names.len(), 2, "{names:?}");
        // An entry that cannot be read stops the install instead of counting as version 0.
        let _ = fs::create_dir_all(esp.join("loader/entries/sitelink-b+1.conf"));
        let r = install_into_esp(&esp, 'a', b"k4", b"i4");
        assert!(
            matches!(&r, Err(e) if e.contains("sitelink-b+1.conf")),
            "{r:?}"
        );
        let _ = fs::remove_dir_all(&esp);
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
