//! The sitelink image builder (host only). One network file becomes a generic boot image (a
//! Debian kernel + a reproducible initramfs whose `/init` is the static `sitelink-router`) and one
//! small config disk per site.
//!
//! [`build`] is a pipeline of named, timed steps ([`pipeline::Pipeline`]):
//!
//! | step | does |
//! |---|---|
//! | check inputs | network file valid, keystore ready (created if absent), every site renders |
//! | fetch kernel package | `apt-get download` of the profile's kernel into the cache, or `--kernel-deb` |
//! | extract | `dpkg-deb -x` once per version; checks arch (amd64) and the bzImage header |
//! | resolve module closure | the profile's modules and their `depends=` (from `.modinfo`), built-ins left out; every missing module named |
//! | build device binary | `cargo build --release -p sitelink-router` static (`+crt-static`), checked for no ELF interpreter |
//! | assemble root | `/init`, `/etc/os-release`, `/dev/console`, modules + `load-order` |
//! | write initramfs | newc cpio, sorted, mtimes = `SOURCE_DATE_EPOCH`, gzip with a fixed header |
//! | write config disks | `sites/<site>.cidata.img` per site (vfat, label `CIDATA`) |
//! | write update disk | `update` only: `sitelink-update.img` (FAT, label `SL-UPDATE`: vmlinuz, initramfs.img) |
//! | fetch boot loader | disk formats only: `systemd-boot-efi` with `apt-get download`, cached like the kernel |
//! | write disks | `sitelink.raw` (no site config) and `sites/<site>.raw`: GPT, ESP with systemd-boot and slot A, config partition, state partition ([`disk`]) |
//! | convert disks | `qcow2`, `vhd` (Azure, fixed) with `qemu-img convert`; `gce` (`disk.raw` of 1 GiB in a tar.gz) with `tar` |
//! | report | sizes and sha256 of every output |
//!
//! External tools run only in [`tools`].
#![forbid(unsafe_code)]

pub mod bootloader;
pub mod cidata;
pub mod cpio;
pub mod debcache;
pub mod disk;
pub mod gpt;
pub mod kernel;
pub mod modules;
pub mod pipeline;
pub mod tools;

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sitelink_config::keys::Keystore;
use sitelink_config::network::{self, Network};
use sitelink_config::site;

use crate::cpio::{Archive, Entry};
use crate::pipeline::Pipeline;

/// Version written into `/etc/os-release`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which kernel and drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Debian's cloud kernel, virtio drivers: VMs (QEMU, clouds).
    Cloud,
    /// Debian's generic kernel plus NIC and disk drivers for small x86 routers.
    Metal,
}

impl FromStr for Profile {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cloud" => Ok(Profile::Cloud),
            "metal" => Ok(Profile::Metal),
            other => Err(ImageError::Usage(format!(
                "--profile {other:?}: valid profiles are cloud, metal"
            ))),
        }
    }
}

/// Modules the init loads (plus their dependencies), by profile.
pub fn profile_modules(profile: Profile) -> Vec<&'static str> {
    let mut m = vec![
        // Tunnel interfaces are TUN devices (the userspace data plane).
        "tun",
        // The config disk: vfat and the code pages it needs.
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "nls_utf8",
        "nls_iso8859-1",
        // The ACPI power button as an input device (KEY_POWER on /dev/input/event*).
        "button",
        "evdev",
        // Entropy from the host when the VM has a virtio-rng device: the kernel's random pool
        // is ready sooner, and the data plane's key setup waits for it.
        "virtio_rng",
    ];
    match profile {
        Profile::Cloud => m.extend([
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            // Clouds' disks and NICs: GCP (virtio-scsi, gVNIC), AWS (ENA; NVMe is built in),
            // Azure (Hyper-V storage and network).
            "virtio_scsi",
            "sd_mod",
            "gve",
            "ena",
            "hv_vmbus",
            "hv_storvsc",
            "hv_netvsc",
        ]),
        Profile::Metal => m.extend([
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "e1000",
            "e1000e",
            "igb",
            "igc",
            "r8169",
            "ixgbe",
            "ahci",
            "sd_mod",
            "nvme",
            "xhci_pci",
            "usb_storage",
        ]),
    }
    m
}

