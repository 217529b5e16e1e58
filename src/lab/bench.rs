//! `sitelink bench lab NETWORK [--mode vm|netns] [--seconds N]`: bring the lab up from nothing,
//! measure it, take it down, print a table. What it measures:
//!
//! - the time to build the image (VM mode), and from the namespaces to the full mesh;
//! - per pair of sites that are not behind NAT: the WAN round trip between them without the
//!   tunnel (ping from the first site's WAN side to the second router's WAN address: in namespace
//!   mode from the router itself, in VM mode from a temporary address on the bridge in front of
//!   the VM, which passes the same switch port and delay), the tunnel probe's round trip
//!   (router to router through WireGuard, from `lab status`), and LAN host to LAN host through the
//!   tunnel. LAN minus WAN is what the two routers and the tunnel add;
//! - iperf3 from the first site's LAN host to the second's (one TCP stream);
//! - a cut of the first pair under a 200 ms ping train: the longest run of lost pings, and the
//!   time until the direct route is back after heal.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use sitelink_lab::netns::{self, Mode};
use sitelink_lab::plan::{LabPlan, SitePlan};

use crate::Result;

/// Mean RTT in ms of `count` pings 100 ms apart from namespace `ns` to `addr`.
fn ping_mean(ns: &str, addr: &str, count: u32) -> Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-q", "-i", "0.1", "-W", "1"])
        .args(["-c", &count.to_string(), addr])
        .output()
        .context("cannot run ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok())
        .ok_or_else(|| anyhow!("no answer to ping {addr} from {ns}: {}", text.trim()).into())
}

/// An address of the lab's internet that no site, NAT box or gateway uses.
fn spare_address(plan: &LabPlan) -> Option<Ipv4Addr> {
    let net = plan.internet.trunc();
    let used: Vec<Ipv4Addr> = plan
        .sites
        .iter()
        .map(|s| s.public)
        .chain([plan.internet.addr()])
        .collect();
    (2..u32::from(net.broadcast()) - u32::from(net.network()))
        .map(|k| Ipv4Addr::from(u32::from(net.network()) + k))
        .rev()
        .find(|a| !used.contains(a))
}

/// WAN round trip from site `a`'s side of the internet to router `b`'s WAN address.
fn wan_rtt(plan: &LabPlan, mode: Mode, a: &SitePlan, b: &SitePlan, count: u32) -> Result<f64> {
    let target = b.public.to_string();
    match mode {
        Mode::Netns => ping_mean(&a.router_ns, &target, count),
        Mode::Vm => {
            let spare = spare_address(plan)
                .ok_or_else(|| anyhow!("no spare address in {}", plan.internet))?;
            let addr = format!("{spare}/{}", plan.internet.prefix_len());
            sitelink_lab::cmd::ip_in(&a.router_ns, &["addr", "add", &addr, "dev", "br0"])?;
            let rtt = ping_mean(&a.router_ns, &target, count);
            sitelink_lab::cmd::ip_in(&a.router_ns, &["addr", "del", &addr, "dev", "br0"])?;
            rtt
        }
    }
}

fn iperf3(from: &SitePlan, to: &SitePlan, seconds: u32) -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &to.lan_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("ip")
        .args(["netns", "exec", &from.lan_ns, "iperf3", "-J", "-c"])
        .arg(to.host.addr().to_string())
        .args(["-t", &seconds.to_string()])
        .output()
        .context("cannot run iperf3")?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .ok_or_else(|| {
            anyhow!(
                "iperf3 {} -> {} failed: {}",
                from.name,
                to.name,
                String::from_utf8_lossy(&out.stdout)
            )
            .into()
        })
}

/// Sequence numbers answered in a ping train's output.
pub fn answered(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The longest run of unanswered pings between two answers of a train of `count`, and how many
/// were lost after the last answer.
pub fn longest_gap(text: &str, count: u32) -> (u32, u32) {
    let seqs = answered(text);
    let worst = seqs
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0] + 1))
        .max()
        .unwrap_or(count);
    (
        worst,
        count.saturating_sub(seqs.last().copied().unwrap_or(0)),
    )
}

