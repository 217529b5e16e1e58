//! VM tier: build the image of the seed mesh and boot it under QEMU (KVM when it works, else
//! TCG), waiting for the lines the init prints on the serial console.
//! Needs root and qemu-system-x86 (and a kernel package from apt, cached after the first build);
//! run with `cargo test --test vm -- --ignored vm_`. Each test fails (does not skip) when QEMU or
//! root is missing. VMs run one at a time (two cores: parallel TCG guests would only be slower)
//! and are killed on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "common/vm.rs"]
mod common;
use common::{copy_for, require_root_and_tools, tmp, vm_lock, Boot, Spec, Vm, NETWORK};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Root and QEMU, or a failed test that says what is missing.
fn require_vm_tier() {
    require_root_and_tools(
        "the vm tier needs",
        &[("qemu-system-x86_64", "qemu-system-x86")],
    );
}

/// Build the seed mesh's image once per test run (kernel and device binary are cached).
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image(sitelink_image::Profile::Cloud, "vm-image"))
}

fn build_image(profile: sitelink_image::Profile, dir: &str) -> PathBuf {
    common::build_image(dir, &tmp().join("vm-keys"), |opts| opts.profile = profile)
}

/// The accelerator: KVM if a guest kernel really runs under it, else TCG (said once).
fn accel() -> &'static str {
    common::accel(image())
}

/// Kernel boots of the image.
impl Vm {
    /// Boot the image with `disk` as a virtio disk, no NIC.
    fn start(disk: Option<&Path>, name: &str) -> Vm {
        Vm::start_append(accel(), disk, name, &[], "")
    }

    /// Boot with `-nic` options (user-mode networking only: nothing reaches the host's network
    /// configuration).
    fn start_nics(disk: &Path, name: &str, nics: &[&str]) -> Vm {
        Vm::start_append(accel(), Some(disk), name, nics, "")
    }

    /// Boot with `append` added to the kernel command line.
    fn start_append(
        accel: &str,
        disk: Option<&Path>,
        name: &str,
        nics: &[&str],
        append: &str,
    ) -> Vm {
        Vm::start_image(image(), accel, disk, name, nics, append)
    }

    fn start_image(
        img: &Path,
        accel: &str,
        disk: Option<&Path>,
        name: &str,
        nics: &[&str],
        append: &str,
    ) -> Vm {
        let disks: Vec<&Path> = disk.into_iter().collect();
        Vm::launch(Spec {
            disks: &disks,
            nics,
            ..Spec::new(name, accel, Boot::Kernel { image: img, append })
        })
    }
}

