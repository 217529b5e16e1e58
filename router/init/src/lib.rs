//! `sitelink-init`: the image's PID 1, as gokrazy and linuxkit do it: [`boot`] then supervise.
//!
//! boot: mount /proc /sys /dev /run /tmp, load the initramfs's modules (dependency order), bring
//! up `lo`, find the site config (`sitelink.config=` or the `CIDATA` disk; see [`config`]); once
//! it validates: hostname = site name, NICs (`wan0` first NIC or by MAC, static or DHCP; `lan0`
//! static), sysctls (forwarding, loose rp_filter).
//!
//! supervise: the router in site mode (`sitelink-router site /run/sitelink-config/site.toml`) as
//! a service ([`supervise`]): own process group, restart with backoff, exit code 3 = bad config,
//! output tagged `[uptime] site: ...` on the console. `sitelink: ready site=<name>` is printed
//! once the service runs and every tunnel interface exists (not waiting for WAN or handshakes).
//!
//! A missing or invalid config prints the same diagnostics as `sitelink validate` and is looked
//! for again every few seconds; the init never exits (that would panic the kernel).
//!
//! Shutdown on SIGTERM, SIGUSR2, SIGINT or the ACPI power button: services get SIGTERM, SIGKILL
//! after 5 s, our routes are flushed, disks synced, power off.
//!
//! Debug commands on the serial console (one per line): `status`, `ip`, `cat FILE`, `log [SERVICE]`,
//! `kill [SERVICE]` (SIGKILL its process group: the supervisor restarts it), `term [SERVICE]`,
//! `poweroff`, `help`.
//!
//! No unsafe code: mounts, modules, reboot and signals go through `nix` and `signal-hook`.
#![forbid(unsafe_code)]

pub mod boot;
pub mod config;
pub mod console;
pub mod dhcp;
pub mod kmod;
pub mod net;
pub mod power;
pub mod slots;
pub mod supervise;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sitelink_config::site::SiteConfig;

use crate::config::Found;
use crate::supervise::{Service, State};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The marker tests and operators wait for.
pub const READY: &str = "sitelink: ready site=";
/// Route protocols flushed at shutdown: the route installer's (83) and the init's own (84).
const OUR_ROUTE_PROTOCOLS: [u8; 2] = [83, net::RTPROT_SITELINK_INIT];
/// The route installer's status file (tunnel states, RTTs, active paths; no keys).
pub const ROUTED_STATUS: &str = "/run/sitelink/routed.toml";
/// Last line of the `cat` console command's answer: `cat: --- end of FILE`.
pub const CAT_END: &str = "--- end of";
/// How often a missing or invalid config is looked for again.
const RETRY: Duration = Duration::from_secs(3);
/// How long services get between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    #[test]
    fn cat_never_shows_keys() {
        assert!(super::catable("/proc/net/snmp"));
        assert!(super::catable("/run/sitelink-config/site.toml"));
        assert!(super::catable(super::ROUTED_STATUS));
        assert!(!super::catable("/run/sitelink-config/site.key"));
        assert!(!super::catable("/proc/../run/sitelink-config/site.key"));
        assert!(!super::catable("/run/sitelink-cidata/site.key"));
    }
}

#[derive(Debug, Clone)]
enum Event {
    Command(String),
    PowerButton,
}

#[derive(Debug)]
struct Init {
    site: Option<Service>,
    cfg: Option<SiteConfig>,
    fingerprint: Vec<u8>,
    configured: bool,
    ready: bool,
    last_problem: String,
    next_look: Instant,
    shutting_down: bool,
    /// Boot assessment of the booted slot (disk boots only).
    assessment: Option<Assessment>,
}

/// The health check of a slot booted from a sitelink disk (see [`slots`]).
#[derive(Debug)]
struct Assessment {
    booted: slots::Booted,
    /// A slot on trial that is not healthy by then is rebooted (uses up one of its tries).
    deadline: Instant,
    timeout: Duration,
    next_check: Instant,
    healthy: bool,
    /// Healthy on a good entry (good at boot, or marked so): an update disk may be installed.
    good: bool,
    /// The update disk last looked at (looked at again only once it was removed).
    update_seen: Option<PathBuf>,
    next_update_look: Instant,
}

