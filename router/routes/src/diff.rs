//! Kernel state vs desired state → the minimal list of operations. Pure: the kernel state is a
//! plain value (filled from netlink dumps by the reconciler, or by hand in tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;

use crate::desired::{Desired, DesiredRoute, DesiredRule, Target};
use crate::{RoutesError, RTPROT_SITELINK};

/// A link as the kernel reports it (`ip -d link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("tun", "dummy", "wireguard", "veth", ...); `None` for plain devices.
    pub kind: Option<String>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// An address as the kernel reports it (`ip addr show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAddr {
    pub index: u32,
    /// Address with its prefix length.
    pub addr: IpNet,
    /// `IFA_PROTO` (0 when unset).
    pub protocol: u8,
    /// Whether a broadcast address is set.
    pub broadcast: bool,
}

/// Where a kernel route points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelTarget {
    /// `dev` by interface index.
    Dev(u32),
    Unreachable,
    /// Anything else (gateway routes, blackhole, multipath, ...), described.
    Other(String),
}

/// A route as the kernel reports it (`ip route show table all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub table: u32,
    pub prefix: IpNet,
    pub metric: u32,
    pub protocol: u8,
    pub target: KernelTarget,
}

/// A policy rule as the kernel reports it (`ip rule show`), only `lookup` rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub rule: DesiredRule,
    pub protocol: u8,
}

/// Everything the diff needs to know about the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: Vec<KernelLink>,
    pub addrs: Vec<KernelAddr>,
    pub routes: Vec<KernelRoute>,
    pub rules: Vec<KernelRule>,
}

/// A route operation's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOp {
    pub table: u32,
    pub prefix: IpNet,
    pub metric: u32,
    pub target: Target,
    /// Interface index for `Target::Dev`.
    pub oif: Option<u32>,
}

/// One netlink operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ip link set dev NAME [mtu MTU] up`
    SetLink { index: u32, name: String, mtu: u32 },
    /// `ip addr add ADDR dev NAME proto 83` (no broadcast on /31, /32)
    AddAddr {
        index: u32,
        name: String,
        addr: IpNet,
    },
    /// `ip addr del ADDR dev NAME`
    DelAddr {
        index: u32,
        name: String,
        addr: IpNet,
    },
    /// `ip route add ... proto 83` (exclusive create)
    AddRoute(RouteOp),
    /// `ip route replace ... proto 83`
    ReplaceRoute(RouteOp),
    /// `ip route del ... proto 83`
    DelRoute(RouteOp),
    /// `ip rule add ... proto 83`
    AddRule(DesiredRule),
    /// `ip rule del ... proto 83`
    DelRule(DesiredRule),
}

fn fam(v6: bool) -> &'static str {
    if v6 {
        "ip -6"
    } else {
        "ip"
    }
}

fn route_cmd(verb: &str, r: &RouteOp) -> String {
    let v6 = matches!(r.prefix, IpNet::V6(_));
    let what = match &r.target {
        Target::Dev(d) => format!("{} dev {d}", r.prefix),
        Target::Unreachable => format!("unreachable {}", r.prefix),
    };
    format!(
        "{} route {verb} {what} metric {} table {} proto {RTPROT_SITELINK}",
        fam(v6),
        r.metric,
        r.table
    )
}

fn rule_cmd(verb: &str, r: &DesiredRule) -> String {
    let iif = r
        .iif
        .as_ref()
        .map(|i| format!("iif {i} "))
        .unwrap_or_default();
    format!(
        "{} rule {verb} {iif}lookup {} pref {} proto {RTPROT_SITELINK}",
        fam(r.v6),
        r.table,
        r.priority
    )
}

impl fmt::Display for Op {
    /// The operation as its `ip` command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetLink { name, mtu, .. } => write!(f, "ip link set dev {name} mtu {mtu} up"),
            Op::AddAddr { name, addr, .. } => write!(
                f,
                "{} addr add {addr} dev {name} proto {RTPROT_SITELINK}",
                fam(matches!(addr, IpNet::V6(_)))
            ),
            Op::DelAddr { name, addr, .. } => write!(
                f,
                "{} addr del {addr} dev {name}",
                fam(matches!(addr, IpNet::V6(_)))
            ),
            Op::AddRoute(r) => f.write_str(&route_cmd("add", r)),
            Op::ReplaceRoute(r) => f.write_str(&route_cmd("replace", r)),
            Op::DelRoute(r) => f.write_str(&route_cmd("del", r)),
            Op::AddRule(r) => f.write_str(&rule_cmd("add", r)),
            Op::DelRule(r) => f.write_str(&rule_cmd("del", r)),
        }
    }
}

