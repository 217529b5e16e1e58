//! VM tier: build the image of the seed mesh and boot it under QEMU (KVM when it works, else
//! TCG), waiting for the lines the init prints on the serial console.
//! Needs root and qemu-system-x86 (and a kernel package from apt, cached after the first build);
//! run with `cargo test --test vm -- --ignored vm_`. Each test fails (does not skip) when QEMU or
//! root is missing. VMs run one at a time (two cores: parallel TCG guests would only be slower)
//! and are killed on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const NETWORK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/seed-mesh.toml");
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Root and QEMU, or a failed test that says what is missing.
fn require_vm_tier() {
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    assert_eq!(uid, 0, "the vm tier needs root");
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        qemu,
        "the vm tier needs qemu-system-x86_64: apt-get install --no-install-recommends qemu-system-x86"
    );
}

/// One VM at a time.
fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Build the seed mesh's image once per test run (kernel and device binary are cached).
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image(sitelink_image::Profile::Cloud, "vm-image"))
}

fn build_image(profile: sitelink_image::Profile, dir: &str) -> PathBuf {
    let out = tmp().join(dir);
    let mut opts = sitelink_image::BuildOptions::new(NETWORK, &out);
    opts.profile = profile;
    opts.keys = Some(tmp().join("vm-keys"));
    let report = sitelink_image::build(&opts).unwrap_or_else(|e| panic!("image build: {e}"));
    eprint!("{report}");
    out
}

/// A VM's serial console, as text so far.
type Console = Arc<Mutex<String>>;

fn pump(mut from: impl Read + Send + 'static, to: Console) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            to.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// The accelerator: KVM if a guest kernel really runs under it, else TCG (said once).
fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        match std::env::var("SITELINK_QEMU_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        if !Path::new("/dev/kvm").exists() {
            eprintln!("vm: no /dev/kvm; using TCG");
            return "tcg";
        }
        // /dev/kvm can exist while guests die early ("KVM internal error"): boot for real.
        let vm = Vm::start_with("kvm", None, "kvm-probe", &[]);
        let ok = vm.wait_for("Run /init", Duration::from_secs(5)).is_ok()
            && !vm.console().contains("KVM internal error");
        if ok {
            "kvm"
        } else {
            eprintln!("vm: KVM does not boot a guest kernel here (no console output or \"KVM internal error\"); falling back to TCG (-accel tcg)");
            "tcg"
        }
    })
}

/// A QEMU process; killed on drop.
struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Console,
    qmp: PathBuf,
    started: Instant,
    name: String,
}

impl Vm {
    /// Boot the image with `disk` as a virtio disk, no NIC.
    fn start(disk: Option<&Path>, name: &str) -> Vm {
        Vm::start_with(accel(), disk, name, &[])
    }

    /// Boot with `-nic` options (user-mode networking only: nothing reaches the host's network
    /// configuration).
    fn start_nics(disk: &Path, name: &str, nics: &[&str]) -> Vm {
        Vm::start_with(accel(), Some(disk), name, nics)
    }

    fn start_with(accel: &str, disk: Option<&Path>, name: &str, nics: &[&str]) -> Vm {
        Vm::start_append(accel, disk, name, nics, "")
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
        let qmp = tmp().join(format!("{name}.qmp"));
        let _ = fs::remove_file(&qmp);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-m", "512", "-kernel"])
            .arg(img.join("vmlinuz"))
            .arg("-initrd")
            .arg(img.join("initramfs.img"))
            .arg("-append")
            .arg(format!("console=ttyS0 {append}").trim_end())
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if nics.is_empty() {
            cmd.args(["-nic", "none"]);
        }
        for n in nics {
            cmd.args(["-nic", n]);
        }
        if let Some(d) = disk {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", d.display()));
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("vm {name}: {cmd:?}");
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start qemu-system-x86_64");
        let console = Console::default();
        pump(child.stdout.take().unwrap(), console.clone());
        pump(child.stderr.take().unwrap(), console.clone());
        Vm {
            stdin: child.stdin.take(),
            child,
            console,
            qmp,
            started,
            name: name.to_owned(),
        }
    }

    fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until the console holds `needle` `count` times; the time since QEMU started.
    fn wait_count(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().matches(needle).count() >= count {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "vm {}: no {needle:?} (x{count}) on the console within {timeout:?}; console:\n{}",
                    self.name,
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Duration, String> {
        self.wait_count(needle, 1, timeout)
    }

    fn expect(&self, needle: &str, timeout: Duration) -> Duration {
        self.wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Type a line on the serial console.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console input");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the console");
    }

    /// Run one QMP command (after the capabilities handshake); its answer line.
    fn qmp(&self, command: &str) -> String {
        self.qmp_json(&format!("{{\"execute\": \"{command}\"}}"))
    }

    /// Run one QMP request given as JSON; its answer line.
    fn qmp_json(&self, request: &str) -> String {
        let mut s = UnixStream::connect(&self.qmp).expect("connect to QMP");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).expect("QMP greeting");
        let mut answer = |req: &str| {
            writeln!(s, "{req}").expect("QMP write");
            loop {
                let mut l = String::new();
                r.read_line(&mut l).expect("QMP answer");
                if l.contains("\"return\"") || l.contains("\"error\"") || l.is_empty() {
                    return l;
                }
            }
        };
        answer("{\"execute\": \"qmp_capabilities\"}");
        answer(request)
    }

    /// Wait for QEMU to exit; its status.
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "vm {}: QEMU still running after {timeout:?}; console:\n{}",
                    self.name,
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.qmp);
    }
}

/// A private copy of a site's config disk (QEMU locks the file it boots from).
fn disk_copy(site: &str, test: &str) -> PathBuf {
    let from = image().join("sites").join(format!("{site}.cidata.img"));
    let to = tmp().join(format!("{test}-{site}.cidata.img"));
    fs::copy(&from, &to).expect("copy the config disk");
    to
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
