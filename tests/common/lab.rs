//! What the lab tests of both modes share: a private copy of the seed mesh, running `sitelink
//! lab ...` on it, pings and ping trains in its namespaces, and the router status.
#![allow(dead_code)] // each test file uses its part

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

pub fn sitelink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitelink"))
        .args(args)
        .output()
        .expect("run sitelink")
}

pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_eq!(uid, "0", "the lab tests need root");
}

/// A copy of the seed mesh under a network name of its own, so this test's namespaces never
/// meet a lab someone else runs; the lab is taken down on drop, also when the test fails, and
/// its state (keys, image) removed.
pub struct Lab {
    pub file: PathBuf,
    pub name: String,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let name = format!("t{tag}-{}", std::process::id());
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

    /// `sitelink A B NETWORK REST...` for `args` = `[A, B, REST...]`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = vec![args[0], args[1], self.file.to_str().unwrap()];
        all.extend_from_slice(&args[2..]);
        sitelink(&all)
    }

    /// Like [`Lab::run`], asserting success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sitelink {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ns(&self, role: &str, site: &str) -> String {
        format!("sl_{}_{role}_{site}", self.name)
    }

    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("sl_{}_", self.name)))
            .map(str::to_owned)
            .collect()
    }

    /// Where the lab keeps a site's files (configs, logs, the VM's console).
    pub fn run_dir(&self, site: &str) -> PathBuf {
        PathBuf::from("/run/sitelink-lab")
            .join(&self.name)
            .join(site)
    }

    /// The route installer's status of `site`, through `lab status --json`.
    pub fn router_status(&self, site: &str) -> serde_json::Value {
        let out = self.run(&["lab", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .and_then(|a| a.iter().find(|s| s["site"] == site))
            .map(|s| s["routed"].clone())
            .unwrap_or_default()
    }

    /// A ping train (`count` pings `interval` s apart) from the LAN host of `from` to `addr`.
    pub fn ping_train(&self, from: &str, addr: &str, interval: &str, count: u32) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns("l", from), "ping", "-i", interval])
            .args(["-c", &count.to_string(), "-W", "1", addr])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down"]);
        let _ = fs::remove_file(&self.file);
        let _ = fs::remove_dir_all(PathBuf::from("/var/lib/sitelink-lab").join(&self.name));
    }
}

/// Average RTT in ms of `count` pings from namespace `ns` to `addr`, or None if none came back.
pub fn ping_avg(ns: &str, addr: &str, count: u32) -> Option<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-q", "-i", "0.1", "-W", "1"])
        .args(["-c", &count.to_string(), addr])
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

pub use sitelink::lab::bench::longest_gap;

/// `PREFIX VIA METRIC PATH` of the active route of `prefix` in a router status.
pub fn active_route(status: &serde_json::Value, prefix: &str) -> String {
    status["prefixes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["prefix"] == prefix))
        .map(|p| {
            format!(
                "{prefix} {} {} {}",
                p["via"].as_str().unwrap_or("-"),
                p["metric"],
                p["path"].as_str().unwrap_or("-")
            )
        })
        .unwrap_or_default()
}

/// The seed mesh's LAN hosts.
pub const HOSTS: [(&str, &str); 4] = [
    ("aws", "10.1.0.10"),
    ("gcp", "10.2.0.10"),
    ("azure", "10.3.0.10"),
    ("office", "192.168.10.10"),
];
