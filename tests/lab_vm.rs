//! VM tier: the seed mesh as four QEMU VMs booted from the image (`sitelink lab up`, VM mode),
//! proved from the outside: LAN to LAN pings and iperf3, a capture of a router's WAN, failover
//! on a cut and back on heal, a killed router service, a site with a broken config, and `lab
//! down` leaving nothing. Needs root and qemu-system-x86 (TCG when KVM fails); run with
//! `cargo test --test lab_vm -- --ignored vm_`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod common;
use common::{active_route, longest_gap, ping_avg, require_root, Lab, HOSTS};

/// Start the VM lab of a private copy of the seed mesh; its `lab up` output.
fn up(lab: &Lab) -> String {
    require_root();
    let started = Instant::now();
    let out = lab.ok(&["lab", "up", "--detach"]);
    eprintln!(
        "lab up (vm) in {:.1} s:\n{out}",
        started.elapsed().as_secs_f64()
    );
    out
}

/// Every LAN host pings every other (and itself): the failures.
fn unreachable(lab: &Lab, sites: &[&str]) -> Vec<String> {
    let mut failed = Vec::new();
    for (from, _) in HOSTS.iter().filter(|(s, _)| sites.contains(s)) {
        for (to, addr) in HOSTS.iter().filter(|(s, _)| sites.contains(s)) {
            if ping_avg(&lab.ns("l", from), addr, 1).is_none() {
                failed.push(format!("{from}->{to}"));
            }
        }
    }
    failed
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "no {what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

fn console(lab: &Lab, site: &str) -> String {
    fs::read_to_string(lab.run_dir(site).join("console.log")).unwrap_or_default()
}

/// Processes (not zombies) whose command line names the lab.
fn lab_processes(lab: &Lab) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if !zombie && cmdline.contains(&lab.name) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_lab_mesh_traffic_capture_failover() {
    let lab = Lab::new("vmesh");
    let out = up(&lab);
    for site in ["aws", "gcp", "azure", "office"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(site) && l.contains("3/3"))
            .unwrap_or_else(|| panic!("no row with 3/3 peers up for {site} in:\n{out}"));
        eprintln!("{row}");
    }

    // All 16 LAN pairs, checked by the test itself.
    let failed = unreachable(&lab, &["aws", "gcp", "azure", "office"]);
    assert!(failed.is_empty(), "LAN pairs failing: {failed:?}");

    // Capture the aws router's WAN while LAN hosts ping and run iperf3 across it.
    let pcap = std::env::temp_dir().join(format!("{}-aws-wan.pcap", lab.name));
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("r", "aws"),
            "tcpdump",
            "-i",
            "wan0",
        ])
        .args(["-nn", "-U", "-s", "128", "-w"])
        .arg(&pcap)
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (apt-get install tcpdump)");
    std::thread::sleep(Duration::from_secs(1));
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.ns("l", "gcp"), "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(500));
    assert!(ping_avg(&lab.ns("l", "aws"), "10.2.0.10", 5).is_some());
    assert!(ping_avg(&lab.ns("l", "aws"), "192.168.10.10", 5).is_some());
    let iperf = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("l", "aws"),
            "iperf3",
            "-c",
            "10.2.0.10",
        ])
        .args(["-t", "5", "-J"])
        .output()
        .unwrap();
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_slice(&iperf.stdout).unwrap_or_default();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("iperf3 aws LAN -> gcp LAN: {:.1} Mbit/s", bps / 1e6);
    assert!(
        bps > 1e6,
        "iperf3 aws LAN -> gcp LAN: {:.3} Mbit/s: {}",
        bps / 1e6,
        String::from_utf8_lossy(&iperf.stdout)
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &capture.id().to_string()])
        .status();
    let _ = capture.wait();
    let text = Command::new("tcpdump")
        .args(["-nn", "-q", "-r"])
        .arg(&pcap)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let _ = fs::remove_file(&pcap);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let publics = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.253",
    ];
    let mut udp = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // `TIME IP SRC.PORT > DST.PORT: PROTO ...`; IPv6 is only the guests' link-local
        // neighbour and router discovery.
        if f.get(1) == Some(&"IP6") {
            assert!(
                f.get(2).is_some_and(|a| a.starts_with("fe80:")) && line.contains("ICMP6"),
                "IPv6 on the WAN that is not link-local ND: {line}"
            );
            continue;
        }
        if f.get(1) != Some(&"IP") {
            continue; // ARP
        }
        let host = |a: &str| {
            a.rsplit_once('.')
                .map(|(h, _)| h.to_owned())
                .unwrap_or_default()
        };
        let (src, dst) = (host(f[2]), host(f[4].trim_end_matches(':')));
        assert!(
            line.contains(": UDP")
                && publics.contains(&src.as_str())
                && publics.contains(&dst.as_str()),
            "not WireGuard UDP between router WAN addresses: {line}"
        );
        udp += 1;
    }
    eprintln!("capture on aws wan0: {udp} IPv4 packets, all UDP between router WAN addresses");
    assert!(udp > 1000, "too few packets captured ({udp}):\n{text}");

    // Cut aws-gcp under a 200 ms ping train: at most 3 s without answers, via a transit site.
    let train = lab.ping_train("aws", "10.2.0.10", "0.2", 50);
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&["lab", "cut", "aws", "gcp"]);
    let text = String::from_utf8_lossy(&train.wait_with_output().unwrap().stdout).into_owned();
    let (worst, tail_lost) = longest_gap(&text, 50);
    eprintln!(
        "cut aws-gcp: {worst} pings of a 200 ms train unanswered ({} ms)",
        worst * 200
    );
    assert!(
        tail_lost <= 1,
        "traffic never came back after the cut:\n{text}"
    );
    assert!(
        worst * 200 <= 3000,
        "failover cost {} ms > 3 s:\n{text}",
        worst * 200
    );
    let status = lab.router_status("aws");
    assert!(
        active_route(&status, "10.2.0.0/24").contains("transit"),
        "aws does not route gcp's LAN via a transit site: {status}"
    );

    // Heal: back on the direct path.
    lab.ok(&["lab", "heal", "aws", "gcp"]);
    let took = wait_for("direct path after heal", Duration::from_secs(15), || {
        active_route(&lab.router_status("aws"), "10.2.0.0/24").ends_with("wg-gcp 100 direct")
    });
    eprintln!(
        "heal aws-gcp: direct again after {:.1} s",
        took.as_secs_f64()
    );
    assert!(ping_avg(&lab.ns("l", "aws"), "10.2.0.10", 3).is_some());
}

