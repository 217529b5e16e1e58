//! Packet input: arbitrary UDP datagrams into the receive path of a configured device with an
//! established session, and arbitrary inner packets encrypted by the real peer (so the
//! decrypted-packet checks run too), and offloaded TUN packets (virtio_net_hdr + TSO
//! super-packet) through the segmenter. Must never panic.
#![no_main]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
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

struct Lab {
    dut: DeviceState,
    remote: DeviceState,
    dut_pub: [u8; 32],
    sock: Arc<UdpSocket>,
}

fn lab() -> &'static Mutex<Lab> {
    static LAB: OnceLock<Mutex<Lab>> = OnceLock::new();
    LAB.get_or_init(|| {
        let (kd, kr) = ([7u8; 32], [9u8; 32]);
        let dut_pub = PublicKey::from(&StaticSecret::from(kd)).to_bytes();
        let remote_pub = PublicKey::from(&StaticSecret::from(kr)).to_bytes();
        let mut dut = DeviceState::new();
        let mut remote = DeviceState::new();
        let body = format!(
            "set=1\nprivate_key={}\npublic_key={}\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\n\n",
            Key(kd).to_hex(),
            Key(remote_pub).to_hex()
        );
        handle_request(&mut dut, &body, &mut NoHost);
        let body = format!(
            "set=1\nprivate_key={}\npublic_key={}\nallowed_ip=0.0.0.0/0\n\n",
            Key(kr).to_hex(),
            Key(dut_pub).to_hex()
        );
        handle_request(&mut remote, &body, &mut NoHost);
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("loopback"));
        let lab = Lab { dut, remote, dut_pub, sock };
        // Handshake: remote initiates.
        let src: SocketAddr = "192.0.2.10:40000".parse().expect("addr");
        let mut buf = vec![0u8; 2048];
        let init = with_remote(&lab, |t| match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => Vec::new(),
        })
        .unwrap_or_default();
        let (_, replies) = receive_datagram(&lab.dut, lab.sock.clone(), &init, src);
        if let Some((resp, _)) = replies.first() {
            let ka = with_remote(&lab, |t| match t.decapsulate(None, resp, &mut buf) {
                TunnResult::WriteToNetwork(p) => p.to_vec(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
            receive_datagram(&lab.dut, lab.sock.clone(), &ka, src);
        }
        Mutex::new(lab)
    })
}

fn with_remote<R>(lab: &Lab, f: impl FnOnce(&mut Tunn) -> R) -> Option<R> {
    let peer = lab.remote.peer_by_key(&Key(lab.dut_pub))?.clone();
    let mut inner = peer.lock();
    inner.tunn.as_mut().map(f)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let lab = lab().lock().unwrap_or_else(|e| e.into_inner());
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, mode)), 40000);
    let _ = Tunn::dst_address(rest);
    let _ = lab.dut.table().lookup(IpAddr::V4(Ipv4Addr::new(10, 0, 0, mode)));
    if mode % 3 == 2 {
        // TUN side: a virtio_net_hdr + packet as an offloading kernel would hand it over.
        if let Some(hdr) = sitelink_wg::offload::VnetHdr::parse(rest) {
            let mut pkt = rest[sitelink_wg::offload::VNET_HDR_LEN..].to_vec();
            let mut segs = 0usize;
            let _ = sitelink_wg::offload::split(&hdr, &mut pkt, &mut Vec::new(), |s| {
                segs += 1;
                let _ = Tunn::dst_address(s);
            });
        }
        // Receive side: coalesce the input cut into pieces, then cut the chain again.
        let mut gro = sitelink_wg::offload::Coalescer::default();
        let cut = usize::from(mode).max(20);
        for piece in rest.chunks(cut).chain(std::iter::once(rest)) {
            if !gro.offer(piece) {
                if let Some(chain) = gro.flush() {
                    let mut chain = chain.to_vec();
                    if let Some(h) = sitelink_wg::offload::VnetHdr::parse(&chain) {
                        let body = &mut chain[sitelink_wg::offload::VNET_HDR_LEN..];
                        let _ = sitelink_wg::offload::split(&h, body, &mut Vec::new(), |_| {});
                    }
                }
                let _ = gro.offer(piece);
            }
        }
        let _ = gro.flush();
    } else if mode & 1 == 0 {
        let _ = receive_datagram(&lab.dut, lab.sock.clone(), rest, src);
    } else if rest.len() <= 1500 {
        let mut buf = vec![0u8; 2048];
        let datagram = with_remote(&lab, |t| match t.encapsulate(rest, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => Vec::new(),
        })
        .unwrap_or_default();
        if !datagram.is_empty() {
            let _ = receive_datagram(&lab.dut, lab.sock.clone(), &datagram, src);
        }
    }
});
