//! Minimal rtnetlink for boot: list links, rename, bring up, add an address, add a default
//! route, delete routes by protocol. One request at a time, each acknowledged. Every function's
//! doc names its `ip` equivalent.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Protocol number on routes the init adds (`proto static` = 4 is someone else's; we use ours).
pub const RTPROT_SITELINK_INIT: u8 = 84;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub ether: bool,
    pub up: bool,
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Messages answering `seq` until an ack/error or (for dumps) DONE.
    fn answers(&mut self, seq: u32) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        let mut rx = Vec::with_capacity(1 << 16);
        loop {
            rx.clear();
            self.sock.recv(&mut rx, 0)?;
            let mut off = 0;
            while off + 16 <= rx.len() {
                let len =
                    u32::from_ne_bytes([rx[off], rx[off + 1], rx[off + 2], rx[off + 3]]) as usize;
                if len < 16 || off + len > rx.len() {
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..off + len]);
                off += (len + 3) & !3;
                let Ok(m) = msg else { continue };
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(i) => out.push(i),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.answers(seq).map(|_| ())
    }

    /// `ip link show`
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let seq = self.send(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in self.answers(seq)? {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            let mut link = Link {
                index: l.header.index,
                name: String::new(),
                mac: None,
                ether: l.header.link_layer_type == LinkLayerType::Ether,
                up: l.header.flags.contains(LinkFlags::Up),
            };
            for a in l.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n,
                    LinkAttribute::Address(b) => link.mac = Some(mac_string(&b)),
                    _ => {}
                }
            }
            out.push(link);
        }
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// `ip addr show`: (interface index, address).
    pub fn addrs(&mut self) -> io::Result<Vec<(u32, IpNet)>> {
        let seq = self.send(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in self.answers(seq)? {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                out.push((a.header.index, net));
            }
        }
        Ok(out)
    }

    /// `ip link set dev OLD name NEW` (the link must be down)
    pub fn rename(&mut self, index: u32, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// `ip link set dev NAME up`
    pub fn up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// `ip addr replace ADDR dev NAME`
    pub fn add_addr(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = if addr.addr().is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if let IpNet::V4(v4) = addr {
            if v4.prefix_len() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip route replace default via GATEWAY dev NAME proto 84`
    pub fn default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = 254;
        m.header.protocol = RouteProtocol::from(RTPROT_SITELINK_INIT);
        m.header.kind = RouteType::Unicast;
        m.header.scope = RouteScope::Universe;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip route flush proto P` for IPv4 and IPv6, every table. Returns how many went.
    pub fn flush_routes(&mut self, protocols: &[u8]) -> io::Result<usize> {
        let mut n = 0;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = family;
            let seq = self.send(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
            let routes = match self.answers(seq) {
                Ok(r) => r,
                Err(_) if family == AddressFamily::Inet6 => continue,
                Err(e) => return Err(e),
            };
            for r in routes {
                let RouteNetlinkMessage::NewRoute(r) = r else {
                    continue;
                };
                if !protocols.contains(&u8::from(r.header.protocol)) {
                    continue;
                }
                if self.request(RouteNetlinkMessage::DelRoute(r), 0).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Gateway must be IPv4 for [`Netlink::default_route`].
pub fn v4(addr: IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}
