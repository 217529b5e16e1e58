//! The site config: everything one router runs, as `sitelink render` prints it and the device
//! reads it (TOML). Built from a [`Network`] by [`render`]; parsed on the device by
//! [`SiteConfig::parse`].

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Locator, Severity};
use crate::endpoint::Endpoint;
use crate::keys::PublicKey;
use crate::network::{Lan, Network, Probe, Wan, IFNAME_MAX, METRIC_DIRECT, METRIC_TRANSIT};

/// Version of the site config format.
pub const FORMAT: u32 = 1;

/// One router's complete configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Format version; the device refuses versions it does not know.
    pub format: u32,
    pub network: String,
    pub site: String,
    /// This router's public key, when known at render time (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKey>,
    /// Routing table the routes go in (254 = main).
    pub route_table: u32,
    pub wan: Wan,
    pub lan: Lan,
    pub probe: Probe,
    /// One WireGuard interface per peer.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Remote LAN prefixes: for each, a direct route and transit backups with higher metrics.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A WireGuard interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub listen_port: u16,
    pub mtu: u16,
    /// Tunnel addresses (a /31 for sitelink links).
    pub addresses: Vec<IpNet>,
    /// The peer's tunnel address: where health probes go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<Ipv4Addr>,
    /// Private key file, relative to the config file; default the site key (`site.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<String>,
    /// Firewall mark on outgoing UDP; 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fwmark: u32,
    pub peers: Vec<Peer>,
}

/// A WireGuard peer of an interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's site, for sitelink links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub public_key: PublicKey,
    /// Where to dial the peer; absent when the peer is behind NAT (it dials us).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_endpoint",
        deserialize_with = "de_endpoint"
    )]
    pub endpoint: Option<Endpoint>,
    /// Seconds between keepalives; 0 = off.
    #[serde(default, skip_serializing_if = "is_zero16")]
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
    /// Preshared key file, relative to the config file (imported wg-quick peers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_file: Option<String>,
}

/// Which path a route is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Direct,
    Transit,
}

/// A route to a remote LAN prefix over a tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: IpNet,
    /// The site that owns the prefix.
    pub site: String,
    /// Tunnel interface.
    pub via: String,
    pub metric: u32,
    pub kind: RouteKind,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn is_zero16(v: &u16) -> bool {
    *v == 0
}

fn ser_endpoint<S: serde::Serializer>(e: &Option<Endpoint>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.collect_str(e),
        None => s.serialize_none(),
    }
}

fn de_endpoint<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Endpoint>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Why a site could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no site {site:?} in network {network:?}; sites are {known}")]
    UnknownSite {
        site: String,
        network: String,
        known: String,
    },
    #[error("no public key for site {site:?}: {why}")]
    MissingKey { site: String, why: String },
}

