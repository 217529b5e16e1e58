//! `sitelink bench dataplane`: throughput, latency and CPU cost of sitelink-wg beside
//! wireguard-go and boringtun-cli, in one run, on this machine.
//!
//! For each implementation: two fresh network namespaces joined by a veth pair, the same
//! implementation on both ends, then `ping` (RTT), `iperf3` single-stream and 4-stream TCP
//! through the tunnel. CPU seconds per GB are the daemons' user+system time (both ends) over
//! the bytes iperf3 moved. Missing peers are installed first (Debian's wireguard-go via apt,
//! `cargo install boringtun-cli`). Nothing leaves the namespaces; every namespace and daemon
//! is removed at the end, also on error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The implementations compared, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    SitelinkWg,
    WireguardGo,
    BoringtunCli,
}

impl Impl {
    fn label(self) -> &'static str {
        match self {
            Impl::SitelinkWg => "sitelink-wg",
            Impl::WireguardGo => "wireguard-go",
            Impl::BoringtunCli => "boringtun-cli",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Measurement {
    single_mbps: f64,
    multi_mbps: f64,
    rtt_ms: f64,
    cpu_s_per_gb: f64,
}

fn line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command, returns stdout; the error names the command and carries its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let l = line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{l}`"))?;
    if !out.status.success() {
        bail!(
            "`{l}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_cmd(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]).args(args);
    c
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Namespaces, daemons and temp files of one implementation's run; removed on drop.
struct Rig {
    which: Impl,
    namespaces: Vec<String>,
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime (fields 14 and 15) in clock ticks, all threads included.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn json_number_after(text: &str, anchor: &str, key: &str) -> Option<f64> {
    let start = text.rfind(anchor)?;
    let rest = &text[start..];
    let k = rest.find(&format!("\"{key}\""))?;
    let after = &rest[k + key.len() + 2..];
    let colon = after.find(':')?;
    let num: String = after[colon + 1..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse().ok()
}

/// The median (robust to scheduler outliers on a shared machine).
fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn genkey() -> Result<(String, String)> {
    let private = run(Command::new("wg").arg("genkey"))?.trim().to_string();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run `wg pubkey`")?;
    {
        use std::io::Write;
        let stdin = child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("wg pubkey: no stdin"))?;
        stdin.write_all(format!("{private}\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn ensure_peers_installed() -> Result<()> {
    if which("wireguard-go").is_none() || which("wg").is_none() || which("iperf3").is_none() {
        eprintln!("bench: installing wireguard-go wireguard-tools iperf3 with apt-get");
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "wireguard-go",
            "wireguard-tools",
            "iperf3",
            "iputils-ping",
        ]))?;
    }
    if which("boringtun-cli").is_none() {
        eprintln!("bench: installing boringtun-cli with cargo install (a few minutes)");
        run(Command::new("cargo").args(["install", "--locked", "boringtun-cli"]))?;
    }
    Ok(())
}

/// The `sitelink-router` binary: explicit, or next to the running executable.
fn find_router(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let cand = dir.join("sitelink-router");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    which("sitelink-router").ok_or_else(|| {
        anyhow!("sitelink-router not found next to {}; build it with `cargo build --release -p sitelink-router` or pass its path", exe.display())
    })
}

fn daemon_command(which_impl: Impl, ns: &str, ifname: &str, sitelink_wg: &Path) -> Result<Command> {
    Ok(match which_impl {
        Impl::SitelinkWg => ns_cmd(ns, &sitelink_wg.to_string_lossy(), &["-f", ifname]),
        Impl::WireguardGo => ns_cmd(ns, "wireguard-go", &["-f", ifname]),
        Impl::BoringtunCli => {
            let bin =
                which("boringtun-cli").ok_or_else(|| anyhow!("boringtun-cli not installed"))?;
            let mut c = ns_cmd(
                ns,
                &bin.to_string_lossy(),
                &["-f", "--disable-drop-privileges", ifname],
            );
            c.env("WG_SUDO", "1");
            c
        }
    })
}

/// Two namespaces over a veth, `which_impl` on both ends, configured, handshake done.
fn setup(which_impl: Impl, sitelink_wg: &Path) -> Result<Rig> {
    let tag = format!("{}{}", std::process::id() % 10000, which_impl as u8);
    let (na, nb) = (format!("bnA{tag}"), format!("bnB{tag}"));
    let (ia, ib) = (format!("bwA{tag}"), format!("bwB{tag}"));
    let (va, vb) = (format!("vbA{tag}"), format!("vbB{tag}"));
    let mut rig = Rig {
        which: which_impl,
        namespaces: Vec::new(),
        children: Vec::new(),
        files: Vec::new(),
    };
    for ns in [&na, &nb] {
        run(Command::new("ip").args(["netns", "add", ns]))?;
        rig.namespaces.push(ns.clone());
        run(&mut ns_cmd(ns, "ip", &["link", "set", "lo", "up"]))?;
    }
    run(Command::new("ip").args([
        "link", "add", &va, "netns", &na, "type", "veth", "peer", "name", &vb, "netns", &nb,
    ]))?;
    for (ns, dev, addr) in [
        (&na, va.as_str(), "192.168.250.1/24"),
        (&nb, vb.as_str(), "192.168.250.2/24"),
    ] {
        run(&mut ns_cmd(ns, "ip", &["addr", "add", addr, "dev", dev]))?;
        run(&mut ns_cmd(ns, "ip", &["link", "set", dev, "up"]))?;
    }
    let sides = [
        (&na, &ia, "192.168.250.1", "10.250.0.1", 51820u16),
        (&nb, &ib, "192.168.250.2", "10.250.0.2", 51821u16),
    ];
    let keys = [genkey()?, genkey()?];
    for (ns, ifname, ..) in sides {
        let mut c = daemon_command(which_impl, ns, ifname, sitelink_wg)?;
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `{}`", line(&c)))?;
        rig.children.push(child);
        let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        let start = Instant::now();
        while !sock.exists() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "{}: {ifname} control socket did not appear",
                    which_impl.label()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (i, (ns, ifname, _outer, inner, port)) in sides.into_iter().enumerate() {
        let (other_ns, _, other_outer, other_inner, other_port) = sides[1 - i];
        let _ = other_ns;
        let key_file = std::env::temp_dir().join(format!("{ifname}.key"));
        std::fs::write(&key_file, format!("{}\n", keys[i].0))?;
        rig.files.push(key_file.clone());
        let port_s = port.to_string();
        let endpoint = format!("{other_outer}:{other_port}");
        let allowed = format!("{other_inner}/32");
        let key_path = key_file.to_string_lossy().into_owned();
        run(&mut ns_cmd(
            ns,
            "wg",
            &[
                "set",
                ifname,
                "private-key",
                &key_path,
                "listen-port",
                &port_s,
                "peer",
                &keys[1 - i].1,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        ))?;
        run(&mut ns_cmd(
            ns,
            "ip",
            &["addr", "add", &format!("{inner}/24"), "dev", ifname],
        ))?;
        run(&mut ns_cmd(ns, "ip", &["link", "set", ifname, "up"]))?;
    }
    // Handshake and warm-up, then RTT.
    run(&mut ns_cmd(
        &na,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "3", "10.250.0.2"],
    ))
    .with_context(|| format!("{}: no connectivity through the tunnel", which_impl.label()))?;
    Ok(rig)
}

/// RTT samples (ms) of `count` pings through the tunnel.
fn ping_samples(rig: &Rig, count: u32) -> Result<Vec<f64>> {
    let c = count.to_string();
    let ping = run(&mut ns_cmd(
        &rig.namespaces[0],
        "ping",
        &["-c", &c, "-i", "0.01", "10.250.0.2"],
    ))?;
    Ok(ping
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("time="))
        .filter_map(|t| t.parse().ok())
        .collect())
}

/// iperf3 single-stream and 4-stream runs; returns (Mbit/s 1, Mbit/s 4, CPU s per GB).
fn throughput(rig: &mut Rig, seconds: u32) -> Result<(f64, f64, f64)> {
    let (na, nb) = (rig.namespaces[0].clone(), rig.namespaces[1].clone());
    let server = ns_cmd(&nb, "iperf3", &["-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    rig.children.push(server);
    std::thread::sleep(Duration::from_millis(500));
    let pids: Vec<u32> = rig.children[..2].iter().map(Child::id).collect();
    let t = seconds.to_string();
    let mut results = Vec::new();
    let mut cpu_total = 0.0;
    let mut bytes_total = 0.0;
    for streams in ["1", "4"] {
        let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
        let out = run(&mut ns_cmd(
            &na,
            "iperf3",
            &["-c", "10.250.0.2", "-t", &t, "-P", streams, "-J"],
        ))?;
        let cpu1: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
        let bps = json_number_after(&out, "\"sum_received\"", "bits_per_second")
            .ok_or_else(|| anyhow!("cannot parse iperf3 output"))?;
        let bytes = json_number_after(&out, "\"sum_received\"", "bytes").unwrap_or(0.0);
        cpu_total += cpu1 - cpu0;
        bytes_total += bytes;
        results.push(bps / 1e6);
        std::thread::sleep(Duration::from_millis(300));
    }
    let cpu_per_gb = if bytes_total > 0.0 {
        cpu_total / (bytes_total / 1e9)
    } else {
        0.0
    };
    Ok((results[0], results[1], cpu_per_gb))
}

/// Runs the data-plane benchmark and prints the table to stdout. `router_bin` is the
/// `sitelink-router` binary (default: next to the running executable); `seconds` is the
/// length of each iperf3 run. Needs root.
pub fn dataplane(router_bin: Option<&Path>, seconds: u32) -> Result<()> {
    let router = find_router(router_bin)?;
    ensure_peers_installed()?;
    let dir = std::env::temp_dir().join(format!("sitelink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("sitelink-wg");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&router, &link)?;
    let impls = [Impl::SitelinkWg, Impl::WireguardGo, Impl::BoringtunCli];
    let mut rigs = Vec::new();
    for which_impl in impls {
        eprintln!("bench: setting up {}", which_impl.label());
        rigs.push(
            setup(which_impl, &link)
                .with_context(|| format!("benchmark of {}", which_impl.label()))?,
        );
    }
    // RTT first, interleaved in rounds, so background load on the machine hits all alike.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); rigs.len()];
    // Each round starts with a different implementation, so none is always first after a
    // pause.
    for round in 0..6 {
        for k in 0..rigs.len() {
            let i = (round + k) % rigs.len();
            samples[i].extend(ping_samples(&rigs[i], 40)?);
        }
    }
    let mut rows = Vec::new();
    for (i, rig) in rigs.iter_mut().enumerate() {
        eprintln!("bench: iperf3 through {}", rig.which.label());
        let (single_mbps, multi_mbps, cpu_s_per_gb) = throughput(rig, seconds)
            .with_context(|| format!("benchmark of {}", rig.which.label()))?;
        let rtt_ms = median(&mut samples[i]).unwrap_or(0.0);
        rows.push((
            rig.which,
            Measurement {
                single_mbps,
                multi_mbps,
                rtt_ms,
                cpu_s_per_gb,
            },
        ));
    }
    drop(rigs);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", render_table(&rows, seconds));
    Ok(())
}

fn render_table(rows: &[(Impl, Measurement)], seconds: u32) -> String {
    let base = rows
        .iter()
        .find(|(i, _)| *i == Impl::WireguardGo)
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let ratio = |x: f64, b: f64| if b > 0.0 { x / b } else { 0.0 };
    let mut s = String::new();
    let _ = writeln!(s, "Data plane: iperf3 TCP through a WireGuard tunnel between two netns over a veth, same implementation on both ends, {seconds} s per run, {} CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let _ = writeln!(s);
    let _ = writeln!(s, "| implementation | 1 stream Mbit/s | vs wireguard-go | 4 streams Mbit/s | vs wireguard-go | ping RTT ms (median of 240, interleaved) | CPU s/GB |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for (i, m) in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2}x | {:.0} | {:.2}x | {:.3} | {:.2} |",
            i.label(),
            m.single_mbps,
            ratio(m.single_mbps, base.single_mbps),
            m.multi_mbps,
            ratio(m.multi_mbps, base.multi_mbps),
            m.rtt_ms,
            m.cpu_s_per_gb
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf_json_and_renders_ratios() {
        let json = r#"{"end":{"sum_sent":{"bytes":5,"bits_per_second":1},"sum_received":{"start":0,"bytes":1000000000,"bits_per_second":8.5e8}}}"#;
        assert_eq!(
            json_number_after(json, "\"sum_received\"", "bits_per_second"),
            Some(8.5e8)
        );
        assert_eq!(
            json_number_after(json, "\"sum_received\"", "bytes"),
            Some(1e9)
        );
        let rows = vec![
            (
                Impl::SitelinkWg,
                Measurement {
                    single_mbps: 900.0,
                    multi_mbps: 1000.0,
                    rtt_ms: 0.2,
                    cpu_s_per_gb: 3.0,
                },
            ),
            (
                Impl::WireguardGo,
                Measurement {
                    single_mbps: 600.0,
                    multi_mbps: 500.0,
                    rtt_ms: 0.3,
                    cpu_s_per_gb: 4.0,
                },
            ),
        ];
        let t = render_table(&rows, 10);
        assert!(
            t.contains("| sitelink-wg | 900 | 1.50x | 1000 | 2.00x | 0.200 | 3.00 |"),
            "{t}"
        );
    }
}
