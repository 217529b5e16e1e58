//! A synchronous rtnetlink socket (`netlink-packet-route` messages over `netlink-sys`).
//!
//! Why not the async `rtnetlink` crate: the reconciler needs to pipeline thousands of requests
//! (10,000 routes in well under a second), which is simplest with direct control of the socket:
//! many requests go out in one `send`, then their acks are read back by sequence number. The
//! device binary needs no async runtime for this either.
//!
//! The socket belongs to the network namespace of the thread that opens it.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::desired::{DesiredRule, Target};
use crate::diff::{KernelAddr, KernelLink, KernelRoute, KernelRule, KernelTarget, Op, RouteOp};
use crate::{RoutesError, RTPROT_SITELINK};

/// Requests per `send` (their acks must fit the socket's receive buffer).
const BATCH: usize = 128;

pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn header_table(t: u32) -> u8 {
    // Table ids above 255 only fit RTA_TABLE / FRA_TABLE; the header says RT_TABLE_UNSPEC.
    u8::try_from(t).unwrap_or(0)
}

impl Netlink {
    /// Open a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Netlink, RoutesError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(RoutesError::Socket)?;
        sock.bind_auto().map_err(RoutesError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(RoutesError::Socket)?;
        // Acks carry only the header of the failed request, not the whole request.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(Netlink {
            sock,
            seq: 0,
            rx: Vec::with_capacity(1 << 16),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
    }

    /// Receive one datagram and parse every message in it.
    fn recv(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        self.rx.clear();
        if self.rx.capacity() < (1 << 16) {
            self.rx.reserve(1 << 16);
        }
        self.sock.recv(&mut self.rx, 0)?;
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= self.rx.len() {
            let len = u32::from_ne_bytes([
                self.rx[off],
                self.rx[off + 1],
                self.rx[off + 2],
                self.rx[off + 3],
            ]) as usize;
            if len < 16 || off + len > self.rx.len() {
                break;
            }
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rx[off..off + len]) {
                Ok(m) => out.push(m),
                Err(e) => log::debug!("skipping a netlink message that does not parse: {e}"),
            }
            off += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Dump: send one request with `NLM_F_DUMP`, collect replies until `NLMSG_DONE`.
    fn dump(
        &mut self,
        op: &str,
        req: impl Fn() -> RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, RoutesError> {
        let err = |errno: io::Error| RoutesError::Dump {
            op: op.to_owned(),
            errno,
        };
        'retry: for _attempt in 0..5 {
            let seq = self.next_seq();
            let mut buf = Vec::new();
            Self::encode(req(), NLM_F_REQUEST | NLM_F_DUMP, seq, &mut buf);
            self.sock.send(&buf, 0).map_err(err)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            loop {
                for m in self.recv().map_err(err)? {
                    if m.header.sequence_number != seq {
                        continue;
                    }
                    interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                    match m.payload {
                        NetlinkPayload::InnerMessage(i) => out.push(i),
                        NetlinkPayload::Done(_) => {
                            if interrupted {
                                continue 'retry;
                            }
                            return Ok(out);
                        }
                        NetlinkPayload::Error(e) => {
                            if let Some(code) = e.code {
                                return Err(err(io::Error::from_raw_os_error(-code.get())));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Err(err(io::Error::other(
            "the dump was interrupted by concurrent changes 5 times in a row",
        )))
    }

    /// `ip -d link show`
    pub(crate) fn links(&mut self) -> Result<Vec<KernelLink>, RoutesError> {
        let msgs = self.dump("ip -d link show", || {
            RouteNetlinkMessage::GetLink(LinkMessage::default())
        })?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            let mut link = KernelLink {
                index: l.header.index,
                name: String::new(),
                kind: None,
                mtu: 0,
                up: l.header.flags.contains(LinkFlags::Up),
            };
            for a in l.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n,
                    LinkAttribute::Mtu(m) => link.mtu = m,
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Kind(k) = i {
                                link.kind = Some(k.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(link);
        }
        Ok(out)
    }

    /// `ip addr show`
    pub(crate) fn addrs(&mut self) -> Result<Vec<KernelAddr>, RoutesError> {
        let msgs = self.dump("ip addr show", || {
            RouteNetlinkMessage::GetAddress(AddressMessage::default())
        })?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let mut local = None;
            let mut address = None;
            let mut protocol = 0u8;
            let mut broadcast = false;
            for attr in a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(ip),
                    AddressAttribute::Address(ip) => address = Some(ip),
                    AddressAttribute::Protocol(p) => protocol = u8::from(p),
                    AddressAttribute::Broadcast(_) => broadcast = true,
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            let Ok(net) = IpNet::new(ip, a.header.prefix_len) else {
                continue;
            };
            out.push(KernelAddr {
                index: a.header.index,
                addr: net,
                protocol,
                broadcast,
            });
        }
        Ok(out)
    }

    /// `ip route show table all` and `ip -6 route show table all`
    pub(crate) fn routes(&mut self) -> Result<Vec<KernelRoute>, RoutesError> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let op = if v6 {
                "ip -6 route show table all"
            } else {
                "ip route show table all"
            };
            let msgs = self.dump(op, || {
                let mut m = RouteMessage::default();
                m.header.address_family = family(v6);
                RouteNetlinkMessage::GetRoute(m)
            })?;
            for m in msgs {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.flags.contains(RouteFlags::Cloned) {
                    continue;
                }
                let is_v6 = match r.header.address_family {
                    AddressFamily::Inet => false,
                    AddressFamily::Inet6 => true,
                    _ => continue,
                };
                let mut table = u32::from(r.header.table);
                let mut dst: Option<IpAddr> = None;
                let mut metric = 0;
                let mut oif = None;
                let mut multipath = false;
                for a in r.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = t,
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                            dst = Some(IpAddr::V4(ip))
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                            dst = Some(IpAddr::V6(ip))
                        }
                        RouteAttribute::Priority(p) => metric = p,
                        RouteAttribute::Oif(i) => oif = Some(i),
                        RouteAttribute::MultiPath(_) | RouteAttribute::Gateway(_) => {
                            multipath = true
                        }
                        _ => {}
                    }
                }
                let dst = dst.unwrap_or(if is_v6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                });
                let Ok(prefix) = IpNet::new(dst, r.header.destination_prefix_length) else {
                    continue;
                };
                let target = match (r.header.kind, oif) {
                    (RouteType::Unicast, Some(i)) if !multipath => KernelTarget::Dev(i),
                    (RouteType::Unreachable, _) => KernelTarget::Unreachable,
                    (k, _) => KernelTarget::Other(format!("{k:?}")),
                };
                out.push(KernelRoute {
                    table,
                    prefix,
                    metric,
                    protocol: u8::from(r.header.protocol),
                    target,
                });
            }
        }
        Ok(out)
    }

    /// `ip rule show` and `ip -6 rule show` (only `lookup` rules with our protocol matter).
    pub(crate) fn rules(&mut self) -> Result<Vec<KernelRule>, RoutesError> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let op = if v6 {
                "ip -6 rule show"
            } else {
                "ip rule show"
            };
            let msgs = match self.dump(op, || {
                let mut m = RuleMessage::default();
                m.header.family = family(v6);
                RouteNetlinkMessage::GetRule(m)
            }) {
                Ok(m) => m,
                // IPv6 compiled out / disabled: no v6 rules to report.
                Err(RoutesError::Dump { errno, .. })
                    if v6 && errno.raw_os_error() == Some(libc_eafnosupport()) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            for m in msgs {
                let RouteNetlinkMessage::NewRule(r) = m else {
                    continue;
                };
                if r.header.action != RuleAction::ToTable {
                    continue;
                }
                let mut rule = DesiredRule {
                    v6,
                    priority: 0,
                    iif: None,
                    table: u32::from(r.header.table),
                };
                let mut protocol = 0u8;
                for a in r.attributes {
                    match a {
                        RuleAttribute::Table(t) => rule.table = t,
                        RuleAttribute::Priority(p) => rule.priority = p,
                        RuleAttribute::Iifname(n) => rule.iif = Some(n),
                        RuleAttribute::Protocol(p) => protocol = u8::from(p),
                        _ => {}
                    }
                }
                out.push(KernelRule { rule, protocol });
            }
        }
        Ok(out)
    }

