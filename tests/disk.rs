//! VM tier, disk images: build the seed mesh's raw and qcow2 disks and boot them under QEMU with
//! OVMF (UEFI firmware) and systemd-boot, as clouds and routers do. Covers the A/B slots with
//! boot counting (a broken update rolls back, a good one is marked good, a slot that never
//! becomes healthy is rebooted until its tries run out), the config partition and reproducible
//! builds.
//!
//! Needs root, qemu-system-x86, qemu-utils and ovmf; run with
//! `cargo test --test disk -- --ignored vm_ --test-threads=1`. Tests fail (never skip) when
//! something is missing. The tunnel peer of the rollback test is the gcp site run by
//! `sitelink-router site` in a network namespace the test creates, wired to the VM by a TAP in
//! that namespace (QEMU runs there too): nothing touches the host's network configuration, and
//! the namespace, its processes and QEMU go away on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sitelink_image::disk;
use sitelink_testinfra::Netns;

#[path = "common/vm.rs"]
mod common;
use common::{
    copy_for, require_root_and_tools, tmp, vm_lock, Boot, Spec, Vm, NETWORK, OVMF_CODE, OVMF_VARS,
};

/// OVMF + systemd-boot + kernel + init under TCG: about 10 s here; generous for a loaded host.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn require_vm_tier() {
    require_root_and_tools(
        "the disk tests need",
        &[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
        ],
    );
    assert!(
        Path::new(OVMF_CODE).exists() && Path::new(OVMF_VARS).exists(),
        "the disk tests need UEFI firmware: apt-get install --no-install-recommends ovmf"
    );
}

fn keys() -> PathBuf {
    tmp().join("disk-keys")
}

/// Build the seed mesh with raw and qcow2 disks into `tmp()/dir`.
fn build(dir: &str) -> PathBuf {
    common::build_image(dir, &keys(), |opts| {
        opts.formats = sitelink_image::Format::parse_list("raw-efi,qcow2").unwrap();
        opts.router_binary = Some(router_binary().to_owned());
    })
}

/// The static device binary (built once), also the tunnel peer's router.
fn router_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let data = sitelink_image::device_binary(None).unwrap_or_else(|e| panic!("{e}"));
        let path = tmp().join("disk-sitelink-router");
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    })
}

fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build("disk-image"))
}

/// A private copy of a built disk (each test changes its disk).
fn disk_copy(file: &str, test: &str) -> PathBuf {
    copy_for(&image().join(file), test)
}

/// UEFI boots of a disk (as the Done-when command: OVMF code read-only, a private copy
/// of the variable store).
impl Vm {
    /// Boot `disk` (`format` raw or qcow2). `netns`: run QEMU in that namespace with one
    /// virtio NIC on the TAP `tap` there (the router's WAN); else no NIC.
    fn boot(disk: &Path, format: &str, name: &str, net: Option<(&Netns, &str)>) -> Vm {
        Vm::boot_with(disk, format, name, net, &[])
    }

    /// [`Vm::boot`] with more raw disks after the boot disk (`/dev/vdb`, ...).
    fn boot_with(
        disk: &Path,
        format: &str,
        name: &str,
        net: Option<(&Netns, &str)>,
        extra: &[&Path],
    ) -> Vm {
        let nic = net.map(|(_, tap)| {
            format!("tap,ifname={tap},script=no,downscript=no,model=virtio-net-pci")
        });
        let nics: Vec<&str> = nic.as_deref().into_iter().collect();
        // TCG: on these machines KVM guests die early (see tests/vm.rs); UEFI under KVM would
        // need the same probe, and the figures in docs/PERFORMANCE.md are TCG's.
        Vm::launch(Spec {
            disks: extra,
            nics: &nics,
            netns: net.map(|(ns, _)| ns.name()),
            ..Spec::new(name, "tcg", Boot::Uefi { disk, format })
        })
    }
}

/// The tunnel peer: the gcp site (`sitelink-router site`) in a namespace of its own, its WAN
/// address on the TAP the aws VM's NIC is attached to. Everything is inside the namespace, which
/// is deleted (with the router) on drop.
struct Peer {
    ns: Netns,
    tap: String,
    router: Option<sitelink_testinfra::ChildGuard>,
}

const PRIVATE_RUN: &str = "mkdir -p /run/wireguard /run/sitelink && mount -t tmpfs -o mode=0755 sitelink /run/wireguard && mount -t tmpfs -o mode=0755 sitelink /run/sitelink && exec \"$0\" \"$@\" >\"$LOG\" 2>&1";

