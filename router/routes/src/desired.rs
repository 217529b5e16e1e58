//! What the kernel should hold: computed from a [`SiteConfig`] and the set of tunnels that are
//! down. Pure; no sockets.
//!
//! ## The loop-free transit rule
//!
//! Backup routes send a prefix's traffic to a transit site, which forwards it over its own
//! direct tunnel. A transit site must never forward it again over a second transit hop (two
//! transit sites could bounce a packet between each other). So, for each address family that
//! has remote prefixes:
//!
//! - every direct route also goes into [`DIRECT_TABLE`](crate::DIRECT_TABLE) (51898);
//! - that table also holds `unreachable PREFIX metric 10000` for every remote LAN prefix;
//! - for every tunnel interface X: `ip rule add iif X lookup 51898 pref 10890 proto 83`.
//!
//! A packet that ARRIVES on a tunnel and is for a remote LAN leaves by that LAN's direct tunnel,
//! or, if that tunnel is down (its direct route withdrawn), hits the `unreachable` route, which
//! ends the rule walk (ICMP unreachable back to the sender). Packets for this site's own LAN or
//! for anything else do not match in 51898 and continue to the next rules (main) as usual.
//! Locally originated and LAN-originated traffic never matches the `iif` rules and uses the
//! route table with its backups.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use sitelink_config::site::{RouteKind, SiteConfig};

use crate::{RoutesError, DIRECT_TABLE, METRIC_UNREACHABLE, RULE_PREF_TABLE, RULE_PREF_TRANSIT};

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// The complete desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Tunnel interfaces to manage: up, MTU, addresses.
    pub links: Vec<DesiredLink>,
    /// Routes, in all tables.
    pub routes: Vec<DesiredRoute>,
    /// Policy rules.
    pub rules: Vec<DesiredRule>,
    /// Set `net.ipv4.ip_forward=1` (and IPv6 forwarding when v6 is in use) and
    /// `rp_filter=2` on every managed link.
    pub forwarding: bool,
    /// Problems found while computing the state (e.g. host bits masked): logged once each.
    pub warnings: Vec<String>,
}

/// A tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLink {
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<DesiredAddr>,
}

/// An interface address (e.g. 10.255.0.0/31). No broadcast address is set on /31 and /32.
pub type DesiredAddr = IpNet;

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `dev IFNAME` (a point-to-point tunnel: no gateway).
    Dev(String),
    /// `unreachable`: ends the lookup with ICMP unreachable.
    Unreachable,
}

/// A route. Identity in the kernel (and for diffing) is (table, prefix, metric).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredRoute {
    pub table: u32,
    pub prefix: IpNet,
    pub metric: u32,
    pub target: Target,
}

/// A policy rule: `ip [-6] rule add [iif IIF] lookup TABLE pref PRIORITY proto 83`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredRule {
    pub v6: bool,
    pub priority: u32,
    pub iif: Option<String>,
    pub table: u32,
}

impl Desired {
    /// The desired state of a site whose tunnels in `down` are down (their routes withdrawn),
    /// using [`DIRECT_TABLE`] for the loop-free rule.
    pub fn from_site(cfg: &SiteConfig, down: &BTreeSet<String>) -> Result<Desired, RoutesError> {
        Self::from_site_with(cfg, down, DIRECT_TABLE)
    }

