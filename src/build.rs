//! `sitelink build NETWORK.toml --out DIR [--profile cloud|metal] [--format LIST]
//! [--kernel-deb PATH] [--keys DIR]`: the generic boot image (`DIR/vmlinuz`,
//! `DIR/initramfs.img`), one config disk per site (`DIR/sites/<site>.cidata.img`) and, with
//! `--format raw-efi,qcow2,vhd,gce`, bootable disks (`DIR/sitelink.raw`,
//! `DIR/sites/<site>.raw`, ...). Progress (each pipeline step, every external command) goes to
//! stderr; the table of outputs with sizes and sha256 to stdout. The work is
//! `sitelink_image::build`.
//!
//! `sitelink image update DISK --from DIR` and `sitelink image slots DISK`: A/B updates of a
//! disk image or a router's disk (`sitelink_image::disk`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

/// Run the image build and print its report.
pub fn build(
    network: &Path,
    out: &Path,
    profile: &str,
    format: &str,
    kernel_deb: Option<&Path>,
    keys: Option<&Path>,
) -> anyhow::Result<()> {
    let mut opts = sitelink_image::BuildOptions::new(network, out);
    opts.profile = profile.parse()?;
    opts.formats = sitelink_image::Format::parse_list(format)?;
    opts.kernel_deb = kernel_deb.map(Path::to_owned);
    opts.keys = keys.map(Path::to_owned);
    let report = sitelink_image::build(&opts)
        .with_context(|| format!("sitelink build {}", network.display()))?;
    out!("{report}");
    Ok(())
}

/// `sitelink image ...`: work on a built disk (an image file or a router's disk device).
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Install DIR/vmlinuz + DIR/initramfs.img (a newer `sitelink build`) into the slot of DISK
    /// that is not the good one, with a tries counter: systemd-boot tries it first and falls back to
    /// the other slot unless the router marks it good (healthy: a tunnel with a handshake and
    /// answered probes).
    Update {
        /// A raw disk image (`sites/<site>.raw`) or a block device (`/dev/sdX`).
        disk: PathBuf,
        /// The build output directory holding vmlinuz and initramfs.img.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Boot attempts (1 to 10) before systemd-boot gives up on the new slot.
        #[arg(long, default_value_t = sitelink_image::disk::DEFAULT_TRIES)]
        tries: u32,
        /// Extra kernel command line arguments for the new slot (e.g.
        /// `sitelink.health_timeout=120`).
        #[arg(long, default_value = "")]
        append: String,
    },
    /// Show DISK's boot entries: slot, version, state (good, on trial with N tries left, bad).
    Slots { disk: PathBuf },
}

/// Run an `image` subcommand.
pub fn image(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Update {
            disk,
            from,
            tries,
            append,
        } => {
            sitelink_image::disk::check_update(tries, &append)?;
            let read = |name: &str| {
                let p = from.join(name);
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
            };
            let vmlinuz = read("vmlinuz")?;
            let initramfs = read("initramfs.img")?;
            let files = sitelink_image::disk::SlotFiles {
                vmlinuz: &vmlinuz,
                initramfs: &initramfs,
            };
            if let Some(slot) = sitelink_image::disk::good_slot_holding(&disk, files)? {
                outln!(
                    "{}: its good slot {slot} already holds the release in {}; nothing installed",
                    disk.display(),
                    from.display()
                );
                return Ok(());
            }
            let u = sitelink_image::disk::update(&disk, files, tries, &append)?;
            outln!(
                "{}: slot {} now holds {} (version {}, entry {}: {tries} {}, then back to slot {})",
                disk.display(),
                u.slot,
                from.display(),
                u.version,
                u.entry,
                if tries == 1 { "try" } else { "tries" },
                sitelink_image::disk::other(u.slot)
            );
            Ok(())
        }
        ImageCommand::Slots { disk } => {
            let entries = sitelink_image::disk::entries(&disk)?;
            let active = sitelink_image::disk::active_slot(&entries);
            outln!("slot  version  state                 entry");
            for e in &entries {
                let state = match (e.name.left, e.name.done) {
                    (None, _) => "good".to_owned(),
                    (Some(0), _) => "bad (no tries left)".to_owned(),
                    (Some(l), d) => format!("trial, {l} left/{} done", d.unwrap_or(0)),
                };
                let mark = if Some(e.slot) == active { "*" } else { " " };
                outln!(
                    "{}{mark}    {:>7}  {state:<20}  {}",
                    e.slot,
                    e.version,
                    e.name.file_name()
                );
            }
            outln!("(* = booted next)");
            Ok(())
        }
    }
}