/// PID 1. Never returns.
pub fn run() -> ! {
    boot::mounts();
    say!("sitelink {VERSION} init starting");
    boot::modules();
    boot::loopback();
    let assessment = boot_slot();
    let (tx, rx) = mpsc::channel();
    power::watch(tx.clone(), Event::PowerButton, Duration::from_secs(10));
    console_commands(tx);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR2,
        signal_hook::consts::SIGINT,
        Signal::SIGPWR as i32,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            say!("cannot handle signal {sig}: {e}");
        }
    }
    let mut init = Init {
        site: None,
        cfg: None,
        fingerprint: Vec::new(),
        configured: false,
        ready: false,
        last_problem: String::new(),
        next_look: Instant::now(),
        shutting_down: false,
        assessment,
    };
    init.supervise(&rx, &stop)
}

/// Which slot booted (`sitelink.slot=` and its entry on the ESP), said on the console.
fn boot_slot() -> Option<Assessment> {
    let cmdline = match std::fs::read_to_string("/proc/cmdline") {
        Ok(c) => c,
        Err(e) => {
            say!("cannot read /proc/cmdline: {e}; no boot slot, no boot assessment");
            return None;
        }
    };
    let timeout = slots::cmdline_health_timeout(&cmdline).unwrap_or_else(|e| {
        say!(
            "{e}; the boot assessment waits the default {} s",
            slots::DEFAULT_HEALTH_TIMEOUT.as_secs()
        );
        slots::DEFAULT_HEALTH_TIMEOUT
    });
    match slots::at_boot(&cmdline) {
        Ok(None) => None,
        Err(e) => {
            say!("boot slot: {e}; no boot assessment");
            None
        }
        Ok(Some((booted, notes))) => {
            for n in notes {
                console::marker(&format!("sitelink: {n}"));
            }
            if booted.entry.counting() {
                console::marker(&format!(
                    "sitelink: booted slot {} on trial ({}, {} tries left): marked good once healthy, rebooted if not within {} s",
                    booted.slot,
                    booted.entry.file_name(),
                    booted.entry.left.unwrap_or(0),
                    timeout.as_secs()
                ));
            } else {
                console::marker(&format!(
                    "sitelink: booted slot {} ({})",
                    booted.slot,
                    booted.entry.file_name()
                ));
            }
            let now = Instant::now();
            Some(Assessment {
                booted,
                deadline: now + timeout,
                timeout,
                next_check: now,
                healthy: false,
                good: false,
                update_seen: None,
                next_update_look: now,
            })
        }
    }
}

fn console_commands(tx: Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            // Bytes, not `lines()`: line noise on a serial port (not UTF-8) must not end the
            // console for the rest of the boot.
            let mut stdin = std::io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        say!("console input: {e}; no more console commands");
                        break;
                    }
                }
                let line = String::from_utf8_lossy(&buf).trim().to_owned();
                if !line.is_empty() && tx.send(Event::Command(line)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        say!("no console commands: {e}");
    }
}

impl Init {
    fn supervise(&mut self, rx: &Receiver<Event>, stop: &AtomicBool) -> ! {
        loop {
            self.reap();
            if stop.load(Ordering::Relaxed) {
                self.shutdown("signal");
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::PowerButton) => self.shutdown("power button"),
                Ok(Event::Command(c)) => self.command(&c),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.look_for_config();
            if let Some(s) = &mut self.site {
                s.tick();
            }
            self.check_ready();
            self.assess();
            self.check_update();
        }
    }

