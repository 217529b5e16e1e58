//! Netns tier of the route installer: every test makes its own network namespaces (deleted on
//! drop, also when the test fails) and runs the reconciler on a thread inside them, with persistent
//! TUN interfaces (or a veth pair) standing in for tunnels. Nothing touches the host namespace.
//!
//! Run as root: `cargo test -p sitelink-routes --test netns -- --ignored --test-threads 2`.
//! Needs iproute2. The tests fail (not skip) without root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sitelink_config::site::{Route, RouteKind, SiteConfig};
use sitelink_routes::{
    bench, netns, run_routed_with, Desired, DesiredRoute, Options, ProbeState, Reconciler,
    RoutedOptions, RoutesError, Status, Target, DIRECT_TABLE,
};

// ---------- helpers ----------

fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "the netns tier needs root (creates network namespaces); run the ignored tests as root"
    );
}

/// A network namespace that is deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        require_root();
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "slr-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NS ARGS`, must succeed; returns stdout.
    fn ip(&self, args: &str) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        sh(&v)
    }

    /// `ip netns exec NS CMD...`, must succeed.
    fn exec(&self, cmd: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend(cmd);
        sh(&v)
    }

    fn dummies(&self, names: &[&str]) {
        for n in names {
            // Persistent TUN devices: what the data plane's interfaces are (this machine's
            // kernel has no dummy driver).
            self.ip(&format!("tuntap add {n} mode tun"));
        }
    }

    /// Run `f` with a fresh reconciler inside the namespace.
    fn with<T: Send + 'static>(
        &self,
        opts: Options,
        f: impl FnOnce(&mut Reconciler) -> T + Send + 'static,
    ) -> T {
        netns::run_in(&self.name, move || {
            let mut r = Reconciler::with_options(opts).expect("open reconciler");
            f(&mut r)
        })
        .expect("enter namespace")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Warnings logged, by thread name (each netns thread is named `netns-<ns>`).
fn logs() -> &'static Mutex<Vec<(String, log::Level, String)>> {
    static LOGS: OnceLock<Mutex<Vec<(String, log::Level, String)>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct L;
        impl log::Log for L {
            fn enabled(&self, m: &log::Metadata) -> bool {
                m.level() <= log::Level::Info
            }
            fn log(&self, r: &log::Record) {
                let t = std::thread::current().name().unwrap_or("").to_owned();
                eprintln!("[{t}] {} {}", r.level(), r.args());
                if let Ok(mut v) = logs().lock() {
                    v.push((t, r.level(), r.args().to_string()));
                }
            }
            fn flush(&self) {}
        }
        let _ = log::set_boxed_logger(Box::new(L));
        log::set_max_level(log::LevelFilter::Info);
        Mutex::new(Vec::new())
    })
}

fn warnings_of(ns: &Ns) -> Vec<String> {
    let t = format!("netns-{}", ns.name);
    logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|(th, l, _)| *th == t && *l == log::Level::Warn)
        .map(|(_, _, m)| m.clone())
        .collect()
}

fn aws() -> SiteConfig {
    let text = include_str!("../../../configs/golden/seed-mesh/aws.toml");
    SiteConfig::parse(text, "aws.toml").expect("golden config parses")
}

const AWS_LINKS: [&str; 3] = ["wg-gcp", "wg-azure", "wg-office"];

fn desired(cfg: &SiteConfig) -> Desired {
    Desired::from_site(cfg, &BTreeSet::new()).expect("desired")
}

fn count_lines(s: &str) -> usize {
    s.lines().filter(|l| !l.trim().is_empty()).count()
}

