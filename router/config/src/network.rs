//! The network description (`configs/<network>.toml`): one file for the whole mesh.
//!
//! Parsing goes raw serde types (unknown fields refused) → [`validate`] → typed [`Network`].
//! Validation collects every problem it finds, each with its field path, so one run of
//! `sitelink validate` shows them all.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use crate::diag::{Diagnostic, Locator, Severity};
use crate::endpoint::Endpoint;
use crate::keys::PublicKey;

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Tunnel interfaces are named `wg-<peer site>`.
pub const IFNAME_PREFIX: &str = "wg-";
/// Longest site name, so that `wg-<name>` fits [`IFNAME_MAX`].
pub const SITE_NAME_MAX: usize = IFNAME_MAX - IFNAME_PREFIX.len();
/// Metric of the route over the direct tunnel to a prefix's site.
pub const METRIC_DIRECT: u32 = 100;
/// Metric of the first transit backup; later backups count up from here.
pub const METRIC_TRANSIT: u32 = 200;

// ---------------------------------------------------------------------------------------------
// Raw file format. Field docs here are the reference for the file format.
// ---------------------------------------------------------------------------------------------

/// A network description file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    /// Name of the network (lowercase letters, digits, '-').
    name: String,
    /// IPv4 pool the tunnel /31s come from. Default `10.255.0.0/16`.
    tunnel_pool: Option<String>,
    /// MTU of every tunnel interface. Default 1420 (1500 minus WireGuard over IPv6 overhead).
    mtu: Option<i64>,
    /// Keepalive interval in seconds that a site behind NAT sends on its tunnels. Default 25.
    persistent_keepalive: Option<i64>,
    /// Routing table for the routes the router installs: 254 (main) by default.
    route_table: Option<i64>,
    /// Tunnel health probing.
    #[serde(default)]
    probe: RawProbe,
    /// Explicit tunnel list as pairs of site names. Default: a full mesh.
    links: Option<Vec<Vec<String>>>,
    /// The sites, in a fixed order: tunnel addresses and ports are numbered by position, so add
    /// new sites at the end.
    #[serde(default)]
    sites: Vec<RawSite>,
}

/// BFD-like probes over every tunnel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    /// Milliseconds between probes. Default 1000.
    interval_ms: Option<i64>,
    /// Missed probes before a tunnel is declared down. Default 3.
    down_after: Option<i64>,
    /// Answered probes in a row before a down tunnel is declared up again. Default 3.
    up_after: Option<i64>,
    /// UDP port the probe responder listens on, on each tunnel address. Default 51899.
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    /// Site name: lowercase letters, digits and '-', at most 12 characters.
    name: String,
    /// Where peers dial this site: `IPv4:port`, `[IPv6]:port` or `name:port`. The tunnel to the
    /// peer at position p in `sites` uses port + p. Not allowed with `behind_nat`.
    endpoint: Option<String>,
    /// Base UDP listen port; the tunnel to the peer at position p listens on listen_port + p.
    /// Default: the endpoint's port, or 51820.
    listen_port: Option<i64>,
    /// The site is behind NAT: peers never dial it, it dials them and keeps the NAT mapping open
    /// with persistent keepalives. Default false.
    behind_nat: Option<bool>,
    /// The site's WireGuard public key (base64), if it is not kept in a keystore directory.
    public_key: Option<String>,
    /// WAN addressing. Default DHCP on the first NIC.
    #[serde(default)]
    wan: RawWan,
    /// LAN side.
    lan: Option<RawLan>,
    /// Lab only: one-way delay in milliseconds added to this site's outgoing WAN packets, so the
    /// round trip between two sites is the sum of their delays. Default 0.
    lab_delay_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWan {
    /// `dhcp` (default) or `static`.
    mode: Option<String>,
    /// Static address with prefix length, e.g. `198.51.100.1/24`.
    address: Option<String>,
    /// Static default gateway.
    gateway: Option<String>,
    /// MAC of the WAN NIC. Default: the first NIC.
    mac: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLan {
    /// The router's LAN address with prefix length, e.g. `10.1.0.1/24`.
    address: String,
    /// Optional IPv6 LAN address with prefix length.
    address6: Option<String>,
    /// Prefixes this site announces. Default: the networks of `address` and `address6`.
    prefixes: Option<Vec<String>>,
    /// MAC of the LAN NIC. Default: the second NIC.
    mac: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Typed model.
// ---------------------------------------------------------------------------------------------

/// A validated network.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub tunnel_pool: Ipv4Net,
    pub mtu: u16,
    pub persistent_keepalive: u16,
    pub route_table: u32,
    pub probe: Probe,
    pub sites: Vec<Site>,
    /// Tunnels, ordered by (later site position, earlier site position).
    pub links: Vec<Link>,
}

/// Tunnel health probe settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub interval_ms: u32,
    pub down_after: u32,
    pub up_after: u32,
    pub port: u16,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            interval_ms: 1000,
            down_after: 3,
            up_after: 3,
            port: 51899,
        }
    }
}