/// What the builder writes. `vmlinuz` + `initramfs.img` and the config disks are always
/// written; the others add disk images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// `vmlinuz` + `initramfs.img` for direct kernel boot.
    KernelInitrd,
    /// `sitelink.raw`, `sites/<site>.raw`: GPT, UEFI, systemd-boot, A/B slots.
    RawEfi,
    /// The raw disks as qcow2 (`.qcow2`).
    Qcow2,
    /// Azure: fixed VHD (`.vhd`).
    Vhd,
    /// Google Compute Engine: `disk.raw` (1 GiB) in `.gce.tar.gz`.
    Gce,
    /// `sitelink-update.img`: the release on a FAT disk (label `SL-UPDATE`) that a running
    /// router installs into its other slot.
    Update,
}

/// Every format name, for messages.
pub const FORMATS: &str = "kernel-initrd, raw-efi, qcow2, vhd, gce, update";

impl FromStr for Format {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kernel-initrd" => Ok(Format::KernelInitrd),
            "raw-efi" | "raw" => Ok(Format::RawEfi),
            "qcow2" => Ok(Format::Qcow2),
            "vhd" | "azure" => Ok(Format::Vhd),
            "gce" | "gcp" => Ok(Format::Gce),
            "update" => Ok(Format::Update),
            other => Err(ImageError::Usage(format!(
                "--format {other:?}: valid formats are {FORMATS} (a comma-separated list)"
            ))),
        }
    }
}

impl Format {
    /// Parse `raw-efi,qcow2`: a sorted list without duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<Format>, ImageError> {
        let mut v = s
            .split(',')
            .map(|f| f.trim().parse())
            .collect::<Result<Vec<Format>, _>>()?;
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Whether this format needs the raw disks.
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            Format::RawEfi | Format::Qcow2 | Format::Vhd | Format::Gce
        )
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Usage(String),
    #[error("{}", .0.join("\n"))]
    InvalidNetwork(Vec<String>),
    // The OS error is part of the message and not also a `source`: `{:#}` would print it twice.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("kernel: {why}")]
    Kernel { why: String },
    #[error("boot loader: {why}")]
    Loader { why: String },
    #[error("disk {}: {why}", path.display())]
    Disk { path: PathBuf, why: String },
    #[error("module {module} is neither built into the kernel nor in {}", dir.display())]
    MissingModule { module: String, dir: PathBuf },
    #[error("{}: {why}", path.display())]
    BadModule { path: PathBuf, why: String },
    #[error("device binary {}: {why}", path.display())]
    Binary { path: PathBuf, why: String },
    #[error(transparent)]
    Keys(#[from] sitelink_config::keys::KeystoreError),
    #[error(transparent)]
    Render(#[from] sitelink_config::site::RenderError),
    #[error("step {step:?}: {error}")]
    Step {
        step: &'static str,
        error: Box<ImageError>,
    },
}

impl ImageError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Io {
            op,
            path: path.to_owned(),
            error: source,
        }
    }
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub network: PathBuf,
    pub out: PathBuf,
    pub profile: Profile,
    /// What to write besides the kernel, initramfs and config disks.
    pub formats: Vec<Format>,
    /// A kernel `.deb` to use instead of downloading the profile's.
    pub kernel_deb: Option<PathBuf>,
    /// A `systemd-boot-efi` `.deb` to use instead of downloading it (disk formats).
    pub loader_deb: Option<PathBuf>,
    /// Keystore directory; default `OUT/keys` (created if absent).
    pub keys: Option<PathBuf>,
    /// Kernel package cache; default `$SITELINK_CACHE`, else `$XDG_CACHE_HOME/sitelink`, else
    /// `~/.cache/sitelink`.
    pub cache: Option<PathBuf>,
    /// A ready static `sitelink-router` to use instead of building one (env
    /// `SITELINK_ROUTER_BIN` does the same).
    pub router_binary: Option<PathBuf>,
    /// mtime of every initramfs entry; default `$SOURCE_DATE_EPOCH`, else 0.
    pub source_date_epoch: Option<u32>,
}

impl BuildOptions {
    /// Defaults for everything but the network file and output directory.
    pub fn new(network: impl Into<PathBuf>, out: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            network: network.into(),
            out: out.into(),
            profile: Profile::Cloud,
            formats: vec![Format::KernelInitrd],
            kernel_deb: None,
            loader_deb: None,
            keys: None,
            cache: None,
            router_binary: None,
            source_date_epoch: None,
        }
    }
}