#[test]
#[ignore = "vm tier: needs root and QEMU"]
fn vm_lab_service_kill_bad_config_and_down() {
    let lab = Lab::new("vfault");
    up(&lab);

    // Kill the router service in the gcp VM under a 200 ms ping train from aws: its init
    // restarts it and traffic resumes.
    let train = lab.ping_train("aws", "10.2.0.10", "0.2", 75);
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&["lab", "restart", "gcp", "--kill"]);
    let took = wait_for("gcp's router restarted", Duration::from_secs(20), || {
        let log = console(&lab, "gcp");
        log.contains("site: killed by signal 9") && log.matches("routed started").count() >= 2
    });
    eprintln!(
        "gcp router service restarted {:.1} s after SIGKILL",
        took.as_secs_f64()
    );
    let text = String::from_utf8_lossy(&train.wait_with_output().unwrap().stdout).into_owned();
    let (worst, tail_lost) = longest_gap(&text, 75);
    eprintln!(
        "kill gcp's router: {worst} pings of a 200 ms train from aws unanswered ({} ms)",
        worst * 200
    );
    assert!(
        tail_lost <= 1,
        "aws LAN -> gcp LAN did not resume after the restart:\n{text}"
    );

    // Boot the office with a broken config: it says why on its console, the others keep going.
    let keys = format!("/var/lib/sitelink-lab/{}/keys", lab.name);
    let out = common::sitelink(&[
        "render",
        lab.file.to_str().unwrap(),
        "--site",
        "office",
        "--keys",
        &keys,
    ]);
    assert!(out.status.success(), "{out:?}");
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(rendered.contains("listen_port = 51820"), "{rendered}");
    let broken = rendered.replacen("listen_port = 51820", "listen_port = 70000", 1);
    let key = fs::read(format!("{keys}/office.key")).unwrap();
    let disk = sitelink_image::cidata::disk(
        "office",
        &[("site.toml", broken.as_bytes()), ("site.key", &key)],
    )
    .unwrap();
    fs::write(lab.run_dir("office").join("cidata.img"), disk).unwrap();
    lab.ok(&["lab", "reboot", "office"]);
    wait_for(
        "the validation error on office's console",
        Duration::from_secs(60),
        || {
            let log = console(&lab, "office");
            let after_reset = log.rsplit("Linux version").next().unwrap_or_default();
            after_reset.contains("sitelink: invalid config") && after_reset.contains("listen_port")
        },
    );
    let log = console(&lab, "office");
    let after_reset = log.rsplit("Linux version").next().unwrap_or_default();
    let error = after_reset
        .lines()
        .find(|l| l.contains("listen_port") && l.contains("site.toml:"))
        .unwrap_or_default();
    eprintln!("office console: {error}");
    assert!(
        !error.is_empty(),
        "no FILE:LINE: listen_port error:\n{after_reset}"
    );
    assert!(!after_reset.contains("sitelink: ready"), "{after_reset}");
    // The clouds still reach each other (and nothing reaches the office's LAN).
    std::thread::sleep(Duration::from_secs(3));
    let failed = unreachable(&lab, &["aws", "gcp", "azure"]);
    assert!(failed.is_empty(), "with the office down: {failed:?}");
    assert!(ping_avg(&lab.ns("l", "aws"), "192.168.10.10", 1).is_none());

    // Down leaves no namespace, QEMU process or run directory.
    let down = lab.ok(&["lab", "down"]);
    eprintln!("{down}");
    assert!(lab.namespaces().is_empty(), "left: {:?}", lab.namespaces());
    wait_for("no process of the lab", Duration::from_secs(5), || {
        lab_processes(&lab).is_empty()
    });
    assert!(!lab.run_dir("aws").exists());
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("vm-wan") && !links.contains("vm-lan"),
        "a lab TAP is in the host namespace:\n{links}"
    );
}
