//! A minimal DHCPv4 client for the WAN (RFC 2131): DISCOVER → OFFER → REQUEST → ACK over a UDP
//! socket bound to the interface (`SO_BINDTODEVICE`, broadcast flag set so the server answers by
//! broadcast), then the address and default route go in; renewal is a new exchange at half the
//! lease. No INIT-REBOOT, no release at shutdown, IPv4 only.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};

use crate::net::{Link, Netlink};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What the server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Option<Ipv4Addr>,
    pub lease: Duration,
}

/// A DHCP message from us.
pub fn message(
    kind: u8,
    xid: u32,
    mac: [u8; 6],
    hostname: &str,
    requested: Option<(Ipv4Addr, Option<Ipv4Addr>)>,
) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast the answer
    m[28..34].copy_from_slice(&mac);
    m.extend(MAGIC);
    m.extend([53, 1, kind]);
    m.extend([61, 7, 1]);
    m.extend(mac);
    if !hostname.is_empty() && hostname.len() < 64 {
        m.extend([12, hostname.len() as u8]);
        m.extend(hostname.as_bytes());
    }
    if let Some((addr, server)) = requested {
        m.extend([50, 4]);
        m.extend(addr.octets());
        if let Some(s) = server {
            m.extend([54, 4]);
            m.extend(s.octets());
        }
    }
    m.extend([55, 4, 1, 3, 6, 51]);
    m.push(255);
    m.resize(m.len().max(300), 0);
    m
}

/// Parse a server's answer to transaction `xid`: (message type, lease).
pub fn parse(d: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if d.len() < 240 || d[0] != 2 || d[4..8] != xid.to_be_bytes() || d[236..240] != MAGIC {
        return None;
    }
    let address = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
    let mut kind = 0;
    let mut lease = Lease {
        address,
        prefix_len: 24,
        router: None,
        server: None,
        lease: Duration::from_secs(3600),
    };
    let ip = |v: &[u8]| (v.len() >= 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
    let mut i = 240;
    while i < d.len() {
        let code = d[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*d.get(i + 1)?);
        let v = d.get(i + 2..i + 2 + len)?;
        match code {
            53 => kind = *v.first()?,
            1 => {
                if let Some(mask) = ip(v) {
                    lease.prefix_len = u32::from(mask).leading_ones() as u8;
                }
            }
            3 => lease.router = ip(v),
            54 => lease.server = ip(v),
            51 if len == 4 => {
                lease.lease =
                    Duration::from_secs(u64::from(u32::from_be_bytes([v[0], v[1], v[2], v[3]])))
            }
            _ => {}
        }
        i += 2 + len;
    }
    (kind != 0).then_some((kind, lease))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

fn xid() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        return std::process::id() ^ Instant::now().elapsed().subsec_nanos();
    }
    u32::from_ne_bytes(b)
}

/// Send a broadcast out of interface `index` (IP_PKTINFO picks the interface: the socket is not
/// bound to the device, which would keep broadcast answers from reaching it).
fn send_broadcast(sock: &UdpSocket, index: u32, msg: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let info = libc::in_pktinfo {
        ipi_ifindex: index as i32,
        ipi_spec_dst: libc::in_addr { s_addr: 0 },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let to = SockaddrIn::new(255, 255, 255, 255, 67);
    sendmsg(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(msg)],
        &[ControlMessage::Ipv4PacketInfo(&info)],
        MsgFlags::empty(),
        Some(&to),
    )
    .map(|_| ())
    .map_err(std::io::Error::from)
}

fn socket(ifname: &str) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))?;
    sock.set_broadcast(true)?;
    let _ = ifname;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(sock)
}

/// A packet socket that sees every IPv4 packet (link header stripped): broadcast DHCP answers
/// to an interface without an address do not reach a UDP socket here (they are counted as
/// `IgnoredMulti`), so the answers are read below the IP layer.
fn packet_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        setsockopt, socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType,
    };
    let fd = socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthIp,
    )?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 200_000),
    )?;
    Ok(fd)
}

/// The UDP payload of an IPv4 packet to port 68.
pub fn dhcp_payload(ip: &[u8]) -> Option<&[u8]> {
    if ip.len() < 28 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != 68 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len.min(udp.len()))
}