/// One file the build wrote.
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub kernel_package: String,
    pub kernel_version: String,
    pub kernel_cached: bool,
    pub modules: Vec<String>,
    pub builtin: Vec<String>,
    pub outputs: Vec<Output>,
    pub timings: Vec<(&'static str, Duration)>,
}

impl BuildReport {
    pub fn total(&self) -> Duration {
        self.timings.iter().map(|(_, d)| *d).sum()
    }
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kernel {} {}{}; {} modules ({} wanted ones built in)",
            self.kernel_package,
            self.kernel_version,
            if self.kernel_cached { " (cached)" } else { "" },
            self.modules.len(),
            self.builtin.len()
        )?;
        let width = self
            .outputs
            .iter()
            .map(|o| o.path.display().to_string().len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(f, "{:<width$}  {:>10}  sha256", "file", "bytes")?;
        for o in &self.outputs {
            writeln!(
                f,
                "{:<width$}  {:>10}  {}",
                o.path.display().to_string(),
                o.size,
                o.sha256
            )?;
        }
        write!(f, "built in {:.1} s (", self.total().as_secs_f64())?;
        for (i, (name, d)) in self.timings.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {:.2} s", d.as_secs_f64())?;
        }
        writeln!(f, ")")
    }
}

fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("SITELINK_CACHE") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&d).join("sitelink");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/sitelink")
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_output(path: &Path, data: &[u8]) -> Result<Output, ImageError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(|e| ImageError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ImageError::io("rename into", path, e))?;
    Ok(Output {
        path: path.to_owned(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
    })
}

/// An output file already on disk: its size and sha256.
fn file_output(path: &Path) -> Result<Output, ImageError> {
    let mut f = fs::File::open(path).map_err(|e| ImageError::io("read", path, e))?;
    let mut h = Sha256::new();
    let size = std::io::copy(&mut f, &mut h).map_err(|e| ImageError::io("read", path, e))?;
    Ok(Output {
        path: path.to_owned(),
        size,
        sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn load_network(path: &Path) -> Result<Network, ImageError> {
    let text = fs::read_to_string(path).map_err(|e| ImageError::io("read", path, e))?;
    let parsed = network::parse(&text, &path.display().to_string());
    let errors: Vec<String> = parsed.errors().map(|d| d.to_string()).collect();
    parsed.network.ok_or(ImageError::InvalidNetwork(errors))
}

/// The workspace this builder was compiled from (where `sitelink-router` is built).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Build the static device binary (or take the given one) and check it is static x86-64.
pub fn device_binary(given: Option<&Path>) -> Result<Vec<u8>, ImageError> {
    let path = match given
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("SITELINK_ROUTER_BIN").map(PathBuf::from))
    {
        Some(p) => p,
        None => {
            let root = workspace_root();
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut c = tools::cmd(
                &cargo,
                [
                    "build",
                    "--release",
                    "-p",
                    "sitelink-router",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                ],
            );
            c.current_dir(&root)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_TARGET_DIR", &target_dir);
            // Variables cargo sets for the program that calls us (a test, an example) would
            // reach build scripts (ring's reruns on CARGO_MANIFEST_DIR) and rebuild everything.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                let per_crate = [
                    "CARGO_MANIFEST_",
                    "CARGO_PKG_",
                    "CARGO_BIN_",
                    "CARGO_CRATE_",
                ]
                .iter()
                .any(|p| k.starts_with(p));
                if per_crate
                    || k == "CARGO_PRIMARY_PACKAGE"
                    || k == "CARGO_TARGET_TMPDIR"
                    || k == "CARGO_RUSTC_CURRENT_DIR"
                    || k == "OUT_DIR"
                {
                    c.env_remove(k.as_ref());
                }
            }
            eprintln!(
                "    (in {}, RUSTFLAGS=\"-C target-feature=+crt-static\")",
                root.display()
            );
            tools::run_visible(c)?;
            target_dir.join("x86_64-unknown-linux-gnu/release/sitelink-router")
        }
    };
    let data = fs::read(&path).map_err(|e| ImageError::io("read", &path, e))?;
    match (modules::elf_machine(&data), modules::elf_has_interp(&data)) {
        (Some(modules::EM_X86_64), Some(false)) => Ok(data),
        (Some(modules::EM_X86_64), _) => Err(ImageError::Binary {
            path,
            why: "is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\""
                .into(),
        }),
        _ => Err(ImageError::Binary {
            path,
            why: "is not an x86-64 ELF executable".into(),
        }),
    }
}