// ---------- tests ----------

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r9_apply_twice_second_is_0_changes() {
    let _ = logs();
    let ns = Ns::new("r9");
    ns.dummies(&AWS_LINKS);
    let d = desired(&aws());
    let (first, second) = ns.with(Options::default(), move |r| {
        (r.apply(&d).expect("apply 1"), r.apply(&d).expect("apply 2"))
    });
    assert!(first.is_complete(), "{:?}", first.failures);
    // 3 links, 3 addresses, 9 + 6 routes, 3 rules, ip_forward + 3 rp_filter.
    assert_eq!(first.routes_added, 15, "{first}");
    assert_eq!(first.addresses_added, 3);
    assert_eq!(first.rules_added, 3);
    assert_eq!(second.changes(), 0, "{second}");
    assert!(second.to_string().starts_with("0 changes"), "{second}");
    let main = ns.ip("route show proto 83");
    assert_eq!(count_lines(&main), 9, "{main}");
    assert!(
        main.contains("10.2.0.0/24 dev wg-gcp scope link metric 100"),
        "{main}"
    );
    assert!(
        main.contains("10.2.0.0/24 dev wg-azure scope link metric 200"),
        "{main}"
    );
    let link = ns.ip("link show dev wg-gcp");
    assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");
    assert_eq!(
        ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    assert_eq!(
        ns.exec(&["sysctl", "-n", "net.ipv4.conf.wg-gcp.rp_filter"])
            .trim(),
        "2"
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r1_table_above_255_goes_in_rta_table() {
    let ns = Ns::new("r1");
    ns.dummies(&AWS_LINKS);
    let mut cfg = aws();
    cfg.route_table = 51820;
    let d = desired(&cfg);
    let rep = ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    assert!(rep.is_complete(), "{:?}", rep.failures);
    let t = ns.ip("route show table 51820");
    assert_eq!(count_lines(&t), 9, "{t}");
    assert!(
        t.contains("10.3.0.0/24 dev wg-azure proto 83 scope link metric 100"),
        "{t}"
    );
    // Nothing leaked into main.
    assert_eq!(count_lines(&ns.ip("route show proto 83")), 0);
    let rules = ns.ip("rule show");
    assert!(rules.contains("lookup 51820 proto 83"), "{rules}");
    assert!(
        rules.contains("iif wg-gcp lookup 51898 proto 83"),
        "{rules}"
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r2_no_broadcast_on_31_and_32() {
    let ns = Ns::new("r2");
    ns.dummies(&AWS_LINKS);
    let mut cfg = aws();
    cfg.interfaces[0].addresses = vec![
        "10.255.0.0/31".parse().unwrap(),
        "10.255.0.1/32".parse().unwrap(),
    ];
    let d = desired(&cfg);
    let rep = ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    assert!(rep.is_complete(), "{:?}", rep.failures);
    let a = ns.ip("-4 addr show dev wg-gcp");
    assert!(a.contains("inet 10.255.0.0/31"), "{a}");
    assert!(a.contains("inet 10.255.0.1/32"), "{a}");
    assert!(!a.contains("brd"), "broadcast address set: {a}");
    // The addresses are ours (IFA_PROTO).
    let owned = ns.with(Options::default(), |r| r.kernel_state().expect("dump"));
    assert_eq!(
        owned
            .addrs
            .iter()
            .filter(|a| a.protocol == sitelink_routes::RTPROT_SITELINK)
            .count(),
        4
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r3_kernel_errors_name_operation_prefix_and_errno() {
    let _ = logs();
    let ns = Ns::new("r3");
    ns.dummies(&AWS_LINKS);
    // Through the config: host bits are masked with a warning, never a kernel error.
    let mut cfg = aws();
    cfg.routes.push(Route {
        prefix: "10.3.0.7/16".parse().unwrap(),
        site: "azure".into(),
        via: "wg-azure".into(),
        metric: 300,
        kind: RouteKind::Transit,
    });
    let d = desired(&cfg);
    // A hand-made desired state with host bits: the kernel refuses; the error is ours.
    let mut raw = desired(&aws());
    raw.routes.push(DesiredRoute {
        table: 254,
        prefix: "10.7.0.9/16".parse().unwrap(),
        metric: 100,
        target: Target::Dev("wg-gcp".into()),
    });
    let rep = ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    assert!(rep.is_complete(), "{:?}", rep.failures);
    assert!(ns.ip("route show 10.3.0.0/16").contains("metric 300"));
    assert!(warnings_of(&ns)
        .iter()
        .any(|w| w.contains("10.3.0.7/16") && w.contains("host bits")));
    let rep_raw = ns.with(Options::default(), move |r| {
        r.apply(&raw).expect("apply raw")
    });
    assert_eq!(rep_raw.failures.len(), 1, "{rep_raw}");
    let msg = rep_raw.failures[0].to_string();
    assert!(
        msg.contains("ip route add 10.7.0.9/16 dev wg-gcp metric 100 table 254 proto 83"),
        "{msg}"
    );
    assert!(msg.contains("Invalid argument"), "{msg}");
    // The rest of that apply went through: it removed the masked route and its unreachable
    // fallback in the direct table, nothing else.
    assert_eq!(rep_raw.routes_removed, 2, "{rep_raw}");
    assert_eq!(rep_raw.changes(), 2, "{rep_raw}");
    let e = rep_raw.into_result().expect_err("partial");
    assert!(
        e.to_string()
            .starts_with("1 of 3 netlink operations failed; first: `ip route add 10.7.0.9/16"),
        "{e}"
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r4_one_family_never_suppresses_the_other() {
    let ns = Ns::new("r4");
    ns.dummies(&AWS_LINKS);
    let mut cfg = aws();
    for p in ["10.4.0.0/24", "192.168.50.0/24", "::/0"] {
        cfg.routes.push(Route {
            prefix: p.parse().unwrap(),
            site: "gcp".into(),
            via: "wg-gcp".into(),
            metric: 100,
            kind: RouteKind::Direct,
        });
    }
    cfg.interfaces[0]
        .addresses
        .push("fd00:255::/127".parse().unwrap());
    let d = desired(&cfg);
    let d2 = d.clone();
    let rep = ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    assert!(rep.is_complete(), "{:?}", rep.failures);
    let v4 = ns.ip("route show dev wg-gcp proto 83");
    assert!(
        v4.contains("10.4.0.0/24") && v4.contains("192.168.50.0/24"),
        "{v4}"
    );
    let v6 = ns.ip("-6 route show proto 83");
    assert!(v6.contains("default dev wg-gcp metric 100"), "{v6}");
    assert!(ns.ip("-6 rule show").contains("iif wg-gcp lookup 51898"));

    // IPv6 off on that one tunnel: its v6 objects are skipped, v4 untouched.
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.wg-gcp.disable_ipv6=1"]);
    let rep = ns.with(Options::default(), move |r| r.apply(&d2).expect("apply"));
    assert!(rep.is_complete(), "{:?}", rep.failures);
    assert!(rep.skipped_v6 > 0, "{rep}");
    let v4 = ns.ip("route show dev wg-gcp proto 83");
    assert!(
        v4.contains("10.4.0.0/24") && v4.contains("192.168.50.0/24"),
        "{v4}"
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r5_ipv6_disabled_v4_installed_one_warning() {
    let _ = logs();
    let ns = Ns::new("r5");
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    ns.dummies(&AWS_LINKS);
    let mut cfg = aws();
    cfg.routes.push(Route {
        prefix: "fd10::/64".parse().unwrap(),
        site: "gcp".into(),
        via: "wg-gcp".into(),
        metric: 100,
        kind: RouteKind::Direct,
    });
    cfg.interfaces[0]
        .addresses
        .push("fd00:255::/127".parse().unwrap());
    let d = desired(&cfg);
    let (a, b) = ns.with(Options::default(), move |r| {
        (r.apply(&d).expect("apply"), r.apply(&d).expect("apply 2"))
    });
    assert!(a.is_complete(), "{:?}", a.failures);
    assert!(a.skipped_v6 >= 3, "{a}");
    assert_eq!(b.changes(), 0, "{b}");
    assert_eq!(count_lines(&ns.ip("route show proto 83")), 9);
    assert!(ns.ip("link show dev wg-gcp").contains(",UP"));
    let w: Vec<_> = warnings_of(&ns)
        .into_iter()
        .filter(|w| w.contains("IPv6"))
        .collect();
    assert_eq!(w.len(), 1, "exactly one IPv6 warning: {w:?}");
    assert!(w[0].contains("IPv6 is disabled"), "{w:?}");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r6_foreign_route_left_alone_and_reported() {
    let ns = Ns::new("r6");
    ns.dummies(&AWS_LINKS);
    ns.ip("link set wg-office up");
    ns.ip("route add 10.2.0.0/24 dev wg-office metric 100");
    let d = desired(&aws());
    let (rep, w) = ns.with(Options::default(), move |r| {
        (
            r.apply(&d).expect("apply"),
            r.withdraw_all().expect("withdraw"),
        )
    });
    assert!(rep.is_complete(), "{:?}", rep.failures);
    assert_eq!(rep.conflicts.len(), 1, "{:?}", rep.conflicts);
    let c = &rep.conflicts[0];
    assert!(c.blocks_ours && c.metric == 100 && c.prefix.to_string() == "10.2.0.0/24");
    assert!(w.routes_removed > 0);
    let left = ns.ip("route show 10.2.0.0/24");
    // Only the foreign route is left ("linkdown": a TUN without a process has no carrier).
    assert_eq!(count_lines(&left), 1, "{left}");
    assert!(
        left.starts_with("10.2.0.0/24 dev wg-office scope link metric 100"),
        "{left}"
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_r8_missing_or_foreign_interface_clear_error_nothing_changed() {
    let ns = Ns::new("r8");
    // wg-gcp missing; wg-azure a bridge (not ours); wg-office fine.
    ns.ip("link add wg-azure type bridge");
    ns.ip("link set wg-azure up");
    ns.dummies(&["wg-office"]);
    ns.ip("route add 10.3.0.0/24 dev wg-azure");
    let before = (ns.ip("route show table all"), ns.ip("addr show"));
    let d = desired(&aws());
    let t = Instant::now();
    let e = ns.with(Options::default(), move |r| {
        r.apply(&d).expect_err("must fail")
    });
    assert!(t.elapsed() < Duration::from_secs(2), "no hang");
    assert!(matches!(e, RoutesError::MissingInterface { .. }), "{e}");
    assert!(e.to_string().contains("wg-gcp does not exist"), "{e}");
    ns.dummies(&["wg-gcp"]);
    let d = desired(&aws());
    let e = ns.with(Options::default(), move |r| {
        r.apply(&d).expect_err("must fail")
    });
    assert!(
        e.to_string()
            .contains("wg-azure exists but is a bridge device"),
        "{e}"
    );
    let after_routes = ns.ip("route show table all");
    assert_eq!(before.0, after_routes, "routes changed");
    assert!(!ns.ip("addr show").contains("10.255."), "addresses added");
    assert!(ns.ip("route show 10.3.0.0/24").contains("dev wg-azure"));
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_crash_adoption_no_duplicates() {
    let ns = Ns::new("crash");
    ns.dummies(&AWS_LINKS);
    let d = desired(&aws());
    let d2 = d.clone();
    // First reconciler applies and is dropped without cleanup (a crash).
    ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    let rep = ns.with(Options::default(), move |r| r.apply(&d2).expect("apply"));
    assert_eq!(rep.changes(), 0, "{rep}");
    assert_eq!(count_lines(&ns.ip("route show proto 83")), 9);
    assert_eq!(
        count_lines(&ns.ip(&format!("route show table {DIRECT_TABLE}"))),
        6
    );
    let addrs = ns.ip("-4 addr show");
    assert_eq!(addrs.matches("inet 10.255.").count(), 3, "{addrs}");
    assert_eq!(ns.ip("rule show").matches("lookup 51898").count(), 3);
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_withdraw_leaves_foreign_routes_and_addresses() {
    let ns = Ns::new("wd");
    ns.dummies(&AWS_LINKS);
    let d = desired(&aws());
    ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    ns.ip("route add 10.99.0.0/24 dev wg-gcp metric 5");
    ns.ip(&format!(
        "route add 10.98.0.0/24 dev wg-gcp table {DIRECT_TABLE}"
    ));
    ns.ip("addr add 10.77.0.1/24 dev wg-gcp");
    let w = ns.with(Options::default(), |r| r.withdraw_all().expect("withdraw"));
    assert_eq!(w.routes_removed, 15, "{w}");
    assert_eq!(w.addresses_removed, 3, "{w}");
    assert_eq!(w.rules_removed, 3, "{w}");
    assert_eq!(count_lines(&ns.ip("route show proto 83 table all")), 0);
    assert!(ns
        .ip("route show")
        .contains("10.99.0.0/24 dev wg-gcp scope link metric 5"));
    assert!(ns
        .ip(&format!("route show table {DIRECT_TABLE}"))
        .contains("10.98.0.0/24"));
    assert!(ns.ip("addr show dev wg-gcp").contains("10.77.0.1/24"));
    assert!(!ns.ip("rule show").contains("51898"));
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_config_change_applies_minimal_difference() {
    let ns = Ns::new("chg");
    ns.dummies(&AWS_LINKS);
    let d = desired(&aws());
    let mut cfg = aws();
    // Drop office's transit backup for gcp's prefix, move azure's 200 backup to office.
    cfg.routes
        .retain(|r| !(r.prefix.to_string() == "10.2.0.0/24" && r.via == "wg-office"));
    for r in cfg.routes.iter_mut() {
        if r.prefix.to_string() == "10.3.0.0/24" && r.metric == 200 {
            r.via = "wg-office".into();
        }
    }
    let d2 = desired(&cfg);
    let rep = ns.with(Options::default(), move |r| {
        r.apply(&d).expect("apply");
        r.apply(&d2).expect("apply 2")
    });
    assert_eq!(
        (rep.routes_added, rep.routes_replaced, rep.routes_removed),
        (0, 1, 1),
        "{rep}"
    );
    assert_eq!(rep.changes(), 2, "{rep}");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_loop_free_transit_rule() {
    let ns = Ns::new("loop");
    ns.dummies(&AWS_LINKS);
    ns.dummies(&["lan0"]);
    ns.ip("link set lan0 up");
    ns.ip("addr add 10.1.0.1/24 dev lan0");
    let cfg = aws();
    let d = desired(&cfg);
    ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    // Arriving on wg-azure for gcp's LAN: the direct tunnel, from T_direct.
    let g = ns.ip("route get 10.2.0.5 from 10.3.0.5 iif wg-azure");
    assert!(g.contains("dev wg-gcp") && g.contains("table 51898"), "{g}");
    // Our own LAN is still reachable from a tunnel.
    let g = ns.ip("route get 10.1.0.5 from 10.3.0.5 iif wg-azure");
    assert!(g.contains("dev lan0"), "{g}");
    // gcp's tunnel down: locally we fail over to a transit backup ...
    let down = BTreeSet::from(["wg-gcp".to_string()]);
    let d = Desired::from_site(&cfg, &down).expect("desired");
    ns.with(Options::default(), move |r| r.apply(&d).expect("apply"));
    let g = ns.ip("route get 10.2.0.5");
    assert!(g.contains("dev wg-azure"), "{g}");
    // ... but transit traffic from azure is never sent on to a second transit hop.
    let out = Command::new("ip")
        .args([
            "-n", &ns.name, "route", "get", "10.2.0.5", "from", "10.3.0.5",
        ])
        .args(["iif", "wg-azure"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("unreachable"),
        "transit packet not stopped: {text}"
    );
    assert!(
        !text.contains("dev wg-office") && !text.contains("dev wg-azure"),
        "{text}"
    );
}

/// Two routers A and B joined by a veth pair (A's end is wg-b, B's end is wg-a). A also has a
/// TUN transit tunnel wg-c that carries B's prefix as a backup.
fn probe_cfg(me: &str, peer: &str, local: &str, remote: &str, backup: bool) -> SiteConfig {
    let mut cfg = aws();
    cfg.site = me.into();
    cfg.probe.interval_ms = 100;
    cfg.probe.down_after = 3;
    cfg.probe.up_after = 3;
    let mut tun = cfg.interfaces[0].clone();
    tun.name = format!("wg-{peer}");
    tun.addresses = vec![format!("{local}/31").parse().unwrap()];
    tun.peer_address = Some(remote.parse().unwrap());
    let mut backup_if = cfg.interfaces[1].clone();
    backup_if.name = "wg-c".into();
    backup_if.addresses = vec!["10.255.9.0/31".parse().unwrap()];
    backup_if.peer_address = None;
    cfg.interfaces = vec![tun];
    cfg.routes = vec![Route {
        prefix: if me == "a" {
            "10.2.0.0/24"
        } else {
            "10.1.0.0/24"
        }
        .parse()
        .unwrap(),
        site: peer.into(),
        via: format!("wg-{peer}"),
        metric: 100,
        kind: RouteKind::Direct,
    }];
    if backup {
        cfg.interfaces.push(backup_if);
        cfg.routes.push(Route {
            prefix: "10.2.0.0/24".parse().unwrap(),
            site: peer.into(),
            via: "wg-c".into(),
            metric: 200,
            kind: RouteKind::Transit,
        });
    }
    cfg
}

struct Routed {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Status>>,
    thread: Option<std::thread::JoinHandle<Result<(), RoutesError>>>,
}

impl Routed {
    fn start(ns: &Ns, cfg: SiteConfig) -> Routed {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(Status::default()));
        let (s2, st2, name) = (Arc::clone(&stop), Arc::clone(&status), ns.name.clone());
        let thread = std::thread::spawn(move || {
            netns::run_in(&name, move || {
                let mut opts = RoutedOptions {
                    status_path: None,
                    status: Some(st2),
                    wait_for_interfaces: Duration::from_secs(2),
                    ..RoutedOptions::default()
                };
                opts.reconciler.accepted_kinds.push("veth".into());
                run_routed_with(cfg, opts, s2)
            })?
        });
        Routed {
            stop,
            status,
            thread: Some(thread),
        }
    }

    fn tunnel_state(&self, ifname: &str) -> Option<ProbeState> {
        self.status.lock().unwrap().tunnel(ifname).map(|t| t.state)
    }

    fn stop(mut self) -> Result<(), RoutesError> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("routed thread")
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_probe_down_and_up_between_two_namespaces() {
    let _ = logs();
    let a = Ns::new("pa");
    let b = Ns::new("pb");
    sh(&[
        "ip",
        "link",
        "add",
        "slr-tmp-a",
        "netns",
        &a.name,
        "type",
        "veth",
        "peer",
        "name",
        "slr-tmp-b",
        "netns",
        &b.name,
    ]);
    a.ip("link set slr-tmp-a name wg-b");
    b.ip("link set slr-tmp-b name wg-a");
    a.dummies(&["wg-c"]);
    let cfg_a = probe_cfg("a", "b", "10.255.0.0", "10.255.0.1", true);
    let cfg_b = probe_cfg("b", "a", "10.255.0.1", "10.255.0.0", false);

    let ra = Routed::start(&a, cfg_a);
    let rb = Routed::start(&b, cfg_b.clone());
    wait_until(Duration::from_secs(5), "A sees wg-b up", || {
        ra.tunnel_state("wg-b") == Some(ProbeState::Up)
    });
    let st = ra.status.lock().unwrap().clone();
    let t = st.tunnel("wg-b").unwrap();
    assert!(t.rtt_us.is_some(), "{st}");
    let p = st.prefix(&"10.2.0.0/24".parse().unwrap()).unwrap();
    assert_eq!(p.via.as_deref(), Some("wg-b"), "{st}");
    assert!(a.ip("route show 10.2.0.0/24").contains("dev wg-b"));

    // B stops (no more answers): A withdraws the direct route; the backup carries it.
    let t0 = Instant::now();
    rb.stop().expect("B ran cleanly");
    wait_until(Duration::from_secs(3), "A sees wg-b down", || {
        ra.tunnel_state("wg-b") == Some(ProbeState::Down)
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "down too early: {took:?}"
    );
    wait_until(Duration::from_secs(1), "direct route withdrawn", || {
        !a.ip("route show 10.2.0.0/24").contains("dev wg-b")
    });
    let r = a.ip("route show 10.2.0.0/24");
    assert!(r.contains("dev wg-c") && r.contains("metric 200"), "{r}");
    let st = ra.status.lock().unwrap().clone();
    assert_eq!(
        st.prefix(&"10.2.0.0/24".parse().unwrap()).unwrap().path,
        "transit",
        "{st}"
    );

    // B back: up after 3 answers, direct route restored.
    let rb = Routed::start(&b, cfg_b);
    wait_until(Duration::from_secs(5), "A sees wg-b up again", || {
        ra.tunnel_state("wg-b") == Some(ProbeState::Up)
    });
    wait_until(Duration::from_secs(1), "direct route restored", || {
        a.ip("route show 10.2.0.0/24").contains("dev wg-b")
    });
    rb.stop().expect("B stops");
    ra.stop().expect("A stops");
    assert_eq!(count_lines(&a.ip("route show proto 83 table all")), 0);
    assert!(!a.ip("addr show").contains("10.255.0.0"));
    let log = logs().lock().unwrap().clone();
    assert!(
        log.iter().any(|(_, l, m)| *l == log::Level::Info
            && m.contains("tunnel wg-b up -> down")
            && (m.contains("3 consecutive probes unanswered") || m.contains("nothing heard for"))
            && m.contains("rtt")),
        "transition not logged"
    );
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_stale_handshake_withdraws_routes() {
    let _ = logs();
    let ns = Ns::new("hs");
    ns.dummies(&["wg-b", "wg-c"]);
    let mut cfg = probe_cfg("a", "b", "10.255.0.0", "10.255.0.1", true);
    // No probe peer: only the handshake input decides.
    cfg.interfaces[0].peer_address = None;
    let age = Arc::new(std::sync::atomic::AtomicU64::new(5));
    let age2 = Arc::clone(&age);
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(Status::default()));
    let (s2, st2, name) = (Arc::clone(&stop), Arc::clone(&status), ns.name.clone());
    let th = std::thread::spawn(move || {
        netns::run_in(&name, move || {
            let opts = RoutedOptions {
                status_path: None,
                status: Some(st2),
                handshakes: Some(Box::new(move |ifname: &str| {
                    (ifname == "wg-b").then(|| Duration::from_secs(age2.load(Ordering::SeqCst)))
                })),
                ..RoutedOptions::default()
            };
            run_routed_with(cfg, opts, s2)
        })
    });
    wait_until(Duration::from_secs(3), "direct route installed", || {
        ns.ip("route show 10.2.0.0/24").contains("dev wg-b")
    });
    age.store(200, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(2),
        "stale tunnel's route withdrawn",
        || !ns.ip("route show 10.2.0.0/24").contains("dev wg-b"),
    );
    assert!(ns.ip("route show 10.2.0.0/24").contains("dev wg-c"));
    let st = status.lock().unwrap().clone();
    let t = st.tunnel("wg-b").unwrap();
    assert!(!t.routable && t.reason.contains("200 s"), "{st}");
    age.store(3, Ordering::SeqCst);
    wait_until(Duration::from_secs(2), "route restored", || {
        ns.ip("route show 10.2.0.0/24").contains("dev wg-b")
    });
    stop.store(true, Ordering::SeqCst);
    th.join().unwrap().unwrap().unwrap();
    assert_eq!(count_lines(&ns.ip("route show proto 83 table all")), 0);
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_bench_10k_routes() {
    require_root();
    let r = bench(10_000).expect("bench");
    println!("{r}");
    assert_eq!(r.second_changes, 0, "{r}");
    assert!(r.cold_changes >= 10_000, "{r}");
    assert!(r.withdrawn >= 10_000, "{r}");
}
