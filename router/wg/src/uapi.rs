//! The WireGuard cross-platform userspace protocol (what `wg` speaks over
//! `/var/run/wireguard/IFNAME.sock`): parsing of `set=1` requests into ordered operations.
//!
//! Parsing is pure (no sockets, no state), so it can be unit tested and fuzzed. Applying the
//! operations is [`crate::state::DeviceState::apply`]. Serialising `get=1` is
//! [`crate::state::DeviceState::render_get`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Largest request we accept in bytes (24,000 peers with one allowed IP each is ~5 MB).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// A 32-byte key (private, public or preshared). `Debug` never prints the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(s: &str) -> Option<Key> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0])?;
            let lo = hex_val(pair[1])?;
            out[i] = (hi << 4) | lo;
        }
        Some(Key(out))
    }

    /// 64 lowercase hex digits, as `get=1` prints keys.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// True for the all-zero key, which `set` uses to mean "no key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One device-level operation of a `set=1` request, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOp {
    /// `private_key=`; the all-zero key removes the key.
    PrivateKey(Key),
    /// `listen_port=`; 0 picks a random port.
    ListenPort(u16),
    /// `fwmark=`; 0 means off.
    Fwmark(u32),
    /// `replace_peers=true`: remove every peer before the following peer sections.
    ReplacePeers,
    /// A `public_key=` section and the lines that follow it.
    Peer(PeerOp),
}

/// One `public_key=` section of a `set=1` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOp {
    /// The peer's public key.
    pub public_key: Key,
    /// `update_only=true`: do not create the peer if it does not exist.
    pub update_only: bool,
    /// `remove=true`: remove the peer.
    pub remove: bool,
    /// The remaining lines of the section, in order.
    pub changes: Vec<PeerChange>,
}

/// One change to a peer, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// `preshared_key=`; the all-zero key removes it.
    PresharedKey(Key),
    /// `endpoint=IP:PORT` or `[IPv6]:PORT`.
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval=` in seconds; 0 is off.
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`.
    ReplaceAllowedIps,
    /// `allowed_ip=PREFIX` (host bits cleared).
    AddAllowedIp(IpNet),
    /// `allowed_ip=-PREFIX`.
    RemoveAllowedIp(IpNet),
}

/// Why a `set=1` request was rejected, with the errno the reply carries (negated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSetError {
    /// A line without `=`.
    #[error("line {line}: expected key=value, got {text:?}")]
    NoEquals { line: usize, text: String },
    /// A key this protocol does not know, or one in the wrong section.
    #[error("line {line}: unknown or misplaced key {key:?}")]
    UnknownKey { line: usize, key: String },
    /// A value that does not parse for its key.
    #[error("line {line}: invalid value for {key}: {value:?}")]
    InvalidValue {
        line: usize,
        key: String,
        value: String,
    },
}

impl ParseSetError {
    /// The positive errno for this error (`EINVAL`); the reply sends it negated.
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// What a connection asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`.
    Get,
    /// `set=1` with its operations.
    Set(Vec<DeviceOp>),
}

/// Why a request's header was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseRequestError {
    /// The first line was neither `get=1` nor `set=1`.
    #[error("unknown request {0:?}, expected get=1 or set=1")]
    UnknownOperation(String),
    /// The set body did not parse.
    #[error(transparent)]
    Set(#[from] ParseSetError),
}

impl ParseRequestError {
    /// The positive errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ParseRequestError::UnknownOperation(_) => libc::EINVAL,
            ParseRequestError::Set(e) => e.errno(),
        }
    }
}

/// Parses one request: its first line and the body lines (without the terminating blank line).
pub fn parse_request(first: &str, body: &[&str]) -> Result<Request, ParseRequestError> {
    match first {
        "get=1" => Ok(Request::Get),
        "set=1" => Ok(Request::Set(parse_set(body)?)),
        other => Err(ParseRequestError::UnknownOperation(truncate(other))),
    }
}

/// Parses the body of a request from raw bytes (for the fuzzer): the first line is the
/// operation, then key=value lines up to a blank line or the end.
pub fn parse_request_bytes(bytes: &[u8]) -> Result<Request, ParseRequestError> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let body: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    parse_request(first, &body)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_bool(line: usize, key: &str, value: &str) -> Result<bool, ParseSetError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(line, key, value)),
    }
}

fn invalid(line: usize, key: &str, value: &str) -> ParseSetError {
    ParseSetError::InvalidValue {
        line,
        key: key.to_string(),
        value: truncate(value),
    }
}