    /// As [`Desired::from_site`] with an explicit direct table.
    pub fn from_site_with(
        cfg: &SiteConfig,
        down: &BTreeSet<String>,
        direct_table: u32,
    ) -> Result<Desired, RoutesError> {
        let table = cfg.route_table;
        for (what, t) in [("route_table", table), ("direct table", direct_table)] {
            if t == 0 || t == 255 {
                return Err(RoutesError::Invalid(format!(
                    "{what} {t} is reserved (0 = unspec, 255 = local); use main (254) or 1-252, 256-4294967295"
                )));
            }
        }
        if table == direct_table {
            return Err(RoutesError::Invalid(format!(
                "route_table {table} is also the direct table used for loop-free transit; pick another route_table"
            )));
        }
        let mut warnings = Vec::new();
        let links = cfg
            .interfaces
            .iter()
            .map(|i| DesiredLink {
                name: i.name.clone(),
                mtu: u32::from(i.mtu),
                addresses: i.addresses.clone(),
            })
            .collect::<Vec<_>>();

        let mut routes: BTreeMap<(u32, IpNet, u32), Target> = BTreeMap::new();
        let mut prefixes = BTreeSet::new();
        let add = |routes: &mut BTreeMap<_, _>, warnings: &mut Vec<String>, r: DesiredRoute| {
            let key = (r.table, r.prefix, r.metric);
            match routes.get(&key) {
                Some(t) if *t != r.target => warnings.push(format!(
                    "two routes to {} with metric {} in table {}; keeping the one via {:?}, ignoring {:?}",
                    r.prefix, r.metric, r.table, t, r.target
                )),
                Some(_) => {}
                None => {
                    routes.insert(key, r.target);
                }
            }
        };
        for r in &cfg.routes {
            let prefix = r.prefix.trunc();
            if prefix != r.prefix {
                warnings.push(format!(
                    "route to {} (site {}) has host bits set; installing {} instead",
                    r.prefix, r.site, prefix
                ));
            }
            prefixes.insert(prefix);
            if down.contains(&r.via) {
                continue;
            }
            let dev = Target::Dev(r.via.clone());
            add(
                &mut routes,
                &mut warnings,
                DesiredRoute {
                    table,
                    prefix,
                    metric: r.metric,
                    target: dev.clone(),
                },
            );
            if r.kind == RouteKind::Direct {
                add(
                    &mut routes,
                    &mut warnings,
                    DesiredRoute {
                        table: direct_table,
                        prefix,
                        metric: r.metric,
                        target: dev,
                    },
                );
            }
        }
        for p in &prefixes {
            add(
                &mut routes,
                &mut warnings,
                DesiredRoute {
                    table: direct_table,
                    prefix: *p,
                    metric: METRIC_UNREACHABLE,
                    target: Target::Unreachable,
                },
            );
        }
        let routes = routes
            .into_iter()
            .map(|((table, prefix, metric), target)| DesiredRoute {
                table,
                prefix,
                metric,
                target,
            })
            .collect();

        let mut rules = Vec::new();
        for v6 in [false, true] {
            if !prefixes.iter().any(|p| matches!(p, IpNet::V6(_)) == v6) {
                continue;
            }
            for l in &links {
                rules.push(DesiredRule {
                    v6,
                    priority: RULE_PREF_TRANSIT,
                    iif: Some(l.name.clone()),
                    table: direct_table,
                });
            }
            if table != TABLE_MAIN {
                rules.push(DesiredRule {
                    v6,
                    priority: RULE_PREF_TABLE,
                    iif: None,
                    table,
                });
            }
        }
        rules.sort();
        Ok(Desired {
            links,
            routes,
            rules,
            forwarding: true,
            warnings,
        })
    }

    /// Whether any part of this state is IPv6.
    pub fn uses_v6(&self) -> bool {
        self.routes.iter().any(|r| matches!(r.prefix, IpNet::V6(_)))
            || self
                .links
                .iter()
                .any(|l| l.addresses.iter().any(|a| matches!(a, IpNet::V6(_))))
    }