    /// Execute operations, pipelined: up to [`BATCH`] requests per `send`, then their acks.
    /// One result per operation, in order; a failed operation does not stop the others.
    pub(crate) fn execute(&mut self, ops: &[Op]) -> Vec<Result<(), RoutesError>> {
        let mut results: Vec<Option<Result<(), RoutesError>>> = Vec::with_capacity(ops.len());
        results.resize_with(ops.len(), || None);
        let mut buf = Vec::with_capacity(BATCH * 128);
        for (chunk_no, chunk) in ops.chunks(BATCH).enumerate() {
            let first = chunk_no * BATCH;
            buf.clear();
            let base = self.seq.wrapping_add(1);
            for op in chunk {
                let seq = self.next_seq();
                let (msg, flags) = message(op);
                Self::encode(msg, flags | NLM_F_REQUEST | NLM_F_ACK, seq, &mut buf);
            }
            if let Err(e) = self.sock.send(&buf, 0) {
                for (i, op) in chunk.iter().enumerate() {
                    results[first + i] = Some(Err(RoutesError::netlink(
                        op.to_string(),
                        io::Error::new(e.kind(), format!("sending the request: {e}")),
                    )));
                }
                continue;
            }
            let mut pending = chunk.len();
            while pending > 0 {
                let msgs = match self.recv() {
                    Ok(m) => m,
                    Err(e) => {
                        for (i, op) in chunk.iter().enumerate() {
                            if results[first + i].is_none() {
                                results[first + i] = Some(Err(RoutesError::netlink(
                                    op.to_string(),
                                    io::Error::new(
                                        e.kind(),
                                        format!("reading the kernel's answer: {e}"),
                                    ),
                                )));
                            }
                        }
                        break;
                    }
                };
                for m in msgs {
                    let NetlinkPayload::Error(e) = m.payload else {
                        continue;
                    };
                    let idx = m.header.sequence_number.wrapping_sub(base) as usize;
                    if idx >= chunk.len() || results[first + idx].is_some() {
                        continue;
                    }
                    pending -= 1;
                    results[first + idx] = Some(match e.code {
                        None => Ok(()),
                        Some(code) => Err(RoutesError::netlink(
                            chunk[idx].to_string(),
                            io::Error::from_raw_os_error(-code.get()),
                        )),
                    });
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RoutesError::Invalid("no answer".into()))))
            .collect()
    }

