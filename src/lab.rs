//! `sitelink lab ...`: the network on this machine. The wiring is `sitelink_lab`'s; this module
//! starts the routers (QEMU VMs booted from the image, or router processes in namespaces),
//! waits for the mesh, and reads each router's status (through the VM's serial console, or
//! `nsenter` into the router process).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use sitelink_config::keys::{write_secret, Keystore};
use sitelink_config::network::Network;
use sitelink_config::site;
use sitelink_lab::netns::{self, run_dir, Mode};
use sitelink_lab::plan::{LabPlan, SitePlan};
use sitelink_lab::vm::{self, VmFiles, VmImage};
use sitelink_routes::probe::ProbeState;
use sitelink_routes::status::{Status, DEVICE_PATH};

use crate::{load_network, CliError, Result};

pub mod bench;

/// How long `lab up` waits for every tunnel and every LAN pair, per mode (TCG guests boot slowly
/// on a small machine).
fn mesh_timeout(mode: Mode) -> Duration {
    match mode {
        Mode::Netns => Duration::from_secs(90),
        Mode::Vm => Duration::from_secs(300),
    }
}

/// The marker the image's init prints once its services run.
const READY: &str = "sitelink: ready site=";

fn plan(path: &Path) -> Result<(Network, LabPlan)> {
    let net = load_network(path)?;
    let plan = LabPlan::new(&net)
        .map_err(|e| CliError::Usage(anyhow!("{}: cannot run as a lab: {e}", path.display())))?;
    Ok((net, plan))
}

/// How long a status question to a VM's console may take. Sites are asked in parallel.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the lab keeps across runs: `/var/lib/sitelink-lab/<network>/` (keys, the VM image).
fn state_dir(network: &str) -> PathBuf {
    PathBuf::from("/var/lib/sitelink-lab").join(network)
}

fn keystore(network: &str) -> Keystore {
    Keystore::new(state_dir(network).join("keys"))
}

fn sites_list(plan: &LabPlan) -> String {
    plan.sites
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn site<'a>(plan: &'a LabPlan, name: &str) -> Result<&'a SitePlan> {
    plan.site(name).ok_or_else(|| {
        CliError::Usage(anyhow!(
            "no site {name:?} in the lab; sites are {}",
            sites_list(plan)
        ))
    })
}

/// The device binary: next to this executable, or `$SITELINK_ROUTER`.
fn router_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("SITELINK_ROUTER") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("sitelink-router"),
    };
    if !path.exists() {
        return Err(anyhow!("router binary {} not found; build it with `cargo build --release` or set SITELINK_ROUTER", path.display()).into());
    }
    Ok(path)
}

/// Shell prelude (run by `sh -c`) that gives the router private /run directories, then execs it.
const PRIVATE_RUN: &str = "mkdir -p /run/wireguard /run/sitelink && mount -t tmpfs -o mode=0755 sitelink /run/wireguard && mount -t tmpfs -o mode=0755 sitelink /run/sitelink && exec \"$0\" \"$@\"";

