//! The receive path (D2, D3, D5 and the allowed-IP source check) driven with real WireGuard
//! messages from an in-memory peer, without TUN or root. The UDP socket is bound on loopback
//! only to satisfy the device snapshot; nothing is sent on it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use boringtun::noise::TunnResult;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand_core::{OsRng, RngCore};
use sitelink_wg::uapi::Key;
use sitelink_wg::{handle_request, receive_datagram, DeviceState, Host};

struct NoHost;

impl Host for NoHost {
    fn bind(&mut self, port: u16, _fwmark: u32) -> io::Result<u16> {
        Ok(port)
    }
    fn set_fwmark(&mut self, _fwmark: u32) -> io::Result<()> {
        Ok(())
    }
}

fn key() -> [u8; 32] {
    let mut k = [0u8; 32];
    OsRng.fill_bytes(&mut k);
    k
}

fn public_of(k: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*k)).to_bytes()
}

struct Lab {
    dut: DeviceState,
    remote: DeviceState,
    dut_pub: [u8; 32],
    remote_pub: [u8; 32],
    sock: Arc<UdpSocket>,
}

fn lab() -> Lab {
    let (kd, kr) = (key(), key());
    let (dut_pub, remote_pub) = (public_of(&kd), public_of(&kr));
    let mut dut = DeviceState::new();
    let mut remote = DeviceState::new();
    let set = |st: &mut DeviceState, body: String| {
        assert_eq!(
            handle_request(st, &format!("set=1\n{body}\n"), &mut NoHost),
            "errno=0\n\n"
        );
    };
    set(
        &mut dut,
        format!(
            "private_key={}\nlisten_port=1\npublic_key={}\nallowed_ip=10.0.0.2/32\n",
            Key(kd).to_hex(),
            Key(remote_pub).to_hex()
        ),
    );
    set(
        &mut remote,
        format!(
            "private_key={}\nlisten_port=2\npublic_key={}\nallowed_ip=10.0.0.1/32\n",
            Key(kr).to_hex(),
            Key(dut_pub).to_hex()
        ),
    );
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("loopback socket"));
    Lab {
        dut,
        remote,
        dut_pub,
        remote_pub,
        sock,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
    p
}

impl Lab {
    fn remote_tunn<R>(&self, f: impl FnOnce(&mut boringtun::noise::Tunn) -> R) -> R {
        let peer = self
            .remote
            .peer_by_key(&Key(self.dut_pub))
            .expect("remote's peer")
            .clone();
        let mut inner = peer.lock();
        f(inner.tunn.as_mut().expect("tunn"))
    }

    fn dut_endpoint(&self) -> Option<SocketAddr> {
        self.dut
            .peer_by_key(&Key(self.remote_pub))
            .expect("dut's peer")
            .lock()
            .endpoint
    }

    fn recv(&self, datagram: &[u8], from: &str) -> sitelink_wg::device::Received {
        receive_datagram(&self.dut, self.sock.clone(), datagram, addr(from))
    }

    /// Remote initiates from `from`; the DUT answers; the remote confirms with a keepalive.
    fn handshake(&self, from: &str) {
        let mut buf = vec![0u8; 2048];
        let init = self.remote_tunn(|t| match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("{other:?}"),
        });
        let (_, replies) = self.recv(&init, from);
        assert_eq!(replies.len(), 1, "one handshake response");
        assert_eq!(replies[0].1, addr(from));
        let keepalive = self.remote_tunn(|t| match t.decapsulate(None, &replies[0].0, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("{other:?}"),
        });
        self.recv(&keepalive, from);
    }

    fn data(&self, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        self.remote_tunn(|t| match t.encapsulate(inner, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("{other:?}"),
        })
    }
}

