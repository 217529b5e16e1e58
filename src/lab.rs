//! `sitelink lab ...`: the network on this machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use sitelink_config::keys::{write_secret, Keystore};
use sitelink_config::network::Network;
use sitelink_config::site;
use sitelink_lab::netns::{self, run_dir};
use sitelink_lab::plan::{LabPlan, SitePlan};

use crate::{load_network, CliError, Result};

/// How long `lab up` waits for every LAN to reach every other LAN.
const MESH_TIMEOUT: Duration = Duration::from_secs(90);

fn plan(path: &Path) -> Result<(Network, LabPlan)> {
    let net = load_network(path)?;
    let plan =
        LabPlan::new(&net).with_context(|| format!("{} cannot run as a lab", path.display()))?;
    Ok((net, plan))
}

/// Keys of lab routers persist across runs in /var/lib/sitelink-lab/<network>/keys.
fn keystore(network: &str) -> Keystore {
    Keystore::new(
        PathBuf::from("/var/lib/sitelink-lab")
            .join(network)
            .join("keys"),
    )
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

/// `sitelink-router status` of a lab site, run inside its router's namespaces.
fn router_status(network: &str, site: &str) -> Option<String> {
    let pid = fs::read_to_string(run_dir(network).join(site).join("router.pid")).ok()?;
    let binary = router_binary().ok()?;
    let out = Command::new("nsenter")
        .args(["--target", pid.trim(), "--mount", "--net"])
        .arg(binary)
        .arg("status")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned();
    Some(text)
}

/// Write each site's config and key under the run directory and start its router.
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

/// `sitelink lab restart NETWORK SITE [--kill]`: stop a site's router (SIGTERM, or SIGKILL to
/// simulate a crash) and start it again.
pub fn restart(path: &Path, site: &str, kill: bool) -> Result<()> {
    let (net, plan) = plan(path)?;
    let s = plan.site(site).ok_or_else(|| {
        CliError::Usage(anyhow!(
            "no site {site:?} in the lab; sites are {}",
            plan.sites
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let pid_file = run_dir(&net.name).join(site).join("router.pid");
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
        return Err(anyhow!("the router of {site} (pid {pid}) did not stop within 10 s").into());
    }
    start_router(&net.name, s)?;
    outln!(
        "restarted the router of {site} ({})",
        if kill {
            "after SIGKILL"
        } else {
            "after SIGTERM"
        }
    );
    Ok(())
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

/// `sitelink lab up NETWORK [--mode netns] [--detach]`
pub fn up(path: &Path, mode: &str, detach: bool, no_routers: bool) -> Result<()> {
    if mode != "netns" {
        return Err(anyhow!(
            "--mode {mode:?}: only `netns` exists today (the QEMU lab is not built yet)"
        )
        .into());
    }
    let start = Instant::now();
    let (net, plan) = plan(path)?;
    // Catch Ctrl-C from the start, so an interrupted `up` still cleans up.
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("cannot install the Ctrl-C handler")?;
    let me = std::env::current_exe().context("cannot find this executable")?;
    netns::build(&plan, &me)?;
    outln!(
        "lab {}: {} namespaces built in {:.1} s",
        net.name,
        plan.namespaces().len(),
        start.elapsed().as_secs_f64()
    );
    if !no_routers {
        let pairs = expected_pairs(&net);
        let cancelled = || rx.try_recv().is_ok();
        let result = start_routers(&net, &plan).and_then(|()| {
            Ok(netns::wait_reachable(
                &plan,
                &pairs,
                MESH_TIMEOUT,
                &cancelled,
            )?)
        });
        if let Err(e) = result {
            let interrupted = matches!(&e, CliError::Failed(f) if matches!(f.downcast_ref(), Some(netns::LabError::Cancelled)));
            if interrupted {
                eprintln!("sitelink: interrupted; taking the lab down");
            } else {
                eprintln!("sitelink: lab up failed; the last lines of each router's log follow, then the lab is taken down");
                print_logs(&net.name, &plan);
            }
            let _ = netns::down(&net.name);
            return Err(e);
        }
        outln!(
            "lab {}: all {} LAN pairs reach each other, {:.1} s after start",
            net.name,
            pairs.len(),
            start.elapsed().as_secs_f64()
        );
    }
    print_table(&plan);
    if detach {
        return Ok(());
    }
    outln!("lab {} is up; Ctrl-C takes it down", net.name);
    let _ = rx.recv();
    netns::down(&net.name)?;
    outln!("lab {} is down", net.name);
    Ok(())
}

fn print_logs(network: &str, plan: &LabPlan) {
    for s in &plan.sites {
        let log = run_dir(network).join(&s.name).join("router.log");
        if let Ok(text) = fs::read_to_string(&log) {
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            for line in tail.into_iter().rev() {
                eprintln!("[{}] {line}", s.name);
            }
        }
    }
}

fn print_table(plan: &LabPlan) {
    outln!(
        "{:<12} {:<22} {:<16} {:<24} delay",
        "site",
        "public",
        "lan host",
        "router ns"
    );
    for s in &plan.sites {
        let public = if s.nat.is_some() {
            format!("{} (NAT)", s.public)
        } else {
            s.public.to_string()
        };
        outln!(
            "{:<12} {:<22} {:<16} {:<24} {} ms",
            s.name,
            public,
            s.host.addr(),
            s.router_ns,
            s.delay_ms
        );
    }
}

/// `sitelink lab down NETWORK`
pub fn down(path: &Path) -> Result<()> {
    let net = load_network(path)?;
    let removed = netns::down(&net.name)?;
    outln!("lab {}: removed {} namespaces", net.name, removed.len());
    Ok(())
}

/// `sitelink lab status NETWORK [--json]`: namespaces and router processes, then each
/// router's own `sitelink-router status` (tunnels, probes, active routes).
pub fn status(path: &Path, json: bool) -> Result<()> {
    let (_, plan) = plan(path)?;
    let sites = netns::status(&plan)?;
    let routers: Vec<Option<String>> = sites
        .iter()
        .map(|s| router_status(&plan.network, &s.site))
        .collect();
    if json {
        let mut all = Vec::new();
        for (s, r) in sites.iter().zip(&routers) {
            let mut v = serde_json::to_value(s)?;
            v["router_status"] = serde_json::Value::from(r.clone());
            all.push(v);
        }
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    outln!(
        "{:<12} {:<16} {:<16} {:<6} router pids",
        "site",
        "public",
        "lan host",
        "up"
    );
    for s in &sites {
        let pids: Vec<String> = s.router_pids.iter().map(ToString::to_string).collect();
        outln!(
            "{:<12} {:<16} {:<16} {:<6} {}",
            s.site,
            s.public,
            s.lan_host,
            s.namespaces_up,
            pids.join(" ")
        );
    }
    for (s, r) in sites.iter().zip(&routers) {
        if let Some(text) = r {
            outln!("\n== {} ==\n{}", s.site, text.trim_end());
        }
    }
    Ok(())
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
    netns::cut(&plan, a, b, heal)?;
    outln!("{} {a} <-> {b}", if heal { "healed" } else { "cut" });
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