    /// An update disk (label `SL-UPDATE`) attached to a healthy router on a good slot: install
    /// its release into the other slot (on trial) and reboot into it. A disk is looked at once
    /// (again only after it was removed and attached again).
    fn check_update(&mut self) {
        let Some(a) = &mut self.assessment else {
            return;
        };
        if !a.good || self.shutting_down || Instant::now() < a.next_update_look {
            return;
        }
        a.next_update_look = Instant::now() + Duration::from_secs(5);
        let dev = config::find_label(slots::UPDATE_LABEL);
        if dev == a.update_seen {
            return;
        }
        a.update_seen = dev.clone();
        let Some(dev) = dev else {
            return;
        };
        console::marker(&format!(
            "sitelink: update disk {} found; checking it",
            dev.display()
        ));
        match slots::install_update(&dev, &a.booted) {
            Ok(slots::UpdateOutcome::Skipped(why)) => console::marker(&format!("sitelink: {why}")),
            Err(e) => say!("update disk {}: {e}", dev.display()),
            Ok(slots::UpdateOutcome::Installed { slot, entry }) => {
                let why = format!(
                    "installed the release on {} into slot {slot} ({entry}); rebooting to try it",
                    dev.display()
                );
                if let Err(e) = slots::record(&format!("{:.1}s {why}", console::uptime())) {
                    say!("state partition: {e}");
                }
                console::marker(&format!("sitelink: {why}"));
                self.shutdown_as(&why, nix::sys::reboot::RebootMode::RB_AUTOBOOT);
            }
        }
    }