/// The longest run of lost pings in a 200 ms train across a cut of `a`-`b`, in ms; then heal and
/// the time until `a` routes `b`'s LAN directly again.
fn failover(plan: &LabPlan, mode: Mode, a: &SitePlan, b: &SitePlan) -> Result<(u32, f64)> {
    let train = Command::new("ip")
        .args([
            "netns", "exec", &a.lan_ns, "ping", "-i", "0.2", "-c", "50", "-W", "1",
        ])
        .arg(b.host.addr().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run ping")?;
    std::thread::sleep(Duration::from_secs(2));
    netns::cut(plan, &a.name, &b.name, false)?;
    let out = train.wait_with_output().context("ping train")?;
    // A train that never recovers counts its tail as lost, not as no gap.
    let (inner, tail) = longest_gap(&String::from_utf8_lossy(&out.stdout), 50);
    let lost = inner.max(tail);
    netns::cut(plan, &a.name, &b.name, true)?;
    let healed = Instant::now();
    let direct = format!("wg-{}", b.name);
    loop {
        let via = super::routed_status(&plan.network, mode, a)
            .ok()
            .and_then(|st| {
                st.prefixes
                    .iter()
                    .find(|p| p.prefix == b.lan.trunc())
                    .and_then(|p| p.via.clone())
            });
        if via.as_deref() == Some(direct.as_str()) {
            break;
        }
        if healed.elapsed() > Duration::from_secs(30) {
            return Err(anyhow!(
                "{} does not route {} over {direct} 30 s after heal",
                a.name,
                b.lan
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((lost * 200, healed.elapsed().as_secs_f64()))
}

/// `sitelink bench lab NETWORK [--mode vm|netns] [--seconds N]`
pub fn run(path: &Path, mode: &str, seconds: u32) -> Result<()> {
    let mode: Mode = mode
        .parse()
        .map_err(|e: String| crate::CliError::Usage(anyhow!(e)))?;
    let (_, plan) = super::plan(path)?;
    let cloud: Vec<&SitePlan> = plan.sites.iter().filter(|s| s.nat.is_none()).collect();
    let (Some(first), Some(second)) = (cloud.first().copied(), cloud.get(1).copied()) else {
        return Err(anyhow!("the benchmark needs two sites that are not behind NAT").into());
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let report = super::bring_up(path, mode, false, &|| false)?;
    let up_total = started.elapsed();
    let result = (|| -> Result<String> {
        // Let the first probes after boot settle.
        std::thread::sleep(Duration::from_secs(3));
        let mut rows = String::new();
        for (i, a) in cloud.iter().enumerate() {
            for b in &cloud[i + 1..] {
                let wan = wan_rtt(&plan, mode, a, b, 30)?;
                let lan = ping_mean(&a.lan_ns, &b.host.addr().to_string(), 30)?;
                let probe = super::routed_status(&plan.network, mode, a)
                    .ok()
                    .and_then(|st| st.tunnel(&format!("wg-{}", b.name)).and_then(|t| t.rtt_us))
                    .map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0));
                rows.push_str(&format!(
                    "| {} ↔ {} | {wan:.2} | {probe} | {lan:.2} | {:+.2} |\n",
                    a.name,
                    b.name,
                    lan - wan
                ));
            }
        }
        for nat in plan.sites.iter().filter(|s| s.nat.is_some()) {
            let lan = ping_mean(&nat.lan_ns, &first.host.addr().to_string(), 30)?;
            rows.push_str(&format!(
                "| {} (NAT) → {} | - | - | {lan:.2} | - |\n",
                nat.name, first.name
            ));
        }
        let mbps = iperf3(first, second, seconds)?;
        let (lost_ms, heal_s) = failover(&plan, mode, first, second)?;
        let mut out = String::new();
        out.push_str(&format!(
            "\nlab {} ({} mode), load average before: {}",
            plan.network,
            mode.as_str(),
            load.trim()
        ));
        out.push_str("\n| measure | value |\n|---|---:|\n");
        if let Some(img) = report.image {
            out.push_str(&format!(
                "| image build (cached kernel and binary) | {:.1} s |\n",
                img.as_secs_f64()
            ));
        }
        out.push_str(&format!(
            "| `lab up`, start to every tunnel up and all LAN pairs answering | {:.1} s |\n",
            up_total.as_secs_f64()
        ));
        out.push_str(&format!(
            "| of which namespaces + routers to full mesh | {:.1} s |\n",
            report.to_mesh.as_secs_f64()
        ));
        for (site, boot, ready) in &report.sites {
            out.push_str(&format!(
                "| {site}: {} / all its tunnels up | {} / {} s |\n",
                if mode == Mode::Vm {
                    "booted"
                } else {
                    "started"
                },
                boot.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64())),
                ready.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64()))
            ));
        }
        out.push_str(&format!(
            "| iperf3 {} LAN → {} LAN, {seconds} s, 1 stream | {mbps:.0} Mbit/s |\n",
            first.name, second.name
        ));
        out.push_str(&format!(
            "| cut {}-{}: longest gap in a 200 ms ping train | {lost_ms} ms |\n",
            first.name, second.name
        ));
        out.push_str(&format!(
            "| heal {}-{}: back on the direct route | {heal_s:.1} s |\n",
            first.name, second.name
        ));
        out.push_str("\n| RTT (ms, mean of 30) | WAN, no tunnel | tunnel probe | LAN host to LAN host | LAN - WAN |\n|---|---:|---:|---:|---:|\n");
        out.push_str(&rows);
        Ok(out)
    })();
    let down = netns::down(&plan.network);
    let table = result?;
    down?;
    outln!("{table}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::longest_gap;

    fn train(seqs: &[u32]) -> String {
        let mut s = String::from("PING 10.2.0.10 (10.2.0.10) 56(84) bytes of data.\n");
        for q in seqs {
            s += &format!("64 bytes from 10.2.0.10: icmp_seq={q} ttl=62 time=4.1 ms\n");
        }
        s
    }

    #[test]
    fn gap_inside_and_after_a_train() {
        assert_eq!(longest_gap(&train(&[1, 2, 3, 4, 5]), 5), (0, 0));
        assert_eq!(longest_gap(&train(&[1, 2, 9, 10]), 10), (6, 0));
        // Cut and never recovered: the tail is the loss.
        assert_eq!(longest_gap(&train(&[1, 2, 3]), 50), (0, 47));
        assert_eq!(longest_gap(&train(&[]), 50), (50, 50));
    }
}
