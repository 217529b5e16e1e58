//! The lab in VM mode: each site's router is a QEMU VM booted from the generic image (kernel +
//! initramfs) with its site's config disk. The topology around it is namespace mode's; only the
//! router namespace changes role: it holds the VM's cables instead of being the router.
//!
//! ```text
//!  [sl_N_l_aws] eth0 (TAP) ══ LAN NIC ┐
//!                                     ├ QEMU (runs in sl_N_r_aws)
//!  [sl_N_r_aws] vm-wan (TAP) ═ WAN NIC┘
//!               vm-wan + wan0 in bridge br0 (table `bridge lab` filters `lab cut`)
//!               wan0 = the site's port on the lab switch (or the veth to its NAT box)
//! ```
//!
//! QEMU opens both TAPs in the router namespace; then the LAN TAP moves into the LAN namespace
//! as `eth0` of the LAN host (a TAP keeps working for the process holding it when it moves).
//! The serial console is a Unix socket (`console.sock`, one client at a time) and a log file
//! (`console.log`); QMP is `qmp.sock`. All under [`run_dir`]`/<site>/`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{ip_in, nft_in, run_in};
use crate::netns::{io, lan_host, run_dir, LabError};
use crate::plan::{LabPlan, SitePlan};

/// The boot image every router VM starts from.
#[derive(Debug, Clone)]
pub struct VmImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The files of one site's VM.
#[derive(Debug, Clone)]
pub struct VmFiles {
    pub dir: PathBuf,
    /// The site's config disk (a private copy: QEMU locks the file it boots from).
    pub disk: PathBuf,
    pub console_sock: PathBuf,
    pub console_log: PathBuf,
    pub qmp_sock: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    pub pid: PathBuf,
}

impl VmFiles {
    pub fn new(network: &str, site: &str) -> VmFiles {
        let dir = run_dir(network).join(site);
        VmFiles {
            disk: dir.join("cidata.img"),
            console_sock: dir.join("console.sock"),
            console_log: dir.join("console.log"),
            qmp_sock: dir.join("qmp.sock"),
            qemu_log: dir.join("qemu.log"),
            pid: dir.join("qemu.pid"),
            dir,
        }
    }
}

/// Memory of each router VM, in MiB.
const MEMORY_MB: u32 = 256;
/// The TAPs QEMU opens in the router namespace.
const WAN_TAP: &str = "vm-wan";
const LAN_TAP: &str = "vm-lan";

/// A site's NIC MAC addresses: locally administered, by site position (WAN `..:01`, LAN `..:02`).
pub fn macs(index: usize) -> (String, String) {
    let i = index & 0xff;
    let j = (index >> 8) & 0xff;
    (
        format!("52:54:5e:{j:02x}:{i:02x}:01"),
        format!("52:54:5e:{j:02x}:{i:02x}:02"),
    )
}