/// A route to one of our prefixes that another program installed in one of our tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conflict {
    pub table: u32,
    pub prefix: IpNet,
    /// The other route's `rtm_protocol`.
    pub protocol: u8,
    /// The other route's metric.
    pub metric: u32,
    /// Whether one of our routes has the same metric and therefore could not be installed.
    pub blocks_ours: bool,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route to {} in table {} (proto {}, metric {}) was installed by another program; left alone{}",
            self.prefix,
            self.table,
            self.protocol,
            self.metric,
            if self.blocks_ours {
                "; our route with the same metric is not installed"
            } else {
                ""
            }
        )
    }
}

/// What [`plan`] needs besides the two states.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Link kinds we accept as tunnels.
    pub accepted_kinds: Vec<String>,
    /// IPv6 is enabled on the host.
    pub v6_enabled: bool,
    /// Links on which IPv6 is disabled (only matters when `v6_enabled`).
    pub v6_disabled_links: BTreeSet<String>,
}

/// The result of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operations in execution order.
    pub ops: Vec<Op>,
    pub conflicts: Vec<Conflict>,
    /// IPv6 routes, rules and addresses skipped because IPv6 is disabled.
    pub skipped_v6: usize,
}

fn is_v6(n: &IpNet) -> bool {
    matches!(n, IpNet::V6(_))
}