/// `/etc/os-release` of the image.
pub fn os_release() -> String {
    format!(
        "NAME=sitelink\nID=sitelink\nVERSION_ID={VERSION}\nPRETTY_NAME=\"sitelink {VERSION}\"\nHOME_URL=\"https://github.com/sitelink\"\n"
    )
}

/// The config disk of one site: `site.toml` (the rendered config), `site.key` (its private key,
/// from `store`) and NoCloud `meta-data`, on a vfat image labelled `CIDATA`.
pub fn config_disk(net: &Network, name: &str, store: &Keystore) -> Result<Vec<u8>, ImageError> {
    let cfg = site::render(net, name, |n| store.public(n).map_err(|e| e.to_string()))?;
    let key = format!("{}\n", store.private(name)?.to_base64());
    let meta = format!(
        "instance-id: sitelink-{}-{name}\nlocal-hostname: {name}\n",
        net.name
    );
    cidata::disk(
        name,
        &[
            ("site.toml", cfg.to_toml().as_bytes()),
            ("site.key", key.as_bytes()),
            ("meta-data", meta.as_bytes()),
        ],
    )
    .map_err(|e| ImageError::io("build the config disk of site", Path::new(name), e))
}

/// Where the init finds modules and their load order in the initramfs.
pub const MODULE_DIR: &str = "lib/modules";
pub const LOAD_ORDER: &str = "lib/modules/load-order";