/// The QEMU command line (after `qemu-system-x86_64`) of site number `index`. The WAN NIC comes
/// first on the PCI bus, so the init names it `wan0`.
pub fn qemu_args(
    s: &SitePlan,
    index: usize,
    image: &VmImage,
    files: &VmFiles,
    accel: &str,
) -> Vec<String> {
    let (wan_mac, lan_mac) = macs(index);
    let p = |p: &Path| p.display().to_string();
    [
        "-name",
        &format!("sitelink-{}", s.name),
        "-accel",
        accel,
        "-m",
        &MEMORY_MB.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        &p(&image.kernel),
        "-initrd",
        &p(&image.initrd),
        "-append",
        "console=ttyS0",
        "-device",
        "virtio-rng-pci",
        "-drive",
        &format!("file={},format=raw,if=virtio,readonly=on", p(&files.disk)),
        "-netdev",
        &format!("tap,id=wan,ifname={WAN_TAP},script=no,downscript=no"),
        "-device",
        &format!("virtio-net-pci,netdev=wan,mac={wan_mac}"),
        "-netdev",
        &format!("tap,id=lan,ifname={LAN_TAP},script=no,downscript=no"),
        "-device",
        &format!("virtio-net-pci,netdev=lan,mac={lan_mac}"),
        "-chardev",
        &format!(
            "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
            p(&files.console_sock),
            p(&files.console_log)
        ),
        "-serial",
        "chardev:console",
        "-qmp",
        &format!("unix:{},server=on,wait=off", p(&files.qmp_sock)),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// QEMU is installed (before anything is built or started).
pub fn check_qemu() -> Result<(), LabError> {
    accel_override()?;
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(LabError::Failed(
            "the VM lab needs qemu-system-x86_64: apt-get install --no-install-recommends qemu-system-x86 (or use --mode netns)".into(),
        ))
    }
}

/// VM mode's router namespace: no addresses, only the VM's WAN cable (bridge `br0` joining the
/// VM's TAP and the uplink `wan0`), the LAN TAP waiting for QEMU, and the `bridge lab` table
/// that `lab cut` fills. IPv6 is off here so the lab's internet carries only the routers'
/// traffic.
pub(crate) fn router_cable(s: &SitePlan) -> Result<(), LabError> {
    let r = s.router_ns.as_str();
    for key in ["all", "default", "wan0"] {
        run_in(
            r,
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
        )?;
    }
    ip_in(r, &["link", "add", "br0", "type", "bridge"])?;
    for tap in [WAN_TAP, LAN_TAP] {
        ip_in(r, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    }
    for port in [WAN_TAP, "wan0"] {
        ip_in(r, &["link", "set", port, "master", "br0"])?;
    }
    for dev in ["br0", WAN_TAP, LAN_TAP, "wan0"] {
        ip_in(r, &["link", "set", dev, "up"])?;
    }
    nft_in(
        r,
        "table bridge lab {\n set cut { type ipv4_addr; }\n chain forward { type filter hook forward priority 0; ip saddr @cut drop; ip daddr @cut drop; }\n}",
    )?;
    Ok(())
}

/// Start site `index`'s VM in its router namespace (its config disk must already be at
/// [`VmFiles::disk`]), wait until QEMU holds both TAPs, then hand the LAN TAP to the LAN host.
/// Returns QEMU's pid.
pub fn start(plan: &LabPlan, index: usize, image: &VmImage, accel: &str) -> Result<u32, LabError> {
    let s = &plan.sites[index];
    let files = VmFiles::new(&plan.network, &s.name);
    let log = fs::File::create(&files.qemu_log)
        .map_err(io(format!("cannot create {}", files.qemu_log.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io(format!("cannot create {}", files.qemu_log.display())))?;
    let args = qemu_args(s, index, image, &files, accel);
    // Its own process group: a Ctrl-C meant for `lab up` must not kill the VMs midway; `lab
    // down` stops them.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &s.router_ns, "qemu-system-x86_64"])
        .args(&args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(io(format!(
            "cannot start qemu-system-x86_64 for site {} (apt-get install --no-install-recommends qemu-system-x86)",
            s.name
        )))?;
    let pid = child.id();
    fs::write(&files.pid, format!("{pid}\n"))
        .map_err(io(format!("cannot write {}", files.pid.display())))?;
    wait_attached(s, &files, &mut child)?;
    ip_in(
        &s.router_ns,
        &["link", "set", LAN_TAP, "netns", &s.lan_ns, "name", "eth0"],
    )?;
    lan_host(s)?;
    // The child is not waited for: QEMU outlives `lab up --detach`; `lab down` stops it.
    drop(child);
    Ok(pid)
}

/// Wait until QEMU has opened both TAPs (a TAP nobody holds shows NO-CARRIER).
fn wait_attached(s: &SitePlan, files: &VmFiles, child: &mut Child) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&files.qemu_log).unwrap_or_default();
            return Err(LabError::Failed(format!(
                "QEMU of site {} exited ({status}): {}",
                s.name,
                log.trim()
            )));
        }
        let attached = [WAN_TAP, LAN_TAP].iter().all(|tap| {
            ip_in(&s.router_ns, &["link", "show", "dev", tap])
                .is_ok_and(|out| !out.contains("NO-CARRIER"))
        });
        if attached {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                secs: 20,
                what: format!("QEMU of site {} to open its TAPs", s.name),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether site `site`'s QEMU still runs; if not, the error to show.
pub fn require_running(network: &str, site: &str) -> Result<(), LabError> {
    let files = VmFiles::new(network, site);
    let pid = fs::read_to_string(&files.pid).unwrap_or_default();
    if crate::netns::alive(pid.trim()) {
        Ok(())
    } else {
        Err(LabError::VmDown {
            site: site.to_owned(),
            log: files.qemu_log.display().to_string(),
        })
    }
}

/// Type `line` on a VM's serial console and collect what it prints until a line satisfies
/// `done`. The console takes one client at a time: while `lab console --attach` holds it, this
/// times out.
pub fn console_ask(
    sock: &Path,
    line: &str,
    done: &dyn Fn(&str) -> bool,
    timeout: Duration,
) -> Result<String, LabError> {
    let what = format!("the console {}", sock.display());
    let mut stream = UnixStream::connect(sock).map_err(io(format!("cannot connect to {what}")))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io(what.clone()))?;
    stream
        .write_all(format!("\n{line}\n").as_bytes())
        .map_err(io(format!("cannot write to {what}")))?;
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(stream);
    let mut text = String::new();
    let mut partial = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut partial) {
            Ok(0) => return Err(LabError::Failed(format!("{what} closed"))),
            Ok(_) if partial.ends_with(b"\n") => {
                let l = String::from_utf8_lossy(&partial).into_owned();
                partial.clear();
                text.push_str(&l);
                if done(l.trim_end()) {
                    return Ok(text);
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(io(format!("cannot read {what}"))(e)),
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                secs: timeout.as_secs(),
                what: format!(
                    "an answer to {line:?} on {what} (is `lab console --attach` holding it?)"
                ),
            });
        }
    }
}

/// A file as the VM's `cat` console command shows it (the init shows only diagnostics, never
/// keys), or why not.
pub fn console_cat(
    sock: &Path,
    path: &str,
    timeout: Duration,
) -> Result<Result<String, String>, LabError> {
    const TAG: &str = "init: cat: ";
    let end = format!("--- end of {path}");
    let failed = format!("{path}: ");
    let answer = console_ask(
        sock,
        &format!("cat {path}"),
        &|l: &str| {
            l.split_once(TAG)
                .is_some_and(|(_, rest)| rest == end || rest.starts_with(&failed))
        },
        timeout,
    )?;
    let lines: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.split_once(TAG).map(|(_, rest)| rest))
        .collect();
    match lines.last() {
        Some(last) if *last == end => {
            let body: Vec<&str> = lines[..lines.len() - 1].to_vec();
            Ok(Ok(body.join("\n") + "\n"))
        }
        Some(last) => Ok(Err((*last).to_owned())),
        None => Ok(Err("no answer".to_owned())),
    }
}