/// Build the config of site `name`. `public_key(site)` supplies each site's public key (from a
/// keystore or the network file).
pub fn render(
    net: &Network,
    name: &str,
    mut public_key: impl FnMut(&str) -> Result<PublicKey, String>,
) -> Result<SiteConfig, RenderError> {
    let s = net.position(name).ok_or_else(|| RenderError::UnknownSite {
        site: name.to_owned(),
        network: net.name.clone(),
        known: net
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let me = &net.sites[s];
    let mut key_of = |site: &str| {
        public_key(site).map_err(|why| RenderError::MissingKey {
            site: site.to_owned(),
            why,
        })
    };
    let any = [IpNet::V4(Ipv4Net::default()), IpNet::V6(Default::default())];

    let mut interfaces = Vec::new();
    for p in net.peers_of(s) {
        let peer = &net.sites[p];
        let Some(link) = net.link(s, p) else { continue };
        let (mine, theirs) = if link.a == s {
            (link.addr_a, link.addr_b)
        } else {
            (link.addr_b, link.addr_a)
        };
        // The port of a tunnel is the base port plus the position of the site at the other end.
        let endpoint = peer
            .endpoint
            .as_ref()
            .filter(|_| !peer.behind_nat)
            .map(|e| e.with_port(e.port() + s as u16));
        interfaces.push(Interface {
            name: peer.ifname(),
            listen_port: me.listen_port + p as u16,
            mtu: net.mtu,
            addresses: vec![IpNet::V4(Ipv4Net::new(mine, 31).unwrap_or_default())],
            peer_address: Some(theirs),
            private_key_file: None,
            fwmark: 0,
            peers: vec![Peer {
                site: Some(peer.name.clone()),
                public_key: key_of(&peer.name)?,
                endpoint,
                persistent_keepalive: if me.behind_nat {
                    net.persistent_keepalive
                } else {
                    0
                },
                allowed_ips: any.to_vec(),
                preshared_key_file: None,
            }],
        });
    }

    let mut routes = Vec::new();
    for (t, target) in net.sites.iter().enumerate().filter(|&(t, _)| t != s) {
        for prefix in &target.lan.prefixes {
            if net.link(s, t).is_some() {
                routes.push(Route {
                    prefix: *prefix,
                    site: target.name.clone(),
                    via: target.ifname(),
                    metric: METRIC_DIRECT,
                    kind: RouteKind::Direct,
                });
            }
            for (rank, x) in net.transits(s, t).into_iter().enumerate() {
                routes.push(Route {
                    prefix: *prefix,
                    site: target.name.clone(),
                    via: net.sites[x].ifname(),
                    metric: METRIC_TRANSIT + rank as u32,
                    kind: RouteKind::Transit,
                });
            }
        }
    }

    Ok(SiteConfig {
        format: FORMAT,
        network: net.name.clone(),
        site: me.name.clone(),
        public_key: key_of(&me.name).ok(),
        route_table: net.route_table,
        wan: me.wan.clone(),
        lan: me.lan.clone(),
        probe: net.probe.clone(),
        interfaces,
        routes,
    })
}

impl SiteConfig {
    /// The config as the device reads it, with a header saying where it came from.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"));
        format!(
            "# sitelink site config for {:?} in network {:?}.\n# Written by `sitelink render`; the router reads this file. Edit the network file instead.\n{body}",
            self.site, self.network
        )
    }

    /// Parse and check a site config. `file` is used in diagnostics only.
    pub fn parse(text: &str, file: &str) -> Result<SiteConfig, Vec<Diagnostic>> {
        let loc = Locator::new(text);
        let cfg: SiteConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, col) = loc.line_col(span.start);
            vec![Diagnostic {
                severity: Severity::Error,
                file: file.to_owned(),
                line,
                col,
                path: loc.path_at(&span),
                message: e.message().trim_end().to_owned(),
            }]
        })?;
        let mut errs = Vec::new();
        let mut err =
            |path: String, msg: String| errs.push(loc.diag(file, Severity::Error, &path, msg));
        if cfg.format != FORMAT {
            err("format".into(), format!("format {} is not supported by this router; it reads format {FORMAT} (render the config with a matching `sitelink`)", cfg.format));
        }
        for (i, iface) in cfg.interfaces.iter().enumerate() {
            if iface.name.is_empty()
                || iface.name.len() > IFNAME_MAX
                || iface.name.contains(['/', ' '])
            {
                err(format!("interfaces[{i}].name"), format!("{:?} is not an interface name (1 to {IFNAME_MAX} characters, no '/' or spaces)", iface.name));
            }
            if cfg.interfaces[..i].iter().any(|o| o.name == iface.name) {
                err(
                    format!("interfaces[{i}].name"),
                    format!("interface {:?} is defined twice", iface.name),
                );
            }
        }
        for (i, r) in cfg.routes.iter().enumerate() {
            if !cfg.interfaces.iter().any(|f| f.name == r.via) {
                err(
                    format!("routes[{i}].via"),
                    format!(
                        "route to {} goes via {:?}, which is not one of the interfaces",
                        r.prefix, r.via
                    ),
                );
            }
        }
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }
}