impl Peer {
    fn start() -> Peer {
        let ns = Netns::new("sldk").expect("create the peer's namespace");
        let tap = "wan0".to_owned();
        ns.run("ip", ["tuntap", "add", "dev", &tap, "mode", "tap"])
            .expect("create the TAP");
        // gcp's WAN address; aws (198.51.100.1) is on the same link.
        ns.addr_up(&tap, "198.51.100.2/24")
            .expect("address the TAP");
        let mut p = Peer {
            ns,
            tap,
            router: None,
        };
        p.start_router();
        p
    }

    fn start_router(&mut self) {
        let dir = tmp().join("disk-peer-gcp");
        fs::create_dir_all(&dir).unwrap();
        let (toml, key) = site_files("gcp");
        fs::write(dir.join("site.toml"), toml).unwrap();
        let _ = fs::remove_file(dir.join("site.key"));
        sitelink_config::keys::write_secret(&dir.join("site.key"), &key).unwrap();
        let bin = router_binary().display().to_string();
        let config = dir.join("site.toml").display().to_string();
        let mut cmd = self
            .ns
            .command("sh", ["-c", PRIVATE_RUN, &bin, "site", &config]);
        cmd.env("LOG", dir.join("router.log"));
        let router = sitelink_testinfra::ChildGuard::spawn(cmd).expect("start the gcp router");
        self.router = Some(router);
    }

    fn stop_router(&mut self) {
        if let Some(r) = self.router.take() {
            let _ = r.finish(true);
        }
    }

    fn net(&self) -> (&Netns, &str) {
        (&self.ns, &self.tap)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop_router();
        // The Netns guard kills what is left in the namespace and deletes it (and the TAP).
    }
}

/// A site's rendered config and its key file's contents (the build's keystore).
fn site_files(site: &str) -> (String, String) {
    image();
    let text = fs::read_to_string(NETWORK).unwrap();
    let net = sitelink_config::network::parse(&text, NETWORK)
        .network
        .expect("the seed mesh is valid");
    let store = sitelink_config::keys::Keystore::new(keys());
    let cfg =
        sitelink_config::site::render(&net, site, |n| store.public(n).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("render {site}: {e}"));
    let key = format!("{}\n", store.private(site).unwrap().to_base64());
    (cfg.to_toml(), key)
}

