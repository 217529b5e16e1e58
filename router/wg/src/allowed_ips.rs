//! The cryptokey routing table: prefix -> peer id, longest-prefix match.
//!
//! A prefix has exactly one owner; inserting it for another peer moves it (U4). Lookups walk
//! only the prefix lengths in use, so the common per-peer interface (`0.0.0.0/0` only) costs one
//! hash lookup.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Identifies a peer inside one device.
pub type PeerId = u32;

#[derive(Debug, Clone, Default)]
struct Family {
    /// `by_len[len]` maps the masked address to its owner.
    by_len: Vec<HashMap<u128, PeerId>>,
    /// Prefix lengths with at least one entry, longest first.
    lens: Vec<u8>,
}

impl Family {
    fn new(bits: u8) -> Self {
        Family {
            by_len: vec![HashMap::new(); usize::from(bits) + 1],
            lens: Vec::new(),
        }
    }

    fn refresh_lens(&mut self) {
        self.lens = (0..self.by_len.len())
            .rev()
            .filter(|&l| !self.by_len[l].is_empty())
            .map(|l| l as u8)
            .collect();
    }

    fn insert(&mut self, key: u128, len: u8, id: PeerId) -> Option<PeerId> {
        let map = &mut self.by_len[usize::from(len)];
        let was_empty = map.is_empty();
        let old = map.insert(key, id);
        if was_empty {
            self.refresh_lens();
        }
        old
    }

    fn remove_if(&mut self, key: u128, len: u8, id: PeerId) -> bool {
        let map = &mut self.by_len[usize::from(len)];
        if map.get(&key) == Some(&id) {
            map.remove(&key);
            if map.is_empty() {
                self.refresh_lens();
            }
            true
        } else {
            false
        }
    }

    fn lookup(&self, addr: u128, bits: u8) -> Option<PeerId> {
        for &len in &self.lens {
            let key = mask(addr, len, bits);
            if let Some(&id) = self.by_len[usize::from(len)].get(&key) {
                return Some(id);
            }
        }
        None
    }
}

fn mask(addr: u128, len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let shift = u32::from(bits - len);
        (addr >> shift) << shift
    }
}

fn key_of(net: &IpNet) -> (bool, u128, u8) {
    match net {
        IpNet::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix_len()),
        IpNet::V6(n) => (true, u128::from(n.network()), n.prefix_len()),
    }
}

/// Longest-prefix-match table from allowed IPs to peers.
#[derive(Debug, Clone)]
pub struct AllowedIps {
    v4: Family,
    v6: Family,
}

impl Default for AllowedIps {
    fn default() -> Self {
        AllowedIps {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }
}

impl AllowedIps {
    /// Gives `net` (host bits must be clear) to `id`; returns the previous owner if it was
    /// another peer.
    pub fn insert(&mut self, net: IpNet, id: PeerId) -> Option<PeerId> {
        let (v6, key, len) = key_of(&net);
        let fam = if v6 { &mut self.v6 } else { &mut self.v4 };
        fam.insert(key, len, id).filter(|&old| old != id)
    }

    /// Removes `net` if `id` owns it; returns whether it did.
    pub fn remove(&mut self, net: IpNet, id: PeerId) -> bool {
        let (v6, key, len) = key_of(&net);
        let fam = if v6 { &mut self.v6 } else { &mut self.v4 };
        fam.remove_if(key, len, id)
    }

    /// The peer whose longest prefix contains `addr`. IPv4-mapped IPv6 is not unmapped: the
    /// caller passes the address as it is on the wire.
    pub fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a), 128),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().expect("net")
    }
    fn a(s: &str) -> IpAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn longest_prefix_wins_and_prefix_moves() {
        let mut t = AllowedIps::default();
        assert_eq!(t.insert(n("10.0.0.0/24"), 1), None);
        assert_eq!(t.insert(n("10.0.0.0/25"), 2), None);
        assert_eq!(t.insert(n("10.0.0.128/25"), 3), None);
        assert_eq!(t.lookup(a("10.0.0.10")), Some(2));
        assert_eq!(t.lookup(a("10.0.0.200")), Some(3));
        assert_eq!(t.lookup(a("10.0.1.1")), None);
        assert_eq!(t.insert(n("10.0.0.0/24"), 4), Some(1));
        assert!(
            !t.remove(n("10.0.0.0/24"), 1),
            "old owner no longer owns it"
        );
        assert!(t.remove(n("10.0.0.0/25"), 2));
        assert_eq!(t.lookup(a("10.0.0.10")), Some(4));
        t.insert(n("::/0"), 9);
        assert_eq!(t.lookup(a("2001:db8::1")), Some(9));
        t.insert(n("0.0.0.0/0"), 8);
        assert_eq!(t.lookup(a("192.0.2.1")), Some(8));
    }
}