/// Send `msg` and wait up to `wait` for an answer of one of `kinds`.
fn exchange(
    sock: &UdpSocket,
    index: u32,
    msg: &[u8],
    xid: u32,
    kinds: &[u8],
    wait: Duration,
) -> std::io::Result<Option<(u8, Lease)>> {
    let raw = packet_socket()?;
    send_broadcast(sock, index, msg)?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&raw),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)
        {
            Ok(n) => {
                if let Some((k, l)) = dhcp_payload(&buf[..n]).and_then(|d| parse(d, xid)) {
                    if kinds.contains(&k) {
                        return Ok(Some((k, l)));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// One DISCOVER/OFFER/REQUEST/ACK exchange.
pub fn acquire(
    ifname: &str,
    index: u32,
    mac: [u8; 6],
    hostname: &str,
) -> std::io::Result<Option<Lease>> {
    let sock = socket(ifname)?;
    let x = xid();
    let discover = message(DISCOVER, x, mac, hostname, None);
    let Some((_, offer)) = exchange(&sock, index, &discover, x, &[OFFER], Duration::from_secs(3))?
    else {
        return Ok(None);
    };
    let request = message(
        REQUEST,
        x,
        mac,
        hostname,
        Some((offer.address, offer.server)),
    );
    match exchange(
        &sock,
        index,
        &request,
        x,
        &[ACK, NAK],
        Duration::from_secs(3),
    )? {
        Some((ACK, lease)) => Ok(Some(lease)),
        _ => Ok(None),
    }
}

fn apply(link: &Link, lease: &Lease) -> std::io::Result<()> {
    let mut nl = Netlink::open()?;
    let net = Ipv4Net::new(lease.address, lease.prefix_len).map_err(std::io::Error::other)?;
    nl.add_addr(link.index, IpNet::V4(net))?;
    if let Some(r) = lease.router {
        nl.default_route(link.index, r)?;
    }
    Ok(())
}

/// Run the client on `link` forever, in a thread: retries with backoff (1 s to 30 s), renews at
/// half the lease.
pub fn spawn(link: Link, hostname: String) {
    let Some(mac) = link.mac.as_deref().and_then(parse_mac) else {
        crate::console::line("dhcp", &format!("{}: no MAC address; no DHCP", link.name));
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("dhcp".into())
        .spawn(move || {
            let say = |s: String| crate::console::line("dhcp", &s);
            let mut delay = Duration::from_secs(1);
            let mut current: Option<Lease> = None;
            loop {
                match acquire(&link.name, link.index, mac, &hostname) {
                    Ok(Some(lease)) => {
                        delay = Duration::from_secs(1);
                        if current.as_ref() != Some(&lease) {
                            match apply(&link, &lease) {
                                Ok(()) => say(format!(
                                    "{}: {}/{} via {}, lease {} s",
                                    link.name,
                                    lease.address,
                                    lease.prefix_len,
                                    lease
                                        .router
                                        .map_or_else(|| "no router".to_owned(), |r| r.to_string()),
                                    lease.lease.as_secs()
                                )),
                                Err(e) => {
                                    say(format!("{}: cannot apply the lease: {e}", link.name))
                                }
                            }
                        }
                        let renew = (lease.lease / 2).max(Duration::from_secs(10));
                        current = Some(lease);
                        std::thread::sleep(renew);
                    }
                    Ok(None) => {
                        say(format!(
                            "{}: no answer from a DHCP server; retrying in {} s",
                            link.name,
                            delay.as_secs()
                        ));
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => {
                        say(format!(
                            "{}: {e}; retrying in {} s",
                            link.name,
                            delay.as_secs()
                        ));
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        crate::say!("cannot start the DHCP client: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answer_round_trip() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let m = message(DISCOVER, 7, mac, "aws", None);
        assert_eq!(m.len(), 300);
        assert_eq!(&m[28..34], &mac);
        assert_eq!(&m[236..240], &MAGIC);
        // Turn it into a server answer: BOOTREPLY, yiaddr, options.
        let mut a = m[..240].to_vec();
        a[0] = 2;
        a[16..20].copy_from_slice(&[10, 0, 2, 15]);
        a.extend([53, 1, ACK, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2]);
        a.extend([51, 4, 0, 0, 0x0e, 0x10, 54, 4, 10, 0, 2, 2, 255]);
        let (kind, lease) = parse(&a, 7).unwrap_or((
            0,
            Lease {
                address: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                router: None,
                server: None,
                lease: Duration::ZERO,
            },
        ));
        assert_eq!(kind, ACK);
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.lease, Duration::from_secs(3600));
        assert_eq!(parse(&a, 8), None, "another transaction");
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54"), None);
    }
}