fn slots_of(disk: &Path) -> Vec<String> {
    disk::entries(disk)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|e| e.name.file_name())
        .collect()
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_qcow2_boots_under_uefi() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("sites/aws.qcow2", "qcow2");
    let vm = Vm::boot(&disk, "qcow2", "qcow2", None);
    let took = vm.expect("sitelink: ready site=aws", READY_TIMEOUT);
    eprintln!(
        "vm disk: QEMU start to `sitelink: ready site=aws` from sites/aws.qcow2 (OVMF, TCG) in {:.2} s",
        took.as_secs_f64()
    );
    let console = vm.stop();
    assert!(console.contains("sitelink.slot=a"), "{console}");
    assert!(
        console.contains("sitelink: booted slot a (sitelink-a.conf)"),
        "{console}"
    );
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_raw_boots_and_generic_disk_waits_for_config() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("sites/office.raw", "raw");
    let vm = Vm::boot(&disk, "raw", "raw", None);
    let took = vm.expect("sitelink: ready site=office", READY_TIMEOUT);
    eprintln!(
        "vm disk: QEMU start to `sitelink: ready site=office` from sites/office.raw (OVMF, TCG) in {:.2} s",
        took.as_secs_f64()
    );
    vm.stop();
    // The generic disk has no site config: the init says so and waits for one.
    let generic = disk_copy("sitelink.raw", "generic");
    let vm = Vm::boot(&generic, "raw", "generic", None);
    vm.expect("sitelink: booted slot a", READY_TIMEOUT);
    vm.expect("holds no site.toml", Duration::from_secs(30));
    vm.expect("waiting for a valid config", Duration::from_secs(5));
    let console = vm.stop();
    assert!(!console.contains("sitelink: ready"), "{console}");
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_generic_disk_generates_its_key_once() {
    require_vm_tier();
    let _one = vm_lock();
    // A site config without a key on the generic disk: the router makes its own key on the
    // state partition at first boot and keeps it.
    let disk = disk_copy("sitelink.raw", "firstkey");
    let (toml, _) = site_files("azure");
    disk::write_config(&disk, &[("site.toml", toml.as_bytes())]).unwrap_or_else(|e| panic!("{e}"));
    let vm = Vm::boot(&disk, "raw", "firstkey-1", None);
    vm.expect(
        "generated this router's key on /dev/vda3 (state partition); public key ",
        READY_TIMEOUT,
    );
    vm.expect("sitelink: ready site=azure", Duration::from_secs(60));
    let first = vm.stop();
    let key =
        disk::read_file(&disk, "sitelink-state", "site.key").unwrap_or_else(|e| panic!("{e}"));
    let key = sitelink_config::keys::PrivateKey::from_base64(&String::from_utf8_lossy(&key))
        .expect("a base64 x25519 key on the state partition");
    let public = key.public_key().to_string();
    assert!(first.contains(&format!("public key {public}")), "{first}");
    assert!(
        !first.contains(&key.to_base64()),
        "the private key was printed"
    );
    let vm = Vm::boot(&disk, "raw", "firstkey-2", None);
    vm.expect("sitelink: ready site=azure", READY_TIMEOUT);
    let second = vm.stop();
    assert!(!second.contains("generated this router's key"), "{second}");
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_config_partition_edited() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("sites/aws.raw", "config");
    let vm = Vm::boot(&disk, "raw", "config-aws", None);
    vm.expect("sitelink: ready site=aws", READY_TIMEOUT);
    vm.stop();
    // What a user does with any FAT tool: put another site's config and key on the partition.
    let (toml, key) = site_files("gcp");
    disk::write_config(
        &disk,
        &[("site.toml", toml.as_bytes()), ("site.key", key.as_bytes())],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let vm = Vm::boot(&disk, "raw", "config-gcp", None);
    vm.expect("sitelink: ready site=gcp", READY_TIMEOUT);
    let console = vm.stop();
    assert!(console.contains("config for site gcp"), "{console}");
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_update_rolls_back_and_commits() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("sites/aws.raw", "update");
    let mut peer = Peer::start();
    let health = Duration::from_secs(90);

    // 1. Slot A, tunnel to gcp healthy.
    let vm = Vm::boot(&disk, "raw", "update-a", Some(peer.net()));
    vm.expect("sitelink: booted slot a (sitelink-a.conf)", READY_TIMEOUT);
    vm.expect("sitelink: healthy slot=a tunnel=wg-gcp", health);
    vm.stop();

    // 2. A broken update (the initramfs is junk: the kernel panics) goes to slot B; after its
    // 3 tries systemd-boot boots slot A again, which comes up with its tunnel.
    let broken = tmp().join("disk-broken-update");
    fs::create_dir_all(&broken).unwrap();
    let vmlinuz = fs::read(image().join("vmlinuz")).unwrap();
    let junk: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let u = disk::update(
        &disk,
        disk::SlotFiles {
            vmlinuz: &vmlinuz,
            initramfs: &junk,
        },
        3,
        "",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((u.slot, u.entry.as_str()), ('b', "sitelink-b+3.conf"));
    let started = Instant::now();
    let vm = Vm::boot(&disk, "raw", "update-broken", Some(peer.net()));
    vm.expect_count("sitelink.slot=b", 3, Duration::from_secs(300));
    vm.expect(
        "sitelink: slot b failed its boot assessment (sitelink-b+0-3.conf): rolled back to slot a",
        Duration::from_secs(180),
    );
    vm.expect("sitelink: healthy slot=a tunnel=wg-gcp", health);
    let rollback = started.elapsed();
    let console = vm.stop();
    assert_eq!(console.matches("Kernel panic").count(), 3, "{console}");
    assert_eq!(slots_of(&disk), ["sitelink-a.conf", "sitelink-b+0-3.conf"]);
    eprintln!(
        "vm disk: broken update in slot B: 3 panicking tries, back on slot A with its tunnel up, in {:.1} s",
        rollback.as_secs_f64()
    );

    // 3. A good update replaces the bad slot B; it is tried, becomes healthy, is marked good.
    let initramfs = fs::read(image().join("initramfs.img")).unwrap();
    let good = disk::SlotFiles {
        vmlinuz: &vmlinuz,
        initramfs: &initramfs,
    };
    let u = disk::update(&disk, good, 3, "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((u.slot, u.entry.as_str()), ('b', "sitelink-b+3.conf"));
    let vm = Vm::boot(&disk, "raw", "update-good", Some(peer.net()));
    vm.expect(
        "sitelink: booted slot b on trial (sitelink-b+2-1.conf, 2 tries left)",
        READY_TIMEOUT,
    );
    vm.expect(
        "sitelink: slot b marked good (sitelink-b+2-1.conf -> sitelink-b.conf)",
        health,
    );
    // Said once boot.log has its line.
    vm.expect(
        "sitelink: healthy slot=b tunnel=wg-gcp",
        Duration::from_secs(10),
    );
    vm.stop();
    assert_eq!(slots_of(&disk), ["sitelink-a.conf", "sitelink-b.conf"]);
    let log =
        disk::read_file(&disk, "sitelink-state", "boot.log").unwrap_or_else(|e| panic!("{e}"));
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("slot=b healthy via wg-gcp; marked good (sitelink-b.conf)"),
        "{log}"
    );

    // 4. An update that never becomes healthy (the peer is gone) with 1 try: the init reboots
    // it at its health deadline, and systemd-boot goes back to slot B.
    peer.stop_router();
    let u = disk::update(&disk, good, 1, "sitelink.health_timeout=20")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((u.slot, u.entry.as_str()), ('a', "sitelink-a+1.conf"));
    let vm = Vm::boot(&disk, "raw", "update-unhealthy", Some(peer.net()));
    vm.expect(
        "sitelink: booted slot a on trial (sitelink-a+0-1.conf, 0 tries left)",
        READY_TIMEOUT,
    );
    vm.expect(
        "sitelink: slot a not healthy within 20 s",
        Duration::from_secs(60),
    );
    vm.expect("sitelink: reboot", Duration::from_secs(15));
    vm.expect(
        "sitelink: slot a failed its boot assessment (sitelink-a+0-1.conf): rolled back to slot b",
        READY_TIMEOUT,
    );
    vm.expect("sitelink: ready site=aws", Duration::from_secs(30));
    vm.stop();
    assert_eq!(slots_of(&disk), ["sitelink-a+0-1.conf", "sitelink-b.conf"]);
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_update_disk_installed_by_a_healthy_router() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("sites/aws.raw", "updisk");
    let peer = Peer::start();
    // A new release: the same kernel, the initramfs with zero padding after it (the kernel
    // skips it), so its bytes differ from slot A's.
    let vmlinuz = fs::read(image().join("vmlinuz")).unwrap();
    let mut initramfs = fs::read(image().join("initramfs.img")).unwrap();
    initramfs.extend([0u8; 512]);
    let img = disk::update_disk(disk::SlotFiles {
        vmlinuz: &vmlinuz,
        initramfs: &initramfs,
    })
    .unwrap();
    let update = tmp().join("updisk-sitelink-update.img");
    fs::write(&update, img).unwrap();

    let vm = Vm::boot_with(&disk, "raw", "updisk", Some(peer.net()), &[&update]);
    vm.expect(
        "sitelink: healthy slot=a tunnel=wg-gcp",
        Duration::from_secs(120),
    );
    vm.expect(
        "sitelink: installed the release on /dev/vdb into slot b (sitelink-b+3.conf); rebooting to try it",
        Duration::from_secs(30),
    );
    vm.expect("sitelink: reboot", Duration::from_secs(15));
    vm.expect(
        "sitelink: booted slot b on trial (sitelink-b+2-1.conf, 2 tries left)",
        READY_TIMEOUT,
    );
    vm.expect(
        "sitelink: slot b marked good (sitelink-b+2-1.conf -> sitelink-b.conf)",
        Duration::from_secs(90),
    );
    // Still attached: not installed again.
    vm.expect(
        "sitelink: the update disk holds the release slot b runs; nothing to install",
        Duration::from_secs(30),
    );
    let console = vm.stop();
    assert_eq!(
        console.matches("sitelink: installed the release").count(),
        1,
        "{console}"
    );
    assert!(!console.contains("No such device"), "{console}");
    assert_eq!(slots_of(&disk), ["sitelink-a.conf", "sitelink-b.conf"]);
    assert_eq!(
        disk::read_file(&disk, "sitelink-esp", "sitelink/b/initramfs.img").unwrap(),
        initramfs
    );
}

#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_build_is_reproducible() {
    require_vm_tier();
    let first = image();
    let second = build("disk-image-again");
    for f in [
        "sitelink.raw",
        "sites/aws.raw",
        "sites/office.raw",
        "sites/aws.qcow2",
    ] {
        let a = sitelink_digest(&first.join(f));
        let b = sitelink_digest(&second.join(f));
        eprintln!("{f}: {a}");
        assert_eq!(a, b, "{f} differs between two builds of the same inputs");
    }
}

/// The cloud formats boot too: Azure's fixed VHD as QEMU's `vpc`, and the `disk.raw` inside
/// GCE's tar.gz (a whole number of GiB, as GCE requires).
#[test]
#[ignore = "vm tier: needs root, QEMU and OVMF"]
fn vm_disk_cloud_formats_boot() {
    require_vm_tier();
    let out = common::build_image("disk-cloud", &keys(), |opts| {
        opts.formats = sitelink_image::Format::parse_list("vhd,gce").unwrap();
        opts.router_binary = Some(router_binary().to_owned());
    });
    assert!(
        !out.join("sites/aws.raw").exists(),
        "raw disks not asked for are removed"
    );

    let vhd = out.join("sites/aws.vhd");
    // A fixed VHD is the raw disk plus a 512-byte footer (no header, so `qemu-img` without `-f`
    // may take it for raw): cookie `conectix`, disk type 2 (fixed), current size = the disk's.
    let bytes = fs::read(&vhd).unwrap();
    assert_eq!(bytes.len() as u64, disk::DISK_SIZE + 512);
    let footer = &bytes[bytes.len() - 512..];
    assert_eq!(&footer[..8], b"conectix", "VHD footer cookie");
    assert_eq!(footer[60..64], 2u32.to_be_bytes(), "disk type: fixed");
    assert_eq!(
        footer[48..56],
        disk::DISK_SIZE.to_be_bytes(),
        "current size"
    );
    drop(bytes);
    let info = Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(&vhd)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).replace([' ', '\n'], "");
    assert!(
        info.contains(&format!("\"virtual-size\":{}", disk::DISK_SIZE)),
        "QEMU reads the VHD as the disk's size, to the byte (Azure wants whole MiB): {info}"
    );

    let unpacked = tmp().join("disk-cloud-gce");
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked).unwrap();
    let tar = Command::new("tar")
        .arg("-xzSf")
        .arg(out.join("sites/aws.gce.tar.gz"))
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(tar.success());
    let names: Vec<_> = fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["disk.raw"], "GCE wants exactly one file, disk.raw");
    let raw = unpacked.join("disk.raw");
    assert_eq!(fs::metadata(&raw).unwrap().len(), disk::GCE_DISK_SIZE);

    let _one = vm_lock();
    // The unpacked disk.raw is this test's own; the VHD is copied (a boot writes the disk).
    let vhd = copy_for(&vhd, "azure");
    for (disk, format, name) in [(&vhd, "vpc", "azure-vhd"), (&raw, "raw", "gce-raw")] {
        let vm = Vm::boot(disk, format, name, None);
        let took = vm.expect("sitelink: ready site=aws", READY_TIMEOUT);
        eprintln!(
            "vm disk: {name} to `sitelink: ready site=aws` (OVMF, TCG) in {:.2} s",
            took.as_secs_f64()
        );
        let console = vm.stop();
        assert!(!console.contains("Kernel panic"), "{console}");
    }
    let _ = fs::remove_dir_all(&unpacked);
}