/// The route installer's status of one site's router: read through the VM's serial console, or
/// from the router process's private /run.
fn routed_status(network: &str, mode: Mode, s: &SitePlan) -> std::result::Result<Status, String> {
    let text = match mode {
        Mode::Vm => {
            vm::require_running(network, &s.name).map_err(|e| e.to_string())?;
            let sock = VmFiles::new(network, &s.name).console_sock;
            vm::console_cat(&sock, DEVICE_PATH, CONSOLE_TIMEOUT).map_err(|e| e.to_string())??
        }
        Mode::Netns => {
            let pid_file = run_dir(network).join(&s.name).join("router.pid");
            let pid = fs::read_to_string(&pid_file)
                .map_err(|e| format!("{}: {e}", pid_file.display()))?;
            let out = Command::new("nsenter")
                .args([
                    "--target",
                    pid.trim(),
                    "--mount",
                    "--net",
                    "cat",
                    DEVICE_PATH,
                ])
                .output()
                .map_err(|e| format!("cannot run nsenter: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    Status::parse(&text).map_err(|e| format!("{DEVICE_PATH}: {e}"))
}

/// Write each site's config and key under the run directory and start its router process.
fn start_routers(net: &Network, plan: &LabPlan) -> Result<()> {
    let store = keystore(&net.name);
    let names: Vec<&str> = net.sites.iter().map(|s| s.name.as_str()).collect();
    store.init(&names, None)?;
    for s in &plan.sites {
        let cfg = site::render(net, &s.name, |n| store.public(n).map_err(|e| e.to_string()))?;
        let dir = run_dir(&net.name).join(&s.name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let config = dir.join("site.toml");
        fs::write(&config, cfg.to_toml())
            .with_context(|| format!("cannot write {}", config.display()))?;
        write_secret(&dir.join("site.key"), &store.private(&s.name)?.to_base64())?;
        start_router(&net.name, s)?;
    }
    Ok(())
}

/// Start the router of one site on the config already in its run directory; its output goes to
/// `router.log` (appended), its pid to `router.pid`.
fn start_router(network: &str, s: &SitePlan) -> Result<()> {
    let binary = router_binary()?;
    let dir = run_dir(network).join(&s.name);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("router.log"))?;
    // `ip netns exec` runs the router in a mount namespace of its own; private /run/wireguard
    // and /run/sitelink keep the routers' control sockets and status files apart (every site
    // but one has a `wg-aws`, for example).
    let child = Command::new("ip")
        .args(["netns", "exec", &s.router_ns, "sh", "-c", PRIVATE_RUN])
        .arg(&binary)
        .arg("site")
        .arg(dir.join("site.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the router of {}", s.name))?;
    fs::write(dir.join("router.pid"), format!("{}\n", child.id()))?;
    Ok(())
}

/// Build (or refresh: the build is cached and reproducible) the lab's image, with the lab's
/// keys, under the state directory.
fn build_image(path: &Path, network: &str) -> Result<VmImage> {
    let out = state_dir(network).join("image");
    let mut opts = sitelink_image::BuildOptions::new(path, &out);
    opts.keys = Some(keystore(network).dir().to_owned());
    let started = Instant::now();
    sitelink_image::build(&opts).with_context(|| {
        format!(
            "cannot build the lab's image of {} into {}",
            path.display(),
            out.display()
        )
    })?;
    outln!(
        "lab {network}: image ready in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(VmImage {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initramfs.img"),
    })
}

/// Copy each site's config disk next to its VM and start the VMs.
fn start_vms(plan: &LabPlan, image: &VmImage, accel: &str) -> Result<()> {
    let disks = image
        .kernel
        .parent()
        .map(|d| d.join("sites"))
        .unwrap_or_default();
    for (i, s) in plan.sites.iter().enumerate() {
        let files = VmFiles::new(&plan.network, &s.name);
        fs::create_dir_all(&files.dir)
            .with_context(|| format!("cannot create {}", files.dir.display()))?;
        fs::set_permissions(&files.dir, fs::Permissions::from_mode(0o700))?;
        let disk = disks.join(format!("{}.cidata.img", s.name));
        fs::copy(&disk, &files.disk).with_context(|| {
            format!("cannot copy {} to {}", disk.display(), files.disk.display())
        })?;
        fs::set_permissions(&files.disk, fs::Permissions::from_mode(0o600))?;
        vm::start(plan, i, image, accel)?;
    }
    Ok(())
}

/// The `stop` and `kill` of `lab restart`, or Ctrl-C, as a channel.
fn ctrl_c() -> Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(rx)
}

/// The (from, to) LAN pairs that must reach each other: every pair of sites with a tunnel or a
/// common neighbour (validate warns about the others), and each site itself.
fn expected_pairs(net: &Network) -> Vec<(String, String)> {
    let n = net.sites.len();
    let mut pairs = Vec::new();
    for a in 0..n {
        for b in 0..n {
            if a == b || net.link(a, b).is_some() || !net.transits(a, b).is_empty() {
                pairs.push((net.sites[a].name.clone(), net.sites[b].name.clone()));
            }
        }
    }
    pairs
}

/// One site while `lab up` waits, and in its table.
struct Progress {
    started: Instant,
    /// Since start: the init said ready (VM), or the process started (netns).
    booted: Option<Duration>,
    /// Since start: first seen with every tunnel's probe up.
    tunnels_up: Option<Duration>,
    status: Option<Status>,
}

fn all_up(status: &Status) -> bool {
    !status.tunnels.is_empty() && status.tunnels.iter().all(|t| t.state == ProbeState::Up)
}

/// Wait until every site's tunnels are all up and every LAN pair answers a ping.
fn wait_mesh(
    net: &Network,
    plan: &LabPlan,
    mode: Mode,
    progress: &mut [Progress],
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    let pairs = expected_pairs(net);
    let start = Instant::now();
    let timeout = mesh_timeout(mode);
    loop {
        if cancelled() {
            return Err(netns::LabError::Cancelled.into());
        }
        for (s, p) in plan.sites.iter().zip(progress.iter_mut()) {
            if p.booted.is_none() {
                let booted = match mode {
                    Mode::Netns => true,
                    Mode::Vm => fs::read_to_string(VmFiles::new(&net.name, &s.name).console_log)
                        .is_ok_and(|log| log.contains(&format!("{READY}{}", s.name))),
                };
                if booted {
                    p.booted = Some(p.started.elapsed());
                }
            }
            // Ask a booted router for its status until its tunnels are all up (each question
            // shows on a VM's console, so no more often than needed).
            if p.booted.is_some() && p.tunnels_up.is_none() {
                if let Ok(status) = routed_status(&net.name, mode, s) {
                    if all_up(&status) {
                        p.tunnels_up = Some(p.started.elapsed());
                    }
                    p.status = Some(status);
                }
            }
        }
        if progress.iter().all(|p| p.tunnels_up.is_some()) {
            let failed = netns::unreachable_pairs(plan, &pairs, cancelled);
            if failed.is_empty() {
                outln!(
                    "lab {}: every tunnel is up and all {} LAN pairs reach each other, {:.1} s after the routers started",
                    net.name,
                    pairs.len(),
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if start.elapsed() > timeout {
                let pairs: Vec<String> = failed.iter().map(|(a, b)| format!("{a}->{b}")).collect();
                return Err(anyhow!(
                    "timed out after {} s: every tunnel is up but these LAN pairs do not reach each other: {}",
                    timeout.as_secs(),
                    pairs.join(" ")
                )
                .into());
            }
        } else if start.elapsed() > timeout {
            let waiting: Vec<String> = plan
                .sites
                .iter()
                .zip(progress.iter())
                .filter(|(_, p)| p.tunnels_up.is_none())
                .map(|(s, p)| {
                    let why = match (&p.booted, &p.status) {
                        (None, _) => "not booted".to_owned(),
                        (Some(_), None) => "no status".to_owned(),
                        (Some(_), Some(st)) => st
                            .tunnels
                            .iter()
                            .filter(|t| t.state != ProbeState::Up)
                            .map(|t| format!("{} {} ({})", t.interface, t.state, t.reason))
                            .collect::<Vec<_>>()
                            .join(", "),
                    };
                    format!("{}: {why}", s.name)
                })
                .collect();
            return Err(anyhow!(
                "timed out after {} s waiting for every tunnel: {}",
                timeout.as_secs(),
                waiting.join("; ")
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What `lab up` measured.
#[derive(Debug)]
pub struct UpReport {
    pub network: String,
    /// Building (or finding cached) the image; VM mode only.
    pub image: Option<Duration>,
    /// From building the namespaces to every tunnel up and every LAN pair answering.
    pub to_mesh: Duration,
    /// Per site, since its router started: booted (VM: `sitelink: ready`) and all tunnels up.
    pub sites: Vec<(String, Option<Duration>, Option<Duration>)>,
}

/// Build the lab and start its routers; return once every tunnel is up and every LAN pair
/// answers (or, with `no_routers`, once the wiring exists). On failure the lab is taken down.
/// `cancelled` is polled while waiting (Ctrl-C).
pub fn bring_up(
    path: &Path,
    mode: Mode,
    no_routers: bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<UpReport> {
    let (net, plan) = plan(path)?;
    let mut report = UpReport {
        network: net.name.clone(),
        image: None,
        to_mesh: Duration::ZERO,
        sites: Vec::new(),
    };
    let image = match (mode, no_routers) {
        (Mode::Vm, false) => {
            vm::check_qemu()?;
            if netns::namespaces_with_prefix(&sitelink_lab::plan::ns_prefix(&net.name))?.is_empty()
            {
                let started = Instant::now();
                let image = match build_image(path, &net.name) {
                    Err(_) if cancelled() => return Err(netns::LabError::Cancelled.into()),
                    other => other?,
                };
                report.image = Some(started.elapsed());
                Some(image)
            } else {
                // Let `build` say the lab is up before spending time on an image.
                None
            }
        }
        _ => None,
    };
    if cancelled() {
        return Err(netns::LabError::Cancelled.into());
    }
    let accel = match &image {
        Some(img) => {
            let (accel, why) = vm::accel(img)?;
            outln!("lab {}: VMs run under {why}", net.name);
            Some(accel)
        }
        None => None,
    };
    let start = Instant::now();
    let me = std::env::current_exe().context("cannot find this executable")?;
    netns::build(&plan, &me, mode)?;
    outln!(
        "lab {}: {} namespaces built in {:.1} s",
        net.name,
        plan.namespaces().len(),
        start.elapsed().as_secs_f64()
    );
    if no_routers {
        print_plan(&plan);
        report.to_mesh = start.elapsed();
        return Ok(report);
    }
    let mut progress = Vec::new();
    let result = (|| -> Result<()> {
        let now = Instant::now();
        match (&image, accel) {
            (Some(image), Some(accel)) => start_vms(&plan, image, accel)?,
            _ => start_routers(&net, &plan)?,
        }
        progress = plan
            .sites
            .iter()
            .map(|_| Progress {
                started: now,
                booted: None,
                tunnels_up: None,
                status: None,
            })
            .collect();
        if mode == Mode::Vm {
            outln!(
                "lab {}: {} VMs started; their serial consoles log to {}/<site>/console.log",
                net.name,
                plan.sites.len(),
                run_dir(&net.name).display()
            );
        }
        wait_mesh(&net, &plan, mode, &mut progress, cancelled)
    })();
    if let Err(e) = result {
        let interrupted = matches!(&e, CliError::Failed(f) if matches!(f.downcast_ref(), Some(netns::LabError::Cancelled)));
        if interrupted {
            eprintln!("sitelink: interrupted; taking the lab down");
        } else {
            eprintln!("sitelink: lab up failed; the last lines of each router's log follow, then the lab is taken down");
            print_logs(&net.name, &plan, mode);
        }
        if let Err(down) = netns::down(&net.name) {
            eprintln!(
                "sitelink: could not take the lab down: {down}; run `sitelink lab down {}`",
                path.display()
            );
        }
        return Err(e);
    }
    report.to_mesh = start.elapsed();
    // The table shows the routers as they are now, not when each first had all tunnels up.
    let now = statuses(&net.name, mode, &plan);
    for (p, st) in progress.iter_mut().zip(now) {
        if let Ok(st) = st {
            p.status = Some(st);
        }
    }
    print_table(&plan, mode, &progress);
    report.sites = plan
        .sites
        .iter()
        .zip(&progress)
        .map(|(s, p)| (s.name.clone(), p.booted, p.tunnels_up))
        .collect();
    Ok(report)
}

/// `sitelink lab up NETWORK [--mode vm|netns] [--detach]`
pub fn up(path: &Path, mode: &str, detach: bool, no_routers: bool) -> Result<()> {
    let mode: Mode = mode
        .parse()
        .map_err(|e: String| CliError::Usage(anyhow!(e)))?;
    // Catch Ctrl-C from the start, so an interrupted `up` still cleans up.
    let rx = ctrl_c()?;
    let report = bring_up(path, mode, no_routers, &|| rx.try_recv().is_ok())?;
    if detach {
        return Ok(());
    }
    outln!("lab {} is up; Ctrl-C takes it down", report.network);
    let _ = rx.recv();
    netns::down(&report.network)?;
    outln!("lab {} is down", report.network);
    Ok(())
}

/// A router's log: the VM's serial console, or the router process's output.
fn log_path(network: &str, mode: Mode, site: &str) -> PathBuf {
    match mode {
        Mode::Vm => VmFiles::new(network, site).console_log,
        Mode::Netns => run_dir(network).join(site).join("router.log"),
    }
}

fn print_logs(network: &str, plan: &LabPlan, mode: Mode) {
    for s in &plan.sites {
        if let Ok(text) = fs::read_to_string(log_path(network, mode, &s.name)) {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            for line in tail.into_iter().rev() {
                eprintln!("[{}] {line}", s.name);
            }
        }
    }
}

fn public(s: &SitePlan) -> String {
    if s.nat.is_some() {
        format!("{} (NAT)", s.public)
    } else {
        s.public.to_string()
    }
}

/// The wiring only (`--no-routers`).
fn print_plan(plan: &LabPlan) {
    outln!(
        "{:<12} {:<22} {:<16} {:<24} delay",
        "site",
        "WAN",
        "lan host",
        "router ns"
    );
    for s in &plan.sites {
        outln!(
            "{:<12} {:<22} {:<16} {:<24} {} ms",
            s.name,
            public(s),
            s.host.addr(),
            s.router_ns,
            s.delay_ms
        );
    }
}

/// `3/3` and `gcp 2.91  azure 3.40 ...` of a status.
fn peers(status: Option<&Status>) -> (String, String) {
    let Some(st) = status else {
        return ("-".into(), "-".into());
    };
    let up = st
        .tunnels
        .iter()
        .filter(|t| t.state == ProbeState::Up)
        .count();
    let rtts: Vec<String> = st
        .tunnels
        .iter()
        .map(|t| {
            let peer = t.interface.strip_prefix("wg-").unwrap_or(&t.interface);
            match (t.state, t.rtt_us) {
                (ProbeState::Up, Some(us)) => format!("{peer} {:.2}", us as f64 / 1000.0),
                (state, _) => format!("{peer} {state}"),
            }
        })
        .collect();
    (format!("{up}/{}", st.tunnels.len()), rtts.join("  "))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn print_table(plan: &LabPlan, mode: Mode, progress: &[Progress]) {
    let boot = match mode {
        Mode::Vm => "boot s",
        Mode::Netns => "start s",
    };
    outln!(
        "\n{:<10} {:<22} {:<8} {:<44} {:>7} {:>7}",
        "site",
        "WAN",
        "peers up",
        "RTT per peer (ms, probe)",
        boot,
        "ready s"
    );
    for (s, p) in plan.sites.iter().zip(progress) {
        let (up, rtts) = peers(p.status.as_ref());
        outln!(
            "{:<10} {:<22} {:<8} {:<44} {:>7} {:>7}",
            s.name,
            public(s),
            up,
            rtts,
            secs(p.booted),
            secs(p.tunnels_up)
        );
    }
    match mode {
        Mode::Vm => outln!("(boot s: QEMU start to the init's `sitelink: ready`; ready s: to every tunnel's probe up."),
        Mode::Netns => outln!("(start s: router process started; ready s: to every tunnel's probe up."),
    }
    outln!(" LAN hosts are .10 of each LAN: `sitelink lab exec NETWORK SITE -- CMD`.)");
}

/// `sitelink lab down NETWORK`. Needs only the network's name, so a file edited into an invalid
/// state while its lab runs can still take the lab down.
pub fn down(path: &Path) -> Result<()> {
    let name = match load_network(path) {
        Ok(net) => net.name,
        Err(e) => {
            let name = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
                .and_then(|t| t.get("name")?.as_str().map(str::to_owned))
                .filter(|n| sitelink_config::network::valid_network_name(n));
            match name {
                Some(name) => {
                    eprintln!("sitelink: taking down the lab of network {name:?} anyway");
                    name
                }
                None => return Err(e),
            }
        }
    };
    let removed = netns::down(&name)?;
    if removed.is_empty() {
        outln!("lab {name}: was not up (no namespace sl_{name}_*); nothing to do");
    } else {
        outln!(
            "lab {name}: removed {} namespaces (and the processes, VMs and TAPs in them)",
            removed.len()
        );
    }
    Ok(())
}

/// Every site's route installer status, asked in parallel (a VM's console answers slowly).
fn statuses(network: &str, mode: Mode, plan: &LabPlan) -> Vec<std::result::Result<Status, String>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .sites
            .iter()
            .map(|s| scope.spawn(move || routed_status(network, mode, s)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("status thread failed".to_owned()))
            })
            .collect()
    })
}

/// One site in `lab status`.
#[derive(Debug, serde::Serialize)]
struct SiteReport {
    site: String,
    mode: &'static str,
    wan: String,
    lan_host: String,
    namespaces_up: bool,
    /// Processes in the router namespace (the router, or QEMU).
    pids: Vec<u32>,
    routed: Option<Status>,
    error: Option<String>,
}

/// `sitelink lab status NETWORK [--json]`: namespaces and processes, then each router's tunnels
/// (probe state, RTT, routes in or out) and the path each remote prefix takes.
pub fn status(path: &Path, json: bool) -> Result<()> {
    let (_, plan) = plan(path)?;
    let mode = netns::mode(&plan.network)?;
    let sites = netns::status(&plan)?;
    let routed = statuses(&plan.network, mode, &plan);
    let reports: Vec<SiteReport> = sites
        .into_iter()
        .zip(&plan.sites)
        .zip(routed)
        .map(|((st, s), routed)| {
            let (routed, error) = match routed {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            };
            SiteReport {
                site: st.site,
                mode: mode.as_str(),
                wan: public(s),
                lan_host: st.lan_host,
                namespaces_up: st.namespaces_up,
                pids: st.router_pids,
                routed,
                error,
            }
        })
        .collect();
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    outln!(
        "{:<10} {:<22} {:<16} {:<6} {:<8} {}",
        "site",
        "WAN",
        "lan host",
        "up",
        "peers up",
        if mode == Mode::Vm {
            "QEMU pid"
        } else {
            "router pids"
        }
    );
    for r in &reports {
        let mut pids: Vec<String> = r.pids.iter().map(ToString::to_string).collect();
        if pids.is_empty() && r.namespaces_up {
            pids.push(
                if mode == Mode::Vm {
                    "VM down"
                } else {
                    "router down"
                }
                .to_owned(),
            );
        }
        outln!(
            "{:<10} {:<22} {:<16} {:<6} {:<8} {}",
            r.site,
            r.wan,
            r.lan_host,
            r.namespaces_up,
            peers(r.routed.as_ref()).0,
            pids.join(" ")
        );
    }
    for r in &reports {
        outln!("\n== {} ==", r.site);
        match (&r.routed, &r.error) {
            (Some(st), _) => print_routed(st),
            (None, Some(e)) => outln!("no status: {e}"),
            (None, None) => {}
        }
    }
    Ok(())
}

fn print_routed(st: &Status) {
    outln!("last apply: {}", st.last_apply);
    outln!(
        "{:<15} {:<6} {:<10} {:<7} reason",
        "interface",
        "probe",
        "rtt",
        "routes"
    );
    for t in &st.tunnels {
        let rtt = t
            .rtt_us
            .map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0));
        outln!(
            "{:<15} {:<6} {:<10} {:<7} {}",
            t.interface,
            t.state.to_string(),
            rtt,
            if t.routable { "in" } else { "out" },
            t.reason
        );
    }
    outln!("{:<20} {:<15} {:<7} path", "prefix", "via", "metric");
    for p in &st.prefixes {
        outln!(
            "{:<20} {:<15} {:<7} {}",
            p.prefix.to_string(),
            p.via.as_deref().unwrap_or("-"),
            p.metric.map_or("-".into(), |m| m.to_string()),
            p.path
        );
    }
}

/// `sitelink lab exec NETWORK SITE -- CMD...`: the command's exit code.
pub fn exec(path: &Path, site: &str, argv: &[String]) -> Result<i32> {
    let (_, plan) = plan(path)?;
    Ok(netns::exec(&plan, site, argv)?)
}

/// `sitelink lab cut|heal NETWORK A B`
pub fn cut(path: &Path, a: &str, b: &str, heal: bool) -> Result<()> {
    let (_, plan) = plan(path)?;
    if a == b {
        return Err(CliError::Usage(anyhow!(
            "{a} and {b} are the same site; name two sites"
        )));
    }
    match (netns::cut(&plan, a, b, heal)?, heal) {
        (true, true) => outln!("healed {a} <-> {b}"),
        (true, false) => outln!("cut {a} <-> {b}"),
        (false, true) => outln!("{a} <-> {b} was not cut; nothing to heal"),
        (false, false) => outln!("{a} <-> {b} was cut already"),
    }
    Ok(())
}

/// `sitelink lab restart NETWORK SITE [--kill]`: stop a site's router service (SIGTERM, or
/// SIGKILL to simulate a crash) and have it start again. In a VM the image's init restarts it
/// (asked on the serial console); in namespace mode this command starts it again.
pub fn restart(path: &Path, site_name: &str, kill: bool) -> Result<()> {
    let (net, plan) = plan(path)?;
    let s = site(&plan, site_name)?;
    let how = if kill {
        "after SIGKILL"
    } else {
        "after SIGTERM"
    };
    if netns::mode(&net.name)? == Mode::Vm {
        vm::require_running(&net.name, site_name)?;
        let sock = VmFiles::new(&net.name, site_name).console_sock;
        let verb = if kill { "kill" } else { "term" };
        let answer = vm::console_ask(
            &sock,
            &format!("{verb} site"),
            &|l: &str| l.contains("init: site: sent") || l.contains("init: site: not running"),
            Duration::from_secs(10),
        )?;
        if answer.contains("not running") {
            return Err(anyhow!(
                "the router service of {site_name} is not running (see `sitelink lab console {} {site_name}`)",
                path.display()
            )
            .into());
        }
        outln!("stopped the router service of {site_name} ({how}); its init restarts it");
        return Ok(());
    }
    let pid_file = run_dir(&net.name).join(site_name).join("router.pid");
    let pid = fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read {} (is the lab up?)", pid_file.display()))?;
    let pid = pid.trim().to_owned();
    let signal = if kill { "-KILL" } else { "-TERM" };
    let _ = Command::new("kill").args([signal, &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while netns::alive(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if netns::alive(&pid) {
        return Err(
            anyhow!("the router of {site_name} (pid {pid}) did not stop within 10 s").into(),
        );
    }
    start_router(&net.name, s)?;
    outln!("restarted the router of {site_name} ({how})");
    Ok(())
}

/// `sitelink lab reboot NETWORK SITE`: reset a router VM (like its power button held and
/// pressed again): it boots again and reads its config disk again.
pub fn reboot(path: &Path, site_name: &str) -> Result<()> {
    let (net, plan) = plan(path)?;
    site(&plan, site_name)?;
    if netns::mode(&net.name)? != Mode::Vm {
        return Err(CliError::Usage(anyhow!(
            "the lab of {} runs routers as processes (--mode netns); use `sitelink lab restart`",
            net.name
        )));
    }
    vm::require_running(&net.name, site_name)?;
    let answer = vm::qmp(&VmFiles::new(&net.name, site_name).qmp_sock, "system_reset")?;
    if !answer.contains("\"return\"") {
        return Err(anyhow!(
            "QEMU refused system_reset of {site_name}: {}",
            answer.trim()
        )
        .into());
    }
    outln!("reset the VM of {site_name}; it boots again");
    Ok(())
}

/// `sitelink lab console NETWORK SITE [--attach]`: follow a router's log (a VM's serial console,
/// or a router process's output) until Ctrl-C; with `--attach`, type on the VM's console.
pub fn console(path: &Path, site_name: &str, attach: bool) -> Result<()> {
    let (net, plan) = plan(path)?;
    site(&plan, site_name)?;
    let mode = netns::mode(&net.name)?;
    if attach {
        if mode != Mode::Vm {
            return Err(CliError::Usage(anyhow!(
                "routers in --mode netns are processes without a console; `sitelink lab console` without --attach follows their log"
            )));
        }
        return attach_console(&VmFiles::new(&net.name, site_name).console_sock);
    }
    let rx = ctrl_c()?;
    let log = log_path(&net.name, mode, site_name);
    let mut file =
        fs::File::open(&log).with_context(|| format!("cannot open {}", log.display()))?;
    eprintln!(
        "sitelink: following {} from the start; Ctrl-C to stop",
        log.display()
    );
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", log.display()))?;
        if !buf.is_empty() {
            let mut out = std::io::stdout().lock();
            if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                return Ok(()); // stdout closed (a pager quit)
            }
        }
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        // A log that shrank was started again (a new `lab up`): read it from the start.
        let len = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let pos = file.stream_position().unwrap_or(0);
        if len < pos {
            file.seek(SeekFrom::Start(0))?;
        }
    }
}

/// Connect the terminal to a VM's serial console until stdin ends or the VM's side closes.
fn attach_console(sock: &Path) -> Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot connect to {} (is the lab up?)", sock.display()))?;
    eprintln!(
        "sitelink: attached to {}; type `help` for the init's commands, Ctrl-D to detach",
        sock.display()
    );
    let mut to_vm = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_vm);
        // Input ended (Ctrl-D, or the end of a piped command): show the answer, then detach.
        std::thread::sleep(Duration::from_secs(1));
        let _ = to_vm.shutdown(std::net::Shutdown::Both);
    });
    let mut from_vm = stream;
    let _ = std::io::copy(&mut from_vm, &mut std::io::stdout().lock());
    Ok(())
}

/// `sitelink lab-switch --ready FILE PORT...` (hidden): the lab's internet, started by `lab up`.
pub fn switch(ready: &Path, ports: &[String]) -> Result<()> {
    let ports: Vec<sitelink_lab::switch::Port> = ports
        .iter()
        .map(|p| p.parse())
        .collect::<std::result::Result<_, String>>()
        .map_err(|e| anyhow!(e))?;
    sitelink_lab::switch::run(&ports, ready).context("lab switch")?;
    Ok(())
}