/// Compute the minimal operations that take `kernel` to `desired`. Fails (before any change)
/// when a managed interface is missing or is not a tunnel.
pub fn plan(
    desired: &Desired,
    kernel: &KernelState,
    opts: &PlanOptions,
) -> Result<Plan, RoutesError> {
    let by_name: BTreeMap<&str, &KernelLink> =
        kernel.links.iter().map(|l| (l.name.as_str(), l)).collect();
    let name_of: BTreeMap<u32, &str> = kernel
        .links
        .iter()
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    // Preflight: every managed link exists and is ours to manage.
    for l in &desired.links {
        match by_name.get(l.name.as_str()) {
            None => {
                return Err(RoutesError::MissingInterface {
                    name: l.name.clone(),
                })
            }
            Some(k) => {
                let kind = k.kind.as_deref().unwrap_or("");
                if !opts.accepted_kinds.iter().any(|a| a == kind) {
                    return Err(RoutesError::ForeignInterface {
                        name: l.name.clone(),
                        kind: if kind.is_empty() {
                            "plain (hardware or kind-less)".into()
                        } else {
                            kind.into()
                        },
                        accepted: opts.accepted_kinds.join(", "),
                    });
                }
            }
        }
    }
    for r in &desired.routes {
        if let Target::Dev(d) = &r.target {
            if !by_name.contains_key(d.as_str()) {
                return Err(RoutesError::MissingInterface { name: d.clone() });
            }
        }
    }
    let v6_ok = |dev: Option<&str>| {
        opts.v6_enabled && dev.is_none_or(|d| !opts.v6_disabled_links.contains(d))
    };

    let mut plan = Plan::default();
    // Links.
    for l in &desired.links {
        let k = by_name[l.name.as_str()];
        if k.mtu != l.mtu || !k.up {
            plan.ops.push(Op::SetLink {
                index: k.index,
                name: l.name.clone(),
                mtu: l.mtu,
            });
        }
    }
    // Addresses: add the missing ones.
    let mut wanted_addrs: BTreeSet<(u32, IpNet)> = BTreeSet::new();
    for l in &desired.links {
        let k = by_name[l.name.as_str()];
        for a in &l.addresses {
            if is_v6(a) && !v6_ok(Some(&l.name)) {
                plan.skipped_v6 += 1;
                continue;
            }
            wanted_addrs.insert((k.index, *a));
            if !kernel
                .addrs
                .iter()
                .any(|ka| ka.index == k.index && ka.addr == *a)
            {
                plan.ops.push(Op::AddAddr {
                    index: k.index,
                    name: l.name.clone(),
                    addr: *a,
                });
            }
        }
    }
    let mut del_addrs = Vec::new();
    for ka in kernel
        .addrs
        .iter()
        .filter(|a| a.protocol == RTPROT_SITELINK)
    {
        if !wanted_addrs.contains(&(ka.index, ka.addr)) && !keep_for_foreign_routes(kernel, ka) {
            del_addrs.push(Op::DelAddr {
                index: ka.index,
                name: name_of.get(&ka.index).copied().unwrap_or("?").to_owned(),
                addr: ka.addr,
            });
        }
    }

    // Routes.
    let tables: BTreeSet<u32> = desired.routes.iter().map(|r| r.table).collect();
    let mut ours: BTreeMap<(u32, IpNet, u32), Vec<&KernelRoute>> = BTreeMap::new();
    let mut foreign: BTreeMap<(u32, IpNet), Vec<&KernelRoute>> = BTreeMap::new();
    for r in &kernel.routes {
        if r.protocol == RTPROT_SITELINK {
            ours.entry((r.table, r.prefix, r.metric))
                .or_default()
                .push(r);
        } else if tables.contains(&r.table) {
            foreign.entry((r.table, r.prefix)).or_default().push(r);
        }
    }
    let target_of = |r: &KernelRoute| -> Option<Target> {
        match &r.target {
            KernelTarget::Dev(i) => name_of.get(i).map(|n| Target::Dev((*n).to_owned())),
            KernelTarget::Unreachable => Some(Target::Unreachable),
            KernelTarget::Other(_) => None,
        }
    };
    let oif_of = |t: &Target| match t {
        Target::Dev(d) => by_name.get(d.as_str()).map(|l| l.index),
        Target::Unreachable => None,
    };
    let mut kept: BTreeSet<(u32, IpNet, u32)> = BTreeSet::new();
    let mut route_dels = Vec::new();
    let mut route_adds = Vec::new();
    let mut conflicts: BTreeMap<(u32, IpNet, u8, u32), bool> = BTreeMap::new();
    for d in &desired.routes {
        let dev = match &d.target {
            Target::Dev(n) => Some(n.as_str()),
            Target::Unreachable => None,
        };
        if is_v6(&d.prefix) && !v6_ok(dev) {
            plan.skipped_v6 += 1;
            continue;
        }
        let key = (d.table, d.prefix, d.metric);
        let op = RouteOp {
            table: d.table,
            prefix: d.prefix,
            metric: d.metric,
            target: d.target.clone(),
            oif: oif_of(&d.target),
        };
        let mut blocked = false;
        for f in foreign.get(&(d.table, d.prefix)).into_iter().flatten() {
            blocked |= f.metric == d.metric;
            *conflicts
                .entry((d.table, d.prefix, f.protocol, f.metric))
                .or_default() |= f.metric == d.metric;
        }
        match ours.get(&key) {
            Some(existing) => {
                kept.insert(key);
                if !existing
                    .iter()
                    .any(|k| target_of(k).as_ref() == Some(&d.target))
                {
                    route_adds.push(Op::ReplaceRoute(op));
                }
            }
            None if blocked => {}
            None => route_adds.push(Op::AddRoute(op)),
        }
    }
    let desired_by_key: BTreeMap<(u32, IpNet, u32), &DesiredRoute> = desired
        .routes
        .iter()
        .map(|d| ((d.table, d.prefix, d.metric), d))
        .collect();
    for (key, rs) in &ours {
        let wanted = desired_by_key
            .get(key)
            .filter(|_| kept.contains(key))
            .copied();
        let mut matched = false;
        for r in rs {
            let t = target_of(r);
            let keep = match wanted {
                // Keep the first route that matches; duplicates and others go.
                Some(w) if !matched && t.as_ref() == Some(&w.target) => {
                    matched = true;
                    true
                }
                // A replace will overwrite the first one.
                Some(_) if !matched && rs.len() == 1 => true,
                _ => false,
            };
            if !keep {
                let target = t.unwrap_or(Target::Unreachable);
                route_dels.push(Op::DelRoute(RouteOp {
                    table: r.table,
                    prefix: r.prefix,
                    metric: r.metric,
                    oif: match r.target {
                        KernelTarget::Dev(i) => Some(i),
                        _ => None,
                    },
                    target,
                }));
            }
        }
    }
    plan.ops.extend(route_dels);
    plan.ops.extend(route_adds);

    // Rules.
    let kernel_ours: BTreeSet<&DesiredRule> = kernel
        .rules
        .iter()
        .filter(|r| r.protocol == RTPROT_SITELINK)
        .map(|r| &r.rule)
        .collect();
    let mut wanted_rules = BTreeSet::new();
    for r in &desired.rules {
        if r.v6 && !opts.v6_enabled {
            plan.skipped_v6 += 1;
            continue;
        }
        wanted_rules.insert(r);
        if !kernel_ours.contains(r) {
            plan.ops.push(Op::AddRule(r.clone()));
        }
    }
    let mut seen = BTreeSet::new();
    for r in kernel
        .rules
        .iter()
        .filter(|r| r.protocol == RTPROT_SITELINK)
    {
        // Unwanted ones, and duplicates of wanted ones.
        if !wanted_rules.contains(&r.rule) || !seen.insert(&r.rule) {
            plan.ops.push(Op::DelRule(r.rule.clone()));
        }
    }
    plan.ops.extend(del_addrs);
    plan.conflicts = conflicts
        .into_iter()
        .map(
            |((table, prefix, protocol, metric), blocks_ours)| Conflict {
                table,
                prefix,
                protocol,
                metric,
                blocks_ours,
            },
        )
        .collect();
    Ok(plan)
}

