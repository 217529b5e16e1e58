//! What the VM-tier tests (`tests/vm.rs`: kernel boot, `tests/disk.rs`: UEFI disk boot) share:
//! the checks for root and tools, one VM at a time, image builds, and a QEMU harness with the
//! serial console as text, QMP, and a Drop that kills QEMU (also when a test fails).
#![allow(dead_code)] // each test file uses its part

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const NETWORK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/seed-mesh.toml");
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Root and each `(tool, apt package)`, or a failed test that says what is missing (`who_needs`:
/// "the vm tier needs", ...).
pub fn require_root_and_tools(who_needs: &str, tools: &[(&str, &str)]) {
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    assert_eq!(uid, 0, "the vm tier needs root");
    for (tool, package) in tools {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{who_needs} {tool}: apt-get install --no-install-recommends {package}"
        );
    }
}

/// One VM at a time (two cores: parallel TCG guests would only be slower).
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Build the seed mesh into `tmp()/dir` with the keystore `keys`, after `options` set the rest.
pub fn build_image(
    dir: &str,
    keys: &Path,
    options: impl FnOnce(&mut sitelink_image::BuildOptions),
) -> PathBuf {
    let out = tmp().join(dir);
    let mut opts = sitelink_image::BuildOptions::new(NETWORK, &out);
    opts.keys = Some(keys.to_owned());
    options(&mut opts);
    let report = sitelink_image::build(&opts).unwrap_or_else(|e| panic!("image build: {e}"));
    eprint!("{report}");
    out
}

/// A private copy of a built file as `tmp()/<test>-<file name>` (QEMU locks the file it boots
/// from, and tests change their disks).
pub fn copy_for(from: &Path, test: &str) -> PathBuf {
    let to = tmp().join(format!(
        "{test}-{}",
        from.file_name().unwrap().to_string_lossy()
    ));
    fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    to
}

/// The accelerator for guests of the image in `image` (kernel boot): KVM if a guest kernel
/// really runs under it, else TCG ([`sitelink_lab::vm::accel`]); said once.
pub fn accel(image: &Path) -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let (accel, how) = sitelink_lab::vm::accel(&sitelink_lab::vm::VmImage {
            kernel: image.join("vmlinuz"),
            initrd: image.join("initramfs.img"),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("vm: accelerator {how}");
        accel
    })
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

/// How a VM boots.
#[derive(Debug, Clone, Copy)]
pub enum Boot<'a> {
    /// The image's `vmlinuz` and `initramfs.img` in `image`, `append` added to the kernel
    /// command line (after `console=ttyS0`).
    Kernel { image: &'a Path, append: &'a str },
    /// OVMF (UEFI; code read-only, a private copy of the variable store) booting `disk` (`format`
    /// raw or qcow2) as the first virtio disk.
    Uefi { disk: &'a Path, format: &'a str },
}

/// What to start: [`Vm::launch`].
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// Names the VM in messages and its files under `tmp()`.
    pub name: &'a str,
    pub accel: &'a str,
    pub boot: Boot<'a>,
    /// Raw virtio disks (after the UEFI boot disk: `/dev/vda`, `/dev/vdb`, ...).
    pub disks: &'a [&'a Path],
    /// `-nic` options; none: no NIC.
    pub nics: &'a [&'a str],
    /// Run QEMU in this network namespace (`ip netns exec`), e.g. for its TAPs.
    pub netns: Option<&'a str>,
}

impl<'a> Spec<'a> {
    pub fn new(name: &'a str, accel: &'a str, boot: Boot<'a>) -> Spec<'a> {
        Spec {
            name,
            accel,
            boot,
            disks: &[],
            nics: &[],
            netns: None,
        }
    }
}

/// A QEMU process; killed on drop.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Console,
    qmp: PathBuf,
    started: Instant,
    name: String,
}

impl Vm {
    pub fn launch(spec: Spec) -> Vm {
        let name = spec.name;
        let qmp = tmp().join(format!("{name}.qmp"));
        let _ = fs::remove_file(&qmp);
        let mut cmd = match spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(["-accel", spec.accel, "-m", "512"]);
        match spec.boot {
            Boot::Kernel { image, append } => {
                cmd.arg("-kernel")
                    .arg(image.join("vmlinuz"))
                    .arg("-initrd")
                    .arg(image.join("initramfs.img"))
                    .arg("-append")
                    .arg(format!("console=ttyS0 {append}").trim_end());
            }
            Boot::Uefi { disk, format } => {
                let vars = tmp().join(format!("{name}.VARS.fd"));
                fs::copy(OVMF_VARS, &vars).expect("copy OVMF_VARS.fd");
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
                    .arg("-drive")
                    .arg(format!("file={},format={format},if=virtio", disk.display()));
            }
        }
        for d in spec.disks {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", d.display()));
        }
        cmd.args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if spec.nics.is_empty() {
            cmd.args(["-nic", "none"]);
        }
        for n in spec.nics {
            cmd.args(["-nic", n]);
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

    pub fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until the console holds `needle` `count` times; the time since QEMU started.
    pub fn wait_count(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.matches(needle).count() >= count {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "vm {}: no {needle:?} (x{count}) on the console within {timeout:?}; console:\n{console}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Duration, String> {
        self.wait_count(needle, 1, timeout)
    }

    /// [`Vm::wait_count`], or a failed test.
    pub fn expect_count(&self, needle: &str, count: usize, timeout: Duration) -> Duration {
        self.wait_count(needle, count, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn expect(&self, needle: &str, timeout: Duration) -> Duration {
        self.expect_count(needle, 1, timeout)
    }

    /// Type a line on the serial console.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console input");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the console");
    }

    /// Run one QMP command (after the capabilities handshake); its answer line.
    pub fn qmp(&self, command: &str) -> String {
        self.qmp_json(&format!("{{\"execute\": \"{command}\"}}"))
    }

    /// Run one QMP request given as JSON; its answer line.
    pub fn qmp_json(&self, request: &str) -> String {
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
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
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

    /// Stop QEMU (a disk is consistent: the init syncs after every write it makes); the console.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.console()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.qmp);
    }
}
