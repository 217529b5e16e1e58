//! The control-socket cases U1-U9 (shared/cases/uapi.md) against the state machine, without
//! sockets or root.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use boringtun::noise::TunnResult;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand_core::{OsRng, RngCore};
use sitelink_wg::uapi::Key;
use sitelink_wg::{handle_request, DeviceState, Host};

#[derive(Default)]
struct FakeHost {
    bound: Vec<u16>,
    in_use: Vec<u16>,
    marks: Vec<u32>,
}

impl Host for FakeHost {
    fn bind(&mut self, port: u16, _fwmark: u32) -> io::Result<u16> {
        if self.in_use.contains(&port) {
            return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        self.bound.push(port);
        Ok(if port == 0 { 40000 } else { port })
    }
    fn set_fwmark(&mut self, fwmark: u32) -> io::Result<()> {
        self.marks.push(fwmark);
        Ok(())
    }
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    OsRng.fill_bytes(&mut k);
    k
}

fn hex(k: &[u8; 32]) -> String {
    Key(*k).to_hex()
}

fn public_of(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

fn set(state: &mut DeviceState, host: &mut FakeHost, body: &str) -> String {
    handle_request(state, &format!("set=1\n{body}\n"), host)
}

fn get(state: &mut DeviceState, host: &mut FakeHost) -> String {
    handle_request(state, "get=1\n\n", host)
}

fn device(host: &mut FakeHost) -> ([u8; 32], DeviceState) {
    let private = random_key();
    let mut st = DeviceState::new();
    assert_eq!(
        set(
            &mut st,
            host,
            &format!("private_key={}\nlisten_port=51820\n", hex(&private))
        ),
        "errno=0\n\n"
    );
    (private, st)
}

/// Drives a full handshake between peer `b_key` on `a` and peer `a_key` on `b`.
fn handshake(a: &DeviceState, b_pub: &[u8; 32], b: &DeviceState, a_pub: &[u8; 32]) {
    let pa = a.peer_by_key(&Key(*b_pub)).expect("peer on a").clone();
    let pb = b.peer_by_key(&Key(*a_pub)).expect("peer on b").clone();
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let init = match pa
        .lock()
        .tunn
        .as_mut()
        .expect("tunn")
        .format_handshake_initiation(&mut buf, false)
    {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let src: IpAddr = "192.0.2.1".parse().expect("ip");
    let resp = match pb
        .lock()
        .tunn
        .as_mut()
        .expect("tunn")
        .decapsulate(Some(src), &init, &mut buf2)
    {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no response: {other:?}"),
    };
    let mut inner = pa.lock();
    let ok = matches!(
        inner
            .tunn
            .as_mut()
            .expect("tunn")
            .decapsulate(Some(src), &resp, &mut buf),
        TunnResult::WriteToNetwork(_)
    );
    assert!(ok, "initiator sends a keepalive after the response");
}

fn field<'a>(reply: &'a str, key: &str) -> Vec<&'a str> {
    reply
        .lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn u1_endpoint_update_in_place_keeps_session() {
    let mut host = FakeHost::default();
    let (ka, mut a) = device(&mut host);
    let (kb, mut b) = device(&mut host);
    let (pa, pb) = (public_of(&ka), public_of(&kb));
    assert_eq!(
        set(
            &mut a,
            &mut host,
            &format!("public_key={}\nallowed_ip=10.0.0.2/32\n", hex(&pb))
        ),
        "errno=0\n\n"
    );
    assert_eq!(
        set(
            &mut b,
            &mut host,
            &format!("public_key={}\nallowed_ip=10.0.0.1/32\n", hex(&pa))
        ),
        "errno=0\n\n"
    );
    handshake(&a, &pb, &b, &pa);
    let before = a.peer_by_key(&Key(pb)).expect("peer").clone();
    before
        .rx_bytes
        .store(1234, std::sync::atomic::Ordering::Relaxed);
    let reply = set(
        &mut a,
        &mut host,
        &format!("public_key={}\nendpoint=192.0.2.7:51820\n", hex(&pb)),
    );
    assert_eq!(reply, "errno=0\n\n");
    let after = a.peer_by_key(&Key(pb)).expect("peer").clone();
    assert!(
        Arc::ptr_eq(&before, &after),
        "same peer object, updated in place"
    );
    assert_eq!(
        after.lock().endpoint,
        Some("192.0.2.7:51820".parse().expect("addr"))
    );
    assert!(
        after
            .lock()
            .tunn
            .as_ref()
            .expect("tunn")
            .time_since_last_handshake()
            .is_some(),
        "session kept"
    );
    let g = get(&mut a, &mut host);
    assert_eq!(field(&g, "rx_bytes"), vec!["1234"], "counters kept");
    assert_eq!(field(&g, "allowed_ip"), vec!["10.0.0.2/32"]);
}

#[test]
fn u2_get_reports_handshake_as_unix_time_and_private_key() {
    let mut host = FakeHost::default();
    let (ka, mut a) = device(&mut host);
    let (kb, mut b) = device(&mut host);
    let (pa, pb) = (public_of(&ka), public_of(&kb));
    set(&mut a, &mut host, &format!("public_key={}\n", hex(&pb)));
    set(&mut b, &mut host, &format!("public_key={}\n", hex(&pa)));
    let g = get(&mut a, &mut host);
    assert_eq!(field(&g, "private_key"), vec![hex(&ka).as_str()]);
    assert_eq!(field(&g, "last_handshake_time_sec"), vec!["0"]);
    assert_eq!(field(&g, "last_handshake_time_nsec"), vec!["0"]);
    handshake(&a, &pb, &b, &pa);
    let g = get(&mut a, &mut host);
    let sec: u64 = field(&g, "last_handshake_time_sec")[0]
        .parse()
        .expect("number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    assert!(
        now.abs_diff(sec) <= 2,
        "handshake time {sec} is Unix time (now {now})"
    );
    assert!(g.ends_with("errno=0\n\n"), "{g}");
    assert!(g.contains("listen_port=51820\n"), "{g}");
}

#[test]
fn u3_failures_reply_negative_errno() {
    let mut host = FakeHost {
        in_use: vec![5000],
        ..FakeHost::default()
    };
    let (_, mut a) = device(&mut host);
    assert_eq!(set(&mut a, &mut host, "private_key=abc"), "errno=-22\n\n");
    assert_eq!(set(&mut a, &mut host, "public_key=zz"), "errno=-22\n\n");
    assert_eq!(
        set(&mut a, &mut host, "listen_port=5000"),
        format!("errno=-{}\n\n", libc::EADDRINUSE)
    );
    assert!(
        get(&mut a, &mut host).contains("listen_port=51820\n"),
        "port unchanged after failure"
    );
    assert_eq!(
        handle_request(&mut a, "frob=1\n\n", &mut host),
        "errno=-22\n\n"
    );
}

#[test]
fn u4_prefix_moves_to_the_later_peer() {
    let mut host = FakeHost::default();
    let (_, mut st) = device(&mut host);
    let (ka, kb) = (random_key(), random_key());
    set(
        &mut st,
        &mut host,
        &format!("public_key={}\nallowed_ip=10.0.0.0/24\n", hex(&ka)),
    );
    set(
        &mut st,
        &mut host,
        &format!("public_key={}\nallowed_ip=10.0.0.0/24\n", hex(&kb)),
    );
    let g = get(&mut st, &mut host);
    assert_eq!(
        field(&g, "allowed_ip"),
        vec!["10.0.0.0/24"],
        "listed once:\n{g}"
    );
    let b_section = g
        .split("public_key=")
        .find(|s| s.starts_with(&hex(&kb)))
        .expect("b section");
    assert!(b_section.contains("allowed_ip=10.0.0.0/24"), "{g}");
    let a_id = st.peer_by_key(&Key(ka)).expect("a").id;
    let b_id = st.peer_by_key(&Key(kb)).expect("b").id;
    let dst: IpAddr = "10.0.0.5".parse().expect("ip");
    assert_eq!(
        st.table().lookup(dst),
        Some(b_id),
        "traffic to 10.0.0.5 goes to B"
    );
    // The data path drops a packet from A with this source: the table says the source is B's.
    assert_ne!(st.table().lookup(dst), Some(a_id));
}

#[test]
fn u5_removing_a_covering_peer_keeps_more_specifics() {
    let mut host = FakeHost::default();
    let (_, mut st) = device(&mut host);
    let (ka, kb, kc) = (random_key(), random_key(), random_key());
    set(
        &mut st,
        &mut host,
        &format!("public_key={}\nallowed_ip=10.0.0.0/24\n", hex(&ka)),
    );
    set(
        &mut st,
        &mut host,
        &format!("public_key={}\nallowed_ip=10.0.0.0/25\n", hex(&kb)),
    );
    set(
        &mut st,
        &mut host,
        &format!("public_key={}\nallowed_ip=10.0.0.128/25\n", hex(&kc)),
    );
    assert_eq!(
        set(
            &mut st,
            &mut host,
            &format!("public_key={}\nremove=true\n", hex(&ka))
        ),
        "errno=0\n\n"
    );
    let b_id = st.peer_by_key(&Key(kb)).expect("b").id;
    let c_id = st.peer_by_key(&Key(kc)).expect("c").id;
    assert_eq!(
        st.table().lookup("10.0.0.10".parse().expect("ip")),
        Some(b_id)
    );
    assert_eq!(
        st.table().lookup("10.0.0.200".parse().expect("ip")),
        Some(c_id)
    );
    let g = get(&mut st, &mut host);
    let mut nets = field(&g, "allowed_ip");
    nets.sort();
    assert_eq!(nets, vec!["10.0.0.0/25", "10.0.0.128/25"]);
}

#[test]
fn u6_update_only_remove_unknown_and_own_key_create_nothing() {
    let mut host = FakeHost::default();
    let (k, mut st) = device(&mut host);
    let unknown = random_key();
    for body in [
        format!(
            "public_key={}\nupdate_only=true\nendpoint=192.0.2.1:1\n",
            hex(&unknown)
        ),
        format!("public_key={}\nremove=true\n", hex(&unknown)),
        format!(
            "public_key={}\nallowed_ip=10.0.0.0/8\n",
            hex(&public_of(&k))
        ),
    ] {
        assert_eq!(set(&mut st, &mut host, &body), "errno=0\n\n", "{body}");
    }
    assert!(st.peers().is_empty());
    assert!(!get(&mut st, &mut host).contains("public_key="));
}

#[test]
fn u7_one_set_with_24000_peers() {
    let mut host = FakeHost::default();
    let (_, mut st) = device(&mut host);
    let mut body = String::with_capacity(24_000 * 120);
    for i in 0..24_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        body.push_str(&format!(
            "public_key={}\nallowed_ip={ip}/32\n",
            hex(&random_key())
        ));
    }
    assert_eq!(set(&mut st, &mut host, &body), "errno=0\n\n");
    assert_eq!(st.peers().len(), 24_000);
    let g = get(&mut st, &mut host);
    assert_eq!(field(&g, "allowed_ip").len(), 24_000);
    assert!(st
        .table()
        .lookup("10.0.93.127".parse().expect("ip"))
        .is_some());
}

#[test]
fn u8_leading_minus_removes_a_prefix() {
    let mut host = FakeHost::default();
    let (_, mut st) = device(&mut host);
    let k = random_key();
    set(
        &mut st,
        &mut host,
        &format!(
            "public_key={}\nallowed_ip=10.0.0.0/24\nallowed_ip=10.1.0.0/24\n",
            hex(&k)
        ),
    );
    assert_eq!(
        set(
            &mut st,
            &mut host,
            &format!("public_key={}\nallowed_ip=-10.0.0.0/24\n", hex(&k))
        ),
        "errno=0\n\n"
    );
    assert_eq!(
        field(&get(&mut st, &mut host), "allowed_ip"),
        vec!["10.1.0.0/24"]
    );
    assert_eq!(st.table().lookup("10.0.0.1".parse().expect("ip")), None);
}

#[test]
fn u9_setconf_fwmark_zero_and_same_listen_port_are_accepted() {
    let mut host = FakeHost::default();
    let (k, mut st) = device(&mut host);
    let binds = host.bound.len();
    let body = format!(
        "private_key={}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n",
        hex(&k)
    );
    assert_eq!(set(&mut st, &mut host, &body), "errno=0\n\n");
    assert!(
        host.marks.is_empty(),
        "fwmark 0 on a device without a mark changes nothing"
    );
    assert_eq!(host.bound.len(), binds, "same port: no rebind");
    assert!(!get(&mut st, &mut host).contains("fwmark="));
    assert_eq!(
        set(&mut st, &mut host, "fwmark=42\nlisten_port=51821\n"),
        "errno=0\n\n"
    );
    let g = get(&mut st, &mut host);
    assert!(
        g.contains("fwmark=42\n") && g.contains("listen_port=51821\n"),
        "{g}"
    );
    assert_eq!(set(&mut st, &mut host, "fwmark=0\n"), "errno=0\n\n");
    assert!(!get(&mut st, &mut host).contains("fwmark="));
}

#[test]
fn replace_peers_and_replace_allowed_ips_and_protocol_version() {
    let mut host = FakeHost::default();
    let (_, mut st) = device(&mut host);
    let (k1, k2) = (random_key(), random_key());
    set(
        &mut st,
        &mut host,
        &format!(
            "public_key={}\nprotocol_version=1\nallowed_ip=10.0.0.0/24\n",
            hex(&k1)
        ),
    );
    let body = format!(
        "replace_peers=true\npublic_key={}\nallowed_ip=10.2.0.0/24\nreplace_allowed_ips=true\nallowed_ip=10.3.0.0/24\n",
        hex(&k2)
    );
    assert_eq!(set(&mut st, &mut host, &body), "errno=0\n\n");
    assert_eq!(st.peers().len(), 1);
    assert_eq!(
        field(&get(&mut st, &mut host), "allowed_ip"),
        vec!["10.3.0.0/24"]
    );
    assert_eq!(
        set(
            &mut st,
            &mut host,
            &format!("public_key={}\nprotocol_version=2\n", hex(&k2))
        ),
        "errno=-22\n\n"
    );
}
