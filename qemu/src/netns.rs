//! The lab in namespace mode: build the topology of a [`LabPlan`], run one router process per
//! site, and take it all down again.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, ip_in, nft_in, run, run_in, CmdError};
use crate::plan::{ns_prefix, LabPlan, SitePlan};

/// What can go wrong running the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(
        "the lab of network {network:?} is already up ({ns} exists); run `sitelink lab down` first"
    )]
    AlreadyUp { network: String, ns: String },
    #[error("the lab of network {network:?} is not up (no namespace {ns})")]
    NotUp { network: String, ns: String },
    #[error("no site {site:?} in the lab; sites are {known}")]
    UnknownSite { site: String, known: String },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("the lab of network {network:?} is not up; start it with `sitelink lab up`")]
    NotRunning { network: String },
    #[error("the VM of site {site:?} is not running (its QEMU exited; see {log}); QEMU cannot be restarted alone: `sitelink lab down` then `sitelink lab up`")]
    VmDown { site: String, log: String },
    #[error("the lab needs root (network namespaces); run as root")]
    NotRoot,
    #[error("interrupted")]
    Cancelled,
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { secs: u64, what: String },
}

/// Where the lab keeps per-run files (configs, logs, pids): `/run/sitelink-lab/<network>`.
pub fn run_dir(network: &str) -> PathBuf {
    PathBuf::from(crate::plan::RUN_ROOT).join(network)
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |err| LabError::Io { what, err }
}

/// Names of existing namespaces that start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>, LabError> {
    let out = run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

pub(crate) fn check_root() -> Result<(), LabError> {
    let uid = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    });
    if uid.as_deref() == Some("0") {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Build the namespaces, links, addresses, delays and NAT of `plan`. On failure everything
/// already created is removed again.
///
/// `switch` is the program that runs the lab's internet (`sitelink`, whose hidden
/// `lab-switch` command runs [`crate::switch::run`]).
pub fn build(plan: &LabPlan, switch: &Path, mode: Mode) -> Result<(), LabError> {
    check_root()?;
    if let Some(ns) = namespaces_with_prefix(&ns_prefix(&plan.network))?
        .into_iter()
        .next()
    {
        return Err(LabError::AlreadyUp {
            network: plan.network.clone(),
            ns,
        });
    }
    let result = build_inner(plan, switch, mode);
    if result.is_err() {
        let _ = down(&plan.network);
    }
    result
}

fn build_inner(plan: &LabPlan, switch: &Path, mode: Mode) -> Result<(), LabError> {
    let dir = run_dir(&plan.network);
    fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    fs::write(dir.join("mode"), format!("{}\n", mode.as_str()))
        .map_err(io(format!("cannot write {}", dir.join("mode").display())))?;
    for ns in plan.namespaces() {
        run("ip", &["netns", "add", &ns])?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
    }
    start_switch(plan, switch)?;
    let inet = plan.inet_ns.as_str();
    ip_in(
        inet,
        &["addr", "add", &plan.internet.to_string(), "dev", "gw0"],
    )?;
    ip_in(inet, &["link", "set", "gw0", "up"])?;
    for site in &plan.sites {
        wan_uplink(plan, site)?;
        match mode {
            Mode::Netns => router_namespace(site)?,
            Mode::Vm => crate::vm::router_cable(site)?,
        }
    }
    Ok(())
}

/// Where the lab's routers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each router is a `sitelink-router site` process in its router namespace.
    Netns,
    /// Each router is a QEMU VM booted from the image; its router namespace holds the VM's
    /// cables (see [`crate::vm`]).
    Vm,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netns => "netns",
            Mode::Vm => "vm",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "netns" => Ok(Mode::Netns),
            "vm" => Ok(Mode::Vm),
            _ => Err(format!("{s:?} is not a lab mode; valid: vm, netns")),
        }
    }
}

