//! Netns tier: the lab's topology (namespaces, switch with delays, NAT, cut/heal, down).
//! Needs root; run with `cargo test -- --ignored netns_`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::process::Command;

#[path = "common/lab.rs"]
mod common;
use common::{active_route, longest_gap, ping_avg, require_root, Lab};

#[test]
#[ignore = "netns tier: needs root"]
fn netns_lab_topology_delays_cut_heal_down() {
    require_root();
    let lab = Lab::new("topo");
    let out = lab.run(&["lab", "up", "--mode", "netns", "--no-routers", "--detach"]);
    assert!(
        out.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lab.namespaces().len(),
        10,
        "internet + 4 routers + 4 LAN hosts + 1 NAT box"
    );

    // Delays: aws 1 ms + gcp 1.5 ms one way each; office 6 ms behind its NAT box.
    let aws = lab.ns("r", "aws");
    ping_avg(&aws, "198.51.100.2", 1).expect("aws router reaches gcp router");
    let rtt = ping_avg(&aws, "198.51.100.2", 10).unwrap();
    assert!(
        (2.4..8.0).contains(&rtt),
        "aws-gcp WAN RTT {rtt} ms, want about 2.5"
    );
    let office = lab.ns("r", "office");
    let rtt = ping_avg(&office, "198.51.100.1", 5).expect("office reaches aws through its NAT");
    assert!(
        (6.9..14.0).contains(&rtt),
        "office-aws WAN RTT {rtt} ms, want about 7"
    );
    // The LAN host reaches its router.
    assert!(ping_avg(&lab.ns("l", "gcp"), "10.2.0.1", 1).is_some());

    // Cut drops only aws<->gcp; heal restores it; healing twice is fine.
    assert!(lab.run(&["lab", "cut", "aws", "gcp"]).status.success());
    assert!(
        ping_avg(&aws, "198.51.100.2", 2).is_none(),
        "cut aws-gcp still passes traffic"
    );
    assert!(
        ping_avg(&aws, "198.51.100.3", 1).is_some(),
        "cut aws-gcp also cut aws-azure"
    );
    let out = lab.run(&["lab", "heal", "aws", "gcp"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "healed aws <-> gcp\n");
    let out = lab.run(&["lab", "heal", "aws", "gcp"]);
    assert!(out.status.success(), "healing twice is fine");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "aws <-> gcp was not cut; nothing to heal\n"
    );
    assert!(
        ping_avg(&aws, "198.51.100.2", 2).is_some(),
        "heal did not restore aws-gcp"
    );

    // exec runs in the LAN host and passes the exit code through.
    let out = lab.run(&[
        "lab", "exec", "aws", "--", "ip", "-br", "addr", "show", "eth0",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.1.0.10/24"));
    assert_eq!(
        lab.run(&["lab", "exec", "aws", "--", "false"])
            .status
            .code(),
        Some(1)
    );

    // `lab down` of a network whose name is a prefix of this one ("ttopo" of "ttopo-PID")
    // leaves this lab alone.
    let other = Lab {
        file: std::env::temp_dir().join("ttopo-prefix.toml"),
        name: "ttopo".into(),
    };
    let seed = fs::read_to_string(&lab.file)
        .unwrap()
        .replace(&format!("name = \"{}\"", lab.name), "name = \"ttopo\"");
    fs::write(&other.file, seed).unwrap();
    assert!(other.run(&["lab", "down"]).status.success());
    assert_eq!(
        lab.namespaces().len(),
        10,
        "lab down of \"ttopo\" touched \"{}\"",
        lab.name
    );
    drop(other);

    // A second `up` is refused while the lab runs.
    let again = lab.run(&["lab", "up", "--mode", "netns", "--no-routers", "--detach"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    // Down removes everything, and again is a no-op.
    assert!(lab.run(&["lab", "down"]).status.success());
    assert!(
        lab.namespaces().is_empty(),
        "left behind: {:?}",
        lab.namespaces()
    );
    assert!(lab.run(&["lab", "down"]).status.success());
}

fn our_routes(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show", "proto", "83"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_seed_mesh_full_mesh_failover_heal_restart_sigterm() {
    require_root();
    let lab = Lab::new("mesh");
    let out = lab.run(&["lab", "up", "--mode", "netns", "--detach"]);
    assert!(
        out.status.success(),
        "lab up: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `up` returns only when all 16 pairs answer; check them once more ourselves.
    let hosts = [
        ("aws", "10.1.0.10"),
        ("gcp", "10.2.0.10"),
        ("azure", "10.3.0.10"),
        ("office", "192.168.10.10"),
    ];
    for (from, _) in hosts {
        for (to, addr) in hosts {
            assert!(
                ping_avg(&lab.ns("l", from), addr, 1).is_some(),
                "{from} LAN cannot reach {to} LAN"
            );
        }
    }

    // Cut aws-gcp under a 100 ms ping train from the aws LAN host to the gcp LAN host.
    let train = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("l", "aws"),
            "ping",
            "-i",
            "0.1",
            "-c",
            "100",
            "-W",
            "1",
            "10.2.0.10",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(lab.run(&["lab", "cut", "aws", "gcp"]).status.success());
    let text = String::from_utf8_lossy(&train.wait_with_output().unwrap().stdout).into_owned();
    let (worst, tail_lost) = longest_gap(&text, 100);
    eprintln!("failover aws->gcp: longest gap {} ms", worst * 100);
    assert!(
        tail_lost <= 1,
        "traffic never came back after the cut: {text}"
    );
    assert!(worst <= 30, "failover gap {} ms > 3 s", worst * 100);
    let status = lab.router_status("aws");
    assert!(
        active_route(&status, "10.2.0.0/24").contains("transit"),
        "{status}"
    );

    // Heal: back on the direct path within 5 s.
    assert!(lab.run(&["lab", "heal", "aws", "gcp"]).status.success());
    let healed = std::time::Instant::now();
    loop {
        let status = lab.router_status("aws");
        if active_route(&status, "10.2.0.0/24") == "10.2.0.0/24 wg-gcp 100 direct" {
            break;
        }
        assert!(
            healed.elapsed().as_secs_f64() < 5.0,
            "not back on wg-gcp 5 s after heal: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "heal aws-gcp: direct again after {:.1} s",
        healed.elapsed().as_secs_f64()
    );

    // A crashed router adopts its leftovers: no duplicate routes after a restart.
    let aws = lab.ns("r", "aws");
    let before = our_routes(&aws);
    assert_eq!(before.len(), 9, "{before:#?}");
    assert!(lab
        .run(&["lab", "restart", "aws", "--kill"])
        .status
        .success());
    // Until every tunnel is back, the new router installs only the routes over live tunnels; at
    // no point are there duplicates. The office is behind NAT and would re-handshake only when
    // its own session times out (about 15 s), but the restarted router dials the endpoint it
    // learned from the office before the crash.
    let restarted = std::time::Instant::now();
    loop {
        let mut after = our_routes(&aws);
        let mut unique = after.clone();
        unique.sort();
        unique.dedup();
        after.sort();
        assert_eq!(after, unique, "duplicate routes after restart");
        if after.len() == 9 {
            break;
        }
        assert!(
            restarted.elapsed().as_secs() < 5,
            "only {} of 9 routes 5 s after the restart: {after:#?}",
            after.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprintln!(
        "restart --kill aws: all 9 routes back after {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        ping_avg(&lab.ns("l", "aws"), "10.2.0.10", 3).is_some(),
        "traffic resumes after the restart"
    );

    // SIGTERM: our routes go, a foreign route in the same table stays.
    let foreign = Command::new("ip")
        .args(["-n", &aws, "route", "add", "10.99.0.0/24", "dev", "lan0"])
        .status()
        .unwrap();
    assert!(foreign.success());
    let pid = fs::read_to_string(format!("/run/sitelink-lab/{}/aws/router.pid", lab.name)).unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap()
        .success());
    let gone = std::time::Instant::now();
    while std::path::Path::new("/proc").join(pid.trim()).exists() && gone.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        our_routes(&aws).is_empty(),
        "routes left after SIGTERM: {:?}",
        our_routes(&aws)
    );
    let out = Command::new("ip")
        .args(["-n", &aws, "route", "show", "10.99.0.0/24"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.99.0.0/24 dev lan0"),
        "the foreign route was touched"
    );

    assert!(lab.run(&["lab", "down"]).status.success());
    assert!(
        lab.namespaces().is_empty(),
        "left behind: {:?}",
        lab.namespaces()
    );
}