/// Build the image and config disks of a network. Writes `OUT/vmlinuz`, `OUT/initramfs.img`,
/// `OUT/sites/<site>.cidata.img`.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, ImageError> {
    let mut p = Pipeline::default();
    let cache = opts.cache.clone().unwrap_or_else(default_cache);
    let epoch = match opts.source_date_epoch {
        Some(e) => e,
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v.trim().parse().map_err(|_| {
                ImageError::Usage(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
                ))
            })?,
            Err(_) => 0,
        },
    };

    let (net, store) = p.step("check inputs", || {
        let net = load_network(&opts.network)?;
        let keys = opts.keys.clone().unwrap_or_else(|| opts.out.join("keys"));
        let store = Keystore::new(&keys);
        let names: Vec<&str> = net.sites.iter().map(|s| s.name.as_str()).collect();
        for (site, action) in store.init(&names, None)? {
            if action != sitelink_config::keys::KeyAction::Kept {
                eprintln!(
                    "    new key for site {site} in {}",
                    store.key_path(&site).display()
                );
            }
        }
        // Every site must render before any work starts.
        for s in &net.sites {
            site::render(&net, &s.name, |n| {
                store.public(n).map_err(|e| e.to_string())
            })?;
            store.private(&s.name)?;
        }
        Ok((net, store))
    })?;
    let kernel = p.step("fetch kernel package", || {
        kernel::fetch(opts.profile, opts.kernel_deb.as_deref(), &cache)
    })?;
    eprintln!(
        "    kernel {} {} (release {})",
        kernel.package, kernel.version, kernel.release
    );
    let closure = p.step("resolve module closure", || {
        let index = modules::ModuleIndex::load(&kernel.modules)?;
        let closure = index.closure(&profile_modules(opts.profile))?;
        let mods = closure
            .order
            .iter()
            .map(|m| {
                let path = &index.files[m];
                let data = modules::read_module(path)?;
                if modules::elf_machine(&data) != Some(modules::EM_X86_64) {
                    return Err(ImageError::BadModule {
                        path: path.clone(),
                        why: "is not an x86-64 kernel module".into(),
                    });
                }
                // Its dependencies that are modules here (not built in), for the load order.
                let deps: Vec<String> = index
                    .depends(m)?
                    .into_iter()
                    .filter(|d| closure.order.contains(d))
                    .collect();
                Ok((m.clone(), data, deps))
            })
            .collect::<Result<Vec<_>, _>>()?;
        eprintln!("    load order: {}", closure.order.join(" "));
        if !closure.builtin.is_empty() {
            eprintln!("    built in: {}", closure.builtin.join(" "));
        }
        Ok((closure, mods))
    })?;
    let binary = p.step("build device binary", || {
        device_binary(opts.router_binary.as_deref())
    })?;
    let root = p.step("assemble root", || {
        let mut a = Archive::new();
        a.add(
            "init",
            Entry::File {
                mode: 0o755,
                data: binary,
            },
        );
        a.add(
            "etc/os-release",
            Entry::File {
                mode: 0o644,
                data: os_release().into_bytes(),
            },
        );
        a.add(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        a.add(
            "dev/null",
            Entry::CharDev {
                mode: 0o666,
                major: 1,
                minor: 3,
            },
        );
        for d in ["proc", "sys", "run", "tmp", "mnt"] {
            a.add(d, Entry::Dir { mode: 0o755 });
        }
        a.add(
            "var/run",
            Entry::Symlink {
                target: "../run".into(),
            },
        );
        let mut order = String::new();
        for (name, data, deps) in &closure.1 {
            a.add(
                &format!("{MODULE_DIR}/{name}.ko"),
                Entry::File {
                    mode: 0o644,
                    data: data.clone(),
                },
            );
            // `name dep dep...`: the init skips a module whose dependency did not load.
            order.push_str(name);
            for d in deps {
                order.push(' ');
                order.push_str(d);
            }
            order.push('\n');
        }
        a.add(
            LOAD_ORDER,
            Entry::File {
                mode: 0o644,
                data: order.into_bytes(),
            },
        );
        a.add(
            "lib/modules/release",
            Entry::File {
                mode: 0o644,
                data: format!("{}\n", kernel.release).into_bytes(),
            },
        );
        Ok(a)
    })?;
    let mut outputs = Vec::new();
    let (vmlinuz, initramfs) = p.step("write initramfs", || {
        let mut cpio = Vec::new();
        root.write(&mut cpio, epoch)
            .map_err(|e| ImageError::io("write cpio for", &opts.out, e))?;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&cpio)
            .and_then(|()| gz.try_finish())
            .map_err(|e| ImageError::io("compress", &opts.out, e))?;
        let gz = gz
            .finish()
            .map_err(|e| ImageError::io("compress", &opts.out, e))?;
        let vmlinuz =
            fs::read(&kernel.vmlinuz).map_err(|e| ImageError::io("read", &kernel.vmlinuz, e))?;
        outputs.push(write_output(&opts.out.join("vmlinuz"), &vmlinuz)?);
        outputs.push(write_output(&opts.out.join("initramfs.img"), &gz)?);
        Ok((vmlinuz, gz))
    })?;
    let configs = p.step("write config disks", || {
        let mut configs = Vec::new();
        for s in &net.sites {
            let img = config_disk(&net, &s.name, &store)?;
            outputs.push(write_output(
                &opts
                    .out
                    .join("sites")
                    .join(format!("{}.cidata.img", s.name)),
                &img,
            )?);
            configs.push((s.name.clone(), img));
        }
        Ok(configs)
    })?;
    if opts.formats.contains(&Format::Update) {
        p.step("write update disk", || {
            let img = disk::update_disk(disk::SlotFiles {
                vmlinuz: &vmlinuz,
                initramfs: &initramfs,
            })
            .map_err(|e| ImageError::io("build the update disk in", &opts.out, e))?;
            outputs.push(write_output(&opts.out.join("sitelink-update.img"), &img)?);
            Ok(())
        })?;
    }
    if opts.formats.iter().any(|f| f.is_disk()) {
        let loader = p.step("fetch boot loader", || {
            bootloader::fetch(opts.loader_deb.as_deref(), &cache)
        })?;
        eprintln!(
            "    systemd-boot {} ({})",
            loader.version,
            loader.efi.display()
        );
        let raws = p.step("write disks", || {
            write_disks(opts, &loader, &vmlinuz, &initramfs, &configs, &mut outputs)
        })?;
        p.step("convert disks", || convert_disks(opts, &raws, &mut outputs))?;
    }
    Ok(BuildReport {
        kernel_package: kernel.package,
        kernel_version: kernel.version,
        kernel_cached: kernel.cached,
        modules: closure.0.order,
        builtin: closure.0.builtin,
        outputs,
        timings: p.timings,
    })
}

