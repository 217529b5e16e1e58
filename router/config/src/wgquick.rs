//! wg-quick / wg config file parser.
//!
//! Reads the `[Interface]` / `[Peer]` files that `wg setconf` and `wg-quick` take, so an
//! existing tunnel can be imported. The reference behaviour is that of `wg` (its config
//! parser, for `PrivateKey`, `ListenPort`, `FwMark`, `PublicKey`, `PresharedKey`,
//! `AllowedIPs`, `Endpoint`, `PersistentKeepalive`) and of `wg-quick` (for `Address`, `DNS`,
//! `MTU`, `Table`, `PreUp`, `PostUp`, `PreDown`, `PostDown`, `SaveConfig`).
//!
//! Decisions, where the tools leave room or where we are deliberately stricter:
//!
//! * Everything from `#` to the end of a line is a comment, for every key (hooks included,
//!   as in wg-quick). Lines end in `\n`; a trailing `\r` and a leading BOM are ignored.
//! * Section names and keys are case-insensitive (as in `wg`; wg-quick itself is not).
//! * In the values of `wg`'s own keys all whitespace is ignored, as `wg` strips it, so
//!   `AllowedIPs = 10.1.0.0/24 , fd00:1::/64` is two prefixes. wg-quick's keys are trimmed;
//!   hook commands keep their inner spaces and are stored verbatim (`%i` is not expanded).
//! * Single-valued keys set twice: the later value wins, as in wg and wg-quick, and a
//!   warning names both lines. `Address`, `DNS`, `AllowedIPs` and the hooks accumulate.
//!   Repeated `Address` / `AllowedIPs` entries are kept once.
//! * A second `[Interface]` section continues the first (as in wg), with a warning.
//! * Two `[Peer]` sections with the same `PublicKey` is an error (wg would silently merge
//!   them into one peer), and so is a peer whose key is the interface's own public key
//!   (the kernel silently ignores such a peer).
//! * The same `AllowedIPs` prefix in two peers is a warning: wg accepts it and routes the
//!   prefix to the later peer only.
//! * `ListenPort = 0` is valid (wg: pick a random port) and is kept as `Some(0)`, with a
//!   warning that peers cannot dial a random port. `PersistentKeepalive = off` and `= 0`
//!   are both `Some(0)`, `FwMark = off` and `= 0` are both `Some(0)`: `None` means the key
//!   was absent, `Some(0)` that it was explicitly off.
//! * `AllowedIPs` with host bits set (`10.2.0.9/24`) is read as the network wg installs
//!   (`10.2.0.0/24`) with a warning. `Address` with host bits is normal and kept as written.
//!   A bare address (no `/len`) is a host prefix (`/32` or `/128`) in both.
//! * Empty values: an error for single-valued keys; for `Address`, `DNS` and `AllowedIPs`
//!   nothing is added (as in wg-quick and wg); an empty hook is ignored with a warning.
//!   An empty entry between commas in `AllowedIPs` is an error, as in wg.
//! * `Table` is `off`, `auto`, a table number from 1 to 4294967295, or one of the standard
//!   iproute2 names `main` (254), `default` (253), `local` (255). `SaveConfig` is
//!   `true` or `false`. `MTU` is 68 to 65535 (warning below 1280 with IPv6 addresses).
//! * A file without an `[Interface]` section is an error (it is not a wg-quick file); an
//!   interface without `PrivateKey` is a warning; a peer without `AllowedIPs` is a warning.
//! * Key material is never echoed: not in key errors, and not anywhere else a value or a
//!   key name that looks like base64 key material would be quoted.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ipnet::IpNet;

use crate::endpoint::Endpoint;

/// A parsed wg-quick file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgQuick {
    pub interface: Interface,
    pub peers: Vec<Peer>,
    /// Things that are accepted but probably not what was meant, in line order.
    pub warnings: Vec<Diag>,
}

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Line of the (first) `[Interface]` header.
    pub line: usize,
    pub private_key: Option<Key>,
    /// `Some(0)`: wg picks a random port.
    pub listen_port: Option<u16>,
    /// `Some(0)`: explicitly off.
    pub fwmark: Option<u32>,
    /// As written, host bits included (`10.0.0.1/24`).
    pub addresses: Vec<IpNet>,
    /// DNS servers (canonical IP text) and search domains, in file order; see
    /// [`Interface::dns_servers`] and [`Interface::dns_search`].
    pub dns: Vec<String>,
    pub mtu: Option<u32>,
    pub table: Option<Table>,
    pub pre_up: Vec<String>,
    pub post_up: Vec<String>,
    pub pre_down: Vec<String>,
    pub post_down: Vec<String>,
    pub save_config: bool,
}

impl Interface {
    /// The `DNS` entries that are server addresses.
    pub fn dns_servers(&self) -> Vec<IpAddr> {
        self.dns.iter().filter_map(|d| d.parse().ok()).collect()
    }

    /// The `DNS` entries that are search domains.
    pub fn dns_search(&self) -> Vec<&str> {
        self.dns
            .iter()
            .filter(|d| d.parse::<IpAddr>().is_err())
            .map(String::as_str)
            .collect()
    }
}

/// wg-quick's `Table =`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// No routes are added.
    Off,
    /// wg-quick's default: main table, or a fwmark table for default routes.
    Auto,
    /// A routing table number (never 0).
    Id(u32),
}

/// A `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Line of the `[Peer]` header.
    pub line: usize,
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    /// Network prefixes (host bits cleared), without repeats, in file order.
    pub allowed_ips: Vec<IpNet>,
    pub endpoint: Option<Endpoint>,
    /// Seconds; `Some(0)`: explicitly off.
    pub persistent_keepalive: Option<u16>,
}

impl Peer {
    /// The keepalive interval if keepalives are on.
    pub fn keepalive(&self) -> Option<u16> {
        self.persistent_keepalive.filter(|&s| s != 0)
    }
}

/// A 32-byte WireGuard key (private, public or preshared). `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// Decodes the 44-character base64 form `wg genkey` prints. The error never contains
    /// the input.
    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let chars = s.chars().count();
        if chars != 44 || !s.ends_with('=') || s.ends_with("==") {
            return Err(KeyError::Length(chars));
        }
        let bytes = STANDARD.decode(s).map_err(|_| KeyError::Base64)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Base64)?;
        Ok(Key(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 44-character base64 form, as `wg` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Taking `self` as a private key, the matching public key (`wg pubkey`).
    pub fn public_key(&self) -> Key {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Drop for Key {
    /// Best-effort wipe, as `keys::PrivateKey` does: a `Key` may be a private key.
    fn drop(&mut self) {
        self.0 = [0; 32];
    }
}

impl From<&Key> for crate::keys::PublicKey {
    fn from(k: &Key) -> crate::keys::PublicKey {
        crate::keys::PublicKey(k.0)
    }
}

impl Key {
    /// The same bytes as the keystore's private key type (for `PrivateKey =` values).
    /// Always `Some`; `Option` only because `keys::PrivateKey` has no byte constructor.
    pub fn to_private_key(&self) -> Option<crate::keys::PrivateKey> {
        crate::keys::PrivateKey::from_base64(&self.to_base64())
    }
}

impl From<[u8; 32]> for Key {
    fn from(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }
}

/// Why a key did not decode. Never contains the key text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("it has {0} characters, a key has 44 (43 of base64 and one '=')")]
    Length(usize),
    #[error("it is not base64 of 32 bytes")]
    Base64,
}

/// An error or warning tied to a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct Diag {
    pub line: usize,
    pub message: String,
}

/// Parses a wg-quick file. On failure returns every error found, in line order.
pub fn parse(src: &str) -> Result<WgQuick, Vec<Diag>> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut p = Parser::default();
    for (idx, raw) in src.split('\n').enumerate() {
        p.line(idx.saturating_add(1), raw);
    }
    p.finish()
}