/// Everything we own: the operations that remove all of it (shutdown).
pub fn withdraw_plan(kernel: &KernelState) -> Vec<Op> {
    let name_of: BTreeMap<u32, &str> = kernel
        .links
        .iter()
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    let mut ops = Vec::new();
    for r in kernel
        .rules
        .iter()
        .filter(|r| r.protocol == RTPROT_SITELINK)
    {
        ops.push(Op::DelRule(r.rule.clone()));
    }
    for r in kernel
        .routes
        .iter()
        .filter(|r| r.protocol == RTPROT_SITELINK)
    {
        let (target, oif) = match r.target {
            KernelTarget::Dev(i) => (
                Target::Dev(name_of.get(&i).copied().unwrap_or("?").to_owned()),
                Some(i),
            ),
            _ => (Target::Unreachable, None),
        };
        ops.push(Op::DelRoute(RouteOp {
            table: r.table,
            prefix: r.prefix,
            metric: r.metric,
            target,
            oif,
        }));
    }
    for a in kernel
        .addrs
        .iter()
        .filter(|a| a.protocol == RTPROT_SITELINK)
    {
        if keep_for_foreign_routes(kernel, a) {
            log::info!(
                "keeping address {} on {}: routes of another program use that interface, and the kernel flushes them when its last IPv4 address goes",
                a.addr,
                name_of.get(&a.index).copied().unwrap_or("?")
            );
            continue;
        }
        ops.push(Op::DelAddr {
            index: a.index,
            name: name_of.get(&a.index).copied().unwrap_or("?").to_owned(),
            addr: a.addr,
        });
    }
    ops
}