    /// The boot assessment: healthy = the site service runs and at least one tunnel has a
    /// handshake and answers probes (routed's status file). A slot on trial is then marked good;
    /// one that is not healthy by its deadline is rebooted, so systemd-boot counts the try.
    fn assess(&mut self) {
        let running = self.running();
        let Some(a) = &mut self.assessment else {
            return;
        };
        let now = Instant::now();
        if a.healthy || now < a.next_check || self.shutting_down {
            return;
        }
        a.next_check = now + Duration::from_secs(1);
        let tunnel = if running {
            std::fs::read_to_string(ROUTED_STATUS)
                .ok()
                .and_then(|t| slots::healthy_tunnel(&t))
        } else {
            None
        };
        if let Some(tunnel) = tunnel {
            a.healthy = true;
            let slot = a.booted.slot;
            let mut line = format!("slot={slot} healthy via {tunnel}");
            if !a.booted.entry.counting() {
                a.good = true;
            } else {
                match slots::mark_good(&a.booted) {
                    Ok(good) => {
                        a.good = true;
                        console::marker(&format!(
                            "sitelink: slot {slot} marked good ({} -> {good})",
                            a.booted.entry.file_name()
                        ));
                        line.push_str(&format!("; marked good ({good})"));
                    }
                    Err(e) => say!("cannot mark slot {slot} good: {e}"),
                }
            }
            let uptime = console::uptime();
            if let Err(e) = slots::record(&format!("{uptime:.1}s {line}")) {
                say!("state partition: {e}");
            }
            // Last: whoever watches the console for this line finds boot.log written.
            console::marker(&format!("sitelink: healthy slot={slot} tunnel={tunnel}"));
            return;
        }
        if a.booted.entry.counting() && now >= a.deadline {
            let why = format!(
                "slot {} not healthy within {} s (no tunnel with a handshake and answered probes); rebooting so systemd-boot counts the try",
                a.booted.slot,
                a.timeout.as_secs()
            );
            console::marker(&format!("sitelink: {why}"));
            self.shutdown_as(&why, nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        }
    }

    /// Collect every exited child; tell its service.
    fn reap(&mut self) {
        loop {
            let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(s) = &mut self.site {
                if s.pid() == Some(pid.as_raw()) {
                    s.exited(code, signal, self.shutting_down);
                }
            }
        }
    }

    fn problem(&mut self, text: String) {
        if text != self.last_problem {
            for l in text.lines() {
                console::marker(l);
            }
            say!(
                "waiting for a valid config (looking again every {} s)",
                RETRY.as_secs()
            );
            self.last_problem = text;
        }
    }

    /// Look for the config when there is no service, or the service stopped on a bad config.
    fn look_for_config(&mut self) {
        let wanted = match &self.site {
            None => true,
            Some(s) => matches!(&s.state, State::Stopped { why } if why == "bad config"),
        };
        if !wanted || Instant::now() < self.next_look || self.shutting_down {
            return;
        }
        self.next_look = Instant::now() + RETRY;
        match config::discover() {
            Found::Missing(why) => self.problem(format!("sitelink: no config: {why}")),
            Found::Invalid { source, messages } => self.problem(format!(
                "sitelink: invalid config on {source}:\n{}",
                messages.join("\n")
            )),
            Found::Valid {
                cfg,
                path,
                source,
                fingerprint,
            } => {
                if self.site.is_some() && fingerprint == self.fingerprint {
                    return; // the same config the service refused: wait for a change
                }
                self.last_problem.clear();
                self.fingerprint = fingerprint;
                say!(
                    "config for site {} of network {} from {source}: {} tunnel interfaces",
                    cfg.site,
                    cfg.network,
                    cfg.interfaces.len()
                );
                self.configure(&cfg);
                self.start_site(&path);
                self.cfg = Some(*cfg);
            }
        }
    }

    fn configure(&mut self, cfg: &SiteConfig) {
        if self.configured {
            return;
        }
        self.configured = true;
        if let Err(e) = nix::unistd::sethostname(&cfg.site) {
            say!("cannot set hostname {}: {}", cfg.site, e.desc());
        }
        boot::sysctls();
        if let Some(wan) = boot::network(cfg) {
            dhcp::spawn(wan, cfg.site.clone());
        }
    }

    fn start_site(&mut self, config: &Path) {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
        let mut s = Service::new(
            "site",
            "sitelink-router",
            vec![
                exe.display().to_string(),
                "site".into(),
                config.display().to_string(),
            ],
        );
        s.start();
        self.site = Some(s);
    }

    fn check_ready(&mut self) {
        if self.ready {
            return;
        }
        let (Some(cfg), Some(site)) = (&self.cfg, &self.site) else {
            return;
        };
        if site.pid().is_none() {
            return;
        }
        let all = cfg
            .interfaces
            .iter()
            .all(|i| Path::new("/sys/class/net").join(&i.name).exists());
        if all {
            self.ready = true;
            console::marker(&format!("{READY}{}", cfg.site));
        }
    }

    fn service(&self, name: Option<&str>) -> Option<&Service> {
        self.site
            .as_ref()
            .filter(|s| name.is_none_or(|n| n == s.name))
    }

    fn command(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let arg = words.next();
        match verb {
            "status" => {
                say!(
                    "ready: {}; config: {}",
                    self.ready,
                    self.cfg.as_ref().map_or("none", |c| c.site.as_str())
                );
                match &self.site {
                    Some(s) => say!("{}", s.status()),
                    None => say!("no services"),
                }
            }
            "log" => match self.service(arg) {
                Some(s) => {
                    let ring = s.ring.lock().unwrap_or_else(|p| p.into_inner());
                    for l in ring.iter() {
                        console::line(&format!("{} (log)", s.name), l);
                    }
                }
                None => say!("no such service"),
            },
            "kill" | "term" => {
                let sig = if verb == "kill" {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                };
                match self.service(arg) {
                    Some(s) if s.signal(sig) => say!("{}: sent {sig}", s.name),
                    Some(s) => say!("{}: not running", s.name),
                    None => say!("no such service"),
                }
            }
            "ip" => match net::Netlink::open().and_then(|mut nl| Ok((nl.links()?, nl.addrs()?))) {
                Ok((links, addrs)) => {
                    for l in links {
                        let a: Vec<String> = addrs
                            .iter()
                            .filter(|(i, _)| *i == l.index)
                            .map(|(_, a)| a.to_string())
                            .collect();
                        say!(
                            "ip: {} {} {} {}",
                            l.name,
                            if l.up { "up" } else { "down" },
                            l.mac.as_deref().unwrap_or("-"),
                            a.join(" ")
                        );
                    }
                }
                Err(e) => say!("ip: {e}"),
            },
            "cat" => match arg {
                Some(path) if !catable(path) => say!(
                    "cat: {path}: only /proc, /sys, /etc, {}/site.toml and {ROUTED_STATUS} are shown (never keys)",
                    config::CONFIG_DIR
                ),
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => {
                        text.lines().for_each(|l| say!("cat: {l}"));
                        // Lets a program on the other end of the console (`sitelink lab
                        // status`) know the file is complete.
                        say!("cat: {CAT_END} {path}");
                    }
                    Err(e) => say!("cat: {path}: {e}"),
                },
                None => say!("cat FILE"),
            },
            "poweroff" => self.shutdown("console command"),
            _ => say!(
                "commands: status, ip, cat FILE, log [SERVICE], kill [SERVICE], term [SERVICE], poweroff"
            ),
        }
    }