const INTERFACE_KEYS: &[&str] = &[
    "PrivateKey",
    "ListenPort",
    "FwMark",
    "Address",
    "DNS",
    "MTU",
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
];
const PEER_KEYS: &[&str] = &[
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
];
/// Keys `wg` reads itself; it removes all whitespace from their lines.
const WG_KEYS: &[&str] = &[
    "PrivateKey",
    "ListenPort",
    "FwMark",
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
];
/// Keys that may be given several times and accumulate.
const LIST_KEYS: &[&str] = &[
    "Address",
    "DNS",
    "AllowedIPs",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
];

fn canonical(key: &str, keys: &[&'static str]) -> Option<&'static str> {
    keys.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Before the first header.
    None,
    Interface,
    Peer,
    /// Inside an unknown section (already reported).
    Unknown,
}

#[derive(Default)]
struct InterfaceDraft {
    line: Option<usize>,
    seen: HashMap<&'static str, usize>,
    private_key: Option<Key>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    addresses: Vec<IpNet>,
    address_set: HashSet<IpNet>,
    dns: Vec<String>,
    mtu: Option<(u32, usize)>,
    table: Option<Table>,
    pre_up: Vec<String>,
    post_up: Vec<String>,
    pre_down: Vec<String>,
    post_down: Vec<String>,
    save_config: bool,
}

struct PeerDraft {
    line: usize,
    seen: HashMap<&'static str, usize>,
    public_key: Option<(Key, usize)>,
    preshared_key: Option<Key>,
    /// Prefix and the line it came from.
    allowed_ips: Vec<(IpNet, usize)>,
    allowed_set: HashSet<IpNet>,
    endpoint: Option<Endpoint>,
    persistent_keepalive: Option<u16>,
}

impl PeerDraft {
    fn new(line: usize) -> PeerDraft {
        PeerDraft {
            line,
            seen: HashMap::new(),
            public_key: None,
            preshared_key: None,
            allowed_ips: Vec::new(),
            allowed_set: HashSet::new(),
            endpoint: None,
            persistent_keepalive: None,
        }
    }
}

struct Parser {
    section: Section,
    interface: InterfaceDraft,
    peers: Vec<PeerDraft>,
    errors: Vec<Diag>,
    warnings: Vec<Diag>,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser {
            section: Section::None,
            interface: InterfaceDraft::default(),
            peers: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// True if `s` holds something that could be key material: a long run of base64 (or hex)
/// characters. Such text is never quoted back.
fn looks_secret(s: &str) -> bool {
    let mut run = 0usize;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-') {
            run = run.saturating_add(1);
            if run >= 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Quotes a value for a message, unless it might be a secret; long values are shortened.
fn show(s: &str) -> String {
    if looks_secret(s) {
        return "(value not shown: it looks like key material)".to_string();
    }
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    // Escaping can lengthen a run (`\0` before base64 text), so check what is shown too.
    if looks_secret(&out) {
        return "(value not shown: it looks like key material)".to_string();
    }
    if s.chars().nth(64).is_some() {
        out.push_str("...");
    }
    format!("`{out}`")
}

fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn parse_fwmark(v: &str) -> Option<u32> {
    if v.eq_ignore_ascii_case("off") {
        return Some(0);
    }
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None => decimal(v),
    }
}

fn parse_table(v: &str) -> Option<Table> {
    let lower = v.to_ascii_lowercase();
    match lower.as_str() {
        "off" => Some(Table::Off),
        "auto" => Some(Table::Auto),
        "main" => Some(Table::Id(254)),
        "default" => Some(Table::Id(253)),
        "local" => Some(Table::Id(255)),
        _ => decimal::<u32>(v).filter(|&n| n != 0).map(Table::Id),
    }
}

/// `ADDR/LEN` or a bare address (a host prefix).
fn parse_prefix(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse::<IpNet>().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// The host bits of `net`, if any are set.
fn host_bits(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let bits = u32::from(n.addr()) & u32::from(n.hostmask());
            (bits != 0).then(|| IpAddr::from(std::net::Ipv4Addr::from(bits)))
        }
        IpNet::V6(n) => {
            let bits = u128::from(n.addr()) & u128::from(n.hostmask());
            (bits != 0).then(|| IpAddr::from(std::net::Ipv6Addr::from(bits)))
        }
    }
}

/// A search domain as resolvconf takes it: labels of letters, digits, '-' and '_'.
fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

const KEY_FORMAT: &str = "expected 44 characters of base64 ending in '=' (32 bytes)";

impl Parser {
    fn error(&mut self, line: usize, message: String) {
        self.errors.push(Diag { line, message });
    }

    fn warn(&mut self, line: usize, message: String) {
        self.warnings.push(Diag { line, message });
    }

    fn line(&mut self, line: usize, raw: &str) {
        let text = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if text.is_empty() {
            return;
        }
        if let Some(rest) = text.strip_prefix('[') {
            self.header(line, rest);
            return;
        }
        let Some((key, value)) = text.split_once('=') else {
            self.error(
                line,
                format!(
                    "expected `Key = value` or a section header ([Interface] or [Peer]), got {}",
                    show(text)
                ),
            );
            return;
        };
        let key = key.trim();
        if key.is_empty() {
            self.error(
                line,
                "`=` with no key before it; expected `Key = value`, e.g. `ListenPort = 51820`"
                    .to_string(),
            );
            return;
        }
        match self.section {
            Section::Unknown => {}
            Section::None => {
                let hint = if let Some(k) = canonical(key, INTERFACE_KEYS) {
                    format!("put `{k}` under [Interface]")
                } else if let Some(k) = canonical(key, PEER_KEYS) {
                    format!("put `{k}` under a [Peer]")
                } else {
                    "the file starts with [Interface], then one [Peer] per peer".to_string()
                };
                self.error(
                    line,
                    format!("key {} appears before any section; {hint}", show(key)),
                );
            }
            Section::Interface => match canonical(key, INTERFACE_KEYS) {
                Some(k) => {
                    let value = clean(k, value);
                    self.note_repeat(line, k, None);
                    self.interface_key(line, k, &value);
                }
                None => self.unknown_key(line, key, "Interface"),
            },
            Section::Peer => match canonical(key, PEER_KEYS) {
                Some(k) => {
                    let value = clean(k, value);
                    let peer_idx = self.peers.len().checked_sub(1);
                    self.note_repeat(line, k, peer_idx);
                    self.peer_key(line, k, &value);
                }
                None => self.unknown_key(line, key, "Peer"),
            },
        }
    }

    fn header(&mut self, line: usize, rest: &str) {
        let Some(name) = rest.strip_suffix(']') else {
            self.section = Section::Unknown;
            self.error(
                line,
                format!(
                    "malformed section header {}; expected [Interface] or [Peer] alone on the line",
                    show(&format!("[{rest}"))
                ),
            );
            return;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Interface") {
            match self.interface.line {
                None => self.interface.line = Some(line),
                Some(first) => self.warn(
                    line,
                    format!(
                        "second [Interface] section (first on line {first}); its keys are added to the first, as wg does"
                    ),
                ),
            }
            self.section = Section::Interface;
        } else if name.eq_ignore_ascii_case("Peer") {
            self.peers.push(PeerDraft::new(line));
            self.section = Section::Peer;
        } else {
            self.section = Section::Unknown;
            self.error(
                line,
                format!(
                    "unknown section {}; valid sections are [Interface] and [Peer] (its keys are skipped)",
                    show(&format!("[{name}]"))
                ),
            );
        }
    }

    fn unknown_key(&mut self, line: usize, key: &str, section: &str) {
        let (here, other, other_name) = if section == "Interface" {
            (INTERFACE_KEYS, PEER_KEYS, "[Peer]")
        } else {
            (PEER_KEYS, INTERFACE_KEYS, "[Interface]")
        };
        let message = match canonical(key, other) {
            Some(k) => format!(
                "key `{k}` belongs in {other_name}, not in [{section}]; valid keys here: {}",
                here.join(", ")
            ),
            None => format!(
                "unknown key {} in [{section}]; valid keys here: {}",
                show(key),
                here.join(", ")
            ),
        };
        self.error(line, message);
    }

    /// Warns when a single-valued key is set again in the same section.
    fn note_repeat(&mut self, line: usize, key: &'static str, peer: Option<usize>) {
        if LIST_KEYS.contains(&key) {
            return;
        }
        let seen = match peer {
            Some(i) => match self.peers.get_mut(i) {
                Some(p) => &mut p.seen,
                None => return,
            },
            None => &mut self.interface.seen,
        };
        match seen.get(key) {
            Some(&first) => self.warn(
                line,
                format!(
                    "`{key}` is set again (first on line {first}); the later value is used, as wg and wg-quick do"
                ),
            ),
            None => {
                seen.insert(key, line);
            }
        }
    }

    fn key_value(&mut self, line: usize, key: &str, value: &str, what: &str) -> Option<Key> {
        if value.is_empty() {
            self.error(line, format!("`{key}` is empty; {KEY_FORMAT}, {what}"));
            return None;
        }
        match Key::from_base64(value) {
            Ok(k) => Some(k),
            Err(why) => {
                self.error(
                    line,
                    format!(
                        "`{key}` is not a WireGuard key: {why}; {KEY_FORMAT}, {what} (the value is not shown)"
                    ),
                );
                None
            }
        }
    }

    fn interface_key(&mut self, line: usize, key: &'static str, value: &str) {
        let i = &mut self.interface;
        match key {
            "PrivateKey" => {
                if let Some(k) = self.key_value(line, key, value, "as printed by `wg genkey`") {
                    self.interface.private_key = Some(k);
                }
            }
            "ListenPort" => match decimal::<u16>(value) {
                Some(port) => {
                    i.listen_port = Some(port);
                    if port == 0 {
                        self.warn(
                            line,
                            "`ListenPort = 0` makes wg pick a random port; peers cannot dial this end"
                                .to_string(),
                        );
                    }
                }
                None => self.error(
                    line,
                    format!(
                        "`ListenPort` {} is not a UDP port; use a number from 0 to 65535 (0: random), e.g. 51820",
                        show(value)
                    ),
                ),
            },
            "FwMark" => match parse_fwmark(value) {
                Some(mark) => i.fwmark = Some(mark),
                None => self.error(
                    line,
                    format!(
                        "`FwMark` {} is not valid; use a 32-bit number in decimal or 0x hex (e.g. 51820 or 0xca6c), or `off`",
                        show(value)
                    ),
                ),
            },
            "Address" => {
                for item in value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                {
                    match parse_prefix(item) {
                        Some(net) => {
                            if self.interface.address_set.insert(net) {
                                self.interface.addresses.push(net);
                            } else {
                                self.warn(
                                    line,
                                    format!("`Address` {net} is listed twice; it is kept once"),
                                );
                            }
                        }
                        None => self.error(
                            line,
                            format!(
                                "`Address` entry {} is not an address; use ADDRESS/LENGTH such as 10.0.0.1/24 or fd00::1/64, several separated by commas",
                                show(item)
                            ),
                        ),
                    }
                }
            }
            "DNS" => {
                for item in value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                {
                    // wg-quick's rule: digits and dots, or any ':', is a server address.
                    let is_addr =
                        item.bytes().all(|b| b.is_ascii_digit() || b == b'.') || item.contains(':');
                    if is_addr {
                        match item.parse::<IpAddr>() {
                            Ok(ip) => self.interface.dns.push(ip.to_string()),
                            Err(_) => self.error(
                                line,
                                format!(
                                    "`DNS` entry {} looks like an address but is not an IPv4 or IPv6 address; use e.g. 192.0.2.53 or 2001:db8::53, or a search domain such as corp.example",
                                    show(item)
                                ),
                            ),
                        }
                    } else if is_domain(item) {
                        self.interface.dns.push(item.to_string());
                    } else {
                        self.error(
                            line,
                            format!(
                                "`DNS` entry {} is neither an IP address nor a search domain; use e.g. 192.0.2.53, 2001:db8::53 or corp.example",
                                show(item)
                            ),
                        );
                    }
                }
            }
            "MTU" => match decimal::<u32>(value).filter(|m| (68..=65535).contains(m)) {
                Some(mtu) => i.mtu = Some((mtu, line)),
                None => self.error(
                    line,
                    format!(
                        "`MTU` {} is not valid; use a number from 68 to 65535 (1280 or more with IPv6), e.g. 1420",
                        show(value)
                    ),
                ),
            },
            "Table" => match parse_table(value) {
                Some(t) => i.table = Some(t),
                None => self.error(
                    line,
                    format!(
                        "`Table` {} is not valid; use `off`, `auto`, `main` or a table number from 1 to 4294967295",
                        show(value)
                    ),
                ),
            },
            "PreUp" | "PostUp" | "PreDown" | "PostDown" => {
                if value.is_empty() {
                    self.warn(
                        line,
                        format!("`{key}` is empty and is ignored; give a shell command"),
                    );
                    return;
                }
                let list = match key {
                    "PreUp" => &mut i.pre_up,
                    "PostUp" => &mut i.post_up,
                    "PreDown" => &mut i.pre_down,
                    _ => &mut i.post_down,
                };
                list.push(value.to_string());
            }
            "SaveConfig" => {
                if value.eq_ignore_ascii_case("true") {
                    i.save_config = true;
                } else if value.eq_ignore_ascii_case("false") {
                    i.save_config = false;
                } else {
                    self.error(
                        line,
                        format!(
                            "`SaveConfig` {} is neither `true` nor `false`",
                            show(value)
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    fn peer_key(&mut self, line: usize, key: &'static str, value: &str) {
        let Some(idx) = self.peers.len().checked_sub(1) else {
            return;
        };
        match key {
            "PublicKey" => {
                if let Some(k) = self.key_value(line, key, value, "as printed by `wg pubkey`") {
                    if let Some(p) = self.peers.get_mut(idx) {
                        p.public_key = Some((k, line));
                    }
                }
            }
            "PresharedKey" => {
                if let Some(k) = self.key_value(line, key, value, "as printed by `wg genpsk`") {
                    if let Some(p) = self.peers.get_mut(idx) {
                        p.preshared_key = Some(k);
                    }
                }
            }
            "AllowedIPs" => {
                if value.is_empty() {
                    return;
                }
                for item in value.split(',') {
                    let net = if item.is_empty() {
                        None
                    } else {
                        parse_prefix(item)
                    };
                    let Some(net) = net else {
                        let what = if item.is_empty() {
                            "an empty entry between commas".to_string()
                        } else {
                            format!("entry {}, which is not a prefix", show(item))
                        };
                        self.error(
                            line,
                            format!(
                                "`AllowedIPs` has {what}; use ADDRESS/LENGTH such as 10.1.0.0/24 or fd00:1::/64, separated by commas"
                            ),
                        );
                        continue;
                    };
                    let net = match host_bits(&net) {
                        Some(bits) => {
                            let trunc = net.trunc();
                            self.warn(
                                line,
                                format!(
                                    "`AllowedIPs` {net} has host bits set ({bits}); it is read as {trunc}, the network wg installs"
                                ),
                            );
                            trunc
                        }
                        None => net,
                    };
                    if let Some(p) = self.peers.get_mut(idx) {
                        if p.allowed_set.insert(net) {
                            p.allowed_ips.push((net, line));
                        }
                    }
                }
            }
            "Endpoint" => match value.parse::<Endpoint>() {
                Ok(e) => {
                    if let Some(p) = self.peers.get_mut(idx) {
                        p.endpoint = Some(e);
                    }
                }
                Err(why) => {
                    let why = if looks_secret(value) {
                        "the value is not an endpoint (not shown: it looks like key material); use IPv4:port, [IPv6]:port or dns-name:port".to_string()
                    } else {
                        why
                    };
                    self.error(line, format!("`Endpoint` is not valid: {why}"));
                }
            },
            "PersistentKeepalive" => {
                let secs = if value.eq_ignore_ascii_case("off") {
                    Some(0)
                } else {
                    decimal::<u16>(value)
                };
                match secs {
                    Some(s) => {
                        if let Some(p) = self.peers.get_mut(idx) {
                            p.persistent_keepalive = Some(s);
                        }
                    }
                    None => self.error(
                        line,
                        format!(
                            "`PersistentKeepalive` {} is not valid; use seconds from 1 to 65535 (e.g. 25), or 0 / `off` to disable",
                            show(value)
                        ),
                    ),
                }
            }
            _ => {}
        }
    }

    fn finish(mut self) -> Result<WgQuick, Vec<Diag>> {
        let iface_line = match self.interface.line {
            Some(l) => l,
            None => {
                self.error(
                    1,
                    "no [Interface] section; a wg-quick file has one [Interface] section (PrivateKey, Address, ...) and a [Peer] section per peer".to_string(),
                );
                0
            }
        };
        if self.interface.line.is_some() && self.interface.private_key.is_none() {
            self.warn(
                iface_line,
                "[Interface] has no `PrivateKey`; the tunnel cannot handshake until one is set (`wg genkey`)"
                    .to_string(),
            );
        }
        let has_v6 = self
            .interface
            .addresses
            .iter()
            .any(|a| matches!(a, IpNet::V6(_)));
        if let Some((mtu, line)) = self.interface.mtu {
            if has_v6 && mtu < 1280 {
                self.warn(
                    line,
                    format!("`MTU` {mtu} is below 1280, the minimum for IPv6, and the interface has IPv6 addresses"),
                );
            }
        }

        let own_public = self.interface.private_key.as_ref().map(Key::public_key);
        let mut keys: HashMap<Key, usize> = HashMap::new();
        let mut routes: HashMap<IpNet, usize> = HashMap::new();
        let mut peers = Vec::new();
        for draft in std::mem::take(&mut self.peers) {
            for &(net, line) in &draft.allowed_ips {
                match routes.get(&net) {
                    Some(&other) => self.warn(
                        line,
                        format!(
                            "`AllowedIPs` {net} is also routed to the [Peer] on line {other}; wg routes it to this peer only"
                        ),
                    ),
                    None => {
                        routes.insert(net, draft.line);
                    }
                }
            }
            let Some((public_key, key_line)) = draft.public_key else {
                self.error(
                    draft.line,
                    "[Peer] has no `PublicKey`; add `PublicKey = <key>` with the peer's key as printed by `wg pubkey`".to_string(),
                );
                continue;
            };
            if own_public.as_ref() == Some(&public_key) {
                self.error(
                    key_line,
                    format!(
                        "`PublicKey` of the [Peer] on line {} is this interface's own public key (from its PrivateKey); use the remote end's public key",
                        draft.line
                    ),
                );
                continue;
            }
            if let Some(&first) = keys.get(&public_key) {
                self.error(
                    key_line,
                    format!(
                        "`PublicKey` of the [Peer] on line {} repeats that of the [Peer] on line {first}; each peer needs its own key (merge the two sections)",
                        draft.line
                    ),
                );
                continue;
            }
            keys.insert(public_key.clone(), draft.line);
            if draft.allowed_ips.is_empty() {
                self.warn(
                    draft.line,
                    "[Peer] has no `AllowedIPs`; no traffic will be sent to or accepted from it"
                        .to_string(),
                );
            }
            peers.push(Peer {
                line: draft.line,
                public_key,
                preshared_key: draft.preshared_key,
                allowed_ips: draft.allowed_ips.into_iter().map(|(n, _)| n).collect(),
                endpoint: draft.endpoint,
                persistent_keepalive: draft.persistent_keepalive,
            });
        }

        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| d.line);
            return Err(self.errors);
        }
        self.warnings.sort_by_key(|d| d.line);
        let i = self.interface;
        Ok(WgQuick {
            interface: Interface {
                line: iface_line,
                private_key: i.private_key,
                listen_port: i.listen_port,
                fwmark: i.fwmark,
                addresses: i.addresses,
                dns: i.dns,
                mtu: i.mtu.map(|(m, _)| m),
                table: i.table,
                pre_up: i.pre_up,
                post_up: i.post_up,
                pre_down: i.pre_down,
                post_down: i.post_down,
                save_config: i.save_config,
            },
            peers,
            warnings: self.warnings,
        })
    }
}

/// The value as the tool that reads `key` sees it: `wg` drops all whitespace, wg-quick trims.
fn clean(key: &str, value: &str) -> String {
    if WG_KEYS.contains(&key) {
        value.split_whitespace().collect()
    } else {
        value.trim().to_string()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    /// A valid base64 key whose bytes are all `n`.
    fn key(n: u8) -> String {
        Key::from_bytes([n; 32]).to_base64()
    }

    fn ok(src: &str) -> WgQuick {
        match parse(src) {
            Ok(w) => w,
            Err(e) => panic!("expected success, got {e:?}"),
        }
    }

    fn errs(src: &str) -> Vec<Diag> {
        match parse(src) {
            Ok(w) => panic!("expected errors, got {w:?}"),
            Err(e) => e,
        }
    }

    /// `[Interface]` with a private key, then `peer_body` under a `[Peer]` with a public key.
    fn with_peer(peer_body: &str) -> String {
        format!(
            "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\n{peer_body}\n",
            key(1),
            key(2)
        )
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_typical_site_config() {
        let src = format!(
            "# office router\n\
             [Interface]\n\
             PrivateKey = {k1}\n\
             Address = 10.0.0.1/24, fd00::1/64\n\
             ListenPort = 51820\n\
             DNS = 10.0.0.53, corp.example\n\
             MTU = 1420\n\
             Table = auto\n\
             PostUp = iptables -A FORWARD -i %i -j ACCEPT\n\
             PostDown = iptables -D FORWARD -i %i -j ACCEPT\n\
             \n\
             [Peer]\n\
             PublicKey = {k2}\n\
             PresharedKey = {k3}\n\
             AllowedIPs = 10.1.0.0/24\n\
             Endpoint = vpn.branch.example:51820\n\
             PersistentKeepalive = 25\n",
            k1 = key(1),
            k2 = key(2),
            k3 = key(3)
        );
        let w = ok(&src);
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
        let i = &w.interface;
        assert_eq!(i.line, 2);
        assert_eq!(i.private_key, Some(Key::from_bytes([1; 32])));
        assert_eq!(i.addresses, vec![net("10.0.0.1/24"), net("fd00::1/64")]);
        assert_eq!(i.listen_port, Some(51820));
        assert_eq!(
            i.dns_servers(),
            vec!["10.0.0.53".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(i.dns_search(), vec!["corp.example"]);
        assert_eq!(i.mtu, Some(1420));
        assert_eq!(i.table, Some(Table::Auto));
        assert_eq!(i.post_up, vec!["iptables -A FORWARD -i %i -j ACCEPT"]);
        assert_eq!(i.post_down, vec!["iptables -D FORWARD -i %i -j ACCEPT"]);
        assert!(!i.save_config);
        assert_eq!(w.peers.len(), 1);
        let p = &w.peers[0];
        assert_eq!(p.line, 12);
        assert_eq!(p.public_key, Key::from_bytes([2; 32]));
        assert_eq!(p.preshared_key, Some(Key::from_bytes([3; 32])));
        assert_eq!(p.allowed_ips, vec![net("10.1.0.0/24")]);
        assert_eq!(
            p.endpoint,
            Some("vpn.branch.example:51820".parse().unwrap())
        );
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!(p.keepalive(), Some(25));
    }

    // Q1
    #[test]
    fn allowed_ips_split_on_commas_whatever_the_spacing() {
        let w = ok(&with_peer("AllowedIPs = 10.1.0.0/24 , fd00:1::/64"));
        assert_eq!(
            w.peers[0].allowed_ips,
            vec![net("10.1.0.0/24"), net("fd00:1::/64")]
        );
        let w = ok(&with_peer("AllowedIPs=10.1.0.0/24,\tfd00:1::/64 ,10.9.9.9"));
        assert_eq!(w.peers[0].allowed_ips.len(), 3);
        assert_eq!(w.peers[0].allowed_ips[2], net("10.9.9.9/32"));
    }

    // Q2
    #[test]
    fn repeated_allowed_ips_lines_are_merged() {
        let w = ok(&with_peer(
            "AllowedIPs = 10.1.0.0/24\nAllowedIPs = 10.2.0.0/24, 10.1.0.0/24",
        ));
        assert_eq!(
            w.peers[0].allowed_ips,
            vec![net("10.1.0.0/24"), net("10.2.0.0/24")]
        );
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
    }

    // Q3
    #[test]
    fn comment_after_a_value_is_ignored() {
        let w = ok("[Interface]\nListenPort = 51820   # office\n");
        assert_eq!(w.interface.listen_port, Some(51820));
        let w = ok("[Interface] # the only one\nPostUp = echo up # say so\n");
        assert_eq!(w.interface.post_up, vec!["echo up"]);
    }

    // Q4
    #[test]
    fn section_and_key_names_ignore_case() {
        let src = format!(
            "[INTERFACE]\nprivatekey = {}\nlistenport = 1\n[peer]\npublickey = {}\nallowedips = 10.0.0.0/8\nENDPOINT = 192.0.2.1:51820\n",
            key(1),
            key(2)
        );
        let w = ok(&src);
        assert!(w.interface.private_key.is_some());
        assert_eq!(w.interface.listen_port, Some(1));
        assert_eq!(w.peers.len(), 1);
        assert_eq!(w.peers[0].allowed_ips, vec![net("10.0.0.0/8")]);
        assert!(w.peers[0].endpoint.is_some());
    }

    // Q5
    #[test]
    fn last_line_without_newline_counts() {
        let src = with_peer("PersistentKeepalive = 25");
        let src = src.trim_end_matches('\n');
        assert!(!src.ends_with('\n'));
        assert_eq!(ok(src).peers[0].persistent_keepalive, Some(25));
        // CRLF files too.
        let crlf = with_peer("PersistentKeepalive = 25").replace('\n', "\r\n");
        assert_eq!(ok(&crlf).peers[0].persistent_keepalive, Some(25));
    }

    // Q6
    #[test]
    fn bracketed_ipv6_endpoint() {
        let w = ok(&with_peer("Endpoint = [2001:db8:5::1]:51820"));
        let e = w.peers[0].endpoint.clone().unwrap();
        assert_eq!(e.port(), 51820);
        match e {
            Endpoint::Addr(a) => {
                assert_eq!(a.ip(), "2001:db8:5::1".parse::<IpAddr>().unwrap());
            }
            other => panic!("expected an address, got {other:?}"),
        }
        // The endpoint parser's own refusal comes through, with the line.
        let e = errs(&with_peer("Endpoint = 2001:db8:5::1:51820"));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 5);
        assert!(e[0].message.contains("Endpoint"), "{}", e[0]);
        assert!(e[0].message.contains("brackets"), "{}", e[0]);
    }

    // Q7
    #[test]
    fn keepalive_off_is_zero_and_range_is_checked() {
        let off = ok(&with_peer("PersistentKeepalive = off")).peers[0].clone();
        let zero = ok(&with_peer("PersistentKeepalive = 0")).peers[0].clone();
        assert_eq!(off.persistent_keepalive, Some(0));
        assert_eq!(off, zero);
        assert_eq!(off.keepalive(), None);
        assert_eq!(ok(&with_peer("")).peers[0].persistent_keepalive, None);
        assert_eq!(
            ok(&with_peer("PersistentKeepalive = 65535")).peers[0].persistent_keepalive,
            Some(65535)
        );
        for bad in ["65536", "-1", "+5", "25s", ""] {
            let e = errs(&with_peer(&format!("PersistentKeepalive = {bad}")));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].line, 5);
            assert!(e[0].message.contains("PersistentKeepalive"), "{}", e[0]);
            assert!(e[0].message.contains("1 to 65535"), "{}", e[0]);
        }
    }

    // Q8
    #[test]
    fn unknown_key_is_an_error_naming_line_and_key() {
        let src = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\nBogus = 1\n",
            key(1),
            key(2)
        );
        let e = errs(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 7);
        let text = e[0].to_string();
        assert!(text.starts_with("line 7: "), "{text}");
        assert!(text.contains("`Bogus`"), "{text}");
        assert!(text.contains("AllowedIPs"), "lists valid keys: {text}");
    }

    #[test]
    fn unknown_key_with_a_space_is_quoted() {
        let e = errs(&format!("[Interface]\nPrivate Key = {}\n", key(1)));
        assert!(e[0].message.contains("`Private Key`"), "{}", e[0]);
        assert!(!e[0].message.contains(&key(1)), "{}", e[0]);
    }

    #[test]
    fn key_in_the_wrong_section_says_where_it_belongs() {
        let e = errs(&format!("[Interface]\nPublicKey = {}\n", key(2)));
        assert_eq!(e[0].line, 2);
        assert!(e[0].message.contains("belongs in [Peer]"), "{}", e[0]);
        let e = errs(&with_peer("Address = 10.0.0.1/24"));
        assert!(e[0].message.contains("belongs in [Interface]"), "{}", e[0]);
    }

    // Q9
    #[test]
    fn allowed_ips_host_bits_are_cleared_with_a_warning() {
        let w = ok(&with_peer("AllowedIPs = 10.2.0.9/24, fd00:2::5/64"));
        assert_eq!(
            w.peers[0].allowed_ips,
            vec![net("10.2.0.0/24"), net("fd00:2::/64")]
        );
        assert_eq!(w.warnings.len(), 2, "{:?}", w.warnings);
        assert_eq!(w.warnings[0].line, 5);
        assert!(
            w.warnings[0].message.contains("0.0.0.9"),
            "{}",
            w.warnings[0]
        );
        assert!(
            w.warnings[0].message.contains("10.2.0.0/24"),
            "{}",
            w.warnings[0]
        );
        assert!(w.warnings[1].message.contains("::5"), "{}", w.warnings[1]);
    }

    // Q10
    #[test]
    fn fwmark_hex_decimal_and_off() {
        let mark = |v: &str| ok(&format!("[Interface]\nFwMark = {v}\n")).interface.fwmark;
        assert_eq!(mark("0x1f"), Some(31));
        assert_eq!(mark("0X1F"), Some(31));
        assert_eq!(mark("31"), Some(31));
        assert_eq!(mark("off"), Some(0));
        assert_eq!(mark("0"), Some(0));
        assert_eq!(mark("0xffffffff"), Some(u32::MAX));
        assert_eq!(ok("[Interface]\n").interface.fwmark, None);
        for bad in ["0x", "0x1g", "4294967296", "0x100000000", "-1", "on", "0b1"] {
            let e = errs(&format!("[Interface]\nFwMark = {bad}\n"));
            assert_eq!(e[0].line, 2, "{bad}");
            assert!(e[0].message.contains("FwMark"), "{}", e[0]);
            assert!(e[0].message.contains("off"), "{}", e[0]);
        }
    }

    // Q11
    #[test]
    fn peer_without_public_key_names_its_header_line() {
        let src = format!(
            "[Interface]\nPrivateKey = {}\n\n[Peer]\nAllowedIPs = 10.1.0.0/24\n[Peer]\nPublicKey = {}\n",
            key(1),
            key(2)
        );
        let e = errs(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 4);
        assert!(e[0].message.contains("PublicKey"), "{}", e[0]);
    }

    // Q12
    #[test]
    fn bad_private_key_is_reported_but_never_echoed() {
        let good = key(7);
        let too_short = &good[..40];
        let bad_char = format!("{}!=", &good[..42]);
        let too_long = Key::from_bytes([7; 32]).to_base64().replace('=', "AAAA=");
        let non_canonical = format!("{}B=", &good[..42]); // trailing bits set
        let thirty_three = base64::engine::general_purpose::STANDARD.encode([9u8; 33]);
        for bad in [
            too_short,
            &bad_char,
            &too_long,
            &non_canonical,
            &thirty_three,
            "hunter2",
        ] {
            let src = format!("[Interface]\nPrivateKey = {bad}\n");
            let e = errs(&src);
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].line, 2);
            let text = e[0].to_string();
            assert!(text.contains("PrivateKey"), "{text}");
            assert!(text.contains("44 characters"), "{text}");
            assert!(!text.contains(bad), "key echoed: {text}");
            assert!(!format!("{e:?}").contains(bad));
        }
        // Nor for the other key fields.
        for field in ["PublicKey", "PresharedKey"] {
            let e = errs(&with_peer(&format!("{field} = {}", &good[..43])));
            assert!(!e[0].to_string().contains(&good[..43]), "{}", e[0]);
        }
    }

    #[test]
    fn key_material_in_other_places_is_not_echoed_either() {
        let secret = key(9);
        let body = secret.trim_end_matches('=');
        let cases = [
            // A key pasted on a line of its own: an "unknown key" with an empty value.
            format!("[Interface]\n{secret}\n"),
            // Without the '=' it is not a key/value line at all.
            format!("[Interface]\n{body}\n"),
            format!("[Interface]\nListenPort = {secret}\n"),
            format!("[Interface]\nFwMark = {secret}\n"),
            format!("[Interface]\nDNS = {secret}\n"),
            format!("[Interface]\nAddress = {secret}\n"),
            with_peer(&format!("Endpoint = {secret}:51820")),
            with_peer(&format!("AllowedIPs = {secret}")),
            format!("{secret} = 1\n[Interface]\n"),
            format!("[{secret}]\n[Interface]\n"),
        ];
        for src in &cases {
            let e = errs(src);
            for d in &e {
                let text = d.to_string();
                assert!(!text.contains(body), "echoed in {src:?}: {text}");
            }
        }
    }

    #[test]
    fn escaping_does_not_build_a_key_like_run() {
        // Found by the fuzzer: a NUL is shown as `\0`, adding a base64 character to the run.
        let src = format!("\u{b3}\0{}", "-".repeat(39));
        let e = errs(&src);
        assert!(!e[0].message.contains(&"-".repeat(39)), "{}", e[0]);
    }

    #[test]
    fn key_type_hides_bytes_and_round_trips() {
        let k = Key::from_bytes([0xab; 32]);
        assert_eq!(format!("{k:?}"), "Key(..)");
        let w = ok(&format!("[Interface]\nPrivateKey = {}\n", k.to_base64()));
        let dbg = format!("{w:?}");
        assert!(!dbg.contains(&k.to_base64()));
        assert!(!dbg.contains("171"), "no raw bytes either");
        assert_eq!(Key::from_base64(&k.to_base64()), Ok(k.clone()));
        assert_eq!(k.as_bytes(), &[0xab; 32]);
        assert_eq!(k.to_base64().len(), 44);
        assert_eq!(Key::from_base64("short"), Err(KeyError::Length(5)));
    }

    #[test]
    fn converts_to_the_keystore_types() {
        let k = Key::from_bytes([5; 32]);
        assert_eq!(crate::keys::PublicKey::from(&k).0, [5; 32]);
        let private = k.to_private_key().unwrap();
        assert_eq!(private.as_bytes(), &[5; 32]);
        assert_eq!(private.public_key().0, *k.public_key().as_bytes());
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // RFC 7748 section 6.1, Alice's key pair.
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        };
        let private = Key::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let public = Key::from_bytes(hex(
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        ));
        assert_eq!(private.public_key(), public);
    }

    #[test]
    fn keys_outside_any_section() {
        let e = errs(&format!(
            "ListenPort = 1\nBogus = 2\n[Interface]\nPrivateKey = {}\n",
            key(1)
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!((e[0].line, e[1].line), (1, 2));
        assert!(e[0].message.contains("before any section"), "{}", e[0]);
        assert!(e[0].message.contains("[Interface]"), "{}", e[0]);
        assert!(e[1].message.contains("`Bogus`"), "{}", e[1]);
    }

    #[test]
    fn unknown_and_malformed_sections() {
        let src = format!(
            "[Interface]\nPrivateKey = {}\n[Peers]\nPublicKey = {}\n[Peer\n",
            key(1),
            key(2)
        );
        let e = errs(&src);
        assert_eq!(
            e.len(),
            2,
            "keys of an unknown section are not reported again: {e:?}"
        );
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("[Peers]"), "{}", e[0]);
        assert!(e[0].message.contains("[Interface] and [Peer]"), "{}", e[0]);
        assert_eq!(e[1].line, 5);
        assert!(e[1].message.contains("malformed"), "{}", e[1]);
        // Spaces inside the brackets are fine, as wg strips them.
        assert_eq!(ok("[ Interface ]\n").interface.line, 1);
    }

    #[test]
    fn lines_that_are_not_key_value() {
        let e = errs("[Interface]\njust some words\n= 5\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, 2);
        assert!(e[0].message.contains("Key = value"), "{}", e[0]);
        assert_eq!(e[1].line, 3);
        assert!(e[1].message.contains("no key"), "{}", e[1]);
    }

    #[test]
    fn missing_interface_section() {
        for src in [
            "",
            "\n\n# nothing\n",
            &format!("[Peer]\nPublicKey = {}\n", key(2)),
        ] {
            let e = errs(src);
            assert!(
                e.iter().any(|d| d.message.contains("no [Interface]")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn interface_without_private_key_is_a_warning() {
        let w = ok("[Interface]\nListenPort = 51820\n");
        assert_eq!(w.interface.private_key, None);
        assert_eq!(w.warnings.len(), 1);
        assert!(w.warnings[0].message.contains("PrivateKey"));
    }

    #[test]
    fn repeated_single_valued_keys_later_wins_with_warning() {
        let src = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 1\nListenPort = 2\nPrivateKey = {}\nTable = off\ntable = 7\n[Peer]\nPublicKey = {}\nEndpoint = 192.0.2.1:1\nEndpoint = 192.0.2.2:2\nAllowedIPs = 10.0.0.0/8\n",
            key(1),
            key(3),
            key(2)
        );
        let w = ok(&src);
        assert_eq!(w.interface.listen_port, Some(2));
        assert_eq!(w.interface.private_key, Some(Key::from_bytes([3; 32])));
        assert_eq!(w.interface.table, Some(Table::Id(7)));
        assert_eq!(w.peers[0].endpoint, Some("192.0.2.2:2".parse().unwrap()));
        let lines: Vec<usize> = w.warnings.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![4, 5, 7, 11], "{:?}", w.warnings);
        assert!(
            w.warnings[0].message.contains("first on line 3"),
            "{}",
            w.warnings[0]
        );
        assert!(!w.warnings[1].message.contains(&key(3)));
        // Repeats in different peers are not repeats.
        let src = format!(
            "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.1.0.0/16\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.2.0.0/16\n",
            key(1),
            key(2),
            key(3)
        );
        assert!(ok(&src).warnings.is_empty());
    }

    #[test]
    fn second_interface_section_continues_the_first() {
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\n[Interface]\nListenPort = 5\n",
            key(1)
        ));
        assert_eq!(w.interface.line, 1);
        assert_eq!(w.interface.listen_port, Some(5));
        assert_eq!(w.warnings.len(), 1);
        assert_eq!(w.warnings[0].line, 3);
    }

    #[test]
    fn duplicate_peer_public_keys_are_an_error() {
        let src = format!(
            "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {k}\n[Peer]\nAllowedIPs = 10.0.0.0/8\nPublicKey = {k}\n",
            key(1),
            k = key(2)
        );
        let e = errs(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 7);
        assert!(e[0].message.contains("line 3"), "{}", e[0]);
        assert!(!e[0].message.contains(&key(2)));
    }

    #[test]
    fn peer_with_the_interface_own_key_is_an_error() {
        let private = Key::from_bytes([1; 32]);
        let src = format!(
            "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\n",
            private.to_base64(),
            private.public_key().to_base64()
        );
        let e = errs(&src);
        assert_eq!(e[0].line, 4);
        assert!(e[0].message.contains("own public key"), "{}", e[0]);
    }

    #[test]
    fn same_prefix_on_two_peers_is_a_warning() {
        let src = format!(
            "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.1.0.0/24\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.1.0.0/24\n",
            key(1),
            key(2),
            key(3)
        );
        let w = ok(&src);
        assert_eq!(w.warnings.len(), 1);
        assert_eq!(w.warnings[0].line, 8);
        assert!(
            w.warnings[0].message.contains("line 3"),
            "{}",
            w.warnings[0]
        );
    }

    #[test]
    fn empty_values() {
        // Single-valued keys: an error naming the key.
        for k in [
            "PrivateKey",
            "ListenPort",
            "FwMark",
            "MTU",
            "Table",
            "SaveConfig",
        ] {
            let e = errs(&format!("[Interface]\n{k} =\n"));
            assert_eq!(e.len(), 1, "{k}: {e:?}");
            assert!(e[0].message.contains(k), "{}", e[0]);
        }
        for k in [
            "PublicKey",
            "PresharedKey",
            "Endpoint",
            "PersistentKeepalive",
        ] {
            let e = errs(&with_peer(&format!("{k} =")));
            assert!(
                e.iter().any(|d| d.line == 5 && d.message.contains(k)),
                "{k}: {e:?}"
            );
        }
        // List keys: nothing added.
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\nAddress =\nDNS = \n",
            key(1)
        ));
        assert!(w.interface.addresses.is_empty() && w.interface.dns.is_empty());
        let w = ok(&with_peer("AllowedIPs =\nAllowedIPs = 10.0.0.0/8"));
        assert_eq!(w.peers[0].allowed_ips, vec![net("10.0.0.0/8")]);
        // Hooks: ignored with a warning.
        let w = ok(&format!("[Interface]\nPrivateKey = {}\nPostUp =\n", key(1)));
        assert!(w.interface.post_up.is_empty());
        assert_eq!(w.warnings[0].line, 3);
        // An empty entry between commas is an error, as in wg.
        for v in ["10.0.0.0/8,", ",10.0.0.0/8", "10.0.0.0/8,,10.1.0.0/16"] {
            let e = errs(&with_peer(&format!("AllowedIPs = {v}")));
            assert!(e[0].message.contains("empty entry"), "{}", e[0]);
        }
    }

    #[test]
    fn bad_allowed_ips_entries() {
        for v in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0",
            "example.com/24",
            "10.0.0.0/",
        ] {
            let e = errs(&with_peer(&format!("AllowedIPs = {v}")));
            assert_eq!(e.len(), 1, "{v}: {e:?}");
            assert_eq!(e[0].line, 5);
            assert!(e[0].message.contains("AllowedIPs"), "{}", e[0]);
            assert!(e[0].message.contains("10.1.0.0/24"), "{}", e[0]);
        }
        // A peer with no AllowedIPs at all is accepted with a warning.
        let w = ok(&with_peer(""));
        assert!(w.peers[0].allowed_ips.is_empty());
        assert_eq!(w.warnings.len(), 1);
        assert_eq!(w.warnings[0].line, 3);
    }

    #[test]
    fn address_keeps_host_bits_and_accumulates() {
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.1/24\nAddress = fd00::1/64 10.0.1.1, 10.0.0.1/24\n",
            key(1)
        ));
        assert_eq!(
            w.interface.addresses,
            vec![net("10.0.0.1/24"), net("fd00::1/64"), net("10.0.1.1/32")]
        );
        assert_eq!(w.warnings.len(), 1, "the repeat: {:?}", w.warnings);
        let e = errs("[Interface]\nAddress = 10.0.0.1/24, 10.0.0.256/24\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("`10.0.0.256/24`"), "{}", e[0]);
        assert!(e[0].message.contains("ADDRESS/LENGTH"), "{}", e[0]);
    }

    #[test]
    fn dns_servers_and_search_domains() {
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\nDNS = 1.1.1.1, 2606:4700:4700:0::1111 corp.example\nDNS = lab.corp.example.\n",
            key(1)
        ));
        assert_eq!(
            w.interface.dns,
            vec![
                "1.1.1.1",
                "2606:4700:4700::1111",
                "corp.example",
                "lab.corp.example."
            ]
        );
        assert_eq!(w.interface.dns_servers().len(), 2);
        assert_eq!(
            w.interface.dns_search(),
            vec!["corp.example", "lab.corp.example."]
        );
        for bad in ["1.1.1", "fe80::1%eth0", "bad!domain", "-x.example"] {
            let e = errs(&format!("[Interface]\nDNS = {bad}\n"));
            assert_eq!(e[0].line, 2, "{bad}");
            assert!(e[0].message.contains("DNS"), "{}", e[0]);
            assert!(e[0].message.contains("corp.example"), "{}", e[0]);
        }
    }

    #[test]
    fn table_values() {
        let t = |v: &str| ok(&format!("[Interface]\nTable = {v}\n")).interface.table;
        assert_eq!(t("off"), Some(Table::Off));
        assert_eq!(t("Auto"), Some(Table::Auto));
        assert_eq!(t("1234"), Some(Table::Id(1234)));
        assert_eq!(t("main"), Some(Table::Id(254)));
        assert_eq!(t("4294967295"), Some(Table::Id(u32::MAX)));
        assert_eq!(ok("[Interface]\n").interface.table, None);
        for bad in ["0", "-1", "4294967296", "vpn", "on"] {
            let e = errs(&format!("[Interface]\nTable = {bad}\n"));
            assert!(e[0].message.contains("Table"), "{}", e[0]);
            assert!(e[0].message.contains("`auto`"), "{}", e[0]);
        }
    }

    #[test]
    fn save_config_values() {
        let s = |v: &str| {
            ok(&format!("[Interface]\nSaveConfig = {v}\n"))
                .interface
                .save_config
        };
        assert!(s("true"));
        assert!(s("True"));
        assert!(!s("false"));
        assert!(!ok("[Interface]\n").interface.save_config);
        for bad in ["yes", "1", "on"] {
            let e = errs(&format!("[Interface]\nSaveConfig = {bad}\n"));
            assert!(e[0].message.contains("`true`"), "{}", e[0]);
        }
    }

    #[test]
    fn listen_port_zero_means_random_and_warns() {
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 0\n",
            key(1)
        ));
        assert_eq!(w.interface.listen_port, Some(0));
        assert_eq!(w.warnings.len(), 1);
        assert_eq!(w.warnings[0].line, 3);
        assert!(w.warnings[0].message.contains("random"));
        assert_eq!(
            ok("[Interface]\nListenPort = 65535\n")
                .interface
                .listen_port,
            Some(65535)
        );
        for bad in ["65536", "-1", "+1", "port", "0x10"] {
            let e = errs(&format!("[Interface]\nListenPort = {bad}\n"));
            assert!(e[0].message.contains("0 to 65535"), "{}", e[0]);
        }
    }

    #[test]
    fn mtu_range_and_ipv6_minimum() {
        assert_eq!(ok("[Interface]\nMTU = 1420\n").interface.mtu, Some(1420));
        for bad in ["67", "65536", "auto", "-1"] {
            let e = errs(&format!("[Interface]\nMTU = {bad}\n"));
            assert!(e[0].message.contains("68 to 65535"), "{}", e[0]);
        }
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\nAddress = fd00::1/64\nMTU = 1200\n",
            key(1)
        ));
        assert_eq!(w.interface.mtu, Some(1200));
        assert_eq!(w.warnings.len(), 1);
        assert_eq!(w.warnings[0].line, 4);
    }

    #[test]
    fn hooks_keep_their_text_and_order() {
        let w = ok(&format!(
            "[Interface]\nPrivateKey = {}\nPreUp = a  b=c\nPostUp = one\npostup = two\nPreDown = x\nPostDown = y\n",
            key(1)
        ));
        let i = w.interface;
        assert_eq!(i.pre_up, vec!["a  b=c"]);
        assert_eq!(i.post_up, vec!["one", "two"]);
        assert_eq!(i.pre_down, vec!["x"]);
        assert_eq!(i.post_down, vec!["y"]);
    }

    #[test]
    fn wg_keys_ignore_inner_whitespace_like_wg() {
        let k = key(2);
        let (a, b) = k.split_at(20);
        let w = ok(&format!(
            "[Interface]\n[Peer]\nPublicKey = {a} {b}\nEndpoint = 192.0.2.1 : 51820\nAllowedIPs = 10.0.0.0 /8\n"
        ));
        assert_eq!(w.peers[0].public_key, Key::from_bytes([2; 32]));
        assert_eq!(
            w.peers[0].endpoint,
            Some("192.0.2.1:51820".parse().unwrap())
        );
        assert_eq!(w.peers[0].allowed_ips, vec![net("10.0.0.0/8")]);
    }

    #[test]
    fn all_errors_are_collected_in_line_order() {
        let src = "Stray = 1\n[Interface]\nListenPort = x\nMTU = 1\nBogus = 2\n[Peer]\nAllowedIPs = 10.0.0.0/33\nPersistentKeepalive = 65536\n";
        let e = errs(src);
        let lines: Vec<usize> = e.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 5, 6, 7, 8], "{e:?}");
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(
            ok("\u{feff}[Interface]\nListenPort = 1\n")
                .interface
                .listen_port,
            Some(1)
        );
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let long = "A".repeat(100_000);
        let inputs = [
            "\0",
            "[",
            "]",
            "[]",
            "=",
            "==",
            "[Peer]\n=",
            "[Interface]\nAddress = /",
            "[Interface]\nAddress = ,,,",
            "[Peer]\nAllowedIPs = /",
            "[Peer]\nEndpoint = []:",
            "[Peer]\nEndpoint = [",
            "[Interface]\nFwMark = 0x",
            "[Interface]\nDNS = .",
            "[Interface]\nDNS = :",
            "[Interface]\nPrivateKey = ============================================",
            "[Interface]\nPrivateKey = ééééééééééééééééééééééééééééééééééééééééééé=",
            &long,
            "[Interface]\nPostUp = \u{1F600}#",
        ];
        for s in inputs {
            let _ = parse(s);
        }
    }

    mod prop {
        use super::super::parse;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_text_never_panics(s in "\\PC*") {
                let _ = parse(&s);
            }

            #[test]
            fn config_shaped_text_never_panics(
                lines in proptest::collection::vec(
                    "(\\[(Interface|Peer|peer|x)\\]|(PrivateKey|PublicKey|AllowedIPs|Endpoint|Address|DNS|FwMark|Table|MTU|ListenPort|PersistentKeepalive|PresharedKey|SaveConfig|PostUp|Bogus) ?= ?[ -~]{0,50})( #.*)?",
                    0..20,
                )
            ) {
                let _ = parse(&lines.join("\n"));
            }
        }
    }
}