#[test]
fn d2_endpoint_roams_on_authenticated_data_and_source_is_checked() {
    let lab = lab();
    lab.handshake("192.0.2.10:40000");
    assert_eq!(lab.dut_endpoint(), Some(addr("192.0.2.10:40000")));
    let pkt = lab.data(&ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1]));
    let (tun, _) = lab.recv(&pkt, "198.51.100.20:50000");
    assert_eq!(tun.len(), 1, "allowed source reaches the TUN");
    assert_eq!(
        lab.dut_endpoint(),
        Some(addr("198.51.100.20:50000")),
        "roamed"
    );
    // A decrypted packet whose source is not the peer's allowed IP is dropped.
    let spoofed = lab.data(&ipv4_packet([10, 0, 0, 5], [10, 0, 0, 1]));
    let (tun, _) = lab.recv(&spoofed, "198.51.100.20:50000");
    assert!(tun.is_empty(), "spoofed inner source dropped");
    // Garbage from a third address moves nothing.
    lab.recv(
        &[
            4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
            22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
        ],
        "203.0.113.9:1",
    );
    assert_eq!(lab.dut_endpoint(), Some(addr("198.51.100.20:50000")));
}

#[test]
fn d3_cookie_reply_from_elsewhere_does_not_move_the_endpoint() {
    let lab = lab();
    lab.handshake("192.0.2.10:40000");
    // Make the DUT a handshake initiator so a cookie reply for its index is meaningful, then
    // forge a cookie reply as the remote would send under load: the remote's rate limiter
    // answers its own flood with cookie replies.
    let dut_peer = lab
        .dut
        .peer_by_key(&Key(lab.remote_pub))
        .expect("peer")
        .clone();
    let mut buf = vec![0u8; 2048];
    let init = match dut_peer
        .lock()
        .tunn
        .as_mut()
        .expect("tunn")
        .format_handshake_initiation(&mut buf, true)
    {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    // Flood the remote's limiter so it answers with a cookie reply instead of a response.
    let remote_peer = lab
        .remote
        .peer_by_key(&Key(lab.dut_pub))
        .expect("peer")
        .clone();
    let mut cookie = None;
    for _ in 0..500 {
        let r = remote_peer
            .lock()
            .tunn
            .as_mut()
            .expect("tunn")
            .decapsulate(Some(addr("192.0.2.1:1").ip()), &init, &mut buf)
            .into_cookie();
        if let Some(c) = r {
            cookie = Some(c);
            break;
        }
    }
    let cookie = cookie.expect("remote under load answers with a cookie reply");
    assert_eq!(cookie[0], 3);
    lab.recv(&cookie, "203.0.113.50:9999");
    assert_eq!(
        lab.dut_endpoint(),
        Some(addr("192.0.2.10:40000")),
        "cookie reply does not roam"
    );
}

trait IntoCookie {
    fn into_cookie(self) -> Option<Vec<u8>>;
}

impl IntoCookie for TunnResult<'_> {
    fn into_cookie(self) -> Option<Vec<u8>> {
        match self {
            TunnResult::WriteToNetwork(p) if p.first() == Some(&3) => Some(p.to_vec()),
            _ => None,
        }
    }
}

#[test]
fn d5_handshake_flood_gets_cookie_replies_and_mac2_still_works() {
    let lab = lab();
    let mut buf = vec![0u8; 2048];
    let mut cookies = 0;
    let mut responses = 0;
    let mut last_cookie = None;
    for _ in 0..400 {
        let init = lab.remote_tunn(|t| match t.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("{other:?}"),
        });
        let (_, replies) = lab.recv(&init, "192.0.2.10:40000");
        for (r, _) in replies {
            match r[0] {
                3 => {
                    cookies += 1;
                    last_cookie = Some(r);
                }
                2 => responses += 1,
                other => panic!("unexpected reply type {other}"),
            }
        }
    }
    assert!(
        cookies > 0,
        "cookie replies under load (responses {responses})"
    );
    assert!(responses <= 200, "rate limited: {responses} responses");
    // The legitimate peer takes the cookie and retries with mac2: it gets a response.
    let cookie = last_cookie.expect("a cookie");
    lab.remote_tunn(|t| {
        let _ = t.decapsulate(Some(addr("192.0.2.99:1").ip()), &cookie, &mut buf);
    });
    let init = lab.remote_tunn(|t| match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    });
    let (_, replies) = lab.recv(&init, "192.0.2.10:40000");
    assert!(
        replies.iter().any(|(r, _)| r[0] == 2),
        "mac2-bearing initiation answered under load"
    );
}