    fn running(&self) -> bool {
        self.site.as_ref().is_some_and(|s| s.pid().is_some())
    }

    /// Stop services (SIGTERM, SIGKILL after 5 s), flush our routes, sync, power off.
    fn shutdown(&mut self, why: &str) -> ! {
        self.shutdown_as(why, nix::sys::reboot::RebootMode::RB_POWER_OFF)
    }

    /// [`Init::shutdown`], then power off or reboot.
    fn shutdown_as(&mut self, why: &str, mode: nix::sys::reboot::RebootMode) -> ! {
        say!("shutting down ({why})");
        self.shutting_down = true;
        if let Some(s) = &self.site {
            s.signal(Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            self.reap();
        }
        if self.running() {
            if let Some(s) = &self.site {
                say!(
                    "{}: still running after {} s; SIGKILL",
                    s.name,
                    STOP_TIMEOUT.as_secs()
                );
                s.signal(Signal::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                self.reap();
            }
        }
        match net::Netlink::open().and_then(|mut nl| nl.flush_routes(&OUR_ROUTE_PROTOCOLS)) {
            Ok(n) => say!("removed {n} routes"),
            Err(e) => say!("cannot remove routes: {e}"),
        }
        nix::unistd::sync();
        let what = if mode == nix::sys::reboot::RebootMode::RB_AUTOBOOT {
            "reboot"
        } else {
            "power off"
        };
        console::marker(&format!("sitelink: {what}"));
        let err = nix::sys::reboot::reboot(mode);
        say!("{what} failed: {err:?}; halting here");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Files the `cat` console command may show: diagnostics, never key material.
fn catable(path: &str) -> bool {
    let p = Path::new(path);
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return false;
    }
    ["/proc/", "/sys/", "/etc/"]
        .iter()
        .any(|d| path.starts_with(d))
        || p == Path::new(config::CONFIG_DIR).join("site.toml")
        || p == Path::new(ROUTED_STATUS)
}

/// `sitelink-router init [--check DIR]`. As PID 1 this is the init; otherwise only `--check DIR`
/// works (validate a config directory as the init would), so nothing on a host is ever mounted
/// or powered off by accident.
pub fn cli(args: &[String]) -> ExitCode {
    if std::process::id() == 1 {
        run();
    }
    match args {
        [flag, dir] if flag == "--check" => match config::check_dir(Path::new(dir), dir) {
            Found::Valid { cfg, .. } => {
                println!(
                    "config for site {} of network {}: valid ({} tunnel interfaces)",
                    cfg.site,
                    cfg.network,
                    cfg.interfaces.len()
                );
                ExitCode::SUCCESS
            }
            Found::Missing(why) => {
                eprintln!("{why}");
                ExitCode::from(1)
            }
            Found::Invalid { messages, .. } => {
                for m in messages {
                    eprintln!("{m}");
                }
                ExitCode::from(supervise::EXIT_NO_RESTART as u8)
            }
        },
        _ => {
            eprintln!("sitelink-router init: this is PID 1 of the image and refuses to run as pid {} (it mounts file systems and powers the machine off); use `sitelink-router init --check DIR` to check a config directory", std::process::id());
            ExitCode::from(2)
        }
    }
}