/// A private copy of a site's config disk (QEMU locks the file it boots from).
fn disk_copy(site: &str, test: &str) -> PathBuf {
    copy_for(
        &image().join("sites").join(format!("{site}.cidata.img")),
        test,
    )
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_boot_ready_without_nic() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("aws", "ready");
    let vm = Vm::start(Some(&disk), "ready");
    let took = vm.expect("sitelink: ready site=aws", READY_TIMEOUT);
    eprintln!(
        "vm ready: QEMU start to `sitelink: ready site=aws` in {:.2} s ({})",
        took.as_secs_f64(),
        accel()
    );
    let console = vm.console();
    assert!(console.contains("config for site aws"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
    // Hyper-V's drivers (cloud profile) are not even tried without Hyper-V's bus: no kernel
    // "Unknown symbol" noise, one line that says what this machine lacks.
    assert!(!console.contains("Unknown symbol"), "{console}");
    assert!(
        console
            .contains("modules for hardware this machine lacks: hv_netvsc, hv_storvsc, hv_vmbus"),
        "{console}"
    );
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_broken_config_stays_up() {
    require_vm_tier();
    let _one = vm_lock();
    let key = fs::read(tmp().join("vm-keys/aws.key")).unwrap_or_default();
    let broken = sitelink_image::cidata::disk(
        "broken",
        &[
            (
                "site.toml",
                b"format = 1\nnetwork = \"seed-mesh\"\nsite = 7\n",
            ),
            ("site.key", &key),
        ],
    )
    .unwrap();
    let disk = tmp().join("broken.cidata.img");
    fs::write(&disk, broken).unwrap();
    let vm = Vm::start(Some(&disk), "broken");
    vm.expect("sitelink: invalid config on /dev/vda", READY_TIMEOUT);
    // The validator's message: FILE:LINE:COL: field: message.
    vm.expect("/run/sitelink-config/site.toml:3:", Duration::from_secs(5));
    vm.expect("waiting for a valid config", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(5));
    let console = vm.console();
    assert!(!console.contains("Kernel panic"), "{console}");
    assert!(!console.contains("sitelink: ready"), "{console}");
    // The init still answers on the console.
    let mut vm = vm;
    vm.send("status");
    vm.expect("ready: false; config: none", Duration::from_secs(10));
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_service_restarted_after_kill() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("gcp", "restart");
    let mut vm = Vm::start(Some(&disk), "restart");
    vm.expect("sitelink: ready site=gcp", READY_TIMEOUT);
    vm.send("kill site");
    vm.expect("site: killed by signal 9", Duration::from_secs(10));
    // Generous: TCG on a loaded two-core machine can be slow.
    vm.wait_count("site: started (pid", 2, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_count("3 tunnel interfaces up", 2, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.send("status");
    vm.expect("site: running", Duration::from_secs(10));
    vm.expect("1 restarts", Duration::from_secs(1));
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_powerdown_clean() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("azure", "powerdown");
    let mut vm = Vm::start(Some(&disk), "powerdown");
    vm.expect("sitelink: ready site=azure", READY_TIMEOUT);
    let asked = Instant::now();
    let answer = vm.qmp("system_powerdown");
    assert!(answer.contains("\"return\""), "QMP: {answer}");
    vm.expect("shutting down (power button)", Duration::from_secs(15));
    vm.expect("sitelink: power off", Duration::from_secs(15));
    let status = vm
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "vm powerdown: QEMU exited {status} {:.2} s after system_powerdown",
        asked.elapsed().as_secs_f64()
    );
    let console = vm.console();
    assert!(status.success(), "QEMU exit {status}; console:\n{console}");
    assert!(console.contains("site: exited with code 0"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_build_is_reproducible() {
    require_vm_tier();
    image();
    let out = tmp().join("vm-image-again");
    let mut opts = sitelink_image::BuildOptions::new(NETWORK, &out);
    opts.keys = Some(tmp().join("vm-keys"));
    sitelink_image::build(&opts).unwrap_or_else(|e| panic!("second build: {e}"));
    for f in [
        "initramfs.img",
        "vmlinuz",
        "sites/aws.cidata.img",
        "sites/office.cidata.img",
    ] {
        let a = fs::read(image().join(f)).unwrap();
        let b = fs::read(out.join(f)).unwrap();
        assert!(a == b, "{f} differs between two builds of the same inputs");
    }
}

/// A two-site network for the NIC tests: site `a` static WAN on the NIC with MAC ...:02, site `b`
/// DHCP WAN.
const NIC_NETWORK: &str = r#"
name = "nictest"
[[sites]]
name = "a"
endpoint = "198.51.100.1:51820"
[sites.wan]
mode = "static"
address = "198.51.100.1/24"
gateway = "198.51.100.254"
mac = "52:54:00:5e:00:02"
[sites.lan]
address = "10.1.0.1/24"

[[sites]]
name = "b"
endpoint = "198.51.100.2:51820"
[sites.wan]
mode = "dhcp"
[sites.lan]
address = "10.2.0.1/24"
"#;

/// The config disk of a site of [`NIC_NETWORK`].
fn nic_disk(site: &str) -> PathBuf {
    let net = sitelink_config::network::parse(NIC_NETWORK, "nictest.toml")
        .network
        .expect("the NIC test network is valid");
    let store = sitelink_config::keys::Keystore::new(tmp().join("nic-keys"));
    store.init(&["a", "b"], None).expect("keys");
    let img = sitelink_image::config_disk(&net, site, &store).expect("config disk");
    let path = tmp().join(format!("nictest-{site}.cidata.img"));
    fs::write(&path, img).unwrap();
    path
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_nics_named_static_wan_and_lan() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = nic_disk("a");
    let mut vm = Vm::start_nics(
        &disk,
        "nics",
        &[
            "user,model=virtio-net-pci,mac=52:54:00:5e:00:01",
            "user,model=virtio-net-pci,mac=52:54:00:5e:00:02",
        ],
    );
    vm.expect("sitelink: ready site=a", READY_TIMEOUT);
    // The config names the WAN's MAC: the second NIC is the WAN, the other one the LAN.
    vm.expect("renamed wan0 (52:54:00:5e:00:02)", Duration::from_secs(1));
    vm.expect("wan0: address 198.51.100.1/24", Duration::from_secs(1));
    vm.expect("wan0: default via 198.51.100.254", Duration::from_secs(1));
    vm.expect("renamed lan0 (52:54:00:5e:00:01)", Duration::from_secs(1));
    vm.expect("lan0: address 10.1.0.1/24", Duration::from_secs(1));
    vm.send("ip");
    vm.expect(
        "ip: wan0 up 52:54:00:5e:00:02 198.51.100.1/24",
        Duration::from_secs(10),
    );
    vm.expect(
        "ip: lan0 up 52:54:00:5e:00:01 10.1.0.1/24",
        Duration::from_secs(1),
    );
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_wan_dhcp() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = nic_disk("b");
    let vm = Vm::start_nics(&disk, "dhcp", &["user,model=virtio-net-pci"]);
    vm.expect("sitelink: ready site=b", READY_TIMEOUT);
    // QEMU's user-mode network hands out 10.0.2.15/24 with router 10.0.2.2.
    vm.expect(
        "dhcp: wan0: 10.0.2.15/24 via 10.0.2.2",
        Duration::from_secs(30),
    );
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_config_disk_appears_later() {
    require_vm_tier();
    let _one = vm_lock();
    let disk = disk_copy("office", "later");
    let vm = Vm::start(None, "later");
    vm.expect("sitelink: no config", READY_TIMEOUT);
    vm.expect("waiting for a valid config", Duration::from_secs(5));
    // Plug the config disk in while the init waits (PCI hotplug through ACPI).
    let added = vm.qmp_json(&format!(
        r#"{{"execute": "blockdev-add", "arguments": {{"driver": "raw", "node-name": "cfg", "file": {{"driver": "file", "filename": "{}"}}}}}}"#,
        disk.display()
    ));
    assert!(added.contains("\"return\""), "blockdev-add: {added}");
    let plugged = vm.qmp_json(
        r#"{"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "drive": "cfg", "id": "cfgdisk"}}"#,
    );
    assert!(plugged.contains("\"return\""), "device_add: {plugged}");
    vm.expect("sitelink: ready site=office", Duration::from_secs(60));
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_config_from_kernel_command_line() {
    require_vm_tier();
    let _one = vm_lock();
    // A config disk under another label: only `sitelink.config=` finds it.
    let disk = disk_copy("gcp", "cmdline");
    let mut img = fs::read(&disk).unwrap();
    img[43..54].copy_from_slice(b"SITECFG    ");
    fs::write(&disk, img).unwrap();
    let vm = Vm::start_append(
        accel(),
        Some(&disk),
        "cmdline",
        &[],
        "sitelink.config=LABEL=SITECFG",
    );
    vm.expect("sitelink: ready site=gcp", READY_TIMEOUT);
    vm.expect("config for site gcp", Duration::from_secs(1));
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_metal_profile_e1000e() {
    require_vm_tier();
    let _one = vm_lock();
    // The generic kernel plus router NIC drivers; QEMU's e1000e stands in for a router's NIC.
    let img = build_image(sitelink_image::Profile::Metal, "vm-image-metal");
    let disk = tmp().join("metal-aws.cidata.img");
    fs::copy(img.join("sites/aws.cidata.img"), &disk).unwrap();
    let vm = Vm::start_image(
        &img,
        accel(),
        Some(&disk),
        "metal",
        &["user,model=e1000e"],
        "",
    );
    vm.expect("sitelink: ready site=aws", READY_TIMEOUT);
    vm.expect("e1000e", Duration::from_secs(1));
    vm.expect("wan0: address 198.51.100.1/24", Duration::from_secs(5));
}