fn sitelink_digest(path: &Path) -> String {
    use sha2::Digest;
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unit tier (no root): the CLI's errors name what failed and where.
#[test]
fn image_cli_errors_name_the_disk_and_the_valid_formats() {
    let bin = env!("CARGO_BIN_EXE_sitelink");
    let junk = tmp().join("cli-junk.raw");
    fs::write(&junk, vec![0u8; 8192]).unwrap();
    let out = Command::new(bin)
        .args(["image", "slots"])
        .arg(&junk)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&junk.display().to_string()) && err.contains("no GPT"),
        "{err}"
    );
    let out = Command::new(bin)
        .args(["build", NETWORK, "--out"])
        .arg(tmp().join("cli-out"))
        .args(["--format", "raw-efi,iso"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "invalid input exits 2: {err}");
    assert!(
        err.contains("\"iso\"") && err.contains("raw-efi, qcow2, vhd, gce"),
        "{err}"
    );
    // Bad arguments are refused (exit 2) before the disk or the build is read.
    for (tries, want) in [("0", "--tries 0 "), ("1000", "--tries 1000: at most 10")] {
        let out = Command::new(bin)
            .args(["image", "update"])
            .arg(&junk)
            .args(["--from", "/nonexistent", "--tries", tries])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
    assert!(
        !tmp().join("cli-out/vmlinuz").exists(),
        "nothing is built on a bad --format"
    );
}