/// Parses the key=value lines of a `set=1` request (without the `set=1` line and the blank
/// line that ends it).
pub fn parse_set(lines: &[&str]) -> Result<Vec<DeviceOp>, ParseSetError> {
    let mut ops = Vec::new();
    let mut peer: Option<PeerOp> = None;
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 2; // 1-based, after the set=1 line
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let Some((key, value)) = raw.split_once('=') else {
            return Err(ParseSetError::NoEquals {
                line,
                text: truncate(raw),
            });
        };
        let parse_key = |v: &str| Key::from_hex(v).ok_or_else(|| invalid(line, key, v));
        if key == "public_key" {
            if let Some(p) = peer.take() {
                ops.push(DeviceOp::Peer(p));
            }
            peer = Some(PeerOp {
                public_key: parse_key(value)?,
                update_only: false,
                remove: false,
                changes: Vec::new(),
            });
            continue;
        }
        if let Some(p) = peer.as_mut() {
            let change = match key {
                "update_only" => {
                    p.update_only = parse_bool(line, key, value)?;
                    continue;
                }
                "remove" => {
                    p.remove = parse_bool(line, key, value)?;
                    continue;
                }
                "protocol_version" => {
                    if value != "1" {
                        return Err(invalid(line, key, value));
                    }
                    continue;
                }
                "preshared_key" => PeerChange::PresharedKey(parse_key(value)?),
                "endpoint" => PeerChange::Endpoint(
                    SocketAddr::from_str(value).map_err(|_| invalid(line, key, value))?,
                ),
                "persistent_keepalive_interval" => PeerChange::PersistentKeepalive(
                    value.parse().map_err(|_| invalid(line, key, value))?,
                ),
                "replace_allowed_ips" => {
                    if !parse_bool(line, key, value)? {
                        continue;
                    }
                    PeerChange::ReplaceAllowedIps
                }
                "allowed_ip" => {
                    let (remove, text) = match value.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, value),
                    };
                    let net = IpNet::from_str(text)
                        .map_err(|_| invalid(line, key, value))?
                        .trunc();
                    if remove {
                        PeerChange::RemoveAllowedIp(net)
                    } else {
                        PeerChange::AddAllowedIp(net)
                    }
                }
                _ => {
                    return Err(ParseSetError::UnknownKey {
                        line,
                        key: truncate(key),
                    })
                }
            };
            p.changes.push(change);
            continue;
        }
        let op = match key {
            "private_key" => DeviceOp::PrivateKey(parse_key(value)?),
            "listen_port" => {
                DeviceOp::ListenPort(value.parse().map_err(|_| invalid(line, key, value))?)
            }
            "fwmark" => DeviceOp::Fwmark(value.parse().map_err(|_| invalid(line, key, value))?),
            "replace_peers" => {
                if !parse_bool(line, key, value)? {
                    continue;
                }
                DeviceOp::ReplacePeers
            }
            _ => {
                return Err(ParseSetError::UnknownKey {
                    line,
                    key: truncate(key),
                })
            }
        };
        ops.push(op);
    }
    if let Some(p) = peer.take() {
        ops.push(DeviceOp::Peer(p));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    #[test]
    fn key_hex_roundtrip_and_debug_hides_bytes() {
        let k = Key::from_hex(K1).expect("valid");
        assert_eq!(k.to_hex(), K1);
        assert_eq!(format!("{k:?}"), "Key(..)");
        assert!(Key::from_hex("zz").is_none());
        assert!(Key::from_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn parses_device_and_peer_sections_in_order() {
        let body = [
            "private_key=".to_string() + K1,
            "listen_port=51820".into(),
            "fwmark=0".into(),
            "replace_peers=true".into(),
            "public_key=".to_string() + K1,
            "protocol_version=1".into(),
            "update_only=true".into(),
            "endpoint=[2001:db8::1]:51820".into(),
            "persistent_keepalive_interval=25".into(),
            "replace_allowed_ips=true".into(),
            "allowed_ip=10.0.0.1/24".into(),
            "allowed_ip=-10.1.0.0/16".into(),
        ];
        let refs: Vec<&str> = body.iter().map(String::as_str).collect();
        let ops = parse_set(&refs).expect("parses");
        assert_eq!(ops.len(), 5);
        let DeviceOp::Peer(p) = &ops[4] else {
            panic!("peer op expected")
        };
        assert!(p.update_only);
        assert_eq!(
            p.changes,
            vec![
                PeerChange::Endpoint("[2001:db8::1]:51820".parse().expect("addr")),
                PeerChange::PersistentKeepalive(25),
                PeerChange::ReplaceAllowedIps,
                PeerChange::AddAllowedIp("10.0.0.0/24".parse().expect("net")),
                PeerChange::RemoveAllowedIp("10.1.0.0/16".parse().expect("net")),
            ]
        );
    }

    #[test]
    fn rejects_bad_lines_with_einval() {
        for bad in [
            "bogus",
            "private_key=00",
            "listen_port=70000",
            "nonsense=1",
            "endpoint=1.2.3.4:1",
        ] {
            let e = parse_set(&[bad]).expect_err(bad);
            assert_eq!(e.errno(), libc::EINVAL, "{bad}");
        }
        let e = parse_request("frob=1", &[]).expect_err("unknown op");
        assert_eq!(e.errno(), libc::EINVAL);
    }
}