/// One site and its router.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    pub endpoint: Option<Endpoint>,
    pub listen_port: u16,
    pub behind_nat: bool,
    pub public_key: Option<PublicKey>,
    pub wan: Wan,
    pub lan: Lan,
    pub lab_delay_ms: f64,
}

impl Site {
    /// Name of the tunnel interface on other sites that leads to this site.
    pub fn ifname(&self) -> String {
        format!("{IFNAME_PREFIX}{}", self.name)
    }
}

/// WAN addressing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    pub mode: WanMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WanMode {
    Dhcp,
    Static,
}

/// LAN side of a router.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    pub address: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address6: Option<IpNet>,
    pub prefixes: Vec<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A tunnel between two sites, with its /31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Positions in `sites`, `a < b`.
    pub a: usize,
    pub b: usize,
    /// Slot in the tunnel pool.
    pub slot: u32,
    /// Tunnel address of site `a` (the even one) and of site `b`.
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
}

/// Pool slot of the link between positions `a < b`. Triangular numbering: the links of the site
/// at position b take slots b(b-1)/2 .. b(b-1)/2 + b - 1, so appending a site never moves an
/// existing link.
pub fn link_slot(a: usize, b: usize) -> u64 {
    debug_assert!(a < b);
    (b as u64) * (b as u64 - 1) / 2 + a as u64
}

impl Network {
    /// Position of a site by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name == name)
    }

    /// The link between two positions, if there is one. `links` is sorted by (b, a).
    pub fn link(&self, x: usize, y: usize) -> Option<&Link> {
        let (a, b) = if x < y { (x, y) } else { (y, x) };
        let i = self
            .links
            .binary_search_by_key(&(b, a), |l| (l.b, l.a))
            .ok()?;
        self.links.get(i)
    }

    /// Positions of the sites `s` has a tunnel to, in site order.
    pub fn peers_of(&self, s: usize) -> Vec<usize> {
        (0..self.sites.len())
            .filter(|&p| self.link(s, p).is_some())
            .collect()
    }

    /// Sites that can carry traffic from `s` to `t` in one transit hop, in site order.
    pub fn transits(&self, s: usize, t: usize) -> Vec<usize> {
        (0..self.sites.len())
            .filter(|&x| x != s && x != t && self.link(s, x).is_some() && self.link(x, t).is_some())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.
// ---------------------------------------------------------------------------------------------

/// The outcome of reading a network file: the network (if there were no errors) and every
/// diagnostic, errors and warnings, in file order.
#[derive(Debug)]
pub struct Parsed {
    pub network: Option<Network>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// Parse and validate a network description. `file` is used in diagnostics only.
pub fn parse(text: &str, file: &str) -> Parsed {
    let loc = Locator::new(text);
    let raw: RawNetwork = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, col, path) = match e.span() {
                Some(span) => {
                    let (l, c) = loc.line_col(span.start);
                    (l, c, loc.path_at(&span))
                }
                None => (1, 1, String::new()),
            };
            let diag = Diagnostic {
                severity: Severity::Error,
                file: file.to_owned(),
                line,
                col,
                path,
                message: serde_message(e.message()),
            };
            return Parsed {
                network: None,
                diagnostics: vec![diag],
            };
        }
    };
    let mut v = Validator {
        loc: &loc,
        file,
        diags: Vec::new(),
    };
    let network = v.network(raw);
    let mut diagnostics = v.diags;
    diagnostics.sort_by_key(|d| (d.line, d.col));
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    Parsed {
        network: if has_errors { None } else { network },
        diagnostics,
    }
}