    /// `ip link add NAME type KIND` for a kind without parameters (dummy, ifb; benchmark).
    pub(crate) fn add_link(&mut self, name: &str, kind: InfoKind) -> Result<(), RoutesError> {
        let op = format!("ip link add {name} type {kind}");
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        let seq = self.next_seq();
        let mut buf = Vec::new();
        Self::encode(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
            &mut buf,
        );
        self.sock
            .send(&buf, 0)
            .map_err(|e| RoutesError::netlink(op.clone(), e))?;
        loop {
            for m in self
                .recv()
                .map_err(|e| RoutesError::netlink(op.clone(), e))?
            {
                if m.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(c) => Err(RoutesError::netlink(
                            op,
                            io::Error::from_raw_os_error(-c.get()),
                        )),
                    };
                }
            }
        }
    }
}

fn libc_eafnosupport() -> i32 {
    97
}

fn route_message(r: &RouteOp, delete: bool) -> RouteMessage {
    let v6 = matches!(r.prefix, IpNet::V6(_));
    let mut m = RouteMessage::default();
    m.header.address_family = family(v6);
    m.header.destination_prefix_length = r.prefix.prefix_len();
    m.header.table = header_table(r.table);
    m.header.protocol = RouteProtocol::from(RTPROT_SITELINK);
    m.header.kind = match r.target {
        Target::Dev(_) => RouteType::Unicast,
        Target::Unreachable => RouteType::Unreachable,
    };
    m.header.scope = match (delete, &r.target) {
        (true, _) => RouteScope::NoWhere,
        (false, Target::Dev(_)) => RouteScope::Link,
        (false, Target::Unreachable) => RouteScope::Universe,
    };
    if r.prefix.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.prefix.addr(),
            )));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    m.attributes.push(RouteAttribute::Priority(r.metric));
    m.attributes.push(RouteAttribute::Table(r.table));
    m
}

fn rule_message(r: &DesiredRule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family(r.v6);
    m.header.table = header_table(r.table);
    m.header.action = RuleAction::ToTable;
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Table(r.table));
    if let Some(i) = &r.iif {
        m.attributes.push(RuleAttribute::Iifname(i.clone()));
    }
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(
            RTPROT_SITELINK,
        )));
    m
}

fn addr_message(index: u32, addr: &IpNet, add: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(matches!(addr, IpNet::V6(_)));
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    if add {
        if let IpNet::V4(v4) = addr {
            // R2: no broadcast address on /31 (RFC 3021) or /32; `brd +` otherwise.
            if v4.prefix_len() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                RTPROT_SITELINK,
            )));
    }
    m
}

/// The netlink request for an operation, and its flags beyond REQUEST|ACK. Each arm's `ip`
/// equivalent is [`Op`]'s `Display`.
fn message(op: &Op) -> (RouteNetlinkMessage, u16) {
    match op {
        // ip link set dev NAME mtu MTU up
        Op::SetLink { index, mtu, .. } => {
            let mut m = LinkMessage::default();
            m.header.index = *index;
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
            m.attributes.push(LinkAttribute::Mtu(*mtu));
            (RouteNetlinkMessage::SetLink(m), 0)
        }
        // ip addr add ADDR dev NAME proto 83
        Op::AddAddr { index, addr, .. } => (
            RouteNetlinkMessage::NewAddress(addr_message(*index, addr, true)),
            NLM_F_CREATE | NLM_F_EXCL,
        ),
        // ip addr del ADDR dev NAME
        Op::DelAddr { index, addr, .. } => (
            RouteNetlinkMessage::DelAddress(addr_message(*index, addr, false)),
            0,
        ),
        // ip route add PREFIX dev NAME metric M table T proto 83
        Op::AddRoute(r) => (
            RouteNetlinkMessage::NewRoute(route_message(r, false)),
            NLM_F_CREATE | NLM_F_EXCL,
        ),
        // ip route replace PREFIX dev NAME metric M table T proto 83
        Op::ReplaceRoute(r) => (
            RouteNetlinkMessage::NewRoute(route_message(r, false)),
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
        // ip route del PREFIX dev NAME metric M table T proto 83
        Op::DelRoute(r) => (RouteNetlinkMessage::DelRoute(route_message(r, true)), 0),
        // ip rule add [iif NAME] lookup T pref P proto 83
        Op::AddRule(r) => (
            RouteNetlinkMessage::NewRule(rule_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        ),
        // ip rule del [iif NAME] lookup T pref P proto 83
        Op::DelRule(r) => (RouteNetlinkMessage::DelRule(rule_message(r)), 0),
    }
}