/// The mode the running lab of `network` was built in (`lab up` records it).
pub fn mode(network: &str) -> Result<Mode, LabError> {
    let path = run_dir(network).join("mode");
    let text = match fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotRunning {
                network: network.to_owned(),
            })
        }
        other => other.map_err(io(format!("cannot read {}", path.display())))?,
    };
    text.trim()
        .parse()
        .map_err(|e: String| LabError::Failed(format!("{}: {e}", path.display())))
}

/// Start the internet switch in the internet namespace with a TAP port for the gateway and one
/// per site, and wait until its ports exist.
fn start_switch(plan: &LabPlan, switch: &Path) -> Result<(), LabError> {
    let dir = run_dir(&plan.network);
    fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let ready = dir.join("switch.ready");
    let _ = fs::remove_file(&ready);
    let log = fs::File::create(dir.join("switch.log")).map_err(io("cannot create switch.log"))?;
    let log2 = log.try_clone().map_err(io("cannot create switch.log"))?;
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), plan.inet_ns.clone()];
    args.push(switch.display().to_string());
    args.extend([
        "lab-switch".into(),
        "--ready".into(),
        ready.display().to_string(),
        "gw0:0".into(),
    ]);
    args.extend(
        plan.sites
            .iter()
            .map(|s| format!("{}:{}", s.bridge_port, s.delay_ms)),
    );
    let mut child = Command::new("ip")
        .args(&args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(io(format!("cannot start `{}`", cmd::cmdline("ip", &args))))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(dir.join("switch.log")).unwrap_or_default();
            return Err(LabError::Failed(format!(
                "the lab switch exited ({status}): {}",
                log.trim()
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                secs: 10,
                what: "the lab switch to create its ports".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `ip link add A netns X type veth peer name B netns Y`: both ends are created directly in
/// their namespaces, never in the host's.
fn veth(a: &str, a_ns: &str, b: &str, b_ns: &str) -> Result<(), LabError> {
    run(
        "ip",
        &[
            "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
        ],
    )?;
    Ok(())
}

/// The site's uplink: its switch port moves into the router namespace as `wan0`, or into the
/// NAT box as `out0` with a veth `wan0` (router) -- `in0` (NAT box) behind it.
fn wan_uplink(plan: &LabPlan, s: &SitePlan) -> Result<(), LabError> {
    let (r, inet) = (s.router_ns.as_str(), plan.inet_ns.as_str());
    // WAN: the site's switch port moves into the router (or its NAT box) as its uplink.
    match &s.nat {
        None => {
            ip_in(
                inet,
                &["link", "set", &s.bridge_port, "netns", r, "name", "wan0"],
            )?;
        }
        Some(nat) => {
            veth("wan0", r, "in0", &nat.ns)?;
            ip_in(
                inet,
                &[
                    "link",
                    "set",
                    &s.bridge_port,
                    "netns",
                    &nat.ns,
                    "name",
                    "out0",
                ],
            )?;
            ip_in(
                &nat.ns,
                &["addr", "add", &nat.inside.to_string(), "dev", "in0"],
            )?;
            ip_in(
                &nat.ns,
                &["addr", "add", &nat.outside.to_string(), "dev", "out0"],
            )?;
            ip_in(&nat.ns, &["link", "set", "in0", "up"])?;
            ip_in(&nat.ns, &["link", "set", "out0", "up"])?;
            run_in(&nat.ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            nft_in(
                &nat.ns,
                "table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  oifname \"out0\" masquerade\n }\n}\n",
            )?;
        }
    }
    Ok(())
}

/// Namespace mode: the router namespace is the router (WAN and LAN addresses, forwarding, the
/// `inet lab` table that `lab cut` fills), wired by veth to its LAN host.
fn router_namespace(s: &SitePlan) -> Result<(), LabError> {
    let (r, l) = (s.router_ns.as_str(), s.lan_ns.as_str());
    ip_in(r, &["addr", "add", &s.wan.to_string(), "dev", "wan0"])?;
    ip_in(r, &["link", "set", "wan0", "up"])?;
    ip_in(
        r,
        &["route", "add", "default", "via", &s.gateway.to_string()],
    )?;

    // LAN: router lan0 <-> host eth0 at .10.
    veth("lan0", r, "eth0", l)?;
    ip_in(r, &["addr", "add", &s.lan.to_string(), "dev", "lan0"])?;
    ip_in(r, &["link", "set", "lan0", "up"])?;
    if let Some(lan6) = s.lan6 {
        ip_in(
            r,
            &["addr", "add", &lan6.to_string(), "dev", "lan0", "nodad"],
        )?;
    }
    lan_host(s)?;
    run_in(r, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    // `lab cut` adds peers' public addresses to this set.
    nft_in(
        r,
        "table inet lab {\n set cut { type ipv4_addr; }\n chain input { type filter hook input priority 0; ip saddr @cut drop; }\n chain output { type filter hook output priority 0; ip daddr @cut drop; }\n}",
    )?;
    Ok(())
}

/// The LAN host: `eth0` (already in the LAN namespace) at .10 (and ::10), default route via the
/// router's LAN address.
pub(crate) fn lan_host(s: &SitePlan) -> Result<(), LabError> {
    let l = s.lan_ns.as_str();
    ip_in(l, &["addr", "add", &s.host.to_string(), "dev", "eth0"])?;
    ip_in(l, &["link", "set", "eth0", "up"])?;
    ip_in(
        l,
        &["route", "add", "default", "via", &s.lan.addr().to_string()],
    )?;
    if let (Some(lan6), Some(host6)) = (s.lan6, s.host6) {
        ip_in(
            l,
            &["addr", "add", &host6.to_string(), "dev", "eth0", "nodad"],
        )?;
        ip_in(
            l,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &lan6.addr().to_string(),
            ],
        )?;
    }
    Ok(())
}

/// Remove every namespace of the lab of `network` (found by name, so this also works after a
/// crash lost the state), after stopping every process inside them. Idempotent; touches nothing
/// else. Returns the namespaces removed.
pub fn down(network: &str) -> Result<Vec<String>, LabError> {
    check_root()?;
    let namespaces = namespaces_with_prefix(&ns_prefix(network))?;
    let mut pids: Vec<String> = Vec::new();
    for ns in &namespaces {
        pids.extend(
            run("ip", &["netns", "pids", ns])?
                .split_whitespace()
                .map(str::to_owned),
        );
    }
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
    for ns in &namespaces {
        run("ip", &["netns", "del", ns])?;
    }
    let dir = run_dir(network);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io(format!("cannot remove {}", dir.display())))?;
    }
    Ok(namespaces)
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
pub fn alive(pid: &str) -> bool {
    fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

pub(crate) fn require_up(plan: &LabPlan) -> Result<(), LabError> {
    let existing = namespaces_with_prefix(&ns_prefix(&plan.network))?;
    match plan
        .namespaces()
        .into_iter()
        .find(|ns| !existing.contains(ns))
    {
        None => Ok(()),
        Some(ns) => Err(LabError::NotUp {
            network: plan.network.clone(),
            ns,
        }),
    }
}

pub(crate) fn site<'a>(plan: &'a LabPlan, name: &str) -> Result<&'a SitePlan, LabError> {
    plan.site(name).ok_or_else(|| LabError::UnknownSite {
        site: name.to_owned(),
        known: plan
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Run `argv` in the LAN host namespace of `site_name`, with the caller's stdio. Returns its exit
/// code.
pub fn exec(plan: &LabPlan, site_name: &str, argv: &[String]) -> Result<i32, LabError> {
    check_root()?;
    require_up(plan)?;
    let s = site(plan, site_name)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &s.lan_ns])
        .args(argv)
        .status()
        .map_err(io(format!(
            "cannot run {}",
            cmd::cmdline("ip netns exec", &[&s.lan_ns])
        )))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(1))
}

/// Drop (cut) or restore (heal) WAN traffic between the routers of sites `a` and `b`. Returns
/// false when there was nothing to do (healing what is not cut, cutting what is).
pub fn cut(plan: &LabPlan, a: &str, b: &str, heal: bool) -> Result<bool, LabError> {
    check_root()?;
    require_up(plan)?;
    let (sa, sb) = (site(plan, a)?, site(plan, b)?);
    let verb = if heal { "delete" } else { "add" };
    // Namespace mode filters in the router itself; VM mode on the bridge in front of the VM.
    let family = match mode(&plan.network)? {
        Mode::Netns => "inet",
        Mode::Vm => "bridge",
    };
    let mut changed = false;
    for (me, peer) in [(sa, sb), (sb, sa)] {
        let script = format!("{verb} element {family} lab cut {{ {} }}", peer.public);
        match nft_in(&me.router_ns, &script) {
            // Healing what is not cut is not an error.
            Err(CmdError::Failed { stderr, .. }) if heal && stderr.contains("No such file") => {}
            Err(CmdError::Failed { stderr, .. }) if !heal && stderr.contains("File exists") => {}
            other => {
                other?;
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Ping once over each of `pairs` (site names, from the LAN host of the first to the LAN host of
/// the second); the pairs that failed.
pub fn unreachable_pairs(
    plan: &LabPlan,
    pairs: &[(String, String)],
    cancelled: &dyn Fn() -> bool,
) -> Vec<(String, String)> {
    pairs
        .iter()
        .take_while(|_| !cancelled())
        .filter(|(a, b)| {
            let (Some(a), Some(b)) = (plan.site(a), plan.site(b)) else {
                return true;
            };
            run_in(
                &a.lan_ns,
                "ping",
                &["-c1", "-W1", "-q", &b.host.addr().to_string()],
            )
            .is_err()
        })
        .cloned()
        .collect()
}

/// Wait until every pair in `pairs` answers. `cancelled` is polled between rounds (Ctrl-C).
pub fn wait_reachable(
    plan: &LabPlan,
    pairs: &[(String, String)],
    timeout: Duration,
    cancelled: &dyn Fn() -> bool,
) -> Result<Duration, LabError> {
    let start = Instant::now();
    // `cancelled` may consume its signal: remember it once seen.
    let seen = std::cell::Cell::new(false);
    let stop = || {
        seen.get()
            || (cancelled() && {
                seen.set(true);
                true
            })
    };
    loop {
        let failed = unreachable_pairs(plan, pairs, &stop);
        if stop() {
            return Err(LabError::Cancelled);
        }
        if failed.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let pairs: Vec<String> = failed.iter().map(|(a, b)| format!("{a}->{b}")).collect();
            return Err(LabError::Timeout {
                secs: timeout.as_secs(),
                what: format!(
                    "the LANs to reach each other; still failing: {}",
                    pairs.join(" ")
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether each namespace of the lab exists, and the processes in each router namespace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub router_ns: String,
    pub lan_host: String,
    pub public: String,
    pub namespaces_up: bool,
    pub router_pids: Vec<u32>,
}

pub fn status(plan: &LabPlan) -> Result<Vec<SiteStatus>, LabError> {
    check_root()?;
    let existing = namespaces_with_prefix(&ns_prefix(&plan.network))?;
    let mut out = Vec::new();
    for s in &plan.sites {
        let up = existing.contains(&s.router_ns) && existing.contains(&s.lan_ns);
        let pids = if up {
            run("ip", &["netns", "pids", &s.router_ns])?
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        } else {
            Vec::new()
        };
        out.push(SiteStatus {
            site: s.name.clone(),
            router_ns: s.router_ns.clone(),
            lan_host: s.host.addr().to_string(),
            public: s.public.to_string(),
            namespaces_up: up,
            router_pids: pids,
        });
    }
    Ok(out)
}