/// serde's messages are close to what we want; make the common ones say what is valid.
fn serde_message(msg: &str) -> String {
    let msg = msg.trim_end();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once("`, expected ") {
            return format!(
                "unknown key `{field}`; valid keys here: {}",
                expected.replace("one of ", "")
            );
        }
    }
    if let Some(field) = msg.strip_prefix("missing field `") {
        return format!("missing required key `{}`", field.trim_end_matches('`'));
    }
    msg.to_owned()
}

struct Validator<'a> {
    loc: &'a Locator,
    file: &'a str,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, path: &str, message: String) {
        let d = self.loc.diag(self.file, Severity::Error, path, message);
        self.diags.push(d);
    }

    fn warn(&mut self, path: &str, message: String) {
        let d = self.loc.diag(self.file, Severity::Warning, path, message);
        self.diags.push(d);
    }

    fn int_in<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        v: Option<i64>,
        default: T,
        lo: i64,
        hi: i64,
        what: &str,
    ) -> T {
        match v {
            None => default,
            Some(n) if (lo..=hi).contains(&n) => T::try_from(n).unwrap_or(default),
            Some(n) => {
                self.error(path, format!("{n} is not a valid {what}; use {lo} to {hi}"));
                default
            }
        }
    }

    fn network(&mut self, raw: RawNetwork) -> Option<Network> {
        if !valid_name(&raw.name, usize::MAX) {
            self.error(
                "name",
                format!("{:?} is not a valid network name; use lowercase letters, digits and '-', starting with a letter or digit", raw.name),
            );
        }
        let tunnel_pool = match raw.tunnel_pool.as_deref() {
            None => Ipv4Net::new(Ipv4Addr::new(10, 255, 0, 0), 16).ok(),
            Some(s) => self.pool(s),
        };
        let mtu = self.int_in("mtu", raw.mtu, 1420u16, 1280, 9000, "tunnel MTU");
        let persistent_keepalive = self.int_in(
            "persistent_keepalive",
            raw.persistent_keepalive,
            25u16,
            1,
            65535,
            "keepalive interval in seconds",
        );
        let route_table = match raw.route_table {
            None => 254u32,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) && n != 255 => n as u32,
            Some(n) => {
                self.error(
                    "route_table",
                    format!("{n} is not a usable routing table; use 1 to 4294967295 except 255 (local), e.g. 254 (main)"),
                );
                254
            }
        };
        let defaults = Probe::default();
        let p = &raw.probe;
        let probe = Probe {
            interval_ms: self.int_in(
                "probe.interval_ms",
                p.interval_ms,
                defaults.interval_ms,
                50,
                60_000,
                "probe interval in milliseconds",
            ),
            down_after: self.int_in(
                "probe.down_after",
                p.down_after,
                defaults.down_after,
                1,
                100,
                "number of missed probes",
            ),
            up_after: self.int_in(
                "probe.up_after",
                p.up_after,
                defaults.up_after,
                1,
                100,
                "number of answered probes",
            ),
            port: self.int_in("probe.port", p.port, defaults.port, 1, 65535, "UDP port"),
        };

        if raw.sites.len() < 2 {
            self.error(
                "sites",
                format!(
                    "a network needs at least 2 sites, found {}; add [[sites]] tables",
                    raw.sites.len()
                ),
            );
        }
        let n_sites = raw.sites.len();
        let names: Vec<String> = raw.sites.iter().map(|s| s.name.clone()).collect();
        let mut sites: Vec<Option<Site>> = Vec::new();
        let mut first_at: HashMap<String, usize> = HashMap::new();
        for (i, rs) in raw.sites.into_iter().enumerate() {
            let base = format!("sites[{i}]");
            if let Some(&j) = first_at.get(&rs.name) {
                let (line, _) = self.loc.locate(&format!("sites[{j}].name"));
                self.error(
                    &format!("{base}.name"),
                    format!("duplicate site {:?} (first defined at line {line}); site names must be unique", rs.name),
                );
            } else {
                first_at.insert(rs.name.clone(), i);
            }
            sites.push(self.site(&base, rs, n_sites));
        }
        // Check what can be checked even when some sites are broken, so one run shows all.
        self.overlaps(&sites, tunnel_pool);
        let nat: Vec<bool> = sites
            .iter()
            .map(|s| s.as_ref().is_some_and(|s| s.behind_nat))
            .collect();
        let links = self.links(raw.links, &names, &nat, tunnel_pool);
        let sites: Vec<Site> = sites.into_iter().collect::<Option<_>>()?;
        let links = links?;
        let net = Network {
            name: raw.name,
            tunnel_pool: tunnel_pool?,
            mtu,
            persistent_keepalive,
            route_table,
            probe,
            sites,
            links,
        };
        self.reachability(&net);
        Some(net)
    }

    fn pool(&mut self, s: &str) -> Option<Ipv4Net> {
        match s.parse::<Ipv4Net>() {
            Ok(p) if p.prefix_len() > 30 => {
                self.error("tunnel_pool", format!("{s} is too small; use an IPv4 prefix of /30 or shorter, e.g. 10.255.0.0/16"));
                None
            }
            Ok(p) if p.trunc() != p => {
                self.error(
                    "tunnel_pool",
                    format!("{s} has host bits set; did you mean {}?", p.trunc()),
                );
                None
            }
            Ok(p) => Some(p),
            Err(_) => {
                self.error(
                    "tunnel_pool",
                    format!("{s:?} is not an IPv4 prefix; use e.g. 10.255.0.0/16"),
                );
                None
            }
        }
    }

    fn site(&mut self, base: &str, rs: RawSite, n_sites: usize) -> Option<Site> {
        let mut ok = true;
        if !valid_name(&rs.name, SITE_NAME_MAX) {
            self.error(
                &format!("{base}.name"),
                format!(
                    "{:?} is not a valid site name; use 1 to {SITE_NAME_MAX} lowercase letters, digits and '-', starting with a letter or digit (the tunnel interface `wg-<name>` must fit {IFNAME_MAX} characters)",
                    rs.name
                ),
            );
            ok = false;
        }
        let behind_nat = rs.behind_nat.unwrap_or(false);
        let highest_offset = n_sites.saturating_sub(1) as i64;
        let endpoint = match (rs.endpoint.as_deref(), behind_nat) {
            (Some(_), true) => {
                self.error(
                    &format!("{base}.endpoint"),
                    "a site behind NAT is never dialled, so it has no endpoint; remove `endpoint` or set `behind_nat = false`".into(),
                );
                ok = false;
                None
            }
            (None, false) => {
                self.error(
                    &format!("{base}.endpoint"),
                    "missing `endpoint` (where peers dial this site, e.g. \"198.51.100.1:51820\"); set `behind_nat = true` if peers cannot reach it".into(),
                );
                ok = false;
                None
            }
            (None, true) => None,
            (Some(s), false) => match s.parse::<Endpoint>() {
                Ok(e) if i64::from(e.port()) + highest_offset > 65535 => {
                    self.error(
                        &format!("{base}.endpoint"),
                        format!("port {} leaves no room for {n_sites} tunnels (port + position of the peer must stay below 65536); use a lower port", e.port()),
                    );
                    ok = false;
                    None
                }
                Ok(e) => Some(e),
                Err(msg) => {
                    self.error(&format!("{base}.endpoint"), msg);
                    ok = false;
                    None
                }
            },
        };
        let default_port = endpoint.as_ref().map_or(51820, Endpoint::port);
        let listen_port = match rs.listen_port {
            None => default_port,
            Some(p) if (1..=65535 - highest_offset).contains(&p) => p as u16,
            Some(p) => {
                self.error(
                    &format!("{base}.listen_port"),
                    format!("{p} is not a usable base port for {n_sites} sites; use 1 to {} (the tunnel to the peer at position p listens on listen_port + p)", 65535 - highest_offset),
                );
                ok = false;
                default_port
            }
        };
        let public_key = match rs.public_key.as_deref() {
            None => None,
            Some(s) => match s.parse::<PublicKey>() {
                Ok(k) => Some(k),
                Err(msg) => {
                    self.error(&format!("{base}.public_key"), msg);
                    ok = false;
                    None
                }
            },
        };
        let wan = self.wan(&format!("{base}.wan"), rs.wan);
        let lan = match rs.lan {
            Some(l) => self.lan(&format!("{base}.lan"), l),
            None => {
                self.error(
                    &format!("{base}.lan"),
                    "missing [sites.lan] table with at least `address`, e.g. address = \"10.1.0.1/24\"".into(),
                );
                None
            }
        };
        let lab_delay_ms = match rs.lab_delay_ms {
            None => 0.0,
            Some(d) if (0.0..=1000.0).contains(&d) => d,
            Some(d) => {
                self.error(
                    &format!("{base}.lab_delay_ms"),
                    format!("{d} is not a valid delay; use 0 to 1000 milliseconds"),
                );
                ok = false;
                0.0
            }
        };
        Some(Site {
            name: rs.name,
            endpoint,
            listen_port,
            behind_nat,
            public_key,
            wan: wan?,
            lan: lan?,
            lab_delay_ms,
        })
        .filter(|_| ok)
    }

    fn mac(&mut self, path: &str, mac: Option<String>) -> Result<Option<String>, ()> {
        match mac {
            None => Ok(None),
            Some(m) => {
                let parts: Vec<&str> = m.split(':').collect();
                if parts.len() == 6
                    && parts
                        .iter()
                        .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
                {
                    Ok(Some(m.to_ascii_lowercase()))
                } else {
                    self.error(
                        path,
                        format!(
                            "{m:?} is not a MAC address; use six hex pairs, e.g. 52:54:00:12:34:56"
                        ),
                    );
                    Err(())
                }
            }
        }
    }

    fn wan(&mut self, base: &str, raw: RawWan) -> Option<Wan> {
        let mac = self.mac(&format!("{base}.mac"), raw.mac).ok()?;
        let mode = match raw.mode.as_deref() {
            None | Some("dhcp") => WanMode::Dhcp,
            Some("static") => WanMode::Static,
            Some(other) => {
                self.error(
                    &format!("{base}.mode"),
                    format!("{other:?} is not a WAN mode; use \"dhcp\" or \"static\""),
                );
                return None;
            }
        };
        match mode {
            WanMode::Dhcp => {
                for (field, v) in [("address", &raw.address), ("gateway", &raw.gateway)] {
                    if v.is_some() {
                        self.error(
                            &format!("{base}.{field}"),
                            format!("`{field}` only applies to mode = \"static\"; remove it or set mode = \"static\""),
                        );
                    }
                }
                if raw.address.is_some() || raw.gateway.is_some() {
                    return None;
                }
                Some(Wan {
                    mode,
                    address: None,
                    gateway: None,
                    mac,
                })
            }
            WanMode::Static => {
                let Some(a) = raw.address.as_deref() else {
                    self.error(
                        &format!("{base}.address"),
                        "mode = \"static\" needs `address`, e.g. \"198.51.100.1/24\"".into(),
                    );
                    return None;
                };
                let address = self.host_address(&format!("{base}.address"), a)?;
                let Some(g) = raw.gateway.as_deref() else {
                    self.error(
                        &format!("{base}.gateway"),
                        "mode = \"static\" needs `gateway`, e.g. \"198.51.100.254\"".into(),
                    );
                    return None;
                };
                let gpath = format!("{base}.gateway");
                let gateway = match g.parse::<IpAddr>() {
                    Ok(gw) if !address.contains(&gw) => {
                        self.error(
                            &gpath,
                            format!(
                                "gateway {gw} is not inside {}; use an address of that subnet",
                                address.trunc()
                            ),
                        );
                        return None;
                    }
                    Ok(gw) if gw == address.addr() => {
                        self.error(&gpath, format!("gateway {gw} is the router's own address"));
                        return None;
                    }
                    Ok(gw) => gw,
                    Err(_) => {
                        self.error(
                            &gpath,
                            format!("{g:?} is not an IP address; use e.g. \"198.51.100.254\""),
                        );
                        return None;
                    }
                };
                Some(Wan {
                    mode,
                    address: Some(address),
                    gateway: Some(gateway),
                    mac,
                })
            }
        }
    }

    /// An interface address with prefix length: not the network, broadcast or (IPv6) the
    /// subnet-router anycast address of its prefix.
    fn host_address(&mut self, path: &str, s: &str) -> Option<IpNet> {
        let net = match s.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => {
                let why = match s.split_once('/') {
                    None if s.parse::<IpAddr>().is_ok() => "has no prefix length",
                    Some((a, _)) if a.parse::<Ipv4Addr>().is_ok() => {
                        "has an invalid prefix length (IPv4: 0 to 32)"
                    }
                    Some((a, _)) if a.parse::<Ipv6Addr>().is_ok() => {
                        "has an invalid prefix length (IPv6: 0 to 128)"
                    }
                    _ => "is not an address with prefix length",
                };
                self.error(
                    path,
                    format!("{s:?} {why}; use e.g. \"10.1.0.1/24\" or \"fd00:1::1/64\""),
                );
                return None;
            }
        };
        match net {
            IpNet::V4(n) if n.prefix_len() < 31 && n.addr() == n.network() => {
                self.error(
                    path,
                    format!(
                        "{s} is the network address of {}; use a host address such as {}/{}",
                        n.trunc(),
                        n.hosts().next().unwrap_or(n.addr()),
                        n.prefix_len()
                    ),
                );
                None
            }
            IpNet::V4(n) if n.prefix_len() < 31 && n.addr() == n.broadcast() => {
                self.error(
                    path,
                    format!(
                        "{s} is the broadcast address of {}; use a host address",
                        n.trunc()
                    ),
                );
                None
            }
            IpNet::V6(n) if n.prefix_len() < 127 && n.addr() == n.network() => {
                self.error(
                    path,
                    format!("{s} is the all-zero host of {}, the subnet-router anycast address (RFC 4291); use another host, e.g. {}1/{}", n.trunc(), n.network(), n.prefix_len()),
                );
                None
            }
            _ => Some(net),
        }
    }

    fn prefix(&mut self, path: &str, s: &str) -> Option<IpNet> {
        match s.parse::<IpNet>() {
            Ok(p) if p.trunc() != p => {
                self.error(
                    path,
                    format!("{s} has host bits set; did you mean {}?", p.trunc()),
                );
                None
            }
            Ok(p) => Some(p),
            Err(_) => {
                self.error(
                    path,
                    format!("{s:?} is not a prefix; use e.g. \"10.1.0.0/24\" or \"fd00:1::/64\""),
                );
                None
            }
        }
    }

    fn lan(&mut self, base: &str, raw: RawLan) -> Option<Lan> {
        let mac = self.mac(&format!("{base}.mac"), raw.mac);
        let address = self.host_address(&format!("{base}.address"), &raw.address);
        let address6 = match raw.address6.as_deref() {
            None => Ok(None),
            Some(s) => match self.host_address(&format!("{base}.address6"), s) {
                Some(IpNet::V6(n)) => Ok(Some(IpNet::V6(n))),
                Some(_) => {
                    self.error(
                        &format!("{base}.address6"),
                        format!("{s} is not an IPv6 address; put IPv4 in `address`"),
                    );
                    Err(())
                }
                None => Err(()),
            },
        };
        let prefixes = match raw.prefixes {
            None => {
                let mut v: Vec<IpNet> = address.iter().map(IpNet::trunc).collect();
                if let Ok(Some(a6)) = &address6 {
                    v.push(a6.trunc());
                }
                Some(v)
            }
            Some(list) => {
                if list.is_empty() {
                    self.error(&format!("{base}.prefixes"), "no prefixes; list at least one, or remove the key to announce the LAN subnet".into());
                }
                let mut out = Vec::new();
                let mut all = !list.is_empty();
                for (i, s) in list.iter().enumerate() {
                    let path = format!("{base}.prefixes[{i}]");
                    match self.prefix(&path, s) {
                        Some(p) if out.contains(&p) => {
                            self.error(&path, format!("{p} is listed twice"))
                        }
                        Some(p) => out.push(p),
                        None => all = false,
                    }
                }
                all.then_some(out)
            }
        };
        if let (Some(a), Some(ps)) = (&address, &prefixes) {
            if !ps.iter().any(|p| p.contains(&a.addr())) {
                self.warn(
                    &format!("{base}.prefixes"),
                    format!(
                        "the LAN address {} is in none of the announced prefixes",
                        a.addr()
                    ),
                );
            }
        }
        Some(Lan {
            address: address?,
            address6: address6.ok()?,
            prefixes: prefixes?,
            mac: mac.ok()?,
        })
    }

    /// LAN prefixes must not overlap between sites, nor with the tunnel pool.
    fn overlaps(&mut self, sites: &[Option<Site>], pool: Option<Ipv4Net>) {
        let sites: Vec<(usize, &Site)> = sites
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
            .collect();
        for (k, &(i, s)) in sites.iter().enumerate() {
            // Two sites cannot share a WAN address or an endpoint.
            for &(j, t) in sites.iter().take(k) {
                if let (Some(a), Some(b)) = (s.wan.address, t.wan.address) {
                    if a.addr() == b.addr() {
                        self.error(
                            &format!("sites[{i}].wan.address"),
                            format!("{} is also the WAN address of site {:?} (sites[{j}].wan.address); every router needs its own", a.addr(), t.name),
                        );
                    }
                }
                if let (Some(a), Some(b)) = (&s.endpoint, &t.endpoint) {
                    if a == b {
                        self.error(
                            &format!("sites[{i}].endpoint"),
                            format!("{a} is also the endpoint of site {:?} (sites[{j}].endpoint); peers could not tell the two apart", t.name),
                        );
                    }
                }
            }
            for (pi, p) in s.lan.prefixes.iter().enumerate() {
                let path = format!("sites[{i}].lan.prefixes[{pi}]");
                // A LAN inside a WAN subnet would route the WAN into the tunnels.
                for &(_, t) in &sites {
                    if let Some(wan) = t.wan.address {
                        let subnet = wan.trunc();
                        if p.contains(&subnet) || subnet.contains(p) {
                            self.error(
                                &path,
                                format!("{p} overlaps the WAN subnet {subnet} of site {:?}; a LAN prefix must not cover any router's WAN", t.name),
                            );
                        }
                    }
                }
                if let (Some(pool), IpNet::V4(p4)) = (pool, p) {
                    if pool.contains(p4) || p4.contains(&pool) {
                        self.error(&path, format!("{p} overlaps the tunnel pool {pool}; pick another prefix or set `tunnel_pool`"));
                    }
                }
                for &(j, t) in sites.iter().take(k) {
                    for (qi, q) in t.lan.prefixes.iter().enumerate() {
                        if p.contains(q) || q.contains(p) {
                            self.error(
                                &path,
                                format!(
                                    "{p} of site {:?} overlaps {q} of site {:?} (sites[{j}].lan.prefixes[{qi}]); each LAN prefix must belong to one site",
                                    s.name, t.name
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    fn links(
        &mut self,
        raw: Option<Vec<Vec<String>>>,
        names: &[String],
        nat: &[bool],
        pool: Option<Ipv4Net>,
    ) -> Option<Vec<Link>> {
        let n = names.len();
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        match raw {
            None => {
                for b in 0..n {
                    for a in 0..b {
                        pairs.push((a, b));
                    }
                }
            }
            Some(list) => {
                let mut ok = true;
                for (i, pair) in list.iter().enumerate() {
                    let path = format!("links[{i}]");
                    let [x, y] = pair.as_slice() else {
                        self.error(&path, format!("a link is a pair of site names, e.g. [\"aws\", \"gcp\"]; found {} names", pair.len()));
                        ok = false;
                        continue;
                    };
                    let find = |name: &str| names.iter().position(|s| s == name);
                    let (Some(a), Some(b)) = (find(x), find(y)) else {
                        let unknown = if find(x).is_none() { x } else { y };
                        self.error(
                            &path,
                            format!("unknown site {unknown:?}; sites are {}", names.join(", ")),
                        );
                        ok = false;
                        continue;
                    };
                    if a == b {
                        self.error(
                            &path,
                            format!("a link from {x:?} to itself; name two different sites"),
                        );
                        ok = false;
                        continue;
                    }
                    let key = (a.min(b), a.max(b));
                    if pairs.contains(&key) {
                        self.error(&path, format!("the link {x:?}-{y:?} is listed twice"));
                        ok = false;
                        continue;
                    }
                    pairs.push(key);
                }
                if !ok {
                    return None;
                }
                pairs.sort_by_key(|&(a, b)| (b, a));
            }
        }
        let pool = pool?;
        let mut links = Vec::new();
        for (a, b) in pairs {
            if nat[a] && nat[b] {
                self.error(
                    "links",
                    format!("sites {:?} and {:?} are both behind NAT, so neither can dial the other; link them through a third site", names[a], names[b]),
                );
                continue;
            }
            let slot = link_slot(a, b);
            let slots = 1u64 << (31 - pool.prefix_len());
            if slot >= slots {
                let needed = link_slot(n.saturating_sub(2), n.saturating_sub(1)) + 1;
                self.error(
                    "tunnel_pool",
                    format!("{pool} holds {slots} tunnel /31s but these {n} sites need {needed}; use a larger pool, e.g. /{}", 31 - needed.next_power_of_two().trailing_zeros()),
                );
                return None;
            }
            let base = u32::from(pool.network()) + 2 * slot as u32;
            links.push(Link {
                a,
                b,
                slot: slot as u32,
                addr_a: Ipv4Addr::from(base),
                addr_b: Ipv4Addr::from(base + 1),
            });
        }
        Some(links)
    }

    /// Warn about site pairs that can reach each other neither directly nor by one transit hop.
    fn reachability(&mut self, net: &Network) {
        for t in 0..net.sites.len() {
            for s in 0..t {
                if net.link(s, t).is_none() && net.transits(s, t).is_empty() {
                    self.warn(
                        "links",
                        format!("sites {:?} and {:?} have no tunnel and no common neighbour, so their LANs cannot reach each other", net.sites[s].name, net.sites[t].name),
                    );
                }
            }
        }
    }
}

/// Whether `s` is a valid network name (what `name =` accepts).
pub fn valid_network_name(s: &str) -> bool {
    valid_name(s, usize::MAX)
}

/// Names: lowercase ASCII letters, digits and '-', starting with a letter or digit.
fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}