    /// The route each prefix of `table` uses (lowest metric), with its target.
    pub fn active_routes(&self, table: u32) -> BTreeMap<IpNet, (u32, Target)> {
        let mut out: BTreeMap<IpNet, (u32, Target)> = BTreeMap::new();
        for r in self.routes.iter().filter(|r| r.table == table) {
            match out.get(&r.prefix) {
                Some((m, _)) if *m <= r.metric => {}
                _ => {
                    out.insert(r.prefix, (r.metric, r.target.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn aws() -> SiteConfig {
        let text = include_str!("../../../configs/golden/seed-mesh/aws.toml");
        match SiteConfig::parse(text, "aws.toml") {
            Ok(c) => c,
            Err(e) => panic!("golden aws.toml does not parse: {e:?}"),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn aws_all_up() {
        let d = Desired::from_site(&aws(), &BTreeSet::new()).expect("desired");
        assert_eq!(d.links.len(), 3);
        assert_eq!(d.links[0].name, "wg-gcp");
        assert_eq!(d.links[0].mtu, 1420);
        assert_eq!(d.links[0].addresses, vec![net("10.255.0.0/31")]);
        // 9 routes in main, 3 direct copies, 3 unreachable fallbacks.
        let main: Vec<_> = d.routes.iter().filter(|r| r.table == 254).collect();
        assert_eq!(main.len(), 9);
        let direct: Vec<_> = d
            .routes
            .iter()
            .filter(|r| r.table == DIRECT_TABLE)
            .collect();
        assert_eq!(direct.len(), 6);
        assert!(direct.contains(&&DesiredRoute {
            table: DIRECT_TABLE,
            prefix: net("10.2.0.0/24"),
            metric: 100,
            target: Target::Dev("wg-gcp".into()),
        }));
        assert!(direct.contains(&&DesiredRoute {
            table: DIRECT_TABLE,
            prefix: net("10.2.0.0/24"),
            metric: METRIC_UNREACHABLE,
            target: Target::Unreachable,
        }));
        // Only v4 prefixes: one iif rule per tunnel, no table rule (main).
        assert_eq!(d.rules.len(), 3);
        assert!(d.rules.iter().all(|r| !r.v6 && r.table == DIRECT_TABLE));
        let active = d.active_routes(254);
        assert_eq!(
            active[&net("10.3.0.0/24")],
            (100, Target::Dev("wg-azure".into()))
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn down_tunnel_withdraws_its_routes_and_backup_takes_over() {
        let down = BTreeSet::from(["wg-gcp".to_string()]);
        let d = Desired::from_site(&aws(), &down).expect("desired");
        assert!(d
            .routes
            .iter()
            .all(|r| r.target != Target::Dev("wg-gcp".into())));
        let active = d.active_routes(254);
        assert_eq!(
            active[&net("10.2.0.0/24")],
            (200, Target::Dev("wg-azure".into()))
        );
        // The direct table keeps the unreachable fallback for gcp's prefix.
        assert_eq!(
            d.active_routes(DIRECT_TABLE)[&net("10.2.0.0/24")],
            (METRIC_UNREACHABLE, Target::Unreachable)
        );
    }

    #[test]
    fn custom_table_gets_a_rule_and_v6_is_separate() {
        let mut cfg = aws();
        cfg.route_table = 51820;
        cfg.routes.push(sitelink_config::site::Route {
            prefix: net("::/0"),
            site: "gcp".into(),
            via: "wg-gcp".into(),
            metric: 100,
            kind: RouteKind::Direct,
        });
        cfg.routes.push(sitelink_config::site::Route {
            prefix: net("10.3.0.7/16"),
            site: "azure".into(),
            via: "wg-azure".into(),
            metric: 300,
            kind: RouteKind::Transit,
        });
        let d = Desired::from_site(&cfg, &BTreeSet::new()).expect("desired");
        assert!(d.routes.iter().any(|r| r.table == 51820
            && r.prefix == net("::/0")
            && r.target == Target::Dev("wg-gcp".into())));
        assert!(d
            .routes
            .iter()
            .any(|r| r.prefix == net("10.3.0.0/16") && r.metric == 300));
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("10.3.0.7/16"));
        assert!(d.rules.contains(&DesiredRule {
            v6: false,
            priority: RULE_PREF_TABLE,
            iif: None,
            table: 51820
        }));
        assert!(d.rules.contains(&DesiredRule {
            v6: true,
            priority: RULE_PREF_TABLE,
            iif: None,
            table: 51820
        }));
        assert_eq!(d.rules.len(), 8);
        assert!(d.uses_v6());
    }

    #[test]
    fn table_equal_to_direct_table_is_refused() {
        let mut cfg = aws();
        cfg.route_table = DIRECT_TABLE;
        let e = Desired::from_site(&cfg, &BTreeSet::new()).expect_err("must refuse");
        assert!(e.to_string().contains("direct table"), "{e}");
        cfg.route_table = 255;
        assert!(Desired::from_site(&cfg, &BTreeSet::new()).is_err());
    }
}