/// Whether removing our IPv4 address `a` would make the kernel flush another program's routes:
/// no IPv4 address of someone else stays on the interface, and a foreign route (not the
/// kernel's own connected/local routes) goes through it. Such an address stays (R6).
fn keep_for_foreign_routes(kernel: &KernelState, a: &KernelAddr) -> bool {
    const RTPROT_KERNEL: u8 = 2;
    if is_v6(&a.addr) {
        return false;
    }
    let foreign_v4_addr = kernel
        .addrs
        .iter()
        .any(|o| o.index == a.index && !is_v6(&o.addr) && o.protocol != RTPROT_SITELINK);
    let foreign_route = kernel.routes.iter().any(|r| {
        r.target == KernelTarget::Dev(a.index)
            && !is_v6(&r.prefix)
            && r.protocol != RTPROT_SITELINK
            && r.protocol != RTPROT_KERNEL
    });
    !foreign_v4_addr && foreign_route
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::DesiredLink;
    use crate::DIRECT_TABLE;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            accepted_kinds: vec!["tun".into(), "dummy".into()],
            v6_enabled: true,
            v6_disabled_links: BTreeSet::new(),
        }
    }

    fn desired() -> Desired {
        Desired {
            links: vec![
                DesiredLink {
                    name: "wg-a".into(),
                    mtu: 1420,
                    addresses: vec![net("10.255.0.0/31")],
                },
                DesiredLink {
                    name: "wg-b".into(),
                    mtu: 1420,
                    addresses: vec![net("10.255.0.2/31"), net("fd00::2/127")],
                },
            ],
            routes: vec![
                DesiredRoute {
                    table: 254,
                    prefix: net("10.1.0.0/24"),
                    metric: 100,
                    target: Target::Dev("wg-a".into()),
                },
                DesiredRoute {
                    table: 254,
                    prefix: net("10.1.0.0/24"),
                    metric: 200,
                    target: Target::Dev("wg-b".into()),
                },
                DesiredRoute {
                    table: 254,
                    prefix: net("::/0"),
                    metric: 100,
                    target: Target::Dev("wg-b".into()),
                },
                DesiredRoute {
                    table: DIRECT_TABLE,
                    prefix: net("10.1.0.0/24"),
                    metric: 10000,
                    target: Target::Unreachable,
                },
            ],
            rules: vec![DesiredRule {
                v6: false,
                priority: 10890,
                iif: Some("wg-a".into()),
                table: DIRECT_TABLE,
            }],
            forwarding: true,
            warnings: vec![],
        }
    }

    fn links(kind: &str) -> Vec<KernelLink> {
        vec![
            KernelLink {
                index: 5,
                name: "wg-a".into(),
                kind: Some(kind.into()),
                mtu: 1500,
                up: false,
            },
            KernelLink {
                index: 6,
                name: "wg-b".into(),
                kind: Some("tun".into()),
                mtu: 1420,
                up: true,
            },
        ]
    }

    /// The kernel after executing `ops` (a tiny model of the kernel, for the tests).
    fn execute(mut k: KernelState, ops: &[Op]) -> KernelState {
        for op in ops {
            match op {
                Op::SetLink { index, mtu, .. } => {
                    for l in k.links.iter_mut().filter(|l| l.index == *index) {
                        l.mtu = *mtu;
                        l.up = true;
                    }
                }
                Op::AddAddr { index, addr, .. } => k.addrs.push(KernelAddr {
                    index: *index,
                    addr: *addr,
                    protocol: RTPROT_SITELINK,
                    broadcast: false,
                }),
                Op::DelAddr { index, addr, .. } => {
                    k.addrs.retain(|a| !(a.index == *index && a.addr == *addr))
                }
                Op::AddRoute(r) | Op::ReplaceRoute(r) => {
                    k.routes.retain(|x| {
                        !(x.protocol == RTPROT_SITELINK
                            && (x.table, x.prefix, x.metric) == (r.table, r.prefix, r.metric))
                    });
                    k.routes.push(KernelRoute {
                        table: r.table,
                        prefix: r.prefix,
                        metric: r.metric,
                        protocol: RTPROT_SITELINK,
                        target: match r.oif {
                            Some(i) => KernelTarget::Dev(i),
                            None => KernelTarget::Unreachable,
                        },
                    })
                }
                Op::DelRoute(r) => {
                    let pos = k.routes.iter().position(|x| {
                        x.protocol == RTPROT_SITELINK
                            && (x.table, x.prefix, x.metric) == (r.table, r.prefix, r.metric)
                    });
                    if let Some(p) = pos {
                        k.routes.remove(p);
                    }
                }
                Op::AddRule(r) => k.rules.push(KernelRule {
                    rule: r.clone(),
                    protocol: RTPROT_SITELINK,
                }),
                Op::DelRule(r) => {
                    if let Some(p) = k.rules.iter().position(|x| x.rule == *r) {
                        k.rules.remove(p);
                    }
                }
            }
        }
        k
    }

    #[test]
    fn cold_apply_then_nothing() {
        let k = KernelState {
            links: links("dummy"),
            ..Default::default()
        };
        let p = plan(&desired(), &k, &opts()).expect("plan");
        // 1 link fix, 3 addresses, 4 routes, 1 rule.
        assert_eq!(p.ops.len(), 9, "{:#?}", p.ops);
        assert!(matches!(
            p.ops[0],
            Op::SetLink {
                index: 5,
                mtu: 1420,
                ..
            }
        ));
        let k2 = execute(k, &p.ops);
        let p2 = plan(&desired(), &k2, &opts()).expect("plan");
        assert!(p2.ops.is_empty(), "{:#?}", p2.ops);
        assert!(p2.conflicts.is_empty());
    }

    #[test]
    fn minimal_difference_on_config_change() {
        let k = execute(
            KernelState {
                links: links("dummy"),
                ..Default::default()
            },
            &plan(
                &desired(),
                &KernelState {
                    links: links("dummy"),
                    ..Default::default()
                },
                &opts(),
            )
            .expect("plan")
            .ops,
        );
        let mut d = desired();
        // Move the backup to wg-a, drop the v6 default, change nothing else.
        d.routes[1].target = Target::Dev("wg-a".into());
        d.routes.remove(2);
        let p = plan(&d, &k, &opts()).expect("plan");
        assert_eq!(p.ops.len(), 2, "{:#?}", p.ops);
        assert!(p
            .ops
            .iter()
            .any(|o| matches!(o, Op::DelRoute(r) if r.prefix == net("::/0"))));
        assert!(p
            .ops
            .iter()
            .any(|o| matches!(o, Op::ReplaceRoute(r) if r.metric == 200 && r.oif == Some(5))));
        let k2 = execute(k, &p.ops);
        assert!(plan(&d, &k2, &opts()).expect("plan").ops.is_empty());
    }

    #[test]
    fn foreign_routes_are_conflicts_never_deleted() {
        let mut k = KernelState {
            links: links("tun"),
            ..Default::default()
        };
        k.routes.push(KernelRoute {
            table: 254,
            prefix: net("10.1.0.0/24"),
            metric: 100,
            protocol: 4,
            target: KernelTarget::Dev(6),
        });
        let p = plan(&desired(), &k, &opts()).expect("plan");
        assert_eq!(p.conflicts.len(), 1);
        assert!(p.conflicts[0].blocks_ours);
        assert!(p.conflicts[0].to_string().contains("another program"));
        // Our metric-100 route is not added, the backup is; nothing deletes the foreign one.
        assert!(!p.ops.iter().any(
            |o| matches!(o, Op::AddRoute(r) if r.prefix == net("10.1.0.0/24") && r.metric == 100)
        ));
        assert!(p
            .ops
            .iter()
            .any(|o| matches!(o, Op::AddRoute(r) if r.metric == 200)));
        assert!(!p.ops.iter().any(|o| matches!(o, Op::DelRoute(_))));
        let w = withdraw_plan(&execute(k, &p.ops));
        assert!(w
            .iter()
            .all(|o| !matches!(o, Op::DelRoute(r) if r.metric == 100 && r.table == 254 && r.prefix == net("10.1.0.0/24"))));
    }

    #[test]
    fn leftovers_are_adopted_and_duplicates_removed() {
        let mut k = KernelState {
            links: links("dummy"),
            ..Default::default()
        };
        let ops = plan(&desired(), &k, &opts()).expect("plan").ops;
        k = execute(k, &ops);
        // A duplicate of ours (e.g. v6 appended twice) and a stale route of a removed tunnel.
        let dup = k.routes[0].clone();
        k.routes.push(dup);
        k.routes.push(KernelRoute {
            table: 254,
            prefix: net("10.9.0.0/24"),
            metric: 100,
            protocol: RTPROT_SITELINK,
            target: KernelTarget::Dev(99),
        });
        let p = plan(&desired(), &k, &opts()).expect("plan");
        assert_eq!(
            p.ops
                .iter()
                .filter(|o| matches!(o, Op::DelRoute(_)))
                .count(),
            2,
            "{:#?}",
            p.ops
        );
        assert_eq!(p.ops.len(), 2);
    }

    #[test]
    fn missing_or_foreign_interface_is_an_error() {
        let k = KernelState {
            links: links("veth"),
            ..Default::default()
        };
        let e = plan(&desired(), &k, &opts()).expect_err("veth refused");
        assert!(e.to_string().contains("wg-a exists but is a veth"), "{e}");
        let k = KernelState {
            links: links("dummy")[1..].to_vec(),
            ..Default::default()
        };
        let e = plan(&desired(), &k, &opts()).expect_err("missing");
        assert!(e.to_string().contains("wg-a does not exist"), "{e}");
    }

    #[test]
    fn v6_disabled_skips_only_v6() {
        let k = KernelState {
            links: links("dummy"),
            ..Default::default()
        };
        let mut o = opts();
        o.v6_enabled = false;
        let p = plan(&desired(), &k, &o).expect("plan");
        assert_eq!(p.skipped_v6, 2);
        assert_eq!(p.ops.len(), 7);
        assert!(p.ops.iter().all(|op| !op.to_string().contains("ip -6")));
    }

    #[test]
    fn ops_read_like_ip() {
        let op = Op::AddRoute(RouteOp {
            table: 51820,
            prefix: net("10.2.0.0/24"),
            metric: 100,
            target: Target::Dev("wg-gcp".into()),
            oif: Some(3),
        });
        assert_eq!(
            op.to_string(),
            "ip route add 10.2.0.0/24 dev wg-gcp metric 100 table 51820 proto 83"
        );
    }
}
