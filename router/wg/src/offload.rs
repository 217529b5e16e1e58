//! TUN offloads (`IFF_VNET_HDR`): the kernel hands us TCP super-packets (TSO, up to 64 KiB)
//! and packets with a partial checksum; we cut them into MTU-sized segments and finish the
//! checksums before encryption, as a NIC would. Pure byte manipulation, no I/O.

/// Size of `struct virtio_net_hdr` (no mergeable buffers).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// A parsed `struct virtio_net_hdr` (little-endian fields, as on x86 and arm64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed part (the L4 header) starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first 10 bytes.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// Why an offloaded packet could not be turned into plain packets (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Offsets or lengths in the header do not fit the packet.
    #[error("malformed offload header")]
    Malformed,
    /// A GSO type we did not enable (only TCP over IPv4/IPv6 is offered to the kernel).
    #[error("unsupported GSO type {0}")]
    Unsupported(u8),
}

/// Ones'-complement sum of `data` added to `sum` (not folded).
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(0, data))
}

/// Finishes a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field already holds the
/// pseudo-header sum; sum everything from `csum_start` and store the result.
pub fn complete_checksum(
    pkt: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), SegmentError> {
    let field = csum_start
        .checked_add(csum_offset)
        .ok_or(SegmentError::Malformed)?;
    if csum_start > pkt.len() || field + 2 > pkt.len() {
        return Err(SegmentError::Malformed);
    }
    let c = fold(sum16(0, &pkt[csum_start..]));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Turns one packet read from an `IFF_VNET_HDR` TUN into plain IP packets with complete
/// checksums, calling `emit` for each (a TSO super-packet gives one per `gso_size` of
/// payload). `scratch` is reused between calls.
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SegmentError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(
                pkt,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
        }
        emit(pkt);
        return Ok(());
    }
    let v6 = match gso {
        GSO_TCPV4 => false,
        GSO_TCPV6 => true,
        other => return Err(SegmentError::Unsupported(other)),
    };
    let l4 = usize::from(hdr.csum_start);
    if l4 + 20 > pkt.len() || (!v6 && l4 < 20) || (v6 && l4 < 40) {
        return Err(SegmentError::Malformed);
    }
    let tcp_hlen = usize::from(pkt[l4 + 12] >> 4) * 4;
    let hlen = l4 + tcp_hlen;
    let mss = usize::from(hdr.gso_size);
    if tcp_hlen < 20 || hlen > pkt.len() || mss == 0 {
        return Err(SegmentError::Malformed);
    }
    let payload = &pkt[hlen..];
    let seq0 = u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags0 = pkt[l4 + 13];
    let nseg = payload.len().div_ceil(mss).max(1);
    for i in 0..nseg {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&pkt[..hlen]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        if v6 {
            let plen = u16::try_from(total - 40).map_err(|_| SegmentError::Malformed)?;
            scratch[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tl = u16::try_from(total).map_err(|_| SegmentError::Malformed)?;
            scratch[2..4].copy_from_slice(&tl.to_be_bytes());
            scratch[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            scratch[10..12].copy_from_slice(&[0, 0]);
            let ihl = usize::from(scratch[0] & 0x0f) * 4;
            let c = checksum(&scratch[..ihl.min(l4)]);
            scratch[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        scratch[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < nseg {
            flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        scratch[l4 + 13] = flags;
        // TCP checksum over the pseudo header and the segment.
        scratch[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let tcp_len = (total - l4) as u32;
        let mut sum = if v6 {
            sum16(0, &scratch[8..40])
        } else {
            sum16(0, &scratch[12..20])
        };
        sum += 6 + (tcp_len & 0xffff) + (tcp_len >> 16);
        let c = fold(sum16(sum, &scratch[l4..]));
        scratch[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        emit(scratch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet with `payload`, checksums filled in.
    fn tcp4(payload: &[u8], flags: u8) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ];
        p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]); // ports
        p.extend_from_slice(&1000u32.to_be_bytes()); // seq
        p.extend_from_slice(&[0, 0, 0, 0]); // ack
        p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn verify_tcp4(seg: &[u8]) {
        assert_eq!(checksum(&seg[..20]), 0, "IPv4 header checksum");
        let tcp_len = (seg.len() - 20) as u32;
        let mut sum = sum16(0, &seg[12..20]);
        sum += 6 + tcp_len;
        assert_eq!(fold(sum16(sum, &seg[20..])), 0, "TCP checksum");
    }

    #[test]
    fn tso_v4_is_cut_into_mss_segments_with_valid_checksums() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut pkt = tcp4(&payload, 0x18 | 0x01 | 0x80); // PSH|ACK|FIN|CWR
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut segs = Vec::new();
        split(&hdr, &mut pkt, &mut Vec::new(), |s| segs.push(s.to_vec())).expect("split");
        assert_eq!(segs.len(), 3);
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            verify_tcp4(s);
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1000 + (i as u32) * 1400);
            let last = i == 2;
            assert_eq!(s[33] & 0x01 != 0, last, "FIN only on last");
            assert_eq!(s[33] & 0x80 != 0, i == 0, "CWR only on first");
            rebuilt.extend_from_slice(&s[40..]);
        }
        assert_eq!(rebuilt, payload);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let payload = b"hello world";
        let mut pkt = tcp4(payload, 0x18);
        let ipc = checksum(&pkt[..20]);
        pkt[10..12].copy_from_slice(&ipc.to_be_bytes());
        // Seed the field with the pseudo-header sum, as the kernel does.
        let tcp_len = (pkt.len() - 20) as u32;
        let seed = !fold(sum16(0, &pkt[12..20]) + 6 + tcp_len);
        pkt[36..38].copy_from_slice(&seed.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        split(&hdr, &mut pkt, &mut Vec::new(), |s| out.push(s.to_vec())).expect("split");
        verify_tcp4(&out[0]);
    }

    #[test]
    fn malformed_headers_are_rejected_not_panicking() {
        let mut pkt = tcp4(b"x", 0x10);
        for hdr in [
            VnetHdr {
                gso_type: GSO_TCPV4,
                gso_size: 0,
                csum_start: 20,
                ..VnetHdr::default()
            },
            VnetHdr {
                gso_type: GSO_TCPV4,
                gso_size: 100,
                csum_start: 200,
                ..VnetHdr::default()
            },
            VnetHdr {
                gso_type: 3,
                gso_size: 100,
                csum_start: 20,
                ..VnetHdr::default()
            },
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 40,
                csum_offset: 60000,
                ..VnetHdr::default()
            },
        ] {
            assert!(
                split(&hdr, &mut pkt, &mut Vec::new(), |_| {}).is_err(),
                "{hdr:?}"
            );
        }
    }
}

/// Receive-side coalescing (GRO in userspace): consecutive in-order TCP segments of one flow
/// become one super-packet written to the TUN with a `virtio_net_hdr` describing it, so the
/// kernel's TCP stack (or forwarding path) handles one packet instead of dozens. Anything that
/// does not extend the current chain flushes it first, so packet order is kept.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// `virtio_net_hdr` + headers + payloads of the current chain.
    buf: Vec<u8>,
    /// Segments in the chain.
    segs: usize,
    /// Payload size of the first segment (the GSO size).
    mss: usize,
    /// IP header length and TCP header length of the chain.
    l4: usize,
    thlen: usize,
    v6: bool,
    /// Sequence number the next segment must have.
    next_seq: u32,
    /// The last segment was shorter than `mss` or had PSH: nothing may follow.
    closed: bool,
}

/// Largest chain (IPv4 total length is 16 bits).
const MAX_CHAIN: usize = 65_000;

impl Coalescer {
    /// Offers one plain IP packet. Returns `true` if it was taken into the chain; otherwise
    /// the caller must `flush` and then write the packet as it is (or offer it again after
    /// the flush).
    pub fn offer(&mut self, pkt: &[u8]) -> bool {
        let Some(seg) = TcpSeg::parse(pkt) else {
            return false;
        };
        if seg.payload == 0 || seg.flags & !(0x10 | 0x08) != 0 || seg.flags & 0x10 == 0 {
            return false; // only ACK (+PSH) segments with data
        }
        if self.segs == 0 {
            self.start(pkt, &seg);
            return true;
        }
        let hlen = self.l4 + self.thlen;
        let first = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + hlen];
        let same_headers = seg.v6 == self.v6
            && seg.l4 == self.l4
            && seg.thlen == self.thlen
            && same_flow_headers(first, pkt, seg.v6, seg.l4, seg.thlen);
        if self.closed
            || !same_headers
            || seg.seq != self.next_seq
            || seg.payload > self.mss
            || self.buf.len() - VNET_HDR_LEN + seg.payload > MAX_CHAIN
            || self.segs >= 64
        {
            return false;
        }
        self.buf.extend_from_slice(&pkt[hlen..hlen + seg.payload]);
        self.segs += 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.payload < self.mss || seg.flags & 0x08 != 0 {
            // Carry PSH to the super-packet; nothing may follow a short or PSH segment.
            self.buf[VNET_HDR_LEN + self.l4 + 13] |= seg.flags & 0x08;
            self.closed = true;
        }
        true
    }

    fn start(&mut self, pkt: &[u8], seg: &TcpSeg) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        let hlen = seg.l4 + seg.thlen;
        self.buf.extend_from_slice(&pkt[..hlen + seg.payload]);
        self.segs = 1;
        self.mss = seg.payload;
        self.l4 = seg.l4;
        self.thlen = seg.thlen;
        self.v6 = seg.v6;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.closed = seg.flags & 0x08 != 0;
    }

    /// Whether a chain is pending.
    pub fn is_empty(&self) -> bool {
        self.segs == 0
    }

    /// Finishes the pending chain and returns it (`virtio_net_hdr` + packet) for one TUN
    /// write, or `None` when there is nothing pending.
    pub fn flush(&mut self) -> Option<&[u8]> {
        if self.segs == 0 {
            return None;
        }
        let segs = std::mem::take(&mut self.segs);
        let total = self.buf.len() - VNET_HDR_LEN;
        let (l4, thlen, v6) = (self.l4, self.thlen, self.v6);
        let p = &mut self.buf[VNET_HDR_LEN..];
        if segs == 1 {
            // A single segment: its checksums are intact, write it as it came.
            return Some(&self.buf[..]);
        }
        if v6 {
            let plen = (total - 40) as u16;
            p[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&p[..l4]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        // CHECKSUM_PARTIAL: the TCP checksum field holds the folded pseudo-header sum.
        let tcp_len = (total - l4) as u32;
        let mut sum = if v6 {
            sum16(0, &p[8..40])
        } else {
            sum16(0, &p[12..20])
        };
        sum += 6 + (tcp_len & 0xffff) + (tcp_len >> 16);
        let seed = !fold(sum);
        p[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
        let hdr = &mut self.buf[..VNET_HDR_LEN];
        hdr[0] = F_NEEDS_CSUM;
        hdr[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr[2..4].copy_from_slice(&((l4 + thlen) as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&(self.mss as u16).to_le_bytes());
        hdr[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        Some(&self.buf[..])
    }
}

/// The parts of a TCP segment coalescing looks at.
struct TcpSeg {
    v6: bool,
    l4: usize,
    thlen: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

impl TcpSeg {
    fn parse(p: &[u8]) -> Option<TcpSeg> {
        let (v6, l4, total) = match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if ihl != 20 || p.len() < 40 || p[9] != 6 {
                    return None;
                }
                // No fragments (MF set or an offset), and the length must match.
                if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                    return None;
                }
                (false, 20, usize::from(u16::from_be_bytes([p[2], p[3]])))
            }
            6 => {
                if p.len() < 60 || p[6] != 6 {
                    return None;
                }
                (true, 40, 40 + usize::from(u16::from_be_bytes([p[4], p[5]])))
            }
            _ => return None,
        };
        if total != p.len() {
            return None;
        }
        let thlen = usize::from(p[l4 + 12] >> 4) * 4;
        if thlen < 20 || l4 + thlen > p.len() {
            return None;
        }
        Some(TcpSeg {
            v6,
            l4,
            thlen,
            payload: p.len() - l4 - thlen,
            seq: u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]),
            flags: p[l4 + 13],
        })
    }
}

/// Whether `b`'s headers match the chain's first headers `a` in everything but the fields
/// that legitimately differ between segments of one burst (IP length, ID, checksum; TCP
/// sequence number, PSH, checksum).
fn same_flow_headers(a: &[u8], b: &[u8], v6: bool, l4: usize, thlen: usize) -> bool {
    let ip_same = if v6 {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    } else {
        a[0..2] == b[0..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20]
    };
    let t = l4;
    ip_same
        && a[t..t + 4] == b[t..t + 4] // ports
        && a[t + 8..t + 12] == b[t + 8..t + 12] // ack
        && a[t + 14..t + 16] == b[t + 14..t + 16] // window
        && a[t + 18..t + thlen] == b[t + 18..t + thlen] // urgent pointer + options
}

#[cfg(test)]
mod gro_tests {
    use super::*;

    fn seg4(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ];
        p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 7]);
        p.extend_from_slice(&[0x50, flags, 0x01, 0x00, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn coalesced_chain_splits_back_into_the_same_segments() {
        let mut g = Coalescer::default();
        let a: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let c: Vec<u8> = vec![9u8; 300];
        assert!(g.offer(&seg4(100, &a, 0x10)));
        assert!(g.offer(&seg4(1100, &b, 0x10)));
        assert!(g.offer(&seg4(2100, &c, 0x18)));
        assert!(
            !g.offer(&seg4(2400, &c, 0x10)),
            "nothing after a short/PSH segment"
        );
        let mut chain = g.flush().expect("chain").to_vec();
        assert!(g.is_empty());
        let hdr = VnetHdr::parse(&chain).expect("hdr");
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1000);
        assert_eq!(hdr.hdr_len, 40);
        // What the kernel would do on forwarding: segment it again; we have that code.
        let mut out = Vec::new();
        split(&hdr, &mut chain[VNET_HDR_LEN..], &mut Vec::new(), |s| {
            out.push(s.to_vec())
        })
        .expect("split");
        assert_eq!(out.len(), 3);
        let mut payload = Vec::new();
        for s in &out {
            payload.extend_from_slice(&s[40..]);
        }
        assert_eq!(payload, [a, b, c].concat());
        assert_eq!(out[2][33] & 0x08, 0x08, "PSH kept on the last segment");
    }

    #[test]
    fn gaps_other_flows_and_control_segments_are_not_coalesced() {
        let mut g = Coalescer::default();
        assert!(g.offer(&seg4(100, &[1; 500], 0x10)));
        assert!(!g.offer(&seg4(700, &[1; 500], 0x10)), "gap in sequence");
        let mut other = seg4(600, &[1; 500], 0x10);
        other[23] = 0x51; // other destination port
        assert!(!g.offer(&other));
        assert!(!g.offer(&seg4(600, &[1; 500], 0x11)), "FIN");
        assert!(!g.offer(&seg4(600, &[], 0x10)), "pure ACK");
        assert!(!g.offer(&[0x45, 0, 0]), "garbage");
        let single = g.flush().expect("one").to_vec();
        assert_eq!(
            &single[VNET_HDR_LEN..],
            &seg4(100, &[1; 500], 0x10)[..],
            "a lone segment is untouched"
        );
    }
}
