//! netns tier: sitelink-wg against wireguard-go (Debian package) and the stock `wg`/`wg-quick`
//! tools, in network namespaces joined by a veth pair. Needs root; run with
//! `cargo test -p sitelink-wg -- --ignored netns_`. Each test fails (not skips) without root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sitelink_testinfra::{
    cmd, require_root, run, unique_name, veth_pair, wait_until, ChildGuard, Netns,
};

/// The `sitelink-router` binary, built on demand, reached through a `sitelink-wg` symlink in a
/// private directory (the name selects the userspace contract).
fn sitelink_wg_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/netns-xxxx -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let release = profile_dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "sitelink-router"]);
        if release {
            build.arg("--release");
        }
        run(&mut build).expect("build sitelink-router");
        let bin = profile_dir.join("sitelink-router");
        assert!(bin.exists(), "{} missing after build", bin.display());
        let dir = std::env::temp_dir().join(format!("sitelink-wg-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bin dir");
        let link = dir.join("sitelink-wg");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&bin, &link).expect("symlink sitelink-wg");
        dir
    })
}

fn sitelink_wg() -> PathBuf {
    sitelink_wg_dir().join("sitelink-wg")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Sitelink,
    WireguardGo,
}

fn genkey() -> (String, String) {
    let private = run(&mut cmd("wg", ["genkey"]))
        .expect("wg genkey")
        .trim()
        .to_string();
    let public = run(&mut cmd(
        "sh",
        ["-c", &format!("echo {private} | wg pubkey")],
    ))
    .expect("wg pubkey")
    .trim()
    .to_string();
    (private, public)
}

fn socket_path(ifname: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"))
}

/// One side: a namespace with an outer veth address and a WireGuard interface.
struct Site {
    ifname: String,
    private: String,
    public: String,
    key_file: PathBuf,
    outer: String,
    inner: String,
    daemon: Option<ChildGuard>,
    ns: Netns,
}

impl Site {
    fn wg(&self, args: &[&str]) -> String {
        self.ns.run("wg", args).expect("wg command")
    }

    fn ping(&self, to: &str, count: u32) -> Result<String, String> {
        let c = count.to_string();
        self.ns
            .run("ping", ["-c", &c, "-i", "0.2", "-W", "2", to])
            .map_err(|e| e.to_string())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_file(&self.key_file);
        // wireguard-go leaves nothing behind when killed; make sure of it.
        let _ = std::fs::remove_file(socket_path(&self.ifname));
    }
}

fn start_daemon(ns: &Netns, which: Impl, ifname: &str) -> ChildGuard {
    let child = match which {
        Impl::Sitelink => ns.spawn(sitelink_wg().to_str().expect("utf8 path"), ["-f", ifname]),
        Impl::WireguardGo => ns.spawn("wireguard-go", ["-f", ifname]),
    }
    .expect("start daemon");
    wait_until(Duration::from_secs(10), || socket_path(ifname).exists())
        .unwrap_or_else(|e| panic!("{which:?} {ifname}: control socket: {e}"));
    child
}

fn new_site(ns: Netns, which: Option<Impl>, outer: &str, inner: &str) -> Site {
    let ifname = unique_name("wgt");
    let (private, public) = genkey();
    let key_file = std::env::temp_dir().join(format!("{ifname}.key"));
    std::fs::write(&key_file, format!("{private}\n")).expect("key file");
    let daemon = which.map(|w| start_daemon(&ns, w, &ifname));
    Site {
        ifname,
        private,
        public,
        key_file,
        outer: outer.into(),
        inner: inner.into(),
        daemon,
        ns,
    }
}

fn host(addr_with_len: &str) -> &str {
    addr_with_len.split('/').next().unwrap_or(addr_with_len)
}