/// Run one QMP command (after the capabilities handshake); its answer line.
pub fn qmp(sock: &Path, command: &str) -> Result<String, LabError> {
    let what = format!("QMP socket {}", sock.display());
    let mut s = UnixStream::connect(sock).map_err(io(format!("cannot connect to {what}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io(what.clone()))?;
    let mut r = BufReader::new(s.try_clone().map_err(io(what.clone()))?);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(io(format!("no greeting on {what}")))?;
    let mut answer = |req: &str| -> Result<String, LabError> {
        writeln!(s, "{req}").map_err(io(format!("cannot write to {what}")))?;
        loop {
            let mut l = String::new();
            let n = r
                .read_line(&mut l)
                .map_err(io(format!("cannot read {what}")))?;
            if n == 0 || l.contains("\"return\"") || l.contains("\"error\"") {
                return Ok(l);
            }
        }
    };
    answer("{\"execute\": \"qmp_capabilities\"}")?;
    answer(&format!("{{\"execute\": \"{command}\"}}"))
}

/// The accelerator for the lab's VMs: `$SITELINK_QEMU_ACCEL` if set, else KVM if a guest kernel
/// really boots under it (on some hosts /dev/kvm exists but guests stop with "KVM internal
/// error"), else TCG. Also says why, for the user.
pub fn accel(image: &VmImage) -> Result<(&'static str, String), LabError> {
    match accel_override()? {
        Some("kvm") => return Ok(("kvm", "KVM ($SITELINK_QEMU_ACCEL)".into())),
        Some(_) => return Ok(("tcg", "TCG ($SITELINK_QEMU_ACCEL)".into())),
        None => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return Ok(("tcg", "TCG (no /dev/kvm)".into()));
    }
    // The probe costs seconds; its answer holds until the host reboots (/run is a tmpfs).
    let cache = Path::new("/run/sitelink-lab/accel");
    let cached = fs::read_to_string(cache).ok();
    let works = match cached.as_deref().map(str::trim) {
        Some("kvm") => true,
        Some("tcg") => false,
        _ => {
            let works = kvm_boots(image);
            let _ = fs::create_dir_all("/run/sitelink-lab");
            let _ = fs::write(cache, if works { "kvm\n" } else { "tcg\n" });
            works
        }
    };
    let how = if cached.is_some() {
        format!("probed earlier, kept in {}", cache.display())
    } else {
        "probed now".to_owned()
    };
    Ok(if works {
        ("kvm", format!("KVM ({how})"))
    } else {
        ("tcg", format!("TCG: KVM is present but a guest kernel prints nothing under it here, so software emulation ({how})"))
    })
}

/// `$SITELINK_QEMU_ACCEL`: `kvm`, `tcg`, or unset (probe). Any other value is an error, not
/// a probe the user did not ask for.
pub fn accel_override() -> Result<Option<&'static str>, LabError> {
    match std::env::var("SITELINK_QEMU_ACCEL") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v == "kvm" => Ok(Some("kvm")),
        Ok(v) if v == "tcg" => Ok(Some("tcg")),
        Ok(v) => Err(LabError::Failed(format!(
            "SITELINK_QEMU_ACCEL={v:?} is not valid: kvm, tcg, or unset (probe KVM, fall back to TCG)"
        ))),
        Err(e) => Err(LabError::Failed(format!("SITELINK_QEMU_ACCEL: {e}"))),
    }
}

/// Boot the image under KVM without NICs or disks for a few seconds: does the kernel get as far
/// as running /init?
fn kvm_boots(image: &VmImage) -> bool {
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "console=ttyS0", "-serial", "stdio", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let Some(mut out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("Run /init") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let ok = rx.recv_timeout(Duration::from_secs(8)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_wires_wan_first_and_console_to_files() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/seed-mesh.toml"
        ))
        .unwrap();
        let net = sitelink_config::network::parse(&text, "seed-mesh.toml")
            .network
            .unwrap();
        let plan = LabPlan::new(&net).unwrap();
        let image = VmImage {
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initramfs.img".into(),
        };
        let files = VmFiles::new("seed-mesh", "gcp");
        let args = qemu_args(&plan.sites[1], 1, &image, &files, "tcg").join(" ");
        let wan = args.find("netdev=wan,mac=52:54:5e:00:01:01").unwrap();
        let lan = args.find("netdev=lan,mac=52:54:5e:00:01:02").unwrap();
        assert!(wan < lan, "{args}");
        assert!(args.contains("-accel tcg"));
        assert!(args.contains(
            "file=/run/sitelink-lab/seed-mesh/gcp/cidata.img,format=raw,if=virtio,readonly=on"
        ));
        assert!(args.contains("path=/run/sitelink-lab/seed-mesh/gcp/console.sock,server=on,wait=off,logfile=/run/sitelink-lab/seed-mesh/gcp/console.log"));
        assert!(
            args.contains("-qmp unix:/run/sitelink-lab/seed-mesh/gcp/qmp.sock,server=on,wait=off")
        );
    }

    #[test]
    fn macs_differ_per_site() {
        assert_ne!(macs(0), macs(1));
        assert_ne!(macs(1).0, macs(257).0);
        assert_eq!(macs(3).0, "52:54:5e:00:03:01");
    }
}
