//! Netns tier: the lab's topology (namespaces, switch with delays, NAT, cut/heal, down).
//! Needs root; run with `cargo test -- --ignored netns_`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

fn sitelink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitelink"))
        .args(args)
        .output()
        .expect("run sitelink")
}

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_eq!(uid, "0", "the netns tier needs root");
}

/// A copy of the seed mesh under a network name of its own, so this test's namespaces never
/// meet a lab someone else runs; the lab is taken down on drop, also when the test fails.
struct Lab {
    file: PathBuf,
    name: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let name = format!("t{tag}{}", std::process::id());
        let seed = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/seed-mesh.toml"
        ))
        .unwrap();
        let file = std::env::temp_dir().join(format!("{name}.toml"));
        fs::write(
            &file,
            seed.replace("name = \"seed-mesh\"", &format!("name = \"{name}\"")),
        )
        .unwrap();
        Lab { file, name }
    }
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = vec![args[0], args[1], self.file.to_str().unwrap()];
        all.extend_from_slice(&args[2..]);
        sitelink(&all)
    }
    fn ns(&self, role: &str, site: &str) -> String {
        format!("sl-{}-{role}-{site}", self.name)
    }
    fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("sl-{}-", self.name)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down"]);
        let _ = fs::remove_file(&self.file);
    }
}

/// Average RTT in ms of `count` pings from namespace `ns` to `addr`, or None if none came back.
fn ping_avg(ns: &str, addr: &str, count: u32) -> Option<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-q",
            "-i",
            "0.1",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            addr,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=')
        .nth(1)?
        .trim()
        .split('/')
        .nth(1)?
        .parse()
        .ok()
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_lab_topology_delays_cut_heal_down() {
    require_root();
    let lab = Lab::new("topo");
    let out = lab.run(&["lab", "up", "--no-routers", "--detach"]);
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
    assert!(lab.run(&["lab", "heal", "aws", "gcp"]).status.success());
    assert!(lab.run(&["lab", "heal", "aws", "gcp"]).status.success());
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

    // A second `up` is refused while the lab runs.
    let again = lab.run(&["lab", "up", "--no-routers", "--detach"]);
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