fn endpoint(addr: &str, port: u16) -> String {
    let ip = host(addr);
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn host_prefix(addr: &str) -> String {
    let ip = host(addr);
    if ip.contains(':') {
        format!("{ip}/128")
    } else {
        format!("{ip}/32")
    }
}

/// Configures `me` to talk to `other` over UDP port `port` and brings the interface up.
fn configure(me: &Site, other: &Site, port: u16, other_port: u16) {
    let key = me.key_file.to_str().expect("utf8");
    let p = port.to_string();
    let ep = endpoint(&other.outer, other_port);
    let allowed = host_prefix(&other.inner);
    me.wg(&[
        "set",
        &me.ifname,
        "private-key",
        key,
        "listen-port",
        &p,
        "peer",
        &other.public,
        "allowed-ips",
        &allowed,
        "endpoint",
        &ep,
    ]);
    me.ns.addr_up(&me.ifname, &me.inner).expect("inner address");
}

struct Pair {
    a: Site,
    b: Site,
}

/// Two namespaces joined by a veth; `a` runs `ia`, `b` runs `ib`; both configured and up.
fn pair(ia: Impl, ib: Impl, v6_outer: bool, inner_a: &str, inner_b: &str) -> Pair {
    require_root();
    let na = Netns::new("wa").expect("netns a");
    let nb = Netns::new("wb").expect("netns b");
    let (va, vb) = (unique_name("va"), unique_name("vb"));
    veth_pair(&na, &va, &nb, &vb).expect("veth");
    let (oa, ob) = if v6_outer {
        ("fd77::1/64", "fd77::2/64")
    } else {
        ("192.168.77.1/24", "192.168.77.2/24")
    };
    na.addr_up(&va, oa).expect("outer a");
    nb.addr_up(&vb, ob).expect("outer b");
    let a = new_site(na, Some(ia), oa, inner_a);
    let b = new_site(nb, Some(ib), ob, inner_b);
    configure(&a, &b, 51820, 51821);
    configure(&b, &a, 51821, 51820);
    Pair { a, b }
}

fn iperf(client: &Site, server: &Site, secs: u32) -> String {
    let srv = server
        .ns
        .spawn("iperf3", ["-s", "-1"])
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let t = secs.to_string();
    let out = client
        .ns
        .run("iperf3", ["-c", host(&server.inner), "-t", &t])
        .expect("iperf3 client");
    drop(srv);
    out
}

fn assert_show_sane(site: &Site, peer: &Site) {
    let show = site.wg(&["show", &site.ifname]);
    assert!(
        show.contains(&format!("public key: {}", site.public)),
        "{show}"
    );
    assert!(show.contains(&format!("peer: {}", peer.public)), "{show}");
    assert!(
        show.contains("latest handshake: Now") || show.contains("seconds ago"),
        "wg show must report a recent handshake:\n{show}"
    );
    assert!(show.contains("transfer:"), "{show}");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_interop_with_wireguard_go_both_directions() {
    for (ia, ib) in [
        (Impl::Sitelink, Impl::WireguardGo),
        (Impl::WireguardGo, Impl::Sitelink),
    ] {
        let p = pair(ia, ib, false, "10.77.0.1/24", "10.77.0.2/24");
        p.a.ping(host(&p.b.inner), 3).expect("ping a -> b");
        p.b.ping(host(&p.a.inner), 3).expect("ping b -> a");
        let out = iperf(&p.a, &p.b, 2);
        assert!(out.contains("receiver"), "{out}");
        let out = iperf(&p.b, &p.a, 2);
        assert!(out.contains("receiver"), "{out}");
        let (ours, theirs) = if ia == Impl::Sitelink {
            (&p.a, &p.b)
        } else {
            (&p.b, &p.a)
        };
        assert_show_sane(ours, theirs);
        std::thread::sleep(Duration::from_millis(1100));
        let show = ours.wg(&["show", &ours.ifname]);
        assert!(show.contains("second"), "handshake age in seconds:\n{show}");
    }
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_ipv6_outer_and_inner() {
    let p = pair(
        Impl::Sitelink,
        Impl::WireguardGo,
        true,
        "fd10::1/64",
        "fd10::2/64",
    );
    p.a.ping(host(&p.b.inner), 3)
        .expect("ping6 a -> b over IPv6 outer");
    p.b.ping(host(&p.a.inner), 3).expect("ping6 b -> a");
    let show = p.a.wg(&["show", &p.a.ifname, "endpoints"]);
    assert!(show.contains("[fd77::2]:51821"), "{show}");
    // TCP over IPv6 inside: exercises TSO6 segmentation on our side.
    let out = iperf(&p.a, &p.b, 2);
    assert!(out.contains("receiver"), "{out}");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_persistent_keepalive_handshakes_at_once() {
    require_root();
    let na = Netns::new("ka").expect("netns a");
    let nb = Netns::new("kb").expect("netns b");
    let (va, vb) = (unique_name("va"), unique_name("vb"));
    veth_pair(&na, &va, &nb, &vb).expect("veth");
    na.addr_up(&va, "192.168.79.1/24").expect("outer a");
    nb.addr_up(&vb, "192.168.79.2/24").expect("outer b");
    let a = new_site(na, Some(Impl::Sitelink), "192.168.79.1/24", "10.81.0.1/24");
    let b = new_site(
        nb,
        Some(Impl::WireguardGo),
        "192.168.79.2/24",
        "10.81.0.2/24",
    );
    configure(&b, &a, 51821, 51820);
    configure(&a, &b, 51820, 51821);
    // No traffic at all: setting a persistent keepalive must start a handshake at once (D1),
    // not after the first 25 s interval.
    a.wg(&[
        "set",
        &a.ifname,
        "peer",
        &b.public,
        "persistent-keepalive",
        "25",
    ]);
    wait_until(Duration::from_secs(3), || {
        let hs = b.wg(&["show", &b.ifname, "latest-handshakes"]);
        hs.split_whitespace().nth(1).is_some_and(|t| t != "0")
    })
    .expect("handshake within 3 s of enabling persistent keepalive");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_sitelink_to_sitelink_and_peer_update_while_traffic_flows() {
    let p = pair(
        Impl::Sitelink,
        Impl::Sitelink,
        false,
        "10.78.0.1/24",
        "10.78.0.2/24",
    );
    p.a.ping(host(&p.b.inner), 2).expect("initial ping");
    let before = p.a.wg(&["show", &p.a.ifname, "latest-handshakes"]);
    // Traffic in the background while the peer is updated in place (U1).
    let pinger =
        p.a.ns
            .spawn("ping", ["-c", "25", "-i", "0.1", host(&p.b.inner)])
            .expect("background ping");
    std::thread::sleep(Duration::from_millis(500));
    let ep = endpoint(&p.b.outer, 51821);
    p.a.wg(&[
        "set",
        &p.a.ifname,
        "peer",
        &p.b.public,
        "endpoint",
        &ep,
        "persistent-keepalive",
        "5",
    ]);
    p.a.wg(&[
        "set",
        &p.a.ifname,
        "peer",
        &p.b.public,
        "allowed-ips",
        "10.78.0.2/32,10.99.0.0/24",
    ]);
    let out = pinger.finish(false).expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss") || text.contains(" 4% packet loss"),
        "{text}"
    );
    let after = p.a.wg(&["show", &p.a.ifname, "latest-handshakes"]);
    assert_eq!(
        before, after,
        "session kept: no new handshake after an in-place update"
    );
    let ka = p.a.wg(&["show", &p.a.ifname, "persistent-keepalive"]);
    assert!(ka.trim().ends_with('5'), "{ka}");
    // Prefix moves to a second peer (U4).
    let (_, other) = genkey();
    p.a.wg(&[
        "set",
        &p.a.ifname,
        "peer",
        &other,
        "allowed-ips",
        "10.99.0.0/24",
    ]);
    let dump = p.a.wg(&["show", &p.a.ifname, "allowed-ips"]);
    let line_b = dump
        .lines()
        .find(|l| l.starts_with(&p.b.public))
        .expect("peer b line");
    let line_o = dump
        .lines()
        .find(|l| l.starts_with(&other))
        .expect("other line");
    assert!(!line_b.contains("10.99.0.0/24"), "{dump}");
    assert!(line_o.contains("10.99.0.0/24"), "{dump}");
    p.a.ping(host(&p.b.inner), 2).expect("traffic continues");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_roaming_follows_authenticated_packets() {
    // The moving side is ours: Debian's wireguard-go (0.0.20220316) keeps its sticky source
    // address after the address is deleted and stops sending, so it cannot be the mover.
    let p = pair(
        Impl::Sitelink,
        Impl::Sitelink,
        false,
        "10.79.0.1/24",
        "10.79.0.2/24",
    );
    p.b.ping(host(&p.a.inner), 2).expect("ping before roaming");
    // Move b's outer address; b keeps sending to a, a must follow (D2).
    let vb =
        p.b.ns
            .run("sh", ["-c", "ls /sys/class/net | grep ^vb"])
            .expect("veth name");
    let vb = vb.trim();
    p.b.ns
        .run("ip", ["addr", "del", "192.168.77.2/24", "dev", vb])
        .expect("del addr");
    p.b.ns
        .run("ip", ["addr", "add", "192.168.77.20/24", "dev", vb])
        .expect("add addr");
    p.b.ping(host(&p.a.inner), 3).expect("ping after b moved");
    let eps = p.a.wg(&["show", &p.a.ifname, "endpoints"]);
    assert!(
        eps.contains("192.168.77.20:51821"),
        "a follows b to its new address:\n{eps}"
    );
    p.a.ping(host(&p.b.inner), 2)
        .expect("a -> b at the new address");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_wg_quick_up_with_userspace_implementation() {
    require_root();
    let na = Netns::new("qa").expect("netns a");
    let nb = Netns::new("qb").expect("netns b");
    let (va, vb) = (unique_name("va"), unique_name("vb"));
    veth_pair(&na, &va, &nb, &vb).expect("veth");
    na.addr_up(&va, "192.168.78.1/24").expect("outer a");
    nb.addr_up(&vb, "192.168.78.2/24").expect("outer b");
    let a = new_site(na, None, "192.168.78.1/24", "10.80.0.1/24");
    let b = new_site(
        nb,
        Some(Impl::WireguardGo),
        "192.168.78.2/24",
        "10.80.0.2/24",
    );
    configure(&b, &a, 51821, 51820);
    let dir = std::env::temp_dir().join(unique_name("wq"));
    std::fs::create_dir_all(&dir).expect("conf dir");
    let conf = dir.join(format!("{}.conf", a.ifname));
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.80.0.2/32\nEndpoint = 192.168.78.2:51821\n",
            a.private, a.inner, b.public
        ),
    )
    .expect("write conf");
    let path = format!(
        "{}:{}",
        sitelink_wg_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let conf_s = conf.to_str().expect("utf8");
    let up = a.ns.command(
        "env",
        [
            &format!("PATH={path}"),
            "WG_QUICK_USERSPACE_IMPLEMENTATION=sitelink-wg",
            "wg-quick",
            "up",
            conf_s,
        ],
    );
    let res = run(&mut { up });
    let guard_down = scopeguard(&a, &path, conf_s);
    res.expect("wg-quick up");
    a.ping("10.80.0.2", 3)
        .expect("ping over wg-quick interface");
    let show = a.wg(&["show", &a.ifname]);
    assert!(
        show.contains(&format!("public key: {}", a.public)),
        "{show}"
    );
    drop(guard_down);
    wait_until(Duration::from_secs(5), || !socket_path(&a.ifname).exists())
        .expect("socket removed after wg-quick down");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `wg-quick down` when dropped (also when the test fails).
struct Down<'a> {
    site: &'a Site,
    path: String,
    conf: String,
}

fn scopeguard<'a>(site: &'a Site, path: &str, conf: &str) -> Down<'a> {
    Down {
        site,
        path: path.into(),
        conf: conf.into(),
    }
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(&mut self.site.ns.command(
            "env",
            [
                &format!("PATH={}", self.path),
                "WG_QUICK_USERSPACE_IMPLEMENTATION=sitelink-wg",
                "wg-quick",
                "down",
                &self.conf,
            ],
        ));
    }
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_process_contract_exit_and_errors() {
    require_root();
    let ns = Netns::new("pc").expect("netns");
    let bin = sitelink_wg();
    let bin = bin.to_str().expect("utf8");
    // Daemonizes: the launching process returns once the socket exists.
    let ifname = unique_name("wgt");
    ns.run(bin, [ifname.as_str()]).expect("daemonized start");
    assert!(
        socket_path(&ifname).exists(),
        "socket exists when the launcher returns"
    );
    ns.run("ip", ["link", "show", &ifname]).expect("TUN exists");
    ns.run("ip", ["link", "set", &ifname, "mtu", "1380"])
        .expect("set mtu");
    // Port in use: a readable error, not "Unknown error" (U3).
    // A second daemon in the same namespace holds UDP port 51999.
    let holder = unique_name("wgt");
    let _holder = ns
        .spawn(bin, ["-f", holder.as_str()])
        .expect("holder daemon");
    wait_until(Duration::from_secs(5), || socket_path(&holder).exists()).expect("holder socket");
    ns.run("wg", ["set", &holder, "listen-port", "51999"])
        .expect("holder takes the port");
    let out =
        sitelink_testinfra::output(&mut ns.command("wg", ["set", &ifname, "listen-port", "51999"]))
            .expect("wg set");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "binding a used port must fail");
    assert!(err.contains("Address already in use"), "{err}");
    // Deleting the TUN stops the daemon and removes its socket.
    ns.run("ip", ["link", "del", &ifname]).expect("del link");
    wait_until(Duration::from_secs(5), || !socket_path(&ifname).exists())
        .expect("socket removed after TUN deleted");
    // Removing the socket stops a foreground daemon.
    let ifname2 = unique_name("wgt");
    let mut d = ns
        .spawn(bin, ["-f", ifname2.as_str()])
        .expect("foreground start");
    wait_until(Duration::from_secs(5), || socket_path(&ifname2).exists()).expect("socket 2");
    std::fs::remove_file(socket_path(&ifname2)).expect("rm socket");
    wait_until(Duration::from_secs(5), || d.has_exited()).expect("exits after socket removal");
    // SIGTERM: clean exit, socket removed.
    let ifname3 = unique_name("wgt");
    let d3 = ns
        .spawn(bin, ["-f", ifname3.as_str()])
        .expect("foreground start");
    wait_until(Duration::from_secs(5), || socket_path(&ifname3).exists()).expect("socket 3");
    let out = d3.finish(true).expect("exit");
    assert!(out.status.success(), "clean exit on SIGTERM: {out:?}");
    assert!(!socket_path(&ifname3).exists(), "socket removed on exit");
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_setconf_syncconf_addconf_showconf() {
    require_root();
    let ns = Netns::new("sc").expect("netns");
    let site = new_site(ns, Some(Impl::Sitelink), "192.168.80.1/24", "10.82.0.1/24");
    let (_, p1) = genkey();
    let (_, p2) = genkey();
    let (_, p3) = genkey();
    let dir = std::env::temp_dir().join(unique_name("sc"));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("conf");
        path.to_string_lossy().into_owned()
    };
    let c1 = write(
        "1.conf",
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51900\nFwMark = 0x0\n[Peer]\nPublicKey = {p1}\nAllowedIPs = 10.1.0.0/24\nEndpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n[Peer]\nPublicKey = {p2}\nAllowedIPs = 10.2.0.0/24\n",
            site.private
        ),
    );
    let c2 = write(
        "2.conf",
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51901\n[Peer]\nPublicKey = {p2}\nAllowedIPs = 10.2.0.0/24, 10.3.0.0/24\n[Peer]\nPublicKey = {p3}\nAllowedIPs = 10.1.0.0/24\n",
            site.private
        ),
    );
    let c3 = write(
        "3.conf",
        format!("[Peer]\nPublicKey = {p1}\nAllowedIPs = 10.9.0.0/24\n"),
    );
    site.wg(&["setconf", &site.ifname, &c1]);
    site.wg(&["syncconf", &site.ifname, &c2]);
    site.wg(&["addconf", &site.ifname, &c3]);
    let conf = site.wg(&["showconf", &site.ifname]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(conf.contains("ListenPort = 51901"), "{conf}");
    assert!(
        conf.contains(&format!("PrivateKey = {}", site.private)),
        "{conf}"
    );
    let section = |key: &str| {
        conf.split("[Peer]")
            .find(|s| s.contains(key))
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert!(section(&p2).contains("10.2.0.0/24, 10.3.0.0/24"), "{conf}");
    assert!(
        section(&p3).contains("10.1.0.0/24"),
        "syncconf moved 10.1.0.0/24 to p3:\n{conf}"
    );
    assert!(
        section(&p1).contains("10.9.0.0/24"),
        "addconf re-added p1:\n{conf}"
    );
    assert!(!section(&p1).contains("10.1.0.0/24"), "{conf}");
    site.wg(&["set", &site.ifname, "peer", &p3, "remove"]);
    assert!(!site.wg(&["show", &site.ifname, "peers"]).contains(&p3));
}

#[test]
#[ignore = "netns tier: needs root"]
fn netns_forwarding_through_the_tunnel_to_a_lan_host() {
    // a (wireguard-go) -> tunnel -> b (sitelink-wg, forwards) -> veth -> lan host. The
    // decrypted TCP segments are coalesced into GSO super-packets on b's TUN and forwarded:
    // their checksums must come out right at the LAN host.
    let p = pair(
        Impl::WireguardGo,
        Impl::Sitelink,
        false,
        "10.83.0.1/24",
        "10.83.0.2/24",
    );
    let lan = Netns::new("ln").expect("lan netns");
    let (vb, vl) = (unique_name("vb"), unique_name("vl"));
    veth_pair(&p.b.ns, &vb, &lan, &vl).expect("lan veth");
    p.b.ns
        .addr_up(&vb, "172.31.0.1/24")
        .expect("router lan address");
    lan.addr_up(&vl, "172.31.0.2/24").expect("host address");
    p.b.ns
        .run("sysctl", ["-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding on");
    lan.run("ip", ["route", "add", "10.83.0.0/24", "via", "172.31.0.1"])
        .expect("lan route");
    p.a.wg(&[
        "set",
        &p.a.ifname,
        "peer",
        &p.b.public,
        "allowed-ips",
        "10.83.0.2/32,172.31.0.0/24",
    ]);
    p.a.ns
        .run("ip", ["route", "add", "172.31.0.0/24", "dev", &p.a.ifname])
        .expect("route via tunnel");
    p.a.ping("172.31.0.2", 3)
        .expect("ping the LAN host through the tunnel");
    for reverse in [false, true] {
        let srv = lan.spawn("iperf3", ["-s", "-1"]).expect("iperf3 server");
        std::thread::sleep(Duration::from_millis(300));
        let mut args = vec!["-c", "172.31.0.2", "-t", "2"];
        if reverse {
            args.push("-R");
        }
        let out =
            p.a.ns
                .run("iperf3", args)
                .expect("iperf3 through the router");
        assert!(out.contains("receiver"), "{out}");
        drop(srv);
    }
    let errs = lan
        .run("nstat", ["-az", "TcpInCsumErrors"])
        .unwrap_or_default();
    let n: u64 = errs
        .lines()
        .find(|l| l.starts_with("TcpInCsumErrors"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(n, 0, "TCP checksum errors at the LAN host:\n{errs}");
}