/// The raw disks: `OUT/sitelink.raw` (config partition with only a README) and
/// `OUT/sites/<site>.raw`. Returns (name, raw path, config partition) of each.
fn write_disks(
    opts: &BuildOptions,
    loader: &bootloader::Loader,
    vmlinuz: &[u8],
    initramfs: &[u8],
    configs: &[(String, Vec<u8>)],
    outputs: &mut Vec<Output>,
) -> Result<Vec<(PathBuf, Vec<u8>)>, ImageError> {
    let efi = fs::read(&loader.efi).map_err(|e| ImageError::io("read", &loader.efi, e))?;
    let esp_err = |e| ImageError::io("build the EFI system partition for", &opts.out, e);
    let esp = disk::esp(&efi, disk::SlotFiles { vmlinuz, initramfs }).map_err(esp_err)?;
    let state = disk::state().map_err(esp_err)?;
    let generic = disk::empty_config().map_err(esp_err)?;
    let mut disks = vec![(opts.out.join("sitelink.raw"), generic)];
    for (site, cfg) in configs {
        disks.push((
            opts.out.join("sites").join(format!("{site}.raw")),
            cfg.clone(),
        ));
    }
    for (path, cfg) in &disks {
        disk::write(path, disk::DISK_SIZE, &esp, cfg, &state)?;
        if opts.formats.contains(&Format::RawEfi) {
            outputs.push(file_output(path)?);
        }
    }
    if opts.formats.contains(&Format::Gce) {
        for (path, cfg) in &disks {
            let tar = path.with_extension("gce.tar.gz");
            gce_tarball(&tar, &esp, cfg, &state)?;
            outputs.push(file_output(&tar)?);
        }
    }
    Ok(disks)
}

/// qcow2 and VHD from the raw disks (`qemu-img convert`); raw disks not asked for are removed.
fn convert_disks(
    opts: &BuildOptions,
    disks: &[(PathBuf, Vec<u8>)],
    outputs: &mut Vec<Output>,
) -> Result<(), ImageError> {
    // (format asked for, file extension, qemu-img's output format and options)
    let conversions: [(Format, &str, &[&str]); 2] = [
        (Format::Qcow2, "qcow2", &["-O", "qcow2"]),
        // Azure wants a fixed VHD whose size is exactly the disk's (force_size).
        (
            Format::Vhd,
            "vhd",
            &["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
        ),
    ];
    for (raw, _) in disks {
        for (format, ext, args) in conversions {
            if !opts.formats.contains(&format) {
                continue;
            }
            let out = raw.with_extension(ext);
            let _ = fs::remove_file(&out);
            let mut c = tools::cmd("qemu-img", ["convert", "-f", "raw"]);
            c.args(args).arg(raw).arg(&out);
            tools::run(c, None)?;
            outputs.push(file_output(&out)?);
        }
        if !opts.formats.contains(&Format::RawEfi) {
            let _ = fs::remove_file(raw);
        }
    }
    Ok(())
}

/// GCE's image format: a gzipped tar holding one sparse file `disk.raw` whose size is a whole
/// number of GiB. The tar is made by GNU tar (sparse support) with fixed owner and mtime and
/// gzipped here with a fixed header, so it is reproducible.
fn gce_tarball(path: &Path, esp: &[u8], cfg: &[u8], state: &[u8]) -> Result<(), ImageError> {
    let dir = path.with_extension("d");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
    let raw = dir.join("disk.raw");
    disk::write(&raw, disk::GCE_DISK_SIZE, esp, cfg, state)?;
    let tar = dir.join("disk.tar");
    let mut c = tools::cmd(
        "tar",
        [
            "--format=gnu",
            "--sparse",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mode=0644",
            "-cf",
            "disk.tar",
            "disk.raw",
        ],
    );
    c.env("LC_ALL", "C");
    tools::run(c, Some(&dir))?;
    let mut input = fs::File::open(&tar).map_err(|e| ImageError::io("read", &tar, e))?;
    let tmp = path.with_extension("tmp");
    let file = fs::File::create(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::default());
    std::io::copy(&mut input, &mut gz).map_err(|e| ImageError::io("compress into", &tmp, e))?;
    gz.finish()
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io("compress into", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ImageError::io("rename into", path, e))?;
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
